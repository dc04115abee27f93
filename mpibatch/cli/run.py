"""`mpibatch run`: run a spec through any executor - rehearse it on this machine (local, the default)
or on SSH hosts with Batch semantics, or submit it to Azure Batch and wait for it."""
from __future__ import annotations

import signal
import sys
from typing import Any

import click

from ..executors import TaskHandle
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
@ssh_options
@output_option
@report_errors
def run(spec: str, executor: str, runs_dir: str, output: str, **executor_kw: Any) -> None:
    """Run SPEC as a multi-instance task on this machine (default), on SSH hosts, or on Azure Batch."""
    s = load_spec(spec, check_files=True)
    ex = executor_from_options(executor, executor_kw, runs_dir=runs_dir, progress=progress_printer())
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
