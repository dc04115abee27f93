"""`mpibatch emulate` answers every data-plane API version from 2018-12-01.8.0 on, each in its own shape.

The shapes are the tables scripts/gen_batch_shapes.py generated from the azure-batch wheels on PyPI (whose
models Microsoft generates from the published REST specifications). Requests are raw, signed with Shared
Key (tests/infra/rawbatch.py), so each carries exactly the api-version and body the test writes. Facts:
- `maxTasksPerNode` became `taskSlotsPerNode` in 2020-09-01.12.0, which also added task `requiredSlots`
  and node `runningTaskSlotsCount`; job `maxParallelTasks` came in 2021-06-01.14.0;
  pool `taskSchedulingPolicy.jobDefaultOrder` in 2025-06-01.
- An api-version the service does not know is `400 UnsupportedRequestVersion`; `$expand=stats` returns the
  resource with its `stats` object."""
from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from mpibatch.emulator import versions
from tests.infra import rawbatch
from tests.infra.emulator import EmulatorProcess

pytestmark = pytest.mark.azure
ALL = versions.known()
SLOTS_RENAMED = "2020-09-01.12.0"
OLDEST, V19, NEWEST = "2018-12-01.8.0", "2024-02-01.19.0", "2025-06-01"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    e = EmulatorProcess(tmp_path_factory.mktemp("emu") / "state", storage="none", pools=("p:1",)).start()
    try:
        yield e
    finally:
        e.stop()


def call(emu: EmulatorProcess, method: str, path: str, version: str, body: Any = None,
         extra: str = "") -> rawbatch.Answer:
    query = f"api-version={version}{extra}"
    if body is None:
        return rawbatch.request(emu.endpoint, emu.account, emu.key, method, path, query=query)
    return rawbatch.request(emu.endpoint, emu.account, emu.key, method, path,
                            rawbatch.json.dumps(body).encode(), query=query)


def model_names(version: str, role: str) -> set[str]:
    t = versions.table(version)
    return set(t["models"][t["roots"][role]])


def slug(version: str) -> str:
    return version.replace(".", "-")


def test_the_versions_are_the_published_ones_from_2018_12_01() -> None:
    assert ALL[0] == OLDEST and ALL[-1] == NEWEST and len(ALL) == 13
    assert {"2019-08-01.10.0", "2021-06-01.14.0", "2023-05-01.17.0", "2024-07-01.20.0"} <= set(ALL)
    assert list(ALL) == sorted(ALL)


def test_every_known_version_is_accepted_and_another_refused_naming_the_range(emu: EmulatorProcess) -> None:
    for v in ALL:
        assert call(emu, "GET", "/pools", v).status == 200, v
    ans = call(emu, "GET", "/pools", "2018-08-01.7.0")
    assert (ans.status, ans.code) == (400, "UnsupportedRequestVersion")
    reason = {x["key"]: x["value"] for x in ans.json()["values"]}["Reason"]
    assert OLDEST in reason and NEWEST in reason


@pytest.mark.parametrize("version", ALL)
def test_pool_and_node_in_the_shape_of_each_version(emu: EmulatorProcess, version: str) -> None:
    old = version < SLOTS_RENAMED
    slots = "maxTasksPerNode" if old else "taskSlotsPerNode"
    pid = f"pool-{slug(version)}"
    ans = call(emu, "POST", "/pools", version, {"id": pid, "vmSize": "standard_d2s_v3", slots: 3})
    assert ans.status == 201, ans.body
    pool = call(emu, "GET", f"/pools/{pid}", version).json()
    assert pool[slots] == 3 and ("taskSlotsPerNode" in pool) is not old and ("maxTasksPerNode" in pool) is old
    assert set(pool) <= model_names(version, "pool"), set(pool) - model_names(version, "pool")
    # the other name is not a property of that version: refused as the service refuses an unknown one
    other = "taskSlotsPerNode" if old else "maxTasksPerNode"
    ans = call(emu, "POST", "/pools", version, {"id": f"x{pid}", "vmSize": "a", other: 2})
    assert (ans.status, ans.code) == (400, "InvalidRequestBody") and other in ans.body.decode()
    node = call(emu, "GET", "/pools/p/nodes", version).json()["value"][0]
    assert ("runningTaskSlotsCount" in node) is not old and node["id"].startswith("tvmps_")
    assert set(node) <= model_names(version, "node"), set(node) - model_names(version, "node")


