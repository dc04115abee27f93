"""Our own equivalents of the calls Microsoft's public Python samples for Batch make - the same operations, with
the same kinds of bodies, in the same order - written here, fetching nothing, for the msrest-style azure-batch
releases (6.0.0, 8.0.0, 11.0.0 with PYTHONPATH on .venvs/batch-sdks/<v>, and 14.2 in .venvs/batch14). One flow
per sample:

  hello      job with an auto pool (Cloud Services form refused, then a VM pool), task, stdout/stderr, delete
  resources  image picked from the supported list, pool with a start task and a resource file (created twice:
             PoolExists), job, task with a resource file, stdout, delete
  schedule   job schedule (doNotRunAfter, recurrenceInterval) with an auto pool whose start task is elevated,
             onAllTasksComplete terminatejob, a job manager task with a resource file; recent job; delete
  mpi        CentOS-HPC image, inter-node pool, multi-instance task (coordination script as a common resource
             file without fileMode, application script, nonadmin pool auto-user, output files to a container SAS
             on completion), subtasks, the uploaded output
  quickstart pool, job, a task collection of three `cat` tasks with resource files, task.get node, stdout
  ffmpeg     Spot pool with an elevated start task, a task collection with output files uploaded on success

Run by tests/test_emulator_samples.py. Reads the emulator's exports (AZURE_BATCH_*, AZURE_STORAGE_CONNECTION_STRING);
prints one JSON object of what it saw; exits non-zero on any error."""
from __future__ import annotations

import datetime
import json
import os
import sys

import azure.batch
import azure.batch.models as bm
import waiting  # tests/clients/waiting.py, beside this script
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials
from sample_storage import Storage  # beside this script

TIMEOUT_S = 120
UTC = datetime.timezone.utc


def wait_for(what, check):
    return waiting.wait_for(what, check, TIMEOUT_S)


def resource_file(storage, container, name, text):
    return bm.ResourceFile(http_url=storage.upload(container, name, text), file_path=name)


def pick_image(client, publisher, offer, sku_prefix):
    """(node agent SKU id, image reference) of the first verified image that matches, as the samples pick one:
    from /supportedimages, or /nodeagentskus on api-versions before it."""
    if hasattr(client.account, "list_supported_images"):
        opts = bm.AccountListSupportedImagesOptions(filter="verificationType eq 'verified'")
        pairs = [(i.node_agent_sku_id, i.image_reference)
                 for i in client.account.list_supported_images(account_list_supported_images_options=opts)]
    else:
        pairs = [(s.id, r) for s in client.account.list_node_agent_skus() for r in s.verified_image_references]
    return next((sku, ref) for sku, ref in pairs if ref.publisher.lower() == publisher.lower()
                and ref.offer.lower() == offer.lower() and ref.sku.startswith(sku_prefix))


def slots(n):
    """A node's task slots under the name of the SDK's api-version (maxTasksPerNode before 2020-09-01.12.0)."""
    return ({"max_tasks_per_node": n} if "max_tasks_per_node" in bm.PoolAddParameter._attribute_map
            else {"task_slots_per_node": n})


def vm_config(client, publisher="Canonical", offer="UbuntuServer", sku="18.04"):
    agent, ref = pick_image(client, publisher, offer, sku)
    return bm.VirtualMachineConfiguration(image_reference=ref, node_agent_sku_id=agent)


def admin():
    return bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope=bm.AutoUserScope.pool,
                                                               elevation_level=bm.ElevationLevel.admin))


def all_completed(client, job_id):
    tasks = list(client.task.list(job_id))
    return tasks if tasks and all(t.state == bm.TaskState.completed for t in tasks) else None


def read_task_file(client, job_id, task_id, name):
    return b"".join(client.file.get_from_task(job_id, task_id, name)).decode()


def pool_leaving(client, pool_id):
    return all(p.state == bm.PoolState.deleting for p in client.pool.list() if p.id == pool_id)


