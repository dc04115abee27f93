"""Pools and their nodes: add / get / list / delete / exists (resize: poolops.py), nodes joining with
the pool's start task (`waitForSuccess` holds a node in `starting`; a failed start task leaves it
`starttaskfailed`), node list / get and the node's files."""
from __future__ import annotations

import logging
import secrets
import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ..launchers.protocol import NODE_DIRS
from . import apppackages, files, identity, mounts, schema, versions
from .endpoints import node_network
from .errors import exists, not_found, now_iso
from .fetch import fetch
from .nodes import env_settings, node_env
from .state import key, public, set_state, touch

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)
MAX_NODES = 100  # the emulator's cap per pool (Batch caps inter-node pools at 100)
START_TASK_RETRY_CAP = 3  # maxTaskRetryCount -1 (forever) is bounded here
FOREVER = "P10675199DT2H48M5.4775807S"


def add(emu: Emulator, body: Any) -> dict[str, Any]:
    body = schema.validate(body, "pool.add", "pool", required=("id", "vmSize"))
    from .poolops import check_new_pool  # poolops builds on this module

    check_new_pool(body)
    nodes, low = body.get("targetDedicatedNodes") or 0, body.get("targetLowPriorityNodes") or 0
    slots = body.get("taskSlotsPerNode") or 1
    for name, value in (("targetDedicatedNodes", nodes), ("targetLowPriorityNodes", low)):
        if not 0 <= value <= MAX_NODES or nodes + low > MAX_NODES:
            raise schema.invalid_value(name, f"the emulator runs 0 to {MAX_NODES} nodes a pool, Spot included")
    if not 1 <= slots <= 256:
        raise schema.invalid_value("taskSlotsPerNode", "from 1 to 256")
    fill = schema.enum((body.get("taskSchedulingPolicy") or {}).get("nodeFillType") or "spread",
                       "taskSchedulingPolicy.nodeFillType", ("spread", "pack"))
    with emu.store.lock:
        if key(body["id"]) in emu.store.pools:
            raise exists("Pool")
        t = now_iso()
        pool = {**body, "url": f"{emu.endpoint}/pools/{body['id']}", "creationTime": t, "state": "active",
                "stateTransitionTime": t, "allocationState": "resizing", "allocationStateTransitionTime": t,
                "resizeTimeout": body.get("resizeTimeout") or "PT15M", "currentDedicatedNodes": 0,
                "currentLowPriorityNodes": 0, "targetDedicatedNodes": nodes, "targetLowPriorityNodes": low,
                "enableAutoScale": bool(body.get("enableAutoScale")),
                "enableInterNodeCommunication": bool(body.get("enableInterNodeCommunication")),
                "taskSlotsPerNode": slots, "_next_node": 0,
                "taskSchedulingPolicy": {**(body.get("taskSchedulingPolicy") or {}), "nodeFillType": fill}}
        touch(pool)
        emu.store.pools[key(body["id"])] = pool
    emu.event(f"pool {body['id']}: added ({nodes} nodes" + (f" + {low} Spot" if low else "") + f" x {slots} slots)")
    resize_to(emu, pool, nodes, low)
    if pool["enableAutoScale"]:  # the formula's first run sets the target
        from .poolops import run_autoscale

        run_autoscale(emu, pool)
    return pool


def get(emu: Emulator, pool_id: str) -> dict[str, Any]:
    pool = emu.store.pools.get(key(pool_id))
    if pool is None or pool.get("state") == "deleted":
        raise not_found("Pool")
    return pool


def view(pool: dict[str, Any]) -> dict[str, Any]:
    return versions.answer(public(pool), "pool")


def node_view(n: dict[str, Any]) -> dict[str, Any]:
    return versions.answer(public(n), "node")




