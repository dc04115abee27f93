"""Human output for a TaskResult (the same for every executor)."""
from __future__ import annotations

from .redaction import redact
from .results import InstanceResult, TaskResult


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


# The headline of a failure: "FAILED in <phase>" reads well for the task's phases, not for these two.
_HEADLINES = {"interrupted": "STOPPED", "timeout": "TIMED OUT"}


GROUP_FROM = 10  # from this many instances on, subtasks that ended alike share one row


def _instance_rows(instances: list[InstanceResult]) -> list[tuple[str, ...]]:
    """One row per instance; with many instances, a run of consecutive subtasks with the same exit codes and
    file count is one row (`3-40`, `node-3..node-40`), so 64 nodes read in a few lines and any instance that
    differs stands out on its own row."""
    def key(i: InstanceResult) -> tuple[str, str, str]:
        return _cell(i.coordination_exit_code), _cell(i.application_exit_code), str(len(i.files))

    groups: list[list[InstanceResult]] = []
    for i in instances:
        alike = groups and len(instances) >= GROUP_FROM and i.index > 0 and groups[-1][-1].index > 0 \
            and key(groups[-1][-1]) == key(i)
        if alike:
            groups[-1].append(i)
        else:
            groups.append([i])
    rows: list[tuple[str, ...]] = []
    for g in groups:
        first, last = g[0], g[-1]
        if len(g) == 1:
            rows.append((str(first.index), first.role, first.node_id, first.host, *key(first)))
        else:
            rows.append((f"{first.index}-{last.index}", f"{len(g)} subtasks", f"{first.node_id}..{last.node_id}",
                         f"{first.host}..{last.host}", *key(first)))
    return rows


def format_result(r: TaskResult, stdout_lines: int = 20) -> str:
    head = (f"task {r.job_id}/{r.task_id} on {r.executor}: {r.state}, exit code {_cell(r.exit_code)}, "
            f"{r.elapsed_s:.1f}s, attempt{'s' if r.attempts != 1 else ''} {r.attempts}"
            + (" (timed out)" if r.timed_out else ""))
    rows = [("inst", "role", "node", "host", "coord", "app", "files"), *_instance_rows(r.instances)]
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [head, ""] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
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
    if r.nodes_dir:
        lines += [f"the nodes' files are kept (until you remove them): {r.nodes_dir}"]
    return "\n".join(lines)
