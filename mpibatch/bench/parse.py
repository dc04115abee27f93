"""Parse ping-pong benchmark output into :class:`Sample` rows (message size, one-way latency, bandwidth).

Pure functions: text in, samples out. Three programs are understood; their units were checked in their
sources (see ``tests/data/bench/README.md`` for the captured outputs these parsers are tested on):

* **IMB-MPI1 PingPong** (Intel MPI Benchmarks). ``t[usec]`` is already half the round trip (IMB sets
  ``scale_time = 0.5`` for PingPong in ``IMB_parse_name_mpi1.c``). ``Mbytes/sec`` is 10^6 bytes/s in the IMB
  sources since IMB 2018 (``MEGA = 1.0 / 1e6`` in ``IMB_output.c``; the Intel IMB user guide says "million bytes
  per second"); very old IMB releases are reported to have used 2^20. Rather than trust a version number we
  check the printed column against ``size / t`` and convert if it was 2^20 (see :func:`_imb_mbytes_factor`).
* **OSU micro-benchmarks** ``osu_latency`` (one-way microseconds: ``t_total * 1e6 / (2 * iterations)``) and
  ``osu_bw`` (10^6 bytes/s: ``size / 1e6 * window * iterations / t_total``). ``osu_bw`` keeps 64 messages in
  flight, so its bandwidth is a streaming figure, not ``size / latency``; it is joined to latency rows with
  :func:`merge_latency_bw`.
* **mpi4py.bench pingpong** (``python -m mpi4py.bench pingpong``). ``Time Mean [s]`` is one-way, in
  *seconds* (``run_pingpong`` returns ``(t_end - t_start) / 2``); we multiply by 10^6. ``Bandwidth [MB/s]`` is
  ``nbytes / t_mean / 1e6``.

Every :class:`Sample` holds one-way latency in microseconds and bandwidth in MB/s = 10^6 bytes/s.
Lines tagged by the launcher (Open MPI ``--output tag``: ``[1,0]<stdout>: ``; Intel MPI / MPICH
``-prepend-rank``: ``[0] ``) are untagged first. Unparseable text raises :class:`ValueError`.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, replace

__all__ = [
    "PROGRAM_IMB",
    "PROGRAM_MPI4PY",
    "PROGRAM_OSU_BW",
    "PROGRAM_OSU_LATENCY",
    "Sample",
    "detect_and_parse",
    "detect_program",
    "merge_latency_bw",
    "parse_imb_pingpong",
    "parse_mpi4py_pingpong",
    "parse_osu_bw",
    "parse_osu_latency",
]

PROGRAM_IMB = "IMB-MPI1 PingPong"
PROGRAM_OSU_LATENCY = "osu_latency"
PROGRAM_OSU_BW = "osu_bw"
PROGRAM_MPI4PY = "mpi4py.bench pingpong"


@dataclass(frozen=True)
class Sample:
    """One message size of a ping-pong run.

    ``latency_us`` is one-way (half the round trip), microseconds. ``bandwidth_mbs`` is 10^6 bytes/s, or None
    where the program printed none (or printed a meaningless 0 for a 0-byte message). ``program`` names what
    produced it (``PROGRAM_*``).
    """

    size: int
    latency_us: float
    bandwidth_mbs: float | None
    program: str


_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
# Launcher tags: Open MPI "--output tag" / "--tag-output" writes "[jobid,rank]<stdout>: ", Intel MPI and
# MPICH "-prepend-rank" write "[rank] ".
_TAG = re.compile(r"^\[\d+(?:,\d+)?\](?:<std(?:out|err)>:)?\s?")


def _lines(text: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"expected benchmark output as str, got {type(text).__name__}")
    return [_TAG.sub("", line, count=1).rstrip() for line in text.splitlines()]


def _excerpt(text: str, limit: int = 120) -> str:
    flat = " | ".join(line.strip() for line in text.strip().splitlines()[:3])
    if not flat:
        return "(empty output)"
    return repr(flat if len(flat) <= limit else flat[:limit] + "...")


def _finite(value: float, what: str, line: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} {value!r} is not a finite, non-negative number in line {line.strip()!r}")
    return value


# ---------------------------------------------------------------------------------------------------------
# IMB
# ---------------------------------------------------------------------------------------------------------
_IMB_SECTION = re.compile(r"^#\s*Benchmarking\s+(?:Multi-)?PingPong\s*$", re.IGNORECASE)
_IMB_ANY_SECTION = re.compile(r"^#\s*Benchmarking\s+\S+", re.IGNORECASE)
_IMB_TIME_COLUMNS = ("t[usec]", "t_avg[usec]")
_MIB_OVER_MB = 1048576 / 1e6  # 1.048576


def _imb_mbytes_factor(rows: list[tuple[int, float, float]]) -> float:
    """Factor turning IMB's printed ``Mbytes/sec`` into 10^6 bytes/s.

    IMB defines bandwidth as ``size / t``. We compare the printed column with ``size / t`` on rows where ``t``
    is large enough for its two printed decimals not to matter (t >= 1 us): a ratio near 1 means 10^6 bytes
    (IMB 2018 and later, including the 2021.11 in impi-rt 2021.18.1), near 1.048576 means 2^20 bytes.
    """
    ratios = sorted((size / t) / mbs for size, t, mbs in rows if size > 0 and t >= 1.0 and mbs > 0)
    if not ratios:
        return 1.0
    median = ratios[len(ratios) // 2]
    return _MIB_OVER_MB if abs(median - _MIB_OVER_MB) < abs(median - 1.0) else 1.0


def _imb_header(lines: list[str], start: int) -> tuple[int, list[str]]:
    """(line index, column names) of the ``#bytes ...`` header after the section title at ``start``."""
    for i in range(start + 1, len(lines)):
        stripped = lines[i].strip()
        if stripped.startswith("#bytes"):
            return i, stripped.split()
        if _IMB_ANY_SECTION.match(stripped):
            break
    raise ValueError("IMB PingPong section has no '#bytes ...' column header (output cut short?)")


