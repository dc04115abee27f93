"""A pool, job and task through an old azure-batch (6.0.0, 8.0.0, 11.0.0: the versions public samples pin),
the calls those samples make, unchanged. Run by tests/test_emulator_old_sdks.py with the batch14 interpreter
and PYTHONPATH on that SDK. Reads the emulator's export variables; prints one JSON object of what it saw;
exits non-zero on any SDK error."""
from __future__ import annotations

import json
import os

import azure.batch
import azure.batch.models as bm
import waiting  # tests/clients/waiting.py, beside this script
from azure.batch import BatchServiceClient
from azure.batch.batch_auth import SharedKeyCredentials

TIMEOUT_S = 120


def wait_for(what, check):
    return waiting.wait_for(what, check, TIMEOUT_S)


def main() -> None:
    env = os.environ
    client = BatchServiceClient(SharedKeyCredentials(env["AZURE_BATCH_ACCOUNT"], env["AZURE_BATCH_ACCESS_KEY"]),
                                batch_url=env["AZURE_BATCH_ENDPOINT"])
    # before 2020-09-01.12.0 the slots of a node were maxTasksPerNode
    slots = ({"max_tasks_per_node": 2} if hasattr(bm.PoolAddParameter(id="x", vm_size="x"), "max_tasks_per_node")
             else {"task_slots_per_node": 2})
    client.pool.add(bm.PoolAddParameter(
        id="old", vm_size="STANDARD_A1_v2", target_dedicated_nodes=1, **slots,
        virtual_machine_configuration=bm.VirtualMachineConfiguration(
            image_reference=bm.ImageReference(publisher="Canonical", offer="UbuntuServer", sku="18.04-LTS",
                                              version="latest"),
            node_agent_sku_id="batch.node.ubuntu 18.04"),
        start_task=bm.StartTask(command_line="/bin/bash -c 'echo up'", wait_for_success=True)))
    wait_for("an idle node",
             lambda: [n for n in client.compute_node.list("old") if n.state == bm.ComputeNodeState.idle])
    pool = client.pool.get("old")
    node = next(iter(client.compute_node.list("old")))

    client.job.add(bm.JobAddParameter(id="oldjob", pool_info=bm.PoolInformation(pool_id="old")))
    client.task.add_collection("oldjob", [bm.TaskAddParameter(
        id="hello", command_line="/bin/bash -c 'echo hello from $AZ_BATCH_TASK_ID'",
        environment_settings=[bm.EnvironmentSetting(name="X", value="1")])])
    task = wait_for("the task to complete", lambda: (lambda t: t if t.state == bm.TaskState.completed else None)(
        client.task.get("oldjob", "hello")))
    counts = client.job.get_task_counts("oldjob")
    counts = getattr(counts, "task_counts", counts)  # bare TaskCounts before 2020-09-01.12.0
    stdout = b"".join(client.file.get_from_task("oldjob", "hello", "stdout.txt")).decode()
    listed = [t.id for t in client.task.list("oldjob")]
    client.job.terminate("oldjob")
    client.job.delete("oldjob")
    client.pool.delete("old")
    print(json.dumps({
        "sdk": azure.batch.VERSION, "api_version": client.api_version,
        "slots": getattr(pool, "max_tasks_per_node", None) or getattr(pool, "task_slots_per_node", None),
        "slot_name": next(iter(slots)), "node_state": str(node.state), "exit_code": task.execution_info.exit_code,
        "stdout": stdout, "listed": listed, "counts": [counts.completed, counts.succeeded, counts.failed]}))


if __name__ == "__main__":
    main()
