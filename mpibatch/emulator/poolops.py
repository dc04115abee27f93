"""Pool operations beyond add/get/list/delete: update (PATCH), replace properties (updateproperties), resize
with `nodeDeallocationOption`, stop resize, remove nodes, enable / disable / evaluate autoscale (the formula
run on the emulator's own task and node counts, on the evaluation interval), node counts and usage metrics."""
from __future__ import annotations

import re
import threading
import time
import weakref
from collections.abc import Callable
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..durations import iso_seconds
from . import autoscale, autoscale_syntax, mounts, odata, pools, schema
from .errors import BatchError, invalid_value, missing_property, now_iso
from .state import key, set_state, touch

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"
Answer = tuple[int, Any, dict[str, str]]
# updateproperties replaces these whole (a missing one is removed)
REPLACEABLE = ("startTask", "applicationPackageReferences", "metadata", "certificateReferences",
               "targetNodeCommunicationMode")
DEFAULT_INTERVAL = "PT15M"
INTERVAL_BOUNDS_S = (300, 168 * 3600)  # the service's: 5 minutes to 168 hours
NODE_STATES = ("creating", "idle", "offline", "preempted", "rebooting", "reimaging", "running", "starting",
               "startTaskFailed", "leavingPool", "unknown", "unusable", "waitingForStartTask", "deallocated",
               "deallocating", "upgradingOS")
DEALLOCATION = ("requeue", "terminate", "taskcompletion", "retaineddata")


def _accepted(emu: Emulator, pool_id: str, status: int = 202) -> Answer:
    return status, None, {"DataServiceId": f"{emu.endpoint}/pools/{pool_id}"}


def update(emu: Emulator, pool_id: str, body: Any, *, replace: bool) -> None:
    """PATCH: the properties given replace the pool's; updateproperties: the whole set is replaced
    (a missing startTask removes it, metadata and application packages are required)."""
    body = schema.validate(body, "pool.replace" if replace else "pool.update", "pool")
    if replace:
        for name in ("applicationPackageReferences", "metadata"):
            if body.get(name) is None:
                raise missing_property(name)
    if (body.get("startTask") or {}) and not body["startTask"].get("commandLine"):
        raise missing_property("startTask.commandLine")
    mounts.check(body.get("mountConfiguration"))
    if "taskSlotsPerNode" in body and not 1 <= body["taskSlotsPerNode"] <= 256:
        raise invalid_value("taskSlotsPerNode", "from 1 to 256")
    pool = pools.get(emu, pool_id)
    with emu.store.lock:
        if replace:
            for name in REPLACEABLE:
                if name not in body:
                    pool.pop(name, None)
        for name, value in body.items():
            if name == "taskSchedulingPolicy":
                value = {"nodeFillType": schema.enum((value or {}).get("nodeFillType") or "spread",
                                                     "taskSchedulingPolicy.nodeFillType", ("spread", "pack"))}
            if value is None and not replace:
                continue
            pool[name] = value
        touch(pool)
    emu.store.mark(("pools", pool))
    emu.event(f"pool {pool['id']}: properties {'replaced' if replace else 'updated'} ({', '.join(body) or 'none'})")


# ---------------------------------------------------------------------------------------------- resizing
def resize(emu: Emulator, pool_id: str, body: Any) -> None:
    body = schema.validate(body, "pool.resize", "pool")
    pool = pools.get(emu, pool_id)
    if pool.get("enableAutoScale"):
        raise BatchError(409, "AutoScalingEnabled", "The specified pool has automatic scaling enabled: it cannot "
                         "be resized manually.")
    target, low = body.get("targetDedicatedNodes"), body.get("targetLowPriorityNodes")
    if target is None and low is None:
        raise missing_property("targetDedicatedNodes")
    target = pool["targetDedicatedNodes"] if target is None else target
    low = pool.get("targetLowPriorityNodes") or 0 if low is None else low
    if not (0 <= target and 0 <= low and target + low <= pools.MAX_NODES):
        raise invalid_value("targetDedicatedNodes", f"from 0 to {pools.MAX_NODES} nodes, Spot included")
    option = schema.enum(body.get("nodeDeallocationOption") or "requeue", "nodeDeallocationOption", DEALLOCATION)
    _steady_or_409(pool)
    with emu.store.lock:
        pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"] = target, low
        pool["resizeErrors"] = []
    scale_to(emu, pool, target, option)