def _imb_rows(lines: list[str], time_col: int, bw_col: int | None) -> list[tuple[int, float, float | None]]:
    """(size, t[usec], Mbytes/sec) of the table rows in ``lines`` (those after the header), up to its end."""
    rows: list[tuple[int, float, float | None]] = []
    for line in lines:
        stripped = line.strip()
        fields = stripped.split()
        # Blank lines and notes ("# ... waiting in MPI_Barrier") may come before the first row; after it,
        # anything that is not a number row ends the table, and so does the next section's title at any time.
        if stripped.startswith("#") and (rows or _IMB_ANY_SECTION.match(stripped)):
            break
        if not fields or stripped.startswith("#") or not fields[0].isdigit() or len(fields) <= time_col:
            if rows:
                break
            continue
        try:
            t_us = _finite(float(fields[time_col]), "time", line)
            mbs = float(fields[bw_col]) if bw_col is not None and len(fields) > bw_col else None
        except ValueError as exc:
            raise ValueError(f"unreadable IMB PingPong row {stripped!r}: {exc}") from None
        rows.append((int(fields[0]), t_us, mbs))
    return rows


def parse_imb_pingpong(text: str) -> list[Sample]:
    """Samples of the first ``# Benchmarking PingPong`` section of IMB-MPI1 output.

    Other benchmarks in the same output (PingPing, Sendrecv...) are skipped. The columns are found by their
    header names (``#bytes``, ``t[usec]`` or ``t_avg[usec]`` for ``-multi`` output, ``Mbytes/sec``).
    """
    lines = _lines(text)
    start = next((i for i, line in enumerate(lines) if _IMB_SECTION.match(line.strip())), None)
    if start is None:
        raise ValueError(f"not IMB PingPong output: no '# Benchmarking PingPong' section in {_excerpt(text)}")
    header_at, columns = _imb_header(lines, start)
    time_col = next((columns.index(c) for c in _IMB_TIME_COLUMNS if c in columns), None)
    bw_col = next((i for i, c in enumerate(columns) if c.lower() == "mbytes/sec"), None)
    if time_col is None:
        raise ValueError(f"IMB PingPong header has no t[usec] / t_avg[usec] column: {' '.join(columns)!r}")
    rows = _imb_rows(lines[header_at + 1 :], time_col, bw_col)
    if not rows:
        raise ValueError("IMB PingPong section has a header but no result rows (did the run abort?)")

    factor = _imb_mbytes_factor([(s, t, b) for s, t, b in rows if b is not None])
    return [
        Sample(
            size=size,
            latency_us=t_us,
            bandwidth_mbs=None if (mbs is None or size == 0) else mbs * factor,
            program=PROGRAM_IMB,
        )
        for size, t_us, mbs in rows
    ]


