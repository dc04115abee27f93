"""Azure executor: the rendered multi-instance task, sent to an Azure Batch account (azure-batch 15.1).

``submit``: GET the pool and refuse (SpecError, nothing created) when the task could never start there;
reach storage before creating anything; create the job if missing (with the spec's preparation and
release tasks); upload inputs and mpibatch's node-side launchers once to the job's container; create the
task with read-only SAS URLs for its resource files, a container SAS for the primary's Batch output
files and a write-only SAS through which every node persists its own outputs (``launchers/persist.py``).
``wait`` reports task and subtask states as they change. ``collect`` brings back what every instance
produced into ``<runs_dir>/<job>/<task>/<instance>/`` - the same layout and the same
:class:`~mpibatch.results.TaskResult` as the local executor - verifying sizes and MD5s and listing
anything it could not bring back in ``TaskResult.missing``.

Credentials come from the environment only, never from the spec, and are never printed or logged:
``AZURE_BATCH_ENDPOINT`` with ``AZURE_BATCH_ACCOUNT`` + ``AZURE_BATCH_ACCESS_KEY`` (Shared Key), or
``DefaultAzureCredential`` (azure-identity) when there is no key. Storage: see :mod:`mpibatch.storage`.

Throttling (429, 503 with Retry-After) and transient failures are retried by the SDK's retry policy
(exponential backoff, Retry-After honoured), then reported as InfraError (exit 3).
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from ... import conventions, poolcheck
from ...errors import InfraError, SpecError, SpecErrors
from ..lifecycle import new_output_dir
from ...payload import batch_job, batch_task, image_reference
from ...render import PERSIST_URL_VAR, Rendered, render
from ...results import Failure, InstanceResult, TaskResult, tail
from ...spec import IMAGE_ALIASES, Command, FileRef, Image, Job, Mpi, Pool, Spec, Task
from .storage import Storage, redact, sas_expiry, write_chunks

log = logging.getLogger(__name__)

ENV_ENDPOINT = "AZURE_BATCH_ENDPOINT"
ENV_ACCOUNT = "AZURE_BATCH_ACCOUNT"
ENV_KEY = "AZURE_BATCH_ACCESS_KEY"
MAX_TASKS_PER_REQUEST = 100  # Batch: a task collection holds at most 100 tasks ...
MAX_REQUEST_BYTES = 1_000_000  # ... and its body must be under 1 MB
REQUEST_BYTES_BUDGET = 960_000  # what mpibatch packs into one request (headroom for the envelope)
LOG_FILES = ("stdout.txt", "stderr.txt")
INSTANCE_INFO = "instance.json"
RETRY = {"retry_total": 6, "retry_backoff_factor": 0.8, "retry_backoff_max": 30, "retry_connect": 3,
         "retry_read": 3, "retry_status": 6, "connection_timeout": 15, "read_timeout": 120}

Progress = Callable[[str], None]


# ---------------------------------------------------------------------------------------------- client

@dataclass(frozen=True)
class BatchAccount:
    endpoint: str
    name: str
    shared_key: bool

    @property
    def host(self) -> str:
        return urlparse(self.endpoint).netloc or self.endpoint


def batch_client_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> tuple[Any, BatchAccount]:
    """A BatchClient and what to call the account in messages. The key never leaves the credential."""
    from azure.batch import BatchClient

    env = os.environ if env is None else env
    endpoint = env.get(ENV_ENDPOINT, "").strip().rstrip("/")
    if not endpoint:
        raise SpecError(ENV_ENDPOINT, "is not set", "export AZURE_BATCH_ENDPOINT=https://<account>.<region>.batch."
                        "azure.com (az batch account show --query accountEndpoint)")
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    host = urlparse(endpoint).hostname or ""
    account = env.get(ENV_ACCOUNT, "").strip() or host.split(".")[0] or host
    key = env.get(ENV_KEY, "").strip()
    options = {**RETRY, **kwargs}
    if key:
        if not env.get(ENV_ACCOUNT, "").strip():
            raise SpecError(ENV_ACCOUNT, "is not set but AZURE_BATCH_ACCESS_KEY is",
                            "export AZURE_BATCH_ACCOUNT=<account name> (Shared Key signs with it)")
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise SpecError(ENV_KEY, "is not a Batch account key (not base64)",
                            "copy the primary or secondary key again: az batch account keys list") from None
        from azure.core.credentials import AzureNamedKeyCredential

        client = BatchClient(endpoint, AzureNamedKeyCredential(account, key), **options)
        return client, BatchAccount(endpoint, account, True)
    from azure.identity import DefaultAzureCredential

    if endpoint.startswith("http://"):
        options.setdefault("enforce_https", False)
    client = BatchClient(endpoint, DefaultAzureCredential(), **options)
    return client, BatchAccount(endpoint, account, False)


# ---------------------------------------------------------------------------------------------- results

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
    job_created: bool = False


def _state(value: Any) -> str:
    return (getattr(value, "value", value) or "").lower() if value is not None else ""


def _dt(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


# ---------------------------------------------------------------------------------------------- executor

class AzureExecutor:
    """Runs specs as Batch multi-instance tasks. `client`/`storage` are built from the environment
    when not given."""

    def __init__(self, client: Any = None, storage: Storage | None = None, *, account: BatchAccount | None = None,
                 env: Mapping[str, str] | None = None, runs_dir: str | Path = "mpibatch-runs",
                 progress: Progress | None = None, poll_interval: float = 1.0, max_poll_interval: float = 5.0,
                 client_kwargs: Mapping[str, Any] | None = None, submit_threads: int = 4) -> None:
        self._env = dict(os.environ if env is None else env)
        self._client = client
        self._account = account
        self._storage = storage
        self._client_kwargs = dict(client_kwargs or {})
        self.runs_dir = Path(runs_dir)
        self.progress = progress or (lambda msg: None)
        self.poll_interval = max(0.05, poll_interval)
        self.max_poll_interval = max(self.poll_interval, max_poll_interval)
        self.submit_threads = max(1, submit_threads)
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lazily built clients
    @property
    def client(self) -> Any:
        if self._client is None:
            self._client, self._account = batch_client_from_env(self._env, **self._client_kwargs)
        return self._client

    @property
    def account(self) -> BatchAccount:
        if self._account is None:
            if self._client is not None:
                ep = str(getattr(getattr(self._client, "_config", None), "endpoint", "batch"))
                self._account = BatchAccount(ep, self._env.get(ENV_ACCOUNT) or urlparse(ep).netloc, True)
            else:
                _ = self.client
        assert self._account is not None
        return self._account

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage.from_env(self._env)
        return self._storage

    def _say(self, msg: str) -> None:
        log.info("%s", msg)
        self.progress(msg)

    # ------------------------------------------------------------------ errors
    def _call(self, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One Batch call (the SDK retries throttling and transient faults). Not-found and
        already-exists go to the caller; everything else becomes an InfraError without secrets."""
        from azure.core.exceptions import (AzureError, ClientAuthenticationError, HttpResponseError,
                                           ResourceExistsError, ResourceNotFoundError, ServiceRequestError)

        _ = self.client
        acct = self.account
        try:
            return fn(*args, **kwargs)
        except (ResourceNotFoundError, ResourceExistsError):
            raise
        except ClientAuthenticationError as e:
            raise self._auth_error(e) from None
        except HttpResponseError as e:
            code = getattr(getattr(e, "error", None), "code", None) or ""
            if e.status_code in (401, 403) and code in ("AuthenticationFailed", "InvalidAuthenticationInfo", "") \
                    or code in ("AuthenticationFailed", "InvalidAuthenticationInfo"):
                raise self._auth_error(e) from None
            if e.status_code == 404:  # e.g. 404 mapped by a policy without the not-found class
                raise
            msg = self._message(e)
            extra = " (throttled: retried with backoff, still refused)" if e.status_code in (429, 503) else ""
            raise InfraError(f"Batch account {acct.name}: {doing} failed: HTTP {e.status_code} "
                             f"{code or ''}{': ' if msg else ''}{msg}{extra}") from None
        except ServiceRequestError as e:
            raise InfraError(f"Batch account {acct.name} unreachable at {acct.host} while {doing}: "
                             f"{self._message(e)}") from None
        except AzureError as e:
            raise InfraError(f"Batch account {acct.name}: {doing} failed: {self._message(e)}") from None

    def _message(self, e: BaseException) -> str:
        err = getattr(e, "error", None)
        text = getattr(getattr(err, "message", None), "value", None) or getattr(err, "message", None)
        if not isinstance(text, str) or not text:
            text = str(getattr(e, "message", None) or e)
        return redact(text.strip().splitlines()[0] if text.strip() else "", self._env.get(ENV_KEY))

    def _auth_error(self, e: BaseException) -> InfraError:
        acct = self.account
        hint = "check AZURE_BATCH_ACCESS_KEY" if acct.shared_key else \
            "check your Azure sign-in (DefaultAzureCredential) and its role on the account"
        return InfraError(f"authentication failed for Batch account {acct.name} ({hint}): {self._message(e)}")

    # ------------------------------------------------------------------ pool
    def get_pool(self, pool_id: str, field: str = "job.pool") -> dict[str, Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            pool = self._call(f"getting pool {pool_id}", self.client.get_pool, pool_id)
        except ResourceNotFoundError:
            raise SpecError(field, f"pool {pool_id!r} does not exist in Batch account {self.account.name}",
                            "create it with `mpibatch pool create SPEC`, or name an existing pool") from None
        return pool.as_dict()

    def check_pool(self, spec: Spec, pool_json: Mapping[str, Any] | None = None) -> list[poolcheck.Problem]:
        """GET the job's pool and check the task fits; errors raise SpecError (nothing is created)."""
        pool_id = spec.job.pool
        if not pool_id:
            raise SpecError("job.pool", "is missing", "name the pool the task runs on: job.pool: my-pool")
        data = pool_json if pool_json is not None else self.get_pool(pool_id)
        facts = poolcheck.pool_from_rest(data)
        problems = poolcheck.check(spec, facts)
        errors = [p for p in problems if p.severity == "error"]
        for p in problems:
            if p.severity != "error":
                self._say(f"warning: {p.field}: {p.message} ({p.fix})")
        if errors:
            raise SpecErrors([SpecError(p.field, p.message, p.fix) for p in errors]) if len(errors) > 1 \
                else SpecError(errors[0].field, errors[0].message, errors[0].fix)
        return problems

    def pool_check(self, pool_id: str, spec: Spec | None = None) -> tuple[poolcheck.PoolFacts, list[poolcheck.Problem]]:
        """The pool's facts and problems: the full check with a spec, else the pool-level rules only."""
        data = self.get_pool(pool_id, field="pool")
        facts = poolcheck.pool_from_rest(data)
        if spec is not None:
            return facts, poolcheck.check(replace(spec, job=replace(spec.job, pool=facts.id or pool_id)), facts)
        flavor = "msmpi" if facts.os == "windows" else "intelmpi"
        probe = Spec(job=Job(id="pool-check", pool=facts.id or pool_id),
                     task=Task(id="pool-check", command=Command(argv=("true",)), mpi=Mpi(flavor=flavor), instances=1),
                     pool=Pool(id=facts.id, vm_size=facts.vm_size))
        problems = [p for p in poolcheck.check(probe, facts) if p.field.startswith("pool.")]
        return facts, problems

    def pool_create(self, spec: Spec, *, msmpi_installer_url: str | None = None) -> dict[str, Any]:
        """Create a pool fit for MPI from the spec's `pool:` section; returns the REST body sent."""
        from azure.batch import models as bm
        from azure.core.exceptions import ResourceExistsError

        p = spec.pool
        if p is None or not p.id:
            raise SpecError("pool.id", "is missing", "add a pool section with id, vm_size and nodes")
        missing = [n for n, v in (("pool.vm_size", p.vm_size), ("pool.nodes", p.nodes)) if v is None]
        if missing:
            raise SpecError(missing[0], "is missing", "give vm_size (e.g. Standard_HB120rs_v3) and nodes")
        image = p.image or choose_image(spec)
        p = replace(p, image=image, inter_node_communication=True, task_slots_per_node=1)
        spec = replace(spec, pool=p)
        problems = poolcheck.check(spec, poolcheck.pool_from_spec(p))
        errors = [SpecError(x.field, x.message, x.fix) for x in problems if x.severity == "error"]
        if errors:
            raise SpecErrors(errors) if len(errors) > 1 else errors[0]
        for x in problems:
            self._say(f"warning: {x.field}: {x.message} ({x.fix})")
        start = start_task(spec, image, msmpi_installer_url)
        body = bm.BatchPoolCreateOptions(
            id=p.id, vm_size=p.vm_size, virtual_machine_configuration=image_reference(image),
            target_dedicated_nodes=p.nodes, target_low_priority_nodes=p.low_priority_nodes or None,
            enable_inter_node_communication=True, task_slots_per_node=1, start_task=start,
            task_scheduling_policy=bm.BatchTaskSchedulingPolicy(node_fill_type=bm.BatchNodeFillType.SPREAD))
        try:
            self._call(f"creating pool {p.id}", self.client.create_pool, body)
        except ResourceExistsError:
            raise SpecError("pool.id", f"pool {p.id!r} already exists in Batch account {self.account.name}",
                            f"check it with `mpibatch pool check {p.id}` or choose another id") from None
        self._say(f"pool {p.id} created: {p.nodes} x {p.vm_size}, {image.offer}/{image.sku}, inter-node on, "
                  "1 task slot per node")
        return body.as_dict()

    # ------------------------------------------------------------------ jobs
    def _get_job(self, job_id: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._call(f"getting job {job_id}", self.client.get_job, job_id)
        except ResourceNotFoundError:
            return None

    def _get_task(self, job_id: str, task_id: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._call(f"getting task {job_id}/{task_id}", self.client.get_task, job_id, task_id)
        except ResourceNotFoundError:
            return None

    def _check_existing_job(self, spec: Spec, job: Any) -> None:
        state = _state(job.state)
        pool = getattr(job.pool_info, "pool_id", None) if job.pool_info else None
        if state not in ("active", ""):
            raise SpecError("job.id", f"job {spec.job.id!r} exists and is {state}: no task can be added to it",
                            "use a new job.id")
        if pool and spec.job.pool and pool.lower() != spec.job.pool.lower():
            raise SpecError("job.pool", f"job {spec.job.id!r} exists and runs on pool {pool!r}, not {spec.job.pool!r}",
                            f"set job.pool: {pool} or use a new job.id")

    def terminate_job(self, job_id: str, reason: str | None = "terminated by mpibatch", *,
                      timeout: float = 120.0) -> str:
        """Terminate the job (its running tasks end); returns the job's state afterwards."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            poller = self._call(f"terminating job {job_id}", self.client.begin_terminate_job, job_id,
                                # azure-batch 15.1 fails without options (no content type): always send them
                                {"terminateReason": reason or "UserTerminate"}, polling_interval=1)
        except ResourceNotFoundError:
            raise SpecError("job", f"job {job_id!r} does not exist in Batch account {self.account.name}",
                            "check the job id (mpibatch status JOB TASK)") from None
        try:
            self._call(f"waiting for job {job_id} to terminate", poller.result, timeout=timeout)
        except InfraError:
            raise
        job = self._get_job(job_id)
        state = _state(job.state) if job else "deleted"
        self._say(f"job {job_id}: {state}")
        return state

    # ------------------------------------------------------------------ submission
    def _prepare(self, rendered: Sequence[Rendered]) -> PreparedTasks:
        """Checks (pool, storage, job, tasks) then uploads; creates the job if missing. Every
        refusal happens before anything is created."""
        spec0 = rendered[0].spec
        job_id = spec0.job.id
        pools = {(r.spec.job.pool or "").lower() for r in rendered}
        if len({r.spec.job.id for r in rendered}) != 1 or len(pools) != 1:
            raise SpecError("job.id", "tasks submitted together must share one job and one pool",
                            "submit each job separately")
        pool_json = self.get_pool(spec0.job.pool) if spec0.job.pool else None
        seen_shapes: set[tuple[Any, ...]] = set()
        for r in rendered:
            t = r.spec.task
            shape = (t.instances, t.mpi.flavor, t.mpi.fabric, r.spec.pool)
            if shape not in seen_shapes:  # the checks depend on these only
                seen_shapes.add(shape)
                self.check_pool(r.spec, pool_json)
        storage = self.storage
        storage.check(job_id)  # reachable and authorised, before anything is created
        self._say(f"storage account {storage.account} reachable")
        job = self._get_job(job_id)
        if job is not None:
            self._check_existing_job(spec0, job)
            if len(rendered) == 1:
                tid = spec0.task.id
                if self._get_task(job_id, tid) is not None:
                    raise SpecError("task.id", f"task {tid!r} already exists in job {job_id!r}",
                                    f"choose a new task.id, or follow it: mpibatch status {job_id} {tid}")
        ids = [r.spec.task.id.lower() for r in rendered]
        if len(set(ids)) != len(ids):
            raise SpecError("task.id", "two tasks share an id (ids are unique case-insensitively)",
                            "give each task its own id")

        container = storage.ensure_container(job_id)
        expiry = max(sas_expiry(r.spec.task.max_wall_clock) for r in rendered)
        local: list[str] = []
        job_refs = spec0.job.preparation.files if spec0.job.preparation else ()
        for ref in [*job_refs, *(f for r in rendered for f in (*r.common_files, *r.files))]:
            if not ref.is_url and ref.source not in local:
                local.append(ref.source)
        blobs = storage.upload_inputs(container, local)
        self._say(f"inputs in container {container}: {len(blobs)} file(s)")
        url_cache: dict[str, str] = {}

        def url_for(ref: FileRef) -> str:
            if ref.is_url:
                return ref.source
            if ref.source not in url_cache:
                url_cache[ref.source] = storage.blob_read_url(container, blobs[ref.source], expiry)
            return url_cache[ref.source]

        output_url = storage.output_container_url(container, expiry)
        persist_url = storage.persist_container_url(container, expiry)
        tasks = [batch_task(r, url_for=url_for, container_url=output_url, persist_url=persist_url) for r in rendered]
        created = False
        if job is None:
            from azure.core.exceptions import ResourceExistsError

            body = batch_job(rendered[0], url_for=url_for)
            try:
                self._call(f"creating job {job_id}", self.client.create_job, body)
                created = True
                self._say(f"job {job_id} created on pool {spec0.job.pool}")
            except ResourceExistsError:  # created meanwhile by someone else: use it if it fits
                job = self._get_job(job_id)
                if job is not None:
                    self._check_existing_job(spec0, job)
        return PreparedTasks(job_id=job_id, tasks=tasks, job_created=created)

    def submit(self, spec: Spec, *, wait: bool = True, timeout: float | None = None) -> TaskResult:
        """Submit one spec; with `wait`, wait for it and collect its outputs."""
        from azure.core.exceptions import ResourceExistsError

        r = render(spec)
        prepared = self._prepare([r])
        job_id, task_id = spec.job.id, spec.task.id
        try:
            self._call(f"creating task {job_id}/{task_id}", self.client.create_task, job_id, prepared.tasks[0])
        except ResourceExistsError:
            raise SpecError("task.id", f"task {task_id!r} already exists in job {job_id!r}",
                            f"choose a new task.id, or follow it: mpibatch status {job_id} {task_id}") from None
        self._say(f"task {job_id}/{task_id} created: {spec.task.instances} instance(s) on pool {spec.job.pool}")
        if not wait:
            return self.status(job_id, task_id)
        self.wait(job_id, task_id, timeout=timeout)
        return self.collect(job_id, task_id)

    def submit_many(self, items: Iterable[Spec | Rendered], *, threads: int | None = None) -> SubmitManyResult:
        """Submit many tasks of one job (a parameter sweep): checks and uploads once, then the task
        collection endpoint in chunks of at most 100 tasks and under 1 MB, a few requests at a time."""
        rendered = [x if isinstance(x, Rendered) else render(x) for x in items]
        if not rendered:
            raise SpecError("tasks", "nothing to submit", "give at least one spec")
        prepared = self._prepare(rendered)
        return self.add_tasks(prepared.job_id, prepared.tasks, threads=threads)

    def add_tasks(self, job_id: str, tasks: Sequence[Any], *, threads: int | None = None,
                  max_rounds: int = 5) -> SubmitManyResult:
        """Add task payloads (BatchTaskCreateOptions) to a job through ``addtaskcollection``.

        Each task is serialised once, exactly as azure-batch would send it; chunks are cut by those
        exact sizes (at most 100 tasks, under 1 MB: Batch's limits) and sent a few at a time through
        the client's pipeline (Shared Key / token auth, retries with backoff on 429 and 5xx). Tasks the
        service answers with a server error are resent; "TaskExists" counts as already there."""
        t0 = time.monotonic()
        res = SubmitManyResult(job_id=job_id)
        encoded: dict[str, bytes] = {}
        budget = REQUEST_BYTES_BUDGET

        def send(chunk: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], list[dict[str, Any]] | None, int]:
            body = b'{"value":[' + b",".join(e for _, e in chunk) + b"]}"
            return chunk, self._post_collection(job_id, body, len(chunk)), len(body)

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
        workers = max(1, threads or self.submit_threads)
        for _round in range(max_rounds):
            if pending is not None and not pending:
                break
            retry: list[str] = []
            with ThreadPoolExecutor(max_workers=workers) as pool:
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
                        msg = (err.get("message") or {}).get("value") if isinstance(err.get("message"), dict) \
                            else err.get("message")
                        res.failed[tid] = f"{code}: {msg}" if msg else str(code)
                retry.extend(tid for tid, _ in chunk if tid not in answered)
            pending = retry
        pending = pending or []
        for tid in pending:
            res.failed.setdefault(tid, f"not added after {max_rounds} attempts")
        res.elapsed_s = round(time.monotonic() - t0, 3)
        self._say(f"job {job_id}: {len(res.added)} task(s) added in {res.requests} request(s)"
                  + (f", {len(res.existing)} already existed" if res.existing else "")
                  + (f", {len(res.failed)} failed" if res.failed else ""))
        return res

    def _post_collection(self, job_id: str, body: bytes, n: int) -> list[dict[str, Any]] | None:
        """POST /jobs/{job}/addtaskcollection with a prepared body; the per-task results, or None when
        the service says the body is too large."""
        from urllib.parse import quote

        from azure.core.rest import HttpRequest

        api_version = getattr(getattr(self.client, "_config", None), "api_version", None) or "2025-06-01"
        req = HttpRequest("POST", f"/jobs/{quote(job_id, safe='')}/addtaskcollection",
                          params={"api-version": api_version}, content=body,
                          headers={"content-type": "application/json; odata=minimalmetadata",
                                   "Accept": "application/json"})
        from azure.core.exceptions import HttpResponseError, ResourceNotFoundError

        def send() -> Any:
            try:
                return self.client.send_request(req)
            except HttpResponseError as e:  # azure-batch's exception policy raises for non-2xx
                if e.status_code == 413 and e.response is not None:
                    return e.response
                raise

        try:
            resp = self._call(f"adding {n} tasks to job {job_id}", send)
        except ResourceNotFoundError:
            raise SpecError("job", f"job {job_id!r} does not exist in Batch account {self.account.name}",
                            "create it first (mpibatch submit creates it)") from None
        try:
            data = json.loads(resp.read() or b"{}")
        except ValueError:
            data = {}
        if resp.status_code == 200:
            return list(data.get("value") or [])
        code = data.get("code") or ""
        msg = data.get("message")
        text = redact(str(msg.get("value") if isinstance(msg, dict) else msg or "").splitlines()[0]
                      if msg else "", self._env.get(ENV_KEY))
        if resp.status_code == 413 or code == "RequestBodyTooLarge":
            if n > 1:
                return None
            raise SpecError("task", f"a task's payload is over Batch's request limit: {text}",
                            "shorten the command line / environment, or use fewer resource files")
        if resp.status_code in (401, 403):
            raise self._auth_error(Exception(text))
        if resp.status_code == 404:
            raise SpecError("job", f"job {job_id!r} does not exist in Batch account {self.account.name}",
                            "create it first (mpibatch submit creates it)")
        extra = " (throttled: retried with backoff, still refused)" if resp.status_code in (429, 503) else ""
        raise InfraError(f"Batch account {self.account.name}: adding {n} tasks to job {job_id} failed: "
                         f"HTTP {resp.status_code} {code}: {text}{extra}")

    # ------------------------------------------------------------------ watching
    def _subtasks(self, job_id: str, task_id: str) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self._call(f"listing subtasks of {job_id}/{task_id}",
                              lambda: list(self.client.list_subtasks(job_id, task_id)))
        except ResourceNotFoundError:
            return []

    def wait(self, job_id: str, task_id: str, *, timeout: float | None = None) -> Any:
        """Poll until the task completes, reporting task and subtask states as they change.
        Returns the task (azure-batch BatchTask). Raises InfraError on `timeout` seconds."""
        t0 = time.monotonic()
        interval = self.poll_interval
        last: str | None = None
        sub_last: dict[int, str] = {}
        active_since = time.monotonic()
        warned_active = False
        while True:
            task = self._get_task(job_id, task_id)
            if task is None:
                raise SpecError("task", f"task {job_id}/{task_id} does not exist in Batch account "
                                f"{self.account.name}", "check the job and task ids")
            state = _state(task.state)
            if state != last:
                node = getattr(task.node_info, "node_id", None) if task.node_info else None
                self._say(f"task {task_id}: {state}" + (f" (primary on {node})" if node and state != "active" else ""))
                last, interval = state, self.poll_interval
                active_since = time.monotonic()
            if state in ("running", "completed"):
                for st in self._subtasks(job_id, task_id):
                    s = _state(st.state)
                    if sub_last.get(st.id) != s:
                        sub_last[st.id] = s
                        node = getattr(st.node_info, "node_id", None) if st.node_info else None
                        code = f", exit code {st.exit_code}" if st.exit_code is not None else ""
                        self._say(f"subtask {st.id}: {s}" + (f" on {node}" if node else "") + code)
            if state == "completed":
                return task
            if state == "active":
                job = self._get_job(job_id)
                if job is not None and _state(job.state) in ("completed", "terminating", "deleting"):
                    raise InfraError(f"job {job_id} is {_state(job.state)} and task {task_id} never started "
                                     "(Batch leaves active tasks of an ended job unscheduled)")
                if not warned_active and time.monotonic() - active_since > 600:
                    warned_active = True
                    self._say(f"task {task_id} has waited 10 minutes for nodes: check the pool "
                              f"(mpibatch pool check {getattr(task.node_info, 'pool_id', '') or 'POOL'})")
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise InfraError(f"gave up waiting for task {job_id}/{task_id} after {timeout:.0f}s (it is {state}); "
                                 f"resume with: mpibatch status {job_id} {task_id}")
            time.sleep(interval)
            interval = min(self.max_poll_interval, interval * 1.5)

    # ------------------------------------------------------------------ results
    def status(self, job_id: str, task_id: str) -> TaskResult:
        """The task's state, exit code, failure and instances - without downloading anything."""
        task = self._get_task(job_id, task_id)
        if task is None:
            raise SpecError("task", f"task {job_id}/{task_id} does not exist in Batch account {self.account.name}",
                            "check the job and task ids")
        subtasks = self._subtasks(job_id, task_id) if _state(task.state) in ("running", "completed") else []
        return self._task_result(job_id, task, subtasks, {})

    def _task_result(self, job_id: str, task: Any, subtasks: Sequence[Any],
                     index_of: Mapping[int, int]) -> TaskResult:
        info = task.execution_info
        state = _state(task.state)
        exit_code = info.exit_code if info else None
        failure = None
        timed_out = False
        fi = info.failure_info if info else None
        if fi is not None:
            code = fi.code or ""
            phase = "files" if code.startswith("Blob") or "ResourceFile" in code else \
                "collecting" if "Upload" in code else "running"
            details = "; ".join(f"{d.name}={d.value}" for d in (fi.details or []) if getattr(d, "name", None))
            text = f"{_state(fi.category)} {code}: {fi.message or ''}".strip() + (f" ({details})" if details else "")
            failure = Failure(phase, redact(text))  # Batch may quote a resource file's URL: no SAS in results
        elif state == "completed" and exit_code not in (0, None):
            failure = Failure("running", f"the application exited with code {exit_code} on the primary", 0)
        for st in subtasks:
            if st.exit_code not in (0, None) and failure is None:
                i = index_of.get(st.id, st.id)
                failure = Failure("coordination", f"subtask {st.id} (instance {i}) exited with code {st.exit_code}", i)
        elapsed = 0.0
        start, end = (_dt(info.start_time), _dt(info.end_time)) if info else (None, None)
        if start and end:
            elapsed = (end - start).total_seconds()
        wall = task.constraints.max_wall_clock_time if task.constraints else None
        if failure is not None and wall is not None and elapsed >= wall.total_seconds() - 1:
            timed_out = True
            failure = Failure("timeout", f"max_wall_clock ({wall}) exceeded: {failure.reason}")
        if state == "completed":
            rstate = "completed" if failure is None or exit_code not in (None, 0) else "failed"
        else:
            rstate = {"active": "active", "preparing": "running", "running": "running"}.get(state, state or "active")
        primary_node = getattr(task.node_info, "node_id", None) if task.node_info else None
        instances = [InstanceResult(index=0, node_id=primary_node or "", host="", application_exit_code=exit_code)]
        for st in sorted(subtasks, key=lambda s: index_of.get(s.id, s.id)):
            node = getattr(st.node_info, "node_id", None) if st.node_info else None
            instances.append(InstanceResult(index=index_of.get(st.id, st.id), node_id=node or "", host="",
                                            coordination_exit_code=st.exit_code))
        return TaskResult(job_id=job_id, task_id=task.id, executor="azure", state=rstate,
                          exit_code=exit_code, failure=failure, timed_out=timed_out,
                          attempts=(info.retry_count or 0) + 1 if info else 1, elapsed_s=round(elapsed, 3),
                          instances=instances)

    def collect(self, job_id: str, task_id: str, to: str | Path | None = None) -> TaskResult:
        """Bring back every instance's stdout/stderr and persisted outputs into
        ``<to or runs_dir>/<job>/<task>/<instance>/`` (a new directory: never overwrites)."""
        task = self._get_task(job_id, task_id)
        if task is None:
            raise SpecError("task", f"task {job_id}/{task_id} does not exist in Batch account {self.account.name}",
                            "check the job and task ids")
        storage = self.storage
        container = conventions.job_container_name(job_id)
        mis = task.multi_instance_settings
        n = mis.number_of_instances if mis and mis.number_of_instances else 1
        persisted = any(e.name == PERSIST_URL_VAR for e in (task.environment_settings or []))
        subtasks = self._subtasks(job_id, task_id) if n > 1 else []
        pool_id = (getattr(task.node_info, "pool_id", None) if task.node_info else None)
        if not pool_id:
            job = self._get_job(job_id)
            pool_id = getattr(job.pool_info, "pool_id", None) if job and job.pool_info else None

        blobs = storage.list_blobs(container, f"{task_id}/")
        infos: dict[int, dict[str, Any]] = {}
        info_re = re.compile(rf"^{re.escape(task_id)}/\$TaskLog/(\d+)/{re.escape(INSTANCE_INFO)}$")
        for b in blobs:
            m = info_re.match(b.name)
            if m:
                raw = storage.read_blob(container, b.name)
                try:
                    infos[int(m.group(1))] = json.loads(raw or b"{}")
                except ValueError:
                    pass
        missing: list[str] = []
        index_of = map_subtasks(subtasks, infos, n, missing, task_id)
        result = self._task_result(job_id, task, subtasks, index_of)
        out = new_output_dir(Path(to) if to else self.runs_dir, job_id, task_id)
        result.output_dir = str(out)
        self._say(f"collecting {n} instance(s) of {job_id}/{task_id} into {out}")
        by_index = {r.index: r for r in result.instances}
        for i in range(n):
            if i not in by_index:
                by_index[i] = InstanceResult(index=i, node_id="", host="")
        result.instances = [by_index[i] for i in sorted(by_index)]
        sub_of = {index_of.get(st.id, st.id): st for st in subtasks}

        # blobs by instance: {i: [(kind, rel, blob)]}
        per: dict[int, list[tuple[str, str, Any]]] = {}
        blob_re = re.compile(rf"^{re.escape(task_id)}/\$([A-Za-z0-9]+)/(\d+)/(.+)$")
        names = set()
        for b in blobs:
            names.add(b.name)
            m = blob_re.match(b.name)
            if m:
                per.setdefault(int(m.group(2)), []).append((m.group(1), m.group(3), b))

        state = _state(task.state)
        for r in result.instances:
            i = r.index
            d = out / str(i)
            d.mkdir(parents=True, exist_ok=True)
            r.output_dir = str(d)
            info = infos.get(i, {})
            r.host = str(info.get("host") or r.host or "")
            if not r.node_id and info.get("node_id"):
                r.node_id = str(info["node_id"])
            if persisted and i not in infos and state == "completed" and (n > 1 or i == 0):
                missing.append(f"{task_id}/$TaskLog/{i}/{INSTANCE_INFO}: not in container {container} (the "
                               "node's persist step did not run or failed)")
            logs_from_blob = {rel: b for kind, rel, b in per.get(i, []) if kind == "TaskLog"}
            for name in LOG_FILES:
                problem = None
                if i == 0:
                    problem = self._fetch_batch_file(
                        lambda **kw: self.client.download_task_file(job_id, task_id, name, **kw), d / name)
                else:
                    st = sub_of.get(i)
                    root = getattr(st.node_info, "task_root_directory", None) if st and st.node_info else None
                    node = getattr(st.node_info, "node_id", None) if st and st.node_info else None
                    sub_pool = (getattr(st.node_info, "pool_id", None) if st and st.node_info else None) or pool_id
                    if root and node and sub_pool:
                        path = f"{root.replace(chr(92), '/').strip('/')}/{name}"
                        problem = self._fetch_batch_file(
                            lambda path=path, node=node, sub_pool=sub_pool, **kw:
                            self.client.download_node_file(sub_pool, node, path, **kw), d / name)
                    else:
                        problem = "the subtask has no node information"
                if problem and name in logs_from_blob:  # node gone or file cleaned up: the persisted copy
                    blob_problem = storage.download_blob(container, logs_from_blob[name], d / name)
                    problem = None if blob_problem is None else f"{problem}; persisted copy: {blob_problem}"
                if problem:
                    if state == "completed" or i == 0:
                        missing.append(f"instance {i} {name}: {problem}")
                    continue
                text = (d / name).read_text(errors="replace")
                setattr(r, name[:6], tail(text))
                setattr(r, f"{name[:6]}_path", str(d / name))
            # Outputs (every kind but the logs handled above) and anything else the node persisted.
            files: list[str] = []
            for kind, rel, b in sorted(per.get(i, []), key=lambda x: x[1]):
                if kind == "TaskLog" and rel in (*LOG_FILES, INSTANCE_INFO):
                    continue
                if any(p in ("", "..", ".") for p in rel.split("/")):
                    missing.append(f"{b.name}: unsafe name, not downloaded")
                    continue
                target = rel if kind != "TaskLog" else f"$TaskLog/{rel}"
                if target in files:
                    target = f"${kind}/{rel}"
                problem = storage.download_blob(container, b, d / target)
                if problem:
                    missing.append(f"{b.name}: {problem}")
                else:
                    files.append(target)
            for blob_name in (info.get("files") or {}):
                if blob_name not in names:
                    missing.append(f"{blob_name}: uploaded by the node's persist step but not in container {container}")
            if i == 0 and state == "completed":
                self._primary_named_outputs(task, result, container, blobs, d, files, missing)
            r.files = files
        result.missing = missing
        if missing:
            self._say(f"{len(missing)} item(s) could not be collected: see 'missing' in the result")
        return result

    def _primary_named_outputs(self, task: Any, result: TaskResult, container: str, blobs: Sequence[Any], d: Path,
                               files: list[str], missing: list[str]) -> None:
        """Batch output files naming one file (no wildcard) upload to exactly their `path`: expect
        that blob, and bring it back when it lies outside the instance folders listed above."""
        by_name = {b.name: b for b in blobs}
        ok = result.exit_code == 0 and result.failure is None
        for of in task.output_files or []:
            pattern = (of.file_pattern or "").replace("\\", "/")
            dest = of.destination.container if of.destination else None
            cond = _state(of.upload_options.upload_condition) if of.upload_options else "tasksuccess"
            if not pattern or dest is None or any(c in pattern for c in "*?["):
                continue
            if (cond == "tasksuccess" and not ok) or (cond == "taskfailure" and ok):
                continue
            rel = re.sub(r"^(\.\./|\./)+", "", pattern)
            blob = dest.path or Path(rel).name
            b = by_name.get(blob)
            if b is None:
                missing.append(f"{rel}: Batch output file not uploaded to {container}/{blob} (no such file on the "
                               "primary, or the upload failed)")
                continue
            if rel in files or rel in LOG_FILES or re.match(rf"^{re.escape(task.id)}/\$[A-Za-z0-9]+/0/", blob):
                continue  # already collected from the instance folder
            problem = self.storage.download_blob(container, b, d / rel)
            if problem:
                missing.append(f"{blob}: {problem}")
            else:
                files.append(rel)

    def _fetch_batch_file(self, fetch: Callable[..., Any], dest: Path) -> str | None:
        """Download a task or node file to `dest`, checking its size; None when good, else why not."""
        from azure.core.exceptions import ResourceNotFoundError

        holder: dict[str, Any] = {}

        def cls(pipeline_response: Any, deserialized: Any, headers: Any) -> Any:
            holder["headers"] = headers
            holder["encoding"] = pipeline_response.http_response.headers.get("Content-Encoding")
            return deserialized

        tmp = dest.with_name(dest.name + ".part")
        try:
            stream = self._call(f"downloading {dest.name}", fetch, cls=cls)
            size, _ = write_chunks(stream, tmp)
        except ResourceNotFoundError:
            tmp.unlink(missing_ok=True)
            return "not found on the node (retention over, node reimaged or removed?)"
        except InfraError as e:
            tmp.unlink(missing_ok=True)
            return str(e)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            return f"download failed: {e}"
        expected = (holder.get("headers") or {}).get("Content-Length")
        if expected is not None and not holder.get("encoding") and size != expected:
            tmp.unlink(missing_ok=True)
            return f"size mismatch: got {size} bytes, Batch says {expected}"
        os.replace(tmp, dest)
        return None


# ---------------------------------------------------------------------------------------------- helpers

def map_subtasks(subtasks: Sequence[Any], infos: Mapping[int, Mapping[str, Any]], n: int,
                 notes: list[str], task_id: str) -> dict[int, int]:
    """Subtask id -> instance index, through the node ids in the instance.json files the nodes
    persisted. Subtasks without one take the remaining indices in subtask-id order (noted)."""
    node_to_index = {str(info.get("node_id")): i for i, info in infos.items() if info.get("node_id") and i > 0}
    index_of: dict[int, int] = {}
    for st in subtasks:
        node = getattr(st.node_info, "node_id", None) if st.node_info else None
        if node and node in node_to_index and node_to_index[node] not in index_of.values():
            index_of[st.id] = node_to_index[node]
    free = [i for i in range(1, n) if i not in index_of.values()]
    for st in sorted(subtasks, key=lambda s: s.id):
        if st.id not in index_of and free:
            index_of[st.id] = free.pop(0)
            if infos:
                notes.append(f"subtask {st.id}: no {task_id}/$TaskLog/*/{INSTANCE_INFO} names its node; "
                             f"taken as instance {index_of[st.id]}")
    return index_of


def encode_task(task: Any) -> bytes:
    """The task's JSON exactly as azure-batch sends it (its own encoder), compact."""
    try:
        from azure.batch._utils.model_base import SdkJSONEncoder  # what create_task_collection uses
    except ImportError:  # a later azure-batch: the public REST form is the same JSON
        return json.dumps(task.as_dict(), separators=(",", ":")).encode()
    return json.dumps(task, cls=SdkJSONEncoder, exclude_readonly=True, separators=(",", ":")).encode()


_ENVELOPE = len(b'{"value":[]}')


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


def chunk_encoded(items: Sequence[tuple[str, bytes]], *, budget: int = REQUEST_BYTES_BUDGET,
                  max_tasks: int = MAX_TASKS_PER_REQUEST) -> list[list[tuple[str, bytes]]]:
    return list(iter_chunks(items, budget=budget, max_tasks=max_tasks))


def chunk_tasks(tasks: Sequence[Any], *, budget: int = REQUEST_BYTES_BUDGET,
                max_tasks: int = MAX_TASKS_PER_REQUEST) -> list[list[Any]]:
    """Task models in the chunks `add_tasks` would send."""
    by_id = {t.id: t for t in tasks}
    return [[by_id[tid] for tid, _ in c]
            for c in chunk_encoded([(t.id, encode_task(t)) for t in tasks], budget=budget, max_tasks=max_tasks)]


def choose_image(spec: Spec) -> Image:
    """The image for a pool created by mpibatch: Windows for MS-MPI, otherwise the Ubuntu HPC image
    (InfiniBand drivers, HPC-X / Intel MPI), which also suits sizes without RDMA."""
    if spec.task.mpi.flavor == "msmpi":
        return IMAGE_ALIASES["windows"]
    return IMAGE_ALIASES["ubuntu-hpc"]


def start_task(spec: Spec, image: Image, msmpi_installer_url: str | None) -> Any:
    """What each node installs when it joins the pool (as the pool's admin auto-user, waited for)."""
    from azure.batch import models as bm

    admin = bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope=bm.AutoUserScope.POOL,
                                                              elevation_level=bm.ElevationLevel.ADMIN))
    if image.os == "windows":
        if not msmpi_installer_url:
            raise SpecError("--msmpi-installer", "Windows MPI pools install MS-MPI in their start task, and "
                            "mpibatch needs the installer's URL",
                            "pass --msmpi-installer URL of MSMpiSetup.exe (your copy in blob storage, or "
                            "Microsoft's download link)")
        if not msmpi_installer_url.startswith(("https://", "http://")):
            raise SpecError("--msmpi-installer", "is not an http(s) URL", "give the URL of MSMpiSetup.exe")
        return bm.BatchStartTask(
            command_line="cmd /c MSMpiSetup.exe -unattend -force",
            resource_files=[bm.ResourceFile(http_url=msmpi_installer_url, file_path="MSMpiSetup.exe")],
            user_identity=admin, wait_for_success=True, max_task_retry_count=2)
    packages = {"mpich": ("mpiexec.hydra", "mpich", "mpich"), "openmpi": ("mpirun", "openmpi-bin", "openmpi")}
    steps = ["set -e",
             "install() { if command -v apt-get >/dev/null; then apt-get update -q && "
             "DEBIAN_FRONTEND=noninteractive apt-get install -y -q \"$1\"; else dnf install -y \"$2\"; fi; }",
             "command -v python3 >/dev/null || install python3 python3"]
    if spec.task.mpi.flavor in packages:
        probe, deb, rpm = packages[spec.task.mpi.flavor]
        steps.append(f"command -v {probe} >/dev/null || ls /opt/*/bin/{probe} >/dev/null 2>&1 || install {deb} {rpm}")
    from ...shell import bash_c

    return bm.BatchStartTask(command_line=bash_c("\n".join(steps)), user_identity=admin, wait_for_success=True,
                             max_task_retry_count=2)


def iter_progress_lines(result: TaskResult) -> Iterator[str]:
    """Short lines describing a result (used when report.format_result is not available)."""
    yield f"task {result.job_id}/{result.task_id}: {result.state}, exit code {result.exit_code}"
    if result.failure:
        yield f"failure ({result.failure.phase}): {result.failure.reason}"
    for r in result.instances:
        yield f"  instance {r.index} ({r.role}) node {r.node_id or '?'}: {len(r.files)} file(s)"
    for m in result.missing:
        yield f"  missing: {m}"
    if result.output_dir:
        yield f"outputs: {result.output_dir}"


__all__ = ["AzureExecutor", "BatchAccount", "PreparedTasks", "SubmitManyResult", "batch_client_from_env",
           "choose_image", "chunk_encoded", "chunk_tasks", "encode_task", "iter_chunks", "map_subtasks", "start_task"]
