"""Auto pools: a job's (or a job schedule's) `poolInfo.autoPoolSpecification` creates its pool
(`autoPoolIdPrefix`, then a generated suffix, as the service names them), the job's tasks run on it, the job
reports it as `executionInfo.poolId`, and it is deleted when its owner ends - the job (`poolLifetimeOption`
job) or the job schedule (jobSchedule) - unless `keepAlive`: `deleting` at once, gone LINGER_S later."""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from . import pools, schema
from .errors import BatchError
from .state import key

if TYPE_CHECKING:
    from .core import Emulator

WHERE = "poolInfo.autoPoolSpecification"
LIFETIMES = ("job", "jobSchedule")
MAX_PREFIX = 20  # "The prefix can be up to 20 characters long"
# An ended owner's auto pool is `deleting` this long before its nodes and files go: the service takes minutes
# to release VMs, and the samples read a task's stdout right after its job completed (and deleted the pool).
LINGER_S = 10.0


def check(spec: dict[str, Any] | None, *, in_schedule: bool) -> dict[str, Any] | None:
    """An autoPoolSpecification's own rules, before anything is created; the spec with its lifetime spelled
    as the API spells it. None: the job names an existing pool."""
    if not spec:
        return None
    if not spec.get("poolLifetimeOption"):
        raise schema.missing_property(f"{WHERE}.poolLifetimeOption")
    lifetime = schema.enum(spec["poolLifetimeOption"], f"{WHERE}.poolLifetimeOption", LIFETIMES)
    if lifetime == "jobSchedule" and not in_schedule:
        raise schema.invalid_value(f"{WHERE}.poolLifetimeOption", "jobSchedule is for the jobs of a job schedule; "
                                   "a job of its own takes 'job'")
    if not spec.get("pool"):
        raise schema.missing_property(f"{WHERE}.pool")
    schema.check_rules(spec["pool"], "pool", required=("vmSize",))  # the model was read with the job's body
    prefix = spec.get("autoPoolIdPrefix") or ""
    if prefix and (len(prefix) > MAX_PREFIX or not schema.ID_RE.fullmatch(prefix)):
        raise schema.invalid_value(f"{WHERE}.autoPoolIdPrefix", f"up to {MAX_PREFIX} letters, digits, hyphens "
                                   "and underscores")
    return {**spec, "poolLifetimeOption": lifetime}


def create(emu: Emulator, spec: dict[str, Any], owner: str) -> str:
    """Create the pool of `spec` for `owner` ("job:<id>" or "jobschedule:<id>"); its id."""
    prefix = spec.get("autoPoolIdPrefix") or ""
    pool_id = f"{prefix}_{str(uuid.uuid4()).upper()}" if prefix else str(uuid.uuid4()).upper()
    pool = pools.add(emu, {**spec["pool"], "id": pool_id})
    with emu.store.lock:
        pool["_autoPool"] = {"owner": owner, "keepAlive": bool(spec.get("keepAlive"))}
    emu.store.mark(("pools", pool))
    emu.event(f"pool {pool_id}: auto pool of {owner}")
    return pool_id


def owner_ended(emu: Emulator, pool_id: str | None, owner: str) -> None:
    """The owner of an auto pool ended: delete the pool unless it is kept alive."""
    if not pool_id:
        return
    pool = emu.store.pools.get(key(pool_id))
    auto = (pool or {}).get("_autoPool") or {}
    if pool is None or auto.get("owner") != owner or auto.get("keepAlive"):
        return
    try:
        pools.delete(emu, pool_id, linger_s=LINGER_S)
    except BatchError:  # deleted already (by a user, or a concurrent end)
        pass
