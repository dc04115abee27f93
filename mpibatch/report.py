"""Human output for a TaskResult (the same for every executor)."""
from __future__ import annotations

from collections.abc import Sequence

from .redaction import redact
from .results import InstanceResult, TaskResult

# Consecutive instances with the same outcome share one row from this many on (64 nodes: 2 rows, not 64);
# `--output json` keeps every instance. A table still longer than MAX_ROWS rows is cut, saying how much.
GROUP_MIN = 3
MAX_ROWS = 40
HEADER = ("inst", "role", "node", "host", "coord", "app", "files")


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


# The headline of a failure: "FAILED in <phase>" reads well for the task's phases, not for these two.
_HEADLINES = {"interrupted": "STOPPED", "timeout": "TIMED OUT"}


def _outcome(i: InstanceResult) -> tuple[str, str, str, str]:
    return (i.role, _cell(i.coordination_exit_code), _cell(i.application_exit_code), str(len(i.files)))


def _row(group: list[InstanceResult]) -> tuple[str, ...]:
    first, last = group[0], group[-1]
    role, coord, app, files = _outcome(first)
    if len(group) == 1:
        return (str(first.index), role, first.node_id, first.host, coord, app, files)
    return (f"{first.index}-{last.index}", role, f"{first.node_id}..{last.node_id}", f"{first.host}..{last.host}",
            coord, app, files)


def instance_rows(instances: Sequence[InstanceResult], group_min: int = GROUP_MIN,
                  max_rows: int = MAX_ROWS) -> tuple[list[tuple[str, ...]], int]:
    """The summary table's rows, and how many instances they leave out. A run of at least `group_min`
    consecutive instances with the same role, exit codes and number of files is one row ("1-63",
    "node-1..node-63": the group's first and last); at most `max_rows` rows. Pure."""
    groups: list[list[InstanceResult]] = []
    for i in instances:
        if groups and _outcome(groups[-1][-1]) == _outcome(i) and groups[-1][-1].index + 1 == i.index:
            groups[-1].append(i)
        else:
            groups.append([i])
    rows: list[tuple[tuple[str, ...], int]] = []
    for g in groups:
        rows += [(_row(g), len(g))] if len(g) >= group_min else [(_row([i]), 1) for i in g]
    shown = rows[:max_rows]
    return [r for r, _ in shown], len(instances) - sum(k for _, k in shown)


def format_result(r: TaskResult, stdout_lines: int = 20) -> str:
    head = (f"task {r.job_id}/{r.task_id} on {r.executor}: {r.state}, exit code {_cell(r.exit_code)}, "
            f"{r.elapsed_s:.1f}s, attempt{'s' if r.attempts != 1 else ''} {r.attempts}"
            + (f", requeued {r.requeues}x (preempted)" if r.requeues else "")
            + (" (timed out)" if r.timed_out else ""))
    body, left_out = instance_rows(r.instances)
    rows = [HEADER, *body]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [head, ""] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if left_out:
        lines.append(f"... {left_out} more instances (every instance: --output json)")
    if r.failure:
        where = f" (instance {r.failure.instance})" if r.failure.instance is not None else ""
        headline = _HEADLINES.get(r.failure.phase, f"FAILED in {r.failure.phase}")
        lines += ["", f"{headline}{where}: {redact(r.failure.reason)}"]
    for m in r.missing:
        lines.append(f"missing: {redact(m)}")
    if r.failure and r.instances:
        bad = r.instances[r.failure.instance or 0]
        err = bad.stderr.rstrip("\n").splitlines()[-10:]
        if err:
            lines += ["", f"instance {bad.index} stderr (tail):"] + [f"  {x}" for x in err]
    if r.instances and r.primary.stdout.strip():
        out = r.primary.stdout.rstrip("\n").splitlines()[-stdout_lines:]
        lines += ["", "primary stdout (tail):"] + [f"  {x}" for x in out]
    if r.output_dir:
        lines += ["", f"outputs and logs of every instance: {r.output_dir}/<instance>/"]
    if r.restored:
        lines += ["checkpoint generation restored by each attempt: "
                  + ", ".join("none (started fresh)" if g is None else str(g) for g in r.restored)]
    if r.checkpoints_dir:
        lines += [f"checkpoints (resume with --resume-from): {r.checkpoints_dir}"]
    if r.nodes_dir:
        lines += [f"the nodes' files are kept (until you remove them): {r.nodes_dir}"]
    return "\n".join(lines)
