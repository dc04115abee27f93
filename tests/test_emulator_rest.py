"""`mpibatch emulate` at the REST level: bad input gets the status code and error code the Batch service
documents, nothing half-created; what is not emulated is refused in Batch's error format; lists page.

Requests go through azure-batch 15.1's own pipeline (`BatchClient.send_request`: its Shared Key signing,
its headers), so the bodies are exactly what the test writes. Sources of the rules:
- "Batch status and error codes" (learn.microsoft.com/rest/api/batchservice/batch-status-and-error-codes):
  400 InvalidRequestBody / MissingRequiredProperty / InvalidPropertyValue, 403 AuthenticationFailed,
  404 JobNotFound, 409 JobExists / JobCompleted, 413 RequestBodyTooLarge.
- "Add a collection of tasks to a job": at most 100 tasks, under 1 MB.
- "Naming rules": ids up to 64 characters of letters, digits, '-' and '_', unique case-insensitively.
- "Query the Batch service efficiently": $filter, $select, maxresults and odata.nextLink paging.
- "Use multi-instance tasks": without inter-node communication the task is never scheduled (stays active).
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests.infra.emulator import EmulatorProcess

pytestmark = pytest.mark.azure
API = "2025-06-01"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    e = EmulatorProcess(tmp_path_factory.mktemp("emu") / "state", storage="none",
                        pools=("p1:2:2", "tcp:3")).start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def client(emu: EmulatorProcess) -> Any:
    return emu.batch_client()


def call(client: Any, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
         query: str = f"api-version={API}", headers: dict[str, str] | None = None) -> Any:
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    h = {"Content-Type": "application/json; odata=minimalmetadata", **(headers or {})}
    url = f"{client._config.endpoint}{path}" + (f"?{query}" if query else "")
    try:
        return client.send_request(HttpRequest(method, url, headers=h, content=data))
    except HttpResponseError as e:  # the SDK's exception policy raises on every error status
        return e.response


def error(resp: Any) -> tuple[int, str, dict[str, str]]:
    body = resp.json()
    assert body["message"]["lang"] == "en-US"
    return resp.status_code, body["code"], {v["key"]: v["value"] for v in body.get("values", [])}


def job_ids(client: Any) -> set[str]:
    return {j.id for j in client.list_jobs()}


GOOD_JOB = {"id": "j", "poolInfo": {"poolId": "p1"}}


def test_malformed_json_unknown_fields_and_wrong_types_create_nothing(client: Any) -> None:
    before = job_ids(client)
    assert error(call(client, "POST", "/jobs", raw=b'{"id": "j1", "poolInfo": {'))[:2] == (400, "InvalidRequestBody")
    status, code, values = error(call(client, "POST", "/jobs", {**GOOD_JOB, "id": "j2", "colour": "red"}))
    assert (status, code) == (400, "InvalidRequestBody") and "colour" in values["Reason"]
    status, code, values = error(call(client, "POST", "/jobs", {**GOOD_JOB, "id": "j3", "priority": "high"}))
    assert (status, code) == (400, "InvalidRequestBody") and "priority" in values["Reason"]
    status, code, values = error(call(client, "POST", "/pools", {"id": "px", "vmSize": "a", "taskSlotsPerNode": True}))
    assert (status, code) == (400, "InvalidRequestBody")
    assert error(call(client, "POST", "/jobs", {"id": "j4"}))[:3] == (400, "MissingRequiredProperty",
                                                                    {"PropertyName": "poolInfo"})
    assert error(call(client, "POST", "/jobs", {"id": "j4", "poolInfo": {}}))[:3] == (
        400, "MissingRequiredProperty", {"PropertyName": "poolInfo.poolId"})
    assert job_ids(client) == before
    assert "px" not in {p.id for p in client.list_pools()}


@pytest.mark.parametrize("bad_id", ["x" * 65, "has space", "dot.ted", "", "ünï"])
def test_bad_ids_are_invalid_property_values(client: Any, bad_id: str) -> None:
    resp = call(client, "POST", "/jobs", {**GOOD_JOB, "id": bad_id})
    status, code, values = error(resp)
    assert status == 400 and code in ("InvalidPropertyValue", "MissingRequiredProperty"), values
    assert values["PropertyName"] == "id"


def test_ids_are_unique_case_insensitively(client: Any) -> None:
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "Dup"}).status_code == 201
    assert error(call(client, "POST", "/jobs", {**GOOD_JOB, "id": "dUP"}))[:2] == (409, "JobExists")
    assert call(client, "POST", "/jobs/dup/tasks", {"id": "T", "commandLine": "/bin/true"}).status_code == 201
    assert error(call(client, "POST", "/jobs/DUP/tasks", {"id": "t", "commandLine": "/bin/true"}))[:2] == (
        409, "TaskExists")
    assert client.get_job("dup").id == "Dup"  # the id as it was given


def test_task_for_a_missing_or_completed_job(client: Any) -> None:
    assert error(call(client, "POST", "/jobs/nojob/tasks", {"id": "t", "commandLine": "/bin/true"}))[:2] == (
        404, "JobNotFound")
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "ended"}).status_code == 201
    assert call(client, "POST", "/jobs/ended/terminate", {"terminateReason": "test"}).status_code == 202
    deadline = time.monotonic() + 30
    while client.get_job("ended").state != "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert error(call(client, "POST", "/jobs/ended/tasks", {"id": "t", "commandLine": "/bin/true"}))[:2] == (
        409, "JobCompleted")
    assert list(client.list_tasks("ended")) == []


def test_oversized_collections_create_nothing(client: Any) -> None:
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "coll"}).status_code == 201
    many = {"value": [{"id": f"t{i}", "commandLine": "/bin/true"} for i in range(101)]}
    assert error(call(client, "POST", "/jobs/coll/addtaskcollection", many))[:2] == (400, "InvalidPropertyValue")
    big = {"value": [{"id": f"b{i}", "commandLine": "/bin/echo " + "x" * 20_000} for i in range(60)]}
    assert error(call(client, "POST", "/jobs/coll/addtaskcollection", big))[:2] == (413, "RequestBodyTooLarge")
    assert list(client.list_tasks("coll")) == []
    # Within the limits, each task gets its own result: a bad one does not stop the others.
    mixed = {"value": [{"id": "ok1", "commandLine": "/bin/true"}, {"id": "bad id", "commandLine": "/bin/true"}]}
    results = {r["taskId"]: r for r in call(client, "POST", "/jobs/coll/addtaskcollection", mixed).json()["value"]}
    assert results["ok1"]["status"] == "success"
    assert results["bad id"]["status"] == "clientError"
    assert results["bad id"]["error"]["code"] == "InvalidPropertyValue"


def test_wrong_key_and_api_version(emu: EmulatorProcess, client: Any) -> None:
    import base64

    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import HttpResponseError

    wrong = BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, base64.b64encode(b"w" * 64).decode()))
    with pytest.raises(HttpResponseError) as info:
        wrong.create_job({**GOOD_JOB, "id": "bykey"})
    assert info.value.status_code == 403 and info.value.error.code == "AuthenticationFailed"
    assert "bykey" not in job_ids(client)
    assert error(call(client, "GET", "/jobs", query=""))[:3] == (400, "MissingRequiredQueryParameter",
                                                                {"QueryParameterName": "api-version"})
    assert error(call(client, "GET", "/jobs", query="api-version=2011-01-01"))[:2] == (
        400, "UnsupportedRequestVersion")


def test_not_emulated_is_refused_never_silently_accepted(client: Any) -> None:
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "exits"}).status_code == 201
    resp = call(client, "POST", "/jobs/exits/tasks", {"id": "t", "commandLine": "/bin/true",
                                                     "affinityInfo": {"affinityId": "node-x"}})
    status, code, values = error(resp)
    assert (status, code) == (501, "NotSupportedByEmulator")
    assert "task affinity" in resp.json()["message"]["value"]
    assert list(client.list_tasks("exits")) == []
    resp = call(client, "GET", "/jobs", query=f"api-version={API}&$filter=" + "substringof('a',id)")
    assert error(resp)[:2] == (400, "InvalidQueryParameterValue")


def test_lists_page_filter_and_select(client: Any) -> None:
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "pages", "poolInfo": {"poolId": "tcp"}}).status_code == 201
    tasks = {"value": [{"id": f"t{i:02d}", "commandLine": "/bin/true"} for i in range(25)]}
    assert call(client, "POST", "/jobs/pages/addtaskcollection", tasks).status_code == 200
    page = call(client, "GET", "/jobs/pages/tasks", query=f"api-version={API}&maxresults=10").json()
    assert len(page["value"]) == 10 and "odata.nextLink" in page
    assert [t.id for t in client.list_tasks("pages", max_results=10)] == [f"t{i:02d}" for i in range(25)]
    picked = list(client.list_tasks("pages", filter="id eq 't03' or startswith(id,'t1')", select=["id", "state"]))
    assert sorted(t.id for t in picked) == ["t03"] + [f"t1{i}" for i in range(10)]
    assert picked[0].command_line is None  # $select kept only id and state


def test_multi_instance_without_inter_node_communication_stays_active(client: Any) -> None:
    assert call(client, "POST", "/pools", {"id": "nocomm", "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 2,
                                           "enableInterNodeCommunication": False}).status_code == 201
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "mi", "poolInfo": {"poolId": "nocomm"}}).status_code == 201
    body = {"id": "mpi", "commandLine": "/bin/true", "multiInstanceSettings": {"numberOfInstances": 2,
                                                                        "coordinationCommandLine": "/bin/true"}}
    assert call(client, "POST", "/jobs/mi/tasks", body).status_code == 201
    time.sleep(2)  # a few scheduling passes: it must still be active (never scheduled, no error)
    t = client.get_task("mi", "mpi")
    assert t.state == "active" and t.execution_info.failure_info is None


def test_answers_say_they_come_from_an_emulator_and_carry_etags(client: Any) -> None:
    resp = call(client, "GET", "/pools/p1")
    assert resp.headers["x-ms-emulator"].startswith("mpibatch-emulate")
    assert "emulator" in resp.headers["Server"]
    assert resp.headers["ETag"] and resp.headers["Last-Modified"]
    assert resp.json()["taskSlotsPerNode"] == 2


def test_node_file_range(client: Any) -> None:
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "files"}).status_code == 201
    echo = {"id": "t", "commandLine": "/bin/echo 0123456789"}
    assert call(client, "POST", "/jobs/files/tasks", echo).status_code == 201
    deadline = time.monotonic() + 30
    while client.get_task("files", "t").state != "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
    t = client.get_task("files", "t")
    whole = b"".join(client.download_task_file("files", "t", "stdout.txt"))
    assert whole == b"0123456789\n"
    part = b"".join(client.download_node_file("p1", t.node_info.node_id,
                                              f"{t.node_info.task_root_directory}/stdout.txt", ocp_range="bytes=2-5"))
    assert part == b"2345"
    names = {f.name for f in client.list_task_files("files", "t")}
    assert {"stdout.txt", "stderr.txt", "wd"} <= names


def wait_completed(client: Any, job: str, task: str, timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        t = client.get_task(job, task)
        if t.state == "completed":
            return t
        time.sleep(0.1)
    raise AssertionError(f"{job}/{task} did not complete")


def test_constraints_wall_clock_and_retries(client: Any) -> None:
    """"Batch task constraints": maxWallClockTime ends the task; maxTaskRetryCount re-runs a failing one."""
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "limits"}).status_code == 201
    assert call(client, "POST", "/jobs/limits/tasks", {"id": "slow", "commandLine": "/bin/sleep 60",
                                                      "constraints": {"maxWallClockTime": "PT1S"}}).status_code == 201
    assert call(client, "POST", "/jobs/limits/tasks", {"id": "fails", "commandLine": "/bin/false",
                                                      "constraints": {"maxTaskRetryCount": 2}}).status_code == 201
    slow = wait_completed(client, "limits", "slow")
    assert slow.execution_info.result == "failure" and slow.execution_info.failure_info.code == "TaskEnded"
    fails = wait_completed(client, "limits", "fails")
    assert fails.execution_info.exit_code == 1 and fails.execution_info.retry_count == 2


def test_task_slots_run_tasks_side_by_side(client: Any) -> None:
    """"Run tasks concurrently to maximize usage of Batch compute nodes": taskSlotsPerNode 2 on 2 nodes
    runs 4 tasks at once. Each task waits until 2 tasks have marked its node: that only ends if two run
    side by side on every node (else the wall clock limit fails them)."""
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "slots"}).status_code == 201
    cmd = ("/bin/bash -c 'touch $AZ_BATCH_NODE_SHARED_DIR/slots-$AZ_BATCH_TASK_ID; "
           "until [ $(ls $AZ_BATCH_NODE_SHARED_DIR | grep -c ^slots-) -ge 2 ]; do sleep 0.05; done'")
    tasks = {"value": [{"id": f"s{i}", "commandLine": cmd, "constraints": {"maxWallClockTime": "PT30S"}}
                       for i in range(4)]}
    assert call(client, "POST", "/jobs/slots/addtaskcollection", tasks).status_code == 200
    done = [wait_completed(client, "slots", f"s{i}") for i in range(4)]
    assert all(t.execution_info.exit_code == 0 for t in done), [t.execution_info for t in done]
    assert len({t.node_info.node_id for t in done}) == 2  # spread: two on each node


def test_dependencies_and_all_tasks_complete(client: Any) -> None:
    """"Create task dependencies": a task runs after the tasks it depends on succeeded; a job with
    onAllTasksComplete=terminateJob completes when its last task does."""
    assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "deps", "usesTaskDependencies": True,
                                          "onAllTasksComplete": "terminateJob"}).status_code == 201
    tasks = {"value": [
        {"id": "1", "commandLine": "/bin/bash -c 'echo one > $AZ_BATCH_NODE_SHARED_DIR/dep-1'"},
        {"id": "2", "commandLine": "/bin/bash -c 'echo two > $AZ_BATCH_NODE_SHARED_DIR/dep-2'"},
        {"id": "after", "dependsOn": {"taskIdRanges": [{"start": 1, "end": 2}]},
         "commandLine": "/bin/bash -c 'ls $AZ_BATCH_NODE_ROOT_DIR/../*/shared/dep-* | wc -l'"}]}
    assert call(client, "POST", "/jobs/deps/addtaskcollection", tasks).status_code == 200
    after = wait_completed(client, "deps", "after")
    assert after.execution_info.exit_code == 0
    first = [wait_completed(client, "deps", i) for i in ("1", "2")]
    assert after.execution_info.start_time >= max(t.execution_info.end_time for t in first)
    deadline = time.monotonic() + 30
    while client.get_job("deps").state != "completed" and time.monotonic() < deadline:
        time.sleep(0.1)
    job = client.get_job("deps")
    assert job.state == "completed" and job.execution_info.termination_reason == "AllTasksComplete"
    # A dependency on a job that does not allow them is refused.
    assert error(call(client, "POST", "/jobs/limits/tasks", {"id": "d", "commandLine": "/bin/true", "dependsOn": {
        "taskIds": ["slow"]}}))[:2] == (409, "TaskDependenciesNotSpecifiedOnJob")
