"""`mpibatch logs`: an instance's stdout/stderr from the Batch emulator (storage copy, then the Batch file API in
byte ranges), `--follow` of a running task, and a rehearsal run's collected logs (local executor).

Real parts as in test_azure_interface.py: the azure-batch client over http, Azurite, real MPI ranks (MPICH) run
by the Batch emulator's nodes; the local executor's emulated nodes for the rehearsal.
"""
from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from mpibatch.errors import LogShrank, SpecError
from mpibatch.executors.collection import new_output_dir, read_collected_log
from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite
from tests.infra.signals import default_sigint
from tests.test_azure_executor import (  # noqa: F401 - fixtures
    MPIBATCH,
    assert_no_secrets,
    cli_env,
    hello_spec,
    require_local_nodes,
    run_cli,
    secrets_of,
    standin,
)

pytestmark = pytest.mark.azure

COORD = "echo coordinated-on-$AZ_BATCH_NODE_ID"


def test_logs_of_the_primary_and_a_subtask_from_storage_and_from_the_batch_file_api(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, coordination=COORD)
    env, secrets = cli_env(standin, azurite), secrets_of(standin, azurite)
    p = run_cli(["submit", str(spec), "--runs-dir", str(tmp_path / "runs")], env, *secrets)
    assert p.returncode == 0, p.stderr + "\n".join(standin.errors)
    no_storage = {k: v for k, v in env.items() if not k.startswith("AZURE_STORAGE_")}
    for how in (env, no_storage):  # the persisted copy in storage; the Batch file API alone
        p = run_cli(["logs", job_id, task_id], how, *secrets)
        assert p.returncode == 0, p.stderr
        assert "sum of ranks = 15 (expected 15)" in p.stdout
        whole = p.stdout
        p = run_cli(["logs", job_id, task_id, "--tail", "30"], how, *secrets)
        assert p.returncode == 0 and p.stdout == whole[-30:], p.stderr  # the last bytes only
        p = run_cli(["logs", job_id, task_id, "--instance", "2"], how, *secrets)
        assert p.returncode == 0, p.stderr
        assert "coordinated-on-" in p.stdout and "sum of ranks" not in p.stdout
        whole = p.stdout
        p = run_cli(["logs", job_id, task_id, "--instance", "2", "--tail", "5"], how, *secrets)
        assert p.returncode == 0 and p.stdout == whole[-5:], p.stderr  # a subtask's file on its node
        p = run_cli(["logs", job_id, task_id, "--instance", "1", "--stream", "stderr"], how, *secrets)
        assert p.returncode == 0, p.stderr


def test_a_missing_instance_is_bad_input(standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path)
    env, secrets = cli_env(standin, azurite), secrets_of(standin, azurite)
    assert run_cli(["submit", str(spec), "--runs-dir", str(tmp_path / "runs")], env, *secrets).returncode == 0
    p = run_cli(["logs", job_id, task_id, "--instance", "3"], env, *secrets)
    assert p.returncode == 2, p.stderr
    assert "--instance" in p.stderr and "3 instance(s)" in p.stderr and "Traceback" not in p.stderr
    p = run_cli(["logs", job_id, "no-such-task"], env, *secrets)
    assert p.returncode == 2 and "does not exist" in p.stderr


