"""Resource files of a rehearsal: local sources checked before any node exists, http(s) sources
downloaded once per run within the task's max_wall_clock."""
from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ..inputfiles import check_readable_file
from ..launchers import fileio
from ..plan import TaskPlan
from ..redaction import redact, redact_url
from ..spec import FileRef

if TYPE_CHECKING:
    import urllib.request

POLL_S = 0.05
DOWNLOAD_IDLE_S = 60.0  # a resource-file server silent this long is gone
DOWNLOAD_CHUNK = 1 << 16


def check_local_sources(plan: TaskPlan) -> None:
    """Bad input before anything runs (before any node exists): every local source is a regular
    file this process can read - opened, not guessed from its mode bits. Indexes are the spec's:
    mpibatch's own launchers (under mpibatch/, a path the spec keeps for them) are not counted."""
    fix = "give a readable regular file (relative paths are relative to the spec file)"
    for where, refs in (("task.common_files", plan.common_files), ("task.files", plan.files),
                        ("job.preparation.files", plan.preparation_files)):
        own = [r for r in refs if where == "task.common_files" and r.path.startswith("mpibatch/")]
        users = [r for r in refs if r not in own]
        for name, ref in [(f"{where}[{i}].source", r) for i, r in enumerate(users)] + \
                         [(f"mpibatch's {r.path}", r) for r in own]:
            if not ref.is_url:
                check_readable_file(ref.source, field=f"{name} {ref.source}", fix=fix)


def download(ref: FileRef, cache: Path, deadline: float | None = None, idle_s: float = DOWNLOAD_IDLE_S) -> Path:
    """Fetch an http(s) source once, done by `deadline` (time.monotonic()) or not at all: a socket
    timeout alone would let a server that trickles a byte every few seconds hold the run forever.
    The transfer runs in a daemon thread the caller stops waiting for at the deadline (or Ctrl-C);
    the thread then stops after its current read. Errors name the file and the URL without its SAS."""
    import http.client  # here, not at the top: a run without URL sources never pays for them
    import urllib.error

    dest = cache / hashlib.sha256(ref.source.encode()).hexdigest()[:32]  # short, whatever the file's name
    if dest.exists():
        return dest
    cache.mkdir(mode=0o700, exist_ok=True)  # made by the first download only
    stop, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def transfer() -> None:
        try:
            fetch_to(ref.source, dest, timeout=idle_s, stop=stop)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            errors.append(e)
        finally:
            done.set()

    threading.Thread(target=transfer, name=f"mpibatch-download-{Path(ref.path).name}", daemon=True).start()
    try:
        while not done.wait(POLL_S if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))):
            if deadline is not None and time.monotonic() >= deadline:
                raise DownloadTimeout(f"resource file {ref.path} from {redact_url(ref.source)} was still "
                                      "downloading")
    finally:
        stop.set()
    if errors:
        e = errors[0]
        if isinstance(e, urllib.error.HTTPError):
            raise FilesError(
                f"resource file {ref.path}: HTTP {e.code} {redact(e.reason)} from {redact_url(ref.source)}")
        if isinstance(e, (urllib.error.URLError, OSError, ValueError, http.client.HTTPException)):  # e.g. InvalidURL
            reason = redact(getattr(e, "reason", e))  # the exception may quote the URL, SAS included
            raise FilesError(f"resource file {ref.path}: cannot download {redact_url(ref.source)}: {reason}")
        raise e
    return dest


class IncompleteDownload(OSError):
    """The server sent less (or more) than its Content-Length: a failed download, never a shorter file."""


class _Stopped(Exception):
    """The caller stopped waiting for a download (its deadline, Ctrl-C)."""


def fetch_to(url: str | urllib.request.Request, dest: Path, *, timeout: float,
             stop: threading.Event | None = None, mode: int | None = None) -> int:
    """Download `url` into `dest` through the durable writer (temporary name, full disk checked, fsync,
    rename); returns the size. A body cut short of its Content-Length raises IncompleteDownload and `dest`
    is never written: a program never starts on part of its input. A set `stop` abandons the transfer.
    `mode`: the file's exact permission bits (a resource file's `fileMode`), else 0644 less the umask."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        length = resp.headers.get("Content-Length", "")
        size = int(length) if length.strip().isdigit() else None

        def piece(n: int) -> bytes:
            if stop is not None and stop.is_set():
                raise _Stopped
            return resp.read1(n)

        exact = {} if mode is None else {"mode": mode, "exact_mode": True}
        with fileio.DurableFile(dest, size=size, **exact) as out:
            out.copy_from(piece, DOWNLOAD_CHUNK)
            if size is not None and out.written != size:
                raise IncompleteDownload(f"got {out.written} of its {size} bytes (Content-Length): the transfer "
                                         "was cut short")
            out.commit()
    return out.written


class FilesError(Exception):
    """A resource file could not be had: the task fails in its files phase."""


class DownloadTimeout(FilesError):
    """The task's max_wall_clock ran out while a resource file was downloading."""