def test_a_pool_made_in_2018_reads_with_todays_names_in_2024(emu: EmulatorProcess) -> None:
    body = {"id": "cross", "vmSize": "standard_d2s_v3", "maxTasksPerNode": 4}
    assert call(emu, "POST", "/pools", OLDEST, body).status == 201
    pool = call(emu, "GET", "/pools/cross", V19).json()
    assert pool["taskSlotsPerNode"] == 4 and "maxTasksPerNode" not in pool
    listed = call(emu, "GET", "/pools", OLDEST, extra="&$filter=id%20eq%20'cross'").json()["value"]
    assert [p["maxTasksPerNode"] for p in listed] == [4]


@pytest.mark.parametrize("version", ALL)
def test_job_and_task_in_the_shape_of_each_version(emu: EmulatorProcess, version: str) -> None:
    jid = f"job-{slug(version)}"
    job: dict[str, Any] = {"id": jid, "poolInfo": {"poolId": "p"}, "jobPreparationTask": {"commandLine": "/bin/true"}}
    if version >= "2021-06-01.14.0":
        job["maxParallelTasks"] = 2
    assert call(emu, "POST", "/jobs", version, job).status == 201
    got = call(emu, "GET", f"/jobs/{jid}", version).json()
    assert set(got) <= model_names(version, "job"), set(got) - model_names(version, "job")
    assert got.get("maxParallelTasks") == job.get("maxParallelTasks")
    assert call(emu, "POST", f"/jobs/{jid}/tasks", version, {"id": "t", "commandLine": "/bin/true"}).status == 201
    task = call(emu, "GET", f"/jobs/{jid}/tasks/t", version).json()
    assert set(task) <= model_names(version, "task"), set(task) - model_names(version, "task")
    assert ("requiredSlots" in task) is (version >= SLOTS_RENAMED) and task["commandLine"] == "/bin/true"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and task["state"] != "completed":
        time.sleep(0.2)
        task = call(emu, "GET", f"/jobs/{jid}/tasks/t", version).json()
    status = call(emu, "GET", f"/jobs/{jid}/jobpreparationandreleasetaskstatus", version).json()["value"]
    assert task["state"] == "completed" and len(status) == 1 and status[0]["nodeId"].startswith("tvmps_")
    assert set(status[0]) <= model_names(version, "job.preprelease")
    counts = call(emu, "GET", f"/jobs/{jid}/taskcounts", version).json()
    assert (counts if version < SLOTS_RENAMED else counts["taskCounts"])["succeeded"] == 1
    if version < "2021-06-01.14.0":  # a property from a later version is not one of this version's
        ans = call(emu, "POST", "/jobs", version, {**job, "id": f"x{jid}", "maxParallelTasks": 1})
        assert (ans.status, ans.code) == (400, "InvalidRequestBody")


def test_a_property_of_the_version_the_emulator_does_not_use_is_stored(emu: EmulatorProcess) -> None:
    """Issue 24, defect 2: jobDefaultOrder (2025-06-01, sent by azure-batch 15.1) was refused."""
    policy = {"nodeFillType": "pack", "jobDefaultOrder": "creationtime"}
    body = {"id": "order", "vmSize": "standard_d2s_v3", "taskSchedulingPolicy": policy}
    assert call(emu, "POST", "/pools", NEWEST, body).status == 201
    assert call(emu, "GET", "/pools/order", NEWEST).json()["taskSchedulingPolicy"] == policy
    assert call(emu, "GET", "/pools/order", V19).json()["taskSchedulingPolicy"] == {"nodeFillType": "pack"}
    ans = call(emu, "POST", "/pools", V19, {**body, "id": "order19"})
    assert (ans.status, ans.code) == (400, "InvalidRequestBody") and "jobDefaultOrder" in ans.body.decode()


