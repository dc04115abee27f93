"""Human text of ``mpibatch bench latency``: sample tables, the pair matrix and the whole report.

Pure functions: results in, text out.
"""
from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence

from .output import LatencyResult, PairResult
from .parse import Sample
from .verdict import FABRIC_ONE_MACHINE, ONE_MACHINE_VERDICT, Verdict

__all__ = ["ONE_MACHINE_MARK", "fmt_ratio", "format_matrix", "format_report", "format_table", "hosts_line"]

ONE_MACHINE_MARK = "*"  # beside a matrix cell whose two nodes are one machine


def _human_size(size: int) -> str:
    for unit, scale in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"


def _fmt_us(value: float) -> str:
    return f"{value:.2f}" if value < 1000 else f"{value:.1f}"


def _align(rows: list[list[str]], right: Sequence[bool]) -> str:
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    out = []
    for row in rows:
        cells = [cell.rjust(w) if r else cell.ljust(w) for cell, w, r in zip(row, widths, right)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out)


def format_table(samples: Iterable[Sample]) -> str:
    """Aligned table: bytes, human size, one-way latency (us), bandwidth (MB/s, '-' if none), program."""
    samples = list(samples)
    if not samples:
        return "(no samples)"
    rows = [["bytes", "size", "latency [us]", "bandwidth [MB/s]", "program"]]
    for s in samples:
        rows.append(
            [
                str(s.size),
                _human_size(s.size),
                _fmt_us(s.latency_us),
                "-" if s.bandwidth_mbs is None else f"{s.bandwidth_mbs:.2f}",
                s.program,
            ]
        )
    return _align(rows, right=[True, True, True, True, False])


def format_matrix(matrix: Sequence[Sequence[float | None]], names: Sequence[str],
                  one_machine: Collection[tuple[int, int]] = ()) -> str:
    """Aligned pair-latency matrix (us): one row and one column per node, '-' on the diagonal, '?' where a
    pair was not measured, ``*`` after the value of a pair whose two nodes are one machine (``one_machine``:
    ``(i, j)`` pairs, either order)."""
    n = len(matrix)
    if len(names) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"need a square matrix with one name per row: {n} rows, {len(names)} names")
    marked = {(min(i, j), max(i, j)) for i, j in one_machine}
    pad = " " if marked else ""  # keeps the decimal points of marked and unmarked cells in one column
    rows = [["latency [us]", *names]]
    for i, name in enumerate(names):
        cells = []
        for j in range(n):
            value = matrix[i][j]
            mark = ONE_MACHINE_MARK if (min(i, j), max(i, j)) in marked else pad
            cells.append("-" + pad if i == j else "?" + pad if value is None else _fmt_us(float(value)) + mark)
        rows.append([name, *cells])
    return _align(rows, right=[False] + [True] * n)


def fmt_ratio(v: Verdict) -> str:
    if v.fabric == FABRIC_ONE_MACHINE:
        return "not compared with the published anchor: the two ranks shared one machine"
    if v.anchor_us is None or v.ratio is None or not math.isfinite(v.ratio):
        return "no anchor (give --vm-size for the published latency of that size)"
    return f"anchor {v.anchor_us:g} us, measured/anchor = {v.ratio:.2f}x"


def _short(boot_id: str | None) -> str:
    return (boot_id or "?")[:8]


def hosts_line(pair: PairResult) -> str:
    """``different hosts: ...`` for a pair: the answer, the two host names, and whether the machines (kernel
    boot ids) differ."""
    v = pair.verdict
    if v is None:
        return "different hosts: ? (the pair was not judged)"
    names = ", ".join(pair.rank_hosts[:2]) or "?"
    boots = (list(pair.rank_boot_ids) + [None, None])[:2]
    if v.same_machine is True:
        machines = f"one machine, kernel boot id {_short(boots[0])}"
    elif v.same_machine is False:
        machines = f"two machines, kernel boot ids {_short(boots[0])}, {_short(boots[1])}"
    else:
        missing = [h for h, b in zip(pair.rank_hosts[:2], boots) if not b] or ["a rank"]
        machines = f"not known: no kernel boot id from {', '.join(missing)}"
    return f"different hosts: {'yes' if v.different_hosts else 'NO'} (host names {names}; machines: {machines})"


