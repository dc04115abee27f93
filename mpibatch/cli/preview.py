"""`mpibatch render`, `mpibatch check-pool`, `mpibatch hostfile`: the pure core, on the command line.

Nothing here talks to Azure or starts a process; the output is what the Batch service would receive
(render), what would keep it from running (check-pool), and what an MPI launcher is given (hostfile).
"""
from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import click

from .. import conventions, hostlist, poolcheck, poolfacts
from ..durations import human, iso8601
from ..errors import SpecError
from ..launchers.protocol import CHECKPOINT_URL_VAR, CHECKPOINT_VAR, RESTART_VAR, TASK_INTERMEDIATE, TASK_LOG
from ..mpi import get_flavor
from ..mpi import names as flavor_names
from ..redaction import redact, redact_url
from ..render import LAUNCHER_DIR, PERSIST_URL_VAR, Rendered
from ..render import render as render_spec
from ..spec import FileRef, Spec, load_spec
from .common import EXIT_BAD_INPUT, echo_json, output_option, report_errors

_INDENT = "  "


# ---------------------------------------------------------------------------------------------- render

def _rows(rows: Iterable[tuple[str, ...]], indent: str = _INDENT) -> list[str]:
    """Aligned columns: every column but the last is padded to its widest cell."""
    rows = list(rows)
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows if len(r) > i + 1) if any(len(r) > i + 1 for r in rows) else 0
              for i in range(max(len(r) for r in rows))]
    out = []
    for r in rows:
        cells = [c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)]
        out.append((indent + "  ".join(cells)).rstrip())
    return out


def _block(text: str, indent: str = _INDENT * 2) -> list[str]:
    return [indent + line for line in text.splitlines()]


def _command_block(command_line: str, os: str) -> list[str]:
    """Linux command lines are `/bin/bash -c '<script>'`: show the script as bash reads it."""
    if os == "linux":
        parts = shlex.split(command_line)
        if len(parts) == 3 and parts[:2] == ["/bin/bash", "-c"]:
            return [f"{_INDENT * 2}/bin/bash -c <this script, single-quoted>:"] + _block(parts[2], _INDENT * 3)
    return _block(command_line)


def _os_reason(spec: Spec) -> str:
    if spec.pool and spec.pool.image:
        return f"from pool.image, node agent {spec.pool.image.node_agent}"
    return f"from task.mpi.flavor {spec.task.mpi.flavor}; no pool.image"


def _fabric_reason(r: Rendered) -> str:
    spec = r.spec
    asked = spec.task.mpi.fabric
    if asked != "auto":
        return f"{r.fabric} (task.mpi.fabric: {asked})"
    if spec.pool and spec.pool.vm_size:
        if r.fabric == "none":
            return f"none (auto: {spec.pool.vm_size} has no InfiniBand; MPI uses its TCP defaults)"
        return f"{r.fabric} (auto: {spec.pool.vm_size} is an InfiniBand {r.fabric} size)"
    return "none (auto, and no pool.vm_size to choose from: no fabric settings; set pool.vm_size or task.mpi.fabric)"


def _is_launcher(ref: FileRef) -> bool:
    return ref.path.startswith(f"{LAUNCHER_DIR}/") and Path(ref.source).parent.name == "launchers" \
        and not ref.is_url


def _source(ref: FileRef, container: str) -> str:
    if _is_launcher(ref):
        return f"mpibatch's node-side {Path(ref.source).name}, uploaded at submit to {container}, read-only SAS"
    if ref.is_url:
        return f"downloaded from {redact_url(ref.source)}"
    try:
        found = Path(ref.source).exists()
    except OSError:  # a name too long for this machine (ENAMETOOLONG), a permission error: not usable here
        found = False
    missing = "" if found else "  [NOT FOUND on this machine]"
    return f"local {ref.source}: uploaded at submit to {container}, read-only SAS URL{missing}"


def _files_section(title: str, refs: tuple[FileRef, ...], container: str) -> list[str]:
    lines = [title]
    if not refs:
        return lines + [f"{_INDENT}(none)"]
    return lines + _rows((ref.path, "<- " + _source(ref, container)) for ref in refs)


