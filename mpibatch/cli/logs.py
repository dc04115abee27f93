"""`mpibatch logs JOB TASK`: one instance's stdout or stderr, from Azure Batch (and `mpibatch emulate`) or from
a rehearsal run's collected logs; `--follow` prints what a running task appends until it completes."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from ..errors import InfraError, LogShrank
from ..executors.collection import read_collected_log
from .common import EXIT_INTERRUPTED, report_errors

Reader = Callable[[int], "tuple[bytes, int, bool]"]
MAX_READS = 1_000_000  # a bound on the loop besides --timeout (each read is at most a few MiB)


def _azure_reader(job_id: str, task_id: str, instance: int, stream: str) -> Reader:
    from ..executors import get_executor

    ex: Any = get_executor("azure")  # read_log is the Azure executor's own
    return lambda offset: ex.read_log(job_id, task_id, instance, stream, offset)


def _print_all(read: Reader, *, follow: bool, interval: float, timeout: float, start: int = 0) -> None:
    """Read from `start` (negative: that many bytes before the end) until the end (and, with `follow`, until
    the task is done), writing as it comes.
    A log truncated or rewritten in place (now shorter than what was printed) is printed again from its
    start, after a note on stderr: its new text is never skipped."""
    out = sys.stdout.buffer
    offset, deadline = start, time.monotonic() + timeout
    for _ in range(MAX_READS):
        try:
            data, offset, done = read(offset)
        except LogShrank as e:
            out.flush()
            click.echo(f"\nmpibatch logs: {e}; printing it again from the start", err=True)
            offset = 0
            continue
        if data:
            out.write(data)
            out.flush()
        if done:
            return
        if not data:
            if not follow:
                return
            if time.monotonic() >= deadline:
                raise InfraError(f"the task did not complete within --timeout {timeout:g}s; rerun to keep following")
            time.sleep(interval)
    raise InfraError("log longer than mpibatch logs reads; download it with `mpibatch collect`")


@click.command()
@click.argument("job_id", metavar="JOB")
@click.argument("task_id", metavar="TASK")
@click.option("--instance", "-i", type=click.IntRange(min=0), default=0, show_default=True,
              help="0 the primary, 1..N-1 the subtasks")
@click.option("--stream", type=click.Choice(["stdout", "stderr"]), default="stdout", show_default=True)
@click.option("--follow", "-f", is_flag=True,
              help="keep printing what is appended until the task completes (Azure; a rehearsal run has already "
                   "ended, so its log is just printed)")
@click.option("--executor", type=click.Choice(["azure", "local", "ssh"]), default="azure", show_default=True,
              help="azure: the Batch account (and storage) of the environment; local/ssh: a rehearsal run's "
                   "collected logs in --runs-dir")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="rehearsal runs directory (default mpibatch-runs); implies a rehearsal run")
@click.option("--tail", type=click.IntRange(min=1), default=None, metavar="BYTES",
              help="print only the last BYTES bytes (then, with --follow, what is appended)")
@click.option("--interval", type=click.FloatRange(min=0.1), default=2.0, show_default=True,
              help="seconds between reads with --follow")
@click.option("--timeout", type=click.FloatRange(min=0), default=86400.0, show_default=True,
              help="with --follow, give up after this many seconds (exit 3)")
@report_errors
def logs(job_id: str, task_id: str, instance: int, stream: str, follow: bool, executor: str,
         runs_dir: Path | None, tail: int | None, interval: float, timeout: float) -> None:
    """Print instance N's stdout (or stderr) of TASK. Azure: the tracked or persisted copy in storage if there
    is one, else the Batch file API in byte ranges. Rehearsal: the newest run, RUNS_DIR/JOB/TASK.latest/N/."""
    from ..conventions import validate_job_id, validate_task_id

    validate_job_id(job_id, "JOB")
    validate_task_id(task_id, "TASK")
    if executor == "azure" and runs_dir is None:
        read = _azure_reader(job_id, task_id, instance, stream)
    else:
        where = runs_dir or Path("mpibatch-runs")
        read = lambda offset: read_collected_log(where, job_id, task_id, instance, stream, offset)  # noqa: E731
    try:
        _print_all(read, follow=follow, interval=interval, timeout=timeout, start=-tail if tail else 0)
    except KeyboardInterrupt:
        click.echo("\ninterrupted: the task keeps running; rerun `mpibatch logs` to read on", err=True)
        sys.exit(EXIT_INTERRUPTED)


COMMANDS = [logs]
