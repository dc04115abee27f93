"""One durable writer and one bounded reader for every file a user relies on (docs/architecture.md#files).

Standard library only: the nodes' scripts use it beside the client, so there is one way to write a file.

* :class:`DurableFile` writes a file under a short temporary name beside its target (``.mpibatch-<hex>.part``,
  whatever the target's name: a 255-byte name still has room), checks every write for short writes and a
  full disk, verifies the size (and the MD5, where the caller knows it) before the target gets its name,
  fsyncs, renames, and removes the temporary file on any error or interruption. A file under its final name
  is always whole.
* :func:`read_range` / :func:`iter_range` / :func:`read_tail` read a range of a file, never the whole file:
  memory stays flat whatever the file's size. They open a path with :func:`open_regular` (a symlink, FIFO
  or device is refused, never read) or take a file already open; ``open_regular(rel, beneath=root)``
  refuses a symlink anywhere on the way (the emulator's files API serves nothing outside a task's tree).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from typing import BinaryIO

try:  # as the package mpibatch.launchers (client side)
    from .protocol import NODE_FILE_PREFIX
except ImportError:  # as a script on the node: the modules are shipped beside it
    from protocol import NODE_FILE_PREFIX  # type: ignore[no-redef]

# Temporaries start with mpibatch's own prefix (never collected as outputs) and end with TEMP_SUFFIX:
# cleanups know them by name.
TEMP_PREFIX = NODE_FILE_PREFIX
TEMP_SUFFIX = ".part"
CHUNK = 1024 * 1024  # the bounded reader's piece size
MD5_CHUNK = 8 * 1024 * 1024


class WriteError(OSError):
    """A file could not be written whole; the message names the file (its final name) and why."""


def temp_name(dest: str) -> str:
    """A temporary name beside `dest`, of bounded length whatever `dest`'s name is."""
    return os.path.join(os.path.dirname(dest) or ".", f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}")


def is_temp_name(name: str) -> bool:
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def file_md5(path: str, chunk: int = MD5_CHUNK) -> bytes:
    """The MD5 of a file, read in pieces (the one MD5-of-a-file function)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while data := f.read(chunk):
            h.update(data)
    return h.digest()


class DurableFile:
    """Write `dest` durably: ``with DurableFile(dest, size=n) as f: f.write(b); f.commit()``.

    ``write`` appends, ``pwrite`` writes at an offset (ranged downloads); both loop over short writes and
    turn ENOSPC / EDQUOT into a :class:`WriteError` naming `dest`. ``commit`` checks the size against
    `size` (or the bytes written) and the MD5 against `md5` (computed over the temporary file when the
    caller did not hash in order), fsyncs, renames onto `dest` and fsyncs the directory. Leaving the
    ``with`` block without ``commit`` - an error, Ctrl-C - removes the temporary file; `dest` is untouched.
    `mode` is filtered by the umask, unless `exact_mode`: then the file gets exactly `mode` (fchmod before
    the rename, so `dest` never shows another mode).
    """

    def __init__(self, dest: str | os.PathLike[str], *, size: int | None = None, md5: bytes | None = None,
                 mode: int = 0o644, exact_mode: bool = False) -> None:
        self.dest = os.fspath(dest)
        self.size, self.md5, self.mode, self.exact_mode = size, md5, mode, exact_mode
        self.part = temp_name(self.dest)
        self.written = 0  # bytes appended by write()
        self.committed = False
        self.fd = -1
        try:
            self.fd = os.open(self.part, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), mode)
        except OSError as e:
            raise self._error("cannot create a temporary file beside it", e) from None

    def __enter__(self) -> DurableFile:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.committed:
            self.abort()

    def _error(self, what: str, e: OSError | None = None) -> WriteError:
        if e is not None and e.errno in (errno.ENOSPC, errno.EDQUOT):
            what = f"{what}: no space left on the device"
        elif e is not None:
            what = f"{what}: {e.strerror or e}"
        err = WriteError(f"{self.dest}: {what}")
        err.errno = e.errno if e is not None else None
        return err

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self._write_at(memoryview(data), None)

    def pwrite(self, data: bytes | bytearray | memoryview, offset: int) -> None:
        self._write_at(memoryview(data), offset)

    def _write_at(self, view: memoryview, offset: int | None) -> None:
        done = 0
        while done < len(view):
            try:
                if offset is None:
                    n = os.write(self.fd, view[done:])
                else:
                    n = os.pwrite(self.fd, view[done:], offset + done)
            except OSError as e:
                raise self._error(f"write failed after {done} of {len(view)} bytes", e) from None
            if n <= 0:  # a write that writes nothing would loop for ever
                raise self._error(f"short write: {done} of {len(view)} bytes", OSError(errno.ENOSPC, "no space"))
            done += n
        if offset is None:
            self.written += done

    def copy_from(self, read: Callable[[int], bytes], chunk: int = CHUNK) -> int:
        """Append everything `read(n)` returns until it returns b''; returns the bytes copied."""
        total = 0
        while data := read(chunk):
            self.write(data)
            total += len(data)
        return total

    def commit(self, *, md5: bytes | None = None) -> None:
        """Verify, fsync and give the file its final name. `md5`: the digest the caller computed in order
        (else the file is hashed when an expected MD5 was given)."""
        try:
            actual = os.fstat(self.fd).st_size
            expected = self.size if self.size is not None else self.written
            if actual != expected:
                raise self._error(f"size mismatch: {actual} bytes written, {expected} expected")
            if self.md5 is not None:
                got = md5 if md5 is not None else file_md5(self.part)
                if got != self.md5:
                    raise self._error("MD5 mismatch: the bytes written are not the ones expected")
            if self.exact_mode:  # os.open's mode went through the umask
                os.fchmod(self.fd, self.mode)
            os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.part, self.dest)
        except WriteError:
            self.abort()
            raise
        except OSError as e:
            self.abort()
            raise self._error("could not be completed", e) from None
        self.committed = True
        _fsync_dir(os.path.dirname(self.dest) or ".")

    def abort(self) -> None:
        """Close and remove the temporary file (idempotent)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(OSError):
            os.unlink(self.part)