def _fabric_line(v: Verdict) -> str:
    if v.fabric == FABRIC_ONE_MACHINE:
        return f"fabric: {ONE_MACHINE_VERDICT} (small-message latency {v.small_latency_us:.2f} us)"
    return (f"fabric: {v.fabric} (small-message latency {v.small_latency_us:.2f} us)"
            + (f", expected {v.expected}" if v.expected else ""))


def _pair_lines(res: LatencyResult) -> list[str]:
    lines: list[str] = []
    for p in res.pairs:
        names = " <-> ".join(p.rank_hosts[:2]) if len(p.rank_hosts) >= 2 else "?"
        lines += ["", f"pair {p.i}-{p.j}: {names} ({', '.join(p.addresses)})"]
        if p.error:
            lines.append(f"  error: {p.error}")
        if p.samples and (res.pairs_mode == "first" or p is res.first):
            lines.append(format_table(p.samples))
        elif p.verdict:
            lines.append(f"  small-message latency {p.verdict.small_latency_us:.2f} us ({p.verdict.fabric})")
    return lines


def _verdict_lines(res: LatencyResult) -> list[str]:
    v, first = res.verdict, res.first
    if v is None or first is None:
        return []
    lines = ["", "verdict:", f"  {hosts_line(first)}", f"  {_fabric_line(v)}",
             f"  {fmt_ratio(v)}" + (f" [{res.vm_size}]" if res.vm_size else "")]
    warnings = dict.fromkeys(w for p in res.pairs if p.verdict for w in p.verdict.warnings)
    return lines + [f"  warning: {w}" for w in warnings]


def _matrix_lines(res: LatencyResult) -> list[str]:
    if res.pairs_mode != "all" or not res.pairs:
        return []
    lines = ["", format_matrix(res.matrix, res.node_names, res.one_machine_pairs)]
    if res.one_machine_pairs:
        lines.append(f"{ONE_MACHINE_MARK} {ONE_MACHINE_VERDICT}")
    if res.slowest:
        lines.append(f"slowest node: {res.slowest_name} (median {res.slowest[1]:.2f} us over its pairs)")
    elif len(res.one_machine_pairs) == len(res.pairs):
        lines.append("slowest node: not judged (every pair was one machine: no fabric to find a slow node in)")
    else:
        lines.append("slowest node: none stands out (no node's pairs are 1.5x the others)")
    return lines


def _task_lines(res: LatencyResult) -> list[str]:
    task = res.task
    if task is None or task.succeeded:
        return []
    f = task.failure
    # a task that never ran its command (coordination failed, a launch refused) has no exit code to show
    code = f", exit code {task.exit_code}" if task.exit_code is not None else ""
    lines = ["", f"task {task.job_id}/{task.task_id}: {task.state}{code}" + (f" - {f.phase}: {f.reason}" if f else "")]
    if task.instances and task.instances[0].stderr.strip():
        lines.append("primary stderr (tail):")
        lines += ["  " + x for x in task.instances[0].stderr.strip().splitlines()[-15:]]
    return lines


def format_report(res: LatencyResult, *, flavor: str, executor: str) -> str:
    """The whole human report of a :class:`mpibatch.bench.output.LatencyResult`."""
    head = (f"benchmark: {res.program or '(none found)'}"
            + (f" ({res.program_path})" if res.program_path else "")
            + f" - {flavor}, executor {executor}, {len(res.node_names)} nodes, pairs: {res.pairs_mode}")
    return "\n".join([head, *_pair_lines(res), *_verdict_lines(res), *_matrix_lines(res), *_task_lines(res)])
