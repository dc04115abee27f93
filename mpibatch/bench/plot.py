"""PNG plots of ping-pong results. Needs the ``plot`` extra (matplotlib), imported only when a plot is drawn.

Figures are drawn with matplotlib's object API on an Agg canvas (no ``pyplot``, no global backend switch, no
display needed), so calling these from a library or a headless node is safe.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Iterable, Sequence

from mpibatch.bench.parse import Sample
from mpibatch.bench.verdict import RDMA_MAX_US, TCP_MIN_US
from mpibatch.errors import MpibatchError
from mpibatch.launchers import fileio

__all__ = ["PlotDependencyError", "plot_latency", "plot_matrix"]

_INSTALL_HINT = "plotting needs matplotlib: pip install 'mpibatch[plot]'"


class PlotDependencyError(MpibatchError, ImportError):
    """matplotlib is not installed. Bad input to the CLI (exit code 2): the user asked for a plot."""

    exit_code = 2


def _matplotlib():
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise PlotDependencyError(f"{_INSTALL_HINT} ({exc})") from exc
    return Figure, FigureCanvasAgg


def _save(fig, canvas_cls, path: str | os.PathLike) -> str:
    canvas_cls(fig)
    path = os.fspath(path)
    png = io.BytesIO()  # a plot is small: drawn in memory, then written durably (never half a PNG)
    fig.savefig(png, format="png", dpi=110)
    fileio.write_bytes(path, png.getvalue())
    return path


def _series(samples: Iterable[Sample]) -> dict[str, list[Sample]]:
    groups: dict[str, list[Sample]] = {}
    for s in samples:
        groups.setdefault(s.program, []).append(s)
    return {k: sorted(v, key=lambda s: s.size) for k, v in groups.items()}


def _size_label(size: float, _pos=None) -> str:
    if size < 1:
        return ""
    size = int(round(size))
    for unit, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def plot_latency(
    samples: Iterable[Sample],
    path: str | os.PathLike,
    *,
    anchor_us: float | None = None,
    title: str = "MPI ping-pong: one-way latency and bandwidth",
    series: dict[str, Iterable[Sample]] | None = None,
) -> str:
    """Write a two-panel log-log PNG (latency on top, bandwidth below, against message size); return the path.

    ``samples`` are drawn as one line per program. ``series`` adds more named lines (e.g. ``{"node-3":
    ...}`` to compare runs). ``anchor_us`` draws the published latency for the VM size as a horizontal line;
    the RDMA (< 3 us) and TCP (> 10 us) bands of :func:`mpibatch.bench.verdict.classify_fabric` are shaded.
    Zero-byte messages cannot sit on a log axis and are left out.
    """
    Figure, Canvas = _matplotlib()
    from matplotlib.ticker import FuncFormatter

    lines = _series(samples)
    for name, extra in (series or {}).items():
        lines[name] = sorted(extra, key=lambda s: s.size)
    lines = {k: [s for s in v if s.size > 0 and math.isfinite(s.latency_us) and s.latency_us > 0]
             for k, v in lines.items()}
    lines = {k: v for k, v in lines.items() if v}
    if not lines:
        raise ValueError("nothing to plot: no samples with a message size above 0 bytes")

    fig = Figure(figsize=(8, 7.5))
    ax_lat, ax_bw = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 2]})
    markers = "os^Dv<>"
    for k, (name, pts) in enumerate(lines.items()):
        x = [s.size for s in pts]
        style = {"marker": markers[k % len(markers)], "ms": 4, "lw": 1.5, "label": name, "color": f"C{k % 10}"}
        ax_lat.plot(x, [s.latency_us for s in pts], **style)
        bw = [(s.size, s.bandwidth_mbs) for s in pts if s.bandwidth_mbs is not None and s.bandwidth_mbs > 0]
        if bw:
            ax_bw.plot(*zip(*bw), **style)  # same colour and marker as the series' latency line

    ax_lat.set_xscale("log", base=2)
    ax_lat.set_yscale("log")
    lo, hi = ax_lat.get_ylim()
    lo, hi = min(lo, 0.1), max(hi, 20.0)
    ax_lat.axhspan(lo, RDMA_MAX_US, color="tab:green", alpha=0.07, lw=0)
    ax_lat.axhspan(TCP_MIN_US, hi, color="tab:red", alpha=0.07, lw=0)
    ax_lat.axhline(RDMA_MAX_US, color="tab:green", lw=0.8, ls=":")
    ax_lat.axhline(TCP_MIN_US, color="tab:red", lw=0.8, ls=":")
    x_text = min(s.size for pts in lines.values() for s in pts)
    ax_lat.text(x_text, RDMA_MAX_US * 0.93, f"RDMA < {RDMA_MAX_US:g} us", va="top", fontsize=8, color="tab:green")
    ax_lat.text(x_text, TCP_MIN_US * 1.07, f"TCP > {TCP_MIN_US:g} us", va="bottom", fontsize=8, color="tab:red")
    if anchor_us is not None:
        ax_lat.axhline(anchor_us, color="black", lw=1.2, ls="--", label=f"published anchor {anchor_us:g} us")
    ax_lat.set_ylim(lo, hi)
    ax_lat.set_ylabel("one-way latency [us]")
    ax_lat.grid(True, which="major", alpha=0.3)
    ax_lat.legend(loc="upper left", fontsize=8)
    ax_lat.set_title(title)

    ax_bw.set_xscale("log", base=2)
    if ax_bw.lines:
        ax_bw.set_yscale("log")
        ax_bw.legend(loc="upper left", fontsize=8)
    else:
        ax_bw.text(0.5, 0.5, "no bandwidth column", transform=ax_bw.transAxes, ha="center", va="center")
    ax_bw.set_ylabel("bandwidth [MB/s = 10^6 B/s]")
    ax_bw.set_xlabel("message size [bytes]")
    ax_bw.grid(True, which="major", alpha=0.3)
    ax_bw.xaxis.set_major_formatter(FuncFormatter(_size_label))
    for label in ax_bw.get_xticklabels():
        label.set_rotation(45)
    fig.tight_layout()
    return _save(fig, Canvas, path)


def plot_matrix(
    matrix: Sequence[Sequence[float | None]],
    names: Sequence[str],
    path: str | os.PathLike,
    *,
    title: str = "pair latency [us] (small messages)",
    highlight: int | None = None,
) -> str:
    """Write a heat-map PNG of a pair-latency matrix (from :func:`pair_matrix`); return the path.

    Cells show their value; the diagonal and unmeasured pairs are grey. ``highlight`` (e.g. the index from
    :func:`slowest_node`) boxes that node's row and column label in red.
    """
    n = len(matrix)
    if n == 0 or len(names) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"need a non-empty square matrix with one name per row: {n} rows, {len(names)} names")
    Figure, Canvas = _matplotlib()
    import numpy as np  # a matplotlib dependency

    data = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=float)
    masked = np.ma.masked_invalid(data)
    side = max(4.0, 0.6 * n + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="#d9d9d9")  # grey: diagonal and unmeasured pairs
    image = ax.imshow(masked, cmap=cmap, interpolation="nearest")
    cbar = fig.colorbar(image, ax=ax)
    cbar.set_label("one-way latency [us]")
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_yticklabels(names)
    finite = data[np.isfinite(data)]
    mid = float(finite.min() + finite.max()) / 2 if finite.size else 0.0
    if n <= 24:
        for i in range(n):
            for j in range(n):
                if np.isfinite(data[i, j]):
                    ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=8,
                            color="white" if data[i, j] < mid else "black")
    if highlight is not None and 0 <= highlight < n:
        for label in (ax.get_xticklabels()[highlight], ax.get_yticklabels()[highlight]):
            label.set_color("tab:red")
            label.set_fontweight("bold")
    ax.set_title(title)
    fig.tight_layout()
    return _save(fig, Canvas, path)
