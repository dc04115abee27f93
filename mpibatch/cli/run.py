"""`mpibatch run`: run a spec through any executor - rehearse it on this machine (local, the default)
or on SSH hosts with Batch semantics, or submit it to Azure Batch and wait for it."""
from __future__ import annotations

import signal
import sys
from typing import Any

import click

from ..checkpoints import resume_source
from ..errors import SpecError
from ..executors import TaskHandle
from ..executors.rehearsal import RehearsalExecutor
from ..preemption import parse_preempt_at
from ..report import format_result
from ..spec import load_spec
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TASK_FAILED,
    Stop,
    echo_json,
    output_option,
    progress_printer,
    report_errors,
)
from .options import executor_from_options, executor_option, ssh_options


def _sigterm_as_interrupt() -> None:
    # SIGTERM ends a run like Ctrl-C: every process the run started is ended first.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@executor_option()
@click.option("--runs-dir", default="mpibatch-runs", show_default=True, help="where outputs are collected")
@click.option("--keep-nodes", is_flag=True,
              help="local: keep the emulated nodes' directories for inspection (their path is printed; they stay "
                   "until you remove them)")
@click.option("--node-ib", default=None, metavar="DEV,DEV,...",
              help="local: each emulated node's InfiniBand, like an HPC node's sysfs: a device name "
                   "(mlx5_ib0), NAME:down or none, one per node, e.g. mlx5_ib0,mlx5_0,none")
@click.option("--preempt-at", default=None, metavar="TIME[,TIME...]",
              help="local/ssh: evict every node of the task at these times after the start (30s,75s), as Batch "
                   "evicts Spot VMs; the task is requeued on fresh nodes and restores its newest checkpoint")
@click.option("--resume-from", default=None, metavar="RUNDIR|JOB/TASK",
              help="local/ssh: start from the newest complete checkpoint of an earlier run (its run directory, "
                   "or JOB/TASK under --runs-dir)")
@ssh_options
@output_option
@report_errors
def run(spec: str, executor: str, runs_dir: str, output: str, preempt_at: str | None, resume_from: str | None,
        **executor_kw: Any) -> None:
    """Run SPEC as a multi-instance task on this machine (default), on SSH hosts, or on Azure Batch."""
    s = load_spec(spec, check_files=True)
    times = parse_preempt_at(preempt_at)
    ex = executor_from_options(executor, executor_kw, runs_dir=runs_dir, progress=progress_printer())
    if times or resume_from:
        if not isinstance(ex, RehearsalExecutor):
            raise SpecError("--preempt-at" if times else "--resume-from", f"the {executor} executor does not take it",
                            "use it with --executor local or ssh" if times else "use it with --executor local or "
                            "ssh; on Azure: mpibatch submit SPEC --resume-from JOB/TASK")
        ex.preempt_at = times
        if resume_from:
            ex.resume_from = resume_source(resume_from, runs_dir, s)
    _sigterm_as_interrupt()
    handle: TaskHandle | None = None
    try:
        handle = ex.submit(s)
        result = handle.result()
    except KeyboardInterrupt:
        if handle is not None and not handle.done:  # submitted to a service (Batch): the task lives on there
            raise Stop(EXIT_INTERRUPTED, f"interrupted; the task stays in {handle.executor.name}. Follow it, or "
                       f"collect it, with:\n  mpibatch status {handle.job_id} {handle.task_id}\n"
                       f"  mpibatch collect {handle.job_id} {handle.task_id}") from None
        raise Stop(EXIT_TASK_FAILED, "interrupted: every process the run started was ended") from None
    if output == "json":
        echo_json(result.to_json())
    else:
        click.echo(format_result(result))
    sys.exit(EXIT_OK if result.succeeded else EXIT_TASK_FAILED)


COMMANDS = [run]
