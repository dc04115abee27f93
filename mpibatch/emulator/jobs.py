"""Jobs: add / get / list / terminate / delete, `onAllTasksComplete`, the job preparation task (run on a
node before its first task of the job) and the release task (on every node that ran one of its tasks,
when the job is terminated or deleted), and the preparation-and-release status list."""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..launchers.protocol import task_dir_rel
from . import autopools, identity, jobmanager, schema, versions
from .errors import BatchError, exists, not_found, now_iso
from .fetch import fetch, left
from .nodes import env_settings, node_env
from .state import key, public, set_state, touch

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)


def add(emu: Emulator, body: Any) -> dict[str, Any]:
    body = schema.validate(body, "job.add", "job", required=("id",))
    return create(emu, check_spec(body, in_schedule=False))


def check_spec(body: dict[str, Any], *, in_schedule: bool) -> dict[str, Any]:
    """The rules of a job (or a job schedule's jobSpecification) past its JSON types; the body with its
    enumerations spelled as the API spells them. Nothing is created."""
    pool_info = body.get("poolInfo") or {}
    if not pool_info.get("poolId") and not pool_info.get("autoPoolSpecification"):
        raise schema.missing_property("poolInfo.poolId")
    auto = autopools.check(pool_info.get("autoPoolSpecification"), in_schedule=in_schedule)
    on_all = schema.enum(body.get("onAllTasksComplete") or "noaction", "onAllTasksComplete",
                         ("noaction", "terminatejob"))
    on_fail = schema.enum(body.get("onTaskFailure") or "noaction", "onTaskFailure",
                          ("noaction", "performexitoptionsjobaction"))
    for name in ("jobPreparationTask", "jobReleaseTask"):
        if body.get(name) and not body[name].get("commandLine"):
            raise schema.missing_property(f"{name}.commandLine")
    jobmanager.check(body.get("jobManagerTask"))
    out = {**body, "onAllTasksComplete": on_all, "onTaskFailure": on_fail}
    if auto is not None:
        out["poolInfo"] = {**pool_info, "autoPoolSpecification": auto}
    return out


def create(emu: Emulator, body: dict[str, Any], *, pool_id: str | None = None) -> dict[str, Any]:
    """Store a checked job; its auto pool (lifetime job) is created here, a job schedule's own auto pool is
    `pool_id`. The job manager task, if any, is the job's first task."""
    auto = (body.get("poolInfo") or {}).get("autoPoolSpecification")
    with emu.store.lock:
        if key(body["id"]) in emu.store.jobs:
            raise exists("Job")
        own_pool = None
        if auto is not None and pool_id is None:
            pool_id = own_pool = autopools.create(emu, auto, f"job:{body['id']}")
        pool_id = pool_id or body["poolInfo"]["poolId"]
        t = now_iso()
        job = {**body, "url": f"{emu.endpoint}/jobs/{body['id']}", "creationTime": t, "state": "active",
               "stateTransitionTime": t, "priority": body.get("priority", 0),
               "usesTaskDependencies": bool(body.get("usesTaskDependencies")),
               "constraints": {"maxWallClockTime": "P10675199DT2H48M5.4775807S", "maxTaskRetryCount": 0,
                               **(body.get("constraints") or {})},
               "executionInfo": {"startTime": t, "poolId": pool_id}, "_nodes": {}}
        if own_pool:
            job["_autoPool"] = own_pool
        touch(job)
        emu.store.jobs[key(body["id"])] = job
        manager = jobmanager.add_task(emu, job)
    emu.store.mark(("jobs", job), *((("tasks", manager),) if manager else ()))
    emu.event(f"job {body['id']}: added on pool {pool_id}")
    return job


def get(emu: Emulator, job_id: str) -> dict[str, Any]:
    job = emu.store.jobs.get(key(job_id))
    if job is None:
        raise not_found("Job")
    return job


