"""The full Batch workflow written against azure-batch 14.2 (BatchServiceClient, the API of the official
samples), run by tests/test_emulator_sdk14.py with the .venvs/batch14 interpreter. Reads the emulator's
export variables; prints one JSON object of what it saw; exits non-zero on any SDK error."""
from __future__ import annotations

import json
import os
from datetime import datetime, timedelta, timezone

import azure.batch.models as bm
import waiting  # tests/clients/waiting.py, beside this script
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials
from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

TIMEOUT_S = 180


def wait_for(what, check):
    return waiting.wait_for(what, check, TIMEOUT_S)


def main() -> None:
    env = os.environ
    client = BatchServiceClient(SharedKeyCredentials(env["AZURE_BATCH_ACCOUNT"], env["AZURE_BATCH_ACCESS_KEY"]),
                                batch_url=env["AZURE_BATCH_ENDPOINT"])
    svc = BlobServiceClient.from_connection_string(env["AZURE_STORAGE_CONNECTION_STRING"])
    for name in ("inputs14", "outputs14"):
        svc.create_container(name)
    svc.get_blob_client("inputs14", "input.txt").upload_blob(b"hello from storage\n")
    expiry = datetime.now(timezone.utc) + timedelta(hours=1)
    out_sas = generate_container_sas(svc.account_name, "outputs14", account_key=svc.credential.account_key,
                                     permission=ContainerSasPermissions(write=True, create=True), expiry=expiry)
    outputs = f"{svc.url.rstrip('/')}/outputs14?{out_sas}"

    client.pool.add(bm.PoolAddParameter(
        id="wf14", vm_size="standard_d2s_v3", target_dedicated_nodes=3, enable_inter_node_communication=True,
        task_slots_per_node=1,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.ImageReference(publisher="canonical", offer="ubuntu", sku="22_04-lts"),
            node_agent_sku_id="batch.node.ubuntu 22.04"),
        start_task=bm.StartTask(command_line='/bin/bash -c "echo started > $AZ_BATCH_NODE_SHARED_DIR/up"',
                                wait_for_success=True)))
    nodes = wait_for("3 idle nodes", lambda: (lambda ns: ns if len(ns) == 3 and all(
        n.state == bm.ComputeNodeState.idle for n in ns) else None)(list(client.compute_node.list("wf14"))))

    client.job.add(bm.JobAddParameter(
        id="wfjob14", pool_info=bm.PoolInformation(pool_id="wf14"),
        job_preparation_task=bm.JobPreparationTask(
            command_line='/bin/bash -c "echo prepared >> $AZ_BATCH_NODE_SHARED_DIR/prep.log"'),
        job_release_task=bm.JobReleaseTask(
            command_line='/bin/bash -c "echo released >> $AZ_BATCH_NODE_SHARED_DIR/release.log"')))
    tasks = [bm.TaskAddParameter(
        id=f"t{i:02d}", command_line=f'/bin/bash -c "cat input.txt > out.txt; echo task {i} >> out.txt"',
        resource_files=[bm.ResourceFile(auto_storage_container_name="inputs14")],
        output_files=[bm.OutputFile(file_pattern="out.txt", destination=bm.OutputFileDestination(
            container=bm.OutputFileBlobContainerDestination(container_url=outputs, path=f"t{i:02d}/out.txt")),
            upload_options=bm.OutputFileUploadOptions(upload_condition=bm.OutputFileUploadCondition.task_success))])
        for i in range(20)]
    added = client.task.add_collection("wfjob14", tasks)
    done = wait_for("20 completed tasks", lambda: (lambda ts: ts if len(ts) == 20 else None)(list(client.task.list(
        "wfjob14", task_list_options=bm.TaskListOptions(filter="state eq 'completed'")))))

    client.task.add("wfjob14", bm.TaskAddParameter(
        id="mpi", command_line="/bin/bash -c 'mpiexec -hosts $AZ_BATCH_HOST_LIST -n 3 -ppn 1 hostname'",
        multi_instance_settings=bm.MultiInstanceSettings(
            number_of_instances=3, coordination_command_line='/bin/bash -c "echo coordination on $(hostname)"')))
    mpi = wait_for("the MPI task", lambda: (lambda t: t if t.state == bm.TaskState.completed else None)(
        client.task.get("wfjob14", "mpi")))
    stdout = b"".join(client.file.get_from_task("wfjob14", "mpi", "stdout.txt")).decode()
    subtasks = client.task.list_subtasks("wfjob14", "mpi").value
    sub = subtasks[0]
    sub_stdout = b"".join(client.file.get_from_compute_node(
        "wf14", sub.node_info.node_id, f"{sub.node_info.task_root_directory}/stdout.txt")).decode()

    client.job.terminate("wfjob14")
    wait_for("the job to complete", lambda: client.job.get("wfjob14").state == bm.JobState.completed)
    status = list(client.job.list_preparation_and_release_task_status("wfjob14"))
    blobs = svc.get_container_client("outputs14")
    print(json.dumps({
        "nodes": [n.id for n in nodes], "start_exit": [n.start_task_info.exit_code for n in nodes],
        "added": sorted(r.task_id for r in added.value if r.status == bm.TaskAddStatus.success),
        "exit_codes": sorted({t.execution_info.exit_code for t in done}),
        "outputs": sorted(b.name for b in blobs.list_blobs()),
        "t07": blobs.download_blob("t07/out.txt").readall().decode(),
        "mpi_exit": mpi.execution_info.exit_code, "mpi_stdout": stdout,
        "subtasks": sorted(s.id for s in subtasks), "sub_exit": [s.exit_code for s in subtasks],
        "sub_stdout": sub_stdout,
        "release_exit": sorted({s.job_release_task_execution_info.exit_code for s in status}),
        "prep_exit": sorted({s.job_preparation_task_execution_info.exit_code for s in status}),
    }))


if __name__ == "__main__":
    main()