def _submit_and_follow(standin: BatchEmulator, azurite: Azurite, tmp_path: Path,
                       command: str) -> tuple[subprocess.Popen[str], str, str, dict[str, str]]:
    """Submit a 2-instance task without waiting, then start `mpibatch logs --follow` on it."""
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, command=command,
                                       mpi={"flavor": "mpich", "processes_per_node": 1})
    env, secrets = cli_env(standin, azurite), secrets_of(standin, azurite)
    assert run_cli(["submit", str(spec), "--no-wait"], env, *secrets).returncode == 0
    follower = subprocess.Popen([str(MPIBATCH), "logs", job_id, task_id, "--follow", "--interval", "0.3"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=default_sigint)
    return follower, job_id, task_id, env


def test_follow_prints_lines_of_a_running_task_before_it_completes(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    command = "sh -c 'echo first-line; sleep 8; echo last-line'"
    follower, job_id, task_id, env = _submit_and_follow(standin, azurite, tmp_path, command)
    seen: list[tuple[str, str | None]] = []  # (line, the task's state when the test read it)

    def read() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            t = standin.task(job_id, task_id)
            seen.append((line, t.state if t else None))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        rc = follower.wait(timeout=180)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    reader.join(10)
    err = follower.stderr.read() if follower.stderr else ""
    assert_no_secrets("".join(line for line, _ in seen) + err, *secrets_of(standin, azurite))
    assert rc == 0, err
    first = [state for line, state in seen if "first-line" in line]
    assert first and first[0] != "completed", seen  # printed while the task was still running
    assert any("last-line" in line for line, _ in seen), seen  # and followed to the end
    t = standin.task(job_id, task_id)
    assert t is not None and t.state == "completed"


def test_logs_of_a_rehearsal_run_on_the_local_executor(tmp_path: Path) -> None:
    require_local_nodes()
    spec, job_id, task_id = hello_spec(tmp_path, coordination=COORD)
    runs = tmp_path / "runs"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    p = subprocess.run([str(MPIBATCH), "run", str(spec), "--runs-dir", str(runs)], env=env, capture_output=True,
                       text=True, timeout=240)
    assert p.returncode == 0, p.stderr
    for follow in ([], ["--follow"]):  # --follow on a finished run just prints
        p = subprocess.run([str(MPIBATCH), "logs", job_id, task_id, "--executor", "local", "--runs-dir", str(runs),
                            *follow], env=env, capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stderr
        assert p.stdout == (runs / job_id / f"{task_id}.latest" / "0" / "stdout.txt").read_text()
        assert "sum of ranks = 15 (expected 15)" in p.stdout
    p = subprocess.run([str(MPIBATCH), "logs", job_id, task_id, "--runs-dir", str(runs), "--instance", "1"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "coordinated-on-" in p.stdout, p.stderr
    p = subprocess.run([str(MPIBATCH), "logs", job_id, task_id, "--runs-dir", str(runs), "--instance", "7"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no instance 7" in p.stderr, p.stderr


def test_read_collected_log_reads_the_newest_run_in_ranges(tmp_path: Path) -> None:
    first = new_output_dir(tmp_path, "job-1", "task-1")
    (first / "0").mkdir()
    (first / "0" / "stdout.txt").write_bytes(b"old run\n")
    second = new_output_dir(tmp_path, "job-1", "task-1")  # task-1.2, now task-1.latest
    (second / "0").mkdir()
    (second / "0" / "stdout.txt").write_bytes(b"0123456789")
    assert read_collected_log(tmp_path, "job-1", "task-1", 0, "stdout", 0, limit=4) == (b"0123", 4, False)
    assert read_collected_log(tmp_path, "job-1", "task-1", 0, "stdout", 8, limit=4) == (b"89", 10, True)
    with pytest.raises(LogShrank):  # past the end of the log: it was replaced by a shorter one
        read_collected_log(tmp_path, "job-1", "task-1", 0, "stdout", 11)
    with pytest.raises(SpecError, match="no instance 1"):
        read_collected_log(tmp_path, "job-1", "task-1", 1, "stdout")
    with pytest.raises(SpecError, match="no collected run"):
        read_collected_log(tmp_path, "job-1", "task-2", 0, "stdout")


def test_ctrl_c_while_following_exits_130_and_leaves_the_task_running(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    command = "sh -c 'echo first-line; sleep 6'"
    follower, job_id, task_id, env = _submit_and_follow(standin, azurite, tmp_path, command)
    try:
        assert follower.stdout is not None
        line = follower.stdout.readline()  # blocks until the task printed (bounded by the task's wall clock)
        assert "first-line" in line
        t = standin.task(job_id, task_id)
        assert t is not None and t.state != "completed"
        follower.send_signal(signal.SIGINT)
        rc = follower.wait(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    err = follower.stderr.read() if follower.stderr else ""
    assert rc == 130, err
    assert "rerun `mpibatch logs`" in err and "Traceback" not in err
    assert standin.wait_idle(60)
    t = standin.task(job_id, task_id)
    assert t is not None and t.state == "completed" and t.execution.get("exitCode") == 0


def test_a_storage_copy_now_shorter_than_the_offset_read_is_reported_as_shrunk(azurite: Azurite) -> None:
    """Issue 19 item 9 on the storage path: the tracker starts a live copy again when the node's log shrank
    (tests/test_live_tracking.py); a follower reading past the new end gets LogShrank, not silence."""
    import time

    from azure.storage.blob import BlobServiceClient

    from mpibatch.executors.azure.storage import Storage

    container, blob = f"shrink-{time.monotonic_ns()}", "t/$TaskLog/0/live/stdout.txt"
    c = BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
    c.upload_blob(blob, b"x" * 100)
    storage = Storage.from_env({"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    assert storage.read_range(container, blob, 90, 50) == b"x" * 10
    assert storage.read_range(container, blob, 100, 50) == b""  # at the end: nothing new yet
    c.upload_blob(blob, b"new\n", overwrite=True)
    with pytest.raises(LogShrank) as e:
        storage.read_range(container, blob, 100, 50)
    assert (e.value.offset, e.value.size) == (100, 4) and "stdout.txt shrank" in str(e.value)
