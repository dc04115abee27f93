"""The flows of tests/clients/samples_equivalents.py (our own equivalents of the public Batch samples' calls) on
azure-batch 15.1 (api-version 2025-06-01), whose client is a different API (BatchClient, flat methods). The same
operations and bodies in the same order, and the same JSON out, except what 2025-06-01 no longer has: no
`cloudServiceConfiguration` (so `hello.refused` is null). Run by tests/test_emulator_samples.py with the main
.venv's interpreter."""
from __future__ import annotations

import datetime
import json
import os
import sys

import azure.batch
import waiting  # beside this script
from azure.batch import BatchClient
from azure.batch import models as m
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import HttpResponseError
from sample_storage import Storage  # beside this script

TIMEOUT_S = 120
UTC = datetime.timezone.utc


def wait_for(what, check):
    return waiting.wait_for(what, check, TIMEOUT_S)


def resource_file(storage, container, name, text):
    return m.ResourceFile(http_url=storage.upload(container, name, text), file_path=name)


def vm_config(client, publisher="Canonical", offer="UbuntuServer", sku="18.04"):
    image = next(i for i in client.list_supported_images(filter="verificationType eq 'verified'")
                 if i.image_reference.publisher.lower() == publisher.lower()
                 and i.image_reference.offer.lower() == offer.lower() and i.image_reference.sku.startswith(sku))
    return m.VirtualMachineConfiguration(image_reference=image.image_reference,
                                         node_agent_sku_id=image.node_agent_sku_id)


def auto_user(level):
    return m.UserIdentity(auto_user=m.AutoUserSpecification(scope="pool", elevation_level=level))


def all_completed(client, job_id):
    tasks = list(client.list_tasks(job_id))
    return tasks if tasks and all(t.state == "completed" for t in tasks) else None


def read_task_file(client, job_id, task_id, name):
    return b"".join(client.download_task_file(job_id, task_id, name)).decode()


def output_file(pattern, url, condition):
    return m.OutputFile(file_pattern=pattern, destination=m.OutputFileDestination(
        container=m.OutputFileBlobContainerDestination(container_url=url)),
        upload_options=m.OutputFileUploadConfiguration(upload_condition=condition))


def hello(client, storage):
    client.create_job(m.BatchJobCreateOptions(id="hello", pool_info=m.BatchPoolInfo(
        auto_pool_specification=m.BatchAutoPoolSpecification(
            auto_pool_id_prefix="HelloWorld", keep_alive=False, pool_lifetime_option="job",
            pool=m.BatchPoolSpecification(vm_size="STANDARD_D1_V2", target_dedicated_nodes=1,
                                          virtual_machine_configuration=vm_config(client))))))
    client.create_task("hello", m.BatchTaskCreateOptions(
        id="HelloWorld", command_line="/bin/bash -c 'set -e; set -o pipefail; echo Hello world from hello; wait'"))
    wait_for("hello's task", lambda: all_completed(client, "hello"))
    auto_pool = client.get_job("hello").execution_info.pool_id
    out = [read_task_file(client, "hello", t.id, n) for t in client.list_tasks("hello")
           for n in ("stdout.txt", "stderr.txt")]
    client.begin_delete_job("hello", polling_interval=1).result()
    wait_for("the auto pool to go with its job", lambda: all(
        p.state == "deleting" for p in client.list_pools() if p.id == auto_pool))
    return {"refused": None, "auto_pool_prefix": auto_pool.split("_")[0], "out": out}


def resources(client, storage):
    script = resource_file(storage, "poolsandresourcefiles", "listing.sh", "echo listing; ls\n")
    pool = m.BatchPoolCreateOptions(id="resources", vm_size="STANDARD_D1_V2", target_dedicated_nodes=1,
                                    virtual_machine_configuration=vm_config(client, sku="16.04"),
                                    start_task=m.BatchStartTask(command_line="/bin/bash listing.sh",
                                                                resource_files=[script]))
    client.create_pool(pool)
    try:
        client.create_pool(pool)
        exists = None
    except HttpResponseError as e:
        exists = e.error.code if e.error else None
    client.create_job(m.BatchJobCreateOptions(id="resources", pool_info=m.BatchPoolInfo(pool_id="resources")))
    client.create_task("resources", m.BatchTaskCreateOptions(
        id="MyTask", command_line="/bin/bash listing.sh", resource_files=[script]))
    wait_for("the resource file task", lambda: all_completed(client, "resources"))
    out = read_task_file(client, "resources", "MyTask", "stdout.txt")
    client.begin_delete_job("resources", polling_interval=1).result()
    client.begin_delete_pool("resources", polling_interval=1).result()
    return {"exists": exists, "out": out}


