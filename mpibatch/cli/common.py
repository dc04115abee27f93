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

from ..errors import MpibatchError, SpecError, SpecErrors
from ..redaction import redact

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3
EXIT_INTERRUPTED = 130  # Ctrl-C while waiting for a task that lives on (Batch)
NOTHING_DONE = "nothing was submitted, run or changed"

output_option = click.option("--output", "-o", "output", type=click.Choice(["table", "json"]), default="table",
                             show_default=True, help="human output, or JSON for machines")


class Stop(Exception):
    """End a command with `code` after saying why (`message`, on stderr; in the JSON object with -o json)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def error_json(code: int, message: str, field: str | None = None, errors: list[SpecError] | None = None) -> Any:
    """The one JSON object an exit other than a result prints with --output json."""
    body: dict[str, Any] = {"code": code, "message": redact(message)}
    if field:
        body["field"] = field
    if errors:
        body["errors"] = [{"field": e.field, "message": redact(e.problem), "fix": redact(e.fix or "")}
                          for e in errors]
    return body


def report_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The one place errors become exit codes: a clear message on stderr and the documented exit code;
    with --output json also one JSON object on stdout ({code, message, field})."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        as_json = kwargs.get("output") == "json"
        try:
            return fn(*args, **kwargs)
        except Stop as e:
            click.echo(redact(e.message), err=True)
            if as_json:
                echo_json(error_json(e.code, e.message))
            sys.exit(e.code)
        except SpecErrors as e:
            click.echo(f"error: {len(e.errors)} problems in the input:", err=True)
            for err in e.errors:
                click.echo(f"  - {redact(err)}", err=True)
            click.echo(NOTHING_DONE, err=True)
            if as_json:
                echo_json(error_json(e.exit_code, f"{len(e.errors)} problems in the input", e.field, e.errors))
            sys.exit(e.exit_code)
        except MpibatchError as e:
            click.echo(f"error: {redact(e)}", err=True)
            if e.exit_code == EXIT_BAD_INPUT:
                click.echo(NOTHING_DONE, err=True)
            if as_json:
                echo_json(error_json(e.exit_code, str(e), getattr(e, "field", None)))
            sys.exit(e.exit_code)

    return wrapper


def _wants_json(args: list[str]) -> bool:
    for i, a in enumerate(args):
        if a in ("-o", "--output") and args[i + 1:i + 2] == ["json"]:
            return True
        if a in ("-ojson", "--output=json"):
            return True
    return False


class Group(click.Group):
    """click's group, except that with --output json a usage error (exit 2) is a JSON object too."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        if not (standalone_mode and _wants_json(argv)):
            return super().main(argv, prog_name, complete_var, standalone_mode, **extra)
        try:
            rv = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except click.ClickException as e:
            e.show()
            echo_json(error_json(e.exit_code, e.format_message(), _param_name(e)))
            sys.exit(e.exit_code)
        except click.Abort:
            click.echo("interrupted", err=True)
            echo_json(error_json(EXIT_INTERRUPTED, "interrupted"))
            sys.exit(EXIT_INTERRUPTED)
        sys.exit(rv if isinstance(rv, int) else EXIT_OK)  # an int is ctx.exit()'s code


def _param_name(e: click.ClickException) -> str | None:
    param = getattr(e, "param", None)
    return param.opts[0] if param is not None and getattr(param, "opts", None) else None


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))



def progress_printer() -> Callable[[str, str], None]:
    """Progress lines on stderr: `[  1.2s] phase: detail`."""
    t0 = time.monotonic()

    def show(phase: str, detail: str) -> None:
        click.echo(f"[{time.monotonic() - t0:6.1f}s] {phase}: {redact(detail)}", err=True)

    return show
