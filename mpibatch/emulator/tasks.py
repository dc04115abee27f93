"""Tasks: add / add collection (at most 100 tasks, under 1 MB) / get / list / terminate / delete, their
subtasks and files. Scheduling and running are scheduler.py's."""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from . import exitoptions, files, jobs, pools, schema, versions
from .errors import BatchError, exists, new_etag, not_found, now_iso
from .state import key, public, set_state, touch

if TYPE_CHECKING:
    from .core import Emulator

MAX_TASKS_PER_COLLECTION = 100
MAX_COLLECTION_BYTES = 1024 * 1024
FOREVER = "P10675199DT2H48M5.4775807S"
_seq = itertools.count()


def resume_numbering(loaded: Iterable[dict[str, Any]]) -> None:
    """Tasks added after a restart come after the loaded ones in the scheduling order."""
    global _seq
    last = max((t.get("_seq", 0) for t in loaded if isinstance(t.get("_seq"), int)), default=-1)
    _seq = itertools.count(max(last + 1, next(_seq)))


def check(emu: Emulator, job: dict[str, Any], body: Any) -> dict[str, Any]:
    """Every rule a task body must pass before anything is stored."""
    body = schema.validate(body, "task.add", "task", required=("id", "commandLine"))
    mis = body.get("multiInstanceSettings")
    if mis is not None:
        if body.get("applicationPackageReferences"):
            raise schema.not_emulated("application packages of multi-instance tasks",
                                      "put the package among the task's commonResourceFiles")
        n = mis.get("numberOfInstances", 1)
        if not 1 <= n <= pools.MAX_NODES:
            raise schema.invalid_value("multiInstanceSettings.numberOfInstances", f"from 1 to {pools.MAX_NODES}")
        if body.get("requiredSlots", 1) != 1:
            raise schema.invalid_value("requiredSlots", "a multi-instance task takes one slot on each node")
        if body.get("dependsOn"):
            raise schema.invalid_value("dependsOn", "a multi-instance task cannot depend on other tasks here")
    exitoptions.check(body.get("exitConditions"), job.get("onTaskFailure") or "noaction")
    schema.drop_registry_password(body)
    if (body.get("requiredSlots") or 1) < 1:
        raise schema.invalid_value("requiredSlots", "at least 1")
    if body.get("dependsOn") and not job.get("usesTaskDependencies"):
        raise BatchError(409, "TaskDependenciesNotSpecifiedOnJob", "The job does not allow task dependencies: "
                         "create it with usesTaskDependencies=true.")
    for r in (body.get("dependsOn") or {}).get("taskIdRanges") or []:
        if not 0 <= r["start"] <= r["end"]:
            raise schema.invalid_value("dependsOn.taskIdRanges", "start must be <= end, both >= 0")
    for of in body.get("outputFiles") or []:
        if not of.get("filePattern") or not ((of.get("destination") or {}).get("container") or {}).get("containerUrl"):
            raise schema.missing_property("outputFiles.filePattern / destination.container.containerUrl")
        schema.enum((of.get("uploadOptions") or {}).get("uploadCondition") or "taskSuccess",
                    "outputFiles.uploadOptions.uploadCondition", ("taskSuccess", "taskFailure", "taskCompletion"))
    return body


def _active_job(emu: Emulator, job_id: str) -> dict[str, Any]:
    job = jobs.get(emu, job_id)
    if job["state"] in ("completed", "terminating"):
        raise BatchError(409, "JobCompleted", "The specified job is already in a completed state.")
    if job["state"] not in ("active", "disabling", "disabled"):  # a disabled job takes tasks, runs none
        raise BatchError(409, "JobNotActive", f"The specified job is in the {job['state']} state.")
    return job


