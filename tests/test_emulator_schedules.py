"""What Batch samples use beyond pools, jobs and tasks, through azure-batch 15.1 against a real `mpibatch
emulate`: the supported images list ("Account - List Supported Images"), auto pools ("poolInfo.
autoPoolSpecification": created for the job or the job schedule, deleted with it unless keepAlive), the job
manager task (killJobOnCompletion ends its job, terminateReason JMComplete), and job schedules (jobs
`<id>:job-<n>` on the recurrence, recentJob / nextRunTime, disable / enable, terminate, delete with their jobs).
Cloud Services pools, retired by the service in 2024, are refused with that reason."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mpibatch.emulator import images
from tests.infra.emulator import EmulatorProcess
from tests.infra.emulator import wait_for as _wait_for
from tests.infra.rawbatch import request, send_json

pytestmark = pytest.mark.azure




def wait_for(what: str, check: Callable[[], Any], timeout: float = 60) -> Any:
    return _wait_for(what, check, timeout)


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    e = EmulatorProcess(tmp_path_factory.mktemp("emu") / "state", storage="none", pools=("fixed:2",)).start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture(scope="module")
def client(emu: EmulatorProcess) -> Any:
    return emu.batch_client()


def pool_ids(client: Any) -> set[str]:
    return {p.id for p in client.list_pools()}


def small_pool(m: Any, **kw: Any) -> Any:
    return m.BatchPoolSpecification(vm_size="standard_d2s_v3", target_dedicated_nodes=1, **kw)


# ------------------------------------------------------------------------------------------- supported images
def test_supported_images_as_the_samples_pick_them(client: Any, emu: EmulatorProcess) -> None:
    verified = list(client.list_supported_images(filter="verificationType eq 'verified'"))
    jammy = [i for i in verified if i.image_reference.offer == "0001-com-ubuntu-server-jammy"]
    assert [(i.node_agent_sku_id, i.os_type, i.image_reference.sku) for i in jammy] == [
        ("batch.node.ubuntu 22.04", "linux", "22_04-lts")]
    assert jammy[0].batch_support_end_of_life.year == 2027
    assert any(i.os_type == "windows" and i.image_reference.publisher == "microsoftwindowsserver" for i in verified)
    assert any("DockerCompatible" in (i.capabilities or []) for i in verified)
    hpc = list(client.list_supported_images(filter="nodeAgentSKUId eq 'batch.node.el 8'"))
    assert hpc and all(i.image_reference.offer == "almalinux-hpc" for i in hpc)
    # the MPI sample's pick: verified OpenLogic CentOS-HPC whose sku starts with 7.4, past its end of life
    centos = [(i.node_agent_sku_id, i.batch_support_end_of_life.year) for i in verified
              if (i.image_reference.publisher, i.image_reference.offer) == ("openlogic", "centos-hpc")
              and i.image_reference.sku.startswith("7.4")]
    assert centos == [("batch.node.centos 7", 2024)]
    # paging as every list pages
    page = request(emu.endpoint, emu.account, emu.key, "GET", "/supportedimages",
                   query="api-version=2025-06-01&maxresults=4").json()
    assert len(page["value"]) == 4 and "skiptoken=4" in page["odata.nextLink"]
    assert len(verified) == len(images.supported_images())


def test_node_agent_skus_only_for_the_versions_that_had_it(emu: EmulatorProcess) -> None:
    skus = images.node_agent_skus("2018-12-01.8.0")
    ubuntu22 = next(s for s in skus if s["id"] == "batch.node.ubuntu 22.04")
    assert ubuntu22["osType"] == "linux"
    assert {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204", "version": "latest"} in \
        ubuntu22["verifiedImageReferences"]
    a = request(emu.endpoint, emu.account, emu.key, "GET", "/nodeagentskus")
    assert a.status == 400 and "/supportedimages" in a.body.decode()


# ------------------------------------------------------------------------------------------- auto pools
def test_auto_pool_comes_and_goes_with_its_job(client: Any) -> None:
    from azure.batch import models as m

    before = pool_ids(client)
    client.create_job(m.BatchJobCreateOptions(
        id="autojob",
        pool_info=m.BatchPoolInfo(auto_pool_specification=m.BatchAutoPoolSpecification(
            auto_pool_id_prefix="samples", pool_lifetime_option="job", pool=small_pool(m)))))
    job = client.get_job("autojob")
    auto = job.execution_info.pool_id
    assert auto.startswith("samples_") and auto not in before and auto in pool_ids(client)
    client.create_task("autojob", m.BatchTaskCreateOptions(id="t", command_line="/bin/sh -c 'echo $AZ_BATCH_POOL_ID'"))
    t = wait_for("the task", lambda: (x := client.get_task("autojob", "t")).state == "completed" and x)
    assert t.execution_info.exit_code == 0 and t.node_info.pool_id == auto
    assert auto in b"".join(client.download_task_file("autojob", "t", "stdout.txt")).decode()
    client.begin_terminate_job("autojob", {"terminateReason": "done"}, polling_interval=0.2).result()
    wait_for("the job to complete", lambda: client.get_job("autojob").state == "completed")
    # deleting, not gone: the task's files are still there for a client that reads them right after (samples do)
    assert client.get_pool(auto).state == "deleting"
    assert auto in b"".join(client.download_task_file("autojob", "t", "stdout.txt")).decode()
    wait_for("the auto pool to go", lambda: auto not in pool_ids(client))


def test_a_deletion_left_by_a_stopped_emulator_finishes_at_its_next_start(tmp_path: Path) -> None:
    from azure.batch import models as m

    first = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        c = first.batch_client()
        c.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(
            auto_pool_specification=m.BatchAutoPoolSpecification(pool_lifetime_option="job", pool=small_pool(m)))))
        auto = c.get_job("j").execution_info.pool_id
        c.begin_terminate_job("j", {"terminateReason": "done"}, polling_interval=1).result()
        wait_for("the auto pool to be deleting", lambda: c.get_pool(auto).state == "deleting")
    finally:
        first.stop()
    second = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        c = second.batch_client()
        wait_for("the auto pool to go", lambda: auto not in pool_ids(c), timeout=8)  # less than the linger
        assert c.get_job("j").state == "completed"
    finally:
        second.stop()


def test_kept_alive_auto_pool_stays_and_cloud_services_are_refused(client: Any, emu: EmulatorProcess) -> None:
    from azure.batch import models as m

    client.create_job(m.BatchJobCreateOptions(
        id="keepjob", pool_info=m.BatchPoolInfo(auto_pool_specification=m.BatchAutoPoolSpecification(
            pool_lifetime_option="job", keep_alive=True, pool=small_pool(m)))))
    auto = client.get_job("keepjob").execution_info.pool_id
    client.begin_delete_job("keepjob", polling_interval=0.2).result()
    time.sleep(1)
    assert auto in pool_ids(client)
    client.begin_delete_pool(auto, polling_interval=0.2).result()

    csc = {"osFamily": "6"}
    a = send_json(emu.endpoint, emu.account, emu.key, "POST", "/pools",
                  {"id": "csc", "vmSize": "small", "cloudServiceConfiguration": csc})
    assert a.status == 400 and "retired" in a.json()["message"]["value"] and "2024" in a.json()["message"]["value"]
    a = send_json(emu.endpoint, emu.account, emu.key, "POST", "/jobs", {"id": "cscjob", "poolInfo": {
        "autoPoolSpecification": {"poolLifetimeOption": "job", "pool": {"vmSize": "small",
                                                                         "cloudServiceConfiguration": csc}}}})
    assert a.status == 400 and "retired" in a.json()["message"]["value"]
    a = send_json(emu.endpoint, emu.account, emu.key, "POST", "/jobs", {"id": "nolife", "poolInfo": {
        "autoPoolSpecification": {"poolLifetimeOption": "jobSchedule", "pool": {"vmSize": "small"}}}})
    assert a.status == 400 and a.json()["code"] == "InvalidPropertyValue"
    assert {"csc", "cscjob", "nolife"}.isdisjoint(pool_ids(client) | {j.id for j in client.list_jobs()})


# ------------------------------------------------------------------------------------------- job manager
def test_job_manager_task_ends_its_job(client: Any) -> None:
    from azure.batch import models as m

    client.create_job(m.BatchJobCreateOptions(
        id="jm", pool_info=m.BatchPoolInfo(pool_id="fixed"),
        job_manager_task=m.BatchJobManagerTask(id="manager", command_line="/bin/sh -c 'echo managing'")))
    job = wait_for("the job to complete", lambda: (j := client.get_job("jm")).state == "completed" and j)
    assert job.execution_info.termination_reason == "JMComplete"
    manager = client.get_task("jm", "manager")
    assert manager.execution_info.exit_code == 0
    assert b"".join(client.download_task_file("jm", "manager", "stdout.txt")) == b"managing\n"


# ------------------------------------------------------------------------------------------- job schedules
def test_job_schedule_creates_jobs_on_its_recurrence_until_terminated(client: Any) -> None:
    from azure.batch import models as m

    spec = m.BatchJobSpecification(
        pool_info=m.BatchPoolInfo(auto_pool_specification=m.BatchAutoPoolSpecification(
            auto_pool_id_prefix="sched", pool_lifetime_option="jobschedule", pool=small_pool(m))),
        job_manager_task=m.BatchJobManagerTask(id="jm", command_line="/bin/sh -c 'echo $AZ_BATCH_JOB_ID'"))
    client.create_job_schedule(m.BatchJobScheduleCreateOptions(
        id="every2s", schedule=m.BatchJobScheduleConfiguration(recurrence_interval="PT2S"), job_specification=spec))
    started = time.monotonic()
    three = wait_for("three jobs", lambda: len(ids := sorted(j.id for j in client.list_jobs_from_schedule(
        "every2s"))) >= 3 and ids, timeout=30)
    assert three[:3] == ["every2s:job-1", "every2s:job-2", "every2s:job-3"]
    assert time.monotonic() - started >= 4  # on the recurrence, not all at once
    s = client.get_job_schedule("every2s")
    assert s.execution_info.recent_job.id in three and s.execution_info.next_run_time is not None
    pools_of = {client.get_job(j).execution_info.pool_id for j in three}
    assert len(pools_of) == 1 and next(iter(pools_of)).startswith("sched_")  # one pool for the schedule's jobs
    out = b"".join(client.download_task_file("every2s:job-1", "jm", "stdout.txt")).decode()
    assert out == "every2s:job-1\n"

    client.disable_job_schedule("every2s")
    assert client.get_job_schedule("every2s").state == "disabled"
    client.enable_job_schedule("every2s")
    client.begin_terminate_job_schedule("every2s", polling_interval=0.2).result()
    s = wait_for("completed", lambda: (x := client.get_job_schedule("every2s")).state == "completed" and x)
    assert s.execution_info.next_run_time is None and s.execution_info.end_time is not None
    count = len(list(client.list_jobs_from_schedule("every2s")))
    time.sleep(3)
    assert len(list(client.list_jobs_from_schedule("every2s"))) == count  # terminate stopped it
    wait_for("the schedule's auto pool to go", lambda: not pools_of & pool_ids(client))

    client.begin_delete_job_schedule("every2s", polling_interval=0.2).result()
    assert not [j for j in client.list_jobs() if j.id.startswith("every2s:")]
    assert "every2s" not in {x.id for x in client.list_job_schedules()}


def test_job_schedule_window_until_and_bad_input(client: Any, emu: EmulatorProcess) -> None:
    from datetime import datetime, timedelta, timezone

    from azure.batch import models as m

    later = datetime.now(timezone.utc) + timedelta(hours=1)
    client.create_job_schedule(m.BatchJobScheduleCreateOptions(
        id="later", schedule=m.BatchJobScheduleConfiguration(do_not_run_until=later),
        job_specification=m.BatchJobSpecification(pool_info=m.BatchPoolInfo(pool_id="fixed"))))
    s = client.get_job_schedule("later")
    assert abs((s.execution_info.next_run_time - later).total_seconds()) < 1
    time.sleep(1)
    assert list(client.list_jobs_from_schedule("later")) == []
    a = send_json(emu.endpoint, emu.account, emu.key, "PATCH", "/jobschedules/later",
                  {"schedule": {"recurrenceInterval": "PT3S"}})
    assert a.status == 200
    wait_for("a job", lambda: list(client.list_jobs_from_schedule("later")), timeout=10)  # due at once now
    bad = [{"id": "bad1", "schedule": {"recurrenceInterval": "soon"}, "jobSpecification": {
        "poolInfo": {"poolId": "fixed"}}}, {"id": "bad2", "schedule": {}, "jobSpecification": {}},
        {"id": "bad3", "schedule": {"doNotRunUntil": "tomorrow"}, "jobSpecification": {"poolInfo": {"poolId": "x"}}}]
    for body in bad:
        a = send_json(emu.endpoint, emu.account, emu.key, "POST", "/jobschedules", body)
        assert a.status == 400, body
    a = send_json(emu.endpoint, emu.account, emu.key, "POST", "/jobschedules", {
        "id": "bad4", "schedule": {}, "jobSpecification": {"poolInfo": {"poolId": "fixed"},
                                                           "networkConfiguration": {"subnetId": "x"}}})
    assert (a.status, a.code) == (501, "NotSupportedByEmulator")  # refused in a job specification as in a job
    assert {"bad1", "bad2", "bad3", "bad4"}.isdisjoint(x.id for x in client.list_job_schedules())
    client.begin_delete_job_schedule("later", polling_interval=0.2).result()


def test_a_job_schedule_survives_a_restart_without_a_second_job(tmp_path: Any) -> None:
    """Schedules are kept in the state dir like jobs: after a restart the hourly schedule still has its one
    job, and its next run is still an hour away (no job created twice)."""
    from azure.batch import BatchClient
    from azure.batch import models as m
    from azure.core.credentials import AzureNamedKeyCredential

    def started() -> tuple[EmulatorProcess, Any]:
        e = EmulatorProcess(tmp_path / "state", storage="none", pools=("p:1",)).start()
        return e, BatchClient(e.endpoint, AzureNamedKeyCredential(e.account, e.key))

    e, client = started()
    try:
        client.create_job_schedule(m.BatchJobScheduleCreateOptions(
            id="hourly", schedule=m.BatchJobScheduleConfiguration(recurrence_interval="PT1H"),
            job_specification=m.BatchJobSpecification(pool_info=m.BatchPoolInfo(pool_id="p"))))
        wait_for("the first job", lambda: list(client.list_jobs_from_schedule("hourly")))
        next_run = client.get_job_schedule("hourly").execution_info.next_run_time
    finally:
        e.stop()
    e, client = started()
    try:
        time.sleep(1)  # a few ticks of the clock
        s = client.get_job_schedule("hourly")
        assert s.state == "active" and s.execution_info.next_run_time == next_run
        assert [j.id for j in client.list_jobs_from_schedule("hourly")] == ["hourly:job-1"]
    finally:
        e.stop()