def schedule(client, storage):
    jm = resource_file(storage, "jobscheduler", "manager.sh", "echo managed by $AZ_BATCH_JOB_ID\n")
    now = datetime.datetime.now(UTC)
    client.create_job_schedule(m.BatchJobScheduleCreateOptions(
        id="sched", schedule=m.BatchJobScheduleConfiguration(do_not_run_after=now + datetime.timedelta(minutes=30),
                                                             recurrence_interval=datetime.timedelta(minutes=10)),
        job_specification=m.BatchJobSpecification(
            pool_info=m.BatchPoolInfo(auto_pool_specification=m.BatchAutoPoolSpecification(
                auto_pool_id_prefix="JobScheduler", keep_alive=False, pool_lifetime_option="job",
                pool=m.BatchPoolSpecification(
                    vm_size="STANDARD_D1_V2", target_dedicated_nodes=1, virtual_machine_configuration=vm_config(client),
                    start_task=m.BatchStartTask(command_line="/bin/bash -c 'echo installed'", wait_for_success=True,
                                                user_identity=auto_user("admin"))))),
            all_tasks_complete_mode="terminatejob",
            job_manager_task=m.BatchJobManagerTask(id="JobManagerTask", command_line="/bin/bash manager.sh",
                                                   resource_files=[jm]))))
    job_id = wait_for("the schedule's first job", lambda: (lambda r: r and r.id)(
        client.get_job_schedule("sched").execution_info.recent_job))
    wait_for("the job manager task", lambda: all_completed(client, job_id))
    out = read_task_file(client, job_id, "JobManagerTask", "stdout.txt")
    state = wait_for("the job to be terminated", lambda: (lambda s: s if s == "completed" else None)(
        client.get_job(job_id).state))
    client.begin_delete_job_schedule("sched", polling_interval=1).result()
    return {"job": job_id, "out": out, "job_state": getattr(state, "value", state)}


def mpi(client, storage):
    coordinate = resource_file(storage, "input", "coordination-cmd",
                               "#!/usr/bin/env bash\ntouch $AZ_BATCH_TASK_SHARED_DIR/coordinated\n")
    application = resource_file(storage, "input", "application-cmd", "#!/usr/bin/env bash\necho instances=$1 "
                                "hosts=$AZ_BATCH_HOST_LIST\nls $AZ_BATCH_TASK_SHARED_DIR\n")
    output = storage.container_sas_url("output")
    client.create_pool(m.BatchPoolCreateOptions(
        id="mpi", vm_size="STANDARD_H16r", target_dedicated_nodes=3,
        virtual_machine_configuration=vm_config(client, "OpenLogic", "CentOS-HPC", "7.4"),
        resize_timeout=datetime.timedelta(minutes=15), enable_inter_node_communication=True, task_slots_per_node=1))
    wait_for("3 idle nodes", lambda: (lambda p, n: not p.resize_errors and len(n) >= 3 and all(
        x.state == "idle" for x in n))(client.get_pool("mpi"), list(client.list_nodes("mpi"))))
    client.create_job(m.BatchJobCreateOptions(id="mpi", pool_info=m.BatchPoolInfo(pool_id="mpi")))
    client.create_task("mpi", m.BatchTaskCreateOptions(
        id="pingpong", command_line="/bin/bash -c 'set -e; set -o pipefail; "
                                    "$AZ_BATCH_TASK_WORKING_DIR/application-cmd 3; wait'",
        user_identity=auto_user("nonadmin"), resource_files=[application],
        multi_instance_settings=m.MultiInstanceSettings(
            number_of_instances=3, common_resource_files=[coordinate],
            coordination_command_line="/bin/bash -c 'set -e; set -o pipefail; "
                                      "$AZ_BATCH_TASK_SHARED_DIR/coordination-cmd; wait'"),
        output_files=[output_file("../std*.txt", output, "taskcompletion")]))
    task = wait_for("the multi-instance task", lambda: (lambda t: t if t.state == "completed" else None)(
        client.get_task("mpi", "pingpong")))
    subtasks = list(client.list_subtasks("mpi", "pingpong"))
    out = storage.read("output", "stdout.txt")
    client.begin_delete_job("mpi", polling_interval=1).result()
    client.begin_delete_pool("mpi", polling_interval=1).result()
    return {"exit_code": task.execution_info.exit_code,
            "subtasks": sorted(getattr(s.state, "value", s.state) for s in subtasks), "out": out}


