"""The Azure executor through the one executor interface: `mpibatch run --executor azure`, the latency
benchmark, fabric following the real pool, failures and interrupts as a user meets them.

Real parts as in test_azure_executor.py: the azure-batch client over http with Shared Key, Azurite, real MPI
ranks (MPICH) run by the Batch EMULATOR (mpibatch.emulator, in process: tests/infra/batch_emulator.py), which
follows the documented REST API - an emulator, not the Batch service.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from mpibatch.mpi import get_flavor
from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite
from tests.test_azure_executor import (  # noqa: F401 - fixtures
    MPIBATCH,
    POOL,
    _start_and_interrupt,
    assert_no_secrets,
    cli_env,
    hello_spec,
    run_cli,
    secrets_of,
    standin,
    store_only,
)

pytestmark = pytest.mark.azure


def test_run_with_the_azure_executor_submits_waits_and_collects(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path)
    p = run_cli(["run", str(spec), "--executor", "azure", "--runs-dir", str(tmp_path / "runs"), "--output", "json"],
                cli_env(standin, azurite), *secrets_of(standin, azurite))
    assert p.returncode == 0, p.stderr + "\n".join(standin.errors)
    result = json.loads(p.stdout)
    assert result["executor"] == "azure" and result["succeeded"] and result["missing"] == []
    assert [i["index"] for i in result["instances"]] == [0, 1, 2]
    assert "sum of ranks = 15 (expected 15)" in result["instances"][0]["stdout"]
    assert Path(result["output_dir"]) == tmp_path / "runs" / job_id / task_id
    assert "task: " in p.stderr and f"{task_id}: completed" in p.stderr  # the shared progress printer


def test_ctrl_c_in_run_with_the_azure_executor_leaves_the_task_running_and_says_how_to_resume(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, command="sleep 5",
                                       mpi={"flavor": "mpich", "processes_per_node": 1})
    rc, out, err = _start_and_interrupt(["run", str(spec), "--executor", "azure"], cli_env(standin, azurite),
                                        task_id, trigger=f"{task_id}: running")
    assert_no_secrets(out + err, *secrets_of(standin, azurite))
    assert rc == 130, err
    assert f"mpibatch status {job_id} {task_id}" in err and f"mpibatch collect {job_id} {task_id}" in err
    assert "Traceback" not in err
    assert standin.wait_idle(60)
    t = standin.task(job_id, task_id)
    assert t is not None and t.state == "completed" and t.execution.get("exitCode") == 0


def test_bench_latency_on_the_azure_executor(standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    p = run_cli(["bench", "latency", "--executor", "azure", "--pool", POOL, "--flavor", "mpich", "--sizes", "0:1K",
                 "--iterations", "50", "--output", "json", "--runs-dir", str(tmp_path / "runs")],
                cli_env(standin, azurite), *secrets_of(standin, azurite))
    assert p.returncode == 0, p.stderr + p.stdout + "\n".join(standin.errors)
    data = json.loads(p.stdout)
    assert data["ok"] and data["program"] == "mpi4py.bench pingpong", data
    assert len(data["pairs"]) == 1 and data["pairs"][0]["exit_code"] == 0
    assert data["samples"] and all(s["latency_us"] > 0 for s in data["samples"])
    assert len(set(data["pairs"][0]["rank_hosts"])) == 2  # one rank on each of two nodes


def test_fabric_auto_follows_the_pools_vm_size(store_only: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    """No pool.vm_size in the spec: the pool's real size (an InfiniBand SR-IOV one) decides the fabric."""
    store_only.add_pool("hb-pool", nodes=3, vm_size="Standard_HB120rs_v3")
    spec, job_id, task_id = hello_spec(tmp_path, pool="hb-pool")
    p = run_cli(["submit", str(spec), "--no-wait"], cli_env(store_only, azurite), *secrets_of(store_only, azurite))
    assert p.returncode == 0, p.stderr
    assert "fabric auto: sriov, from the pool's VM size Standard_HB120rs_v3" in p.stderr
    assert "carries no fabric settings" not in p.stderr
    task = store_only.task(job_id, task_id)
    assert task is not None
    env = {e["name"]: e.get("value") for e in task.body.get("environmentSettings") or []}
    for name, value in get_flavor("mpich").fabric_env("sriov").items():
        assert env.get(name) == value, (name, env)


def test_fabric_stays_as_the_spec_says_when_it_names_a_size(store_only: BatchEmulator, azurite: Azurite,
                                                             tmp_path: Path) -> None:
    store_only.add_pool("d-pool", nodes=3, vm_size="Standard_D4s_v3")
    spec, job_id, task_id = hello_spec(tmp_path, pool="d-pool", mpi={"flavor": "mpich", "fabric": "tcp"})
    p = run_cli(["submit", str(spec), "--no-wait"], cli_env(store_only, azurite), *secrets_of(store_only, azurite))
    assert p.returncode == 0, p.stderr
    assert "fabric auto" not in p.stderr
    task = store_only.task(job_id, task_id)
    assert task is not None
    names = {e["name"] for e in task.body.get("environmentSettings") or []}
    assert not set(get_flavor("mpich").fabric_env("sriov")) & names


