"""Reading files the user names (spec, hosts file, resource-file sources) without surprises: only
regular files, opened without blocking (a FIFO would wait for a writer forever), size-bounded (so
/dev/zero or a huge file cannot cost memory), and every failure a SpecError naming the input."""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .errors import SpecError


def _open_regular(path: Path, field: str, fix: str) -> int:
    """An fd open for reading on the regular file `path`; SpecError for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SpecError(field, "no such file", fix) from None
    except OSError as e:
        raise SpecError(field, f"cannot be read ({e.strerror or e.__class__.__name__})", fix) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise SpecError(field, "cannot be read: not a regular file (a directory, FIFO or device)", fix)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_text_file(path: str | Path, *, field: str, limit: int, fix: str) -> str:
    """The UTF-8 text of a small regular file, read whole. `field` names the input in messages."""
    p = Path(path)
    fd = _open_regular(p, field, fix)
    try:
        with os.fdopen(fd, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as e:  # e.g. EISDIR races, EIO
        raise SpecError(field, f"cannot be read ({e.strerror or e.__class__.__name__})", fix) from None
    if len(raw) > limit:
        raise SpecError(field, f"is larger than {limit // 1024} KiB", fix)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(field, f"is not UTF-8 text (byte {e.start} is not)", fix) from None


def check_readable_file(path: str | Path, *, field: str, fix: str) -> None:
    """`path` is a regular file this process can read now (tried, not guessed from mode bits)."""
    p = Path(path)
    fd = _open_regular(p, field, fix)
    try:
        os.read(fd, 1)
    except OSError as e:
        raise SpecError(field, f"cannot be read ({e.strerror or e.__class__.__name__})", fix) from None
    finally:
        os.close(fd)