def quickstart(client, storage):
    files = [resource_file(storage, "input", f"taskdata{i}.txt", f"data {i}\n") for i in range(3)]
    client.create_pool(m.BatchPoolCreateOptions(
        id="quickstart", vm_size="STANDARD_DS1_V2", target_dedicated_nodes=2,
        virtual_machine_configuration=m.VirtualMachineConfiguration(
            image_reference=m.BatchVmImageReference(publisher="canonical", offer="0001-com-ubuntu-server-focal",
                                                    sku="20_04-lts", version="latest"),
            node_agent_sku_id="batch.node.ubuntu 20.04")))
    client.create_job(m.BatchJobCreateOptions(id="quickstart", pool_info=m.BatchPoolInfo(pool_id="quickstart")))
    client.create_task_collection("quickstart", m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(
        id=f"Task{i}", command_line=f'/bin/bash -c "cat {f.file_path}"', resource_files=[f])
        for i, f in enumerate(files)]))
    wait_for("the quickstart's tasks", lambda: all_completed(client, "quickstart"))
    seen = {t.id: (bool(client.get_task("quickstart", t.id).node_info.node_id),
                   read_task_file(client, "quickstart", t.id, "stdout.txt")) for t in client.list_tasks("quickstart")}
    client.begin_delete_job("quickstart", polling_interval=1).result()
    client.begin_delete_pool("quickstart", polling_interval=1).result()
    return {"tasks": seen}


def ffmpeg(client, storage):
    inputs = [resource_file(storage, "ffin", "clip.txt", "a clip\n")]
    output = storage.container_sas_url("ffout")
    client.create_pool(m.BatchPoolCreateOptions(
        id="ffmpeg", vm_size="STANDARD_A1_v2", target_dedicated_nodes=0, target_low_priority_nodes=2,
        virtual_machine_configuration=m.VirtualMachineConfiguration(
            image_reference=m.BatchVmImageReference(publisher="Canonical", offer="UbuntuServer", sku="18.04-LTS",
                                                    version="latest"),
            node_agent_sku_id="batch.node.ubuntu 18.04"),
        start_task=m.BatchStartTask(command_line='/bin/bash -c "echo installing; id -u"', wait_for_success=True,
                                    user_identity=auto_user("admin"))))
    client.create_job(m.BatchJobCreateOptions(id="ffmpeg", pool_info=m.BatchPoolInfo(pool_id="ffmpeg")))
    client.create_task_collection("ffmpeg", m.BatchTaskGroup(task_values=[m.BatchTaskCreateOptions(
        id=f"Task{i}", command_line=f'/bin/bash -c "tr a-z A-Z < {f.file_path} > {f.file_path}.out"',
        resource_files=[f], output_files=[output_file(f"{f.file_path}.out", output, "tasksuccess")])
        for i, f in enumerate(inputs)]))
    wait_for("the conversion task", lambda: all_completed(client, "ffmpeg"))
    dedicated = sorted(n.is_dedicated for n in client.list_nodes("ffmpeg"))
    pool = client.get_pool("ffmpeg")
    client.begin_delete_job("ffmpeg", polling_interval=1).result()
    client.begin_delete_pool("ffmpeg", polling_interval=1).result()
    return {"converted": storage.read("ffout", "clip.txt.out"), "dedicated": dedicated,
            "low_priority": pool.current_low_priority_nodes}


FLOWS = {"hello": hello, "resources": resources, "schedule": schedule, "mpi": mpi, "quickstart": quickstart,
         "ffmpeg": ffmpeg}


def main() -> None:
    env = os.environ
    client = BatchClient(env["AZURE_BATCH_ENDPOINT"],
                         AzureNamedKeyCredential(env["AZURE_BATCH_ACCOUNT"], env["AZURE_BATCH_ACCESS_KEY"]))
    storage = Storage(env["AZURE_STORAGE_CONNECTION_STRING"])
    seen = {"sdk": azure.batch.__version__, "api_version": client._config.api_version}
    seen.update({name: FLOWS[name](client, storage) for name in sys.argv[1:] or list(FLOWS)})
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
