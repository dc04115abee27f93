"""Submission: checks, input uploads, the job (created if missing), and the tasks.

Every refusal (pool, storage, job state, task ids) happens before anything is created. One task goes
through ``create_task``; many tasks of one job (a parameter sweep) through ``addtaskcollection`` in
chunks of at most 100 tasks and under 1 MB per request, Batch's limits
(docs/batch-semantics.md#ids-and-requests).
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ...errors import SpecError
from ...payload import batch_job, batch_task
from ...render import Rendered
from ...spec import FileRef
from ...transfers import Transfers
from . import checkpoints
from .client import Batch, state_of
from .errors import http_failed
from .pools import check_pool, follow_pool_size, get_pool
from .storage import Storage, sas_expiry

Say = Callable[[str, str], None]

MAX_TASKS_PER_REQUEST = 100  # Batch: a task collection holds at most 100 tasks ...
REQUEST_BYTES_BUDGET = 960_000  # ... and its body must be under 1 MB: what mpibatch packs (envelope headroom)
_ENVELOPE = len(b'{"value":[]}')


@dataclass
class SubmitManyResult:
    """What `submit_many` did: tasks added, tasks that already existed, and failures by task id."""

    job_id: str
    added: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    max_tasks_per_request: int = 0
    max_request_bytes: int = 0
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed


@dataclass
class PreparedTasks:
    """Task payloads ready to add to one job (inputs uploaded, SAS URLs made)."""

    job_id: str
    tasks: list[Any]  # BatchTaskCreateOptions
    rendered: list[Rendered]  # as sent (fabric following the pool's VM size)
    job_created: bool = False


def task_exists(job_id: str, task_id: str) -> SpecError:
    return SpecError("task.id", f"task {task_id!r} already exists in job {job_id!r}",
                     f"choose a new task.id, or follow it: mpibatch status {job_id} {task_id}")


def check_existing_job(job_id: str, pool_id: str | None, job: Any) -> None:
    state = state_of(job.state)
    pool = getattr(job.pool_info, "pool_id", None) if job.pool_info else None
    if state not in ("active", ""):
        raise SpecError("job.id", f"job {job_id!r} exists and is {state}: no task can be added to it",
                        "use a new job.id")
    if pool and pool_id and pool.lower() != pool_id.lower():
        raise SpecError("job.pool", f"job {job_id!r} exists and runs on pool {pool!r}, not {pool_id!r}",
                        f"set job.pool: {pool} or use a new job.id")


def prepare(batch: Batch, storage: Storage, rendered: Sequence[Rendered], say: Say, *,
            transfers: Transfers | None = None, resume_from: str | None = None) -> PreparedTasks:
    """Checks (pool, storage, job, tasks, the --resume-from source) then uploads; creates the job if missing."""
    job_id, pool_id = check_together(rendered)
    pool_json = get_pool(batch, pool_id)
    rendered = [follow_pool_size(r, pool_json, say) for r in rendered]
    seen_shapes: set[tuple[Any, ...]] = set()
    for r in rendered:
        t = r.spec.task
        shape = (t.instances, t.mpi.flavor, t.mpi.fabric, r.spec.pool)
        if shape not in seen_shapes:  # the checks depend on these only
            seen_shapes.add(shape)
            check_pool(r.spec, pool_json, say)
    storage.check(job_id)  # reachable and authorised, before anything is created
    say("storage", f"account {storage.account} reachable")
    job = batch.get_job(job_id)
    if job is not None:
        check_existing_job(job_id, pool_id, job)
        if len(rendered) == 1 and batch.get_task(job_id, rendered[0].spec.task.id) is not None:
            raise task_exists(job_id, rendered[0].spec.task.id)
    if resume_from is not None and len(rendered) != 1:
        raise SpecError(checkpoints.OPTION, "resumes one task", "submit the tasks one at a time")
    source = checkpoints.check_resume(batch, storage, resume_from, rendered[0]) if resume_from is not None else None
    container = storage.ensure_container(job_id)
    if source is not None:
        g = checkpoints.seed(storage, source, container, rendered[0])
        say("checkpoints", f"resuming from generation {g} of {source.job_id}/{source.task_id}")
    expiry = max(sas_expiry(r.spec.task.max_wall_clock) for r in rendered)
    url_for = _upload_inputs(storage, container, rendered, expiry, say, transfers)
    urls = {"container_url": storage.output_container_url(container, expiry),
            "persist_url": storage.persist_container_url(container, expiry)}
    if any(r.spec.task.checkpoint for r in rendered):
        urls["checkpoint_url"] = storage.checkpoint_container_url(container, expiry)
    tasks = [batch_task(r, url_for=url_for, **urls) for r in rendered]
    created = job is None and _create_job(batch, rendered[0], url_for, say)
    return PreparedTasks(job_id=job_id, tasks=tasks, rendered=list(rendered), job_created=created)


def check_together(rendered: Sequence[Rendered]) -> tuple[str, str]:
    """(job id, pool id) of tasks submitted together: one job, one named pool, distinct task ids."""
    spec0 = rendered[0].spec
    job_id, pool_id = spec0.job.id, spec0.job.pool
    if len({r.spec.job.id for r in rendered}) != 1 or len({(r.spec.job.pool or "").lower() for r in rendered}) != 1:
        raise SpecError("job.id", "tasks submitted together must share one job and one pool",
                        "submit each job separately")
    if not pool_id:
        raise SpecError("job.pool", "is missing", "name the pool the task runs on: job.pool: my-pool")
    ids = [r.spec.task.id.lower() for r in rendered]
    if len(set(ids)) != len(ids):
        raise SpecError("task.id", "two tasks share an id (ids are unique case-insensitively)",
                        "give each task its own id")
    return job_id, pool_id


def _upload_inputs(storage: Storage, container: str, rendered: Sequence[Rendered], expiry: Any, say: Say,
                   transfers: Transfers | None) -> Callable[[FileRef], str]:
    """Upload every local input once; returns the URL a node downloads each file reference from."""
    spec0 = rendered[0].spec
    local: list[str] = []
    job_refs = spec0.job.preparation.files if spec0.job.preparation else ()
    for ref in [*job_refs, *(f for r in rendered for f in (*r.common_files, *r.files))]:
        if not ref.is_url and ref.source not in local:
            local.append(ref.source)
    blobs = storage.upload_inputs(container, local, transfers=transfers)
    say("inputs", f"{len(blobs)} file(s) in container {container}")
    url_cache: dict[str, str] = {}

    def url_for(ref: FileRef) -> str:
        if ref.is_url:
            return ref.source
        if ref.source not in url_cache:
            url_cache[ref.source] = storage.blob_read_url(container, blobs[ref.source], expiry)
        return url_cache[ref.source]

    return url_for


def _create_job(batch: Batch, first: Rendered, url_for: Callable[[FileRef], str], say: Say) -> bool:
    """Create the job; False when someone else created it meanwhile (used when it fits)."""
    from azure.core.exceptions import ResourceExistsError

    job_id, pool_id = first.spec.job.id, first.spec.job.pool
    try:
        batch.call(f"creating job {job_id}", batch.client.create_job, batch_job(first, url_for=url_for))
    except ResourceExistsError:  # created meanwhile by someone else: use it if it fits
        job = batch.get_job(job_id)
        if job is not None:
            check_existing_job(job_id, pool_id, job)
        return False
    say("job", f"{job_id} created on pool {pool_id}")
    return True


def create_task(batch: Batch, prepared: PreparedTasks, say: Say) -> None:
    """Add the one prepared task to its job."""
    from azure.core.exceptions import ResourceExistsError

    spec = prepared.rendered[0].spec
    job_id, task_id = prepared.job_id, spec.task.id
    try:
        batch.call(f"creating task {job_id}/{task_id}", batch.client.create_task, job_id, prepared.tasks[0])
    except ResourceExistsError:
        raise task_exists(job_id, task_id) from None
    say("task", f"{task_id} created: {spec.task.instances} instance(s) on pool {spec.job.pool}")


def terminate_job(batch: Batch, job_id: str, reason: str | None, say: Say, *, timeout: float = 120.0) -> str:
    """Terminate the job (its running tasks end); returns the job's state afterwards."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        poller = batch.call(f"terminating job {job_id}", batch.client.begin_terminate_job, job_id,
                            # azure-batch 15.1 fails without options (no content type): always send them
                            {"terminateReason": reason or "UserTerminate"}, polling_interval=1)
    except ResourceNotFoundError:
        raise SpecError("job", f"job {job_id!r} does not exist in Batch account {batch.account.name}",
                        "check the job id (mpibatch status JOB TASK)") from None
    batch.call(f"waiting for job {job_id} to terminate", poller.result, timeout=timeout)
    job = batch.get_job(job_id)
    state = state_of(job.state) if job else "deleted"
    say("job", f"{job_id}: {state}")
    return state


