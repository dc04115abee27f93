"""`$expand=stats`: the statistics object of a pool, job or task in the version's own model. The emulator
measures no CPU, I/O or core time, so those are zero; what it knows is filled in: the times the statistics
cover and a completed task's wall-clock time. Pure."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from .errors import now_iso

ZERO = {"int": 0, "number": 0.0, "duration": "PT0S", "bool": False}


def _zeros(model: str, models: dict[str, Any], start: str, now: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (kind, _req, _ro) in models.get(model, {}).items():
        if kind == "datetime":
            out[name] = start if name == "startTime" else now
        elif kind.startswith("@"):
            out[name] = _zeros(kind[1:], models, start, now)
        elif kind in ZERO:
            out[name] = ZERO[kind]
    return out


def _duration(start: str, end: str) -> str:
    def parse(t: str) -> datetime:
        return datetime.fromisoformat(t.replace("Z", "+00:00"))

    seconds = max(0.0, (parse(end) - parse(start)).total_seconds())
    return f"PT{seconds:.3f}S"


def stats_of(resource: dict[str, Any], model: str, models: dict[str, Any]) -> dict[str, Any]:
    """The statistics object (`model`, one of the version's `models`) of a stored pool, job or task."""
    now = now_iso()
    start = resource.get("creationTime") or now
    out = _zeros(model, models, start, now)
    out["url"] = f"{resource.get('url', '')}/stats"
    info = resource.get("executionInfo") or {}
    if "wallClockTime" in out and info.get("startTime"):
        try:
            out["wallClockTime"] = _duration(info["startTime"], info.get("endTime") or now)
        except ValueError:
            pass  # a time the emulator did not write: leave the zero
    return out
