#!/usr/bin/env python3
"""Stitch the heat example's part-<rank>.csv files into one plate and write it as a PNG.

    python3 stitch.py mpibatch-runs/heat-simulation/heat -o heat.png [--csv heat.csv]

The directory is searched recursively, so the collected outputs of the primary (0/) and of every
subtask (1/, 2/, ...) are all found. Pure Python: no numpy, the PNG is written with zlib.
"""
from __future__ import annotations

import argparse
import re
import struct
import sys
import zlib
from pathlib import Path

HEADER = re.compile(r"#\s*heat part\s+(.*)")

# A black -> red -> yellow -> white ramp (cold to hot).
RAMP = [(0.0, (0, 0, 0)), (0.35, (170, 20, 10)), (0.7, (250, 190, 30)), (1.0, (255, 255, 255))]


def read_part(path: Path) -> tuple[dict[str, str], list[list[float]]]:
    lines = path.read_text().splitlines()
    m = HEADER.match(lines[0]) if lines else None
    if not m:
        raise ValueError(f"{path}: not a heat part file (no '# heat part' header)")
    meta = dict(kv.split("=", 1) for kv in m.group(1).split())
    rows = [[float(v) for v in line.split(",")] for line in lines[1:] if line.strip()]
    if len(rows) != int(meta["rows"]) or any(len(r) != int(meta["nx"]) for r in rows):
        raise ValueError(f"{path}: expected {meta['rows']} rows of {meta['nx']} values")
    return meta, rows


def stitch(directory: str | Path) -> list[list[float]]:
    """The whole plate (ny rows of nx values) from every part file under `directory`."""
    parts = sorted(Path(directory).rglob("part-*.csv"))
    if not parts:
        raise ValueError(f"no part-*.csv files under {directory}")
    metas = [read_part(p) + (p,) for p in parts]
    ranks = {int(m["ranks"]) for m, _, _ in metas}
    ny = {int(m["ny"]) for m, _, _ in metas}
    if len(ranks) != 1 or len(ny) != 1:
        raise ValueError(f"parts from different runs under {directory}: ranks {sorted(ranks)}, ny {sorted(ny)}")
    n_ranks, n_rows = ranks.pop(), ny.pop()
    if len(metas) != n_ranks:
        found = sorted(int(m["rank"]) for m, _, _ in metas)
        raise ValueError(f"expected {n_ranks} parts, found {len(metas)} (ranks {found})")
    plate: list[list[float] | None] = [None] * n_rows
    for meta, rows, path in metas:
        row0 = int(meta["row0"])
        for i, row in enumerate(rows):
            if plate[row0 + i] is not None:
                raise ValueError(f"{path}: row {row0 + i} is also in another part")
            plate[row0 + i] = row
    missing = [i for i, r in enumerate(plate) if r is None]
    if missing:
        raise ValueError(f"rows {missing[0]}..{missing[-1]} are in no part")
    return plate  # type: ignore[return-value]


def colour(v: float) -> tuple[int, int, int]:
    v = min(1.0, max(0.0, v))
    for (x0, c0), (x1, c1) in zip(RAMP, RAMP[1:]):
        if v <= x1:
            t = (v - x0) / (x1 - x0)
            return tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))  # type: ignore[return-value]
    return RAMP[-1][1]


def write_png(plate: list[list[float]], path: str | Path, scale: int = 3) -> None:
    """An 8-bit RGB PNG, each cell drawn as scale x scale pixels."""
    raw = bytearray()
    for row in plate:
        line = bytearray([0])  # filter type 0 (none)
        for v in row:
            line += bytes(colour(v)) * scale
        raw += bytes(line) * scale
    width, height = len(plate[0]) * scale, len(plate) * scale

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(bytes(raw), 9)) + chunk(b"IEND", b"")
    Path(path).write_bytes(png)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("directory", help="where the parts were collected, e.g. mpibatch-runs/heat-simulation/heat")
    ap.add_argument("-o", "--output", default="heat.png", help="PNG to write (default heat.png)")
    ap.add_argument("--csv", help="also write the whole plate as CSV")
    ap.add_argument("--scale", type=int, default=3, help="pixels per cell (default 3)")
    args = ap.parse_args(argv)
    try:
        plate = stitch(args.directory)
    except ValueError as e:
        print(f"stitch: {e}", file=sys.stderr)
        return 2
    write_png(plate, args.output, args.scale)
    if args.csv:
        Path(args.csv).write_text("".join(",".join(repr(v) for v in row) + "\n" for row in plate))
    cells = [v for row in plate for v in row]
    n_parts = len(list(Path(args.directory).rglob("part-*.csv")))
    print(f"stitched {n_parts} parts into a {len(plate[0])}x{len(plate)} plate -> {args.output}; "
          f"mean temperature {sum(cells) / len(cells):.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
