"""What every `mpibatch` command shares: exit codes, error reporting, output and progress options.

Exit codes: 0 success, 1 the task failed, 2 bad input (nothing was submitted or run), 3 infrastructure error,
130 interrupted while waiting for a task that keeps running.
"""
from __future__ import annotations

import functools
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import click

from ..errors import MpibatchError, SpecErrors
from ..redaction import redact

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C while waiting for a task that lives on (Batch)

output_option = click.option("--output", "-o", "output", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="human output, or JSON for machines")


def report_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn mpibatch errors into a clear message on stderr and the documented exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except SpecErrors as e:
            click.echo(f"error: {len(e.errors)} problems in the input:", err=True)
            for err in e.errors:
                click.echo(f"  - {redact(err)}", err=True)
            click.echo("nothing was submitted, run or changed", err=True)
            sys.exit(e.exit_code)
        except MpibatchError as e:
            click.echo(f"error: {redact(e)}", err=True)
            if e.exit_code == EXIT_BAD_INPUT:
                click.echo("nothing was submitted, run or changed", err=True)
            sys.exit(e.exit_code)

    return wrapper


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))



def progress_printer() -> Callable[[str, str], None]:
    """Progress lines on stderr: `[  1.2s] phase: detail`."""
    t0 = time.monotonic()

    def show(phase: str, detail: str) -> None:
        click.echo(f"[{time.monotonic() - t0:6.1f}s] {phase}: {redact(detail)}", err=True)

    return show
