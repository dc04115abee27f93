"""Rehearsal at scale (issue 22 item 11): the `mpibatch` console script running the hello example on 16, 32 and
64 emulated nodes x 1 rank, against bare `mpiexec -n N python3 hello.py` from the same venv, whole processes,
medians of 3 runs taken alternately. Goal: at most 1.5x bare at 64 nodes, cost growing linearly with N.

    python benchmarks/scale.py [--nodes 16,32,64] [--runs 3]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "hello" / "hello.py"


def _timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   timeout=600)
    return time.monotonic() - t0


def measure(n: int, runs: int, tmp: Path, env: dict[str, str]) -> tuple[float, float]:
    bindir = Path(sys.executable).parent
    spec = tmp / f"spec-{n}.yaml"
    spec.write_text(f"job: {{id: scale}}\ntask: {{id: n{n}, instances: {n}, mpi: mpich, max_wall_clock: 10m, "
                    "command: [python3, hello.py], common_files: [hello.py]}\n")
    mpibatch = [str(bindir / "mpibatch"), "run", str(spec), "--runs-dir", str(tmp / "runs")]
    bare = [str(bindir / "mpiexec"), "-n", str(n), "python3", "hello.py"]
    bare_s, mb_s = [], []
    for _ in range(runs):  # alternate, so load from other work hits both alike
        bare_s.append(_timed(bare, tmp, env))
        mb_s.append(_timed(mpibatch, tmp, env))
        shutil.rmtree(tmp / "runs", ignore_errors=True)
    return statistics.median(bare_s), statistics.median(mb_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--nodes", default="16,32,64", help="comma-separated node counts")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    rows = ["| nodes x ranks | bare mpiexec (s) | mpibatch run (s) | ratio | over bare (s) | over bare per node (ms) |"
            " goal <= 1.5x at 64 |", "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copy(HELLO, tmp / "hello.py")
        for n in (int(x) for x in args.nodes.split(",")):
            bare, mb = measure(n, args.runs, tmp, env)
            goal = ("yes" if mb <= 1.5 * bare else "no") if n == 64 else "-"
            rows.append(f"| {n} x 1 | {bare:.2f} | {mb:.2f} | {mb / bare:.2f}x | {mb - bare:+.2f} | "
                        f"{(mb - bare) / n * 1000:.0f} | {goal} |")
            print(rows[-1], flush=True)
    load = os.getloadavg()[0]
    body = (f"`python benchmarks/scale.py --nodes {args.nodes} --runs {args.runs}`: the `mpibatch` console script "
            "running hello.py on N emulated nodes x 1 rank (MPICH) vs bare `mpiexec -n N python3 hello.py` from the "
            f"same venv, medians of {args.runs} whole processes taken alternately; as root; 2-core machine shared "
            f"with other work (load average {load:.1f} at the end).\n\n" + "\n".join(rows))
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section
        write_section("scale", body)


if __name__ == "__main__":
    main()