def _steady_or_409(pool: dict[str, Any]) -> None:
    if pool["state"] != "active":
        raise BatchError(409, "PoolBeingDeleted", "The specified pool is being deleted.")
    if pool["allocationState"] != "steady":
        raise BatchError(409, "PoolNotSteady", "The specified pool is not in a steady state.")


def scale_to(emu: Emulator, pool: dict[str, Any], target: int, option: str,
             chosen: list[dict[str, Any]] | None = None) -> None:
    """Grow (pools.resize_to), or shrink: idle nodes go first; busy ones per `option` - requeue / terminate
    end their tasks now, taskcompletion / retaineddata let them finish (the pool stays `resizing`)."""
    low = pool.get("targetLowPriorityNodes") or 0  # Spot nodes: idle ones added or removed by pools.resize_to
    nodes = [n for n in emu.store.pool_nodes(pool["id"]) if n.get("isDedicated", True)]
    if chosen is None and target >= len(nodes):
        pools.resize_to(emu, pool, target, low)
        return
    pools.resize_to(emu, pool, len(nodes), low)  # the Spot part first; the dedicated nodes leave below
    if chosen is None:
        ranked = sorted(nodes, key=lambda n: (bool(n["_running"]), -n["_index"]))
        chosen = ranked[:len(nodes) - target]
    from . import nodeops  # nodeops builds on this module

    with emu.store.lock:
        pool["allocationState"], pool["allocationStateTransitionTime"] = "resizing", now_iso()
        for n in chosen:
            n["_leaving"] = True
            set_state(n, "leavingpool")
        touch(pool)
    emu.store.mark(("pools", pool), *(("nodes", n) for n in chosen))
    threading.Thread(target=nodeops.drain_and_remove, args=(emu, pool, chosen, option),
                     name=f"shrink-{pool['id']}", daemon=True).start()


def stop_resize(emu: Emulator, pool_id: str) -> None:
    """Ends a resize: nodes already leaving are removed, the target becomes the count the pool has."""
    pool = pools.get(emu, pool_id)
    with emu.store.lock:
        if pool["allocationState"] == "resizing":
            pool["allocationState"], pool["allocationStateTransitionTime"] = "stopping", now_iso()
            touch(pool)
    emu.store.mark(("pools", pool))


def remove_nodes(emu: Emulator, pool_id: str, body: Any) -> None:
    body = schema.validate(body, "pool.removenodes", "pool", required=("nodeList",))
    pool = pools.get(emu, pool_id)
    option = schema.enum(body.get("nodeDeallocationOption") or "requeue", "nodeDeallocationOption", DEALLOCATION)
    if not 1 <= len(body["nodeList"]) <= 100:
        raise invalid_value("nodeList", "1 to 100 node ids")
    chosen = [pools.node(emu, pool_id, n) for n in body["nodeList"]]
    _steady_or_409(pool)
    with emu.store.lock:
        pool["targetDedicatedNodes"] = max(0, len(emu.store.pool_nodes(pool["id"])) - len(chosen))
    scale_to(emu, pool, pool["targetDedicatedNodes"], option, chosen)


# ---------------------------------------------------------------------------------------------- autoscale
def check_new_pool(body: dict[str, Any]) -> None:
    """An add-pool body's mounts, subnet, image and autoscale settings, before anything is created
    (pools.add)."""
    mounts.check(body.get("mountConfiguration"))
    check_subnet_and_image(body)
    if not body.get("enableAutoScale"):
        return
    if not body.get("autoScaleFormula"):
        raise missing_property("autoScaleFormula")
    if body.get("targetDedicatedNodes") is not None:
        raise invalid_value("targetDedicatedNodes", "must not be given when enableAutoScale is true")
    _interval_s(body.get("autoScaleEvaluationInterval"))
    try:
        autoscale_syntax.check(body["autoScaleFormula"])
    except autoscale_syntax.FormulaError as e:
        raise _formula_error(e) from None


