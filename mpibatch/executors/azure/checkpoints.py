"""Checkpoints of a task submitted to Batch (docs/checkpoints.md#azure-batch).

The nodes save and restore generations in the job's container themselves (launchers/checkpoint.py, through the
checkpoint SAS); the client reads what each attempt restored (the primary's restore records) for `submit`,
`status` and `collect`, and serves `submit --resume-from JOB/TASK`: the source is checked before anything is
created, then its newest complete generation is copied, verified, to the new task's names.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from ... import conventions
from ...checkpoints import copy_generation
from ...errors import InfraError, SpecError
from ...launchers import checkpoint as ck
from ...launchers.blobio import BlobError, ContainerClient
from ...launchers.protocol import CHECKPOINT_URL_VAR
from ...render import Rendered
from ...spec import validate_id
from .client import Batch
from .storage import Storage
from .watch import instance_count

OPTION = "--resume-from"
CLIENT_SAS_LIFETIME = timedelta(hours=2)  # the client's own copy of a checkpoint: minutes, not the task's life


@dataclass(frozen=True)
class ResumeSource:
    """The task a new one resumes from, and the generation it will restore."""

    job_id: str
    task_id: str
    generation: int


def has_checkpoints(task: Any) -> bool:
    """The task was submitted with task.checkpoint (its nodes got the checkpoint SAS)."""
    return any(e.name == CHECKPOINT_URL_VAR for e in (task.environment_settings or []))


def container_store(storage: Storage, container: str) -> ck.BlobStore:
    """The store the nodes use, as the client reaches it (a short-lived SAS of the same permissions)."""
    expiry = datetime.now(timezone.utc) + CLIENT_SAS_LIFETIME
    return ck.BlobStore(ContainerClient(storage.checkpoint_container_url(container, expiry)))


def restored(storage: Storage, job_id: str, task: Any, seen: dict[str, int | None] | None = None
             ) -> list[int | None]:
    """The generation each attempt restored (None: started fresh), oldest first, from the records the
    primary's restore step wrote; [] for a task without checkpoints. `seen` caches records already read."""
    if not has_checkpoints(task):
        return []
    seen = {} if seen is None else seen
    container = conventions.job_container_name(job_id)
    out: list[int | None] = []
    for b in sorted(storage.list_blobs(container, ck.restore_record_prefix(task.id) + "/"), key=lambda b: b.name):
        if b.name not in seen:
            seen[b.name] = _generation(storage.read_blob(container, b.name))
        out.append(seen[b.name])
    return out


def _generation(data: bytes | None) -> int | None:
    try:
        g = json.loads(data or b"{}").get("generation")
    except (ValueError, AttributeError):
        return None
    return g if isinstance(g, int) and not isinstance(g, bool) else None


def check_resume(batch: Batch, storage: Storage, text: str, r: Rendered) -> ResumeSource:
    """JOB/TASK names an existing task with a complete generation the new task can restore: else bad
    input, before anything is created."""
    c = r.spec.task.checkpoint
    if c is None:
        raise SpecError(OPTION, "the spec has no task.checkpoint: nothing on the nodes would restore it",
                        'add task.checkpoint: {pattern: "restart.*"} naming your program\'s checkpoint files')
    job_id, _, task_id = text.strip().partition("/")
    if not job_id or not task_id or "/" in task_id:
        raise SpecError(OPTION, f"{text!r} is not JOB/TASK", "name the task to resume from: --resume-from JOB/TASK")
    validate_id(job_id, OPTION)
    validate_id(task_id, OPTION)
    source = batch.get_task(job_id, task_id)
    if source is None:
        raise SpecError(OPTION, f"task {job_id}/{task_id} does not exist in Batch account {batch.account.name}",
                        f"check the ids (mpibatch status {job_id} {task_id})")
    n = instance_count(source)
    if c.from_ == "all" and n != r.instances:
        raise SpecError(OPTION, f"task {job_id}/{task_id} ran {n} instances and this one runs {r.instances}: with "
                        "checkpoint from: all each instance restores its own part", "use the same task.instances")
    container = conventions.job_container_name(job_id)
    try:
        g, _ = ck.newest_restorable(container_store(storage, container), task_id, n, c.from_)
    except BlobError as e:
        if e.status != 404:  # no container: nothing saved
            raise InfraError(f"reading the checkpoints of {job_id}/{task_id}: {e}") from None
        g = None
    if g is None:
        raise SpecError(OPTION, f"task {job_id}/{task_id} has no complete checkpoint generation in container "
                        f"{container}", "resume from a task whose log says 'checkpoint generation N saved', or "
                        "submit without --resume-from to start fresh")
    return ResumeSource(job_id, task_id, g)


def seed(storage: Storage, source: ResumeSource, container: str, r: Rendered) -> int:
    """Copy the source's newest complete generation to the new task's names in `container` (verified,
    manifests last): its nodes' restore step then finds it as after a requeue."""
    c = r.spec.task.checkpoint
    assert c is not None
    src = container_store(storage, conventions.job_container_name(source.job_id))
    try:
        g = copy_generation(src, source.task_id, container_store(storage, container), r.spec.task.id,
                               r.instances, c.from_)
    except (BlobError, OSError, ValueError) as e:
        raise InfraError(f"copying checkpoint generation {source.generation} of {source.job_id}/{source.task_id}: "
                         f"{e}") from None
    if g is None:
        raise InfraError(f"the checkpoints of {source.job_id}/{source.task_id} went while they were copied")
    return g


__all__ = ["ResumeSource", "check_resume", "has_checkpoints", "restored", "seed"]