def resize_to(emu: Emulator, pool: dict[str, Any], target: int, low: int = 0) -> None:
    """Add nodes (each runs the start task as it joins) or remove idle ones - dedicated to `target`,
    Spot to `low` (a preempted Spot node is removed first) - then steady."""
    with emu.store.lock:
        pool["allocationState"], pool["allocationStateTransitionTime"] = "resizing", now_iso()
        joining, removable = [], []
        for dedicated, want in ((True, target), (False, low)):
            nodes = [n for n in emu.store.pool_nodes(pool["id"]) if n.get("isDedicated", True) is dedicated]
            joining += [_new_node(emu, pool, dedicated) for _ in range(max(0, want - len(nodes)))]
            idle = sorted((n for n in nodes if not n["_running"]), key=lambda n: n["state"] != "preempted")
            removable += idle[::-1][:max(0, len(nodes) - want)] if dedicated else idle[:max(0, len(nodes) - want)]
        for n in removable:
            del emu.store.nodes[key(pool["id"], n["id"])]
            emu.store.gone("nodes", key(pool["id"], n["id"]))
        count_nodes(emu, pool)
        pool["allocationState"], pool["allocationStateTransitionTime"] = "steady", now_iso()
        touch(pool)
    emu.store.mark(("pools", pool), *(("nodes", n) for n in joining))
    if joining or removable:
        emu.event(f"pool {pool['id']}: {pool['currentDedicatedNodes']} nodes"
                  + (f" + {pool['currentLowPriorityNodes']} Spot" if pool["currentLowPriorityNodes"] else ""))
    for n in joining:
        threading.Thread(target=join, args=(emu, pool, n), name=f"node-{n['id']}", daemon=True).start()


def count_nodes(emu: Emulator, pool: dict[str, Any]) -> None:
    """The pool's current dedicated and Spot counts, from its nodes (caller holds the store's lock)."""
    kinds = [n.get("isDedicated", True) for n in emu.store.pool_nodes(pool["id"])]
    pool["currentDedicatedNodes"], pool["currentLowPriorityNodes"] = kinds.count(True), kinds.count(False)


def _new_node(emu: Emulator, pool: dict[str, Any], dedicated: bool = True) -> dict[str, Any]:
    i = pool["_next_node"]
    pool["_next_node"] = i + 1
    node_id = f"tvmps_{secrets.token_hex(16)}_{'d' if dedicated else 'p'}"  # as Batch names them
    root = emu.work_dir / "nodes" / pool["id"] / node_id
    for d in NODE_DIRS:
        (root / d).mkdir(parents=True, exist_ok=True)
    identity.own_node_root(root, node_id)  # its tasks' files are its user's (identity.py)
    t = now_iso()
    node = {"id": node_id, "url": f"{emu.endpoint}/pools/{pool['id']}/nodes/{node_id}", "state": "creating",
            "schedulingState": "enabled", "stateTransitionTime": t, "lastBootTime": t, "allocationTime": t,
            "ipAddress": f"127.0.2.{i % 250 + 1}", "affinityId": f"TVM:{node_id}", "vmSize": pool["vmSize"],
            "totalTasksRun": 0, "totalTasksSucceeded": 0, "runningTasksCount": 0, "runningTaskSlotsCount": 0,
            "isDedicated": dedicated, "recentTasks": [],
            "nodeAgentInfo": {"version": "mpibatch-emulate", "lastUpdateTime": t},
            "_root": str(root), "_running": [], "_pool": pool["id"], "_index": i, **node_network(pool, i)}
    emu.store.nodes[key(pool["id"], node_id)] = node
    return node


def _install_packages(emu: Emulator, pool: dict[str, Any], node: dict[str, Any]) -> dict[str, Any] | None:
    """The pool's application packages on a node that joins (or rejoins after a reboot): None, or the node's
    error when one cannot be installed."""
    env, failure = apppackages.install(emu.applications, Path(node["_root"]), pool.get("applicationPackageReferences"))
    with emu.store.lock:
        node["_appEnv"] = env
    if failure is None:
        return None
    return {"code": failure["code"], "message": failure["message"],
            "errorDetails": [{"name": "Reason", "value": failure["message"]}]}


