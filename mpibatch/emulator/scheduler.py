"""Scheduling as the Batch docs describe it: active tasks in the order they were added (higher job
priority first) go to nodes that are idle or running with enough free task slots (`spread` or `pack`),
after their `dependsOn` tasks succeeded. A multi-instance task needs a pool with inter-node communication,
one task slot per node and at least as many nodes as instances - otherwise it stays active, with no
error, as on Batch ("Use multi-instance tasks to run MPI applications"); it then waits for that many nodes
with nothing running. Ordinary tasks run as processes on their node (nodes.py); multi-instance tasks run
on rehearsal nodes (mpibatch's LocalExecutor), so `mpiexec -hosts $AZ_BATCH_HOST_LIST` reaches every one."""
from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..launchers.protocol import task_dir_rel
from . import apppackages, exitoptions, files, identity, jobmanager, jobs, multi, spot
from .errors import now_iso
from .fetch import fetch, left
from .nodes import env_settings, node_env
from .state import key, set_state

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)
PASS_EVERY_S = 1.0  # a scheduling pass at least this often, and after every change
RECENT_TASKS = 5


def no_containers(t: dict[str, Any]) -> dict[str, Any] | None:
    """A container task is stored and returned, but never run: the emulator has no container runtime and
    no image registry. It completes with this failure when it would start, never as a silent success."""
    image = (t.get("containerSettings") or {}).get("imageName")
    if not image:
        return None
    return {"category": "UserError", "code": "NotSupportedByEmulator",
            "message": f"mpibatch emulate runs no containers (no container runtime, no image registry): the task's "
                       f"containerSettings (image {image}) were stored, not run"}


