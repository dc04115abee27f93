"""The `mpibatch` command. Exit codes: 0 success, 1 the task failed, 2 bad input (nothing was
submitted or run), 3 infrastructure error. Each group of commands lives in its own cli_* module."""
from __future__ import annotations

import functools
import json
import logging
import sys
from typing import Any, Callable

import click

from .errors import MpibatchError, SpecErrors

EXIT_OK, EXIT_TASK_FAILED, EXIT_BAD_INPUT, EXIT_INFRA = 0, 1, 2, 3

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
                click.echo(f"  - {err}", err=True)
            click.echo("nothing was submitted, run or changed", err=True)
            sys.exit(e.exit_code)
        except MpibatchError as e:
            click.echo(f"error: {e}", err=True)
            if e.exit_code == EXIT_BAD_INPUT:
                click.echo("nothing was submitted, run or changed", err=True)
            sys.exit(e.exit_code)

    return wrapper


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


@click.group()
@click.option("-v", "--verbose", count=True, help="more log output on stderr (-vv for debug)")
@click.version_option(package_name="mpibatch")
def main(verbose: int) -> None:
    """Run MPI programs as Azure Batch multi-instance tasks - and rehearse them on this machine
    or on SSH hosts with the same semantics."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # The Azure SDK logs request URLs at INFO (SAS tokens are redacted, but keep it quiet anyway).
    logging.getLogger("azure").setLevel(max(level, logging.WARNING))


def _register() -> None:
    import importlib

    for name in ("cli_core", "cli_run", "cli_azure", "cli_bench"):
        try:
            module = importlib.import_module(f".{name}", __package__)
        except ModuleNotFoundError as e:  # a command group not built yet
            if e.name != f"{__package__}.{name}":
                raise
            continue
        for cmd in getattr(module, "COMMANDS", ()):
            main.add_command(cmd)


_register()


if __name__ == "__main__":
    main()
