"""`mpibatch submit | status | collect | pool create | pool check | job terminate`: Azure Batch.

Every command goes through the executor interface (`get_executor("azure")`, its handles); pools and
jobs are the Azure executor's own public methods. Exit codes (cli/common.py): 0 success, 1 the task
failed, 2 bad input - nothing was created, 3 infrastructure (Batch or storage unreachable,
authentication failed, throttled beyond the retries). Interrupted while waiting or collecting: 130,
after printing how to resume. Credentials come from the environment only (see
mpibatch.executors.azure.client and .storage) and are never printed.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from ..errors import SpecError
from ..executors import TaskHandle, get_executor
from ..redaction import redact
from ..report import format_result
from ..results import TaskResult
from ..spec import load_spec, validate_id
from .common import EXIT_INTERRUPTED, EXIT_OK, EXIT_TASK_FAILED, Stop, echo_json, output_option, report_errors
from .transfer_progress import say, transfer_progress


def _progress(phase: str, detail: str) -> None:
    say(f"mpibatch: {phase} {redact(detail)}")  # above a transfer bar, if one is drawn


def _executor(runs_dir: str | None = None, quiet: bool = False) -> Any:
    """The Azure executor (its pool and job commands are Azure's own: `Any` keeps them reachable)."""
    return get_executor("azure", runs_dir=runs_dir or "mpibatch-runs", progress=None if quiet else _progress)


def _print_result(result: TaskResult, output: str) -> None:
    if output == "json":
        echo_json(result.to_json())
    else:
        click.echo(format_result(result))


def _exit_for(result: TaskResult) -> int:
    if result.state in ("active", "running"):
        return EXIT_OK
    return EXIT_OK if result.succeeded and not result.missing else EXIT_TASK_FAILED


def _resume_hint(job_id: str, task_id: str) -> str:
    return (f"stopped waiting; the task keeps running in Batch. Resume with:\n"
            f"  mpibatch status {job_id} {task_id}\n"
            f"  mpibatch collect {job_id} {task_id}\n"
            f"or end it with: mpibatch job terminate {job_id}")


def _collect_hint(job_id: str, task_id: str) -> str:
    return (f"stopped collecting; the task's outputs stay in Batch. Collect again with: "
            f"mpibatch collect {job_id} {task_id} (it resumes in the same directory: no partial file was left, "
            "files already verified are kept)")


def _ids(job_id: str, task_id: str | None = None) -> None:
    validate_id(job_id, "JOB")
    if task_id is not None:
        validate_id(task_id, "TASK")


def _collect(handle: TaskHandle, output: str, to: str | None = None) -> TaskResult:
    """Collect (a progress bar on a terminal), or exit 130 with how to resume on Ctrl-C."""
    try:
        with transfer_progress("collect", output) as bar:
            ex: Any = handle.executor  # the Azure executor: its `transfers` seam
            ex.transfers = bar
            return handle.collect(to)
    except KeyboardInterrupt:
        raise Stop(EXIT_INTERRUPTED, _collect_hint(handle.job_id, handle.task_id)) from None


@click.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="wait for the task, then collect its outputs")
@output_option
@click.option("--runs-dir", type=click.Path(file_okay=False), default="mpibatch-runs", show_default=True,
              help="where collected outputs go: RUNS_DIR/<job>/<task>/<instance>/")
@click.option("--terminate-on-interrupt", is_flag=True,
              help="on Ctrl-C while waiting, terminate the job instead of leaving the task running")
@click.option("--timeout", type=float, default=None, help="give up waiting after this many seconds (exit 3)")
@click.option("--resume-from", metavar="JOB/TASK", default=None,
              help="start from the newest complete checkpoint generation of that task (docs/checkpoints.md)")
@report_errors
def submit(spec_path: Path, wait: bool, output: str, runs_dir: str, terminate_on_interrupt: bool,
           timeout: float | None, resume_from: str | None) -> None:
    """Submit SPEC as an Azure Batch multi-instance task: check the pool, upload inputs, create the
    job (if missing) and the task, wait with progress, collect every instance's outputs."""
    spec = load_spec(spec_path, check_files=True)
    ex = _executor(runs_dir)
    with transfer_progress("inputs", output) as bar:
        ex.transfers = bar
        handle = ex.submit(spec, resume_from=resume_from)
    job_id, task_id = handle.job_id, handle.task_id
    if not wait:
        _print_result(handle.status(), output)
        click.echo(f"follow it with: mpibatch status {job_id} {task_id}; then: mpibatch collect {job_id} {task_id}",
                   err=True)
        sys.exit(EXIT_OK)
    try:
        handle.wait(timeout=timeout)
    except KeyboardInterrupt:
        if terminate_on_interrupt:
            click.echo(f"mpibatch: interrupted: terminating job {job_id}", err=True)
            try:
                ex.terminate_job(job_id, "interrupted by the user (mpibatch --terminate-on-interrupt)")
            except KeyboardInterrupt:
                pass
            raise Stop(EXIT_INTERRUPTED, f"job {job_id} terminated; collect what it produced with: "
                       f"mpibatch collect {job_id} {task_id}") from None
        raise Stop(EXIT_INTERRUPTED, _resume_hint(job_id, task_id)) from None
    result = _collect(handle, output)
    _print_result(result, output)
    sys.exit(_exit_for(result))


