"""End-to-end `mpibatch run` (local executor) of a trivial MPI program for 1, 2, 4, 8 instances,
against the bare equivalent by hand in the same run: the coordination steps in a shell loop, then
the same mpiexec (MPICH, all proxies forked locally). Goal: at most 10% + 0.3 s over bare, and
coordination time flat in N. Run as root: python benchmarks/launch_overhead.py"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks._results import write_section  # noqa: E402
from mpibatch.executors.local import LocalExecutor  # noqa: E402
from mpibatch.spec import parse_spec  # noqa: E402

VENV = REPO / ".venvs" / "mpich"
PROG = "from mpi4py import MPI\nMPI.COMM_WORLD.Barrier()\n"
REPEAT = 3


def timed_mpibatch(n: int, tmp: Path, env: dict[str, str]) -> tuple[float, float]:
    spec = parse_spec({"job": {"id": "bench"}, "task": {
        "id": f"n{n}", "instances": n, "mpi": "mpich", "command": ["python3", "prog.py"],
        "common_files": [{"source": "prog.py"}]}}, tmp)
    marks: dict[str, float] = {}
    ex = LocalExecutor(base_env=env, runs_dir=tmp / "runs",
                       progress=lambda phase, d: marks.setdefault(phase, time.monotonic()))
    t0 = time.monotonic()
    r = ex.submit(spec).result()
    total = time.monotonic() - t0
    assert r.succeeded, r.failure
    return total, marks["running"] - marks["coordination"]


def timed_bare(n: int, tmp: Path, env: dict[str, str]) -> float:
    hosts = ",".join(f"127.0.1.{i + 1}" for i in range(n))
    script = tmp / "coord.sh"
    script.write_text('mkdir -p "$1/wd" && ln -sfn "$1/wd" "$1/rank" && cp prog.py "$1/wd/"\n')
    t0 = time.monotonic()
    for i in range(n):
        subprocess.run(["bash", str(script), str(tmp / f"bare{i}")], cwd=tmp, check=True, env=env)
    subprocess.run(["mpiexec", "-launcher", "fork", "-hosts", hosts, "-n", str(n), "-ppn", "1",
                    "-wdir", str(tmp / "bare0" / "wd"), "python3", "prog.py"], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    return time.monotonic() - t0


def main() -> None:
    env = dict(os.environ, PATH=f"{VENV}/bin:{os.environ['PATH']}")
    rows = ["| instances | bare (s) | mpibatch run (s) | ratio | overhead (s) | coordination (s) | goal met |",
            "|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "prog.py").write_text(PROG)
        for n in (1, 2, 4, 8):
            bare = statistics.median(timed_bare(n, tmp, env) for _ in range(REPEAT))
            runs = [timed_mpibatch(n, tmp, env) for _ in range(REPEAT)]
            total = statistics.median(r[0] for r in runs)
            coord = statistics.median(r[1] for r in runs)
            ok = total <= bare * 1.10 + 0.3
            rows.append(f"| {n} | {bare:.3f} | {total:.3f} | {total / bare:.2f} | {total - bare:.3f} | {coord:.3f} | "
                        f"{'yes' if ok else 'no'} |")
            print(rows[-1], flush=True)
    body = ("`python benchmarks/launch_overhead.py` (MPICH wheel, medians of 3, 2-core machine). Bare = the "
            "coordination steps in a shell loop, then `mpiexec -launcher fork` of the same program. Goal: "
            "mpibatch <= 1.10 x bare + 0.3 s; coordination flat in N.\n\n" + "\n".join(rows))
    write_section("launch_overhead", body)


if __name__ == "__main__":
    main()
