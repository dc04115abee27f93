"""`kill -9` of `mpibatch emulate` (issue 19 item 10, issue 24 item 5) and the choice of its storage
(issue 22 item 9): nothing it started outlives it - ordinary, start and preparation tasks with children
that left their process group, and the Azurite it started - and a restart on the same state dir reports
what was running truthfully and gets its storage back on the same port."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.infra import rawbatch
from tests.infra.emulator import EmulatorProcess, processes_mentioning
from tests.infra.emulator import wait_for as shared_wait_for
from tests.infra.fixtures import Azurite, azurite_missing, require

pytestmark = pytest.mark.azure
MPIBATCH = Path(sys.executable).parent / "mpibatch"


def call(e: EmulatorProcess, method: str, path: str, value: Any = None) -> rawbatch.Answer:
    if value is None:
        return rawbatch.request(e.endpoint, e.account, e.key, method, path)
    return rawbatch.send_json(e.endpoint, e.account, e.key, method, path, value)


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def wait_until(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    return shared_wait_for(what, check, timeout)


def kill_9(e: EmulatorProcess) -> None:
    assert e.proc is not None
    e.proc.send_signal(signal.SIGKILL)
    e.proc.wait(10)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- item 19.10
ESCAPES = "/bin/bash -c 'setsid sleep {n} & sleep {n} & sleep {n}'"  # one child leaves the session


def test_item10_every_task_process_ends_with_a_killed_emulator(tmp_path: Path) -> None:
    state = tmp_path / "state"
    e = EmulatorProcess(state, storage="none", pools=("a:1", "b:1")).start()
    try:
        a = call(e, "POST", "/pools", {"id": "s", "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 1,
                                       "startTask": {"commandLine": ESCAPES.format(n=300), "waitForSuccess": False}})
        assert a.status == 201, a
        a = call(e, "POST", "/jobs", {"id": "prep", "poolInfo": {"poolId": "b"}, "jobPreparationTask": {
            "commandLine": ESCAPES.format(n=301)}})
        assert a.status == 201, a
        assert call(e, "POST", "/jobs/prep/tasks", {"id": "held", "commandLine": "/bin/true"}).status == 201
        assert call(e, "POST", "/jobs", {"id": "k", "poolInfo": {"poolId": "a"}}).status == 201
        assert call(e, "POST", "/jobs/k/tasks", {"id": "t", "commandLine": ESCAPES.format(n=302)}).status == 201

        def sleeping() -> dict[int, list[int]]:
            found: dict[int, list[int]] = {300: [], 301: [], 302: []}
            for pid in processes_mentioning(str(state)):
                for n in found:
                    if cmdline(pid).strip() == f"sleep {n}":
                        found[n].append(pid)
            return found if all(len(v) == 3 for v in found.values()) else {}

        pids = wait_until("start, preparation and ordinary tasks with their children", sleeping)
        assert call(e, "GET", "/jobs/k/tasks/t").json()["state"] == "running"
        kill_9(e)
        left = wait_until("no process of the killed emulator", lambda: not [
            p for v in pids.values() for p in v if cmdline(p)] or None, timeout=15) and []
        assert not left
        assert not processes_mentioning(str(state))
    finally:
        e.stop(check=False)
    e = EmulatorProcess(state, storage="none", pools=("a:1", "b:1")).start()
    try:
        t = call(e, "GET", "/jobs/k/tasks/t").json()
        assert t["state"] == "completed", t
        assert t["executionInfo"]["failureInfo"]["code"] == "EmulatorRestarted", t
        assert "processes were ended" in t["executionInfo"]["failureInfo"]["message"]
    finally:
        call(e, "DELETE", "/pools/s")
        e.stop()  # nothing of the second run is left either (checked by stop)


def test_item10_a_task_ended_by_a_signal_reports_128_plus_the_signal(tmp_path: Path) -> None:
    e = EmulatorProcess(tmp_path / "state", storage="none", pools=("a:1",)).start()
    try:
        assert call(e, "POST", "/jobs", {"id": "k", "poolInfo": {"poolId": "a"}}).status == 201
        assert call(e, "POST", "/jobs/k/tasks", {"id": "t", "commandLine": "/bin/bash -c 'kill -9 $$'"}).status == 201
        t = wait_until("the task to complete", lambda: (lambda x: x if x["state"] == "completed" else None)(
            call(e, "GET", "/jobs/k/tasks/t").json()))
        assert t["executionInfo"]["exitCode"] == 137, t
        assert call(e, "POST", "/jobs/k/tasks", {"id": "nope", "commandLine": "no-such-program x"}).status == 201
        t = wait_until("the task to complete", lambda: (lambda x: x if x["state"] == "completed" else None)(
            call(e, "GET", "/jobs/k/tasks/nope").json()))
        assert t["executionInfo"]["failureInfo"]["code"] == "CommandProgramNotFound", t
    finally:
        e.stop()


def test_item10_the_ledger_ends_leftovers_and_never_a_reused_pid(tmp_path: Path) -> None:
    from mpibatch.emulator.nodes import Ledger

    ledger = Ledger(tmp_path / "processes.txt")
    p = subprocess.Popen(["/bin/bash", "-c", "sleep 300 & sleep 300"], start_new_session=True)
    try:
        ledger.add(p.pid)
        with open(ledger.path, "a") as f:  # type: ignore[arg-type]
            f.write(f"{os.getpid()} 1\n")  # our own pid with another start time: a pid reused since
        assert Ledger(tmp_path / "processes.txt").end_leftovers() == 1
        p.wait(10)
        assert p.returncode == -signal.SIGKILL
        assert (tmp_path / "processes.txt").read_text() == ""
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


# ---------------------------------------------------------------------------------------------- issue 24.5 and 22.9
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_24_item5_azurite_ends_with_a_killed_emulator_and_comes_back_on_its_port(tmp_path: Path) -> None:
    require(azurite_missing(), "Azurite")
    from azure.storage.blob import BlobServiceClient

    state, port = tmp_path / "state", free_port()
    e = EmulatorProcess(state)
    e.args += ["--storage-port", str(port)]
    e.start()
    try:
        assert f"127.0.0.1:{port}" in e.connection_string
        svc = BlobServiceClient.from_connection_string(e.connection_string)
        svc.create_container("kept")
        svc.get_blob_client("kept", "a.txt").upload_blob(b"still here\n")
        azurite = [p for p in processes_mentioning(str(state)) if f"--blobPort {port}" in cmdline(p)]
        assert azurite, "no Azurite process found"
        # Azurite writes its metadata a few seconds behind (its own write-behind, not the emulator's):
        # the kill comes once the blob is in its database file
        db = state / "work" / "azurite" / "__azurite_db_blob__.json"
        wait_until("Azurite to save its metadata", lambda: db.exists() and b"a.txt" in db.read_bytes(), 60)
        kill_9(e)
        wait_until("Azurite to end with the emulator", lambda: not port_open(port) and not [
            p for p in azurite if cmdline(p)], timeout=15)
    finally:
        e.stop(check=False)
    e = EmulatorProcess(state).start()  # no --storage-port: the state dir's port
    try:
        assert f"127.0.0.1:{port}" in e.connection_string
        svc = BlobServiceClient.from_connection_string(e.connection_string)
        assert svc.get_blob_client("kept", "a.txt").download_blob().readall() == b"still here\n"
    finally:
        e.stop()
    assert not port_open(port)


def test_22_item9_the_storage_connection_string_can_come_from_the_environment(tmp_path: Path,
                                                                            azurite: Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    svc = BlobServiceClient.from_connection_string(azurite.connection_string)
    svc.create_container("inputs-env")
    svc.get_blob_client("inputs-env", "data.txt").upload_blob(b"from the environment\n", overwrite=True)
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string}
    e = EmulatorProcess(tmp_path / "state", storage="env", pools=("a:1",), env=env).start()
    try:
        assert e.proc is not None and azurite.key not in cmdline(e.proc.pid)
        assert "AZURE_STORAGE_CONNECTION_STRING" not in e.exports  # a user's key is never printed
        assert not any(azurite.key in line for line in e.log)
        assert call(e, "POST", "/jobs", {"id": "k", "poolInfo": {"poolId": "a"}}).status == 201
        assert call(e, "POST", "/jobs/k/tasks", {"id": "t", "commandLine": "/bin/cat data.txt", "resourceFiles": [
            {"autoStorageContainerName": "inputs-env"}]}).status == 201
        t = wait_until("the task to complete", lambda: (lambda x: x if x["state"] == "completed" else None)(
            call(e, "GET", "/jobs/k/tasks/t").json()))
        assert t["executionInfo"].get("exitCode") == 0, t
        assert call(e, "GET", "/jobs/k/tasks/t/files/stdout.txt").body == b"from the environment\n"
    finally:
        e.stop()


@pytest.mark.parametrize("args,env,field", [
    (["--storage", "none", "--storage-port", "10123"], {}, "--storage-port"),
    (["--storage", "env"], {}, "AZURE_STORAGE_CONNECTION_STRING"),
    (["--storage", "env"], {"AZURE_STORAGE_CONNECTION_STRING": "AccountName=x"}, "--storage"),
])
def test_22_item9_bad_storage_choices_are_exit_2(tmp_path: Path, args: list[str], env: dict[str, str],
                                                 field: str) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    p = subprocess.run([str(MPIBATCH), "emulate", "--port", "0", "--state-dir", str(tmp_path / "s"), *args],
                       env={**base, **env}, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert p.returncode == 2 and field in p.stderr and "Traceback" not in p.stderr, p.stderr
    assert not (tmp_path / "s").exists()