class Scheduler:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._workers: dict[str, threading.Thread] = {}
        self._locks: dict[str, threading.Lock] = defaultdict(threading.Lock)
        self._runs: dict[str, Any] = {}  # task key -> the multi-instance run (to end it)

    # ------------------------------------------------------------------ control
    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="emulator-scheduler", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        self._stop.set()
        self.emu.store.mark()
        with self.emu.store.lock:
            tasks = [t for t in self.emu.store.tasks.values() if t["state"] in ("running", "preparing")]
        for t in tasks:
            self.end_task(t, reason="stopping")
        self.emu.procs.end_all()
        deadline = time.monotonic() + timeout
        for w in list(self._workers.values()):
            w.join(max(0.1, deadline - time.monotonic()))
        if self._thread is not None:
            self._thread.join(5)

    def node_job_lock(self, node_id: str, job_id: str) -> threading.Lock:
        return self._locks[f"{node_id}/{job_id.lower()}"]

    def end_task(self, t: dict[str, Any], *, requeue: bool = False, reason: str = "user") -> None:
        """End a running task's processes; its worker then completes it (TaskEnded)."""
        k = key(t["_job"], t["id"])
        t["_ending"] = reason
        self.emu.procs.end(f"task:{k}")
        run = self._runs.get(k)
        if run is not None:
            run.end()

    def requeue(self, t: dict[str, Any], nodes: list[dict[str, Any]], why: str) -> None:
        """A task whose node went away under it (preempted, rebooted, left the pool): `active` again, to run
        from the start - requeueCount + 1, its retry count unchanged - its nodes freed (a preempted one stays
        `preempted`); its processes have all ended."""
        emu, k = self.emu, key(t["_job"], t["id"])
        with emu.store.lock:
            for n in nodes:
                if k in n["_running"]:
                    n["_running"].remove(k)
                    n["runningTasksCount"] -= 1
                    n["runningTaskSlotsCount"] -= t["requiredSlots"]
                if not n["_running"] and n["state"] == "running":
                    set_state(n, "idle")
            info = t["executionInfo"]
            for name in ("startTime", "endTime", "exitCode", "failureInfo", "result"):
                info.pop(name, None)
            info["requeueCount"] = count = info.get("requeueCount", 0) + 1
            info["lastRequeueTime"] = now_iso()
            for name in ("_ending", "_nodes", "_subtasks", "nodeInfo", "_task_dir"):
                t.pop(name, None)
            set_state(t, "active")
            self._workers.pop(k, None)  # its worker is done with it
        emu.procs.allow(f"task:{k}")  # the next attempt may run
        emu.store.mark(("tasks", t), *(("nodes", n) for n in nodes if key(n["_pool"], n["id"]) in emu.store.nodes))
        emu.event(f"task {t['_job']}/{t['id']}: requeued ({why}), requeue count {count}")

    def wait_ended(self, tasks: list[dict[str, Any]], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        for t in tasks:
            w = self._workers.get(key(t["_job"], t["id"]))
            if w is not None:
                w.join(max(0.1, deadline - time.monotonic()))

    # ------------------------------------------------------------------ assignment
    def _loop(self) -> None:
        store = self.emu.store
        while not self._stop.is_set():
            with store.lock:
                store.changed.wait(PASS_EVERY_S)
                if self._stop.is_set():
                    return
                started = self._pass()
            for k, t, nodes in started:
                target = self._run_multi if "multiInstanceSettings" in t else self._run_ordinary
                w = threading.Thread(target=self._guard, args=(target, t, nodes), name=f"task-{t['id']}",
                                     daemon=True)
                self._workers[k] = w
                w.start()

    def _pass(self) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
        store = self.emu.store
        started = []
        free: dict[str, list[dict[str, Any]]] = {}
        for p in store.pools.values():
            if p["state"] == "active":
                free[p["id"].lower()] = [n for n in store.pool_nodes(p["id"])
                                            if n["state"] in ("idle", "running") and n["schedulingState"] == "enabled"]
        order = sorted((t for t in store.tasks.values() if t["state"] == "active"),
                       key=lambda t: (-store.jobs[key(t["_job"])].get("priority", 0), t["_seq"]))
        for t in order:
            job = store.jobs[key(t["_job"])]
            pool = store.pools.get(key(t["_pool"]))
            if job["state"] != "active" or pool is None or not free.get(pool["id"].lower()):
                continue
            if not self._deps_done(t):
                continue
            slots = pool["taskSlotsPerNode"]
            candidates = free[pool["id"].lower()]
            if "multiInstanceSettings" in t:
                n = t["multiInstanceSettings"].get("numberOfInstances", 1)
                if not pool["enableInterNodeCommunication"] or slots != 1 or \
                        n > pool["currentDedicatedNodes"] + pool["currentLowPriorityNodes"]:
                    continue  # never scheduled: stays active, as on Batch
                idle = [c for c in candidates if not c["_running"]]
                if len(idle) < n:
                    continue
                chosen = sorted(idle, key=lambda c: c["_index"])[:n]
            else:
                need = t["requiredSlots"]
                fits = [c for c in candidates if slots - c["runningTaskSlotsCount"] >= need]
                if not fits:
                    continue
                fill = pool["taskSchedulingPolicy"]["nodeFillType"]
                pick = (min if fill == "spread" else max)(fits, key=lambda c: (c["runningTaskSlotsCount"], c["_index"]))
                chosen = [pick]
            k = key(t["_job"], t["id"])
            for c in chosen:
                c["_running"].append(k)
                c["runningTasksCount"] += 1
                c["runningTaskSlotsCount"] += t["requiredSlots"]
                set_state(c, "running")
                if c["runningTaskSlotsCount"] >= slots:
                    candidates.remove(c)
            set_state(t, "preparing")
            t["_nodes"] = [c["id"] for c in chosen]
            store.mark(("tasks", t), *(("nodes", c) for c in chosen))
            started.append((k, t, chosen))
        return started

    def _deps_done(self, t: dict[str, Any]) -> bool:
        deps = t.get("dependsOn")
        if not deps:
            return True
        store = self.emu.store
        ids = list(deps.get("taskIds") or [])
        for r in deps.get("taskIdRanges") or []:
            ids += [str(i) for i in range(r["start"], r["end"] + 1)]
        for d in ids:
            dep = store.tasks.get(key(t["_job"], d))
            if dep is None or dep["state"] != "completed":
                return False
            ok = dep["executionInfo"].get("result") == "success"  # the default exit options, when none noted
            if dep.get("_dependencyAction", "satisfy" if ok else "block") != "satisfy":
                return False
        return True

    # ------------------------------------------------------------------ running
    def _guard(self, target: Any, t: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        try:
            self.emu.store.flush()  # on disk before any process starts: a restart knows it was started
            target(t, nodes)
        except Exception as e:  # noqa: BLE001 - an emulator bug becomes the task's failure, never a hang
            log.exception("task %s", t["id"])
            self._complete(t, nodes, None, {"category": "ServerError", "code": "EmulatorError",
                                            "message": f"mpibatch emulate failed to run the task: {e}"})

    def _prepared(self, t: dict[str, Any], nodes: list[dict[str, Any]]) -> dict[str, Any] | None:
        job = self.emu.store.jobs[key(t["_job"])]
        for n in nodes:
            jobs.ran_on(self.emu, job, n)
            failure = jobs.prepare(self.emu, job, n)
            if failure:
                return failure
        return None

    def _run_ordinary(self, t: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        emu, node = self.emu, nodes[0]
        failure = no_containers(t) or self._prepared(t, nodes)
        if failure:
            return self._complete(t, nodes, None, failure)
        job = emu.store.jobs[key(t["_job"])]
        task_dir = Path(node["_root"]) / task_dir_rel(t["_job"], t["id"])
        rel = task_dir.relative_to(node["_root"]).as_posix()
        with emu.store.lock:
            t["_task_dir"] = str(task_dir)
            t["nodeInfo"] = {"affinityId": node["affinityId"], "nodeUrl": node["url"], "poolId": node["_pool"],
                             "nodeId": node["id"], "taskRootDirectory": rel,
                             "taskRootDirectoryUrl": f"{node['url']}/files/{rel}"}
            set_state(t, "running")
            t["executionInfo"]["startTime"] = now_iso()
        emu.store.mark(("tasks", t))
        emu.store.flush()
        emu.event(f"task {t['_job']}/{t['id']}: running on node {node['id']}")
        env = node_env(emu.image, account=emu.account, account_url=emu.endpoint, pool_id=node["_pool"], node=node,
                       job_id=t["_job"], task_id=t["id"], task_dir=task_dir)
        refs = t.get("applicationPackageReferences")
        apps, failure = apppackages.install(emu.applications, Path(node["_root"]), refs)
        if failure:
            return self._complete(t, nodes, None, failure)
        env |= apps | env_settings(job.get("commonEnvironmentSettings")) | env_settings(t.get("environmentSettings"))
        retries = t["constraints"].get("maxTaskRetryCount") or 0
        retries = 3 if retries < 0 else retries
        user = identity.for_task(node, t.get("userIdentity"), emu.store.pools.get(key(node["_pool"])))
        outcome = None
        for attempt in range(retries + 1):
            with emu.store.lock:
                t["executionInfo"]["retryCount"] = attempt
            owner, wall = f"task:{key(t['_job'], t['id'])}", emu.seconds(t["constraints"].get("maxWallClockTime"))
            started = time.monotonic()  # the wall clock covers the resource files' download, as on a node
            failure = fetch(emu.procs, owner, t.get("resourceFiles"), emu.storage, task_dir / "wd", wall, user)
            if failure:
                break
            outcome = emu.procs.run(owner, t["commandLine"], env, task_dir, left(wall, started), user)
            failure = outcome.failure
            if failure is None and outcome.exit_code == 0 or t.get("_ending") or \
                    (failure and failure["code"] == "TaskEnded"):
                break
        self._outputs_and_complete(t, nodes, task_dir, outcome.exit_code if outcome else None, failure)

    def _run_multi(self, t: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        failure = no_containers(t) or self._prepared(t, nodes)
        if failure:
            return self._complete(t, nodes, None, failure)
        run = multi.MultiInstanceRun(self.emu, t, nodes)
        self._runs[key(t["_job"], t["id"])] = run
        if t.get("_ending"):  # preempted (or ended) while its nodes were being prepared
            run.end()
        try:
            exit_code, failure, task_dir = run.run()
        finally:
            self._runs.pop(key(t["_job"], t["id"]), None)
        self._outputs_and_complete(t, nodes, task_dir, exit_code, failure)

    def _outputs_and_complete(self, t: dict[str, Any], nodes: list[dict[str, Any]], task_dir: Path | None,
                              exit_code: int | None, failure: dict[str, Any] | None) -> None:
        if t.get("_ending") == spot.PREEMPTED:  # evicted: no outputs, no completion - back to the queue
            return self.requeue(t, nodes, "its node was preempted")
        if failure is None and exit_code not in (None, 0):
            failure = {"category": "UserError", "code": "FailureExitCode",
                       "message": f"The task exited with an exit code representing a failure ({exit_code})."}
        if t.get("_ending") == "requeue":  # its node rebooted or left the pool under it: active again
            return self.requeue(t, nodes, "its node rebooted or left the pool")
        if t.get("_ending"):  # ended by a request or by the emulator stopping: no exit code of its own
            exit_code = None
            failure = {"category": "ServerError", "code": "EmulatorStopped", "message": "mpibatch emulate was "
                       "stopped while this task was running"} if t["_ending"] == "stopping" else \
                {"category": "UserError", "code": "TaskEnded", "message": "Task was ended by user request."}
        if task_dir is not None and t.get("outputFiles"):
            errors = files.upload_outputs(t["outputFiles"], task_dir, failure is None and exit_code == 0)
            if errors and failure is None:
                failure = {"category": "UserError", "code": "FileUploadFailed", "message": "; ".join(errors)}
        self._complete(t, nodes, exit_code, failure)

    def _complete(self, t: dict[str, Any], nodes: list[dict[str, Any]], exit_code: int | None,
                  failure: dict[str, Any] | None) -> None:
        emu = self.emu
        if t.get("_ending") == spot.PREEMPTED:
            return self.requeue(t, nodes, "its node was preempted")
        k = key(t["_job"], t["id"])
        with emu.store.lock:
            info = t["executionInfo"]
            info.update({"endTime": now_iso(), "result": "success" if failure is None else "failure"})
            info.setdefault("startTime", info["endTime"])
            if exit_code is not None:
                info["exitCode"] = exit_code
            if failure:
                info["failureInfo"] = failure
            t["_dependencyAction"] = exitoptions.choose(t.get("exitConditions"), exit_code,
                                                        (failure or {}).get("code"))[1]
            set_state(t, "completed")
            for n in nodes:
                if k in n["_running"]:
                    n["_running"].remove(k)
                    n["runningTasksCount"] -= 1
                    n["runningTaskSlotsCount"] -= t["requiredSlots"]
                n["totalTasksRun"] += 1
                n["totalTasksSucceeded"] += failure is None
                n["recentTasks"] = ([{"taskUrl": t["url"], "jobId": t["_job"], "taskId": t["id"],
                                      "taskState": "completed", "executionInfo": dict(info)}]
                                    + n["recentTasks"])[:RECENT_TASKS]
                if not n["_running"] and n["state"] == "running":
                    set_state(n, "idle")
            self._workers.pop(k, None)
            job = emu.store.jobs.get(key(t["_job"]))
        emu.store.mark(("tasks", t), *(("nodes", n) for n in nodes if key(n["_pool"], n["id"]) in emu.store.nodes))
        emu.event(f"task {t['_job']}/{t['id']}: completed, " + (f"exit code {exit_code}" if exit_code is not None
                                                               else "no exit code")
                  + (f" ({failure['code']}: {failure['message']})" if failure else ""))
        if job is not None:
            if not t.get("_ending"):
                exitoptions.take_job_action(emu, job, t)
            jobmanager.on_complete(emu, job, t)
            jobs.check_all_complete(emu, job)