# An Azure Compute image: a managed image, or a Compute Gallery image (a version, or its latest).
IMAGE_ID = re.compile(r"/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\.Compute/"
                      r"(images/[^/]+|galleries/[^/]+/images/[^/]+(/versions/[^/]+)?)", re.IGNORECASE)


def check_subnet_and_image(body: dict[str, Any]) -> None:
    """A pool in a virtual network's subnet is refused as the service refuses one whose subnet it cannot find:
    the emulator has none. An image id must name an Azure Compute image; it is not looked up (nodes run on
    this machine whatever their image)."""
    subnet = (body.get("networkConfiguration") or {}).get("subnetId")
    if subnet:
        raise invalid_value("networkConfiguration.subnetId", "mpibatch emulate has no virtual networks, so no "
                            "subnet can be found; leave subnetId out")
    image = ((body.get("virtualMachineConfiguration") or {}).get("imageReference") or {}).get("virtualMachineImageId")
    if image and not IMAGE_ID.fullmatch(image):
        raise invalid_value("virtualMachineConfiguration.imageReference.virtualMachineImageId",
                            "the resource id of an image: /subscriptions/{id}/resourceGroups/{group}/providers/"
                            "Microsoft.Compute/images/{name}, or .../galleries/{gallery}/images/{name}"
                            "[/versions/{version}]")


def _interval_s(text: str | None) -> float:
    seconds = iso_seconds(text or DEFAULT_INTERVAL)
    if seconds is None or not INTERVAL_BOUNDS_S[0] <= seconds <= INTERVAL_BOUNDS_S[1]:
        raise invalid_value("autoScaleEvaluationInterval", "from 5 minutes (PT5M) to 168 hours (PT168H)")
    return seconds


def _formula_error(e: autoscale_syntax.FormulaError) -> BatchError:
    return BatchError(400, "InvalidAutoScaleFormula", "The specified autoscale formula is not valid.",
                      {"Message": str(e)[:400]})


def enable_autoscale(emu: Emulator, pool_id: str, body: Any) -> None:
    body = schema.validate(body, "pool.enableautoscale", "pool")
    pool = pools.get(emu, pool_id)
    formula = body.get("autoScaleFormula") or pool.get("autoScaleFormula")
    if not formula:
        raise missing_property("autoScaleFormula")
    interval = body.get("autoScaleEvaluationInterval") or pool.get("autoScaleEvaluationInterval") or DEFAULT_INTERVAL
    _interval_s(interval)
    try:
        autoscale_syntax.check(formula)
    except autoscale_syntax.FormulaError as e:
        raise _formula_error(e) from None
    with emu.store.lock:
        pool.update({"enableAutoScale": True, "autoScaleFormula": formula, "autoScaleEvaluationInterval": interval})
        touch(pool)
    emu.store.mark(("pools", pool))
    run_autoscale(emu, pool)


def disable_autoscale(emu: Emulator, pool_id: str) -> None:
    pool = pools.get(emu, pool_id)
    with emu.store.lock:
        pool["enableAutoScale"] = False
        for name in ("autoScaleFormula", "autoScaleEvaluationInterval", "_autoscale_next"):
            pool.pop(name, None)
        touch(pool)
    emu.store.mark(("pools", pool))


def evaluate_autoscale(emu: Emulator, pool_id: str, body: Any) -> dict[str, Any]:
    """The formula's run on the pool as it is now, without changing the pool (409 unless autoscale is on)."""
    body = schema.validate(body, "pool.evaluateautoscale", "pool", required=("autoScaleFormula",))
    pool = pools.get(emu, pool_id)
    if not pool.get("enableAutoScale"):
        raise BatchError(409, "AutoScalingNotEnabled", "The specified pool does not have automatic scaling "
                         "enabled.")
    try:
        autoscale_syntax.check(body["autoScaleFormula"])
    except autoscale_syntax.FormulaError as e:
        raise _formula_error(e) from None
    return _run(emu, pool, body["autoScaleFormula"])[0]


