"""`--output json`: every exit (0, 1, 2, 3, 130) prints exactly one JSON object on stdout - a result, or
{code, message, field} - through the installed console script in real processes."""
from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite, mpi_env
from tests.test_azure_executor import (  # noqa: F401 - fixtures
    _start_and_interrupt,
    cli_env,
    hello_spec,
    require_local_nodes,
    standin,
)

MPIBATCH = Path(sys.executable).parent / "mpibatch"
HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello"


def one_object(stdout: str) -> dict:
    """stdout is exactly one JSON object (json.loads refuses trailing data)."""
    data = json.loads(stdout)
    assert isinstance(data, dict), stdout
    return data


def mpibatch(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(MPIBATCH), *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd)


def test_exit_2_spec_errors_are_one_object_with_every_field(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text("job: {id: j}\ntask: {id: t, mpi: {flavor: mpch}, command: [x], bogus: 1}\n")
    p = mpibatch("render", str(spec), "-o", "json")
    assert p.returncode == 2, p.stderr
    data = one_object(p.stdout)
    assert data["code"] == 2 and data["message"] == "2 problems in the input"
    assert {e["field"] for e in data["errors"]} == {"task.bogus", "task.mpi.flavor"}
    assert "did you mean 'mpich'" in json.dumps(data)
    assert "problems in the input" in p.stderr  # people still read stderr


@pytest.mark.parametrize("args", [["run", "no-such-spec.yaml", "-o", "json"],
                                  ["run", "--no-such-option", "x.yaml", "--output=json"],
                                  ["render", "-ojson"]])
def test_exit_2_bad_input_and_usage_errors_are_one_object(args: list[str], tmp_path: Path) -> None:
    p = mpibatch(*args, cwd=tmp_path)
    assert p.returncode == 2, p.stderr
    data = one_object(p.stdout)
    assert data["code"] == 2 and data["message"], data
    if args[1] == "no-such-spec.yaml":
        assert data["field"] == "no-such-spec.yaml" and "no such file" in data["message"]


def test_exit_3_infrastructure_error_is_one_object(tmp_path: Path) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        env.update(AZURE_BATCH_ENDPOINT=f"http://127.0.0.1:{port}", AZURE_BATCH_ACCOUNT="acct",
                   AZURE_BATCH_ACCESS_KEY=base64.b64encode(b"not-a-real-key").decode())
        p = mpibatch("status", "job-1", "task-1", "-o", "json", env=env)
    assert p.returncode == 3, p.stderr
    data = one_object(p.stdout)
    assert data["code"] == 3 and "unreachable" in data["message"]
    assert env["AZURE_BATCH_ACCESS_KEY"] not in p.stdout + p.stderr


@pytest.mark.mpi
def test_exit_0_and_1_are_the_result_object(tmp_path: Path) -> None:
    require_local_nodes()
    env = mpi_env("mpich")
    ok = mpibatch("run", str(HELLO / "spec.yaml"), "--runs-dir", str(tmp_path / "runs"), "-o", "json", env=env)
    assert ok.returncode == 0, ok.stderr
    assert one_object(ok.stdout)["succeeded"] is True
    spec = tmp_path / "fail.yaml"
    spec.write_text("job: {id: j}\ntask: {id: t, instances: 2, mpi: mpich, command: 'exit 7'}\n")
    bad = mpibatch("run", str(spec), "--runs-dir", str(tmp_path / "runs"), "-o", "json", env=env)
    assert bad.returncode == 1, bad.stderr
    data = one_object(bad.stdout)
    assert data["succeeded"] is False and data["exit_code"] == 7, data


@pytest.mark.azure
def test_exit_130_interrupted_wait_is_one_object(standin: BatchEmulator, azurite: Azurite,  # noqa: F811
                                                 tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, command="sleep 5",
                                       mpi={"flavor": "mpich", "processes_per_node": 1})
    rc, out, err = _start_and_interrupt(["submit", str(spec), "-o", "json"], cli_env(standin, azurite), task_id)
    assert rc == 130, err
    data = one_object(out)
    assert data["code"] == 130 and f"mpibatch status {job_id} {task_id}" in data["message"]
    assert standin.wait_idle(60)