def join(emu: Emulator, pool: dict[str, Any], node: dict[str, Any]) -> None:
    mount_error = mounts.mount(emu, pool, node) or _install_packages(emu, pool, node)
    if mount_error:  # as on the service: the node is unusable and says why
        with emu.store.lock:
            node["errors"] = [mount_error]
            set_state(node, "unusable")
        emu.store.mark(("nodes", node))
        emu.event(f"node {node['id']} of pool {pool['id']}: unusable ({mount_error['message']})")
        return
    node.pop("errors", None)
    st = pool.get("startTask")
    if not st:
        with emu.store.lock:
            if node["state"] != "preempted":
                set_state(node, "idle")
        emu.store.mark(("nodes", node))
        emu.event(f"node {node['id']} of pool {pool['id']}: idle")
        return
    wait = st.get("waitForSuccess", True)
    with emu.store.lock:
        set_state(node, "starting" if wait else "idle")
        node["startTask"] = st
        node["startTaskInfo"] = {"state": "running", "startTime": now_iso(), "retryCount": 0}
    emu.store.mark(("nodes", node))
    retries = st.get("maxTaskRetryCount") or 0
    retries = START_TASK_RETRY_CAP if retries < 0 else min(retries, START_TASK_RETRY_CAP)
    task_dir = Path(node["_root"]) / "startup"
    user = identity.for_task(node, st.get("userIdentity"), pool)
    outcome = None
    for attempt in range(retries + 1):
        failure = fetch(emu.procs, f"node:{node['id']}", st.get("resourceFiles"), emu.storage, task_dir / "wd", None,
                        user)
        if failure is None:
            env = node_env(emu.image, account=emu.account, account_url=emu.endpoint, pool_id=pool["id"], node=node,
                           job_id=None, task_id="starttask", task_dir=task_dir)
            outcome = emu.procs.run(f"node:{node['id']}", st["commandLine"], {**env, **env_settings(
                st.get("environmentSettings"))}, task_dir, None, user)
            failure = outcome.failure
            if failure is None and outcome.exit_code != 0:
                failure = {"category": "UserError", "code": "FailureExitCode",
                           "message": f"The start task exited with code {outcome.exit_code}."}
        with emu.store.lock:
            info = node["startTaskInfo"]
            info["retryCount"] = attempt
            if failure is None or attempt == retries:
                info.update({"state": "completed", "endTime": now_iso(),
                             "result": "success" if failure is None else "failure"})
                if outcome is not None and outcome.exit_code is not None:
                    info["exitCode"] = outcome.exit_code
                if failure:
                    info["failureInfo"] = failure
                if wait and node["state"] != "preempted":  # an evicted node stays evicted
                    set_state(node, "idle" if failure is None else "starttaskfailed")
                break
    emu.store.mark(("nodes", node))
    emu.event(f"node {node['id']} of pool {pool['id']}: {node['state']}"
              + (f" (start task: {failure['message']})" if failure else ""))


def delete(emu: Emulator, pool_id: str, *, linger_s: float = 0.0, again: bool = False) -> None:
    """Delete a pool: `deleting` at once, its nodes and files gone after `linger_s` seconds (an auto pool whose
    owner ended: the service takes minutes to release a pool's VMs, and code that reads a task's files right
    after its job completed still finds them). `again`: finish a deletion a stopped emulator left."""
    pool = get(emu, pool_id)
    with emu.store.lock:
        if pool["state"] == "deleting" and not again:
            return
        set_state(pool, "deleting")
        emu.store.mark(("pools", pool))
        running = [t for t in emu.store.tasks.values() if t.get("_pool", "").lower() == pool_id.lower()
                   and t["state"] in ("running", "preparing")]
    emu.event(f"pool {pool_id}: deleting")

    def finish() -> None:
        time.sleep(linger_s)
        for t in running:
            emu.scheduler.end_task(t, requeue=True)
        with emu.store.lock:
            for n in emu.store.pool_nodes(pool_id):
                emu.procs.end(f"node:{n['id']}")
                del emu.store.nodes[key(pool_id, n["id"])]
                emu.store.gone("nodes", key(pool_id, n["id"]))
            del emu.store.pools[key(pool_id)]
            emu.store.gone("pools", key(pool_id))
        shutil.rmtree(emu.work_dir / "nodes" / pool["id"], ignore_errors=True)
        emu.event(f"pool {pool_id}: deleted")

    threading.Thread(target=finish, name=f"delete-{pool_id}", daemon=True).start()


# ---------------------------------------------------------------------------------------------- nodes
def node(emu: Emulator, pool_id: str, node_id: str) -> dict[str, Any]:
    get(emu, pool_id)
    n = emu.store.nodes.get(key(pool_id, node_id))
    if n is None:
        raise not_found("Node")
    return n


def node_roots(emu: Emulator, n: dict[str, Any]) -> list[Path]:
    """Where a node's files are: its own tree, then the rehearsal nodes it was for multi-instance tasks."""
    return [Path(n["_root"]), *(Path(p) for p in reversed(n.get("_extra_roots", [])))]


def node_file(emu: Emulator, pool_id: str, node_id: str, file_path: str) -> BinaryIO:
    """The node's file, open for reading; never through a symlink (see files.open_file)."""
    n = node(emu, pool_id, node_id)
    for root in node_roots(emu, n):
        try:
            files.safe_join(root, file_path)
        except files.FileError:
            raise schema.invalid_value("filePath", "a path inside the node's root directory") from None
        f = files.open_file(root, file_path)
        if f is not None:
            return f
    raise not_found("File")