SAMPLE_PERIOD_S = 30.0
MAX_SAMPLES = 240  # two hours of samples a pool
_samples: weakref.WeakKeyDictionary[Emulator, dict[str, autoscale.Samples]] = weakref.WeakKeyDictionary()
_samples_lock = threading.Lock()


def take_sample(emu: Emulator, pool: dict[str, Any]) -> autoscale.Samples:
    """Record the sampled variables now (the emulator's own counts; CPU, memory, disk and network are 0)."""
    with emu.store.lock:
        tasks = [t for t in emu.store.tasks.values() if t.get("_pool", "").lower() == pool["id"].lower()]
        active = sum(t["state"] == "active" for t in tasks)
        running = sum(t["state"] in ("running", "preparing") for t in tasks)
        done = [t for t in tasks if t["state"] == "completed"]
        ok = sum((t.get("executionInfo") or {}).get("result") == "success" for t in done)
        nodes = len(emu.store.pool_nodes(pool["id"]))
    values = {v: 0.0 for v in autoscale_syntax.SAMPLED}
    values.update({"$ActiveTasks": active, "$RunningTasks": running, "$PendingTasks": active + running,
                   "$SucceededTasks": ok, "$FailedTasks": len(done) - ok, "$SampleNodeCount": nodes})
    with _samples_lock:
        s = _samples.setdefault(emu, {}).setdefault(key(pool["id"]), autoscale.Samples(period_s=SAMPLE_PERIOD_S))
        s.taken = (s.taken + [(datetime.now(timezone.utc), values)])[-MAX_SAMPLES:]
        return autoscale.Samples(list(s.taken), s.period_s)


def _scalars(emu: Emulator, pool: dict[str, Any]) -> dict[str, float]:
    with emu.store.lock:
        nodes = emu.store.pool_nodes(pool["id"])
        usable = sum(n["state"] in ("idle", "running") for n in nodes)
    return {"$CurrentDedicatedNodes": float(len(nodes)), "$CurrentLowPriorityNodes": 0.0,
            "$UsableNodeCount": float(usable), "$PreemptedNodeCount": 0.0,
            "$TaskSlotsPerNode": float(pool.get("taskSlotsPerNode") or 1)}


