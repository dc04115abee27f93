"""What the fault tests share: start `mpibatch run` as a separate process (as a user would), find
every process of the run it started, and check that nothing of it is left."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

MY_PID_NS = os.readlink("/proc/self/ns/pid")


def descendants(pid: int) -> set[int]:
    """Every living descendant of `pid` (children are listed per thread)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                kids = [int(k) for k in Path(f"/proc/{p}/task/{t}/children").read_text().split()]
            except OSError:
                continue
            for k in kids:
                if k not in found:
                    found.add(k)
                    todo.append(k)
    return found


def pid_namespaces(pids: set[int]) -> set[str]:
    """The PID namespaces (other than ours) the processes live in: the runs' namespaces."""
    out = set()
    for p in pids:
        try:
            ns = os.readlink(f"/proc/{p}/ns/pid")
        except OSError:
            continue
        if ns != MY_PID_NS:
            out.add(ns)
    return out


def processes_in(namespaces: set[str], pids: set[int] = frozenset()) -> list[int]:
    """Processes still alive in any of `namespaces`, or among `pids`."""
    left = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if int(entry) in pids or os.readlink(f"/proc/{entry}/ns/pid") in namespaces:
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    left.append(int(entry))
        except OSError:
            continue
    return left


def wait_gone(namespaces: set[str], pids: set[int], within_s: float = 5.0) -> list[int]:
    """Wait (bounded) until no process is left; return what is left at the deadline."""
    deadline = time.monotonic() + within_s
    while (left := processes_in(namespaces, pids)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def start_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mpibatch.cli", *args], env=env, cwd=cwd, text=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_line(p: subprocess.Popen[str], text: str, timeout_s: float = 60) -> list[str]:
    """Read p's stderr until a line contains `text` (bounded by lines and time)."""
    seen: list[str] = []
    deadline = time.monotonic() + timeout_s
    assert p.stderr is not None
    for _ in range(10_000):
        line = p.stderr.readline()
        if not line or time.monotonic() > deadline:
            break
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"never saw {text!r}: {''.join(seen)}")


def shm_entries() -> set[str]:
    return set(os.listdir("/dev/shm"))
