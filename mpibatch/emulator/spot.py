"""Spot / low-priority nodes and their preemption, on demand ("Use Spot VMs with Batch workloads").

A pool's `targetLowPriorityNodes` become nodes with `isDedicated: false` (ids ending `_p`). The service
preempts such a node when Azure takes its capacity back; the emulator does it when the operator asks,
through `POST /_emulator/pools/{pool}/nodes/{node}/preempt` - a path of the emulator's own, not part of
Batch's API, signed with the account's Shared Key like every other request. A preemption is an eviction:
every process on the node ends at once (no grace, no output upload), the node goes `preempted`, and each
task that ran on it goes back to `active` with `executionInfo.requeueCount` one higher (its retry count is
not touched); a multi-instance task is requeued whole - every instance ended, then scheduled again on idle
nodes. After REPLACE_AFTER_S the preempted node leaves the pool and a fresh one joins, as Batch seeks back
to the pool's target."""
from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import BatchError
from .state import key, set_state

if TYPE_CHECKING:
    from .core import Emulator

REPLACE_AFTER_S = 2.0  # how long a preempted node stays listed before its replacement is allocated
REQUEUE_WAIT_S = 60.0  # at most this long for the node's tasks to be requeued before the node is replaced
PREEMPTED = "preempted"  # the reason a task is ended with (Scheduler.end_task) when its node is evicted


def preempt(emu: Emulator, pool_id: str, node_id: str) -> None:
    """Evict a Spot node now: its processes killed, its tasks requeued, its replacement on the way."""
    from . import pools

    pool = pools.get(emu, pool_id)
    node = pools.node(emu, pool_id, node_id)
    with emu.store.lock:
        if node.get("isDedicated", True):
            raise BatchError(409, "NodeNotPreemptible", "Only Spot/low-priority nodes are preempted; this node "
                             "is dedicated (give the pool targetLowPriorityNodes).", {"NodeId": node["id"]})
        if node["state"] == "preempted":
            raise BatchError(409, "NodeAlreadyPreempted", "The node has already been preempted; a new node "
                             "replaces it shortly.", {"NodeId": node["id"]})
        set_state(node, "preempted")
        running = [emu.store.tasks[k] for k in node["_running"] if k in emu.store.tasks]
        job_ids = [j["id"] for j in emu.store.jobs.values()]
    emu.store.mark(("nodes", node))
    emu.store.flush()  # answered only once the preemption is on disk
    emu.procs.end(f"node:{node['id']}")  # a start task still running
    for job_id in job_ids:
        emu.procs.end(f"job:{job_id}:{node['id']}")  # a job preparation or release task
    for t in running:
        emu.scheduler.end_task(t, reason=PREEMPTED)
    emu.event(f"node {node['id']} of pool {pool['id']}: preempted"
              + (f" ({len(running)} task(s) to requeue)" if running else ""))
    threading.Thread(target=_replace, args=(emu, pool, node), name=f"replace-{node['id']}", daemon=True).start()


def _replace(emu: Emulator, pool: dict[str, Any], node: dict[str, Any]) -> None:
    """After REPLACE_AFTER_S (and once its tasks are requeued) the preempted node leaves the pool and the
    pool is brought back to its targets."""
    from . import pools

    time.sleep(REPLACE_AFTER_S)
    deadline = time.monotonic() + REQUEUE_WAIT_S
    while node["_running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    with emu.store.lock:
        nk = key(pool["id"], node["id"])
        if pool["state"] != "active" or emu.store.nodes.get(nk) is not node:
            return  # the pool is being deleted, or the node already went
        del emu.store.nodes[nk]
        emu.store.gone("nodes", nk)
    shutil.rmtree(Path(node["_root"]), ignore_errors=True)  # an evicted VM's disk is gone
    pools.resize_to(emu, pool, pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"])


def replace_preempted(emu: Emulator) -> None:
    """At a start: nodes left `preempted` by a previous run are replaced (their timers died with it)."""
    with emu.store.lock:
        left = [(emu.store.pools.get(key(n["_pool"])), n) for n in emu.store.nodes.values()
                if n.get("state") == "preempted"]
    for pool, n in left:
        if pool is not None:
            threading.Thread(target=_replace, args=(emu, pool, n), name=f"replace-{n['id']}", daemon=True).start()
