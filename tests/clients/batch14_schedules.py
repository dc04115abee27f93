"""A job schedule with azure-batch 14.2 (BatchServiceClient, the API of the official samples), run by
tests/test_emulator_sdk14.py with the .venvs/batch14 interpreter: the samples' image pick (supported images,
verified), a schedule on a 2 s recurrence whose jobs get one auto pool for the schedule and a job manager task,
then patch, disable / enable, terminate and delete. Prints one JSON object of what it saw; exits non-zero on
any SDK error."""
from __future__ import annotations

import datetime
import json
import os
import time

import azure.batch.models as bm
import waiting  # tests/clients/waiting.py, beside this script
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials

TIMEOUT_S = 60


def wait_for(what, check):
    return waiting.wait_for(what, check, TIMEOUT_S)


def pick_image(client, publisher, offer, sku_starts_with):
    """As the samples' helper does: the verified images, the first whose reference matches."""
    options = bm.AccountListSupportedImagesOptions(filter="verificationType eq 'verified'")
    images = client.account.list_supported_images(account_list_supported_images_options=options)
    found = [(i.node_agent_sku_id, i.image_reference) for i in images
             if i.image_reference.publisher.lower() == publisher.lower()
             and i.image_reference.offer.lower() == offer.lower() and i.image_reference.sku.startswith(sku_starts_with)]
    return found[0]


def job_ids(client, schedule_id):
    return sorted(j.id for j in client.job.list_from_job_schedule(schedule_id))


def main() -> None:
    env = os.environ
    client = BatchServiceClient(SharedKeyCredentials(env["AZURE_BATCH_ACCOUNT"], env["AZURE_BATCH_ACCESS_KEY"]),
                                batch_url=env["AZURE_BATCH_ENDPOINT"])
    seen = {}
    agent, image = pick_image(client, "canonical", "0001-com-ubuntu-server-jammy", "22")
    seen["image"] = [agent, image.sku]
    pool = bm.PoolSpecification(vm_size="standard_d2s_v3", target_dedicated_nodes=1,
                                virtual_machine_configuration=bm.VirtualMachineConfiguration(
                                    image_reference=image, node_agent_sku_id=agent))
    spec = bm.JobSpecification(
        pool_info=bm.PoolInformation(auto_pool_specification=bm.AutoPoolSpecification(
            auto_pool_id_prefix="s14", pool_lifetime_option=bm.PoolLifetimeOption.job_schedule, pool=pool)),
        job_manager_task=bm.JobManagerTask(id="manager", command_line="/bin/sh -c 'echo $AZ_BATCH_JOB_ID'",
                                           kill_job_on_completion=True))
    client.job_schedule.add(bm.JobScheduleAddParameter(
        id="sched14", schedule=bm.Schedule(recurrence_interval=datetime.timedelta(seconds=2)),
        job_specification=spec))
    seen["exists"] = client.job_schedule.exists("sched14")
    seen["jobs"] = wait_for("two jobs", lambda: len(ids := job_ids(client, "sched14")) >= 2 and ids)[:2]
    first = client.job.get("sched14:job-1")
    seen["pool"] = first.execution_info.pool_id
    wait_for("job-1 to complete", lambda: client.job.get("sched14:job-1").state == bm.JobState.completed)
    seen["reason"] = client.job.get("sched14:job-1").execution_info.terminate_reason
    out = client.file.get_from_task("sched14:job-1", "manager", "stdout.txt")
    seen["manager_stdout"] = b"".join(out).decode()
    s = client.job_schedule.get("sched14")
    seen["recent"] = s.execution_info.recent_job.id.startswith("sched14:job-")
    client.job_schedule.patch("sched14", bm.JobSchedulePatchParameter(
        metadata=[bm.MetadataItem(name="owner", value="sdk14")]))
    seen["metadata"] = [(m.name, m.value) for m in client.job_schedule.get("sched14").metadata]
    client.job_schedule.disable("sched14")
    seen["disabled"] = client.job_schedule.get("sched14").state == bm.JobScheduleState.disabled
    client.job_schedule.enable("sched14")
    client.job_schedule.terminate("sched14")
    wait_for("completed", lambda: client.job_schedule.get("sched14").state == bm.JobScheduleState.completed)
    count = len(job_ids(client, "sched14"))
    time.sleep(3)
    seen["stopped"] = len(job_ids(client, "sched14")) == count
    seen["pool_gone"] = wait_for("the pool to go", lambda: seen["pool"] not in {p.id for p in client.pool.list()})
    client.job_schedule.delete("sched14")
    wait_for("the schedule to go", lambda: not client.job_schedule.exists("sched14"))
    seen["jobs_left"] = [j.id for j in client.job.list() if j.id.startswith("sched14:")]
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
