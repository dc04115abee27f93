"""Processes on an emulated pool node: each node is a directory tree laid out as a Batch node's
(`startup/`, `shared/`, `workitems/<job>/job-1/<task>/{wd,stdout.txt,stderr.txt}`) and its tasks are
processes on this machine. Ordinary tasks, start tasks and job preparation / release tasks run this way:
they need no network namespace, and a process per task keeps the per-task cost small. Multi-instance
tasks run on rehearsal nodes instead (see scheduler.py).

Nothing a task starts outlives the emulator, `kill -9` included: each task is the first process of its
own PID namespace (`unshare --pid --kill-child`, itself given PR_SET_PDEATHSIG as the rehearsal nodes'
init is), and when that process dies the kernel ends every process in the namespace - also those that
left the task's process group or session. Its PID 1 is a shell that runs the command line as its child
(PID 1 ignores signals it has no handler for, a command must not), so a task ended by a signal reports
128 + the signal, as on a Linux node. A ledger in the state directory (pid and start time of each task's
first process) lets the next start end whatever a previous run left, before it reports those tasks'
processes as ended."""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..executors.transport import split_command_line
from ..executors.userns import die_with_parent
from ..launchers.protocol import NodeLayout
from .identity import TaskUser, make_dirs, open_logs

log = logging.getLogger(__name__)
KILL_WAIT_S = 5
LOG_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC
# PID 1 of a task's namespace: runs the command as its child and exits with its status (128+n for signal n).
INIT = ["/bin/sh", "-c", '"$@"; exit $?', "mpibatch-task"]
_contain: list[str] | None = None  # the unshare prefix once probed ([] where this machine has no namespaces)


