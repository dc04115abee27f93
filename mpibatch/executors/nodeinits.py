"""The inits of a local run's emulated nodes, as the local executor sees them: one process started in the run's
namespaces (launchers/local_nodes.py) forks them all, and each says it is ready with its PID in the run's PID
namespace. Here: their PIDs on this machine, a pidfd of each, and whether one has ended."""
from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any

from ..errors import InfraError
from ..launchers import script_path
from .userns import child_pid, child_pids, ns_pid, process_running

READY_S = 120.0  # for every init of a run to say it is up (64 take well under a second)


def stop_helper(p: subprocess.Popen[bytes]) -> str:
    """Kill a helper (and its process group); its stderr, for a message."""
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    err = p.stderr.read().decode(errors="replace").strip() if p.stderr and not p.stderr.closed else ""
    for stream in (p.stdout, p.stderr):
        if stream:
            stream.close()
    return err


def read_lines(fd: int, count: int, deadline: float) -> list[str]:
    """Up to `count` lines from `fd`, until end of file or `deadline` (time.monotonic()): the inits' maker may
    die, or hang, before all its children have written theirs."""
    data = b""
    while data.count(b"\n") < count and (left := deadline - time.monotonic()) > 0:
        if not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return [line.decode(errors="replace") for line in data.splitlines()[:count]]


def parse_ready(lines: Sequence[str]) -> tuple[dict[int, str], str]:
    """The inits' lines (`ready INDEX PID` / `failed INDEX REASON`, in any order): each node's PID in the run's
    namespace, and what went wrong ("" when none failed, or the maker died without a word). Pure."""
    ready: dict[int, str] = {}
    for line in lines:
        word, _, rest = line.strip().partition(" ")
        index, _, detail = rest.partition(" ")
        if word == "failed":
            return ready, f"could not create emulated node {index}: {detail}"
        if word != "ready":
            break
        ready[int(index)] = detail
    return ready, ""


class NodeInits:
    """The inits of `hostnames` (one per node, by index), forked by one process started with `enter` (the argv
    that puts a program in the run's namespaces)."""

    def __init__(self, enter: Sequence[str], python: str, nodes_dir: str, node_root: str,
                 hostnames: Sequence[str], popen_args: dict[str, Any]) -> None:
        self.count = len(hostnames)
        self.maker: subprocess.Popen[bytes] | None = subprocess.Popen(
            [*enter, python, "-I", "-S", script_path("local_nodes.py"), nodes_dir, node_root, *hostnames],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            **popen_args)
        self.pids: dict[int, int] = {}  # each node's init, by its PID on this machine
        self.fds: dict[int, int] = {}  # and a pidfd of it (readable once it has ended)
        self.problem = ""  # why they did not come up (every caller that awaits them is told)

    def await_ready(self) -> dict[int, str]:
        """Each node's PID in the run's namespace, once every init is up; else InfraError naming the node."""
        maker = self.maker
        if self.problem or maker is None or maker.stdout is None:
            raise InfraError(self.problem or "the emulated nodes were ended")
        deadline = time.monotonic() + READY_S
        ready, problem = parse_ready(read_lines(maker.stdout.fileno(), self.count, deadline))
        if len(ready) < self.count:
            late = time.monotonic() >= deadline
            err = self.stop()
            if not problem:
                problem = (f"the emulated nodes did not come up within {READY_S:.0f} s" if late else
                           f"could not create the emulated nodes: {err or 'no namespace'}")
            self.problem = problem
            raise InfraError(self.problem)
        by_ns: dict[str, int] = {}
        for pid in child_pids(child_pid(maker.pid)):
            try:
                by_ns[ns_pid(pid)] = pid
            except OSError:  # ended just now: its node is missing below
                continue
        for index, inner in ready.items():
            if inner not in by_ns:
                self.stop()
                self.problem = f"emulated node {index} went down as it started"
                raise InfraError(self.problem)
            self.pids[index] = by_ns[inner]
            try:
                self.fds[index] = os.pidfd_open(by_ns[inner])
            except (OSError, AttributeError):  # before Linux 5.3: ended() reads /proc
                pass
        return ready

    def ended(self, index: int) -> bool:
        """Whether node `index`'s init has ended: the lifecycle asks this of every node, every few milliseconds,
        so it is one poll(2) of its pidfd."""
        fd = self.fds.get(index)
        if fd is not None:
            return bool(select.select([fd], [], [], 0)[0])
        return not process_running(self.pids.get(index))

    def stop(self) -> str:
        """Kill the maker and every init it forked (one process group); the maker's stderr."""
        maker, self.maker = self.maker, None
        fds, self.fds, self.pids = list(self.fds.values()), {}, {}
        for fd in fds:
            os.close(fd)
        return stop_helper(maker) if maker is not None else ""
