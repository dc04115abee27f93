"""The `mpibatch` command: one module per command group, all registered here."""
from __future__ import annotations

import logging

import click

from . import azure, bench, emulate, init, logs, outputs, preview, run
from .common import Group


@click.group(cls=Group)
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


for _module in (init, preview, run, azure, logs, outputs, bench, emulate):
    for _command in _module.COMMANDS:
        main.add_command(_command)


if __name__ == "__main__":
    main()
