"""Issue 19, items 9, 11 and 14, against a real `mpibatch emulate` subprocess through the real azure-batch 15.1
SDK (and raw Shared Key requests through its pipeline where the error body matters):

* 9: `mpibatch logs --follow` of a log truncated and rewritten in place prints the new text from its start,
  after a note on stderr (it used to end with exit 0 and never show it);
* 11: a task's `maxWallClockTime` covers its resource files' download (a server that trickles one byte every
  20 s held a 10 s task for 240 s);
* 14: the files API never follows a symlink a task made (`wd/leak -> /etc/shadow` was served, as root)."""
from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mpibatch.launchers import fileio

from tests.faults.helpers import descendants
from tests.faults.test_lifecycle_faults import trickling_server  # noqa: F401 - a fixture
from tests.infra.emulator import MPIBATCH, EmulatorProcess
from tests.test_emulator_rest import call, error

pytestmark = pytest.mark.azure
SECRET = "TOPSECRET-not-for-the-files-api"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    e = EmulatorProcess(tmp_path_factory.mktemp("emu") / "state", storage="none", pools=("p1:2:1",)).start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def client(emu: EmulatorProcess) -> Any:
    return emu.batch_client()


def add_task(client: Any, job: str, **task: Any) -> None:
    assert call(client, "POST", "/jobs", {"id": job, "poolInfo": {"poolId": "p1"}}).status_code == 201
    assert call(client, "POST", f"/jobs/{job}/tasks", {"id": "t", **task}).status_code == 201


def wait_completed(client: Any, job: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = client.get_task(job, "t")
        if t.state == "completed":
            return t
        time.sleep(0.1)
    raise AssertionError(f"{job}/t did not complete within {timeout}s")


# ------------------------------------------------------------------------------------------ item 14
def test_item14_the_files_api_never_follows_a_symlink_a_task_made(client: Any, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text(SECRET)
    links = (f"ln -s {outside}/secret.txt leak; ln -s /etc/shadow shadow; ln -s {outside} dir; mkdir real; "
             f"echo fine > real/ok.txt; ln -s real inner; ln -s {outside}/secret.txt ../leak2")
    add_task(client, "links", commandLine=f"/bin/bash -c '{links}'")
    t = wait_completed(client, "links")
    assert t.execution_info.exit_code == 0, t.execution_info
    assert b"".join(client.download_task_file("links", "t", "wd/real/ok.txt")) == b"fine\n"  # a file is served
    base = f"/pools/p1/nodes/{t.node_info.node_id}/files/{t.node_info.task_root_directory}"
    for rel in ("wd/leak", "wd/shadow", "wd/dir/secret.txt", "wd/inner/ok.txt", "leak2"):
        for path in (f"/jobs/links/tasks/t/files/{rel}", f"{base}/{rel}"):
            for verb in ("GET", "HEAD"):
                resp = call(client, verb, path)
                assert resp.status_code == 404, (verb, path, resp.status_code)
                assert SECRET not in resp.text() and "root:" not in resp.text()
            assert error(call(client, "GET", path))[:2] == (404, "FileNotFound")
    names = {f.name for f in client.list_task_files("links", "t", recursive=True)}
    assert "wd/real/ok.txt" in names
    assert not names & {"wd/leak", "wd/shadow", "wd/dir", "wd/inner", "leak2"}, names  # links are not listed
    assert not any("secret" in n for n in names), names  # nor followed


# ------------------------------------------------------------------------------------------ item 11
def test_item11_max_wall_clock_covers_resource_file_downloads(emu: EmulatorProcess, client: Any,
                                                              trickling_server: str) -> None:  # noqa: F811
    started = time.monotonic()
    add_task(client, "trickle", commandLine="/bin/echo never-runs",
             resourceFiles=[{"httpUrl": trickling_server, "filePath": "input.dat"}],
             constraints={"maxWallClockTime": "PT3S"})
    t = wait_completed(client, "trickle", timeout=60)
    took = time.monotonic() - started
    info = t.execution_info
    assert took < 30, f"the task took {took:.0f}s with a 3 s wall clock"
    assert info.result == "failure" and info.exit_code is None, info
    assert info.failure_info.code == "TaskEnded" and "maxWallClockTime" in info.failure_info.message, info
    assert "downloading" in info.failure_info.message and "SECRET" not in info.failure_info.message
    names = {f.name for f in client.list_task_files("trickle", "t", recursive=True)}
    assert "wd/input.dat" not in names and not any(fileio.is_temp_name(os.path.basename(n)) for n in names), names
    if "stdout.txt" in names:  # the command line never started
        assert b"never-runs" not in b"".join(client.download_task_file("trickle", "t", "stdout.txt"))
    assert emu.proc is not None
    left = [p for p in descendants(emu.proc.pid) if b"mpibatch.emulator.fetch" in _cmdline(p)]
    assert not left, f"fetch processes left: {left}"


def test_item11_a_job_preparation_task_s_wall_clock_covers_its_downloads(client: Any,
                                                                          trickling_server: str) -> None:  # noqa: F811
    started = time.monotonic()
    assert call(client, "POST", "/jobs", {"id": "prep", "poolInfo": {"poolId": "p1"}, "jobPreparationTask": {
        "commandLine": "/bin/true", "resourceFiles": [{"httpUrl": trickling_server, "filePath": "input.dat"}],
        "constraints": {"maxWallClockTime": "PT3S"}}}).status_code == 201
    assert call(client, "POST", "/jobs/prep/tasks", {"id": "t", "commandLine": "/bin/true"}).status_code == 201
    t = wait_completed(client, "prep", timeout=60)
    assert time.monotonic() - started < 30
    assert t.execution_info.failure_info.code == "JobPreparationTaskFailed", t.execution_info
    assert "maxWallClockTime" in t.execution_info.failure_info.message
    (status,) = list(client.list_job_preparation_and_release_task_status("prep"))
    prep = status.job_preparation_task_execution_info
    assert prep.failure_info.code == "TaskEnded" and "downloading" in prep.failure_info.message, prep


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


# ------------------------------------------------------------------------------------------ item 9
def test_item9_follow_of_a_log_rewritten_in_place_shows_the_new_text(emu: EmulatorProcess, client: Any) -> None:
    script = "seq 1 3000; sleep 4; printf \"rewritten-from-the-start\\n\" > ../stdout.txt; sleep 2"
    add_task(client, "trunc", commandLine=f"/bin/bash -c '{script}'")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    env.update({"AZURE_BATCH_ENDPOINT": emu.endpoint, "AZURE_BATCH_ACCOUNT": emu.account,
                "AZURE_BATCH_ACCESS_KEY": emu.key})
    p = subprocess.run([str(MPIBATCH), "logs", "trunc", "t", "--follow", "--interval", "0.3", "--timeout", "60"],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("1\n2\n3\n") and "3000\n" in p.stdout, p.stdout[:200]  # the old text, as it came
    assert p.stdout.endswith("3000\nrewritten-from-the-start\n"), p.stdout[-200:]  # then the new one, whole
    assert "shrank" in p.stderr and "again from the start" in p.stderr, p.stderr
    assert emu.key not in p.stdout + p.stderr
