"""Processes on an emulated pool node: each node is a directory tree laid out as a Batch node's
(`startup/`, `shared/`, `workitems/<job>/job-1/<task>/{wd,stdout.txt,stderr.txt}`) and its tasks are
processes on this machine, each in its own process group so ending one ends everything it started.
Ordinary tasks, start tasks and job preparation / release tasks run this way: they need no network
namespace, and a process per task keeps the per-task cost small. Multi-instance tasks run on
rehearsal nodes instead (see scheduler.py)."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..executors.lifecycle import split_command_line
from ..launchers.protocol import NodeLayout

log = logging.getLogger(__name__)
KILL_WAIT_S = 5


def env_settings(items: list[dict[str, Any]] | None) -> dict[str, str]:
    return {e["name"]: e.get("value") or "" for e in items or []}


def node_env(image: dict[str, str], *, account: str, account_url: str, pool_id: str, node: dict[str, Any],
             job_id: str | None, task_id: str, task_dir: Path) -> dict[str, str]:
    """The variables Batch sets for a task on a node (docs: "Azure Batch compute node environment
    variables"); ordinary tasks get no host list."""
    root = node["_root"]
    env = {"AZ_BATCH_ACCOUNT_NAME": account, "AZ_BATCH_ACCOUNT_URL": account_url, "AZ_BATCH_POOL_ID": pool_id,
           "AZ_BATCH_NODE_ID": node["id"], "AZ_BATCH_NODE_IS_DEDICATED": "true", "AZ_BATCH_NODE_ROOT_DIR": root,
           "AZ_BATCH_NODE_SHARED_DIR": f"{root}/shared", "AZ_BATCH_NODE_STARTUP_DIR": f"{root}/startup",
           "AZ_BATCH_TASK_ID": task_id, "AZ_BATCH_TASK_DIR": str(task_dir),
           "AZ_BATCH_TASK_WORKING_DIR": str(task_dir / "wd"), "AZ_BATCH_TASK_USER": os.environ.get("USER", "root")}
    if job_id:
        env["AZ_BATCH_JOB_ID"] = job_id
        prep = NodeLayout(root, job_id, "jobpreparation")
        env["AZ_BATCH_JOB_PREP_DIR"] = prep.task_dir
        env["AZ_BATCH_JOB_PREP_WORKING_DIR"] = prep.working_dir
    return {**image, **env}


@dataclass
class Outcome:
    exit_code: int | None
    failure: dict[str, str] | None  # failureInfo, when the process could not run or was ended


class Processes:
    """Every process the emulator started, so that ending a task (or the emulator) ends them all."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_owner: dict[str, list[subprocess.Popen[bytes]]] = {}
        self._ended: set[str] = set()

    def run(self, owner: str, command_line: str, env: dict[str, str], task_dir: Path,
            timeout_s: float | None) -> Outcome:
        """Run a command line in task_dir/wd (stdout.txt / stderr.txt beside it) to its end."""
        wd = task_dir / "wd"
        wd.mkdir(parents=True, exist_ok=True)
        try:
            argv = split_command_line(command_line)
        except ValueError as e:
            return Outcome(None, {"category": "UserError", "code": "CommandLineInvalid", "message": str(e)})
        with self._lock:
            if owner in self._ended:
                return Outcome(None, ended())
            try:
                with open(task_dir / "stdout.txt", "ab") as out, open(task_dir / "stderr.txt", "ab") as err:
                    p = subprocess.Popen(argv, cwd=wd, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         start_new_session=True)
            except OSError as e:
                return Outcome(None, {"category": "UserError", "code": "CommandProgramNotFound",
                                      "message": f"cannot start {argv[0] if argv else '(empty)'}: {e.strerror}"})
            self._by_owner.setdefault(owner, []).append(p)
        try:
            rc = p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill(p)
            return Outcome(None, timed_out())
        finally:
            with self._lock:
                procs = self._by_owner.get(owner, [])
                if p in procs:
                    procs.remove(p)
                if not procs:
                    self._by_owner.pop(owner, None)
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
            p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
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
            with self._lock:
                procs = self._by_owner.get(owner, [])
                if p in procs:
                    procs.remove(p)
                if not procs:
                    self._by_owner.pop(owner, None)

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