def _store(emu: Emulator, job: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    k = key(job["id"], body["id"])
    if k in emu.store.tasks:
        raise exists("Task")
    t = now_iso()
    task = {**body, "url": f"{emu.endpoint}/jobs/{job['id']}/tasks/{body['id']}", "creationTime": t,
            "state": "active", "stateTransitionTime": t, "requiredSlots": body.get("requiredSlots") or 1,
            "constraints": {"maxWallClockTime": FOREVER, "retentionTime": "P7D",
                            "maxTaskRetryCount": (job.get("constraints") or {}).get("maxTaskRetryCount", 0),
                            **(body.get("constraints") or {})},
            "executionInfo": {"retryCount": 0, "requeueCount": 0},
            "_job": job["id"], "_pool": job["executionInfo"]["poolId"], "_seq": next(_seq)}
    touch(task)
    emu.store.tasks[k] = task
    return task


def add(emu: Emulator, job_id: str, body: Any) -> dict[str, Any]:
    with emu.store.lock:
        job = _active_job(emu, job_id)
        task = _store(emu, job, check(emu, job, body))
    emu.store.mark(("tasks", task))
    return task


def add_collection(emu: Emulator, job_id: str, raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_COLLECTION_BYTES:
        raise BatchError(413, "RequestBodyTooLarge", "The request body is too large and exceeds the maximum "
                         "permissible limit.", {"MaxLimit": str(MAX_COLLECTION_BYTES)})
    body = schema.parse_json(raw)
    if not isinstance(body, dict) or set(body) - {"value"}:
        raise schema.invalid_body("a task collection is {\"value\": [tasks]}")
    values = body.get("value")
    if not isinstance(values, list) or not values:
        raise schema.missing_property("value")
    if len(values) > MAX_TASKS_PER_COLLECTION:
        raise BatchError(400, "InvalidPropertyValue",
                         "The value provided for one of the properties in the request body is invalid.",
                         {"PropertyName": "value", "Reason": f"a collection holds at most "
                          f"{MAX_TASKS_PER_COLLECTION} tasks"})
    results = []
    with emu.store.lock:
        job = _active_job(emu, job_id)
        for v in values:
            tid = v.get("id") if isinstance(v, dict) else None
            try:
                task = _store(emu, job, check(emu, job, v))
                emu.store.mark(("tasks", task))
                results.append({"status": "success", "taskId": task["id"], "eTag": task["eTag"],
                                "lastModified": task["lastModified"], "location": task["url"]})
            except BatchError as e:
                err: dict[str, Any] = {"code": e.code, "message": {"lang": "en-US", "value": e.message}}
                if e.values:
                    err["values"] = [{"key": k, "value": val} for k, val in e.values.items()]
                results.append({"status": "clientError" if e.status < 500 else "serverError", "taskId": tid,
                                "error": err})
    emu.store.mark()
    return {"value": results}


def get(emu: Emulator, job_id: str, task_id: str) -> dict[str, Any]:
    jobs.get(emu, job_id)
    t = emu.store.tasks.get(key(job_id, task_id))
    if t is None:
        raise not_found("Task")
    return t


def view(t: dict[str, Any]) -> dict[str, Any]:
    out = public(t)
    out["executionInfo"] = dict(out.get("executionInfo") or {})
    return versions.answer(out, "task")


def listing(emu: Emulator, job_id: str) -> list[dict[str, Any]]:
    jobs.get(emu, job_id)
    with emu.store.lock:
        return [view(t) for t in emu.store.job_tasks(job_id)]


def counts(emu: Emulator, job_id: str) -> dict[str, Any]:
    jobs.get(emu, job_id)
    with emu.store.lock:
        ts = list(emu.store.job_tasks(job_id))
    c = {s: sum(1 for t in ts if t["state"] == s) for s in ("active", "running", "completed")}
    c["running"] += sum(1 for t in ts if t["state"] == "preparing")
    ok = sum(1 for t in ts if t["state"] == "completed" and t["executionInfo"].get("result") == "success")
    tc = {**c, "succeeded": ok, "failed": c["completed"] - ok}
    return versions.task_counts({"taskCounts": tc, "taskSlotCounts": {**tc}})


def terminate(emu: Emulator, job_id: str, task_id: str) -> None:
    t = get(emu, job_id, task_id)
    with emu.store.lock:
        if t["state"] == "completed":
            raise BatchError(409, "TaskCompleted", "The specified task is already completed.")
        if t["state"] == "active":
            set_state(t, "completed")
            t["executionInfo"].update({"endTime": now_iso(), "result": "failure", "failureInfo": {
                "category": "UserError", "code": "TaskEnded", "message": "Task was ended by user request."}})
            emu.store.mark(("tasks", t))
            return
    emu.scheduler.end_task(t)


def delete(emu: Emulator, job_id: str, task_id: str) -> None:
    t = get(emu, job_id, task_id)
    if t["state"] in ("running", "preparing"):
        emu.scheduler.end_task(t)
        emu.scheduler.wait_ended([t])
    with emu.store.lock:
        emu.store.tasks.pop(key(job_id, task_id), None)
    emu.store.gone("tasks", key(job_id, task_id))


def subtasks(emu: Emulator, job_id: str, task_id: str) -> list[dict[str, Any]]:
    t = get(emu, job_id, task_id)
    with emu.store.lock:
        return [versions.answer(dict(s), "task.subtask") for s in t.get("_subtasks", [])]


def task_dir(emu: Emulator, job_id: str, task_id: str) -> Path:
    t = get(emu, job_id, task_id)
    if not t.get("_task_dir"):
        raise BatchError(409, "TaskFilesUnavailable" if t["state"] == "active" else "FileNotFound",
                         "The files of the specified task are unavailable: it has not run yet."
                         if t["state"] == "active" else "The specified file does not exist.")
    return Path(t["_task_dir"])


def task_file(emu: Emulator, job_id: str, task_id: str, file_path: str) -> BinaryIO:
    """The task's file, open for reading; never through a symlink (a task's link to /etc/shadow is a 404)."""
    root = task_dir(emu, job_id, task_id)
    try:
        files.safe_join(root, file_path)
    except files.FileError:
        raise schema.invalid_value("filePath", "a path inside the task directory") from None
    f = files.open_file(root, file_path)
    if f is None:
        raise not_found("File")
    return f


def collection_count(raw: bytes) -> int:
    try:
        return len(json.loads(raw).get("value") or [])
    except (ValueError, AttributeError, RecursionError):
        return 0


__all__ = ["add", "add_collection", "get", "new_etag"]
