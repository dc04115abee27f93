"""Job update (PATCH: the given properties replace the job's), job replace (PUT: the whole updatable set;
what is left out goes back to its default), job disable / enable, task update (its constraints) and task
reactivate."""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import jobs, schema, tasks
from .errors import BatchError, missing_property
from .state import key, set_state, touch

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"
Answer = tuple[int, Any, dict[str, str]]
UPDATABLE = ("priority", "allowTaskPreemption", "maxParallelTasks", "constraints", "poolInfo", "onAllTasksComplete",
             "metadata", "networkConfiguration")
DEFAULTS: dict[str, Any] = {"priority": 0, "allowTaskPreemption": False, "maxParallelTasks": -1,
                            "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0},
                            "onAllTasksComplete": "noaction", "metadata": None}


def update(emu: Emulator, job_id: str, body: Any, *, replace: bool) -> None:
    body = schema.validate(body, "job.replace" if replace else "job.update", "job",
                           required=("poolInfo",) if replace else ())
    body = {k: v for k, v in body.items() if k in UPDATABLE}  # the rest of a whole job (15.x PUTs one) stays
    if body.get("networkConfiguration"):
        raise schema.not_emulated("job network configuration", "remove 'networkConfiguration'")
    if "onAllTasksComplete" in body:
        body["onAllTasksComplete"] = schema.enum(body["onAllTasksComplete"] or "noaction", "onAllTasksComplete",
                                                 ("noaction", "terminatejob"))
    if body.get("priority") is not None and not -1000 <= body["priority"] <= 1000:
        raise schema.invalid_value("priority", "from -1000 to 1000")
    job = jobs.get(emu, job_id)
    with emu.store.lock:
        if job["state"] in ("completed", "terminating", "deleting"):
            raise BatchError(409, "JobCompleted", "The specified job is already in a completed state.")
        if body.get("poolInfo"):
            _change_pool(emu, job, body.pop("poolInfo"))
        changes = {**({k: v for k, v in DEFAULTS.items()} if replace else {}), **body}
        for name, value in changes.items():
            if value is None:
                job.pop(name, None) if replace else None
                continue
            if name == "constraints":
                value = {**DEFAULTS["constraints"], **((job.get("constraints") or {}) if not replace else {}), **value}
            job[name] = value
        touch(job)
    emu.store.mark(("jobs", job))
    emu.event(f"job {job['id']}: {'replaced' if replace else 'updated'} ({', '.join(body) or 'nothing'})")
    if "onAllTasksComplete" in changes:
        jobs.check_all_complete(emu, job)


def _change_pool(emu: Emulator, job: dict[str, Any], info: dict[str, Any]) -> None:
    """A job's poolInfo in an update: another pool only while the job is disabled; of an auto pool
    specification only `keepAlive`, and only with poolLifetimeOption job (the REST reference's rules)."""
    current = job.get("poolInfo") or {}
    auto, own = info.get("autoPoolSpecification"), current.get("autoPoolSpecification")
    if auto is not None:
        if own is None:
            raise schema.not_emulated("moving a job from its pool to an auto pool",
                                      "give the job's poolInfo.poolId, or create a job with the auto pool")
        if own.get("poolLifetimeOption", "job").lower() == "job" and auto.get("keepAlive") is not None:
            own["keepAlive"] = bool(auto["keepAlive"])
        return
    pool = info.get("poolId")
    if not pool:
        raise missing_property("poolInfo.poolId")
    if pool.lower() == (current.get("poolId") or job["executionInfo"]["poolId"]).lower():
        return
    if job["state"] != "disabled":
        raise BatchError(409, "JobNotDisabled", "The job's pool can be changed only while the job is disabled.")
    job["poolInfo"] = {"poolId": pool}
    job["executionInfo"]["poolId"] = pool
    for t in emu.store.job_tasks(job["id"]):  # tasks not run yet go to the new pool
        if t["state"] == "active":
            t["_pool"] = pool


def update_task(emu: Emulator, job_id: str, task_id: str, body: Any) -> None:
    """New constraints; a running task's wall clock and retries follow them from its next attempt."""
    body = {k: v for k, v in schema.validate(body, "task.update", "task").items() if k == "constraints"}
    t = tasks.get(emu, job_id, task_id)
    with emu.store.lock:
        if t["state"] == "completed":
            raise BatchError(409, "TaskCompleted", "The specified task is already completed.")
        c = body.get("constraints") or {}
        if c.get("maxTaskRetryCount") is not None and c["maxTaskRetryCount"] < -1:
            raise schema.invalid_value("constraints.maxTaskRetryCount", "-1 (unlimited) or more")
        t["constraints"] = {**t["constraints"], **{k: v for k, v in c.items() if v is not None}}
        touch(t)
    emu.store.mark(("tasks", t))


