"""The azure-batch 14.2 SDK (BatchServiceClient, TaskAddParameter, task.add_collection,
task.list_subtasks, file.get_from_compute_node - the API of the official samples) runs the same workflow
as tests/test_emulator_sdk15.py from its own venv (.venvs/batch14, made by scripts/install-test-deps.sh),
against a real `mpibatch emulate` subprocess. It sends api-version 2024-02-01.19.0, 15.1 sends 2025-06-01."""
from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import VENVS, azurite_missing, mpi_env, require

pytestmark = [pytest.mark.azure, pytest.mark.mpi]
BATCH14 = VENVS / "batch14" / "bin" / "python"
SCRIPT = Path(__file__).parent / "clients" / "batch14_workflow.py"


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    require(azurite_missing(), "Azurite")
    if not BATCH14.exists():
        pytest.fail(f"{BATCH14} missing: run scripts/install-test-deps.sh", pytrace=False)
    emu = EmulatorProcess(tmp_path / "state", env=mpi_env("mpich")).start()
    try:
        yield emu
    finally:
        emu.stop()


def test_sdk14_full_workflow(emulator: EmulatorProcess) -> None:
    p = subprocess.run([str(BATCH14), str(SCRIPT)], env={"PATH": "/usr/bin:/bin", **emulator.exports},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr + "\n--- emulator log:\n" + "\n".join(emulator.log)
    seen = json.loads(p.stdout)
    assert seen["start_exit"] == [0, 0, 0]
    assert seen["added"] == [f"t{i:02d}" for i in range(20)]
    assert seen["exit_codes"] == [0]
    assert seen["outputs"] == [f"t{i:02d}/out.txt" for i in range(20)]
    assert seen["t07"] == "hello from storage\ntask 7\n"  # autoStorageContainerName really downloaded
    assert seen["mpi_exit"] == 0
    # mpiexec reached every emulated node (the primary's stdout also holds its coordination line)
    assert sorted(line for line in seen["mpi_stdout"].splitlines() if line.startswith("node-")) == [
        "node-0", "node-1", "node-2"]
    assert seen["subtasks"] == [1, 2] and seen["sub_exit"] == [0, 0]
    assert seen["sub_stdout"].startswith("coordination on node-")
    assert seen["release_exit"] == [0] and seen["prep_exit"] == [0]
    assert not any(emulator.key in line for line in emulator.log)  # the key is printed once, on stdout


SCHEDULES = Path(__file__).parent / "clients" / "batch14_schedules.py"


def test_sdk14_job_schedule_with_auto_pool_and_job_manager(tmp_path: Path) -> None:
    """The job schedule flow of the samples on azure-batch 14.2 (no storage, no MPI needed)."""
    if not BATCH14.exists():
        pytest.fail(f"{BATCH14} missing: run scripts/install-test-deps.sh", pytrace=False)
    emu = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        p = subprocess.run([str(BATCH14), str(SCHEDULES)], env={"PATH": "/usr/bin:/bin", **emu.exports},
                           capture_output=True, text=True, timeout=120)
    finally:
        emu.stop()
    assert p.returncode == 0, p.stderr + "\n--- emulator log:\n" + "\n".join(emu.log)
    seen = json.loads(p.stdout)
    assert seen["image"] == ["batch.node.ubuntu 22.04", "22_04-lts"]
    assert seen["exists"] is True and seen["jobs"] == ["sched14:job-1", "sched14:job-2"]
    assert seen["pool"].startswith("s14_") and seen["reason"] == "JMComplete"
    assert seen["manager_stdout"] == "sched14:job-1\n" and seen["recent"] is True
    assert seen["metadata"] == [["owner", "sdk14"]] and seen["disabled"] is True
    assert seen["stopped"] is True and seen["pool_gone"] is True and seen["jobs_left"] == []