def hello(client, storage):
    refused = None
    try:
        client.job.add(bm.JobAddParameter(id="hello-cs", pool_info=bm.PoolInformation(
            auto_pool_specification=bm.AutoPoolSpecification(
                auto_pool_id_prefix="HelloWorld", keep_alive=False, pool_lifetime_option=bm.PoolLifetimeOption.job,
                pool=bm.PoolSpecification(vm_size="STANDARD_D1_V2", target_dedicated_nodes=1,
                                          cloud_service_configuration=bm.CloudServiceConfiguration(os_family="5"))))))
    except bm.BatchErrorException as e:
        refused = [e.error.code, *[v.value for v in e.error.values or [] if v.key == "Reason"]]
    client.job.add(bm.JobAddParameter(id="hello", pool_info=bm.PoolInformation(
        auto_pool_specification=bm.AutoPoolSpecification(
            auto_pool_id_prefix="HelloWorld", keep_alive=False, pool_lifetime_option=bm.PoolLifetimeOption.job,
            pool=bm.PoolSpecification(vm_size="STANDARD_D1_V2", target_dedicated_nodes=1,
                                      virtual_machine_configuration=vm_config(client))))))
    client.task.add(job_id="hello", task=bm.TaskAddParameter(
        id="HelloWorld", command_line="/bin/bash -c 'set -e; set -o pipefail; echo Hello world from hello; wait'"))
    wait_for("hello's task", lambda: all_completed(client, "hello"))
    auto_pool = client.job.get("hello").execution_info.pool_id
    out = [read_task_file(client, "hello", t.id, n) for t in client.task.list("hello")
           for n in ("stdout.txt", "stderr.txt")]
    client.job.delete("hello")
    wait_for("the auto pool to go with its job", lambda: pool_leaving(client, auto_pool))
    return {"refused": refused, "auto_pool_prefix": auto_pool.split("_")[0], "out": out}


def resources(client, storage):
    script = resource_file(storage, "poolsandresourcefiles", "listing.sh", "echo listing; ls\n")
    pool = bm.PoolAddParameter(id="resources", vm_size="STANDARD_D1_V2", target_dedicated_nodes=1,
                               virtual_machine_configuration=vm_config(client, sku="16.04"),
                               start_task=bm.StartTask(command_line="/bin/bash listing.sh",
                                                       resource_files=[script]))
    client.pool.add(pool)
    try:
        client.pool.add(pool)  # the samples' create-if-not-exists
        exists = None
    except bm.BatchErrorException as e:
        exists = e.error.code
    client.job.add(bm.JobAddParameter(id="resources", pool_info=bm.PoolInformation(pool_id="resources")))
    client.task.add(job_id="resources", task=bm.TaskAddParameter(
        id="MyTask", command_line="/bin/bash listing.sh", resource_files=[script]))
    wait_for("the resource file task", lambda: all_completed(client, "resources"))
    out = read_task_file(client, "resources", "MyTask", "stdout.txt")
    client.job.delete("resources")
    client.pool.delete("resources")
    return {"exists": exists, "out": out}


