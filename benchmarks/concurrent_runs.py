"""Fifty local runs, two at a time (issue 12's done-when): how many succeed, how long they take, and
what they leave in /dev/shm, the temporary directory and the process table (all should be zero).

    python benchmarks/concurrent_runs.py [--runs 50] [--parallel 2]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpibatch.executors.local import LocalExecutor  # noqa: E402
from mpibatch.spec import load_spec  # noqa: E402
from tests.faults.helpers import descendants, processes_in  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--parallel", type=int, default=2)
    args = ap.parse_args()
    spec = load_spec(REPO / "examples" / "hello" / "spec.yaml")
    shm0, tmp0 = set(os.listdir("/dev/shm")), set(os.listdir(tempfile.gettempdir()))
    with tempfile.TemporaryDirectory() as d:
        def one(k: int) -> tuple[bool, float, set[str]]:
            ex = LocalExecutor(runs_dir=Path(d) / f"runs-{k}")
            t0 = time.monotonic()
            r = ex.submit(spec).result()
            ok = r.succeeded and "sum of ranks = 15 (expected 15)" in r.primary.stdout
            return ok, time.monotonic() - t0, ex.transport.pid_namespaces if ex.transport else set()

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=args.parallel) as pool:
            results = list(pool.map(one, range(args.runs)))
        wall = time.monotonic() - t0
    namespaces = set().union(*(ns for *_, ns in results))
    time.sleep(1.0)
    left_procs = processes_in(namespaces, descendants(os.getpid()))
    left_shm = set(os.listdir("/dev/shm")) - shm0
    left_tmp = {n for n in set(os.listdir(tempfile.gettempdir())) - tmp0 if n.startswith(("mpibatch-", "prted", "mpich"))}
    for pid in left_procs:
        try:
            print("left:", pid, Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(), file=sys.stderr)
        except OSError:
            pass
    ok = sum(1 for r in results if r[0])
    print(f"| runs | at a time | succeeded | median run (s) | wall (s) | left in /dev/shm | left in {tempfile.gettempdir()} | processes left |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| {args.runs} | {args.parallel} | {ok} | {statistics.median(r[1] for r in results):.2f} | {wall:.1f} | "
          f"{len(left_shm)} | {len(left_tmp)} | {len(left_procs)} |")
    sys.exit(0 if ok == args.runs and not (left_shm or left_tmp or left_procs) else 1)


if __name__ == "__main__":
    main()
