"""`mpibatch emulate`: an offline Azure Batch endpoint (an emulator, not the service) in the foreground."""
from __future__ import annotations

import logging
import shlex
import signal
import sys
import threading
import time
from typing import Any

import click

from ..errors import SpecError
from .common import report_errors
from .emulate_ops import preempt

BANNER = "mpibatch emulate: an Azure Batch EMULATOR on this machine - not the Azure Batch service"


def parse_pool(text: str) -> tuple[str, int, int]:
    """ID:NODES[:SLOTS] -> (id, nodes, slots)."""
    parts = text.split(":")
    try:
        if len(parts) not in (2, 3):
            raise ValueError
        pool_id, nodes, slots = parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else 1
    except ValueError:
        raise SpecError("--pool", f"{text!r} is not ID:NODES[:SLOTS]", "e.g. --pool mpi:3 or --pool work:4:4") from None
    from ..emulator.schema import ID_RE

    if not ID_RE.fullmatch(pool_id):
        raise SpecError("--pool", f"{pool_id!r} is not a pool id", "1-64 letters, digits, '-' and '_'")
    if not 0 <= nodes <= 100 or not 1 <= slots <= 256:
        raise SpecError("--pool", f"{text!r}: nodes must be 0-100 and slots 1-256", "e.g. --pool mpi:3")
    return pool_id, nodes, slots


def export_lines(env: dict[str, str]) -> list[str]:
    return [f"export {name}={shlex.quote(value)}" for name, value in env.items()]


@click.group(invoke_without_command=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8900, show_default=True,
              help="port on 127.0.0.1 (0: a free one)")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="keep pools, jobs, tasks and node files here across restarts (default: nothing kept)")
@click.option("--storage", default="auto", show_default=True, metavar="auto|none|env|CONNECTION_STRING",
              help="auto-storage: `auto` starts Azurite; `env` takes the connection string from "
                   "$AZURE_STORAGE_CONNECTION_STRING (never shown in `ps`, unlike one given here)")
@click.option("--storage-port", type=click.IntRange(1, 65535), default=None,
              help="port of the Azurite `--storage auto` starts (default: the one this --state-dir used last, "
                   "else a free one)")
@click.option("--pool", "pools_", multiple=True, metavar="ID:NODES[:SLOTS]",
              help="a pool to have from the start (inter-node communication on; repeatable)")
@click.option("--application", "applications", multiple=True, metavar="NAME[:VERSION]=PATH",
              help="an application package of the account: a .zip file or a directory (VERSION default 1.0; "
                   "repeatable)")
@click.option("--account", default=None, help="Batch account name (default: generated once per state dir)")
@click.option("--key", default=None, help="account key, base64 (default: generated once per state dir)")
@report_errors
def emulate(port: int, state_dir: str | None, storage: str, storage_port: int | None, pools_: tuple[str, ...],
            applications: tuple[str, ...], account: str | None, key: str | None) -> None:
    """Serve the Azure Batch REST API on 127.0.0.1 with emulated nodes, until Ctrl-C.

    Prints the `export` lines to paste into the shell of a Batch client, then one line per change.
    `mpibatch emulate preempt` acts on a running one."""
    from ..emulator import Emulator

    if click.get_current_context().invoked_subcommand:  # an operator command: no emulator to start here
        return

    from ..emulator import apppackages

    pools = [parse_pool(p) for p in pools_]
    packages = [apppackages.parse_option(a) for a in applications]
    apppackages.catalogue(packages)  # a version given twice is bad input before anything starts
    t0 = time.monotonic()
    lock = threading.Lock()

    def event(message: str) -> None:
        with lock:
            click.echo(f"[{time.monotonic() - t0:8.1f}s] {message}", err=True)

    logging.getLogger("mpibatch.emulator").setLevel(logging.WARNING)
    emu = Emulator(port=port, state_dir=state_dir, storage=storage, pools_=pools, account=account, key=key,
                   on_event=event, storage_port=storage_port, applications=packages)
    click.echo(BANNER, err=True)
    if storage not in ("auto", "none", "env", ""):
        event("warning: a connection string on the command line is visible to every user in `ps`; "
              "export AZURE_STORAGE_CONNECTION_STRING and pass --storage env instead")
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        emu.start()
        for line in export_lines(emu.env()):
            click.echo(line)
        sys.stdout.flush()
        event(f"listening on {emu.endpoint} (account {emu.account}); Ctrl-C stops it and every node process")
        while not stop.wait(0.5):
            pass
        event("stopping: ending every node process")
    finally:
        emu.stop()
        for s, h in old.items():
            signal.signal(s, h)
    event("stopped")


emulate.add_command(preempt)
COMMANDS = [emulate]