def _environment_rows(r: Rendered) -> list[tuple[str, str, str]]:
    fabric_env = r.flavor.fabric_env(r.fabric)
    user_env = r.spec.task.environment
    rows = []
    for name in sorted(r.environment):
        value = r.environment[name]
        if name in user_env and name in fabric_env and fabric_env[name] != value:
            origin = f"user (task.environment; beats the {r.fabric} fabric default {fabric_env[name]!r})"
        elif name in user_env:
            origin = "user (task.environment)"
        else:
            origin = f"fabric default ({r.fabric}, {r.flavor.name})"
        rows.append((name, value, origin))
    if r.os == "linux":
        rows.append((PERSIST_URL_VAR, "<created at submit>", "mpibatch: write-only SAS for subtask outputs"))
    if r.os == "linux" and r.spec.task.checkpoint:
        rows.append((CHECKPOINT_URL_VAR, "<created at submit>",
                     "mpibatch: checkpoint SAS (read, write, list, delete in the job's container)"))
    return rows


def _output_rows(r: Rendered) -> list[tuple[str, str, str]]:
    t = r.spec.task
    subtasks = t.instances > 1
    rows = []
    for pattern, kind, what in [("../std*.txt", TASK_LOG, "stdout.txt, stderr.txt"),
                                *((o.pattern, o.kind, "") for o in r.outputs)]:
        primary = conventions.instance_output_prefix(t.id, kind, 0) + "/"
        text = f"primary -> {primary}{' (' + what + ')' if what else ''}"
        if subtasks:
            if r.os == "linux":
                text += f"; subtask i (1..{t.instances - 1}) -> {conventions.task_output_prefix(t.id, kind)}/{{i}}/ " \
                        "(uploaded by persist.py)"
            else:
                text += "; subtasks: not collected on Windows pools"
        rows.append((pattern, kind, text))
    return rows


def render_table(r: Rendered) -> str:
    spec, t, job = r.spec, r.spec.task, r.spec.job
    container = conventions.job_container_name(job.id)
    ppn = t.mpi.processes_per_node
    lines = [f"task {t.id} in job {job.id}: what Azure Batch will receive (--output json prints the exact payload)",
             ""]
    lines += _rows([
        ("pool", job.pool or "(not set: set job.pool or pool.id before submitting)"),
        ("OS", f"{r.os} ({_os_reason(spec)})"),
        ("MPI flavour", f"{r.flavor.title} ({r.flavor.name})"),
        ("fabric", _fabric_reason(r)),
        *([("MPI setup", f"{r.setup.describe()} ({r.setup_origin}), on every node in the coordination step"
                         if r.setup else f"none ({r.setup_origin})")] if r.os == "linux" else []),
        *([("per node", f"{', '.join(sorted(n for n in r.flavor.node_env if n not in t.environment))} from "
                        "each node's own active InfiniBand ports" + ("; a node without one fails coordination"
                                                                      if r.fabric == "sriov" else ""))]
          if r.os == "linux" and r.fabric != "tcp" and set(r.flavor.node_env) - set(t.environment) else []),
        ("instances", f"{t.instances} node(s) x {ppn} rank(s) per node = {t.instances * ppn} MPI ranks "
                      f"(1 primary + {t.instances - 1} subtask(s), one per node)"),
        ("launcher options", " ".join(t.mpi.options) if t.mpi.options else "(none)"),
        ("shared dir", t.shared_dir),
        ("ranks start in", r.rank_dir + ("  (output patterns are matched in %AZ_BATCH_TASK_WORKING_DIR%)"
                                          if r.os == "windows" else "  (a link to each node's working directory)")),
        ("job container", f"{container} (Batch File Conventions name of job {job.id})"),
    ], indent="")
    lines += ["", "application command line (the primary runs it once coordination succeeded on every node):"]
    lines += _command_block(r.command_line, r.os)
    lines += ["", "coordination command line (every node, before the application):"]
    lines += _command_block(r.coordination_command_line, r.os)
    if job.preparation:
        lines += ["", "job preparation task (once per node, before its first task):"]
        lines += _command_block(r.preparation_command_line or "", r.os)
    if job.release:
        lines += ["", "job release task (once per node, when the job ends):"]
        lines += _command_block(r.release_command_line or "", r.os)
    shared = "%AZ_BATCH_TASK_SHARED_DIR%" if r.os == "windows" else "$AZ_BATCH_TASK_SHARED_DIR"
    working = "%AZ_BATCH_TASK_WORKING_DIR%" if r.os == "windows" else "$AZ_BATCH_TASK_WORKING_DIR"
    lines += [""] + _files_section(f"common files (every node -> {shared}):", r.common_files, container)
    lines += [""] + _files_section(f"task files (primary only -> {working}):", r.files, container)
    lines += ["", "environment (task environment settings; the user's values always win):"]
    env_rows = _environment_rows(r)
    lines += _rows(env_rows) if env_rows else [f"{_INDENT}(none)"]
    lines += ["", f"outputs (container {container}, Batch File Conventions names, instance 0 = primary):"]
    lines += _rows(_output_rows(r))
    if t.checkpoint:
        c = t.checkpoint
        lines += ["", "checkpoints (docs/checkpoints.md):"]
        lines += _rows([
            ("files", f"{c.pattern} on {'every node' if c.from_ == 'all' else 'the primary'}, as "
                      f"${TASK_INTERMEDIATE} outputs in generations"),
            ("saved", f"every {human(c.every)} while the program runs, when unchanged for that long; "
                      f"{c.keep} complete generations kept"),
            ("restored", f"on every new attempt, before the program starts: {RESTART_VAR}=1, "
                         f"{CHECKPOINT_VAR}=<generation>"),
        ])
    lines += ["", "constraints:"]
    lines += _rows([
        ("max wall clock", f"{human(t.max_wall_clock)} ({iso8601(t.max_wall_clock)})" if t.max_wall_clock
         else "unlimited (Batch default)"),
        ("max retries", str(t.max_retries)),
        ("retention", f"{human(t.retention)} ({iso8601(t.retention)})" if t.retention
         else "7d (Batch default)"),
        ("required slots", "1 (multi-instance tasks take one slot per node)"),
        ("user", "pool-scoped admin auto-user (same account and SSH setup on every node)" if r.os == "linux"
         else "Batch default task user"),
    ])
    # Passwords and SAS tokens are credentials: the table never shows them, wherever they appear
    # (the JSON payload is what Batch receives, so it keeps them as written).
    return redact("\n".join(lines))


