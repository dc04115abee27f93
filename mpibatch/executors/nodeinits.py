"""The inits of a local run's emulated nodes, as the local executor sees them: one process started in the run's
namespaces (launchers/local_nodes.py) forks them all, and each says it is ready with its PID in the run's PID
namespace. Here: their PIDs on this machine, a pidfd of each, and whether one has ended; and the node processes
each init starts when the executor asks (`spawn`, through that one process), each an `AgentProc` that says when
it ends."""
from __future__ import annotations

import itertools
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import InfraError
from ..launchers import script_path
from .userns import child_pid, child_pids, exited_within, ns_pid, process_running

READY_S = 120.0  # for every init of a run to say it is up (64 take well under a second)
REPLY_S = 60.0  # for the agent to say a process started (a fork and an exec), or ended once killed
STOP_S = 2.0  # for the agent to end the run's node processes and itself when asked


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
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            **popen_args)
        self.pids: dict[int, int] = {}  # each node's init, by its PID on this machine
        self.fds: dict[int, int] = {}  # and a pidfd of it (readable once it has ended)
        self.problem = ""  # why they did not come up (every caller that awaits them is told)
        self.procs: dict[str, AgentProc] = {}  # node processes the agent started and has not seen end, by tag
        self.tags = itertools.count()
        self.lock = threading.Lock()  # the table above, the maker
        self.writing = threading.Lock()  # one request at a time on the agent's stdin (never held with `lock`)

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
        # The agent's replies from now on; its own copy of the pipe, which stop() cannot close under it.
        threading.Thread(target=self._replies, args=(os.dup(maker.stdout.fileno()),), daemon=True).start()
        return ready

    def spawn(self, index: int, argv: Sequence[str], env: Mapping[str, str], cwd: str, stdout: str,
              stderr: str) -> AgentProc:
        """Start argv on node `index` (in `cwd`, its output appended to `stdout` and `stderr`: paths as the node
        sees them), in a session of its own. OSError(E2BIG) when exec refuses it."""
        with self.lock:
            if self.maker is None or not self.pids:
                raise InfraError(self.problem or "the emulated nodes were ended")
            tag = str(next(self.tags))
            proc = self.procs[tag] = AgentProc(tag, index, self)
        if not self._send(["spawn", tag, str(index), cwd, stdout, stderr, str(len(argv)), *argv,
                           *(f"{k}={v}" for k, v in env.items())]):
            with self.lock:
                self.procs.pop(tag, None)
            proc.close()
            raise InfraError(self.problem or "the emulated nodes' agent ended")
        if not proc.started.wait(REPLY_S):
            proc.close()
            raise InfraError(f"the emulated nodes' agent did not start a process on node {index} within "
                             f"{REPLY_S:.0f} s")
        if proc.refused:
            proc.close()
            raise OSError(proc.refused, os.strerror(proc.refused))
        return proc

    def kill(self, proc: AgentProc) -> None:
        self._send(["kill", proc.tag, str(proc.index)])

    def _send(self, fields: Sequence[str]) -> bool:
        """One request to the agent (launchers/local_nodes.py says how it is framed); False when it is gone (and
        the run with it)."""
        payload = b"\0".join(os.fsencode(f) for f in fields)
        with self.writing:
            maker = self.maker
            if maker is None or maker.stdin is None or maker.stdin.closed:
                return False
            try:
                maker.stdin.write(b"%d\n" % len(payload) + payload)
                maker.stdin.flush()
                return True
            except (OSError, ValueError):  # ValueError: stop() closed it just now
                return False

    def _replies(self, fd: int) -> None:
        """The agent's lines (`started TAG PID`, `error TAG ERRNO`, `exit TAG CODE`, `lost TAG`) until it ends;
        then every process it had started counts as killed (they died with the run, or live on unreported)."""
        with os.fdopen(fd, "rb") as f:
            for line in f:
                word, tag, value = (line.decode(errors="replace").split() + ["", "", ""])[:3]
                with self.lock:
                    proc = self.procs.get(tag)
                    if proc is not None and word in ("exit", "error", "lost"):
                        del self.procs[tag]
                if proc is None:
                    continue
                if word == "started":
                    proc.started.set()
                elif word == "error":
                    proc.refused = int(value)
                    proc.started.set()
                elif word == "exit":
                    proc.ended(int(value))
                elif word == "lost":  # its node's init is gone: the lifecycle finds the node lost
                    proc.started.set()
                    proc.ended(-signal.SIGKILL)
        with self.lock:
            procs, self.procs = list(self.procs.values()), {}
            if not self.problem:
                self.problem = "the emulated nodes' agent ended"
        for proc in procs:
            proc.started.set()
            proc.ended(-signal.SIGKILL)

    def ended(self, index: int) -> bool:
        """Whether node `index`'s init has ended: the lifecycle asks this of every node, every few milliseconds,
        so it is one poll(2) of its pidfd."""
        fd = self.fds.get(index)
        if fd is not None:
            return bool(select.select([fd], [], [], 0)[0])
        return not process_running(self.pids.get(index))

    def stop(self) -> str:
        """End every node process the agent started, every init and the agent itself; its stderr. Asked first
        (its stdin closed: it kills and reaps them all, so their CPU time is accounted to this process), killed
        after STOP_S (with its process group)."""
        with self.lock:
            maker, self.maker = self.maker, None
        fds, self.fds, self.pids = list(self.fds.values()), {}, {}
        for fd in fds:
            os.close(fd)
        if maker is None:
            return ""
        if maker.stdin is not None:
            with self.writing:
                maker.stdin.close()
            exited_within(maker, STOP_S)
        return stop_helper(maker)


class AgentProc:
    """A node process the agent started: the lifecycle's Proc, with a descriptor that becomes readable when it
    ends (as a pidfd does), so a wait wakes at once."""

    def __init__(self, tag: str, index: int, inits: NodeInits) -> None:
        self.tag, self.index, self.inits = tag, index, inits
        self.started = threading.Event()
        self.refused = 0  # errno, when exec refused it
        self.returncode: int | None = None
        self.pidfd: int | None
        self._signal: int | None
        self.pidfd, self._signal = os.pipe()  # `pidfd`: the name wait_any looks for
        self._ended = threading.Event()
        self._fds = threading.Lock()  # the reply thread writes _signal, the lifecycle closes it

    def ended(self, code: int) -> None:
        self.returncode = code
        self._ended.set()
        with self._fds:
            if self._signal is not None:
                os.write(self._signal, b"x")

    def poll(self) -> int | None:
        if self._ended.is_set():
            self.close()
        return self.returncode

    def kill(self) -> None:
        """Kill its process group and wait (bounded) until the agent has seen it end."""
        if not self._ended.is_set():
            self.inits.kill(self)
            self._ended.wait(REPLY_S)
        self.close()

    def close(self) -> None:
        with self._fds:
            fds, self.pidfd, self._signal = (self.pidfd, self._signal), None, None
        for fd in fds:
            if fd is not None:
                os.close(fd)