# ---------------------------------------------------------------------------------------------- task collections
def encode_task(task: Any) -> bytes:
    """The task's JSON exactly as azure-batch sends it (its own encoder), compact."""
    try:
        from azure.batch._utils.model_base import SdkJSONEncoder  # what create_task_collection uses
    except ImportError:  # a later azure-batch (the dependency is >=15.1): the public REST form is the same JSON
        return json.dumps(task.as_dict(), separators=(",", ":")).encode()
    return json.dumps(task, cls=SdkJSONEncoder, exclude_readonly=True, separators=(",", ":")).encode()


def iter_chunks(items: Iterable[tuple[str, bytes]], *, budget: int = REQUEST_BYTES_BUDGET,
                max_tasks: int = MAX_TASKS_PER_REQUEST) -> Iterator[list[tuple[str, bytes]]]:
    """Greedy chunks of at most `max_tasks` encoded tasks whose request body stays under `budget` bytes,
    yielded as soon as each is full."""
    cur: list[tuple[str, bytes]] = []
    size = _ENVELOPE
    for tid, enc in items:
        s = len(enc) + 1  # the comma
        if s + _ENVELOPE > budget:
            raise SpecError(f"task {tid}", f"its payload is {len(enc)} bytes: over Batch's 1 MB request limit",
                            "shorten the command line / environment, or use fewer resource files")
        if cur and (len(cur) >= max_tasks or size + s > budget):
            yield cur
            cur, size = [], _ENVELOPE
        cur.append((tid, enc))
        size += s
    if cur:
        yield cur