def test_collect_of_a_task_not_ended_is_one_clear_line(store_only: BatchEmulator, azurite: Azurite,
                                                       tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path)
    env = cli_env(store_only, azurite)
    assert run_cli(["submit", str(spec), "--no-wait"], env, *secrets_of(store_only, azurite)).returncode == 0
    p = run_cli(["collect", job_id, task_id, "--to", str(tmp_path / "out")], env, *secrets_of(store_only, azurite))
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr and "ResourceExistsError" not in p.stderr
    errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"task {job_id}/{task_id} is active" in errors[0], p.stderr
    assert f"mpibatch status {job_id} {task_id} --wait" in errors[0]
    assert not (tmp_path / "out").exists()  # nothing half-done


def test_coordination_failure_on_a_subtask_says_coordination_and_numbers_the_instance_once(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, instances=2,
                                       coordination='test "$AZ_BATCH_IS_CURRENT_NODE_MASTER" = true',
                                       mpi={"flavor": "mpich", "processes_per_node": 1})
    env = cli_env(standin, azurite)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], env,
                *secrets_of(standin, azurite))
    assert p.returncode == 1, p.stderr
    result = json.loads(p.stdout)
    failure = result["failure"]
    assert failure["phase"] == "coordination", failure
    assert failure["instance"] == 1
    assert "instance 1 (subtask " in failure["reason"]
    row = next(i for i in result["instances"] if i["index"] == failure["instance"])
    assert row["coordination_exit_code"] not in (0, None)
    # the human table says the same
    t = run_cli(["status", job_id, task_id], env, *secrets_of(standin, azurite))
    assert "FAILED in coordination (instance 1): the coordination command exited with code" in t.stdout, t.stdout
    assert "instance 1 (subtask " in t.stdout


def test_mpibatchs_own_coordination_step_failing_on_the_primary_is_phase_coordination(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Issue 19 item 9b: no mpiexec on the nodes' PATH makes coordinate.sh fail on the primary (the subtasks
    do not need the launcher): `run -o json` and `status` say coordination, not running."""
    # The system's programs without any MPI launcher (this machine may have Debian's Open MPI, for LAMMPS), in
    # a directory the nodes see and their own user can enter (as root the emulator runs tasks as that user;
    # tmp_path is 0700, and a node's /tmp is its own).
    bindir = Path(tempfile.mkdtemp(prefix="mpibatch-nompi-", dir="/run"))
    bindir.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(bindir, ignore_errors=True))
    for name in os.listdir("/usr/bin"):
        if not name.startswith(("mpi", "orte", "prte", "ompi", "hydra")):
            (bindir / name).symlink_to(f"/usr/bin/{name}")
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, environment={"PATH": str(bindir)},
                                       mpi={"flavor": "mpich", "processes_per_node": 1})
    env = cli_env(standin, azurite)
    p = run_cli(["run", str(spec), "--executor", "azure", "--output", "json", "--runs-dir", str(tmp_path / "runs")],
                env, *secrets_of(standin, azurite))
    assert p.returncode == 1, p.stderr
    failure = json.loads(p.stdout)["failure"]
    assert failure["phase"] == "coordination" and failure["instance"] == 0, failure
    assert "instance 0" in failure["reason"], failure
    t = run_cli(["status", job_id, task_id], env, *secrets_of(standin, azurite))
    assert "FAILED in coordination (instance 0)" in t.stdout, t.stdout


def test_ctrl_c_while_collecting_exits_130_and_says_how_to_resume(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, mpi={"flavor": "mpich", "processes_per_node": 1})
    env = cli_env(standin, azurite)
    assert run_cli(["submit", str(spec), "--no-wait"], env, *secrets_of(standin, azurite)).returncode == 0
    assert standin.wait_idle(120)
    # The primary's log downloads are throttled with a long Retry-After: collect is busy when Ctrl-C comes.
    standin.throttle(5, method="GET", path=r"/files/", retry_after=30)
    rc, out, err = _start_and_interrupt(["collect", job_id, task_id, "--to", str(tmp_path / "out")], env, task_id,
                                        trigger="mpibatch: collecting")
    assert_no_secrets(out + err, *secrets_of(standin, azurite))
    assert rc == 130, err
    assert f"mpibatch collect {job_id} {task_id}" in err
    assert "Aborted" not in err and "Traceback" not in err
    assert not list((tmp_path / "out").rglob("*.part"))


def test_importing_the_cli_does_not_import_the_azure_sdk() -> None:
    code = ("import sys, mpibatch.cli, mpibatch.executors; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'azure'))")
    p = subprocess.run([str(MPIBATCH.parent / "python"), "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stdout.strip() == "[]", p.stdout + p.stderr
