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
from mpibatch.launchers.protocol import Identity, InstanceRecord

from mpibatch.conventions import instance_output_blob, job_container_name, live_log_blob
from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite, azurite  # noqa: F401
from tests.test_azure_executor import cli_env, hello_spec, run_cli, secrets_of, standin  # noqa: F401

pytestmark = pytest.mark.azure

FAST = {"MPIBATCH_TRACK_INTERVAL": "0.5"}
SUBTASK = Identity(index=1, host="10.0.0.5", hostname="node-b", node_id="tvm-2", task_dir="", wd="")
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


def test_a_task_ended_before_any_output_was_saved_still_names_each_declared_output(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    """The tracker's first record (before any look at the outputs) carries the declared outputs, which
    collect reads from the record: a timeout before the first look still names each of them."""
    spec, job_id, task_id = hello_spec(
        tmp_path, instances=2, mpi=ONE_RANK_PER_NODE, environment={"MPIBATCH_TRACK_INTERVAL": "3600"},
        max_wall_clock="8s", command=["python3", "hangs.py"], common_files=[{"source": "hangs.py", "path": "hangs.py"}],
        outputs=[{"pattern": "result.dat", "kind": "TaskOutput"}])
    (spec.parent / "hangs.py").write_text(TIMES_OUT)
    env, secrets = cli_env(standin, azurite), secrets_of(standin, azurite)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], env, *secrets)
    result = json.loads(p.stdout)
    assert p.returncode != 0 and result["timed_out"], p.stderr
    assert "instance 1 TaskOutput 'result.dat': not saved" in "\n".join(result["missing"])
    record = InstanceRecord.from_json(_blob(azurite, job_id, f"{task_id}/$TaskLog/1/instance.json") or b"")
    assert not record.final and record.declared == [("TaskOutput", "result.dat")] and not record.files


def _node_url(azurite: Azurite, job_id: str) -> str:
    """A new job container, and the write-only SAS URL a node gets for it."""
    from mpibatch.executors.azure.storage import PERSIST_PERMISSIONS
    from tests.test_fileconventions import sas_url

    container = job_container_name(job_id)
    BlobServiceClient.from_connection_string(azurite.connection_string).create_container(container)
    return sas_url(azurite, container, PERSIST_PERMISSIONS)


def _node_client(azurite: Azurite, job_id: str):
    from mpibatch.launchers.blobio import ContainerClient

    return ContainerClient(_node_url(azurite, job_id))


def test_the_tracker_saves_an_output_only_once_it_stopped_changing(azurite: Azurite, tmp_path: Path) -> None:
    from mpibatch.launchers.track import OutputSaver

    job_id = f"track-{time.monotonic_ns()}"
    wd = tmp_path / "task" / "wd"
    wd.mkdir(parents=True)
    saver = OutputSaver(_node_client(azurite, job_id), "t", 1, str(wd), [("TaskOutput", "*.dat")], SUBTASK)
    blob = instance_output_blob("t", "TaskOutput", 1, "a.dat")
    (wd / "a.dat").write_bytes(b"v1")
    assert saver.look() == 0 and _blob(azurite, job_id, blob) is None  # first seen: maybe still being written
    assert saver.look() == 1 and _blob(azurite, job_id, blob) == b"v1"  # unchanged for a whole interval
    assert saver.look() == 0  # unchanged since it was saved: not sent again
    (wd / "a.dat").write_bytes(b"version 2")
    assert saver.look() == 0 and _blob(azurite, job_id, blob) == b"v1"
    assert saver.look() == 1 and _blob(azurite, job_id, blob) == b"version 2"
    info = json.loads(_blob(azurite, job_id, "t/$TaskLog/1/instance.json") or b"{}")
    assert info["final"] is False and list(info["files"]) == [blob] and info["files"][blob]["size"] == 9