def schedule(client, storage):
    jm = resource_file(storage, "jobscheduler", "manager.sh", "echo managed by $AZ_BATCH_JOB_ID\n")
    now = datetime.datetime.now(UTC)
    client.job_schedule.add(cloud_job_schedule=bm.JobScheduleAddParameter(
        id="sched", schedule=bm.Schedule(do_not_run_after=now + datetime.timedelta(minutes=30),
                                         recurrence_interval=datetime.timedelta(minutes=10)),
        job_specification=bm.JobSpecification(
            pool_info=bm.PoolInformation(auto_pool_specification=bm.AutoPoolSpecification(
                auto_pool_id_prefix="JobScheduler", keep_alive=False, pool_lifetime_option=bm.PoolLifetimeOption.job,
                pool=bm.PoolSpecification(vm_size="STANDARD_D1_V2", target_dedicated_nodes=1,
                                          virtual_machine_configuration=vm_config(client),
                                          start_task=bm.StartTask(command_line="/bin/bash -c 'echo installed'",
                                                                  wait_for_success=True, user_identity=admin())))),
            on_all_tasks_complete=bm.OnAllTasksComplete.terminate_job,
            job_manager_task=bm.JobManagerTask(id="JobManagerTask", command_line="/bin/bash manager.sh",
                                               resource_files=[jm]))))
    job_id = wait_for("the schedule's first job", lambda: (lambda r: r and r.id)(
        client.job_schedule.get("sched").execution_info.recent_job))
    wait_for("the job manager task", lambda: all_completed(client, job_id))
    out = read_task_file(client, job_id, "JobManagerTask", "stdout.txt")
    state = wait_for("the job to be terminated by onAllTasksComplete", lambda: (
        lambda s: s if s == bm.JobState.completed else None)(client.job.get(job_id).state))
    client.job_schedule.delete("sched")
    return {"job": job_id, "out": out, "job_state": str(state.value)}


def mpi(client, storage):
    coordinate = resource_file(storage, "input", "coordination-cmd",
                                "#!/usr/bin/env bash\ntouch $AZ_BATCH_TASK_SHARED_DIR/coordinated\n")
    application = resource_file(storage, "input", "application-cmd", "#!/usr/bin/env bash\necho instances=$1 "
                                 "hosts=$AZ_BATCH_HOST_LIST\nls $AZ_BATCH_TASK_SHARED_DIR\n")
    output = storage.container_sas_url("output")
    vm = vm_config(client, "OpenLogic", "CentOS-HPC", "7.4")
    pool = bm.PoolAddParameter(id="mpi", vm_size="STANDARD_H16r", target_dedicated_nodes=3,
                               virtual_machine_configuration=vm, resize_timeout=datetime.timedelta(minutes=15),
                               enable_inter_node_communication=True, **slots(1))
    client.pool.add(pool)
    wait_for("3 idle nodes", lambda: (lambda p, n: p.resize_errors is None and len(n) >= 3 and all(
        x.state == bm.ComputeNodeState.idle for x in n))(client.pool.get("mpi"), list(client.compute_node.list("mpi"))))
    client.job.add(bm.JobAddParameter(id="mpi", pool_info=bm.PoolInformation(pool_id="mpi")))
    nonadmin = bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope=bm.AutoUserScope.pool,
                                                                  elevation_level=bm.ElevationLevel.non_admin))
    client.task.add("mpi", bm.TaskAddParameter(
        id="pingpong", command_line="/bin/bash -c 'set -e; set -o pipefail; "
                                    "$AZ_BATCH_TASK_WORKING_DIR/application-cmd 3; wait'",
        user_identity=nonadmin, resource_files=[application],
        multi_instance_settings=bm.MultiInstanceSettings(
            number_of_instances=3, common_resource_files=[coordinate],
            coordination_command_line="/bin/bash -c 'set -e; set -o pipefail; "
                                      "$AZ_BATCH_TASK_SHARED_DIR/coordination-cmd; wait'"),
        output_files=[bm.OutputFile(
            file_pattern="../std*.txt",
            destination=bm.OutputFileDestination(container=bm.OutputFileBlobContainerDestination(container_url=output)),
            upload_options=bm.OutputFileUploadOptions(upload_condition=bm.OutputFileUploadCondition.task_completion))]))
    task = wait_for("the multi-instance task", lambda: (lambda t: t if t.state == bm.TaskState.completed else None)(
        client.task.get("mpi", "pingpong")))
    subtasks = client.task.list_subtasks("mpi", "pingpong").value
    out = storage.read("output", "stdout.txt")
    client.job.delete("mpi")
    client.pool.delete("mpi")
    return {"exit_code": task.execution_info.exit_code, "subtasks": sorted(str(s.state.value) for s in subtasks),
            "out": out}


