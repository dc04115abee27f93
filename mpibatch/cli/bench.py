"""`mpibatch bench latency`: internode ping-pong latency on any executor, judged against the hardware.

Exit codes (cli.py): 0 the benchmark ran and was read, 1 the benchmark task (or a pair's launch) failed or
printed nothing readable, 2 bad input (nothing was run), 3 infrastructure.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..errors import SpecError
from .common import EXIT_OK, EXIT_TASK_FAILED, echo_json, output_option, report_errors
from .options import executor_from_options, executor_option, ssh_hosts, ssh_options

if TYPE_CHECKING:  # imported when used: the CLI starts without the benchmark's modules
    from ..bench.output import LatencyResult
    from ..spec import Spec

_DEFAULT_FLAVOR = {"local": "mpich", "ssh": "mpich", "azure": "intelmpi"}


def _progress(phase: str, detail: str = "") -> None:
    click.echo(f"mpibatch: {phase}{': ' + detail if detail else ''}", err=True)


def _env_pairs(values: tuple[str, ...]) -> dict[str, str]:
    env: dict[str, str] = {}
    for v in values:
        name, sep, value = v.partition("=")
        if not sep or not name:
            raise SpecError("--env", f"{v!r} is not NAME=VALUE", "write e.g. --env FI_PROVIDER=mlx")
        env[name] = value
    return env


@click.group()
def bench() -> None:
    """Benchmarks run as multi-instance tasks."""


@bench.command()
@click.argument("spec", required=False, type=click.Path(dir_okay=False))
@executor_option()
@click.option("--flavor", default=None, help="MPI flavour (default mpich for local/ssh, intelmpi for azure)")
@click.option("--pool", "pool_id", default=None, help="azure: the pool to run on")
@click.option("--vm-size", default=None, help="the pool's VM size: expected fabric and latency anchor")
@click.option("--nodes", type=click.IntRange(min=2), default=None,
              help="local/azure: instances (default 2; --pairs all: 3, or the spec's instances)")
@click.option("--sizes", default="0:4M", show_default=True, help="message sizes MIN:MAX (K, M, G = 1024^n)")
@click.option("--pairs", type=click.Choice(["first", "all"]), default="first", show_default=True,
              help="first: instances 0 and 1; all: every node pair (matrix, slowest node)")
@click.option("--program", type=click.Choice(["auto", "osu", "imb", "mpi4py"]), default="auto", show_default=True,
              help="auto: osu_latency, else IMB-MPI1 PingPong, else mpi4py.bench pingpong, found on the node")
@click.option("--iterations", type=click.IntRange(min=1), default=None,
              help="iterations per size (default: the program's own)")
@click.option("--fabric", type=click.Choice(["auto", "tcp", "sriov", "networkdirect"]), default=None,
              help="fabric settings (default auto: from --vm-size)")
@click.option("--env", "env", multiple=True, metavar="NAME=VALUE", help="task environment (repeatable)")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None,
              help="write a log-log PNG (and FILE-matrix.png for --pairs all)")
@click.option("--runs-dir", default="mpibatch-runs", show_default=True, help="where outputs are collected")
@click.option("--show-script", is_flag=True, help="print the node script and exit without running")
@output_option
@ssh_options
@report_errors
def latency(spec: str | None, executor: str, flavor: str | None, pool_id: str | None, vm_size: str | None,
            nodes: int | None, sizes: str, pairs: str, program: str, iterations: int | None, fabric: str | None,
            env: tuple[str, ...], plot_path: str | None, runs_dir: str, show_script: bool, output: str,
            **ssh_kw: Any) -> None:
    """Ping-pong latency between nodes (one rank per node), with a verdict on the fabric.

    Without SPEC the task is built from the flags; with SPEC its job, pool, MPI flavour, fabric, environment
    and launcher options are used.
    """
    from .. import rdma
    from ..bench.latency import parse_sizes, render_benchmark, run_latency
    from ..bench.report import format_report
    from ..spec import load_spec

    size_range = parse_sizes(sizes)
    extra_env = _env_pairs(env)
    if vm_size:
        vm_size = rdma.validate_vm_size(vm_size, "--vm-size")
    if plot_path and not show_script:
        _check_plot_target(plot_path)

    base = load_spec(spec) if spec else None
    hosts, instances = _instances(executor, pairs, nodes, base, ssh_kw)
    if base is not None:
        the_spec = _spec_from_base(base, flavor, fabric, pool_id, extra_env, instances)
        vm_size = vm_size or (base.pool.vm_size if base.pool else None)
    else:
        from ..bench.latency import build_spec

        the_spec = build_spec(flavor=flavor or _DEFAULT_FLAVOR.get(executor, "mpich"), instances=instances,
                              pool_id=pool_id, vm_size=vm_size, fabric=fabric or "auto", environment=extra_env)
    if executor == "azure" and not the_spec.job.pool:
        raise SpecError("--pool", "the azure executor needs a pool", "give --pool or job.pool in the spec")

    if show_script:
        import shlex

        r = render_benchmark(the_spec, pairs=pairs, program=program, sizes=size_range, iterations=iterations)
        click.echo(shlex.split(r.command_line)[2], nl=False)
        return

    ex = executor_from_options(executor, ssh_kw, runs_dir=runs_dir, progress=_progress,
                               hosts=hosts[:instances] if executor == "ssh" else None)
    res = run_latency(ex, the_spec, pairs=pairs, program=program, sizes=size_range, iterations=iterations,
                      vm_size=vm_size)
    plots = _draw_plots(res, plot_path, the_spec.task.mpi.flavor) if plot_path else []
    if output == "json":
        data = res.to_json()
        data["plots"] = plots
        echo_json(data)
    else:
        click.echo(format_report(res, flavor=the_spec.task.mpi.flavor, executor=executor))
        for written in plots:
            click.echo(f"plot: {written}")
    sys.exit(EXIT_OK if res.ok else EXIT_TASK_FAILED)


def _check_plot_target(plot_path: str) -> None:
    """Before anything runs: matplotlib is importable (else exit 2 naming the extra) and the PNG's directory
    exists or can be made (``--plot mpibatch-runs/x.png`` on a first run)."""
    from ..bench.plot import _matplotlib

    _matplotlib()
    parent = Path(plot_path).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError("--plot", f"cannot make the directory {parent} ({e.strerror or e})",
                        "give a PNG path in a directory you can write") from None
    if not os.access(parent, os.W_OK):
        raise SpecError("--plot", f"the directory {parent} is not writable",
                        "give a PNG path in a directory you can write")


def _instances(executor: str, pairs: str, nodes: int | None, base: Spec | None,
               ssh_kw: dict[str, Any]) -> tuple[list[str], int]:
    """(the SSH hosts, or [] for other executors; how many instances the benchmark task has)."""
    if executor != "ssh":
        default_all = base.task.instances if base and base.task.instances >= 3 else 3
        return [], nodes or (default_all if pairs == "all" else 2)
    hosts = ssh_hosts(ssh_kw)
    if len(hosts) < 2:
        raise SpecError("--hosts", f"a ping-pong between nodes needs 2 hosts, got {len(hosts)}", "give two or more")
    instances = len(hosts) if pairs == "all" else 2
    if nodes is not None and nodes != instances:
        raise SpecError("--nodes", f"the SSH executor uses its hosts ({instances})", "drop --nodes")
    return hosts, instances


def _spec_from_base(base: Spec, flavor: str | None, fabric: str | None, pool_id: str | None,
                    extra_env: dict[str, str], instances: int) -> Spec:
    """The benchmark's spec from the user's: its flavour, pool and fabric unless a flag says otherwise (a flag
    that contradicts the spec is bad input), the --env variables added."""
    from dataclasses import replace

    from ..bench.latency import build_spec

    if flavor and flavor != base.task.mpi.flavor:
        raise SpecError("--flavor", f"{flavor} differs from the spec's task.mpi.flavor {base.task.mpi.flavor}",
                        "drop --flavor or edit the spec")
    if pool_id and base.job.pool and pool_id != base.job.pool:
        raise SpecError("--pool", f"{pool_id} differs from the spec's pool {base.job.pool}", "drop --pool")
    task = replace(base.task, environment={**base.task.environment, **extra_env})
    if fabric:
        task = replace(task, mpi=replace(task.mpi, fabric=fabric))
    base = replace(base, task=task)
    if pool_id:
        base = replace(base, job=replace(base.job, pool=pool_id))
    return build_spec(flavor=base.task.mpi.flavor, instances=instances, base=base)


def _draw_plots(res: LatencyResult, plot_path: str, flavor: str) -> list[str]:
    """The latency plot of the first pair (and the matrix for --pairs all); what was written."""
    if not (res.samples and res.first):
        return []
    from ..bench.plot import plot_latency, plot_matrix
    from ..bench.verdict import ONE_MACHINE_VERDICT

    one_machine = res.first.one_machine
    where = " (one machine)" if one_machine else ""
    title = f"ping-pong {' - '.join(res.first.rank_hosts[:2])}{where}: {res.program}, {flavor}"
    # one machine: no fabric, so neither the fabric bands nor the VM size's anchor mean anything here
    anchor = res.verdict.anchor_us if res.verdict and not one_machine else None
    plots = [plot_latency(res.samples, plot_path, anchor_us=anchor, title=title,
                          note=ONE_MACHINE_VERDICT if one_machine else None)]
    if res.pairs_mode == "all":
        png = Path(plot_path)
        plots.append(plot_matrix(res.matrix, res.node_names, png.with_name(png.stem + "-matrix" + png.suffix),
                                 highlight=res.slowest[0] if res.slowest else None,
                                 one_machine=res.one_machine_pairs))
    return plots


COMMANDS = [bench]
