"""The azure-batch 15.1 SDK, unchanged, runs a full Batch workflow against a real `mpibatch emulate`
subprocess: a pool with a start task, a job with preparation and release tasks, 20 ordinary tasks with
resource files from storage and output files to storage (Azurite), one multi-instance MPI task with a
plain `mpiexec -hosts $AZ_BATCH_HOST_LIST` command line; then its subtasks, and a subtask's stdout read
through its node.

The rules checked come from the Batch docs: "Use multi-instance tasks to run MPI applications"
(coordination on every node, application on the primary, subtasks listed without the primary, their
files read from their node at nodeInfo.taskRootDirectory), "Run tasks concurrently" (taskSlotsPerNode),
"Job preparation and job release tasks" (preparation once per node before its first task of the job,
release on each node that ran one, at job end), "Persist task data to Azure Storage with the Batch
service API" (output files per uploadCondition).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from tests.infra.emulator import EmulatorProcess
from tests.infra.emulator import wait_for as _wait_for
from tests.infra.fixtures import azurite_missing, mpi_env, require

pytestmark = [pytest.mark.azure, pytest.mark.mpi]





def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    return _wait_for(what, check, timeout)


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    require(azurite_missing(), "Azurite")
    emu = EmulatorProcess(tmp_path / "state", env=mpi_env("mpich")).start()
    try:
        yield emu
    finally:
        emu.stop()


def storage_urls(conn: str) -> tuple[str, str]:
    """A read/list SAS URL of the `inputs` container (one blob in it) and a write SAS URL of `outputs`."""
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    svc = BlobServiceClient.from_connection_string(conn)
    for name in ("inputs", "outputs"):
        svc.create_container(name)
    svc.get_blob_client("inputs", "data/input.txt").upload_blob(b"hello from storage\n")
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)

    def url(name: str, perm: ContainerSasPermissions) -> str:
        sas = generate_container_sas(svc.account_name, name, account_key=svc.credential.account_key,
                                     permission=perm, expiry=expiry)
        return f"{svc.url.rstrip('/')}/{name}?{sas}"

    return (url("inputs", ContainerSasPermissions(read=True, list=True)),
            url("outputs", ContainerSasPermissions(write=True, create=True)))


def test_sdk15_full_workflow(emulator: EmulatorProcess) -> None:
    from azure.batch import BatchClient
    from azure.batch import models as m
    from azure.core.credentials import AzureNamedKeyCredential
    from azure.core.exceptions import ResourceNotFoundError
    from azure.storage.blob import BlobServiceClient

    client = BatchClient(emulator.endpoint, AzureNamedKeyCredential(emulator.account, emulator.key))
    inputs, outputs = storage_urls(emulator.connection_string)

    client.create_pool(m.BatchPoolCreateOptions(
        id="wf", vm_size="standard_d2s_v3", target_dedicated_nodes=3, enable_inter_node_communication=True,
        task_slots_per_node=1,
        virtual_machine_configuration=m.VirtualMachineConfiguration(
            image_reference=m.BatchVmImageReference(publisher="canonical", offer="ubuntu", sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04"),
        start_task=m.BatchStartTask(command_line='/bin/bash -c "echo started > $AZ_BATCH_NODE_SHARED_DIR/up"',
                                    wait_for_success=True)))
    assert client.pool_exists("wf")
    with pytest.raises(ResourceNotFoundError):  # 15.1's exception policy raises on HEAD 404 too
        client.pool_exists("nope")
    nodes = wait_for("3 idle nodes", lambda: (lambda ns: ns if len(ns) == 3 and all(
        n.state == "idle" for n in ns) else None)(list(client.list_nodes("wf"))))
    assert all(n.start_task_info.exit_code == 0 for n in nodes)

    client.create_job(m.BatchJobCreateOptions(
        id="wfjob", pool_info=m.BatchPoolInfo(pool_id="wf"),
        job_preparation_task=m.BatchJobPreparationTask(
            command_line='/bin/bash -c "echo prepared >> $AZ_BATCH_NODE_SHARED_DIR/prep.log"'),
        job_release_task=m.BatchJobReleaseTask(
            command_line='/bin/bash -c "echo released >> $AZ_BATCH_NODE_SHARED_DIR/release.log"')))

    tasks = [m.BatchTaskCreateOptions(
        id=f"t{i:02d}", command_line=f'/bin/bash -c "cat data/input.txt > out.txt; echo task {i} >> out.txt"',
        resource_files=[m.ResourceFile(storage_container_url=inputs, blob_prefix="data/")],
        output_files=[m.OutputFile(file_pattern="out.txt", destination=m.OutputFileDestination(
            container=m.OutputFileBlobContainerDestination(container_url=outputs, path=f"t{i:02d}/out.txt")),
            upload_options=m.OutputFileUploadConfiguration(upload_condition="taskSuccess"))])
        for i in range(20)]
    result = client.create_tasks("wfjob", tasks)
    assert sorted(r.task_id for r in result.result_values) == [f"t{i:02d}" for i in range(20)]
    assert all(r.status == "success" for r in result.result_values)

    done = wait_for("20 completed tasks", lambda: (lambda ts: ts if len(ts) == 20 else None)(
        list(client.list_tasks("wfjob", filter="state eq 'completed'"))))
    assert all(t.execution_info.exit_code == 0 and t.execution_info.result == "success" for t in done)
    blobs = BlobServiceClient.from_connection_string(emulator.connection_string).get_container_client("outputs")
    assert sorted(b.name for b in blobs.list_blobs()) == [f"t{i:02d}/out.txt" for i in range(20)]
    assert blobs.download_blob("t07/out.txt").readall() == b"hello from storage\ntask 7\n"
    ran_on = {t.node_info.node_id for t in done}
    assert ran_on <= {n.id for n in nodes}

    # One multi-instance MPI task, written as for a real pool: no mpibatch launcher anywhere.
    client.create_task("wfjob", m.BatchTaskCreateOptions(
        id="mpi", command_line="/bin/bash -c 'mpiexec -hosts $AZ_BATCH_HOST_LIST -n 3 -ppn 1 hostname'",
        multi_instance_settings=m.MultiInstanceSettings(
            number_of_instances=3, coordination_command_line='/bin/bash -c "echo coordination on $(hostname)"')))
    mpi = wait_for("the MPI task", lambda: (lambda t: t if t.state == "completed" else None)(
        client.get_task("wfjob", "mpi")), timeout=180)
    assert mpi.execution_info.exit_code == 0, mpi.execution_info
    stdout = b"".join(client.download_task_file("wfjob", "mpi", "stdout.txt")).decode()
    assert len([line for line in stdout.splitlines() if line.startswith("node-")]) >= 3, stdout
    subtasks = list(client.list_subtasks("wfjob", "mpi"))
    assert sorted(s.id for s in subtasks) == [1, 2]
    assert all(s.state == "completed" and s.exit_code == 0 for s in subtasks)
    assert len({s.node_info.node_id for s in subtasks} | {mpi.node_info.node_id}) == 3
    sub = subtasks[0]
    text = b"".join(client.download_node_file("wf", sub.node_info.node_id,
                                              f"{sub.node_info.task_root_directory}/stdout.txt")).decode()
    assert text.startswith("coordination on node-"), text

    # Job end: release on every node that ran a task, and the status list says so.
    # azure-batch 15.1 cannot send a terminate without options (no content type): give a reason
    client.begin_terminate_job("wfjob", {"terminateReason": "done"}, polling_interval=0.2).result()
    assert client.get_job("wfjob").state == "completed"
    status = list(client.list_job_preparation_and_release_task_status("wfjob"))
    assert {s.node_id for s in status} == {n.id for n in nodes} & ({t.node_info.node_id for t in done} |
                                                                   {mpi.node_info.node_id} |
                                                                   {s.node_info.node_id for s in subtasks})
    assert all(s.job_preparation_task_execution_info.exit_code == 0 for s in status)
    assert all(s.job_release_task_execution_info.exit_code == 0 for s in status)
    for s in status:
        log = b"".join(client.download_node_file("wf", s.node_id, "shared/release.log")).decode()
        assert log == "released\n"
        prep = b"".join(client.download_node_file("wf", s.node_id, "shared/prep.log")).decode()
        assert prep == "prepared\n"  # once per node, however many tasks it ran
