"""``mpibatch bench latency``: a ping-pong between one rank per node, run as a multi-instance task.

What runs on the primary (one bash script, rendered here and shown by ``--show-script``):

1. picks the benchmark program on the node, best first: ``osu_latency`` on PATH, else ``IMB-MPI1``
   (``PingPong``), else ``python3 -m mpi4py.bench pingpong``; prints ``MPIBATCH-BENCH program=...``;
2. reads the hosts from ``$AZ_BATCH_HOST_LIST`` and, for each pair measured (``first``: instances 0 and 1;
   ``all``: every pair i<j), runs one two-rank launch with explicit hosts, the launcher argv coming from the
   MPI flavour module (``Flavor.launch(hosts=[a, b], ppn=1, ...)``) exactly as for any task. Each rank first
   prints its rank, host name and kernel boot id (which says whether two "nodes" are one machine), then
   ``exec``s the benchmark: the measured process *is* the benchmark program, started by the same launcher
   line a user would type (nothing sits between the ranks);
3. brackets each pair's output with ``MPIBATCH-BENCH pair=i,j ... begin`` / ``end rc=...`` marker lines so the
   primary's stdout can be split and parsed (:mod:`mpibatch.bench.output`).

The task keeps every Batch rule (coordination on all instances first, 1 slot per node): only the
application command line differs from ``render(spec)``'s, which would run the command under one N-rank launch.
"""
from __future__ import annotations

import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import SpecError
from ..executors import Executor
from ..mpi import FLAVORS, get_flavor
from ..render import Rendered, rank_dir, render
from ..results import TaskResult
from ..shell import Raw, bash_c, sh_join
from ..spec import Spec, parse_spec
from .output import MARKER, LatencyResult, PairResult, parse_task_output
from .parse import PROGRAM_IMB, PROGRAM_MPI4PY, PROGRAM_OSU_LATENCY

__all__ = [
    "MARKER",
    "PROGRAMS",
    "LatencyResult",
    "PairResult",
    "benchmark_script",
    "build_spec",
    "parse_sizes",
    "parse_task_output",
    "render_benchmark",
    "run_latency",
    "run_rendered",
]

DEFAULT_SIZES = (0, 4 << 20)
BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id"  # one per booted kernel, the same in every namespace
# --program choices -> the name the node script prints and the parser to use
PROGRAMS = {"osu": PROGRAM_OSU_LATENCY, "imb": PROGRAM_IMB, "mpi4py": PROGRAM_MPI4PY}
_HOST_A, _HOST_B = "MPIBATCHHOSTA", "MPIBATCHHOSTB"  # placeholders replaced by shell variables

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([kmg]?)(i?b?)\s*$", re.IGNORECASE)


# --------------------------------------------------------------------------------------------- sizes
def _size(text: str, where: str) -> int:
    m = _SIZE_RE.match(text)
    if not m:
        raise SpecError(where, f"{text!r} is not a message size", "write bytes, or a number with K, M or G (binary)")
    return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


def parse_sizes(text: str | None, where: str = "--sizes") -> tuple[int, int]:
    """``"0:4M"`` -> ``(0, 4194304)``; ``"8"`` -> ``(0, 8)``. K/M/G are powers of 1024."""
    if text is None or not str(text).strip():
        return DEFAULT_SIZES
    lo_text, sep, hi_text = str(text).partition(":")
    lo, hi = (_size(lo_text, where), _size(hi_text, where)) if sep else (0, _size(lo_text, where))
    if lo > hi:
        raise SpecError(where, f"minimum {lo} is larger than maximum {hi}", "write MIN:MAX, e.g. 0:4M")
    if hi > 1 << 30:
        raise SpecError(where, f"maximum {hi} bytes is over 1 GiB", "ping-pong latency needs small messages: e.g. 0:4M")
    return lo, hi


def _log2_floor(n: int) -> int:
    return max(0, n.bit_length() - 1)


def _log2_ceil(n: int) -> int:
    return 0 if n <= 1 else (n - 1).bit_length()