@click.command("render")
@click.argument("spec_path", metavar="SPEC")
@output_option
@report_errors
def render(spec_path: str, output: str) -> None:
    """Show the multi-instance task SPEC becomes, exactly as Azure Batch would receive it.

    Nothing is uploaded or submitted: local files show what they become at submit time."""
    spec = load_spec(spec_path)
    rendered = render_spec(spec)
    if output == "json":
        from ..payload import payload_json  # the azure-batch models: only when asked for

        echo_json(payload_json(rendered))
    else:
        click.echo(render_table(rendered))


# ---------------------------------------------------------------------------------------------- check-pool

def _read_pool_json(path: str, spec: Spec) -> Mapping[str, Any]:
    field = "--pool-json"
    fix = "save it with: az batch pool show --pool-id ID > pool.json (or GET /pools/{id})"
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(field, f"{path}: no such file", fix) from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(field, f"{path} cannot be read ({e.__class__.__name__})", fix) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SpecError(field, f"{path} is not valid JSON at line {e.lineno}, column {e.colno}: {e.msg}", fix) \
            from None
    # A pool list (GET /pools returns {"value": [...]}, `az batch pool list` a bare list): pick job.pool.
    pools = data.get("value") if isinstance(data, dict) and isinstance(data.get("value"), list) else data
    if isinstance(pools, list):
        wanted = (spec.job.pool or "").lower()
        match = [p for p in pools if isinstance(p, dict) and str(p.get("id", "")).lower() == wanted]
        if len(pools) == 1 and isinstance(pools[0], dict) and not wanted:
            match = pools
        if not match:
            ids = ", ".join(str(p.get("id")) for p in pools if isinstance(p, dict)) or "none"
            raise SpecError(field, f"{path} lists pools ({ids}) but none is job.pool {spec.job.pool!r}",
                            "set job.pool in the spec, or save just the one pool")
        return match[0]
    return data


