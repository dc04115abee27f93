"""Verified downloads of many blobs at once, with bounded memory (docs/file-conventions.md#transfers).

Standard library only, like ``blobio``, which it builds on (``blobio`` never imports this module). One pool of
``workers`` threads, each with its own kept-alive connection, fetches ranges of ``range_size`` from every file
in flight (not a pool per file): a thousand small blobs keep every worker busy, and so does one big blob. Each
range is read straight into one of ``2 * workers`` reused buffers (no per-range allocation), written at its
offset through the durable writer (``fileio.DurableFile.pwrite``: short writes and a full disk are errors), and
hashed in order: the thread that completes the next range to hash also hashes the ranges already waiting after
it, so the MD5 needs no second pass over the file. Memory is the buffers, about 64 MiB by default, whatever the
file sizes and counts.

A file lands under a short temporary name beside its destination and gets its name only when its size and MD5
match what storage says; a failed or interrupted file leaves no temporary file. A destination already there
with that size and MD5 is kept ("kept"); one that is there but does not verify (a truncated file) is removed
before the download starts, so a failed rerun never leaves it under its name.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

try:
    from . import fileio
    from .blobio import BlobError, BlobInfo, ContainerClient, b64
except ImportError:  # run as a script beside blobio.py and fileio.py
    import fileio  # type: ignore[no-redef]
    from blobio import BlobError, BlobInfo, ContainerClient, b64  # type: ignore[no-redef]

Outcome = str | BaseException  # "downloaded", "kept", or why not
OnBytes = Callable[[int], None] | None


class _File:
    """One file in flight: its durable temporary file and the in-order MD5 of what arrived."""

    def __init__(self, info: BlobInfo, out: fileio.DurableFile, ranges: int):
        self.info, self.out = info, out
        self.left = ranges  # ranges not yet finished (fetched and hashed, or abandoned)
        self.md5 = hashlib.md5()
        self.hashed = 0  # bytes hashed so far, in order
        self.waiting: dict[int, memoryview] = {}  # ranges fetched ahead of the next one to hash
        self.error: BaseException | None = None
        self.lock = threading.Lock()


def download_to(client: ContainerClient, info: BlobInfo, dest: str, *, on_bytes: OnBytes = None) -> str:
    """Download a listed blob to `dest`, verified; returns "downloaded" or "kept" (already there and
    verified). Raises BlobError (size or MD5 mismatch included) and OSError; no partial `dest` ever."""
    outcome = download_many(client, [(info, dest)], on_bytes=on_bytes)[0]
    if isinstance(outcome, BaseException):
        raise outcome
    return outcome


def download_many(client: ContainerClient, items: Iterable[tuple[BlobInfo, str]], *, on_bytes: OnBytes = None,
                  on_done: Callable[[BlobInfo, Outcome], None] | None = None) -> list[Outcome]:
    """Download each listed blob to its destination, verified; one outcome per item, in order: "downloaded",
    "kept", or the exception (BlobError, OSError) that stopped that file - the others still go.
    An interruption (KeyboardInterrupt) waits for the ranges in flight, removes every temporary file, and
    propagates."""
    run = _Downloads(client, list(items), on_bytes, on_done)
    try:
        for i in range(len(run.items)):
            run.start(i)
    except BaseException:
        run.abort()
        raise
    run.pool.shutdown(wait=True)
    return run.outcomes


class _Downloads:
    """One download_many call: the buffers, the pool, the files in flight and their outcomes."""

    def __init__(self, client: ContainerClient, items: list[tuple[BlobInfo, str]], on_bytes: OnBytes,
                 on_done: Callable[[BlobInfo, Outcome], None] | None) -> None:
        self.client, self.items, self.on_bytes, self.on_done = client, items, on_bytes, on_done
        self.size = client.range_size
        self.free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(2 * client.workers):
            self.free.put(bytearray(self.size))
        self.outcomes: list[Outcome] = ["" for _ in items]
        self.open_files: dict[int, _File] = {}
        self.lock = threading.Lock()
        self.pool = ThreadPoolExecutor(max_workers=client.workers, thread_name_prefix="get-range")

    # ------------------------------------------------------------------ steps
    def start(self, i: int) -> None:
        """Open item i (or keep it, or record why it cannot start) and queue its ranges."""
        info, dest = self.items[i]
        try:
            f = _open(info, dest, self.size)
        except OSError as e:
            self.done(i, e)
            return
        if f is None:  # kept
            self.count(info.size)
            self.done(i, "kept")
            return
        if f.left == 0:  # an empty blob
            self.finish(i, f)
            return
        with self.lock:
            self.open_files[i] = f
        self.queue_ranges(i, f)

    def queue_ranges(self, i: int, f: _File) -> None:
        for start in range(0, f.info.size, self.size):
            buf = self.free.get()  # blocks while every buffer is in flight: the memory bound
            if f.error is not None:  # an earlier range of this file failed: fetch no more of it
                self.free.put(buf)
                self.abandon(i, f, (f.info.size - start + self.size - 1) // self.size)
                return
            self.pool.submit(self.fetch, i, f, start, min(self.size, f.info.size - start), buf)

    def fetch(self, i: int, f: _File, start: int, n: int, buf: bytearray) -> None:
        view = memoryview(buf)[:n]
        try:
            if f.error is None:
                self.client.read_range_into(f.info.name, start, view)
                f.out.pwrite(view, start)
                self.count(n)
        except BaseException as e:  # noqa: BLE001 - recorded for this file; the others go on
            with f.lock:
                f.error = f.error or e
        if self.hash_in_order(f, start, view):
            self.finish(i, f)

    def hash_in_order(self, f: _File, start: int, view: memoryview) -> bool:
        """Hash this range and any that were waiting for it; True when it was the file's last range."""
        with f.lock:
            f.waiting[start] = view
            if f.error is None:
                while f.hashed in f.waiting:
                    ready = f.waiting.pop(f.hashed)
                    f.md5.update(ready)
                    f.hashed += len(ready)
                    self.free.put(ready.obj)  # type: ignore[arg-type]
                    f.left -= 1
            else:  # this file failed: what waits will never be hashed
                f.left -= len(f.waiting)
                for ready in f.waiting.values():
                    self.free.put(ready.obj)  # type: ignore[arg-type]
                f.waiting.clear()
            return f.left == 0

    def abandon(self, i: int, f: _File, ranges: int) -> None:
        with f.lock:
            f.left -= ranges
            last = f.left == 0
        if last:
            self.finish(i, f)

    def finish(self, i: int, f: _File) -> None:
        """The last range of `f` is in: verify and give it its name (or remove the temporary file)."""
        with self.lock:
            self.open_files.pop(i, None)
        try:
            if f.error is None:
                _verify(f)
                f.out.commit(md5=f.md5.digest())
        except (BlobError, OSError) as e:
            f.error = f.error or e
        if f.error is not None:
            f.out.abort()
        self.done(i, f.error or "downloaded")

    def abort(self) -> None:
        """Interrupted: wait for the ranges in flight, then remove every temporary file."""
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self.lock:
            leftover = list(self.open_files.values())
        for f in leftover:
            f.out.abort()

    # ------------------------------------------------------------------ reporting
    def count(self, n: int) -> None:
        if self.on_bytes is not None:
            self.on_bytes(n)

    def done(self, i: int, outcome: Outcome) -> None:
        self.outcomes[i] = outcome
        if self.on_done is not None:
            self.on_done(self.items[i][0], outcome)


def _verify(f: _File) -> None:
    if f.hashed != f.info.size:
        raise BlobError(f"{f.info.name}: size mismatch: got {f.hashed} bytes, storage says {f.info.size}")
    if f.info.md5 is not None and f.md5.digest() != f.info.md5:
        raise BlobError(f"{f.info.name}: MD5 mismatch: got {b64(f.md5.digest())}, storage says {b64(f.info.md5)}")


def _open(info: BlobInfo, dest: str, range_size: int) -> _File | None:
    """None ("kept") when `dest` is already there and verified, else the durable file of a new download.
    A `dest` that is there but does not verify is removed first: it is never kept under its name."""
    if os.path.isfile(dest) and not os.path.islink(dest):
        if os.path.getsize(dest) == info.size and (info.md5 is None or fileio.file_md5(dest) == info.md5):
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(dest)
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    out = fileio.DurableFile(dest, size=info.size, md5=info.md5)
    return _File(info, out, (info.size + range_size - 1) // range_size)
