"""Options that several commands share: which executor, and how the SSH executor reaches its hosts."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from ..errors import SpecError
from ..executors import Executor, Progress, get_executor, names
from ..inputfiles import read_text_file

# What an option holds when the user did not give it: such options are not passed to the executor.
_UNSET = (None, (), False)


class _ExecutorOption(click.Option):
    """--executor, whose help names installed plugins too: looked up only when help is shown (a run never
    pays for the entry-point scan)."""

    def get_help_record(self, ctx: click.Context) -> tuple[str, str] | None:
        self.help = "where the task runs: " + " | ".join(names())
        return super().get_help_record(ctx)


def executor_option(default: str = "local") -> Callable[[Any], Any]:
    return click.option("--executor", cls=_ExecutorOption, default=default, show_default=True, metavar="NAME",
                        help="where the task runs")


def ssh_options(fn: Any) -> Any:
    opts = [
        click.option("--hosts", help="comma-separated [user@]host[:port] list; the first is the primary"),
        click.option("--hosts-file", type=click.Path(dir_okay=False), help="one [user@]host[:port] a line"),
        click.option("--user", help="SSH user (default: yours, or user@ in the host entry)"),
        click.option("--key", type=click.Path(dir_okay=False), help="SSH private key"),
        click.option("--known-hosts", type=click.Path(dir_okay=False), help="default ~/.ssh/known_hosts"),
        click.option("--port", type=click.IntRange(1, 65535), default=None, help="SSH port (default 22)"),
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
    from ..hostlist import parse_host_spec, parse_hosts_file

    if bool(kw.get("hosts")) == bool(kw.get("hosts_file")):
        raise SpecError("--hosts", "the SSH executor needs exactly one of --hosts or --hosts-file",
                        "e.g. --hosts 10.0.0.4,10.0.0.5")
    if kw.get("hosts"):
        return [parse_host_spec(h.strip(), "--hosts") for h in kw["hosts"].split(",") if h.strip()]
    text = read_text_file(kw["hosts_file"], field=f"--hosts-file {kw['hosts_file']}", limit=MAX_HOSTS_FILE_BYTES,
                          fix="give a UTF-8 text file with one [user@]host[:port] a line")
    return parse_hosts_file(text, "--hosts-file")


MAX_HOSTS_FILE_BYTES = 1024 * 1024  # a task has at most 100 hosts; a megabyte is far more than any real list


def executor_from_options(name: str, kw: dict[str, Any], *, runs_dir: str, progress: Progress | None,
                          hosts: list[Any] | None = None) -> Executor:
    """The executor `name`, given the options the user set; one that executor does not take is bad
    input. `hosts` overrides the parsed --hosts / --hosts-file."""
    options = {k: v for k, v in kw.items() if v not in _UNSET and k != "hosts_file"}
    if hosts is not None or name == "ssh" or kw.get("hosts") or kw.get("hosts_file"):
        options["hosts"] = hosts if hosts is not None else ssh_hosts(kw)
    return get_executor(name, runs_dir=runs_dir, progress=progress, **options)
