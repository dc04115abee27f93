"""mpibatch's own Azure commands against a real `mpibatch emulate` subprocess: `submit`, `status`,
`collect`, and `bench latency --executor azure`, end to end (real MPI ranks, real Azurite started by the
emulator). And `--state-dir` restart semantics: a task that was running when the emulator stopped is
reported failed, with the reason, after the restart; pools and jobs are still there."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import azurite_missing, mpi_env, require

pytestmark = [pytest.mark.azure, pytest.mark.mpi]
REPO = Path(__file__).resolve().parents[1]
MPIBATCH = Path(sys.executable).parent / "mpibatch"


def cli(args: list[str], emu: EmulatorProcess, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    p = subprocess.run([str(MPIBATCH), *args], env={**env, **emu.exports}, capture_output=True, text=True,
                       timeout=timeout)
    assert emu.key not in p.stdout + p.stderr
    return p


def hello(tmp_path: Path, job_id: str, **task: object) -> Path:
    d = tmp_path / job_id
    shutil.copytree(REPO / "examples" / "hello", d)
    data = yaml.safe_load((d / "spec.yaml").read_text())
    data["job"].update({"id": job_id, "pool": "mpipool"})
    data["task"].update(task)
    (d / "spec.yaml").write_text(yaml.safe_dump(data))
    return d / "spec.yaml"


def start(state: Path) -> EmulatorProcess:
    return EmulatorProcess(state, pools=("mpipool:3",), env=mpi_env("mpich")).start()


def test_submit_status_and_collect(tmp_path: Path) -> None:
    require(azurite_missing(), "Azurite")
    emu = start(tmp_path / "state")
    try:
        spec = hello(tmp_path, "hello-emu")
        p = cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], emu)
        assert p.returncode == 0, p.stdout + p.stderr + "\n".join(emu.log)
        result = json.loads(p.stdout)
        assert result["state"] == "completed" and result["exit_code"] == 0 and result["missing"] == []
        assert [i["index"] for i in result["instances"]] == [0, 1, 2]
        p = cli(["status", "hello-emu", "hello-mpi", "--output", "json"], emu)
        assert p.returncode == 0 and json.loads(p.stdout)["state"] == "completed", p.stderr
        p = cli(["collect", "hello-emu", "hello-mpi", "--to", str(tmp_path / "again")], emu)
        assert p.returncode == 0, p.stdout + p.stderr
        got = tmp_path / "again" / "hello-emu" / "hello-mpi"
        rank_files = sorted(f.name for f in got.rglob("rank-*.txt"))
        assert len(rank_files) == 6, sorted(got.rglob("*"))  # 3 nodes x 2 ranks: primary and both subtasks
        assert all((got / str(i) / "stdout.txt").exists() for i in range(3)), sorted(got.rglob("*"))
    finally:
        emu.stop()


def test_state_dir_restart_reports_running_tasks_failed(tmp_path: Path) -> None:
    require(azurite_missing(), "Azurite")
    state = tmp_path / "state"
    emu = start(state)
    try:
        spec = hello(tmp_path, "long-emu", command="sleep 120", mpi={"flavor": "mpich", "processes_per_node": 1},
                     instances=2)
        p = cli(["submit", str(spec), "--no-wait"], emu)
        assert p.returncode == 0, p.stderr
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            s = json.loads(cli(["status", "long-emu", "hello-mpi", "--output", "json"], emu).stdout)
            if s["state"] == "running":
                break
            time.sleep(0.2)
        assert s["state"] == "running", s
        account, key = emu.account, emu.key
    finally:
        emu.stop()  # Ctrl-C: every node process ends (checked), the state is saved
    emu = start(state)
    try:
        assert (emu.account, emu.key) == (account, key)  # generated once per state dir
        # (a clean Ctrl-C completes it as failed on the way down; a killed emulator does so on restart)
        p = cli(["status", "long-emu", "hello-mpi", "--output", "json"], emu)
        s = json.loads(p.stdout)
        assert s["state"] == "failed", s
        assert "stopped while this task was running" in json.dumps(s["failure"]), s
        p = cli(["job", "terminate", "long-emu"], emu)
        assert p.returncode == 0, p.stderr
    finally:
        emu.stop()


def test_bench_latency_with_the_azure_executor(tmp_path: Path) -> None:
    """The latency benchmark as a user runs it on Batch, here against `mpibatch emulate`: real ping-pong
    between two emulated nodes."""
    require(azurite_missing(), "Azurite")
    emu = start(tmp_path / "state")
    try:
        p = cli(["bench", "latency", "--executor", "azure", "--pool", "mpipool", "--flavor", "mpich", "--sizes",
                 "0:1K", "--iterations", "50", "--output", "json", "--runs-dir", str(tmp_path / "runs")], emu,
                timeout=300)
        assert p.returncode == 0, p.stdout + p.stderr + "\n".join(emu.log[-30:])
        data = json.loads(p.stdout)
        assert data["ok"] and data["pairs"][0]["exit_code"] == 0, data
        assert data["samples"] and all(s["latency_us"] > 0 for s in data["samples"])
        assert len(set(data["pairs"][0]["rank_hosts"])) == 2  # one rank on each of two nodes
        # ...which are one machine (the emulator's nodes share this kernel): no fabric is named
        assert data["pairs"][0]["one_machine"] and data["verdict"]["fabric"] == "one machine", data["verdict"]
        assert data["verdict"]["different_hosts"] is False and data["verdict"]["names_differ"] is True
    finally:
        emu.stop()


def test_storage_that_fails_to_start_ends_the_emulator_with_the_reason(tmp_path: Path) -> None:
    # An Azurite that dies at once: the emulator must say so and exit, not wait for a server it never ran.
    broken = tmp_path / "azurite-blob"
    broken.write_text("#!/bin/sh\necho 'azurite: broken on purpose' >&2\nexit 1\n")
    broken.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    p = subprocess.run([str(MPIBATCH), "emulate", "--port", "0", "--state-dir", str(tmp_path / "state")],
                       env={**env, "MPIBATCH_AZURITE_BIN": str(broken)}, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, p.stderr
    assert "Azurite did not start: azurite: broken on purpose" in p.stderr and "Traceback" not in p.stderr
    assert "export AZURE_BATCH_ENDPOINT" not in p.stdout  # nothing to paste: it never listened