# ---------------------------------------------------------------------------------------------------------
# OSU
# ---------------------------------------------------------------------------------------------------------
# "# OSU MPI Latency Test v7.4", "# OSU MPI-CUDA Latency Test v5.6", "# OSU MPI Multi Latency Test v7.4",
# "# OSU MPI Bandwidth Test v7.4"
_OSU_TITLE = re.compile(r"^#\s*OSU\s+MPI\S*\s+(?P<kind>.*?)\s+Test\b", re.IGNORECASE)
# Data rows: size, then the first value column (7.x: "Avg Latency(us)"; 5.x: "Latency (us)"; with -f / -z
# more columns follow: min, max, iterations, percentiles, validation "Pass"). Only the first value is used.
_OSU_ROW = re.compile(rf"^(\d+)\s+({_NUM})(?:\s+.*)?$")


def _osu_sections(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(title kind, body lines) for every "# OSU MPI ... Test" header."""
    sections: list[tuple[str, list[str]]] = []
    for line in lines:
        m = _OSU_TITLE.match(line.strip())
        if m:
            sections.append((m.group("kind").strip().lower(), []))
        elif sections:
            sections[-1][1].append(line)
    return sections


def _osu_rows(body: list[str], what: str) -> list[tuple[int, float]]:
    rows: list[tuple[int, float]] = []
    for line in body:
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _OSU_ROW.match(stripped)
        if m is None:
            if rows:
                break  # e.g. an MPI error message after the table
            continue
        rows.append((int(m.group(1)), _finite(float(m.group(2)), what, line)))
    return rows


def _osu_program(kind: str) -> str:
    if "multi" in kind:
        return "osu_multi_lat"
    return PROGRAM_OSU_LATENCY


def parse_osu_latency(text: str) -> list[Sample]:
    """Samples of the first OSU latency table (``osu_latency``; ``bandwidth_mbs`` is None).

    Understands OMB 5.x (``# Size  Latency (us)``) and 7.x (``# Size  Avg Latency(us)``, plus the extra
    columns of ``-f`` / ``-z``: only the average is kept).
    """
    for kind, body in _osu_sections(_lines(text)):
        if "latency" in kind:
            rows = _osu_rows(body, "latency")
            if not rows:
                raise ValueError(f"OSU {kind} test output has no result rows (did the run abort?)")
            program = _osu_program(kind)
            return [Sample(size=s, latency_us=v, bandwidth_mbs=None, program=program) for s, v in rows]
    raise ValueError(f"not osu_latency output: no '# OSU MPI Latency Test' header in {_excerpt(text)}")


def parse_osu_bw(text: str) -> dict[int, float]:
    """``{size: MB/s}`` from ``osu_bw`` output, in the printed order (10^6 bytes/s, as OSU prints it).

    ``osu_bw`` has no latency column, so it does not yield :class:`Sample` rows on its own: join it to an
    ``osu_latency`` run with :func:`merge_latency_bw`. Bi-directional (``osu_bibw``) output is refused.
    """
    for kind, body in _osu_sections(_lines(text)):
        if "bandwidth" in kind:
            if "bi-directional" in kind or "bidirectional" in kind:
                raise ValueError("osu_bibw output (bi-directional bandwidth) is not supported; run osu_bw")
            rows = _osu_rows(body, "bandwidth")
            if not rows:
                raise ValueError("OSU bandwidth test output has no result rows (did the run abort?)")
            return dict(rows)
    raise ValueError(f"not osu_bw output: no '# OSU MPI Bandwidth Test' header in {_excerpt(text)}")


def merge_latency_bw(latency: Iterable[Sample], bandwidth: dict[int, float]) -> list[Sample]:
    """The latency samples with ``bandwidth_mbs`` taken from ``bandwidth`` (``{size: MB/s}``) where the size
    matches; sizes missing from ``bandwidth`` keep their own value (None for osu_latency)."""
    merged = []
    for sample in latency:
        bw = bandwidth.get(sample.size)
        merged.append(sample if bw is None else replace(sample, bandwidth_mbs=float(bw)))
    return merged


# ---------------------------------------------------------------------------------------------------------
# mpi4py.bench pingpong
# ---------------------------------------------------------------------------------------------------------
_MPI4PY_TITLE = re.compile(r"^#\s*MPI PingPong Test\s*$")
_MPI4PY_HEADER = re.compile(r"^#\s*Size \[B\]\s+Bandwidth \[MB/s\]")
# "         1              1.30 | 7.7031413e-07 ± 8.0858e-07    10000"; the "±" may arrive as "+/-" or as
# mojibake ("Â±") when a non-UTF-8 locale re-encoded it. With --no-stats only "size  bandwidth" is printed.
_MPI4PY_ROW = re.compile(
    rf"^(\d+)\s+({_NUM}|nan|inf)"
    rf"(?:\s*\|\s*({_NUM}|nan)\s*(?:\u00b1|\+/-|\u00c2\u00b1|\?)\s*({_NUM}|nan)\s+(\d+))?$"
)


def parse_mpi4py_pingpong(text: str) -> list[Sample]:
    """Samples from ``python -m mpi4py.bench pingpong`` (with or without ``--no-header`` / ``--no-stats``).

    With the statistics columns, latency is ``Time Mean [s]`` (already one-way) times 10^6 and bandwidth is
    recomputed as ``size / latency`` (the same formula mpi4py prints, without its rounding to 0.01 MB/s).
    With ``--no-stats`` only bandwidth is printed: latency is derived as ``size / bandwidth`` and is only as
    precise as that rounding (about 1% at 1 byte and 1 us); a bandwidth printed as 0.00 is refused.
    """
    lines = _lines(text)
    rows: list[Sample] = []
    started = False
    for line in lines:
        stripped = line.strip()
        if _MPI4PY_TITLE.match(stripped) or _MPI4PY_HEADER.match(stripped):
            if rows:
                break  # a second run in the same output: keep the first
            started = True
            continue
        if not stripped or stripped.startswith("#"):
            continue
        m = _MPI4PY_ROW.match(stripped)
        if m is None:
            if rows:
                break
            continue
        size = int(m.group(1))
        printed_bw = float(m.group(2))
        if m.group(3) is not None:
            latency_us = _finite(float(m.group(3)), "mean time", line) * 1e6
            bandwidth = size / latency_us if latency_us > 0 else None
        else:
            if not started:
                continue  # a bare "number number" line with no mpi4py header is not evidence enough
            if not (math.isfinite(printed_bw) and printed_bw > 0):
                raise ValueError(
                    f"mpi4py pingpong --no-stats row {stripped!r}: bandwidth {m.group(2)} gives no latency "
                    "(run without --no-stats to get the time column)"
                )
            latency_us = size / printed_bw  # bytes / (10^6 bytes/s) = microseconds
            bandwidth = printed_bw
        rows.append(Sample(size=size, latency_us=latency_us, bandwidth_mbs=bandwidth, program=PROGRAM_MPI4PY))
    if not rows:
        raise ValueError(f"not mpi4py.bench pingpong output: no '# MPI PingPong Test' rows in {_excerpt(text)}")
    return rows


# ---------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------
def detect_program(text: str) -> str:
    """Which program wrote ``text``: one of the ``PROGRAM_*`` names. Raises ValueError if none matches.

    For output holding both an osu_latency and an osu_bw table this is ``osu_latency``.
    """
    lines = [line.strip() for line in _lines(text)]
    if any(_IMB_SECTION.match(line) for line in lines):
        return PROGRAM_IMB
    kinds = [kind for kind, _ in _osu_sections(lines)]
    if any("latency" in kind for kind in kinds):
        return PROGRAM_OSU_LATENCY
    if any("bandwidth" in kind for kind in kinds):
        return PROGRAM_OSU_BW
    if any(_MPI4PY_TITLE.match(line) or _MPI4PY_HEADER.match(line) for line in lines):
        return PROGRAM_MPI4PY
    if any(line.startswith("#") and "Intel(R) MPI Benchmarks" in line for line in lines):
        raise ValueError("IMB output without a PingPong section: run 'IMB-MPI1 PingPong'")
    raise ValueError(
        "unrecognised benchmark output (expected IMB-MPI1 PingPong, osu_latency [+ osu_bw] or "
        f"python -m mpi4py.bench pingpong): {_excerpt(text)}"
    )


def detect_and_parse(text: str) -> list[Sample]:
    """Recognise the program that wrote ``text`` and parse it.

    OSU output holding an ``osu_latency`` table and an ``osu_bw`` table (the two runs' stdout concatenated)
    gives latency samples with the osu_bw bandwidth merged in. ``osu_bw`` output alone is refused: it has no
    latency.
    """
    program = detect_program(text)
    if program == PROGRAM_IMB:
        return parse_imb_pingpong(text)
    if program == PROGRAM_MPI4PY:
        return parse_mpi4py_pingpong(text)
    if program == PROGRAM_OSU_BW:
        raise ValueError(
            "osu_bw output has bandwidth only, no latency: run osu_latency too "
            "(parse_osu_bw + merge_latency_bw join them)"
        )
    samples = parse_osu_latency(text)
    if any("bandwidth" in kind for kind, _ in _osu_sections(_lines(text))):
        samples = merge_latency_bw(samples, parse_osu_bw(text))
    return samples
