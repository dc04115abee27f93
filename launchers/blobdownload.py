"""Verified downloads of many blobs at once, with bounded memory (docs/file-conventions.md#transfers).

Standard library only, like ``blobio``. One pool of ``workers`` threads, each with its own kept-alive
connection, fetches ranges of ``range_size`` from every file in flight (not a pool per file): a thousand
small blobs keep every worker busy, and so does one big blob. Each range is read straight into one of
``2 * workers`` reused buffers (no per-range allocation), written at its offset with ``pwrite``, and hashed in
order: the thread that completes the next range to hash also hashes the ranges already waiting after it, so
the MD5 needs no second pass over the file. Memory is the buffers, about 64 MiB by default, whatever the file
sizes and counts.

A file lands in ``.<name>.part`` beside its destination and is renamed only when its size and MD5 match what
storage says; a failed or interrupted file leaves no ``.part``. A destination already there with that size and
MD5 is kept ("kept").
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .blobio import BlobInfo, ContainerClient

Outcome = str | BaseException  # "downloaded", "kept", or why not


class _File:
    """One file in flight: its .part descriptor and the in-order MD5 of what arrived."""

    def __init__(self, info: BlobInfo, dest: str, part: str, fd: int, ranges: int):
        self.info, self.dest, self.part, self.fd = info, dest, part, fd
        self.left = ranges  # ranges not yet finished (fetched and hashed, or abandoned)
        self.md5 = hashlib.md5()
        self.hashed = 0  # bytes hashed so far, in order
        self.waiting: dict[int, memoryview] = {}  # ranges fetched ahead of the next one to hash
        self.error: BaseException | None = None
        self.lock = threading.Lock()


def download_many(client: ContainerClient, items: Iterable[tuple[BlobInfo, str]], *,
                  on_bytes: Callable[[int], None] | None = None,
                  on_done: Callable[[BlobInfo, Outcome], None] | None = None) -> list[Outcome]:
    """Download each listed blob to its destination, verified; one outcome per item, in order: "downloaded",
    "kept", or the exception (BlobError, OSError) that stopped that file - the others still go.
    An interruption (KeyboardInterrupt) waits for the ranges in flight, removes every .part, and propagates."""
    try:
        from .blobio import BlobError, b64, file_md5
    except ImportError:  # run as a script beside blobio.py
        from blobio import BlobError, b64, file_md5  # type: ignore[no-redef]

    workers, size = client.workers, client.range_size
    free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
    for _ in range(2 * workers):
        free.put(bytearray(size))
    items_list = list(items)
    outcomes: list[Outcome] = ["" for _ in items_list]
    open_files: dict[int, _File] = {}
    lock = threading.Lock()

    def done(i: int, outcome: Outcome) -> None:
        outcomes[i] = outcome
        if on_done is not None:
            on_done(items_list[i][0], outcome)

    def finish(i: int, f: _File) -> None:
        """The last range of `f` is in: close, verify, rename (or remove the .part)."""
        with lock:
            open_files.pop(i, None)
        try:
            os.close(f.fd)
            if f.error is None:
                if f.hashed != f.info.size:
                    raise BlobError(f"{f.info.name}: size mismatch: got {f.hashed} bytes, storage says {f.info.size}")
                if f.info.md5 is not None and f.md5.digest() != f.info.md5:
                    raise BlobError(f"{f.info.name}: MD5 mismatch: got {b64(f.md5.digest())}, "
                                    f"storage says {b64(f.info.md5)}")
                os.replace(f.part, f.dest)
        except (BlobError, OSError) as e:
            f.error = f.error or e
        if f.error is not None:
            with contextlib.suppress(OSError):
                os.unlink(f.part)
        done(i, f.error or "downloaded")

    def fetch(i: int, f: _File, start: int, n: int, buf: bytearray) -> None:
        view = memoryview(buf)[:n]
        try:
            if f.error is None:
                client.read_range_into(f.info.name, start, view)
                os.pwrite(f.fd, view, start)
                if on_bytes is not None:
                    on_bytes(n)
        except BaseException as e:  # noqa: BLE001 - recorded for this file; the others go on
            with f.lock:
                f.error = f.error or e
        with f.lock:
            f.waiting[start] = view
            if f.error is None:  # hash in order: this range and any that were waiting for it
                while f.hashed in f.waiting:
                    ready = f.waiting.pop(f.hashed)
                    f.md5.update(ready)
                    f.hashed += len(ready)
                    free.put(ready.obj)  # type: ignore[arg-type]
                    f.left -= 1
            else:  # this file failed: what waits will never be hashed
                f.left -= len(f.waiting)
                for ready in f.waiting.values():
                    free.put(ready.obj)  # type: ignore[arg-type]
                f.waiting.clear()
            last = f.left == 0
        if last:
            finish(i, f)

    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="get-range")
    try:
        for i, (info, dest) in enumerate(items_list):
            try:
                f = _start(info, dest, size, file_md5)
            except OSError as e:
                done(i, e)
                continue
            if isinstance(f, str):  # kept
                if on_bytes is not None:
                    on_bytes(info.size)
                done(i, f)
                continue
            if f.left == 0:  # an empty blob
                finish(i, f)
                continue
            with lock:
                open_files[i] = f
            for start in range(0, info.size, size):
                buf = free.get()  # blocks while every buffer is in flight: the memory bound
                if f.error is not None:  # an earlier range of this file failed: fetch no more of it
                    free.put(buf)
                    with f.lock:
                        f.left -= (info.size - start + size - 1) // size
                        last = f.left == 0
                    if last:
                        finish(i, f)
                    break
                pool.submit(fetch, i, f, start, min(size, info.size - start), buf)
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        with lock:
            leftover = list(open_files.values())
        for f in leftover:
            with contextlib.suppress(OSError):
                os.close(f.fd)
            with contextlib.suppress(OSError):
                os.unlink(f.part)
        raise
    pool.shutdown(wait=True)
    return outcomes


def _start(info: BlobInfo, dest: str, range_size: int, file_md5: Callable[[str], bytes]) -> _File | str:
    """"kept" when `dest` is already there and verified, else the opened .part of a new download."""
    if os.path.isfile(dest) and not os.path.islink(dest) and os.path.getsize(dest) == info.size \
            and (info.md5 is None or file_md5(dest) == info.md5):
        return "kept"
    os.makedirs(os.path.dirname(dest) or ".", exist_ok=True)
    part = os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o644)
    return _File(info, dest, part, fd, (info.size + range_size - 1) // range_size)