def _run(emu: Emulator, pool: dict[str, Any], formula: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(the autoScaleRun, the targets - None when the run failed)."""
    current = {"$TargetDedicatedNodes": float(pool.get("targetDedicatedNodes") or 0),
               "$TargetLowPriorityNodes": float(pool.get("targetLowPriorityNodes") or 0),
               "$NodeDeallocationOption": "requeue"}
    try:
        targets, results = autoscale.evaluate(formula, take_sample(emu, pool), _scalars(emu, pool), current)
    except autoscale_syntax.FormulaError as e:
        return {"timestamp": now_iso(), "error": {"code": e.code, "message": "Autoscale evaluation failed",
                                                  "values": [{"name": "Message", "value": str(e)[:400]}]}}, None
    return {"timestamp": now_iso(), "results": results}, targets


def run_autoscale(emu: Emulator, pool: dict[str, Any]) -> None:
    """Evaluate the pool's formula now, record the run, resize to its targets, plan the next evaluation."""
    run, targets = _run(emu, pool, pool["autoScaleFormula"])
    with emu.store.lock:
        pool["autoScaleRun"] = run
        pool["_autoscale_next"] = time.time() + _interval_s(pool.get("autoScaleEvaluationInterval"))
        touch(pool)
        steady = pool["allocationState"] == "steady" and pool["state"] == "active"
        if targets is not None and steady:
            pool["targetDedicatedNodes"] = min(targets["$TargetDedicatedNodes"], pools.MAX_NODES)
    emu.store.mark(("pools", pool))
    if targets is not None and steady:
        scale_to(emu, pool, pool["targetDedicatedNodes"], targets["$NodeDeallocationOption"])
    emu.event(f"pool {pool['id']}: autoscale " + (run.get("results") or run["error"]["values"][0]["value"]))


def tick(emu: Emulator) -> None:
    """Once a second (ticker.py): sample every pool now and then, evaluate the formulas that are due."""
    now = time.time()
    with emu.store.lock:
        live = [p for p in emu.store.pools.values() if p.get("state") == "active"]
    for p in live:
        if now - (p.get("_last_sample") or 0) >= SAMPLE_PERIOD_S:
            p["_last_sample"] = now
            take_sample(emu, p)
        if p.get("enableAutoScale") and now >= (p.get("_autoscale_next") or 0):
            run_autoscale(emu, p)


# ---------------------------------------------------------------------------------------------- counts
def node_counts(emu: Emulator) -> list[dict[str, Any]]:
    out = []
    with emu.store.lock:
        for p in emu.store.pools.values():
            kinds = {True: dict.fromkeys(NODE_STATES, 0), False: dict.fromkeys(NODE_STATES, 0)}
            for n in emu.store.pool_nodes(p["id"]):
                name = {"starttaskfailed": "startTaskFailed", "leavingpool": "leavingPool", "waitingforstarttask":
                        "waitingForStartTask", "upgradingos": "upgradingOS"}.get(n["state"], n["state"])
                counts = kinds[bool(n.get("isDedicated", True))]
                counts[name] = counts.get(name, 0) + 1
            for counts in kinds.values():
                counts["total"] = sum(counts.values())
            out.append({"poolId": p["id"], "dedicated": kinds[True], "lowPriority": kinds[False]})
    return out


def _do(action: Callable[[], object], answer: Answer) -> Answer:
    """Run the operation, then answer (for the route table's one-liners)."""
    action()
    return answer


def routes(emu: Emulator) -> list[tuple[str, str, Callable[..., Answer]]]:
    e, body = emu, schema.parse_json
    return [
        ("PATCH", f"/pools/{ID}", lambda q, b, p: _do(
            lambda: update(e, p, body(b), replace=False), _accepted(e, p, 200))),
        ("POST", f"/pools/{ID}/updateproperties", lambda q, b, p: _do(
            lambda: update(e, p, body(b), replace=True), _accepted(e, p, 204))),
        ("POST", f"/pools/{ID}/resize", lambda q, b, p: _do(
            lambda: resize(e, p, body(b)), _accepted(e, p))),
        ("POST", f"/pools/{ID}/stopresize", lambda q, b, p: _do(
            lambda: stop_resize(e, p), _accepted(e, p))),
        ("POST", f"/pools/{ID}/removenodes", lambda q, b, p: _do(
            lambda: remove_nodes(e, p, body(b)), _accepted(e, p))),
        ("POST", f"/pools/{ID}/enableautoscale", lambda q, b, p: _do(
            lambda: enable_autoscale(e, p, body(b)), _accepted(e, p, 200))),
        ("POST", f"/pools/{ID}/disableautoscale", lambda q, b, p: _do(
            lambda: disable_autoscale(e, p), _accepted(e, p, 200))),
        ("POST", f"/pools/{ID}/evaluateautoscale", lambda q, b, p: (200, evaluate_autoscale(e, p, body(b)), {
            "DataServiceId": f"{e.endpoint}/pools/{p}/evaluateautoscale"})),
        ("GET", "/nodecounts", lambda q, b: (200, odata.page(node_counts(e), q, f"{e.endpoint}/nodecounts"), {})),
        ("GET", "/poolusagemetrics", lambda q, b: (200, odata.page([], q, f"{e.endpoint}/poolusagemetrics"), {})),
    ]


__all__ = ["routes", "tick", "run_autoscale", "scale_to"]