def _do(action: Callable[[], object], answer: Answer) -> Answer:
    """Run the operation, then answer (for the route table's one-liners)."""
    action()
    return answer




def disable(emu: Emulator, job_id: str, body: Any) -> None:
    """disabling, then disabled: no task of the job starts; running ones are requeued, ended or left to
    finish (`disableTasks` requeue / terminate / wait)."""
    body = schema.validate(body, "job.disable", "job", required=("disableTasks",))
    how = schema.enum(body["disableTasks"], "disableTasks", ("requeue", "terminate", "wait"))
    job = jobs.get(emu, job_id)
    with emu.store.lock:
        if job["state"] != "active":
            raise BatchError(409, "JobNotActive", f"The specified job is in the {job['state']} state.")
        set_state(job, "disabling")
        running = [t for t in emu.store.job_tasks(job["id"]) if t["state"] in ("running", "preparing")]
    emu.store.mark(("jobs", job))

    def finish() -> None:
        if how != "wait":
            for t in running:
                emu.scheduler.end_task(t, reason="requeue" if how == "requeue" else "user")
            emu.scheduler.wait_ended(running)
        with emu.store.lock:
            if job["state"] == "disabling":
                set_state(job, "disabled")
        emu.store.mark(("jobs", job))
        emu.event(f"job {job['id']}: disabled ({how})")

    threading.Thread(target=finish, name=f"disable-{job_id}", daemon=True).start()


def enable(emu: Emulator, job_id: str) -> None:
    job = jobs.get(emu, job_id)
    with emu.store.lock:
        if job["state"] not in ("disabled", "disabling"):
            raise BatchError(409, "JobNotDisabled", "The specified job is not disabled.")
        set_state(job, "active")
    emu.store.mark(("jobs", job))


def reactivate(emu: Emulator, job_id: str, task_id: str) -> None:
    """A failed task back to active, to run again from the start (retry and requeue counts reset)."""
    t = tasks.get(emu, job_id, task_id)
    job = jobs.get(emu, job_id)
    with emu.store.lock:
        if job["state"] in ("completed", "terminating", "deleting"):
            raise BatchError(409, "JobCompleted", "The specified job is already in a completed state.")
        info = t.get("executionInfo") or {}
        if t["state"] != "completed" or info.get("result") != "failure":
            raise BatchError(409, "TaskNotCompletedWithFailure" if t["state"] == "completed" else
                             "TaskNotCompleted", "Only a task that completed with a failure can be reactivated.")
        t["executionInfo"] = {"retryCount": 0, "requeueCount": 0}
        for name in ("nodeInfo", "_nodes", "_ending", "_task_dir", "_dependencyAction"):
            t.pop(name, None)
        set_state(t, "active")
    emu.procs.allow(f"task:{key(job_id, task_id)}")
    emu.store.mark(("tasks", t))


def routes(emu: Emulator) -> list[tuple[str, str, Callable[..., Answer]]]:
    e, body = emu, schema.parse_json

    def done(j: str) -> Answer:
        return 200, None, {"DataServiceId": f"{e.endpoint}/jobs/{j}"}

    return [
        ("PATCH", f"/jobs/{ID}", lambda q, b, j: _do(lambda: update(e, j, body(b), replace=False), done(j))),
        ("PUT", f"/jobs/{ID}", lambda q, b, j: _do(lambda: update(e, j, body(b), replace=True), done(j))),
        ("PUT", f"/jobs/{ID}/tasks/{ID}", lambda q, b, j, t: _do(lambda: update_task(e, j, t, body(b)), done(j))),
        ("POST", f"/jobs/{ID}/disable", lambda q, b, j: _do(lambda: disable(e, j, body(b)), (202, None, {}))),
        ("POST", f"/jobs/{ID}/enable", lambda q, b, j: _do(lambda: enable(e, j), (202, None, {}))),
        ("POST", f"/jobs/{ID}/tasks/{ID}/reactivate", lambda q, b, j, t: _do(lambda: reactivate(e, j, t),
                                                                            (204, None, {}))),
    ]


__all__ = ["routes", "missing_property"]
