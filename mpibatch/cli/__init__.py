"""The `mpibatch` command: one module per command group, all registered here.

Commands load lazily: `mpibatch run` imports the run command's module only, not the Azure, emulator or
preview ones (start-up time a user feels on every command). `--help` loads them all."""
from __future__ import annotations

import importlib
import logging
from typing import Any

import click

from .common import Group

# command name -> the module of mpibatch.cli that defines it (in its COMMANDS list)
COMMAND_MODULES = {
    "init": "init", "render": "preview", "check-pool": "preview", "hostfile": "preview", "run": "run",
    "submit": "azure", "status": "azure", "collect": "azure", "pool": "azure", "job": "azure", "logs": "logs",
    "outputs": "outputs", "bench": "bench", "emulate": "emulate",
}


class LazyGroup(Group):
    """A group whose commands are imported when one is named (or listed for --help)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        if module is None:
            return None
        commands: list[Any] = importlib.import_module(f"{__name__}.{module}").COMMANDS
        return next(c for c in commands if c.name == cmd_name)


@click.group(cls=LazyGroup)
@click.option("-v", "--verbose", count=True, help="more log output on stderr (-vv for debug)")
@click.version_option(package_name="mpibatch")
def main(verbose: int) -> None:
    """Run MPI programs as Azure Batch multi-instance tasks - and rehearse them on this machine
    or on SSH hosts with the same semantics."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    # Libraries stay quiet unless -vv: the Azure SDK logs request URLs, paramiko whole tracebacks.
    for name in ("azure", "paramiko", "mpibatch.executors.ssh.wire"):
        logging.getLogger(name).setLevel(level if verbose >= 2 else logging.CRITICAL)


if __name__ == "__main__":
    main()
