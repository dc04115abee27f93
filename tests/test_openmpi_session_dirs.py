"""Open MPI 4 (Debian's 4.1, as the LAMMPS example uses it) with a base of its own for every launch: the
launcher's and its daemons' session directories on every node are under that launch's base, and the primary's
bases are gone when the task command ends. (That launches starting and ending together then never fail:
benchmarks/openmpi_launch_race.py, numbers in docs/mpi-launch-rules.md.)"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from mpibatch.executors.local import LocalExecutor
from mpibatch.spec import parse_spec
from tests.infra.fixtures import mpi_env, require

SETUP = Path(__file__).resolve().parents[1] / "examples" / "lammps-restart" / "use-debian-mpi.sh"
# Every rank: its node, the base its launch got, and what is in that base on its node (Open MPI's directory).
PROGRAM = 'echo "rank-on $(hostname) base=$OMPI_MCA_orte_tmpdir_base has=$(ls "$OMPI_MCA_orte_tmpdir_base")"'


def spec(tmp_path: Path):
    task = {"id": "sessions", "instances": 3, "command": ["/bin/sh", "-c", PROGRAM],
            "mpi": {"flavor": "openmpi", "processes_per_node": 1, "setup": {"source": "use-debian-mpi.sh"}},
            "common_files": [{"source": str(SETUP), "path": "use-debian-mpi.sh"}], "max_wall_clock": "2m"}
    return parse_spec({"job": {"id": "ompi4"}, "task": task}, tmp_path)


@pytest.mark.mpi
def test_every_launch_has_its_own_session_directory_base_on_every_node(tmp_path: Path) -> None:
    require([p for p in ("/usr/bin/mpirun", "/usr/bin/orted") if not Path(p).exists()],
            "Debian's Open MPI 4 (apt-get install openmpi-bin, or lammps)")
    ex = LocalExecutor(base_env=mpi_env("openmpi"), runs_dir=tmp_path / "runs", keep_nodes=True)
    result = ex.submit(spec(tmp_path)).result()
    assert result.succeeded, (result.failure, [i.stderr[-1500:] for i in result.instances])
    lines = re.findall(r"^rank-on (\S+) base=(\S+) has=(.*)$", result.instances[0].stdout, re.MULTILINE)
    assert sorted(host for host, _, _ in lines) == ["node-0", "node-1", "node-2"], result.instances[0].stdout
    [base] = {b for _, b, _ in lines}  # one launch, one base, the same path on every node
    assert base.endswith("/app"), base
    for host, _, has in lines:  # Open MPI 4's daemon of that node made its directory there
        assert re.fullmatch(rf"ompi\.{host}\.\d+", has), (host, has)
    # The primary removed its launches' bases; the subtasks' daemons emptied theirs.
    nodes = Path(result.nodes_dir or "")
    left = {n: sorted(p.relative_to(nodes / n / "tmp").as_posix() for p in (nodes / n / "tmp").rglob("*"))
            for n in ("0", "1", "2")}
    assert left["0"] == [], left
    launches = Path(base).parent.name
    assert left["1"] == left["2"] == [launches, f"{launches}/app"], left