def containment() -> list[str]:
    """The argv prefix that puts a task in its own PID namespace, or [] (with a warning) where unshare
    or namespaces are unavailable: then only the task's first process gets PR_SET_PDEATHSIG."""
    global _contain
    if _contain is None:
        prefix = ["unshare", "--pid", "--fork", "--kill-child=SIGKILL"]
        if os.geteuid() != 0:
            prefix += ["--user", "--map-current-user"]
        try:
            ok = subprocess.run([*prefix, "--", "/bin/true"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, timeout=30).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if not ok:
            log.warning("no PID namespaces here (unshare --pid failed): processes a task starts in the "
                        "background may outlive a kill -9 of the emulator until its next start")
        _contain = [*prefix, "--", *INIT] if ok else []
    return _contain


def program_missing(argv: list[str], env: dict[str, str], wd: Path) -> str | None:
    """Why the command line's program cannot be started (as execvp would fail), or None."""
    if not argv:
        return "(empty): No such file or directory"
    prog = argv[0]
    path = (wd / prog) if "/" in prog else (shutil.which(prog, path=env.get("PATH", os.defpath)) or "")
    if not path or not os.path.exists(path):
        return f"{prog}: No such file or directory"
    if os.path.isdir(path) or not os.access(path, os.X_OK):
        return f"{prog}: Permission denied"
    return None


def start_time(pid: int) -> str | None:
    """A process's start time (clock ticks since boot): with the pid, it names one process for good."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


class Ledger:
    """The first process (and process group) of everything the emulator started, in the state dir: a
    start after a kill -9 ends whatever is left of them before it says their tasks' processes ended."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()

    def add(self, pid: int) -> None:
        if self.path is None:
            return
        with self._lock, open(self.path, "a") as f:  # the page cache outlives a kill -9 of this process
            f.write(f"{pid} {start_time(pid)}\n")

    def end_leftovers(self) -> int:
        """SIGKILL every recorded process group whose first process still runs; returns how many."""
        if self.path is None or not self.path.is_file():
            return 0
        ended = []
        for line in self.path.read_text(errors="replace").splitlines()[-100_000:]:
            parts = line.split()
            if len(parts) == 2 and parts[0].isdigit() and start_time(int(parts[0])) == parts[1]:
                for kill in (os.killpg, os.kill):
                    try:
                        kill(int(parts[0]), signal.SIGKILL)
                    except OSError:
                        pass
                ended.append(int(parts[0]))
        deadline = time.monotonic() + KILL_WAIT_S
        while any(start_time(p) for p in ended) and time.monotonic() < deadline:
            time.sleep(0.02)
        self.path.write_text("")
        return len(ended)


def env_settings(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {e["name"]: e.get("value") or "" for e in items or []}


def node_env(image: dict[str, str], *, account: str, account_url: str, pool_id: str, node: dict[str, Any],
             job_id: str | None, task_id: str, task_dir: Path) -> dict[str, str]:
    """The variables Batch sets for a task on a node (docs: "Azure Batch compute node environment
    variables"); ordinary tasks get no host list."""
    root = node["_root"]
    env = {"AZ_BATCH_ACCOUNT_NAME": account, "AZ_BATCH_ACCOUNT_URL": account_url, "AZ_BATCH_POOL_ID": pool_id,
           "AZ_BATCH_NODE_ID": node["id"], "AZ_BATCH_NODE_ROOT_DIR": root,
           "AZ_BATCH_NODE_IS_DEDICATED": "true" if node.get("isDedicated", True) else "false",
           "AZ_BATCH_NODE_SHARED_DIR": f"{root}/shared", "AZ_BATCH_NODE_STARTUP_DIR": f"{root}/startup",
           "AZ_BATCH_NODE_MOUNTS_DIR": f"{root}/fsmounts",
           "AZ_BATCH_TASK_ID": task_id, "AZ_BATCH_TASK_DIR": str(task_dir),
           "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"), "AZ_BATCH_TASK_USER": os.environ.get("USER", "root")}
    if job_id:
        env["AZ_BATCH_JOB_ID"] = job_id
        prep = NodeLayout(root, job_id, "jobpreparation")
        env["AZ_BATCH_JOB_PREP_DIR"] = prep.task_dir
        env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = prep.working_dir
    return {**image, **(node.get("_appEnv") or {}), **env}  # the pool's application packages, where installed


@dataclass
class Outcome:
    exit_code: int | None
    failure: dict[str, str] | None  # failureInfo, when the process could not run or was ended


class Processes:
    """Every process the emulator started, so that ending a task (or the emulator) ends them all."""

    def __init__(self, ledger: Ledger | None = None) -> None:
        self._lock = threading.Lock()
        self._by_owner: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._ended: set[str] = set()
        self.ledger = ledger or Ledger(None)

    def run(self, owner: str, command_line: str, env: dict[str, str], task_dir: Path,
            timeout_s: float | None, user: TaskUser | None = None) -> Outcome:
        """Run a command line in task_dir/wd (stdout.txt / stderr.txt beside it) to its end, as `user`
        (identity.py) when given."""
        wd = task_dir / "wd"
        try:
            make_dirs(user, wd) if user else wd.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            return Outcome(None, bad_task_dir(task_dir, e))
        try:
            argv = split_command_line(command_line)
        except ValueError as e:
            return Outcome(None, {"category": "UserError", "code": "CommandLineInvalid", "message": str(e)})
        missing = program_missing(argv, env, wd)
        if missing:
            self._create_logs(task_dir, user)  # a node makes them before it starts the program
            return Outcome(None, {"category": "UserError", "code": "CommandProgramNotFound",
                                  "message": f"cannot start {missing}"})
        with self._lock:
            if owner in self._ended:
                return Outcome(None, ended())
            p = self._start(argv, env, wd, task_dir, user)
            if isinstance(p, Outcome):
                return p
            self._by_owner.setdefault(owner, []).append(p)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill(p)
            return Outcome(None, timed_out())
        finally:
            self._forget(owner, p)
            with self._lock:
                was_ended = owner in self._ended
        if was_ended:
            return Outcome(rc, ended())
        return Outcome(rc, None)

    def call(self, owner: str, argv: list[str], stdin: bytes,
             timeout_s: float | None) -> tuple[int | None, bytes, bool]:
        """Run a helper of the owner's (a resource-file fetch) to its end: (exit code, stdout, timed out).
        Ended with its owner; past `timeout_s` it gets SIGTERM (to remove what it half wrote), then SIGKILL.
        (None, b"", False) when the owner was ended before it started."""
        with self._lock:
            if owner in self._ended:
                return None, b"", False
            # Ended with the emulator too (this thread waits for it: PR_SET_PDEATHSIG follows the thread).
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 start_new_session=True, preexec_fn=die_with_parent())
            self.ledger.add(p.pid)
            self._by_owner.setdefault(owner, []).append(p)
        try:
            out, _ = p.communicate(stdin, timeout=timeout_s)
            return p.returncode, out, False
        except subprocess.TimeoutExpired:
            p.terminate()
            try:
                p.communicate(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass
            self._kill(p)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.communicate(timeout=KILL_WAIT_S)
            return None, b"", True
        finally:
            self._forget(owner, p)

    def _forget(self, owner: str, p: subprocess.Popen[bytes]) -> None:
        """`p` has ended: it is no longer one of the owner's processes."""
        with self._lock:
            procs = self._by_owner.get(owner, [])
            if p in procs:
                procs.remove(p)
            if not procs:
                self._by_owner.pop(owner, None)

    @staticmethod
    def _open_logs(task_dir: Path, user: TaskUser | None) -> tuple[int, int]:
        return open_logs(user, task_dir) if user else (os.open(task_dir / "stdout.txt", LOG_FLAGS, 0o644),
                                                       os.open(task_dir / "stderr.txt", LOG_FLAGS, 0o644))

    def _create_logs(self, task_dir: Path, user: TaskUser | None) -> None:
        try:
            for fd in self._open_logs(task_dir, user):
                os.close(fd)
        except OSError:
            pass  # the task fails for its program anyway; a log it cannot have is not a second failure

    def _start(self, argv: list[str], env: dict[str, str], wd: Path, task_dir: Path,
               user: TaskUser | None) -> subprocess.Popen[bytes] | Outcome:
        # The calling thread waits for the process to its end: PR_SET_PDEATHSIG follows that thread (it is
        # set after the switch to the node's user, which would clear it).
        preexec: Callable[[], None] = die_with_parent()
        try:
            out, err = self._open_logs(task_dir, user)
        except OSError as e:
            return Outcome(None, bad_task_dir(task_dir, e))
        try:
            p = subprocess.Popen([*(user.prefix(wd) if user else containment()), *argv], cwd=wd, env=env,
                                 stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True,
                                 preexec_fn=preexec, **(user.popen_args() if user else {}))
        except OSError as e:
            return Outcome(None, {"category": "UserError", "code": "CommandProgramNotFound",
                                  "message": f"cannot start {argv[0]}: {e.strerror}"})
        finally:
            os.close(out)
            os.close(err)
        self.ledger.add(p.pid)
        return p

    def end(self, owner: str) -> None:
        """End the owner's processes (and every process they started); later runs of it are refused."""
        with self._lock:
            self._ended.add(owner)
            procs = list(self._by_owner.get(owner, []))
        for p in procs:
            self._kill(p)

    def allow(self, owner: str) -> None:
        with self._lock:
            self._ended.discard(owner)

    def end_all(self) -> None:
        with self._lock:
            owners = list(self._by_owner)
        for o in owners:
            self.end(o)

    @staticmethod
    def _kill(p: subprocess.Popen[bytes]) -> None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + KILL_WAIT_S
        while p.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)


def ended() -> dict[str, str]:
    return {"category": "UserError", "code": "TaskEnded", "message": "Task was ended by user request."}


def timed_out(detail: str = "") -> dict[str, str]:
    """Batch's outcome for a task past its maxWallClockTime (`detail`: what it was doing then)."""
    return {"category": "UserError", "code": "TaskEnded", "message": "The task exceeded its maxWallClockTime and "
            "was ended" + (f" ({detail})." if detail else ".")}


def bad_task_dir(task_dir: Path, e: OSError) -> dict[str, str]:
    """A task directory the emulator will not use: a component is a symlink or not a directory (a task of
    the node put it there), or a log is not a regular file."""
    return {"category": "UserError", "code": "TaskDirectoryInvalid",
            "message": f"cannot use the task's directory {task_dir}: {e.strerror or e}"}
