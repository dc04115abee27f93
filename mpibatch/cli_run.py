"""`mpibatch run`: rehearse a spec on this machine (local) or on SSH hosts, with Batch semantics."""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from .cli import EXIT_OK, EXIT_TASK_FAILED, echo_json, output_option, report_errors
from .errors import SpecError
from .report import format_result
from .spec import load_spec


def progress_printer() -> Any:
    t0 = time.monotonic()

    def show(phase: str, detail: str) -> None:
        click.echo(f"[{time.monotonic() - t0:6.1f}s] {phase}: {detail}", err=True)

    return show


def _sigterm_as_interrupt() -> None:
    # SIGTERM ends a run like Ctrl-C: every process the run started is ended first.
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def ssh_options(fn: Any) -> Any:
    opts = [
        click.option("--hosts", help="comma-separated [user@]host[:port] list; the first is the primary"),
        click.option("--hosts-file", type=click.Path(dir_okay=False), help="one [user@]host[:port] a line"),
        click.option("--user", help="SSH user (default: yours, or user@ in the host entry)"),
        click.option("--key", type=click.Path(dir_okay=False), help="SSH private key"),
        click.option("--known-hosts", type=click.Path(dir_okay=False), help="default ~/.ssh/known_hosts"),
        click.option("--port", type=int, default=None, help="SSH port (default 22)"),
        click.option("--node-root", default=None, help="node root directory on each host (default /tmp/mpibatch)"),
        click.option("--remote-path-prepend", multiple=True,
                     help="directory to put first on PATH on the hosts (e.g. the venv with the MPI runtime)"),
        click.option("--insecure-accept-unknown-host-keys", is_flag=True,
                     help="DANGER: do not check SSH host keys (man-in-the-middle risk)"),
    ]
    for o in reversed(opts):
        fn = o(fn)
    return fn


def ssh_hosts(kw: dict[str, Any]) -> list[Any]:
    """The hosts of --hosts or --hosts-file (exactly one), parsed and validated."""
    from .hostlist import parse_host_spec, parse_hosts_file

    if bool(kw.get("hosts")) == bool(kw.get("hosts_file")):
        raise SpecError("--hosts", "the SSH executor needs exactly one of --hosts or --hosts-file",
                        "e.g. --hosts 10.0.0.4,10.0.0.5")
    if kw.get("hosts"):
        return [parse_host_spec(h.strip(), "--hosts") for h in kw["hosts"].split(",") if h.strip()]
    path = Path(kw["hosts_file"])
    if not path.is_file():
        raise SpecError("--hosts-file", f"{path} does not exist", "give a file with one host a line")
    return parse_hosts_file(path.read_text(), "--hosts-file")


def make_ssh_executor(kw: dict[str, Any], runs_dir: str, progress: Any, hosts: list[Any] | None = None) -> Any:
    """An SshExecutor from the ssh_options; `hosts` overrides the parsed --hosts/--hosts-file."""
    from .executors.ssh import SshExecutor

    options = {k: v for k, v in (("user", kw.get("user")), ("key", kw.get("key")),
                                 ("known_hosts", kw.get("known_hosts")), ("port", kw.get("port")),
                                 ("node_root", kw.get("node_root"))) if v is not None}
    return SshExecutor(hosts if hosts is not None else ssh_hosts(kw),
                       insecure_accept_unknown_host_keys=kw.get("insecure_accept_unknown_host_keys", False),
                       remote_path_prepend=tuple(kw.get("remote_path_prepend") or ()),
                       runs_dir=runs_dir, progress=progress, **options)


@click.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--executor", type=click.Choice(["local", "ssh"]), default="local", show_default=True)
@click.option("--runs-dir", default="mpibatch-runs", show_default=True, help="where outputs are collected")
@click.option("--keep-nodes", is_flag=True, help="local: keep the emulated nodes' directories for inspection")
@ssh_options
@output_option
@report_errors
def run(spec: str, executor: str, runs_dir: str, keep_nodes: bool, output: str, **ssh_kw: Any) -> None:
    """Run SPEC as a multi-instance task on this machine (default) or on SSH hosts."""
    s = load_spec(spec)
    progress = progress_printer()
    if executor == "local":
        from .executors.local import LocalExecutor

        ex: Any = LocalExecutor(runs_dir=runs_dir, keep_nodes=keep_nodes, progress=progress)
    else:
        ex = make_ssh_executor(ssh_kw, runs_dir, progress)
    _sigterm_as_interrupt()
    try:
        result = ex.run(s)
    except KeyboardInterrupt:
        click.echo("interrupted: every process the run started was ended", err=True)
        sys.exit(EXIT_TASK_FAILED)
    if output == "json":
        echo_json(result.to_json())
    else:
        click.echo(format_result(result))
    sys.exit(EXIT_OK if result.succeeded else EXIT_TASK_FAILED)


COMMANDS = [run]
