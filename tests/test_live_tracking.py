"""While a task runs on Azure: every instance's logs are kept live in storage, subtask outputs are saved as
they are completed, and what a timeout keeps from reaching the persist step is named per instance.

Real parts as in test_azure_outputs.py: the Batch emulator runs the rendered task on emulated nodes with real
MPICH ranks, the node-side tracker (launchers/track.py) writes to a real Azurite through the write-only SAS.
MPIBATCH_TRACK_INTERVAL (a task environment setting) shortens the tracker's interval to 0.5 s here.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient

from mpibatch.conventions import instance_output_blob, job_container_name, live_log_blob
from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite, azurite  # noqa: F401
from tests.test_azure_executor import cli_env, hello_spec, run_cli, secrets_of, standin  # noqa: F401

pytestmark = pytest.mark.azure

FAST = {"MPIBATCH_TRACK_INTERVAL": "0.5"}
ONE_RANK_PER_NODE = {"flavor": "mpich", "processes_per_node": 1}


def _blob(azurite: Azurite, job_id: str, name: str) -> bytes | None:
    from azure.core.exceptions import ResourceNotFoundError

    client = BlobServiceClient.from_connection_string(azurite.connection_string)
    try:
        return client.get_blob_client(job_container_name(job_id), name).download_blob().readall()
    except ResourceNotFoundError:
        return None


def test_logs_reach_storage_while_the_task_runs(standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    # The primary's stdout gets its first line, then nothing for 8 s, then the last one.
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, mpi=ONE_RANK_PER_NODE, environment=FAST,
                                       command="sh -c 'echo first-line; sleep 8; echo last-line'")
    env, secrets = cli_env(standin, azurite), secrets_of(standin, azurite)
    assert run_cli(["submit", str(spec), "--no-wait"], env, *secrets).returncode == 0
    live = live_log_blob(task_id, 0, "stdout.txt")
    seen = b""
    deadline = time.monotonic() + 60
    while b"first-line" not in seen and time.monotonic() < deadline:
        time.sleep(0.2)
        seen = _blob(azurite, job_id, live) or b""
    t = standin.task(job_id, task_id)
    assert b"first-line" in seen and b"last-line" not in seen, seen
    assert t is not None and t.state == "running"  # the live copy was there before the task ended
    assert _blob(azurite, job_id, instance_output_blob(task_id, "TaskLog", 0, "stdout.txt")) is None

    assert standin.wait_idle(90)
    final = _blob(azurite, job_id, instance_output_blob(task_id, "TaskLog", 0, "stdout.txt"))
    assert final is not None and b"last-line" in final
    assert _blob(azurite, job_id, live) == final  # the tracker's last flush: every byte
    p = run_cli(["logs", job_id, task_id], env, *secrets)
    assert p.returncode == 0 and p.stdout.splitlines()[-1] == "last-line", p.stderr


TIMES_OUT = """
import os, time
if os.environ["PMI_RANK"] == "1":  # the subtask's node: one finished result, then hang
    open("result.dat", "w").write("result of the subtask\\n")
time.sleep(120)
"""


def test_a_timeout_keeps_the_subtask_outputs_saved_while_it_ran(standin: BatchEmulator, azurite: Azurite,
                                                                  tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(
        tmp_path, instances=2, mpi=ONE_RANK_PER_NODE, environment=FAST, max_wall_clock="14s",
        command=["python3", "hangs.py"], common_files=[{"source": "hangs.py", "path": "hangs.py"}],
        outputs=[{"pattern": "result.dat", "kind": "TaskOutput"}, {"pattern": "never-*.dat", "kind": "TaskOutput"}])
    (spec.parent / "hangs.py").write_text(TIMES_OUT)
    env, secrets = cli_env(standin, azurite), secrets_of(standin, azurite)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], env, *secrets)
    result = json.loads(p.stdout)
    assert p.returncode != 0 and result["timed_out"], p.stderr

    sub = next(i for i in result["instances"] if i["index"] == 1)
    assert "result.dat" in sub["files"]
    assert (Path(sub["output_dir"]) / "result.dat").read_text() == "result of the subtask\n"
    missing = "\n".join(result["missing"])
    assert "instance 1 TaskOutput 'result.dat'" in missing and "1 file(s) were saved while the task ran" in missing
    assert "instance 1 TaskOutput 'never-*.dat': not saved" in missing
    assert "max wall clock" in missing
    info = json.loads(_blob(azurite, job_id, f"{task_id}/$TaskLog/1/instance.json") or b"{}")
    assert info["final"] is False and info["declared"] == [["TaskOutput", "result.dat"], ["TaskOutput", "never-*.dat"]]
