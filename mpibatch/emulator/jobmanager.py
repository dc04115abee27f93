"""The job manager task ("Job manager task" in the Batch docs): a job's (or a job schedule's job's) first
task, started before its other tasks; `runExclusive` (the default) gives it every task slot of its node;
when it completes and `killJobOnCompletion` (the default) is set, the job is terminated
(`terminateReason` JMComplete) and its other running tasks end."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import schema
from .errors import BatchError
from .state import key

if TYPE_CHECKING:
    from .core import Emulator

MANAGER_ONLY = ("killJobOnCompletion", "runExclusive", "allowLowPriorityNode")  # not properties of a task


def check(spec: dict[str, Any] | None) -> None:
    if not spec:
        return
    for name in ("id", "commandLine"):
        if not spec.get(name):
            raise schema.missing_property(f"jobManagerTask.{name}")
    schema.check_id(spec["id"], "jobManagerTask.id")
    schema.drop_registry_password(spec)


def add_task(emu: Emulator, job: dict[str, Any]) -> dict[str, Any] | None:
    """Store the job manager task of a job just stored (the caller holds the store's lock); it is added first,
    so it is scheduled first."""
    from . import tasks  # tasks imports jobs, which imports this module

    spec = job.get("jobManagerTask")
    if not spec:
        return None
    body = {k: v for k, v in spec.items() if k not in MANAGER_ONLY}
    pool = emu.store.pools.get(key(job["executionInfo"]["poolId"]))
    if spec.get("runExclusive", True) and pool is not None:
        body["requiredSlots"] = pool["taskSlotsPerNode"]  # the whole node: no other task fits beside it
    task = tasks._store(emu, job, body)
    task["_jobManager"] = True
    return task


def on_complete(emu: Emulator, job: dict[str, Any], task: dict[str, Any]) -> None:
    """A task completed: when it is the job manager with killJobOnCompletion, terminate its job."""
    from . import jobs

    if not task.get("_jobManager") or not (job.get("jobManagerTask") or {}).get("killJobOnCompletion", True):
        return
    try:
        jobs.terminate(emu, job["id"], None, reason="JMComplete")
    except BatchError:  # already completing
        pass
