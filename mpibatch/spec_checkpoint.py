"""``task.checkpoint``: which files of a running program are its checkpoints, where they come from, how
often the tracker looks and how many complete generations are kept (docs/checkpoints.md). Pure."""
from __future__ import annotations

from typing import Any

from .durations import parse_duration
from .errors import SpecError, shown
from .spec_fields import Collector, as_choice, as_int, as_mapping, as_str, check_keys
from .spec_model import DEFAULT_EVERY, Checkpoint

CHECKPOINT_FROM = ("primary", "all")
MAX_KEEP = 100
MAX_EVERY = 7 * 86400


def _pattern(value: Any, where: str) -> str:
    text = as_str(value, where)
    if not text.strip() or text.startswith("/") or ".." in text.split("/"):
        raise SpecError(where, f"{shown(value)} is not a pattern relative to the working directory",
                        'write e.g. "restart.*" or "ckpt/**"')
    return text


def parse_checkpoint(value: Any, where: str = "task.checkpoint") -> Checkpoint | None:
    """``{pattern, from, every, keep}``; None when the field is absent."""
    if value is None:
        return None
    m = as_mapping(value, where)
    check_keys(m, ("pattern", "from", "every", "keep"), where)
    c = Collector()
    if "pattern" not in m:
        c.errors.append(SpecError(f"{where}.pattern", "is missing",
                                  'name the checkpoint files, e.g. pattern: "restart.*"'))
    pattern = c.run(lambda: _pattern(m["pattern"], f"{where}.pattern")) if "pattern" in m else None
    from_ = c.run(lambda: as_choice(m.get("from", "primary"), f"{where}.from", CHECKPOINT_FROM), "primary")
    every = c.run(lambda: _every(m.get("every", DEFAULT_EVERY), f"{where}.every"), DEFAULT_EVERY)
    keep = c.run(lambda: as_int(m.get("keep", 2), f"{where}.keep", 1, MAX_KEEP), 2)
    c.raise_if_any()
    assert pattern is not None
    return Checkpoint(pattern=pattern, from_=from_, every=every, keep=keep)


def _every(value: Any, where: str) -> int:
    seconds = parse_duration(value, where)
    if seconds > MAX_EVERY:
        raise SpecError(where, f"{shown(value)} is longer than 7d", "look at least once a week, e.g. 10m")
    return seconds
