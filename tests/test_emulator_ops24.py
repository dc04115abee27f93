"""Issue 24: the operations `mpibatch emulate` used to refuse with 501, each through the unchanged azure-batch
15.1 SDK, live over HTTP against a real `mpibatch emulate` subprocess (and a few with the SDK's async client).

The rules come from the Batch REST reference and docs: "Create an automatic formula for scaling compute
nodes in a Batch pool" (the formula's variables and sample operations, the results string), "Batch node
states" (rebooting / reimaging / deallocating pass, the task is requeued or ended per the option), "Mount a
virtual file system on a Batch pool" (a failed mount leaves the node unusable)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.infra.emulator import EmulatorProcess
from tests.infra.emulator import wait_for as shared_wait_for
from tests.infra.fixtures import azurite_missing, require

pytestmark = [pytest.mark.azure]
VM = "standard_d2s_v3"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    return shared_wait_for(what, check, timeout)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    emu = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.fixture
def stored(tmp_path: Path) -> Iterator[EmulatorProcess]:
    """With its Azurite (node logs, mounts)."""
    require(azurite_missing(), "Azurite")
    emu = EmulatorProcess(tmp_path / "state").start()
    try:
        yield emu
    finally:
        emu.stop()


def client_of(emu: EmulatorProcess) -> Any:
    return emu.batch_client()


def pool(client: Any, pool_id: str, nodes: int, **extra: Any) -> list[Any]:
    from azure.batch import models as m

    client.create_pool(m.BatchPoolCreateOptions(id=pool_id, vm_size=VM, target_dedicated_nodes=nodes, **extra))
    return wait_for(f"{nodes} idle nodes", lambda: (lambda ns: (ns,) if len(ns) == nodes and all(
        n.state == "idle" for n in ns) else None)(list(client.list_nodes(pool_id))))[0]


def error_code(exc: Any) -> str:
    return exc.value.error.code if exc.value.error else ""


# ---------------------------------------------------------------------------------------------- pools
def test_pool_update_and_replace_properties(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    pool(client, "p", 0, start_task=m.BatchStartTask(command_line="/bin/true"))
    client.update_pool("p", m.BatchPoolUpdateOptions(
        metadata=[m.BatchMetadataItem(name="owner", value="team-a")],
        start_task=m.BatchStartTask(command_line="/bin/echo updated", wait_for_success=False)))
    got = client.get_pool("p")
    assert [(x.name, x.value) for x in got.metadata] == [("owner", "team-a")]
    assert got.start_task.command_line == "/bin/echo updated"
    client.replace_pool_properties("p", m.BatchPoolReplaceOptions(
        metadata=[m.BatchMetadataItem(name="k", value="v")], application_package_references=[]))
    got = client.get_pool("p")
    assert got.start_task is None  # replace: a start task left out is removed
    assert [(x.name, x.value) for x in got.metadata] == [("k", "v")]


def test_resize_grow_shrink_and_stop(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    pool(client, "r", 1)
    client.begin_resize_pool("r", m.BatchPoolResizeOptions(target_dedicated_nodes=3), polling_interval=0.2).result()
    got = client.get_pool("r")
    assert got.allocation_state == "steady" and not got.resize_errors and got.current_dedicated_nodes == 3
    assert len(list(client.list_nodes("r"))) == 3
    client.begin_resize_pool("r", m.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0.2).result()
    wait_for("one node left", lambda: len(list(client.list_nodes("r"))) == 1)
    assert client.get_pool("r").current_dedicated_nodes == 1
    client.begin_stop_pool_resize("r", polling_interval=0.2).result()
    assert client.get_pool("r").allocation_state == "steady"


def test_shrink_with_taskcompletion_waits_for_the_task(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    pool(client, "s", 1)
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="s")))
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/sleep 2"))
    wait_for("running", lambda: client.get_task("j", "t").state == "running")
    client.begin_resize_pool("s", m.BatchPoolResizeOptions(target_dedicated_nodes=0,
                                                           node_deallocation_option="taskcompletion"))
    assert client.get_pool("s").allocation_state == "resizing"
    assert [n.state for n in client.list_nodes("s")] == ["leavingpool"]
    wait_for("pool steady", lambda: client.get_pool("s").allocation_state == "steady")
    assert client.get_task("j", "t").execution_info.exit_code == 0  # ran to its end
    assert list(client.list_nodes("s")) == []


def test_autoscale_enable_evaluate_disable(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError

    client = client_of(emulator)
    client.create_pool(m.BatchPoolCreateOptions(id="a", vm_size=VM, target_dedicated_nodes=0))
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="a")))
    for i in range(3):  # no node yet: they stay active and count as pending
        client.create_task("j", m.BatchTaskCreateOptions(id=f"t{i}", command_line="/bin/true"))
    formula = ("pending = $PendingTasks.GetSample(1);\n"
               "$TargetDedicatedNodes = min(2, max(pending));\n$NodeDeallocationOption = taskcompletion;")
    client.enable_pool_auto_scale("a", m.BatchPoolEnableAutoScaleOptions(
        auto_scale_formula=formula, auto_scale_evaluation_interval=timedelta(minutes=5)))
    got = client.get_pool("a")
    assert got.enable_auto_scale and got.auto_scale_run.error is None
    assert got.auto_scale_run.results.startswith("$TargetDedicatedNodes=2;$TargetLowPriorityNodes=0;"
                                                 "$NodeDeallocationOption=taskcompletion;pending=[3]")
    wait_for("the tasks ran on the nodes autoscale added", lambda: all(
        t.state == "completed" for t in client.list_tasks("j")))
    assert len(list(client.list_nodes("a"))) == 2
    run = client.evaluate_pool_auto_scale("a", m.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = $CurrentDedicatedNodes + avg({1, 3}); n = $ActiveTasks.Count();"))
    assert run.results.startswith("$TargetDedicatedNodes=4;") and run.error is None
    assert client.get_pool("a").target_dedicated_nodes == 2  # evaluate changes nothing
    run = client.evaluate_pool_auto_scale("a", m.BatchPoolEvaluateAutoScaleOptions(
        auto_scale_formula="$TargetDedicatedNodes = avg($CPUPercent.GetSample(TimeInterval_Hour, 70));"))
    assert run.error.code == "InsufficientSampleData"
    with pytest.raises(HttpResponseError) as bad:
        client.evaluate_pool_auto_scale("a", m.BatchPoolEvaluateAutoScaleOptions(auto_scale_formula="$X = = 1"))
    assert bad.value.status_code == 400 and error_code(bad) == "InvalidAutoScaleFormula"
    with pytest.raises(HttpResponseError) as manual:
        client.begin_resize_pool("a", m.BatchPoolResizeOptions(target_dedicated_nodes=1))
    assert manual.value.status_code == 409
    client.disable_pool_auto_scale("a")
    assert client.get_pool("a").enable_auto_scale is False
    client.begin_resize_pool("a", m.BatchPoolResizeOptions(target_dedicated_nodes=1), polling_interval=0.2).result()
    wait_for("one node", lambda: len(list(client.list_nodes("a"))) == 1)


def test_node_counts_and_usage_metrics(emulator: EmulatorProcess) -> None:
    client = client_of(emulator)
    pool(client, "c", 2)
    counts = {c.pool_id: c for c in client.list_pool_node_counts()}
    assert counts["c"].dedicated.idle == 2 and counts["c"].dedicated.total == 2
    assert counts["c"].low_priority.total == 0
    assert list(client.list_pool_usage_metrics()) == []  # documented: no billing offline


# ---------------------------------------------------------------------------------------------- nodes
def test_reboot_requeues_the_running_task_and_reruns_the_start_task(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    [node] = pool(client, "n", 1, start_task=m.BatchStartTask(
        command_line='/bin/bash -c "echo boot >> $AZ_BATCH_NODE_SHARED_DIR/boots"', wait_for_success=True))
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="n")))
    client.create_task("j", m.BatchTaskCreateOptions(
        id="t", command_line='/bin/bash -c "test -e $AZ_BATCH_NODE_SHARED_DIR/second || '
                             '{ touch $AZ_BATCH_NODE_SHARED_DIR/second; sleep 30; }"'))
    wait_for("running", lambda: client.get_task("j", "t").state == "running" and
             b"second" in b"".join(f.name.encode() for f in client.list_node_files("n", node.id, recursive=True)))
    client.begin_reboot_node("n", node.id, {"nodeRebootOption": "requeue"}, polling_interval=0.2).result()
    done = wait_for("the task ran again", lambda: (lambda t: t if t.state == "completed" else None)(
        client.get_task("j", "t")))
    assert done.execution_info.requeue_count == 1 and done.execution_info.exit_code == 0
    assert b"".join(client.download_node_file("n", node.id, "shared/boots")) == b"boot\nboot\n"


def test_reboot_terminate_ends_the_task(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    [node] = pool(client, "n", 1)
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="n")))
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/sleep 30"))
    wait_for("running", lambda: client.get_task("j", "t").state == "running")
    client.begin_reboot_node("n", node.id, {"nodeRebootOption": "terminate"}, polling_interval=0.2).result()
    t = wait_for("ended", lambda: (lambda t: t if t.state == "completed" else None)(client.get_task("j", "t")))
    assert t.execution_info.failure_info.code == "TaskEnded"
    wait_for("idle again", lambda: client.get_node("n", node.id).state == "idle")


def test_reimage_deallocate_start_and_scheduling(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    [node] = pool(client, "n", 1)
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="n")))
    client.create_task("j", m.BatchTaskCreateOptions(id="t1", command_line="/bin/true"))
    wait_for("t1 done", lambda: client.get_task("j", "t1").state == "completed")
    assert any(f.name.startswith("workitems/") for f in client.list_node_files("n", node.id, recursive=True))
    client.begin_reimage_node("n", node.id, {"nodeReimageOption": "requeue"}, polling_interval=0.2).result()
    wait_for("idle after reimage", lambda: client.get_node("n", node.id).state == "idle")
    assert not any(f.name.startswith("workitems/j") for f in client.list_node_files("n", node.id, recursive=True))
    client.begin_deallocate_node("n", node.id, {"nodeDeallocateOption": "requeue"}, polling_interval=0.2).result()
    assert client.get_node("n", node.id).state == "deallocated"
    client.begin_start_node("n", node.id, polling_interval=0.2).result()
    wait_for("idle after start", lambda: client.get_node("n", node.id).state == "idle")
    client.disable_node_scheduling("n", node.id, m.BatchNodeDisableSchedulingOptions(
        node_disable_scheduling_option="taskcompletion"))
    assert client.get_node("n", node.id).scheduling_state == "disabled"
    client.create_task("j", m.BatchTaskCreateOptions(id="t2", command_line="/bin/true"))
    time.sleep(1.5)
    assert client.get_task("j", "t2").state == "active"  # no node takes it
    client.enable_node_scheduling("n", node.id)
    wait_for("t2 done", lambda: client.get_task("j", "t2").state == "completed")


def test_node_users_and_a_task_running_as_one(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    client = client_of(emulator)
    [node] = pool(client, "u", 1)
    client.create_node_user("u", node.id, m.BatchNodeUserCreateOptions(name="alice", password="S3cret!x",
                                                                       is_admin=False))
    with pytest.raises(HttpResponseError) as dup:
        client.create_node_user("u", node.id, m.BatchNodeUserCreateOptions(name="alice", password="x"))
    assert dup.value.status_code == 409
    client.replace_node_user("u", node.id, "alice", m.BatchNodeUserReplaceOptions(password="N3w!pass"))
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="u")))
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true",
                                                     user_identity=m.UserIdentity(username="alice")))
    t = wait_for("done", lambda: (lambda t: t if t.state == "completed" else None)(client.get_task("j", "t")))
    assert t.execution_info.exit_code == 0
    client.delete_node_user("u", node.id, "alice")
    with pytest.raises(ResourceNotFoundError):
        client.delete_node_user("u", node.id, "alice")
    assert b"S3cret" not in (Path(emulator.state_dir) / "journal.jsonl").read_bytes()


def test_remote_login_extensions_and_file_deletes(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    client = client_of(emulator)
    [node] = pool(client, "x", 1, virtual_machine_configuration=m.VirtualMachineConfiguration(
        image_reference=m.BatchVmImageReference(publisher="canonical", offer="ubuntu", sku="22_04-lts"),
        node_agent_sku_id="batch.node.ubuntu 22.04",
        extensions=[m.VMExtension(name="monitor", publisher="Microsoft.Azure.Monitor", type="AzureMonitorLinuxAgent",
                                  type_handler_version="1.0")]))
    login = client.get_node_remote_login_settings("x", node.id)
    assert login.remote_login_ip_address == "127.0.0.1" and login.remote_login_port >= 50000
    assert "mpibatch emulate" in login["emulated"]
    exts = list(client.list_node_extensions("x", node.id))
    # the pool's own, then the node agent's (the service lists it too)
    assert [e.vm_extension.name for e in exts] == ["monitor", "batchNodeExtension"]
    assert all(e.provisioning_state == "Succeeded" for e in exts)
    assert (exts[1].vm_extension.publisher, exts[1].vm_extension.type) == ("Microsoft.Azure.Extensions", "CustomScript")
    assert client.get_node_extension("x", node.id, "monitor").vm_extension.publisher == "Microsoft.Azure.Monitor"
    with pytest.raises(ResourceNotFoundError):
        client.get_node_extension("x", node.id, "nope")
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="x")))
    outside = emulator.state_dir.parent / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    client.create_task("j", m.BatchTaskCreateOptions(
        id="t", command_line=f'/bin/bash -c "echo a > out.txt; echo b > $AZ_BATCH_NODE_SHARED_DIR/s.txt; '
                             f'mkdir -p sub/deeper; echo c > sub/deeper/c.txt; ln -s {outside} link"'))
    wait_for("done", lambda: client.get_task("j", "t").state == "completed")
    for path in ("wd/link/keep.txt", "wd/link"):  # never through the link; the link itself may go
        try:
            client.delete_task_file("j", "t", path, recursive=True)
        except ResourceNotFoundError:
            pass
    assert (outside / "keep.txt").read_text() == "keep"
    with pytest.raises(HttpResponseError) as full:
        client.delete_task_file("j", "t", "wd/sub")
    assert (full.value.status_code, error_code(full)) == (409, "DirectoryNotEmpty")
    client.delete_task_file("j", "t", "wd/sub", recursive=True)
    assert not [f for f in client.list_task_files("j", "t", recursive=True) if f.name.startswith("wd/sub")]
    client.delete_task_file("j", "t", "wd/out.txt")
    with pytest.raises(ResourceNotFoundError):
        client.get_task_file_properties("j", "t", "wd/out.txt")
    client.delete_node_file("x", node.id, "shared/s.txt")
    with pytest.raises(ResourceNotFoundError):
        client.get_node_file_properties("x", node.id, "shared/s.txt")
    with pytest.raises(ResourceNotFoundError):
        client.delete_node_file("x", node.id, "shared/s.txt")


def test_upload_batch_service_logs(stored: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    client = client_of(stored)
    [node] = pool(client, "l", 1, start_task=m.BatchStartTask(command_line="/bin/echo hello-start"))
    svc = BlobServiceClient.from_connection_string(stored.connection_string)
    svc.create_container("logs")
    sas = generate_container_sas(svc.account_name, "logs", account_key=svc.credential.account_key,
                                 permission=ContainerSasPermissions(write=True, create=True),
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    result = client.upload_node_logs("l", node.id, m.UploadBatchServiceLogsOptions(
        container_url=f"{svc.url.rstrip('/')}/logs?{sas}", start_time=datetime.now(timezone.utc) - timedelta(hours=1)))
    # the service answers at once and uploads after: the blobs follow the answer
    def three_blobs() -> list[str] | None:
        names = sorted(b.name for b in svc.get_container_client("logs").list_blobs())
        return names if len(names) == 3 else None

    blobs = wait_for("3 log blobs", three_blobs)
    assert result.number_of_files_uploaded == len(blobs) == 3
    assert all(b.startswith(result.virtual_directory_name) for b in blobs)
    stdout = svc.get_blob_client("logs", f"{result.virtual_directory_name}startup/stdout.txt").download_blob()
    assert stdout.readall() == b"hello-start\n"


# ---------------------------------------------------------------------------------------------- jobs and tasks
def test_job_update_replace_and_task_update(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    client.create_pool(m.BatchPoolCreateOptions(id="p", vm_size=VM, target_dedicated_nodes=0))
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p"), priority=5,
                                              metadata=[m.BatchMetadataItem(name="a", value="1")]))
    client.update_job("j", m.BatchJobUpdateOptions(priority=100))
    got = client.get_job("j")
    assert got.priority == 100 and [x.name for x in got.metadata] == ["a"]  # patch keeps the rest
    client.replace_job("j", m.BatchJob(pool_info=m.BatchPoolInfo(pool_id="p"),
                                       constraints=m.BatchJobConstraints(max_task_retry_count=2)))
    got = client.get_job("j")
    assert got.priority == 0 and not got.metadata and got.constraints.max_task_retry_count == 2
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/true"))
    client.replace_task("j", "t", m.BatchTask(constraints=m.BatchTaskConstraints(
        max_wall_clock_time=timedelta(minutes=7), max_task_retry_count=4)))
    t = client.get_task("j", "t")
    assert t.constraints.max_wall_clock_time == timedelta(minutes=7) and t.constraints.max_task_retry_count == 4


# ---------------------------------------------------------------------------------------------- defect 3
def test_nodes_report_inbound_endpoints_and_ipv6(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    nodes = pool(client, "e", 2, network_configuration=m.NetworkConfiguration(
        endpoint_configuration=m.BatchPoolEndpointConfiguration(inbound_nat_pools=[m.BatchInboundNatPool(
            name="ssh", protocol="tcp", backend_port=22, frontend_port_range_start=15000,
            frontend_port_range_end=15100)]),
        public_ip_address_configuration=m.BatchPublicIpAddressConfiguration(ip_families=["IPv4", "IPv6"])))
    eps = sorted((n.endpoint_configuration.inbound_endpoints[0] for n in nodes), key=lambda e: e.frontend_port)
    assert [(e.name, e.frontend_port, e.backend_port) for e in eps] == [("ssh.0", 15000, 22), ("ssh.1", 15001, 22)]
    assert all(n.ipv6_address for n in nodes)
    # one endpoint per IP family: the second on the node's IPv6 address; remote login names it too
    for n in nodes:
        assert [e.public_ip_address for e in n.endpoint_configuration.inbound_endpoints] == ["127.0.0.1",
                                                                                            n.ipv6_address]
        login = client.get_node_remote_login_settings("e", n.id)
        assert login.ipv6_remote_login_ip_address == n.ipv6_address and login.ipv6_remote_login_port


# ---------------------------------------------------------------------------------------------- mounts
def test_blob_mount_synced_down_and_up(stored: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.storage.blob import BlobServiceClient

    client = client_of(stored)
    svc = BlobServiceClient.from_connection_string(stored.connection_string)
    svc.create_container("shared")
    svc.get_blob_client("shared", "in/data.txt").upload_blob(b"mounted\n")
    [node] = pool(client, "m", 1, mount_configuration=[m.MountConfiguration(
        azure_blob_file_system_configuration=m.AzureBlobFileSystemConfiguration(
            account_name=svc.account_name, container_name="shared", account_key=svc.credential.account_key,
            relative_mount_path="data"))])
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="m")))
    client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line=(
        '/bin/bash -c "cat $AZ_BATCH_NODE_MOUNTS_DIR/data/in/data.txt > $AZ_BATCH_NODE_MOUNTS_DIR/data/out.txt"')))
    t = wait_for("done", lambda: (lambda t: t if t.state == "completed" else None)(client.get_task("j", "t")))
    assert t.execution_info.exit_code == 0
    blob = svc.get_blob_client("shared", "out.txt")
    wait_for("out.txt synced up", lambda: blob.exists(), timeout=20)
    assert blob.download_blob().readall() == b"mounted\n"
    assert client.get_pool("m").mount_configuration[0].azure_blob_file_system_configuration.container_name == "shared"
    client.create_pool(m.BatchPoolCreateOptions(id="wrongkey", vm_size=VM, target_dedicated_nodes=1,
                                                mount_configuration=[
        m.MountConfiguration(azure_blob_file_system_configuration=m.AzureBlobFileSystemConfiguration(
            account_name=svc.account_name, container_name="shared", account_key="d3Jvbmc=", relative_mount_path="d"))]))
    bad = wait_for("unusable", lambda: (lambda ns: ns[0] if ns and ns[0].state == "unusable" else None)(
        list(client.list_nodes("wrongkey"))))
    assert bad.errors[0].code == "MountConfigurationError" and "authentication failed" in bad.errors[0].message
    assert "d3Jvbmc" not in bad.errors[0].message


def test_mounts_this_machine_cannot_make_leave_the_node_unusable(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m

    client = client_of(emulator)
    client.create_pool(m.BatchPoolCreateOptions(id="nfs", vm_size=VM, target_dedicated_nodes=1, mount_configuration=[
        m.MountConfiguration(nfs_mount_configuration=m.NfsMountConfiguration(source="10.0.0.4:/exports",
                                                                             relative_mount_path="nfs"))]))
    node = wait_for("unusable", lambda: (lambda ns: ns[0] if ns and ns[0].state == "unusable" else None)(
        list(client.list_nodes("nfs"))))
    assert node.errors[0].code == "MountConfigurationError" and "nfs" in node.errors[0].message
    assert client.get_pool("nfs").mount_configuration[0].nfs_mount_configuration.source == "10.0.0.4:/exports"


# ---------------------------------------------------------------------------------------------- async
def test_async_client_pool_node_and_job_operations(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.batch.aio import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential

    sync = client_of(emulator)
    [node] = pool(sync, "aio", 1)

    async def run() -> tuple[Any, Any, Any, list[Any]]:
        async with BatchClient(emulator.endpoint, AzureNamedKeyCredential(emulator.account, emulator.key)) as c:
            await c.update_pool("aio", m.BatchPoolUpdateOptions(metadata=[m.BatchMetadataItem(name="z", value="1")]))
            await c.enable_pool_auto_scale("aio", m.BatchPoolEnableAutoScaleOptions(
                auto_scale_formula="$TargetDedicatedNodes = 1;", auto_scale_evaluation_interval=timedelta(minutes=5)))
            run = await c.evaluate_pool_auto_scale("aio", m.BatchPoolEvaluateAutoScaleOptions(
                auto_scale_formula="$TargetDedicatedNodes = $CurrentDedicatedNodes * 3;"))
            await c.create_node_user("aio", node.id, m.BatchNodeUserCreateOptions(name="bob", password="pw!Pw1x"))
            poller = await c.begin_reboot_node("aio", node.id, {"nodeRebootOption": "requeue"}, polling_interval=0.2)
            await poller.result()
            login = await c.get_node_remote_login_settings("aio", node.id)
            counts = [x async for x in c.list_pool_node_counts()]
            return run, login, await c.get_pool("aio"), counts

    run, login, got, counts = asyncio.run(run())
    assert run.results.startswith("$TargetDedicatedNodes=3;")
    assert login.remote_login_ip_address == "127.0.0.1"
    assert got.metadata[0].name == "z" and got.enable_auto_scale
    assert counts[0].pool_id == "aio" and counts[0].dedicated.total == 1
    wait_for("idle after reboot", lambda: sync.get_node("aio", node.id).state == "idle")


def test_bad_autoscale_settings_are_refused_before_the_pool_exists(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    client = client_of(emulator)
    for extra, status, code in (
            ({}, 400, "MissingRequiredProperty"),
            ({"auto_scale_formula": "$TargetDedicatedNodes = 1;", "target_dedicated_nodes": 2}, 400,
             "InvalidPropertyValue"),
            ({"auto_scale_formula": "$TargetDedicatedNodes = (1;"}, 400, "InvalidAutoScaleFormula"),
            ({"auto_scale_formula": "$TargetDedicatedNodes = 1;",
              "auto_scale_evaluation_interval": timedelta(minutes=1)}, 400, "InvalidPropertyValue")):
        with pytest.raises(HttpResponseError) as bad:
            client.create_pool(m.BatchPoolCreateOptions(id="bad", vm_size=VM, enable_auto_scale=True, **extra))
        assert (bad.value.status_code, error_code(bad)) == (status, code), extra
        with pytest.raises(ResourceNotFoundError):
            client.get_pool("bad")


def test_job_disable_requeue_enable_move_pool_and_task_reactivate(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError

    client = client_of(emulator)
    pool(client, "p1", 1)
    pool(client, "p2", 1)
    client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="p1")))
    client.create_task("j", m.BatchTaskCreateOptions(id="slow", command_line="/bin/sleep 30"))
    wait_for("running", lambda: client.get_task("j", "slow").state == "running")
    client.begin_disable_job("j", m.BatchJobDisableOptions(disable_tasks="requeue"), polling_interval=0.2).result()
    assert client.get_job("j").state == "disabled"
    slow = client.get_task("j", "slow")
    assert slow.state == "active" and slow.execution_info.requeue_count == 1
    client.create_task("j", m.BatchTaskCreateOptions(id="fails", command_line="/bin/false"))
    time.sleep(1.5)
    assert {t.state for t in client.list_tasks("j")} == {"active"}  # a disabled job runs nothing
    client.update_job("j", m.BatchJobUpdateOptions(pool_info=m.BatchPoolInfo(pool_id="p2")))
    client.replace_task("j", "slow", m.BatchTask(constraints=m.BatchTaskConstraints(
        max_wall_clock_time=timedelta(seconds=1))))
    client.begin_enable_job("j", polling_interval=0.2).result()
    failed = wait_for("fails done", lambda: (lambda t: t if t.state == "completed" else None)(
        client.get_task("j", "fails")))
    assert failed.node_info.pool_id == "p2" and failed.execution_info.exit_code == 1
    with pytest.raises(HttpResponseError) as early:
        client.update_job("j", m.BatchJobUpdateOptions(pool_info=m.BatchPoolInfo(pool_id="p1")))
    assert (early.value.status_code, error_code(early)) == (409, "JobNotDisabled")
    client.reactivate_task("j", "fails")
    again = client.get_task("j", "fails")
    assert again.state in ("active", "preparing", "running", "completed") and again.execution_info.retry_count == 0
    wait_for("fails done again", lambda: client.get_task("j", "fails").state == "completed")
    ended = wait_for("slow ended by its new wall clock", lambda: (lambda t: t if t.state == "completed" else None)(
        client.get_task("j", "slow")))
    assert ended.execution_info.failure_info.code == "TaskEnded"


def test_a_shrink_under_way_when_the_emulator_is_killed_is_finished_on_restart(tmp_path: Path) -> None:
    """kill -9 while a node is `leavingpool` (its task running, taskcompletion): the restart on the state dir
    removes the node and leaves the pool steady, not resizing for ever."""
    import signal

    from azure.batch import models as m

    first = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        client = client_of(first)
        pool(client, "k", 2)
        client.create_job(m.BatchJobCreateOptions(id="j", pool_info=m.BatchPoolInfo(pool_id="k")))
        client.create_task("j", m.BatchTaskCreateOptions(id="t", command_line="/bin/sleep 60"))
        busy = wait_for("running", lambda: client.get_task("j", "t").node_info if client.get_task(
            "j", "t").state == "running" else None)
        client.begin_remove_nodes("k", m.BatchNodeRemoveOptions(node_ids=[busy.node_id],
                                                                node_deallocation_option="taskcompletion"))
        assert client.get_node("k", busy.node_id).state == "leavingpool"
    finally:
        assert first.proc is not None
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
    again = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        client = client_of(again)
        got = client.get_pool("k")
        assert got.allocation_state == "steady" and got.current_dedicated_nodes == 1
        assert [n.id for n in client.list_nodes("k")] != [busy.node_id]
        assert client.get_task("j", "t").execution_info.failure_info.code == "EmulatorRestarted"
    finally:
        again.stop()


def test_supported_images_and_applications(emulator: EmulatorProcess) -> None:
    from azure.core.exceptions import ResourceNotFoundError

    client = client_of(emulator)
    images = list(client.list_supported_images())
    assert images and {"linux", "windows"} == {i.os_type for i in images}
    assert "batch.node.ubuntu 22.04" in {i.node_agent_sku_id for i in images}
    assert list(client.list_applications()) == []
    with pytest.raises(ResourceNotFoundError) as e:
        client.get_application("app")
    assert error_code(e) == "ApplicationNotFound"


def test_mount_configurations_the_service_refuses_are_400_before_the_pool_exists(emulator: EmulatorProcess) -> None:
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

    client = client_of(emulator)
    blob = {"accountName": "a", "containerName": "c", "relativeMountPath": "d"}
    for mount, code in (({"nfsMountConfiguration": {"relativeMountPath": "n"}}, "MissingRequiredProperty"),
                        ({"azureBlobFileSystemConfiguration": {**blob, "accountKey": "k", "sasKey": "s"}},
                         "InvalidPropertyValue"),
                        ({"azureBlobFileSystemConfiguration": {**blob, "relativeMountPath": "../up",
                                                               "sasKey": "s"}}, "InvalidPropertyValue"),
                        ({}, "InvalidPropertyValue")):
        with pytest.raises(HttpResponseError) as bad:
            client.create_pool(m.BatchPoolCreateOptions(id="mnt", vm_size=VM, target_dedicated_nodes=1,
                                                        mount_configuration=[mount]))
        assert (bad.value.status_code, error_code(bad)) == (400, code), mount
        with pytest.raises(ResourceNotFoundError):
            client.get_pool("mnt")
