"""executors/transport.py with real processes: one process per node started from a few threads (the first in the
caller's thread, where a transport may bring its nodes up), and waits that wake when a process exits."""
from __future__ import annotations

import subprocess
import threading
import time

from mpibatch.executors.transport import GroupProc, Node, Proc, start_on_all, wait_any


def nodes(n: int) -> list[Node]:
    return [Node(index=i, host=f"127.0.1.{i + 1}", node_id=f"node-{i}", root="/r") for i in range(n)]


def test_start_on_all_starts_one_process_per_node_the_first_in_the_callers_thread() -> None:
    threads: dict[int, int] = {}

    def start(n: Node) -> Proc:
        threads[n.index] = threading.get_ident()
        return GroupProc(subprocess.Popen(["sh", "-c", f"exit {n.index}"], start_new_session=True))

    procs = start_on_all(nodes(12), start)
    assert sorted(procs) == list(range(12))
    assert threads[0] == threading.get_ident()  # the node bring-up of a retry must not die with a pool thread
    assert all(isinstance(p, GroupProc) for p in procs.values())
    for i, p in procs.items():  # each index holds its own node's process
        assert p.popen.wait(timeout=10) == i
        p.kill()


def test_wait_any_wakes_when_a_process_exits_not_after_the_longest_wait() -> None:
    proc = GroupProc(subprocess.Popen(["sleep", "0.3"], start_new_session=True))
    assert proc.pidfd is not None  # Linux >= 5.3
    t0 = time.monotonic()
    while proc.poll() is None and time.monotonic() - t0 < 20:  # bounded
        wait_any([proc], most_s=10.0, poll_s=10.0)
    assert proc.poll() == 0
    assert time.monotonic() - t0 < 5.0  # woke at the exit, not after most_s (10 s)
    assert proc.pidfd is None  # closed once the exit was seen


def test_wait_any_without_pidfds_looks_again_after_poll_s() -> None:
    class Polled:  # a process of a transport that has no pidfd (SSH channels)
        def poll(self) -> int | None:
            return None

        def kill(self) -> None:
            pass

    t0 = time.monotonic()
    wait_any([Polled()], most_s=10.0, poll_s=0.2)
    assert 0.15 < time.monotonic() - t0 < 5.0
