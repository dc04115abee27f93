"""What a rehearsal executor provides the lifecycle (executors/lifecycle.py): its nodes (`Node`), their
processes (`Proc`) and a `Transport` that makes the nodes, moves files and starts processes on them;
and starting and waiting for one process per node.
"""
from __future__ import annotations

import os
import select
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


@dataclass
class Node:
    index: int
    host: str  # address in AZ_BATCH_HOST_LIST
    node_id: str
    root: str  # node root directory, as the node sees it


class Proc(Protocol):
    def poll(self) -> int | None: ...
    def kill(self) -> None: ...


class Transport(Protocol):
    name: str  # a transport may also set poll_s: how often a wait looks at its processes (default POLL_S)

    def open(self, n: int) -> list[Node]: ...
    def make_dirs(self, node: Node, dirs: Sequence[str], clean: Sequence[str] = ()) -> None: ...
    def put(self, node: Node, local: Path, node_path: str) -> None: ...
    def start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str,
              stderr: str) -> Proc: ...
    def lost(self, node: Node) -> str | None:
        """Why the node is gone (host down, node killed), or None while it is alive."""
    def end_processes(self) -> None:
        """End every process the run started on every node (by process group / namespace)."""
    def read_tail(self, node: Node, path: str, limit: int) -> str: ...
    def collect(self, node: Node, node_dir: str, patterns: Sequence[str], dest: Path) -> list[str]:
        """Copy the regular files under node_dir matching patterns into dest (each at
        ``collection.collected_path(rel)``, written atomically, symlinks never followed); return those
        paths. A file that fails does not stop the others: CollectError lists what failed."""
    def fetch(self, node: Node, node_path: str, dest: Path) -> bool:
        """Copy one regular file atomically; False if it does not exist, OSError if it is not a
        regular file or the copy fails."""
    def keep_files(self) -> str:
        """Keep the nodes' files after the run (collection failed); returns where they are."""
    def close(self) -> None: ...


class GroupProc:
    """A process started as the leader of its own process group, ended with the whole group."""

    def __init__(self, popen: subprocess.Popen[bytes]):
        self.popen = popen
        # Readable once the process has exited: the lifecycle waits on it instead of waking every few ms.
        try:
            self.pidfd: int | None = os.pidfd_open(popen.pid)
        except (OSError, AttributeError):  # before Linux 5.3: the lifecycle polls
            self.pidfd = None

    def poll(self) -> int | None:
        rc = self.popen.poll()
        if rc is not None:
            self._close()
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()
        self._close()

    def _close(self) -> None:
        fd, self.pidfd = self.pidfd, None
        if fd is not None:
            os.close(fd)


def start_on_all(nodes: Sequence[Node], start: Callable[[Node], Proc]) -> dict[int, Proc]:
    """`start(node)` for every node, from a few threads: a start waits until its process has begun (exec, or
    a channel opened), and on a busy machine 64 starts one after the other took seconds. The first runs in
    this thread: a transport may bring its nodes up then, and what it starts for them must not die with a
    pool thread (the local run's PID 1 gets PR_SET_PDEATHSIG from the thread that made it). By node index."""
    procs = {nodes[0].index: start(nodes[0])}
    with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
        procs.update(zip((n.index for n in nodes[1:]), pool.map(start, nodes[1:])))
    return procs


def wait_any(running: Sequence[Proc], most_s: float, poll_s: float) -> None:
    """Until one of `running` exits, at most `most_s`. Processes that offer a pidfd (readable once the process
    has exited) are waited on with poll(2), which wakes the moment one exits; others are looked at again
    after `poll_s`."""
    fds = [fd for p in running if (fd := getattr(p, "pidfd", None)) is not None]
    if fds and len(fds) == len(running):
        waiter = select.poll()
        for fd in fds:
            waiter.register(fd, select.POLLIN)
        waiter.poll(most_s * 1000)
    else:
        time.sleep(min(poll_s, most_s))


def split_command_line(command_line: str) -> list[str]:
    """How a Linux Batch node splits a task command line (no shell: just words)."""
    return shlex.split(command_line)