def view(job: dict[str, Any]) -> dict[str, Any]:
    return versions.answer(public(job), "job")


def terminate(emu: Emulator, job_id: str, body: Any, *, reason: str = "UserTerminate") -> None:
    if body:
        schema.validate(body, "job.terminate", "job")
    job = get(emu, job_id)
    with emu.store.lock:
        if job["state"] in ("completed", "terminating", "deleting"):
            raise BatchError(409, "JobCompleted", "The specified job is already in a completed state.")
        set_state(job, "terminating")
        job["executionInfo"]["terminateReason"] = (body or {}).get("terminateReason") or reason
    emu.store.mark(("jobs", job))
    emu.event(f"job {job['id']}: terminating ({job['executionInfo']['terminateReason']})")
    threading.Thread(target=_finish, args=(emu, job, "completed"), name=f"end-{job_id}", daemon=True).start()


def delete(emu: Emulator, job_id: str) -> None:
    job = get(emu, job_id)
    with emu.store.lock:
        if job["state"] == "deleting":
            return
        set_state(job, "deleting")
    emu.store.mark(("jobs", job))
    emu.event(f"job {job['id']}: deleting")
    threading.Thread(target=_finish, args=(emu, job, None), name=f"delete-{job_id}", daemon=True).start()


def _finish(emu: Emulator, job: dict[str, Any], final: str | None) -> None:
    """End the job's running tasks, run the release task where needed, then complete (or remove) it."""
    with emu.store.lock:
        running = [t for t in emu.store.job_tasks(job["id"]) if t["state"] in ("running", "preparing")]
    for t in running:
        emu.scheduler.end_task(t)
    emu.scheduler.wait_ended(running)
    release_all(emu, job)
    with emu.store.lock:
        if final is None:
            for k in [k for k in emu.store.tasks if k.startswith(key(job["id"]) + "/")]:
                del emu.store.tasks[k]
                emu.store.gone("tasks", k)
            del emu.store.jobs[key(job["id"])]
            emu.store.gone("jobs", key(job["id"]))
        else:
            set_state(job, final)
            job["executionInfo"]["endTime"] = now_iso()
            emu.store.mark(("jobs", job))
    emu.event(f"job {job['id']}: {'deleted' if final is None else final}")
    autopools.owner_ended(emu, job.get("_autoPool"), f"job:{job['id']}")


def check_all_complete(emu: Emulator, job: dict[str, Any]) -> None:
    """onAllTasksComplete=terminateJob: once every task of the job has completed."""
    with emu.store.lock:
        if job.get("onAllTasksComplete") != "terminatejob" or job["state"] != "active":
            return
        tasks = list(emu.store.job_tasks(job["id"]))
        if not tasks or any(t["state"] != "completed" for t in tasks):
            return
    try:
        terminate(emu, job["id"], None, reason="AllTasksComplete")
    except BatchError:
        pass


