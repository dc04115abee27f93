"""Durations as users write them (90s, 30m, 2h, 7d, 1h30m, ISO 8601 PT2H) -> seconds."""
from __future__ import annotations

import re

from .errors import SpecError, shown

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# Longest duration accepted: ten years. Dates a run derives from it (SAS expiry = now + wall clock
# + a margin) must stay representable; "no limit" is written by leaving the field out.
MAX_SECONDS = 3650 * 86400
_MAX_TEXT = 40  # longer than any duration written by hand: refused before any regex or int() runs
_SHORT = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def iso_seconds(text: str) -> float | None:
    """An ISO 8601 duration as Batch writes it (``P1DT2H3M4.5S``, upper case) in seconds; None when
    `text` is not one (``P`` or ``PT`` alone name no part). The one ISO 8601 reader: the spec's durations
    and the emulator's REST bodies."""
    m = _ISO.match(text)
    if not m or not any(m.groups()):
        return None
    d, h, mi = (int(g or 0) for g in m.groups()[:3])
    return d * 86400 + h * 3600 + mi * 60 + float(m.group(4) or 0)


def parse_duration(value: object, field: str) -> int:
    """Seconds in `value`. Integers are seconds. Raises SpecError naming `field`."""
    fix = "write e.g. 90s, 30m, 2h, 7d, 1h30m or ISO 8601 such as PT2H"
    if isinstance(value, bool):
        raise SpecError(field, f"{shown(value)} is not a duration", fix)
    if isinstance(value, int):
        seconds = value
    elif isinstance(value, str):
        text = value.strip()
        if len(text) > _MAX_TEXT:
            raise SpecError(field, f"{shown(value)} is not a duration", fix)
        m = _SHORT.match(text.lower())
        iso = iso_seconds(text.upper())
        if text and m and any(m.groups()):
            d, h, mi, s = (int(g or 0) for g in m.groups())
            seconds = d * 86400 + h * 3600 + mi * 60 + s
        elif iso is not None:
            seconds = int(iso)
        else:
            raise SpecError(field, f"{shown(value)} is not a duration", fix)
    else:
        raise SpecError(field, f"{shown(value)} is not a duration", fix)
    if seconds <= 0:
        raise SpecError(field, f"{shown(value)} must be longer than zero", fix)
    if seconds > MAX_SECONDS:
        raise SpecError(field, f"{shown(value)} is longer than {MAX_SECONDS // 86400}d (ten years)",
                        "use a shorter duration, or leave the field out for no limit")
    return seconds


def iso8601(seconds: int) -> str:
    """Seconds as the ISO 8601 duration the Batch REST API takes (PT2H30M)."""
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    out = "P" + (f"{d}D" if d else "")
    time = (f"{h}H" if h else "") + (f"{m}M" if m else "") + (f"{s}S" if s else "")
    return out + ("T" + time if time else "") if (d or time) else "PT0S"


def human(seconds: int) -> str:
    d, rest = divmod(seconds, 86400)
    h, rest = divmod(rest, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{v}{u}" for v, u in ((d, "d"), (h, "h"), (m, "m"), (s, "s")) if v]
    return "".join(parts) or "0s"