def program_args(sizes: tuple[int, int], iterations: int | None) -> dict[str, list[str]]:
    """Each program's arguments for the size range (and iteration count), by PROGRAMS key.

    IMB ``-msglog a:b`` runs 0 bytes and 2^a..2^b; OSU ``-m MIN:MAX``; mpi4py ``-m MIN -n MAX`` (powers of two
    from 1: mpi4py never sends 0 bytes). Samples outside the range are filtered after parsing anyway."""
    lo, hi = sizes
    imb = ["PingPong", "-msglog", f"{_log2_ceil(max(lo, 1))}:{_log2_floor(max(hi, 1))}"]
    osu = ["-m", f"{lo}:{hi}"]
    m4 = ["-m", str(max(lo, 1)), "-n", str(max(hi, 1))]
    if iterations is not None:
        imb += ["-iter", str(iterations), "-iter_policy", "off"]
        osu += ["-i", str(iterations), "-x", str(max(1, min(iterations // 10, 100)))]
        m4 += ["-l", str(iterations), "-s", str(max(1, min(iterations // 10, 100))),
               "--loop-large", str(iterations), "--loop-huge", str(iterations)]
    return {"osu": osu, "imb": imb, "mpi4py": m4}


# --------------------------------------------------------------------------------------------- spec
def build_spec(*, flavor: str, instances: int, job_id: str = "mpibatch-bench", task_id: str | None = None,
               pool_id: str | None = None, vm_size: str | None = None, fabric: str = "auto",
               environment: Mapping[str, str] | None = None, options: Sequence[str] = (),
               max_wall_clock: str = "15m", base: Spec | None = None) -> Spec:
    """The benchmark's spec: a multi-instance task, 1 rank per node. From flags, or from a user's spec
    (``base``: its job, pool, flavour, fabric, environment and launcher options are kept)."""
    task_id = task_id or f"latency-{secrets.token_hex(3)}"
    if base is not None:
        t = base.task
        task = replace(t, id=task_id, instances=instances, common_files=(), files=(), outputs=(),
                       coordination=None, mpi=replace(t.mpi, processes_per_node=1))
        spec = replace(base, task=task, job=replace(base.job, preparation=base.job.preparation))
        if get_flavor(spec.task.mpi.flavor).os != "linux":
            raise SpecError("task.mpi.flavor", "the latency benchmark runs on Linux pools only",
                            f"use {', '.join(_linux_flavors())}")
        return spec
    data: dict[str, Any] = {
        "job": {"id": job_id},
        "task": {"id": task_id, "instances": instances,
                 "mpi": {"flavor": flavor, "fabric": fabric, "options": list(options)},
                 "command": ["mpibatch-bench-latency"],  # replaced by render_benchmark
                 "environment": dict(environment or {}), "max_wall_clock": max_wall_clock},
    }
    if pool_id or vm_size:
        data["pool"] = {k: v for k, v in (("id", pool_id), ("vm_size", vm_size)) if v}
    if get_flavor(flavor, "--flavor").os != "linux":
        raise SpecError("--flavor", "the latency benchmark runs on Linux pools only",
                        f"use {', '.join(_linux_flavors())}")
    return parse_spec(data)


def _linux_flavors() -> list[str]:
    return [name for name, f in FLAVORS.items() if f.os == "linux"]


def benchmark_script(r: Rendered, *, pairs: str = "first", program: str = "auto",
                     sizes: tuple[int, int] = DEFAULT_SIZES, iterations: int | None = None) -> str:
    """The bash script the primary runs (see the module docstring)."""
    if pairs not in ("first", "all"):
        raise SpecError("--pairs", f"unknown value {pairs!r}", "choose first or all")
    if program != "auto" and program not in PROGRAMS:
        raise SpecError("--program", f"unknown value {program!r}", f"choose auto, {', '.join(PROGRAMS)}")
    spec = r.spec
    launch = r.flavor.launch([_HOST_A, _HOST_B], 1, spec.task.mpi.options, r.environment, r.fabric,
                             rank_dir(spec))
    # every rank starts through its node's wrapper (the node's own InfiniBand device and MPI setup)
    launcher = sh_join([*r.launcher_argv(launch.argv), Raw(r.rank_wrapper)])
    launcher = launcher.replace(_HOST_A, '"$host_a"').replace(_HOST_B, '"$host_b"')
    args = program_args(sizes, iterations)
    order = list(PROGRAMS) if program == "auto" else [program]
    choose = []
    for key in order:
        if key == "osu":
            choose.append(f'if [ -z "$prog" ] && p=$(command -v osu_latency); then prog={PROGRAMS[key]!r}; '
                          f'argv=("$p" {sh_join(args[key])}); fi')
        elif key == "imb":
            choose.append(f'if [ -z "$prog" ] && p=$(command -v IMB-MPI1); then prog={PROGRAMS[key]!r}; '
                          f'argv=("$p" {sh_join(args[key])}); fi')
        else:
            choose.append(f'if [ -z "$prog" ] && p=$(command -v python3) && "$p" -c "import mpi4py.bench" 2>/dev/null; '
                          f'then prog={PROGRAMS[key]!r}; argv=("$p" -m mpi4py.bench pingpong {sh_join(args[key])}); fi')
    wanted = "osu_latency, IMB-MPI1 or python3 with mpi4py" if program == "auto" else PROGRAMS[program]
    pair_loop = ("for ((i = 0; i < n - 1; i++)); do for ((j = i + 1; j < n; j++)); do run_pair $i $j; done; done"
                 if pairs == "all" else "run_pair 0 1")
    # Each rank says who it is, then becomes the benchmark (exec: no process in between).
    names = dict.fromkeys(v for f in FLAVORS.values() for v in f.rank_vars if "LOCAL" not in v)
    rank = "?"
    for name in reversed(names):
        rank = f"${{{name}:-{rank}}}"
    # The boot id names the kernel, which no namespace changes: emulated nodes share it (one machine), two
    # machines never do. "-" where there is none to read.
    rank_sh = (f'echo "{MARKER} rank={rank} '
               'host=$(hostname 2>/dev/null || cat /proc/sys/kernel/hostname) '
               f'boot=$(cat {BOOT_ID_PATH} 2>/dev/null || echo -)"; exec "$@"')
    lines = [
        r.node_env_line,
        "set -u",
        'prog="" argv=()',
        *choose,
        f'if [ -z "$prog" ]; then echo "{MARKER} error: no benchmark program found on $(hostname) '
        f'(looked for {wanted} on PATH=$PATH)" >&2; exit 127; fi',
        f'echo "{MARKER} program=$prog path=${{argv[0]}}"',
        'IFS=, read -r -a hosts <<< "$AZ_BATCH_HOST_LIST"',
        "n=${#hosts[@]}",
        f'if [ "$n" -lt 2 ]; then echo "{MARKER} error: need 2 or more instances, got $n" >&2; exit 2; fi',
        "rc=0",
        "run_pair() {",
        '  local host_a=${hosts[$1]} host_b=${hosts[$2]} r=0',
        f'  echo "{MARKER} pair=$1,$2 hosts=$host_a,$host_b begin"',
        f"  {launcher} /bin/bash -c {sh_join([rank_sh])} mpibatch-rank \"${{argv[@]}}\" || r=$?",
        f'  echo "{MARKER} pair=$1,$2 end rc=$r"',
        '  if [ "$r" != 0 ]; then rc=$r; fi',
        "}",
        pair_loop,
        "exit $rc",
    ]
    return "\n".join(lines) + "\n"


def render_benchmark(spec: Spec, *, pairs: str = "first", program: str = "auto",
                     sizes: tuple[int, int] = DEFAULT_SIZES, iterations: int | None = None) -> Rendered:
    """``render(spec)`` with the benchmark script as the application command line."""
    r = render(spec)
    if r.os != "linux":
        raise SpecError("pool.image", "the latency benchmark runs on Linux pools only", "use a Linux image")
    if spec.task.instances < 2:
        raise SpecError("task.instances", "a ping-pong between nodes needs 2 or more instances", "use 2 or more nodes")
    script = benchmark_script(r, pairs=pairs, program=program, sizes=sizes, iterations=iterations)
    return replace(r, command_line=bash_c(script))


def run_rendered(executor: Executor, r: Rendered) -> TaskResult:
    """Run an already rendered task through any executor and wait for its collected result."""
    return executor.submit(r).result()


# --------------------------------------------------------------------------------------------- run
def _read_primary_stdout(result: TaskResult) -> str:
    if not result.instances:
        return ""
    primary = result.instances[0]
    if primary.stdout_path:
        try:
            return Path(primary.stdout_path).read_text(errors="replace")
        except OSError:
            pass
    return primary.stdout


def run_latency(executor: Executor, spec: Spec, *, pairs: str = "first", program: str = "auto",
                sizes: tuple[int, int] = DEFAULT_SIZES, iterations: int | None = None,
                vm_size: str | None = None, fabric_expected: str | None = None) -> LatencyResult:
    """Render, run through ``executor``, parse the primary's stdout and judge it."""
    r = render_benchmark(spec, pairs=pairs, program=program, sizes=sizes, iterations=iterations)
    vm_size = vm_size or (spec.pool.vm_size if spec.pool else None)
    task = run_rendered(executor, r)
    out = parse_task_output(_read_primary_stdout(task), sizes=sizes, vm_size=vm_size,
                            fabric_expected=fabric_expected, instances=spec.task.instances)
    out.pairs_mode = pairs
    out.task = task
    out.command_line = r.command_line
    return out

