"""Every example runs as its README says: for real on the local or SSH executor where it can run here,
rendered and checked (render, check-pool, shellcheck) where it needs Azure or Windows."""
from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mpibatch.executors.local import LocalExecutor
from mpibatch.spec import load_spec

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
VENVS = REPO / ".venvs"


def venv_env(flavor: str) -> dict[str, str]:
    bindir = VENVS / flavor / "bin"
    if not (bindir / "python").exists():
        pytest.fail(f"{bindir} missing: run scripts/install-test-deps.sh")
    return dict(os.environ, PATH=f"{bindir}:{os.environ['PATH']}")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mpibatch.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def shellcheck(command_line: str) -> None:
    if shutil.which("shellcheck") is None:
        pytest.fail("shellcheck missing: run scripts/install-test-deps.sh")
    argv = shlex.split(command_line)
    assert argv[:2] == ["/bin/bash", "-c"], command_line
    proc = subprocess.run(["shellcheck", "-s", "bash", "-"], input=argv[2], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout


def rendered(spec: Path) -> dict:
    proc = cli("render", str(spec), "--output", "json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.mpi
def test_hello_main_job_through_the_cli(tmp_path: Path) -> None:
    proc = cli("run", str(EXAMPLES / "hello" / "spec.yaml"), "--runs-dir", str(tmp_path), env=venv_env("mpich"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in range(6):
        assert f"rank {rank}/6 host node-{rank // 2} node node-{rank // 2}" in proc.stdout
    assert "sum of ranks = 15 (expected 15)" in proc.stdout
    out = tmp_path / "hello" / "hello-mpi"
    assert (out / "1" / "rank-2.txt").read_text().startswith("rank 2/6 host node-1")  # from a subtask
    assert "coordination: 3/3 done" in proc.stderr  # progress


def _load_stitch():
    spec = importlib.util.spec_from_file_location("stitch", EXAMPLES / "heat-simulation" / "stitch.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.mpi
def test_heat_simulation_matches_a_serial_run(tmp_path: Path) -> None:
    env = venv_env("mpich")
    r = LocalExecutor(base_env=env, runs_dir=tmp_path / "runs").run(load_spec(EXAMPLES / "heat-simulation" / "spec.yaml"))
    assert r.succeeded, (r.failure, r.primary.stderr)
    assert [len(i.files) for i in r.instances] == [2, 2, 2]  # two bands from every node
    stitch = _load_stitch()
    png = tmp_path / "heat.png"
    subprocess.run([sys.executable, str(EXAMPLES / "heat-simulation" / "stitch.py"), r.output_dir, "-o", str(png)],
                   check=True, capture_output=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    parallel = stitch.stitch(r.output_dir)
    serial_dir = tmp_path / "serial"
    serial_dir.mkdir()
    subprocess.run(["mpicc", "-O2", "-o", "heat", str(EXAMPLES / "heat-simulation" / "heat.c")], cwd=serial_dir,
                   env=env, check=True)
    subprocess.run(["mpiexec", "-n", "1", "./heat", "160", "120", "4000"], cwd=serial_dir, env=env, check=True,
                   capture_output=True)
    serial = stitch.stitch(serial_dir)
    assert len(parallel) == len(serial) == 120 and len(parallel[0]) == 160
    worst = max(abs(a - b) for ra, rb in zip(parallel, serial) for a, b in zip(ra, rb))
    assert worst < 1e-12


@pytest.mark.mpi
def test_wrap_existing_code_runs_imb_unchanged(tmp_path: Path) -> None:
    r = LocalExecutor(base_env=venv_env("intelmpi"), runs_dir=tmp_path / "runs").run(
        load_spec(EXAMPLES / "wrap-existing-code" / "spec.yaml"))
    assert r.succeeded, (r.failure, r.primary.stderr)
    out = Path(r.primary.stdout_path).read_text()
    assert "Benchmarking PingPong" in out and "# #processes = 3" in out
    assert "#bytes #repetitions" in out


def test_latency_rdma_pool_renders_sriov_intel_mpi() -> None:
    spec = EXAMPLES / "latency-rdma-pool" / "spec.yaml"
    task = rendered(spec)["task"]
    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert env["I_MPI_FABRICS"] == "shm:ofi" and env["FI_PROVIDER"] == "mlx"
    assert "-ppn 1" in task["commandLine"] and task["multiInstanceSettings"]["numberOfInstances"] == 2
    assert cli("check-pool", str(spec)).returncode == 0
    shellcheck(task["commandLine"])
    shellcheck(task["multiInstanceSettings"]["coordinationCommandLine"])


def test_msmpi_windows_renders_smpd_and_ccp_nodes() -> None:
    spec = EXAMPLES / "msmpi-windows" / "spec.yaml"
    task = rendered(spec)["task"]
    assert task["multiInstanceSettings"]["coordinationCommandLine"] == 'cmd /c start cmd /c ""%MSMPI_BIN%\\smpd.exe"" -d'
    assert task["commandLine"] == ('cmd /c ""%MSMPI_BIN%\\mpiexec.exe"" -c 2 -wdir %AZ_BATCH_TASK_SHARED_DIR% '
                                   "MPIHelloWorld.exe")
    assert "userIdentity" not in task  # no Linux auto-user on Windows
    check = cli("check-pool", str(spec))
    assert check.returncode == 0 and check.stdout.startswith("clean"), check.stdout + check.stderr


def test_shared_dir_nfs_variant_renders_and_passes_shellcheck() -> None:
    spec = EXAMPLES / "shared-dir" / "spec-nfs.yaml"
    task = rendered(spec)["task"]
    coord = task["multiInstanceSettings"]["coordinationCommandLine"]
    assert "--shared-dir nfs" in coord and "tar -xzf" in coord
    shellcheck(coord)
    shellcheck(task["commandLine"])
    assert cli("check-pool", str(spec)).returncode == 0


@pytest.mark.cluster
def test_shared_dir_sshfs_on_the_ssh_cluster(tmp_path: Path, ssh_cluster3) -> None:
    from tests.infra.fixtures import require_cluster

    require_cluster(sshfs=True)
    from mpibatch.executors.ssh import SshExecutor

    c = ssh_cluster3
    ex = SshExecutor(c.hosts, user="root", key=str(c.client_key_path), known_hosts=str(c.known_hosts_path),
                     runs_dir=str(tmp_path / "runs"), remote_path_prepend=[str(VENVS / "mpich" / "bin")])
    r = ex.run(load_spec(EXAMPLES / "shared-dir" / "spec.yaml"))
    assert r.succeeded, (r.failure, r.primary.stderr, [i.stderr for i in r.instances])
    summary = Path(r.output_dir, "0", "summary.txt").read_text()
    for i, name in enumerate(c.names):
        assert f"rank {i} on {name}: 2 case files" in summary
    assert "same case everywhere: True" in r.primary.stdout
    assert Path(r.output_dir, "2", "result-2.txt").exists()  # collected from a subtask
    assert not c.wait_idle(timeout=10)