def add_tasks(batch: Batch, job_id: str, tasks: Sequence[Any], say: Say, *, threads: int = 4,
              max_rounds: int = 5) -> SubmitManyResult:
    """Add task payloads (BatchTaskCreateOptions) to a job through ``addtaskcollection``.

    Each task is serialised once, exactly as azure-batch would send it; chunks are cut by those exact
    sizes and sent a few at a time through the client's pipeline (Shared Key / token auth, retries with
    backoff on 429 and 5xx). Tasks the service answers with a server error are resent; "TaskExists"
    counts as already there."""
    t0 = time.monotonic()
    res = SubmitManyResult(job_id=job_id)
    encoded: dict[str, bytes] = {}
    budget = REQUEST_BYTES_BUDGET

    def send(chunk: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]] | None, int]:
        body = b'{"value":[' + b",".join(e for _, e in chunk) + b"]}"
        return chunk, post_collection(batch, job_id, body, len(chunk)), len(body)

    def items(ids: Iterable[str] | None) -> Iterator[tuple[str, bytes]]:
        if ids is None:  # first round: encode as we go, so sending overlaps encoding
            for t in tasks:
                tid = t.id  # model attributes deserialise on every access: read once
                encoded[tid] = encode_task(t)
                yield tid, encoded[tid]
        else:
            for tid in ids:
                yield tid, encoded[tid]

    pending: list[str] | None = None
    for _round in range(max_rounds):
        if pending is not None and not pending:
            break
        retry: list[str] = []
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            futures = [pool.submit(send, c) for c in iter_chunks(items(pending), budget=budget)]
            outcomes = [f.result() for f in futures]
        for chunk, results, size in outcomes:
            res.requests += 1
            if results is None:  # RequestBodyTooLarge: halve the budget and resend
                budget = max(10_000, budget // 2)
                retry.extend(tid for tid, _ in chunk)
                continue
            res.max_tasks_per_request = max(res.max_tasks_per_request, len(chunk))
            res.max_request_bytes = max(res.max_request_bytes, size)
            answered = set()
            for tr in results:
                tid = str(tr.get("taskId"))
                answered.add(tid)
                status = str(tr.get("status") or "").lower()
                err = tr.get("error") or {}
                code = err.get("code")
                if status == "success":
                    res.added.append(tid)
                elif code == "TaskExists":
                    res.existing.append(tid)
                elif status == "servererror" and tid in encoded:
                    retry.append(tid)
                else:
                    msg = err.get("message")
                    msg = msg.get("value") if isinstance(msg, dict) else msg
                    res.failed[tid] = batch.redact(f"{code}: {msg}" if msg else str(code))
            retry.extend(tid for tid, _ in chunk if tid not in answered)
        pending = retry
    for tid in pending or []:
        res.failed.setdefault(tid, f"not added after {max_rounds} attempts")
    res.elapsed_s = round(time.monotonic() - t0, 3)
    say("job", f"{job_id}: {len(res.added)} task(s) added in {res.requests} request(s)"
        + (f", {len(res.existing)} already existed" if res.existing else "")
        + (f", {len(res.failed)} failed" if res.failed else ""))
    return res


def post_collection(batch: Batch, job_id: str, body: bytes, n: int) -> list[dict[str, Any]] | None:
    """POST /jobs/{job}/addtaskcollection with a prepared body; the per-task results, or None when the
    service says the body is too large."""
    from urllib.parse import quote

    from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
    from azure.core.rest import HttpRequest

    client = batch.client
    api_version = getattr(getattr(client, "_config", None), "api_version", None) or "2025-06-01"
    req = HttpRequest("POST", f"/jobs/{quote(job_id, safe='')}/addtaskcollection",
                      params={"api-version": api_version}, content=body,
                      headers={"content-type": "application/json; odata=minimalmetadata",
                               "Accept": "application/json"})
    no_job = SpecError("job", f"job {job_id!r} does not exist in Batch account {batch.account.name}",
                       "create it first (mpibatch submit creates it)")

    def send() -> Any:
        try:
            return client.send_request(req)
        except HttpResponseError as e:  # azure-batch's exception policy raises for non-2xx
            if e.status_code == 413 and e.response is not None:
                return e.response
            raise

    try:
        resp = batch.call(f"adding {n} tasks to job {job_id}", send)
    except ResourceNotFoundError:
        raise no_job from None
    try:
        data = json.loads(resp.read() or b"{}")
    except ValueError:
        data = {}
    if resp.status_code == 200:
        return list(data.get("value") or [])
    code = data.get("code") or ""
    msg = data.get("message")
    msg = msg.get("value") if isinstance(msg, dict) else msg
    text = batch.redact(str(msg).splitlines()[0]) if msg else ""
    if resp.status_code == 413 or code == "RequestBodyTooLarge":
        if n > 1:
            return None
        raise SpecError("task", f"a task's payload is over Batch's request limit: {text}",
                        "shorten the command line / environment, or use fewer resource files")
    if resp.status_code == 404:
        raise no_job
    raise http_failed(batch.who, f"adding {n} tasks to job {job_id}", resp.status_code, code, text)


__all__ = ["PreparedTasks", "SubmitManyResult", "add_tasks", "create_task", "encode_task", "iter_chunks",
           "prepare", "terminate_job"]