def _problem_dict(p: poolcheck.Problem) -> dict[str, str]:
    return {"severity": p.severity, "field": p.field, "message": p.message, "fix": p.fix}


@click.command("check-pool")
@click.argument("spec_path", metavar="SPEC")
@click.option("--pool-json", "pool_json", metavar="FILE",
              help="the pool as GET /pools/{id} (or `az batch pool show`) returns it; '-' reads stdin. "
                   "Default: the spec's pool section")
@output_option
@report_errors
def check_pool(spec_path: str, pool_json: str | None, output: str) -> None:
    """Check that SPEC's task can run on its pool: exit 0 when it can (warnings are printed), 2 with the list
    of what to change when it cannot (a task Batch accepts but never schedules stays active forever)."""
    spec = load_spec(spec_path)
    if pool_json is not None:
        facts = poolfacts.pool_from_rest(_read_pool_json(pool_json, spec), where="pool")
        source = pool_json
    elif spec.pool is not None:
        facts = poolfacts.pool_from_spec(spec.pool)
        source = "the spec's pool section"
    else:
        raise SpecError("pool", "the spec has no pool section and no --pool-json was given: nothing to check "
                        "against", "add a pool section (id, vm_size, nodes, image) to the spec, or pass "
                        "--pool-json FILE saved with: az batch pool show --pool-id ID")
    problems = poolcheck.check(spec, facts)
    errors = [p for p in problems if p.severity == "error"]
    warnings = [p for p in problems if p.severity == "warning"]
    if output == "json":
        echo_json({"clean": not errors, "source": source, "summary": poolcheck.summary(spec, facts),
                   "problems": [_problem_dict(p) for p in problems]})
    else:
        if not errors:
            click.echo(f"clean: {poolcheck.summary(spec, facts)}"
                       + (f" ({len(warnings)} warning(s) below)" if warnings else ""))
        else:
            also = f" (and {len(warnings)} warning(s))" if warnings else ""
            click.echo(f"{len(errors)} problem(s){also} keep task {spec.task.id} from running on "
                       f"{facts.id or 'the pool'} (checked against {source}):")
        for p in problems:
            click.echo(f"  {p.severity:<7}  {p.field}: {p.message}")
            click.echo(f"  {'':<7}  fix: {p.fix}")
        if errors:
            click.echo("nothing was submitted")
    if errors:
        sys.exit(EXIT_BAD_INPUT)


# ---------------------------------------------------------------------------------------------- hostfile

def _parse_hosts(text: str) -> list[str]:
    text = text.strip()
    if ";" in text and "," not in text:
        return hostlist.parse_node_list(text, "--hosts")
    return hostlist.parse_host_list(text, "--hosts")


@click.command("hostfile")
@click.option("--flavor", "flavor_name", required=True, metavar="F",
              help="an MPI flavour: " + " | ".join(flavor_names()))
@click.option("--hosts", "hosts_text", required=True, metavar="LIST",
              help="hosts as AZ_BATCH_HOST_LIST gives them: 10.0.0.4,10.0.0.5 (';' as in AZ_BATCH_NODE_LIST works too)")
@click.option("--ppn", type=click.IntRange(min=1), default=1, show_default=True, help="processes per node")
@report_errors
def hostfile(flavor_name: str, hosts_text: str, ppn: int) -> None:
    """Print the host file a flavour's launcher is given, for your own scripts.

    Open MPI: 'host slots=P' lines; Intel MPI and MPICH: 'host:P' lines; MS-MPI: the CCP_NODES /
    mpiexec -hosts form 'N host P host P ...'. Every host must be an IP address or a host name."""
    flavor = get_flavor(flavor_name, "--flavor")
    hosts = _parse_hosts(hosts_text)
    if flavor.hostfile_style == "msmpi":
        click.echo(hostlist.format_ccp_nodes(hosts, ppn, "--hosts"))
    else:
        click.echo(hostlist.hostfile(hosts, ppn, flavor.hostfile_style, "--hosts"), nl=False)  # type: ignore[arg-type]


COMMANDS = [render, check_pool, hostfile]

__all__ = ["COMMANDS", "check_pool", "hostfile", "render", "render_table"]
