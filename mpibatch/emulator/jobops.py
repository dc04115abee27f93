"""Job update (PATCH: the given properties replace the job's), job replace (PUT: the whole updatable set;
what is left out goes back to its default) and task update (its constraints)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import jobs, schema, tasks
from .errors import BatchError, missing_property
from .state import touch

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"
Answer = tuple[int, Any, dict[str, str]]
UPDATABLE = ("priority", "allowTaskPreemption", "maxParallelTasks", "constraints", "poolInfo", "onAllTasksComplete",
             "metadata", "networkConfiguration")
JOB_UPDATE = {k: schema.JOB[k] for k in UPDATABLE}
DEFAULTS: dict[str, Any] = {"priority": 0, "allowTaskPreemption": False, "maxParallelTasks": -1,
                            "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0},
                            "onAllTasksComplete": "noaction", "metadata": None}
TASK_UPDATE = {"constraints": schema.CONSTRAINTS}


def update(emu: Emulator, job_id: str, body: Any, *, replace: bool) -> None:
    body = schema.validate(body, JOB_UPDATE, "job", required=("poolInfo.poolId",) if replace else ())
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
        pool = (body.get("poolInfo") or {}).get("poolId")
        if pool and pool.lower() != job["poolInfo"]["poolId"].lower():
            raise BatchError(409, "JobNotDisabled", "The job's pool can be changed only while the job is "
                             "disabled (mpibatch emulate: disabling jobs is not emulated).")
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


def update_task(emu: Emulator, job_id: str, task_id: str, body: Any) -> None:
    """New constraints; a running task's wall clock and retries follow them from its next attempt."""
    body = schema.validate(body, TASK_UPDATE, "task")
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


def routes(emu: Emulator) -> list[tuple[str, str, Callable[..., Answer]]]:
    e, body = emu, schema.parse_json

    def done(j: str) -> Answer:
        return 200, None, {"DataServiceId": f"{e.endpoint}/jobs/{j}"}

    return [
        ("PATCH", f"/jobs/{ID}", lambda q, b, j: _do(lambda: update(e, j, body(b), replace=False), done(j))),
        ("PUT", f"/jobs/{ID}", lambda q, b, j: _do(lambda: update(e, j, body(b), replace=True), done(j))),
        ("PUT", f"/jobs/{ID}/tasks/{ID}", lambda q, b, j, t: _do(lambda: update_task(e, j, t, body(b)), done(j))),
    ]


__all__ = ["routes", "missing_property"]
