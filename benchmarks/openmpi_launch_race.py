"""Open MPI 4's start-up race, counted: checkpointing tasks on 3 emulated nodes whose program is /bin/true, with
Debian's Open MPI 4.1 (through task.mpi.setup, as examples/lammps-restart) - four launches per task (restore,
tracker, program, persist) - several tasks at a time. Counts the tasks that fail, and those that fail with Open
MPI's "mkdir ... File exists" (docs/mpi-launch-rules.md#session-directories-one-base-per-launch).

    python benchmarks/openmpi_launch_race.py [--runs 25] [--parallel 3]
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
from mpibatch.spec import parse_spec  # noqa: E402

SETUP = REPO / "examples" / "lammps-restart" / "use-debian-mpi.sh"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=25, help="tasks per parallel stream")
    ap.add_argument("--parallel", type=int, default=3)
    args = ap.parse_args()
    if not Path("/usr/bin/orted").exists():
        sys.exit("needs Debian's Open MPI 4 (apt-get install openmpi-bin, or lammps)")
    spec = parse_spec({"job": {"id": "race"}, "task": {
        "id": "t", "instances": 3, "command": ["/bin/true"], "max_wall_clock": "2m",
        "mpi": {"flavor": "openmpi", "processes_per_node": 2, "setup": {"source": "use-debian-mpi.sh"}},
        "common_files": [{"source": str(SETUP), "path": "use-debian-mpi.sh"}],
        "checkpoint": {"pattern": "restart.x", "every": "1s"}}})
    env = dict(os.environ, PATH=f"{REPO / '.venvs' / 'openmpi' / 'bin'}:{os.environ['PATH']}")

    def stream(k: int) -> list[tuple[bool, bool, float]]:
        out = []
        for _ in range(args.runs):
            with tempfile.TemporaryDirectory() as d:
                t0 = time.monotonic()
                r = LocalExecutor(base_env=env, runs_dir=Path(d)).submit(spec).result()
                race = any("File exists" in inst.stderr for inst in r.instances)
                out.append((r.succeeded, race, time.monotonic() - t0))
        return out

    t0 = time.monotonic()
    with ThreadPoolExecutor(args.parallel) as pool:
        results = [x for s in pool.map(stream, range(args.parallel)) for x in s]
    failed = sum(not ok for ok, _, _ in results)
    races = sum(race for _, race, _ in results)
    print(f"{len(results)} tasks ({args.parallel} at a time) in {time.monotonic() - t0:.0f} s: {failed} failed, "
          f"{races} with 'mkdir ... File exists'; median {statistics.median(t for _, _, t in results):.1f} s a task")


if __name__ == "__main__":
    main()