def test_expand_stats_is_answered(emu: EmulatorProcess) -> None:
    """Issue 24, defect 4: `$expand=stats` was 400 InvalidQueryParameterValue."""
    assert call(emu, "POST", "/jobs", NEWEST, {"id": "st", "poolInfo": {"poolId": "p"}}).status == 201
    assert call(emu, "POST", "/jobs/st/tasks", NEWEST, {"id": "t", "commandLine": "/bin/sleep 1"}).status == 201
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        task = call(emu, "GET", "/jobs/st/tasks/t", NEWEST, extra="&$expand=stats").json()
        if task["state"] == "completed":
            break
        time.sleep(0.3)
    stats = task["stats"]
    assert stats["url"].endswith("/jobs/st/tasks/t/stats") and stats["readIOps"] == 0
    assert 0.5 <= float(stats["wallClockTime"][2:-1]) < 30  # /bin/sleep 1, from its start and end times
    job = call(emu, "GET", "/jobs/st", OLDEST, extra="&$expand=stats").json()
    assert job["stats"]["numSucceededTasks"] == 0 and job["stats"]["startTime"] == job["creationTime"]
    pools = call(emu, "GET", "/pools", V19, extra="&$expand=stats").json()["value"]
    assert pools and all(p["stats"]["usageStats"]["dedicatedCoreTime"] == "PT0S" for p in pools)
    assert "stats" not in call(emu, "GET", "/jobs/st", NEWEST).json()
    ans = call(emu, "GET", "/jobs/st", NEWEST, extra="&$expand=nodes")
    assert (ans.status, ans.code) == (400, "InvalidQueryParameterValue")


def _generator() -> Any:
    import importlib.util

    from tests.infra.fixtures import REPO_ROOT

    spec = importlib.util.spec_from_file_location("gen_batch_shapes", REPO_ROOT / "scripts" / "gen_batch_shapes.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


AUTOREST = '''
class Pool(Model):
    _validation = {'id': {'required': True}, 'url': {'readonly': True}}
    _attribute_map = {
        'id': {'key': 'id', 'type': 'str'},
        'url': {'key': 'url', 'type': 'str'},
        'max_tasks_per_node': {'key': 'maxTasksPerNode', 'type': 'int'},
        'start_task': {'key': 'startTask', 'type': 'StartTask'},
        'metadata': {'key': 'metadata', 'type': '[MetadataItem]'},
        'timeout': {'key': 'resizeTimeout', 'type': 'duration'},
        'fill': {'key': 'nodeFillType', 'type': 'ComputeNodeFillType'},
    }

class StartTask(Model):
    _attribute_map = {'command_line': {'key': 'commandLine', 'type': 'str'}}
'''
TYPESPEC = '''
class BatchPool(_Model):
    id: str = rest_field(visibility=["read", "create"])
    vm_size: Optional[str] = rest_field(name="vmSize", visibility=["read"])
    start_task: Optional["_models.BatchStartTask"] = rest_field(name="startTask", visibility=["read", "create"])
    tags: Optional[Dict[str, str]] = rest_field(name="resourceTags")
    policy: Optional[Union[str, "_models.BatchNodeFillType"]] = rest_field(name="nodeFillType")
    items: Optional[List["_models.BatchMetadataItem"]] = rest_field(name="metadata")
    when: Optional[datetime.datetime] = rest_field(name="creationTime", visibility=["read"], format="rfc3339")
'''


def test_the_generator_reads_both_model_styles_without_importing_them() -> None:
    gen = _generator()
    pool = gen.parse_autorest(AUTOREST)["Pool"]
    assert pool["id"] == ["string", True, False] and pool["url"] == ["string", False, True]
    assert pool["maxTasksPerNode"][0] == "int" and pool["startTask"][0] == "@StartTask"
    assert pool["metadata"][0] == "[string]"  # MetadataItem is not a class of this source: an enum-like name
    assert pool["resizeTimeout"][0] == "duration" and pool["nodeFillType"][0] == "string"
    ts = gen.parse_typespec(TYPESPEC)["BatchPool"]
    assert ts["id"] == ["string", True, False] and ts["vmSize"] == ["string", False, True]
    assert ts["startTask"] == ["@BatchStartTask", False, False] and ts["resourceTags"][0] == "map"
    assert ts["nodeFillType"][0] == "string" and ts["metadata"][0] == "[@BatchMetadataItem]"
    assert ts["creationTime"] == ["datetime", False, True]


def test_the_committed_tables_are_whole() -> None:
    gen = _generator()
    for v in ALL:
        t = versions.table(v)
        assert t["version"] == v and t["source"].startswith("azure-batch ")
        refs = {k.strip("[]")[1:] for m in t["models"].values() for k, _r, _o in m.values()
                if k.strip("[]").startswith("@")}
        assert refs <= set(t["models"]), (v, refs - set(t["models"]))
        assert set(t["roots"]) | gen.OPTIONAL_ROLES == set(gen.ROOTS), v  # every role the emulator reads
