"""Resource files get their `fileMode`, else Batch's Linux default 0770 ("ResourceFile" in the Batch REST
reference: "If this property is not specified for a Linux Compute Node, then a default value of 0770 is
applied to the file"), so a script sent as a resource file runs as the task's command - for ordinary tasks and
for a multi-instance task's common resource files (the coordination script of the MPI sample).

The scripts are served over HTTP on 127.0.0.1 by the test; the emulator is a real `mpibatch emulate`."""
from __future__ import annotations

import http.server
import os
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import require
from tests.infra.httpserve import serving

pytestmark = pytest.mark.azure
SCRIPT = b"#!/bin/sh\necho \"ran $0 with $1\"\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("www")
    (root / "run.sh").write_bytes(SCRIPT)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *a: object) -> None:
            pass

    with serving(Quiet) as base:
        yield f"{base}/run.sh"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential

    e = EmulatorProcess(tmp_path_factory.mktemp("emu") / "state", storage="none", pools=("fm:2",)).start()
    try:
        yield BatchClient(e.endpoint, AzureNamedKeyCredential(e.account, e.key))
    finally:
        e.stop()


def completed(client: Any, job: str, task: str, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = client.get_task(job, task)
        if t.state == "completed":
            return t
        time.sleep(0.2)
    raise AssertionError(f"{job}/{task} did not complete")


def mode_of(client: Any, job: str, task: str, path: str) -> int:
    props = client.get_task_file_properties(job, task, path)
    return int(props.file_mode, 8) & 0o7777


def test_script_resource_file_runs_with_and_without_file_mode(client: Any, served: str) -> None:
    from azure.batch import models as m

    client.create_job(m.BatchJobCreateOptions(id="modes", pool_info=m.BatchPoolInfo(pool_id="fm")))
    cases = {"default": None, "given": "0750", "notexec": "0644"}
    for task_id, mode in cases.items():
        rf = m.ResourceFile(http_url=served, file_path="bin/run.sh", file_mode=mode)
        client.create_task("modes", m.BatchTaskCreateOptions(id=task_id, command_line=f"./bin/run.sh {task_id}",
                                                             resource_files=[rf]))
    for task_id in ("default", "given"):
        t = completed(client, "modes", task_id)
        assert t.execution_info.exit_code == 0, t.execution_info.failure_info
        out = b"".join(client.download_task_file("modes", task_id, "stdout.txt")).decode()
        assert f"with {task_id}" in out
    assert mode_of(client, "modes", "default", "wd/bin/run.sh") == 0o770  # exactly, whatever the umask
    assert mode_of(client, "modes", "given", "wd/bin/run.sh") == 0o750
    t = completed(client, "modes", "notexec")
    assert t.execution_info.result == "failure"  # fileMode 0644 is honoured: not executable, even for root
    assert mode_of(client, "modes", "notexec", "wd/bin/run.sh") == 0o644


def test_bad_file_mode_fails_the_task_with_a_reason(client: Any, served: str) -> None:
    from azure.batch import models as m

    client.create_job(m.BatchJobCreateOptions(id="badmode", pool_info=m.BatchPoolInfo(pool_id="fm")))
    rf = m.ResourceFile(http_url=served, file_path="run.sh", file_mode="rwx")
    client.create_task("badmode", m.BatchTaskCreateOptions(id="t", command_line="./run.sh", resource_files=[rf]))
    t = completed(client, "badmode", "t")
    fi = t.execution_info.failure_info
    assert fi.code == "InvalidResourceFileMode" and "0755" in fi.message


def test_coordination_script_as_common_resource_file(client: Any, served: str) -> None:
    """The MPI sample's shape: the coordination command is a script among the common resource files."""
    from azure.batch import models as m

    require([] if os.geteuid() == 0 else ["multi-instance tasks run on the local executor, which needs root"],
            "root")
    client.create_job(m.BatchJobCreateOptions(id="mpimodes", pool_info=m.BatchPoolInfo(pool_id="fm")))
    common = [m.ResourceFile(http_url=served, file_path="coordination-cmd"),
              m.ResourceFile(http_url=served, file_path="app.sh", file_mode="0700")]
    shared = "$AZ_BATCH_TASK_SHARED_DIR"
    client.create_task("mpimodes", m.BatchTaskCreateOptions(
        id="mi", command_line=f"/bin/bash -c 'stat -c %a {shared}/coordination-cmd {shared}/app.sh; "
                              f"{shared}/app.sh application'",
        multi_instance_settings=m.MultiInstanceSettings(
            number_of_instances=2, coordination_command_line=f"/bin/bash -c '{shared}/coordination-cmd coord'",
            common_resource_files=common)))
    t = completed(client, "mpimodes", "mi", timeout=120)
    assert t.execution_info.exit_code == 0, t.execution_info.failure_info
    out = b"".join(client.download_task_file("mpimodes", "mi", "stdout.txt")).decode()
    assert "with coord" in out and "770\n700\n" in out and "with application" in out  # stdout.txt has both
    subtask = next(iter(client.list_subtasks("mpimodes", "mi")))
    assert subtask.exit_code == 0  # the coordination script ran on the subtask's node too