@click.command()
@click.argument("job_id", metavar="JOB")
@click.argument("task_id", metavar="TASK")
@output_option
@click.option("--wait", "wait_", is_flag=True, help="wait until the task completes, with progress")
@report_errors
def status(job_id: str, task_id: str, output: str, wait_: bool) -> None:
    """State, exit code and instances of task TASK in job JOB (downloads nothing)."""
    _ids(job_id, task_id)
    handle = _executor().attach(job_id, task_id)
    try:
        result = handle.wait() if wait_ else handle.status()
    except KeyboardInterrupt:
        raise Stop(EXIT_INTERRUPTED, _resume_hint(job_id, task_id)) from None
    _print_result(result, output)
    sys.exit(_exit_for(result))


@click.command()
@click.argument("job_id", metavar="JOB")
@click.argument("task_id", metavar="TASK")
@click.option("--to", "to", type=click.Path(file_okay=False), default="mpibatch-runs", show_default=True,
              help="runs directory: outputs go to TO/<job>/<task>/<instance>/ (a new directory each time; an "
                   "interrupted collect is resumed in its own)")
@output_option
@report_errors
def collect(job_id: str, task_id: str, to: str, output: str) -> None:
    """Bring back stdout/stderr and outputs of every instance of TASK, verified (sizes, MD5)."""
    _ids(job_id, task_id)
    result = _collect(_executor(to).attach(job_id, task_id), output, to)
    _print_result(result, output)
    sys.exit(_exit_for(result))


@click.group()
def pool() -> None:
    """Create and check Batch pools for MPI."""


@pool.command("create")
@click.argument("spec_path", metavar="SPEC", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--msmpi-installer", "msmpi_installer", metavar="URL", default=None,
              help="URL of MSMpiSetup.exe for Windows pools (installed by the start task)")
@output_option
@report_errors
def pool_create(spec_path: Path, msmpi_installer: str | None, output: str) -> None:
    """Create the pool of SPEC's `pool:` section, fit for MPI: inter-node communication on, one task
    slot per node, an HPC image, and a start task installing what the MPI flavour needs."""
    spec = load_spec(spec_path)
    body = _executor().pool_create(spec, msmpi_installer_url=msmpi_installer)
    if output == "json":
        echo_json(body)
    else:
        vmc = body.get("virtualMachineConfiguration", {})
        ref = vmc.get("imageReference", {})
        click.echo(f"pool {body['id']}: {body.get('targetDedicatedNodes')} x {body.get('vmSize')}, "
                   f"{ref.get('publisher')}/{ref.get('offer')}/{ref.get('sku')} ({vmc.get('nodeAgentSKUId')}), "
                   "inter-node communication on, 1 task slot per node")


@pool.command("check")
@click.argument("pool_id", metavar="POOL")
@click.option("--spec", "spec_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="check the pool against this spec's task too")
@output_option
@report_errors
def pool_check(pool_id: str, spec_path: Path | None, output: str) -> None:
    """Would a multi-instance task run on POOL? Errors exit 2, warnings exit 0."""
    validate_id(pool_id, "POOL")
    spec = load_spec(spec_path) if spec_path else None
    facts, problems = _executor(quiet=True).pool_check(pool_id, spec)
    errors = [p for p in problems if p.severity == "error"]
    if output == "json":
        echo_json({"pool": pool_id, "ok": not errors,
                   "problems": [{"severity": p.severity, "field": p.field, "message": p.message, "fix": p.fix}
                                for p in problems]})
    else:
        for p in problems:
            click.echo(str(p))
        if not problems:
            nodes = facts.nodes if facts.nodes is not None else "?"
            click.echo(f"pool {pool_id}: fit for MPI ({facts.vm_size}, {nodes} node(s), inter-node on, "
                       f"{facts.task_slots_per_node} slot/node)")
    if errors:
        sys.exit(SpecError.exit_code)


@click.group()
def job() -> None:
    """Batch jobs."""


@job.command("terminate")
@click.argument("job_id", metavar="JOB")
@report_errors
def job_terminate(job_id: str) -> None:
    """Terminate JOB: its running tasks end; collect what they produced with `mpibatch collect`."""
    _ids(job_id)
    state = _executor().terminate_job(job_id, "terminated with mpibatch job terminate")
    click.echo(f"job {job_id}: {state}")


COMMANDS = [submit, status, collect, pool, job]
