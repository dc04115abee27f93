"""Human output for a TaskResult (the same for every executor)."""
from __future__ import annotations

from .redaction import redact
from .results import TaskResult


def _cell(v: object) -> str:
    return "-" if v is None else str(v)


def format_result(r: TaskResult, stdout_lines: int = 20) -> str:
    head = (f"task {r.job_id}/{r.task_id} on {r.executor}: {r.state}, exit code {_cell(r.exit_code)}, "
            f"{r.elapsed_s:.1f}s, attempt{'s' if r.attempts != 1 else ''} {r.attempts}"
            + (f", requeued {r.requeues}" if r.requeues else "")
            + (" (timed out)" if r.timed_out else ""))
    rows = [("inst", "role", "node", "host", "coord", "app", "files")]
    for i in r.instances:
        rows.append((str(i.index), i.role, i.node_id, i.host, _cell(i.coordination_exit_code),
                     _cell(i.application_exit_code), str(len(i.files))))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    lines = [head, ""] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    if r.failure:
        where = f" (instance {r.failure.instance})" if r.failure.instance is not None else ""
        lines += ["", f"FAILED in {r.failure.phase}{where}: {redact(r.failure.reason)}"]
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
