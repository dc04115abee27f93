"""Resource files fetched in a child process of the task, as a node agent fetches them before the command line
starts: the task's `maxWallClockTime` covers the fetch (a server that trickles one byte at a time cannot hold a
task past its limit), and ending the task (terminate, the emulator stopping) ends the fetch with it.

The child reads what to fetch on stdin (the resource files as the request gave them, the auto-storage account:
no URL, SAS or key ever appears on a command line) and answers one JSON line on stdout: the FileError's code and
message when a file failed. It runs the same `files.resolve` / `files.download` as before, so a download is
written exactly as any other."""
from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..launchers import fileio
from . import files
from .identity import make_dirs
from .nodes import bad_task_dir, timed_out

if TYPE_CHECKING:
    from .identity import TaskUser
    from .nodes import Processes

MAX_ANSWER = 64 * 1024  # the child's answer is one short JSON line
CHILD = "import sys; from mpibatch.emulator.fetch import child; sys.exit(child())"


def fetch(procs: Processes, owner: str, resource_files: list[dict[str, Any]] | None,
          storage: files.AutoStorage | None, wd: Path, timeout_s: float | None,
          user: TaskUser | None = None) -> dict[str, str] | None:
    """Fetch the resource files into `wd` within `timeout_s`; None when every one arrived, else the
    failureInfo: the file's own (BlobNotFound, ResourceFileDownloadFailed...), or TaskEnded when the wall
    clock ran out or the owner was ended while they were still downloading. With `user`, what arrived becomes
    that user's (the child runs as the emulator's user: the interpreter may be where the node's user cannot
    reach)."""
    if not resource_files:
        return None
    try:
        make_dirs(user, wd) if user else wd.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        return bad_task_dir(wd.parent, e)
    request = {"resourceFiles": resource_files, "storage": asdict(storage) if storage else None, "wd": str(wd),
               "parent": os.getpid()}
    rc, out, timed = procs.call(owner, [sys.executable, "-c", CHILD], json.dumps(request).encode(), timeout_s)
    if user:
        own(wd, user.uid)
    if rc == 0:
        return None
    _sweep_temporaries(wd)  # a child ended by a signal may not have removed its partial download
    if timed:
        return timed_out("its resource files were still downloading")
    try:
        answer = json.loads(out[:MAX_ANSWER])
        return {"category": "UserError", "code": str(answer["code"]), "message": str(answer["message"])}
    except (ValueError, KeyError, TypeError):
        return {"category": "UserError", "code": "TaskEnded", "message": "Task was ended by user request."} \
            if rc is None or rc < 0 else {"category": "ServerError", "code": "ResourceFileDownloadFailed",
                                          "message": f"the resource file download ended with exit code {rc}"}


def left(wall: float | None, started: float) -> float | None:
    """What is left of a wall clock of `wall` seconds that started at `started` (monotonic); None: no limit."""
    return None if wall is None else max(0.0, wall - (time.monotonic() - started))


def own(wd: Path, uid: int) -> None:
    """What the fetch wrote becomes the task's user's (never through a symlink: descriptors and names)."""
    with contextlib.suppress(OSError):
        for _path, dirs, names, dir_fd in os.fwalk(wd, follow_symlinks=False):
            os.chown(dir_fd, uid, uid)
            for name in names + dirs:
                with contextlib.suppress(OSError):
                    os.chown(name, uid, uid, dir_fd=dir_fd, follow_symlinks=False)


def _sweep_temporaries(wd: Path) -> None:
    """Remove the durable writer's temporary files under `wd` (only they: the names are the writer's own);
    never through a symlink a task made (directory descriptors, names relative to them)."""
    with contextlib.suppress(OSError):
        for _path, _dirs, names, dir_fd in os.fwalk(wd, follow_symlinks=False):
            for name in names:
                if fileio.is_temp_name(name):
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dir_fd)


def child() -> int:
    """The child's side: fetch what stdin names, answer a FileError on stdout (exit 1)."""
    # SIGTERM unwinds (so a partial file is removed by its writer); the parent's death ends the child.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        # PR_SET_PDEATHSIG: the thread that started this child waits for it, so the signal means the emulator died
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)
    request = json.loads(sys.stdin.buffer.read())
    if os.getppid() != request["parent"]:  # the emulator died before the death signal was set
        return 1
    storage = files.AutoStorage(**request["storage"]) if request.get("storage") else None
    try:
        files.download(files.resolve(request["resourceFiles"], storage), Path(request["wd"]))
    except files.FileError as e:
        sys.stdout.write(json.dumps({"code": e.code, "message": e.message}) + "\n")
        return 1
    return 0