def test_a_live_log_gets_only_what_was_appended(azurite: Azurite, tmp_path: Path) -> None:
    from mpibatch.launchers.track import AppendFollower

    job_id = f"track-{time.monotonic_ns()}"
    log = tmp_path / "stdout.txt"
    follower = AppendFollower(_node_client(azurite, job_id), str(log), "t/$TaskLog/1/live/stdout.txt")
    assert follower.flush() == 0 and _blob(azurite, job_id, follower.blob) is None  # no file: no blob yet
    log.write_bytes(b"one\n")
    assert follower.flush() == 4
    with open(log, "ab") as f:
        f.write(b"two\n")
    assert follower.flush() == 4 and follower.flush() == 0
    assert _blob(azurite, job_id, follower.blob) == b"one\ntwo\n"
    log.write_bytes(b"ONE\ntwo\nthree\n")  # rewritten in place, then grown: only the new bytes are sent
    assert follower.flush() == 6 and _blob(azurite, job_id, follower.blob) == b"one\ntwo\nthree\n"


def test_a_live_log_truncated_in_place_starts_again(azurite: Azurite, tmp_path: Path) -> None:
    """Issue 19 item 9: a log truncated (and rewritten) in place on the node. The live copy used to stop at the
    old length for good; it starts again with the new text, so `mpibatch logs --follow` sees it shrink."""
    from mpibatch.launchers.track import AppendFollower

    job_id = f"track-{time.monotonic_ns()}"
    log = tmp_path / "stdout.txt"
    follower = AppendFollower(_node_client(azurite, job_id), str(log), "t/$TaskLog/1/live/stdout.txt")
    log.write_bytes(b"a long first text\n")
    assert follower.flush() == 18
    log.write_bytes(b"new\n")
    assert follower.flush() == 4 and _blob(azurite, job_id, follower.blob) == b"new\n"
    with open(log, "ab") as f:
        f.write(b"more\n")
    assert follower.flush() == 5 and _blob(azurite, job_id, follower.blob) == b"new\nmore\n"


def test_the_persist_step_stops_the_tracker_and_skips_what_it_saved(azurite: Azurite, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from mpibatch.launchers import persist, track
    from mpibatch.launchers.blobio import ContainerClient

    job_id = f"track-{time.monotonic_ns()}"
    url = _node_url(azurite, job_id)
    client = ContainerClient(url)
    task_dir = tmp_path / "task"
    wd = task_dir / "wd"
    wd.mkdir(parents=True)
    (task_dir / "stdout.txt").write_bytes(b"out\n")
    (wd / "early.dat").write_bytes(b"done early")
    stop = threading.Event()
    tracker = threading.Thread(target=track.run, args=(client, "t", 1, str(task_dir), str(wd),
                                                      [("TaskOutput", "*.dat")], SUBTASK),
                               kwargs={"interval": 0.05, "stop": stop})
    tracker.start()
    early = instance_output_blob("t", "TaskOutput", 1, "early.dat")
    props = BlobServiceClient.from_connection_string(azurite.connection_string).get_blob_client(
        job_container_name(job_id), early)
    deadline = time.monotonic() + 20
    while _blob(azurite, job_id, early) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    tracker.join(20)
    assert not tracker.is_alive() and (task_dir / track.STATE_FILE).exists()
    saved_etag = props.get_blob_properties().etag
    (wd / "late.dat").write_bytes(b"written last")

    monkeypatch.chdir(wd)
    monkeypatch.setenv("MPIBATCH_PERSIST_URL", url)
    monkeypatch.setenv("AZ_BATCH_HOST_LIST", "10.0.0.4,10.0.0.5")
    monkeypatch.setenv("AZ_BATCH_MASTER_NODE", "10.0.0.4:6000")
    monkeypatch.setenv("PMI_RANK", "1")
    assert persist.main(["--task", "t", "--output", "TaskOutput=*.dat"]) == 0
    assert props.get_blob_properties().etag == saved_etag  # not sent again
    assert _blob(azurite, job_id, instance_output_blob("t", "TaskOutput", 1, "late.dat")) == b"written last"
    assert _blob(azurite, job_id, live_log_blob("t", 1, "stdout.txt")) == b"out\n"
    info = json.loads(_blob(azurite, job_id, "t/$TaskLog/1/instance.json") or b"{}")
    late = instance_output_blob("t", "TaskOutput", 1, "late.dat")
    assert info["final"] is True and set(info["files"]) >= {early, late}