def quickstart(client, storage):
    files = [resource_file(storage, "input", f"taskdata{i}.txt", f"data {i}\n") for i in range(3)]
    client.pool.add(bm.PoolAddParameter(
        id="quickstart", vm_size="STANDARD_DS1_V2", target_dedicated_nodes=2,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.ImageReference(publisher="canonical", offer="0001-com-ubuntu-server-focal",
                                              sku="20_04-lts", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 20.04")))
    client.job.add(bm.JobAddParameter(id="quickstart", pool_info=bm.PoolInformation(pool_id="quickstart")))
    client.task.add_collection("quickstart", [bm.TaskAddParameter(
        id=f"Task{i}", command_line=f'/bin/bash -c "cat {f.file_path}"', resource_files=[f])
        for i, f in enumerate(files)])
    wait_for("the quickstart's tasks", lambda: all_completed(client, "quickstart"))
    seen = {t.id: (bool(client.task.get("quickstart", t.id).node_info.node_id),
                   read_task_file(client, "quickstart", t.id, "stdout.txt")) for t in client.task.list("quickstart")}
    client.job.delete("quickstart")
    client.pool.delete("quickstart")
    return {"tasks": seen}


def ffmpeg(client, storage):
    inputs = [resource_file(storage, "ffin", "clip.txt", "a clip\n")]
    output = storage.container_sas_url("ffout")
    client.pool.add(bm.PoolAddParameter(
        id="ffmpeg", vm_size="STANDARD_A1_v2", target_dedicated_nodes=0, target_low_priority_nodes=2,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.ImageReference(publisher="Canonical", offer="UbuntuServer", sku="18.04-LTS",
                                              version="latest"),
            node_agent_sku_id="batch.node.ubuntu 18.04"),
        start_task=bm.StartTask(command_line='/bin/bash -c "echo installing; id -u"', wait_for_success=True,
                                user_identity=admin())))
    client.job.add(bm.JobAddParameter(id="ffmpeg", pool_info=bm.PoolInformation(pool_id="ffmpeg")))
    client.task.add_collection("ffmpeg", [bm.TaskAddParameter(
        id=f"Task{i}", command_line=f'/bin/bash -c "tr a-z A-Z < {f.file_path} > {f.file_path}.out"',
        resource_files=[f], output_files=[bm.OutputFile(
            file_pattern=f"{f.file_path}.out",
            destination=bm.OutputFileDestination(container=bm.OutputFileBlobContainerDestination(container_url=output)),
            upload_options=bm.OutputFileUploadOptions(upload_condition=bm.OutputFileUploadCondition.task_success))])
        for i, f in enumerate(inputs)])
    wait_for("the conversion task", lambda: all_completed(client, "ffmpeg"))
    spot = sorted(n.is_dedicated for n in client.compute_node.list("ffmpeg"))
    pool = client.pool.get("ffmpeg")
    client.job.delete("ffmpeg")
    client.pool.delete("ffmpeg")
    return {"converted": storage.read("ffout", "clip.txt.out"), "dedicated": spot,
            "low_priority": pool.current_low_priority_nodes}


FLOWS = {"hello": hello, "resources": resources, "schedule": schedule, "mpi": mpi, "quickstart": quickstart,
         "ffmpeg": ffmpeg}


def main() -> None:
    env = os.environ
    client = BatchServiceClient(SharedKeyCredentials(env["AZURE_BATCH_ACCOUNT"], env["AZURE_BATCH_ACCESS_KEY"]),
                                batch_url=env["AZURE_BATCH_ENDPOINT"])
    storage = Storage(env["AZURE_STORAGE_CONNECTION_STRING"])
    names = sys.argv[1:] or list(FLOWS)
    seen = {"sdk": azure.batch.VERSION, "api_version": client.api_version}
    seen.update({name: FLOWS[name](client, storage) for name in names})
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