# ---------------------------------------------------------------------------------- preparation / release
def _node_entry(emu: Emulator, job: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    return job["_nodes"].setdefault(node["id"], {"poolId": node["_pool"], "nodeId": node["id"],
                                                 "nodeUrl": node["url"]})


def _task_info(emu: Emulator, node: dict[str, Any], job: dict[str, Any], name: str) -> dict[str, Any]:
    rel = task_dir_rel(job["id"], name)
    return {"startTime": now_iso(), "state": "running", "taskRootDirectory": rel,
            "taskRootDirectoryUrl": f"{node['url']}/files/{rel}", "retryCount": 0}


def _run_node_task(emu: Emulator, job: dict[str, Any], node: dict[str, Any], name: str,
                   spec: dict[str, Any]) -> dict[str, Any]:
    task_dir = Path(node["_root"]) / task_dir_rel(job["id"], name)
    info = _task_info(emu, node, job, name)
    outcome = None
    owner = f"job:{job['id']}:{node['id']}"
    wall = emu.seconds((spec.get("constraints") or {}).get("maxWallClockTime") or spec.get("maxWallClockTime"))
    started = time.monotonic()  # the wall clock covers the resource files' download
    user = identity.for_task(node, spec.get("userIdentity"), emu.store.pools.get(key(node["_pool"])))
    failure = fetch(emu.procs, owner, spec.get("resourceFiles"), emu.storage, task_dir / "wd", wall, user)
    if failure is None:
        env = node_env(emu.image, account=emu.account, account_url=emu.endpoint, pool_id=node["_pool"], node=node,
                       job_id=job["id"], task_id=spec.get("id") or name, task_dir=task_dir)
        env.update(env_settings(job.get("commonEnvironmentSettings")))
        env.update(env_settings(spec.get("environmentSettings")))
        outcome = emu.procs.run(owner, spec["commandLine"], env, task_dir, left(wall, started), user)
        failure = outcome.failure
    info.update({"state": "completed", "endTime": now_iso(),
                 "result": "success" if failure is None and outcome and outcome.exit_code == 0 else "failure"})
    if outcome is not None and outcome.exit_code is not None:
        info["exitCode"] = outcome.exit_code
    if failure:
        info["failureInfo"] = failure
    return info


def prepare(emu: Emulator, job: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    """Run the job preparation task on `node` unless it ran there already; the failureInfo if it failed
    and waitForSuccess holds the job's tasks back."""
    spec = job.get("jobPreparationTask")
    if not spec:
        return None
    lock = emu.scheduler.node_job_lock(node["id"], job["id"])
    with lock:
        with emu.store.lock:
            done = (job["_nodes"].get(node["id"]) or {}).get("jobPreparationTaskExecutionInfo")
            if done and done["state"] == "completed":
                return _prep_failure(spec, done)
            _node_entry(emu, job, node)["jobPreparationTaskExecutionInfo"] = _task_info(
                emu, node, job, "jobpreparation")
        emu.event(f"job {job['id']}: preparation task on node {node['id']}")
        info = _run_node_task(emu, job, node, "jobpreparation", spec)
        with emu.store.lock:
            _node_entry(emu, job, node)["jobPreparationTaskExecutionInfo"] = info
        emu.store.mark(("jobs", job))
        return _prep_failure(spec, info)


def _prep_failure(spec: dict[str, Any], info: dict[str, Any]) -> dict[str, Any] | None:
    if info.get("result") == "success" or not spec.get("waitForSuccess", True):
        return None
    why = info.get("failureInfo", {}).get("message") or f"exit code {info.get('exitCode')}"
    return {"category": "UserError", "code": "JobPreparationTaskFailed",
            "message": f"The job preparation task failed on the node: {why}"}


def ran_on(emu: Emulator, job: dict[str, Any], node: dict[str, Any]) -> None:
    with emu.store.lock:
        _node_entry(emu, job, node).setdefault("_ran", True)


def release_all(emu: Emulator, job: dict[str, Any]) -> None:
    spec = job.get("jobReleaseTask")
    with emu.store.lock:
        targets = [(nid, e) for nid, e in job["_nodes"].items() if e.get("_ran") or
                   e.get("jobPreparationTaskExecutionInfo")]
    if not spec:
        return
    for nid, entry in targets:
        node = emu.store.nodes.get(key(entry["poolId"], nid))
        if node is None:
            continue
        emu.event(f"job {job['id']}: release task on node {nid}")
        info = _run_node_task(emu, job, node, "jobrelease", spec)
        with emu.store.lock:
            entry["jobReleaseTaskExecutionInfo"] = info
    emu.store.mark(("jobs", job))


def prep_release_status(emu: Emulator, job_id: str) -> list[dict[str, Any]]:
    job = get(emu, job_id)
    with emu.store.lock:
        return [versions.answer(public(e), "job.preprelease") for e in job["_nodes"].values()]
