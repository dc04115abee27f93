"""The emulator's state on disk: a snapshot (`state.json`, written whole by the durable writer) and an
append-only journal (`journal.jsonl`: one JSON line per changed entity, fsynced before the request that
changed it is answered). Start = snapshot + the journal lines after it; now and then the journal is
folded into a new snapshot and emptied.

Each line carries a sequence number and the snapshot the last number it includes, so lines a crash left
behind between writing a snapshot and emptying the journal are skipped, never applied over newer state.
A crash in the middle of an append leaves a last line without its newline: it was never acknowledged
and is ignored. Anything else that cannot be read stops the emulator with one line naming the file."""
from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from mpibatch.launchers import fileio

from ..errors import InfraError

KINDS = ("pools", "nodes", "jobs", "tasks", "schedules")
# The fields an entity of each kind cannot do without (the rest is the REST API's, checked on the way in).
REQUIRED = {"pools": ("id", "state"), "nodes": ("id", "state", "_pool", "_root"), "jobs": ("id", "state"),
            "tasks": ("id", "state", "_job"), "schedules": ("id", "state")}
FIX = "move the state directory aside to start empty, or restore the file from a backup"


class StateError(InfraError):
    """The saved state cannot be read: one line naming the file, exit 3."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem} ({FIX})")


def entity_key(kind: str, d: dict[str, Any]) -> str:
    ids = (d["_pool"], d["id"]) if kind == "nodes" else (d["_job"], d["id"]) if kind == "tasks" else (d["id"],)
    return "/".join(str(i).lower() for i in ids)


def check_entity(path: Path, kind: str, k: str, d: Any) -> None:
    if not isinstance(d, dict):
        raise StateError(path, f"{kind} entry {k[:60]!r} is not a JSON object")
    for field in REQUIRED[kind]:
        if not isinstance(d.get(field), str) or not d[field]:
            raise StateError(path, f"{kind} entry {k[:60]!r} has no {field!r}")
    if entity_key(kind, d) != k:
        raise StateError(path, f"{kind} entry {k[:60]!r} holds the id of another entry")


def _read_json(path: Path) -> Any:
    try:
        raw = path.read_bytes()
    except IsADirectoryError:
        raise StateError(path, "is a directory, not the emulator's state file") from None
    except OSError as e:
        raise StateError(path, f"cannot be read: {e.strerror or e}") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise StateError(path, f"is not the emulator's state: not valid JSON (truncated or damaged: "
                         f"{str(e)[:80]})") from None


def read_snapshot(path: Path) -> dict[str, Any]:
    """The snapshot's sections, checked; empty when there is none yet."""
    if not path.exists() and not path.is_symlink():
        return {"seq": 0, "meta": {}, **{k: {} for k in KINDS}}
    data = _read_json(path)
    if not isinstance(data, dict):
        raise StateError(path, f"is not the emulator's state: a JSON {type(data).__name__}, not an object")
    out: dict[str, Any] = {"seq": data.get("seq", 0), "meta": data.get("meta", {})}
    if not isinstance(out["seq"], int) or not isinstance(out["meta"], dict):
        raise StateError(path, "is not the emulator's state: 'seq' or 'meta' has the wrong type")
    for kind in KINDS:
        section = data.get(kind, {})
        if not isinstance(section, dict):
            raise StateError(path, f"is not the emulator's state: {kind!r} is not an object")
        for k, d in section.items():
            check_entity(path, kind, k, d)
        out[kind] = section
    return out


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The journal's complete lines, checked (a last line cut short by a crash is left out)."""
    if not path.exists() and not path.is_symlink():
        return []
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise StateError(path, f"cannot be read: {e.strerror or e}") from None
    lines = raw.split(b"\n")[:-1]  # whatever follows the last newline was never acknowledged
    out = []
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except (ValueError, RecursionError):
            raise StateError(path, f"line {n} is not valid JSON (damaged)") from None
        if not (isinstance(rec, dict) and isinstance(rec.get("seq"), int) and rec.get("kind") in KINDS
                and isinstance(rec.get("key"), str)):
            raise StateError(path, f"line {n} is not a journal record")
        if rec.get("value") is not None:
            check_entity(path, rec["kind"], rec["key"], rec["value"])
        out.append(rec)
    return out


def write_snapshot(path: Path, data: bytes) -> None:
    fileio.write_bytes(path, data)


def remove_stale_temporaries(state_dir: Path) -> None:
    """A snapshot a crash cut short never got its name: its temporary file is removed at the next start."""
    try:
        names = [n for n in os.listdir(state_dir) if fileio.is_temp_name(n)]
    except OSError:
        return
    for name in names:
        try:
            (state_dir / name).unlink()
        except OSError:
            pass


class Journal:
    """Appends to the journal: whole lines, fsynced; an append that fails is cut off again, so the
    file never holds half a line followed by more lines."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = -1
        self.size = 0

    def open_empty(self) -> None:
        self.close()
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.fsync(self.fd)
        self.size = 0

    def append(self, data: bytes) -> None:
        view, done = memoryview(data), 0
        try:
            while done < len(view):
                n = os.write(self.fd, view[done:])
                if n <= 0:
                    raise OSError(errno.ENOSPC, "short write")
                done += n
            os.fsync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)
            except OSError:
                pass
            raise
        self.size += done

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
