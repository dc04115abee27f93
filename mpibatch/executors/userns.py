"""Can this machine give a local run its own namespaces without root? The local executor asks once,
before anything starts, and names the setting that stops it when the answer is no.

A run is `unshare --user --map-root-user --pid --mount ...`: inside its own user namespace the
caller is root over the namespaces it creates, so mounts, hostnames and loopback addresses need no
privileges on the host (user_namespaces(7)). Three kernel settings can switch that off for normal
users; a fourth (`user.max_user_namespaces`) for everyone, root included.

Also what the local executor reads of its namespace processes in /proc: a child's PID, a PID as the run's
namespace numbers it, whether a process still runs.
"""
from __future__ import annotations

import ctypes
import functools
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InfraError, SpecError

# The exact namespaces a run uses: if this starts, the run's init does too.
PROBE = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount", "--uts",
         "--propagation", "private", "--mount-proc", "--", "true"]
WAYS_OUT = ("or run the task on your own hosts with `--executor ssh --hosts ...`; "
            "or see docs/local-executor.md")
_ok = False


def blocking_setting(euid: int, read: Callable[[str], str | None]) -> tuple[str, str] | None:
    """The kernel setting that forbids this user new user namespaces, and how to allow them (as
    root), from `read(path)` of /proc/sys files (None: the file does not exist). Pure."""
    def value(path: str) -> str | None:
        v = read(path)
        return v.strip() if v is not None else None

    if value("/proc/sys/user/max_user_namespaces") == "0":
        return ("user.max_user_namespaces = 0", "sysctl -w user.max_user_namespaces=10000")
    if euid != 0 and value("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return ("kernel.unprivileged_userns_clone = 0", "sysctl -w kernel.unprivileged_userns_clone=1")
    if euid != 0 and value("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return ("kernel.apparmor_restrict_unprivileged_userns = 1 (AppArmor)",
                "an AppArmor profile with `userns,` for this Python, or "
                "sysctl -w kernel.apparmor_restrict_unprivileged_userns=0")
    return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


@functools.cache  # looked up once: every node process starts through these
def tool(name: str) -> str:
    """A helper program (nsenter, unshare, env) by its path on mpibatch's own PATH: a task's environment
    names its own PATH, which may hold directories the node's user cannot enter."""
    return shutil.which(name) or name


@functools.cache
def _nsenter_wdns() -> bool:
    """Whether this nsenter can change directory inside the namespaces it enters (util-linux 2.38 and later)."""
    try:
        out = subprocess.run([tool("nsenter"), "--help"], stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"--wdns" in out.stdout


def in_directory(cwd: str) -> tuple[list[str], list[str]]:
    """How a command started by nsenter runs in `cwd` as the entered mount namespace sees it (nsenter's --wd
    resolves it before entering): nsenter's options, and what goes before the command. `--wdns` where this
    nsenter has it (one program fewer per node process), else `env --chdir`."""
    if _nsenter_wdns():
        return [f"--wdns={cwd}"], []
    return [], [tool("env"), f"--chdir={cwd}"]


def check_namespaces() -> None:
    """Bad input (exit 2) unless this process can create a run's namespaces; asked once per process."""
    global _ok
    if _ok:
        return
    missing = [tool for tool in ("unshare", "nsenter") if shutil.which(tool) is None]
    if missing:
        raise SpecError("--executor local", f"{' and '.join(missing)} (util-linux) not found on PATH",
                        "apt-get install util-linux, " + WAYS_OUT)
    try:
        probe = subprocess.run(PROBE, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               timeout=30)
        failed, err = probe.returncode != 0, probe.stderr.decode(errors="replace").strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        failed, err = True, str(e)
    if failed:
        why = blocking_setting(os.geteuid(), _read)
        if why:
            raise SpecError("--executor local", f"this machine does not allow new user namespaces ({why[0]}): "
                            "the local executor emulates nodes in them", f"as root: {why[1]}; {WAYS_OUT}")
        raise SpecError("--executor local",
                        f"cannot create the namespaces of emulated nodes: {err or 'unshare failed'}",
                        f"allow unprivileged user namespaces (user_namespaces(7)); {WAYS_OUT}")
    _ok = True


def die_with_parent() -> Callable[[], None]:
    """A preexec_fn: the child gets SIGKILL when this thread's process dies (even by SIGKILL or the
    OOM killer), so nothing of a run outlives its controller (prctl(2) PR_SET_PDEATHSIG)."""
    parent = os.getpid()
    libc = ctypes.CDLL(None, use_errno=True)

    def preexec() -> None:
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)
    return preexec


def process_running(pid: int | None) -> bool:
    """Whether process `pid` (unknown: assumed so) is running, not gone or a zombie."""
    if pid is None:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def exited_within(p: subprocess.Popen[bytes], seconds: float) -> bool:
    """Whether `p` ends (and is reaped) within `seconds`, woken by its exit through a pidfd: Popen.wait(timeout)
    looks with sleeps that double up to 50 ms, and saw rm end up to 30 ms late at the end of every run."""
    try:
        fd = os.pidfd_open(p.pid)
    except (OSError, AttributeError):  # before Linux 5.3
        try:
            p.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        ready, _, _ = select.select([fd], [], [], seconds)  # readable once the process has exited
    finally:
        os.close(fd)
    if ready:
        p.wait()
    return bool(ready)


def ns_pid(pid: int) -> str:
    """Process `pid`'s number in the run's PID namespace (where the agent runs)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return next(line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:"))


def child_pids(pid: int) -> list[int]:
    """The children of process `pid` (PIDs in our namespace)."""
    return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def child_pid(pid: int) -> int:
    """PID (in our namespace) of the child a fork-and-wait tool (unshare, nsenter) started."""
    for _ in range(200):
        children = child_pids(pid)
        if children:
            return children[0]
        time.sleep(0.005)
    raise InfraError(f"process {pid} started no child")