def write_bytes(dest: str | os.PathLike[str], data: bytes, *, mode: int = 0o644) -> None:
    """Write a small file whole, durably (state files, records)."""
    with DurableFile(dest, size=len(data), mode=mode) as f:
        f.write(data)
        f.commit()


def copy_file(src: str | os.PathLike[str], dest: str | os.PathLike[str], *, mode: int | None = None,
              exact_mode: bool = False) -> int:
    """Copy `src` to `dest` durably; returns the size. The source must not change size while it is read."""
    with open(src, "rb") as s:
        size = os.fstat(s.fileno()).st_size
        with DurableFile(dest, size=size, mode=0o644 if mode is None else mode, exact_mode=exact_mode) as f:
            f.copy_from(s.read)
            f.commit()
    return size


def _fsync_dir(path: str) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened and synced
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# ------------------------------------------------------------------------------------------ bounded reading
class NotRegularFile(OSError):
    """A FIFO, device, socket or directory where a regular file was expected (never read: it may not end)."""


def _open_flags() -> int:
    return os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0) | os.O_NONBLOCK


def open_regular(path: str | os.PathLike[str], *, beneath: str | os.PathLike[str] | None = None) -> BinaryIO:
    """Open a regular file for reading, never through a symlink, never blocking on a FIFO or device.

    Without `beneath`, the last component of `path` must not be a symlink (``O_NOFOLLOW``). With `beneath`
    (a directory), `path` is relative to it and *no* component may be a symlink, ``..`` or absolute: each
    directory is opened with ``O_NOFOLLOW`` relative to the one before (``openat``), so a link a task made
    (``wd/leak -> /etc/shadow``, ``wd/d -> /etc``) is refused, not followed, and nothing can swap a component
    between a check and the open. A symlink raises OSError ``ELOOP``, a missing file FileNotFoundError, a
    FIFO / device / directory :class:`NotRegularFile`."""
    if beneath is None:
        fd = os.open(path, _open_flags())
    else:
        fd = _open_beneath(os.fspath(beneath), os.fspath(path))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFile(errno.EINVAL, "not a regular file", os.fspath(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _open_beneath(root: str, rel: str) -> int:
    parts = rel.replace("\\", "/").split("/")
    if rel.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise FileNotFoundError(errno.ENOENT, "not a plain relative path", rel)
    dirfd = os.open(root, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts[:-1]:
            try:
                nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
                              dir_fd=dirfd)
            except NotADirectoryError:  # a symlink to a directory gives ENOTDIR with O_NOFOLLOW | O_DIRECTORY
                if stat.S_ISLNK(os.lstat(part, dir_fd=dirfd).st_mode):
                    raise OSError(errno.ELOOP, "a symlink on the way", rel) from None
                raise
            os.close(dirfd)
            dirfd = nxt
        return os.open(parts[-1], _open_flags(), dir_fd=dirfd)
    finally:
        os.close(dirfd)


def file_range(f: BinaryIO, start: int = 0, length: int | None = None, *, chunk: int = CHUNK) -> Iterator[bytes]:
    """The bytes of an open file from `start`, `length` of them (to the end when None), in pieces of at
    most `chunk` bytes, read with ``pread`` (the file's position is left alone). A range past the end
    yields what there is."""
    if start < 0 or (length is not None and length < 0):
        raise ValueError("a range starts at 0 or later and has a length of 0 or more")
    fd, pos, left = f.fileno(), start, length
    while left is None or left > 0:
        data = os.pread(fd, chunk if left is None else min(chunk, left), pos)
        if not data:
            return
        pos += len(data)
        if left is not None:
            left -= len(data)
        yield data


def iter_range(src: str | os.PathLike[str] | BinaryIO, start: int = 0, length: int | None = None, *,
               chunk: int = CHUNK) -> Iterator[bytes]:
    """:func:`file_range` of a path (opened with :func:`open_regular`: a symlink or FIFO is an OSError)
    or of a file already open."""
    if isinstance(src, (str, os.PathLike)):
        with open_regular(src) as f:
            yield from file_range(f, start, length, chunk=chunk)
    else:
        yield from file_range(src, start, length, chunk=chunk)


def read_range(src: str | os.PathLike[str] | BinaryIO, start: int, length: int, *,
               limit: int = 64 * CHUNK) -> bytes:
    """`length` bytes of `src` from `start` (fewer at the end of the file); at most `limit` at once."""
    if length > limit:
        raise ValueError(f"a range of {length} bytes is over the {limit}-byte limit of one read")
    return b"".join(iter_range(src, start, length))


def read_tail(src: str | os.PathLike[str] | BinaryIO, max_bytes: int) -> bytes:
    """The last `max_bytes` bytes of `src` (all of it when smaller)."""
    if isinstance(src, (str, os.PathLike)):
        with open_regular(src) as f:
            return read_tail(f, max_bytes)
    size = os.fstat(src.fileno()).st_size
    return read_range(src, max(0, size - max_bytes), min(size, max_bytes), limit=max(max_bytes, 1))
