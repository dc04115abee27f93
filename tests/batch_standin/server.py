"""A local STAND-IN for the Azure Batch REST API - for tests. It is NOT the Batch service.

The Batch service cannot run on this machine, so mpibatch's Azure executor is tested against this small
threaded HTTP server on 127.0.0.1, driven by the real azure-batch 15.1 client over http with a Shared Key
credential. It follows the documented REST API for the endpoints mpibatch uses - URLs, verbs, JSON
(camelCase, as azure-batch's ``_operations`` send and parse them), status codes and Batch's error format
(``{"code", "message": {"lang", "value"}, "values": [{"key", "value"}]}``):

==========================================================  ===================================
``GET  /pools/{pool}``                                      pools are defined by the test (add_pool)
``POST /pools``                                             201 / 409 PoolExists
``GET  /pools/{pool}/nodes/{node}``                         the emulated node
``GET  /pools/{pool}/nodes/{node}/files/{path}``            a file under the node's root directory
``POST /jobs``, ``GET /jobs/{job}``                         201 / 409 JobExists, 200 / 404 JobNotFound
``POST /jobs/{job}/terminate``                              202; running tasks are ended
``POST /jobs/{job}/tasks``                                  201 / 409 TaskExists / 409 JobCompleted
``POST /jobs/{job}/addtaskcollection``                      200 per-task results; 413 RequestBodyTooLarge
``GET  /jobs/{job}/tasks/{task}``                           state, executionInfo, nodeInfo
``GET  /jobs/{job}/tasks/{task}/subtasksinfo``              subtasks with nodeInfo.taskRootDirectory
``GET  /jobs/{job}/tasks/{task}/files/{path}``              the primary's task directory
==========================================================  ===================================

Like the service it checks every request's Shared Key signature (the string to sign of the Batch REST
"Authenticate requests" page: verb, the standard headers, ``ocp-*`` headers, ``/account/path`` and the
sorted query parameters; a wrong key gets 403 AuthenticationFailed), requires a known ``api-version``
(400 MissingRequiredQueryParameter / UnsupportedRequestVersion), refuses task collections over 100 tasks
or 1 MB, and - when a test asks - answers 429 with ``Retry-After`` (:meth:`BatchStandIn.throttle`).

Scheduling follows docs/batch-semantics.md#pool-rules: a multi-instance task is only scheduled on a pool with inter-node
communication on, one task slot per node and at least as many nodes as instances; otherwise it stays
*active* forever, with no error, as on Batch. A scheduled task runs with mpibatch's ``LocalExecutor
(keep_nodes=True).run_plan(...)`` in a background thread, from a TaskPlan built out of the REST task JSON:
resource files are the http(s) SAS URLs into Azurite (really fetched), the environment settings carry
MPIBATCH_PERSIST_URL (so the nodes' persist step really uploads subtask outputs). Afterwards the stand-in
plays Batch's output files for the primary (matches ``filePattern`` in the primary's working directory and
PUTs each file to ``containerUrl`` + ``path`` through the SAS in the URL) and reports state, executionInfo
(exitCode, failureInfo), nodeInfo, and subtasks whose ``nodeInfo.taskRootDirectory`` the node-files
endpoint serves. Subtask ids are deliberately not the instance indices (they run backwards), since Batch
does not document how they relate.

With ``execute=False`` tasks are only stored (the submission benchmark). ``requests`` records every
request (method, path, status, body size, tasks in a collection) for assertions.
"""
from __future__ import annotations

import base64
import glob
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

API_VERSIONS = ("2025-06-01", "2024-07-01.20.0", "2024-02-01.19.0", "2023-05-01.17.0")
MAX_TASKS_PER_COLLECTION = 100
MAX_BODY = 1024 * 1024
HEADERS_TO_SIGN = ("content-encoding", "content-language", "content-length", "content-md5", "content-type",
                   "date", "if-modified-since", "if-match", "if-none-match", "if-unmodified-since", "range")
FOREVER = "P10675199DT2H48M5.4775807S"  # the service's "no limit" duration


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _rfc1123() -> str:
    return datetime.now(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def parse_duration(text: str | None) -> int | None:
    """ISO 8601 duration (as azure-batch sends timedelta) -> whole seconds; None for none/forever."""
    if not text or text == FOREVER:
        return None
    m = re.fullmatch(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:([\d.]+)S)?)?", text)
    if not m:
        raise ValueError(text)
    d, h, mi, s = m.groups()
    total = int(d or 0) * 86400 + int(h or 0) * 3600 + int(mi or 0) * 60 + float(s or 0)
    return max(1, int(round(total)))


class _Error(Exception):
    def __init__(self, status: int, code: str, message: str, values: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.values = status, code, message, values or {}
        self.headers = headers or {}


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int
    body_bytes: int
    tasks: int = 0  # tasks in an addtaskcollection request
    throttled: bool = False


@dataclass
class _Run:
    """One execution of a task by the local executor (files stay until the stand-in stops)."""

    node_roots: dict[str, Path] = field(default_factory=dict)  # node id -> host path of the node root
    executor: Any = None


@dataclass
class _Task:
    job_id: str
    body: dict[str, Any]
    created: str
    state: str = "active"
    state_time: str = ""
    previous_state: str | None = None
    execution: dict[str, Any] = field(default_factory=dict)
    node_info: dict[str, Any] | None = None
    subtasks: list[dict[str, Any]] = field(default_factory=list)
    primary_dir: Path | None = None  # host path of the primary's task directory
    run: _Run | None = None
    etag: str = ""
    thread: threading.Thread | None = None
    terminate: bool = False

    @property
    def id(self) -> str:
        return self.body["id"]

    @property
    def instances(self) -> int:
        return int((self.body.get("multiInstanceSettings") or {}).get("numberOfInstances") or 1)


class BatchStandIn:
    """A local stand-in for the Batch REST API (see the module docstring). Not the Batch service."""

    def __init__(self, account: str = "standin", key: str | None = None, *, execute: bool = True,
                 base_env: dict[str, str] | None = None, work_dir: str | Path | None = None,
                 api_versions: tuple[str, ...] = API_VERSIONS) -> None:
        self.account = account
        self.key = key or base64.b64encode(secrets.token_bytes(64)).decode()
        self.execute = execute
        self.base_env = base_env
        self.work_dir = Path(work_dir) if work_dir else None
        self.api_versions = api_versions
        self.pools: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[tuple[str, str], _Task] = {}
        self.requests: list[RequestRecord] = []
        self.errors: list[str] = []  # stand-in failures while running tasks (for test diagnostics)
        self._lock = threading.RLock()
        self._throttle: list[tuple[int, str | None, re.Pattern[str] | None, float]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._runs: list[_Run] = []

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "BatchStandIn":
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name="batch-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 60.0) -> None:
        with self._lock:
            tasks = list(self.tasks.values())
        for t in tasks:  # end running tasks, as terminating their job would
            self._end_task(t)
        deadline = time.monotonic() + timeout
        for t in tasks:
            if t.thread is not None:
                t.thread.join(max(0.1, deadline - time.monotonic()))
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        for run in self._runs:  # the kept node directories (keep_nodes=True) go with the stand-in
            workdir = getattr(getattr(run.executor, "transport", None), "workdir", None)
            if workdir is not None and Path(workdir).name.startswith("mpibatch-nodes-"):
                shutil.rmtree(workdir, ignore_errors=True)
        self._runs.clear()

    def __enter__(self) -> "BatchStandIn":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() the stand-in first"
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """The variables mpibatch reads to reach this stand-in."""
        return {"AZURE_BATCH_ENDPOINT": self.endpoint, "AZURE_BATCH_ACCOUNT": self.account,
                "AZURE_BATCH_ACCESS_KEY": self.key}

    # ------------------------------------------------------------------ test controls
    def add_pool(self, pool_id: str, *, nodes: int = 3, inter_node: bool = True, slots: int = 1,
                 vm_size: str = "standard_d4s_v3", **extra: Any) -> dict[str, Any]:
        """Define a pool as GET /pools/{id} returns it (extra camelCase properties override)."""
        body: dict[str, Any] = {
            "id": pool_id, "url": f"{self.endpoint}/pools/{pool_id}", "eTag": f"0x{secrets.token_hex(8).upper()}",
            "lastModified": _now(), "creationTime": _now(), "state": "active", "stateTransitionTime": _now(),
            "allocationState": "steady", "allocationStateTransitionTime": _now(), "vmSize": vm_size,
            "virtualMachineConfiguration": {
                "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204",
                                   "version": "latest"},
                "nodeAgentSKUId": "batch.node.ubuntu 22.04"},
            "resizeTimeout": "PT15M", "currentDedicatedNodes": nodes, "currentLowPriorityNodes": 0,
            "targetDedicatedNodes": nodes, "targetLowPriorityNodes": 0, "enableAutoScale": False,
            "enableInterNodeCommunication": inter_node, "taskSlotsPerNode": slots,
            "taskSchedulingPolicy": {"nodeFillType": "spread"},
        }
        body.update(extra)
        with self._lock:
            self.pools[pool_id.lower()] = body
        return body

    def throttle(self, count: int, *, method: str | None = None, path: str | None = None,
                 retry_after: float = 1) -> None:
        """Answer the next `count` requests (matching `method` and the `path` regex, if given) with
        429 TooManyRequests and a Retry-After header."""
        with self._lock:
            self._throttle.append((count, method, re.compile(path) if path else None, retry_after))

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """Wait until no task is running (bounded); True if idle."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                busy = [t for t in self.tasks.values() if t.thread is not None and t.thread.is_alive()]
            if not busy:
                return True
            busy[0].thread.join(min(1.0, max(0.01, deadline - time.monotonic())))  # type: ignore[union-attr]
        return False

    def task(self, job_id: str, task_id: str) -> _Task | None:
        with self._lock:
            return self.tasks.get((job_id.lower(), task_id.lower()))

    @property
    def throttled(self) -> int:
        return sum(1 for r in self.requests if r.throttled)

    # ------------------------------------------------------------------ auth
    def check_auth(self, method: str, raw_path: str, query: str, headers: Any) -> None:
        auth = headers.get("Authorization") or ""
        if not auth:
            raise _Error(401, "AuthenticationFailed", "Server failed to authenticate the request. The "
                         "Authorization header is missing.")
        m = re.fullmatch(r"SharedKey ([^:\s]+):(\S+)", auth)
        if not m:
            raise _Error(401 if auth.startswith("Bearer ") else 400, "InvalidAuthenticationInfo",
                         "The authentication information was not provided in the correct format (this stand-in "
                         "only takes Shared Key).")
        account, signature = m.groups()
        h = {k.lower(): v for k, v in headers.items() if v}
        if method not in ("GET", "HEAD") and "content-length" not in h:
            h["content-length"] = "0"
        to_sign = method + "\n" + "\n".join(h.get(x, "") for x in HEADERS_TO_SIGN) + "\n"
        ocp = sorted((k, v) for k, v in h.items() if "ocp-" in k)
        to_sign += "".join(f"{k}:{v}\n" for k, v in ocp)
        to_sign += f"/{account}{raw_path}"
        params = urllib.parse.parse_qs(query)
        for name in sorted(params):
            if params[name][0]:
                to_sign += f"\n{name}:{params[name][0]}"
        expected = base64.b64encode(hmac.new(base64.b64decode(self.key), to_sign.encode(), hashlib.sha256)
                                    .digest()).decode()
        if account != self.account or not hmac.compare_digest(signature, expected):
            raise _Error(403, "AuthenticationFailed", "Server failed to authenticate the request. Make sure the "
                         "value of Authorization header is formed correctly including the signature.",
                         {"AuthenticationErrorDetail": "The MAC signature found in the HTTP request is not the "
                          "same as any computed signature."})

    def _throttled(self, method: str, path: str) -> float | None:
        with self._lock:
            for i, (count, m, p, after) in enumerate(self._throttle):
                if (m is None or m == method) and (p is None or p.search(path)):
                    if count <= 1:
                        self._throttle.pop(i)
                    else:
                        self._throttle[i] = (count - 1, m, p, after)
                    return after
        return None

    # ------------------------------------------------------------------ routing
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: bytes) -> tuple[int, Any, dict[str, str]]:
        seg = [urllib.parse.unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        if seg[:1] == ["pools"]:
            if len(seg) == 1 and method == "POST":
                return self._create_pool(_json(body))
            if len(seg) == 2 and method == "GET":
                return 200, self._pool(seg[1]), {}
            if len(seg) == 4 and seg[2] == "nodes" and method == "GET":
                return 200, self._node(seg[1], seg[3]), {}
            if len(seg) >= 6 and seg[2] == "nodes" and seg[4] == "files" and method in ("GET", "HEAD"):
                return self._node_file(seg[1], seg[3], "/".join(seg[5:]))
        if seg[:1] == ["jobs"]:
            if len(seg) == 1 and method == "POST":
                return self._create_job(_json(body))
            if len(seg) == 2 and method == "GET":
                return 200, self._job(seg[1]), {}
            if len(seg) == 3 and seg[2] == "terminate" and method == "POST":
                return self._terminate_job(seg[1], _json(body) if body else {})
            if len(seg) == 3 and seg[2] == "tasks" and method == "POST":
                self._add_task(seg[1], _json(body))
                return 201, None, {"DataServiceId": f"{self.endpoint}/jobs/{seg[1]}/tasks/{_json(body).get('id')}"}
            if len(seg) == 3 and seg[2] == "addtaskcollection" and method == "POST":
                return self._add_collection(seg[1], body)
            if len(seg) == 4 and seg[2] == "tasks" and method == "GET":
                return 200, self._task_json(self._get_task(seg[1], seg[3])), {}
            if len(seg) == 5 and seg[2] == "tasks" and seg[4] == "subtasksinfo" and method == "GET":
                t = self._get_task(seg[1], seg[3])
                with self._lock:
                    return 200, {"value": [dict(s) for s in t.subtasks]}, {}
            if len(seg) >= 6 and seg[2] == "tasks" and seg[4] == "files" and method in ("GET", "HEAD"):
                return self._task_file(seg[1], seg[3], "/".join(seg[5:]))
        if method not in ("GET", "POST", "HEAD", "PUT", "PATCH", "DELETE"):
            raise _Error(400, "InvalidHttpVerb", f"The HTTP verb {method} is not recognized.")
        raise _Error(400, "InvalidUri", f"The requested URI does not represent any resource on the server "
                     f"(this stand-in serves only the endpoints mpibatch uses): {method} {path}")

    # ------------------------------------------------------------------ pools and nodes
    def _pool(self, pool_id: str) -> dict[str, Any]:
        with self._lock:
            pool = self.pools.get(pool_id.lower())
        if pool is None:
            raise _Error(404, "PoolNotFound", "The specified pool does not exist.")
        return pool

    def _create_pool(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        pid = str(body.get("id") or "")
        if not pid or not body.get("vmSize"):
            raise _Error(400, "MissingRequiredProperty", "A required property was not specified in the request body.",
                         {"PropertyName": "id" if not pid else "vmSize"})
        with self._lock:
            if pid.lower() in self.pools:
                raise _Error(409, "PoolExists", "The specified pool already exists.")
        pool = self.add_pool(pid, nodes=int(body.get("targetDedicatedNodes") or 0),
                             inter_node=bool(body.get("enableInterNodeCommunication", False)),
                             slots=int(body.get("taskSlotsPerNode") or 1), vm_size=body["vmSize"])
        pool.update({k: v for k, v in body.items() if k not in ("id",)})
        pool["created_body"] = body  # what the client sent, for tests
        return 201, None, {"DataServiceId": f"{self.endpoint}/pools/{pid}"}

    def _node(self, pool_id: str, node_id: str) -> dict[str, Any]:
        self._pool(pool_id)
        with self._lock:
            known = any(node_id in r.node_roots for r in self._runs)
        if not known:
            raise _Error(404, "NodeNotFound", "The specified node does not exist.")
        return {"id": node_id, "url": f"{self.endpoint}/pools/{pool_id}/nodes/{node_id}", "state": "idle",
                "schedulingState": "enabled", "vmSize": self._pool(pool_id).get("vmSize"), "isDedicated": True}

    def _node_file(self, pool_id: str, node_id: str, file_path: str) -> tuple[int, Any, dict[str, str]]:
        self._pool(pool_id)
        rel = _safe_rel(file_path)
        with self._lock:
            roots = [r.node_roots[node_id] for r in reversed(self._runs) if node_id in r.node_roots]
        if not roots:
            raise _Error(404, "NodeNotFound", "The specified node does not exist.")
        for root in roots:
            p = root / rel
            if p.is_file():
                return 200, p, {}
        raise _Error(404, "FileNotFound", "The specified file does not exist.")

    # ------------------------------------------------------------------ jobs
    def _job(self, job_id: str) -> dict[str, Any]:
        with self._lock:
            job = self.jobs.get(job_id.lower())
        if job is None:
            raise _Error(404, "JobNotFound", "The specified job does not exist.")
        return job

    def _create_job(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        jid = str(body.get("id") or "")
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", jid):
            raise _Error(400, "InvalidPropertyValue", "The value provided for one of the properties in the request "
                         "body is invalid.", {"PropertyName": "id"})
        if not (body.get("poolInfo") or {}).get("poolId"):
            raise _Error(400, "MissingRequiredProperty", "A required property was not specified in the request "
                         "body.", {"PropertyName": "poolInfo"})
        with self._lock:
            if jid.lower() in self.jobs:
                raise _Error(409, "JobExists", "The specified job already exists.")
            self.jobs[jid.lower()] = {**body, "url": f"{self.endpoint}/jobs/{jid}", "eTag": _etag(),
                                      "lastModified": _now(), "creationTime": _now(), "state": "active",
                                      "stateTransitionTime": _now(), "priority": body.get("priority", 0),
                                      "onAllTasksComplete": body.get("onAllTasksComplete", "noaction"),
                                      "onTaskFailure": body.get("onTaskFailure", "noaction"),
                                      "executionInfo": {"startTime": _now(), "poolId": body["poolInfo"]["poolId"]}}
        return 201, None, {"DataServiceId": f"{self.endpoint}/jobs/{jid}"}

    def _terminate_job(self, job_id: str, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        job = self._job(job_id)
        with self._lock:
            if job["state"] in ("completed", "terminating"):
                raise _Error(409, "JobCompleted", "The specified job is already in a completed state.")
            job["previousState"], job["state"] = job["state"], "terminating"
            job["stateTransitionTime"] = _now()
            tasks = [t for t in self.tasks.values() if t.job_id.lower() == job_id.lower()]
        for t in tasks:  # running tasks are ended; active ones stay active
            if t.state in ("running", "preparing"):
                self._end_task(t)
        with self._lock:
            job["previousState"], job["state"] = "terminating", "completed"
            job["stateTransitionTime"] = _now()
            job.setdefault("executionInfo", {}).update({"endTime": _now(), "terminateReason":
                                                        body.get("terminateReason") or "UserTerminate"})
        return 202, None, {"DataServiceId": f"{self.endpoint}/jobs/{job_id}"}

    # ------------------------------------------------------------------ tasks
    def _check_task_body(self, body: dict[str, Any]) -> None:
        tid = body.get("id")
        if not isinstance(tid, str) or not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", tid):
            raise _Error(400, "InvalidPropertyValue", "The value provided for one of the properties in the request "
                         "body is invalid.", {"PropertyName": "id"})
        if not body.get("commandLine"):
            raise _Error(400, "MissingRequiredProperty", "A required property was not specified in the request "
                         "body.", {"PropertyName": "commandLine"})

    def _add_task(self, job_id: str, body: dict[str, Any], *, start: bool = True) -> _Task:
        self._check_task_body(body)
        job = self._job(job_id)
        with self._lock:
            if job["state"] != "active":
                raise _Error(409, "JobCompleted" if job["state"] == "completed" else "JobNotActive",
                             "The specified job is already in a completed state." if job["state"] == "completed"
                             else "The specified job is not in active state.")
            key = (job_id.lower(), body["id"].lower())
            if key in self.tasks:
                raise _Error(409, "TaskExists", "The specified task already exists.")
            t = _Task(job_id=job["id"], body=body, created=_now(), state_time=_now(), etag=_etag())
            self.tasks[key] = t
        if start and self.execute:
            self._schedule(t)
        return t

    def _add_collection(self, job_id: str, raw: bytes) -> tuple[int, Any, dict[str, str]]:
        if len(raw) > MAX_BODY:
            raise _Error(413, "RequestBodyTooLarge", "The request body is too large and exceeds the maximum "
                         "permissible limit.", {"MaxLimit": str(MAX_BODY)})
        body = _json(raw)
        values = body.get("value")
        if not isinstance(values, list) or not values:
            raise _Error(400, "MissingRequiredProperty", "A required property was not specified in the request "
                         "body.", {"PropertyName": "value"})
        if len(values) > MAX_TASKS_PER_COLLECTION:
            raise _Error(400, "InvalidPropertyValue", "The value provided for one of the properties in the "
                         "request body is invalid.", {"PropertyName": "value",
                                                      "Reason": "a collection holds at most 100 tasks"})
        self._job(job_id)
        results = []
        for v in values:
            tid = v.get("id") if isinstance(v, dict) else None
            try:
                self._add_task(job_id, v)
                results.append({"status": "success", "taskId": tid, "eTag": _etag(), "lastModified": _now(),
                                "location": f"{self.endpoint}/jobs/{job_id}/tasks/{tid}"})
            except _Error as e:
                results.append({"status": "clienterror" if e.status < 500 else "servererror", "taskId": tid,
                                "error": {"code": e.code, "message": {"lang": "en-US", "value": e.message}}})
        return 200, {"value": results}, {}

    def _get_task(self, job_id: str, task_id: str) -> _Task:
        self._job(job_id)
        t = self.task(job_id, task_id)
        if t is None:
            raise _Error(404, "TaskNotFound", "The specified task does not exist.")
        return t

    def _task_json(self, t: _Task) -> dict[str, Any]:
        with self._lock:
            body = dict(t.body)
            constraints = {"maxWallClockTime": FOREVER, "retentionTime": "P7D", "maxTaskRetryCount": 0,
                           **(body.get("constraints") or {})}
            out = {**body, "url": f"{self.endpoint}/jobs/{t.job_id}/tasks/{t.id}", "eTag": t.etag,
                   "creationTime": t.created, "lastModified": t.state_time, "state": t.state,
                   "stateTransitionTime": t.state_time, "constraints": constraints,
                   "requiredSlots": body.get("requiredSlots", 1),
                   "executionInfo": {"retryCount": 0, "requeueCount": 0, **t.execution}}
            if t.previous_state:
                out["previousState"] = t.previous_state
            if t.node_info:
                out["nodeInfo"] = dict(t.node_info)
        return out

    def _task_file(self, job_id: str, task_id: str, file_path: str) -> tuple[int, Any, dict[str, str]]:
        t = self._get_task(job_id, task_id)
        if t.primary_dir is None:
            raise _Error(409 if t.state == "active" else 404, "TaskFilesUnavailable" if t.state == "active"
                         else "FileNotFound", "The files of the specified task are unavailable."
                         if t.state == "active" else "The specified file does not exist.")
        p = t.primary_dir / _safe_rel(file_path)
        if not p.is_file():
            raise _Error(404, "FileNotFound", "The specified file does not exist.")
        return 200, p, {}

    def _set_state(self, t: _Task, state: str) -> None:
        with self._lock:
            if t.state != state:
                t.previous_state, t.state, t.state_time, t.etag = t.state, state, _now(), _etag()

    # ------------------------------------------------------------------ scheduling and execution
    def _schedulable(self, t: _Task) -> bool:
        """docs/batch-semantics.md#pool-rules: otherwise the task stays active forever, with no error."""
        job = self._job(t.job_id)
        pool = self.pools.get(job["poolInfo"]["poolId"].lower())
        if pool is None or pool.get("state") != "active":
            return False
        multi = "multiInstanceSettings" in t.body
        if multi and (not pool.get("enableInterNodeCommunication") or int(pool.get("taskSlotsPerNode", 1)) != 1):
            return False
        return t.instances <= int(pool.get("currentDedicatedNodes", 0)) + int(pool.get("currentLowPriorityNodes", 0))

    def _schedule(self, t: _Task) -> None:
        if not self._schedulable(t):
            return
        t.thread = threading.Thread(target=self._run_task, args=(t,), name=f"standin-{t.id}", daemon=True)
        t.thread.start()

    def _end_task(self, t: _Task) -> None:
        with self._lock:
            t.terminate = True
            executor = t.run.executor if t.run else None
        transport = getattr(executor, "transport", None)
        if transport is not None:
            try:
                transport.end_processes()
            except Exception as e:  # noqa: BLE001 - a stand-in diagnostic, not a test result
                self.errors.append(f"ending task {t.id}: {e}")

    def _plan(self, t: _Task) -> Any:
        from mpibatch.plan import TaskPlan
        from mpibatch.spec import FileRef

        job = self._job(t.job_id)
        body = t.body
        mis = body.get("multiInstanceSettings") or {}
        c = body.get("constraints") or {}

        def refs(items: Any) -> tuple[FileRef, ...]:
            out = []
            for rf in items or []:
                if "httpUrl" not in rf:
                    raise _Error(400, "UnsupportedProperty", "this stand-in takes httpUrl resource files only")
                out.append(FileRef(source=rf["httpUrl"], path=rf.get("filePath") or
                                   Path(urllib.parse.urlsplit(rf["httpUrl"]).path).name))
            return tuple(out)

        prep = job.get("jobPreparationTask") or {}
        rel = job.get("jobReleaseTask") or {}
        return TaskPlan(
            job_id=job["id"], task_id=t.id, instances=t.instances, command_line=body["commandLine"],
            coordination_command_line=mis.get("coordinationCommandLine") or "/bin/true",
            common_files=refs(mis.get("commonResourceFiles")), files=refs(body.get("resourceFiles")),
            environment={e["name"]: e.get("value", "") for e in body.get("environmentSettings") or []},
            outputs=(), max_wall_clock=parse_duration(c.get("maxWallClockTime")),
            max_retries=int(c.get("maxTaskRetryCount") or 0), pool_id=job["poolInfo"]["poolId"],
            preparation_command_line=prep.get("commandLine"), preparation_files=refs(prep.get("resourceFiles")),
            release_command_line=rel.get("commandLine"))

    def _run_task(self, t: _Task) -> None:
        from mpibatch.executors.local import LocalExecutor

        job = self._job(t.job_id)
        pool_id = job["poolInfo"]["poolId"]
        self._set_state(t, "running")
        with self._lock:
            t.execution = {"startTime": _now(), "retryCount": 0, "requeueCount": 0}
        run = _Run()
        work = Path(self.work_dir or "/tmp") / f"standin-{secrets.token_hex(4)}"

        def progress(phase: str, detail: str = "") -> None:
            if phase == "coordination":
                with self._lock:  # subtasks are reported once the nodes have their files
                    if not t.subtasks:
                        t.subtasks = [{"id": t.instances - i, "state": "running", "startTime": _now()}
                                      for i in range(1, t.instances)]

        executor = LocalExecutor(base_env=self.base_env, runs_dir=work / "runs", keep_nodes=True, progress=progress)
        run.executor = executor
        with self._lock:
            t.run = run
            self._runs.append(run)
            terminated = t.terminate
        failure_info = None
        result = None
        try:
            if terminated:
                raise _Error(409, "TaskEnded", "Task was ended by user request.")
            result = executor.run_plan(self._plan(t))
        except _Error as e:
            failure_info = {"category": "UserError", "code": e.code, "message": e.message}
        except Exception as e:  # noqa: BLE001 - reported as the task's failure, like a node error
            self.errors.append(f"task {t.id}: {e.__class__.__name__}: {e}")
            failure_info = {"category": "ServerError", "code": "Unknown", "message": f"stand-in: {e}"}
        subtasks: list[dict[str, Any]] = []
        node_info = None
        exit_code = None
        if result is not None:
            exit_code = result.exit_code
            for r in result.instances:
                task_dir = Path(r.task_dir) if getattr(r, "task_dir", None) else None
                if task_dir is None:
                    continue
                root = task_dir.parents[3]  # <node root>/workitems/<job>/job-1/<task>
                run.node_roots[r.node_id] = root
                rel = task_dir.relative_to(root).as_posix()
                info = {"affinityId": f"TVM:{r.node_id}", "nodeUrl": f"{self.endpoint}/pools/{pool_id}/nodes/{r.node_id}",
                        "poolId": pool_id, "nodeId": r.node_id, "taskRootDirectory": rel,
                        "taskRootDirectoryUrl": f"{self.endpoint}/pools/{pool_id}/nodes/{r.node_id}/files/{rel}"}
                if r.index == 0:
                    node_info = info
                    with self._lock:
                        t.primary_dir = task_dir
                else:
                    code = r.coordination_exit_code
                    sub = {"id": t.instances - r.index, "nodeInfo": info, "state": "completed",
                           "startTime": t.execution.get("startTime"), "endTime": _now(),
                           "result": "success" if code == 0 else "failure"}
                    if code is not None:
                        sub["exitCode"] = code
                    subtasks.append(sub)
            fail = result.failure
            with self._lock:
                terminated = t.terminate
            if terminated:
                failure_info = {"category": "UserError", "code": "TaskEnded",
                                "message": "Task was ended by user request."}
            elif fail is not None and fail.phase == "files":
                code = "BlobAccessDenied" if "HTTP 403" in fail.reason else "BlobNotFound"
                failure_info = {"category": "UserError", "code": code, "message": fail.reason}
            elif fail is not None and exit_code is None and fail.phase != "running":
                failure_info = {"category": "UserError", "code": "TaskEnded" if fail.phase == "timeout" else
                                "CommandLaunchFailed" if fail.phase == "coordination" else "Unknown",
                                "message": fail.reason}
            if t.primary_dir is not None:
                upload_error = self._output_files(t, t.primary_dir, exit_code == 0 and failure_info is None)
                if upload_error and failure_info is None:
                    failure_info = {"category": "UserError", "code": "FileUploadFailed", "message": upload_error}
        execution = {**t.execution, "endTime": _now(), "retryCount": max(0, (result.attempts if result else 1) - 1),
                     "result": "success" if exit_code == 0 and failure_info is None else "failure"}
        if exit_code is not None:
            execution["exitCode"] = exit_code
        if failure_info is not None:
            execution["failureInfo"] = failure_info
        with self._lock:
            t.execution = execution
            t.node_info = node_info
            t.subtasks = sorted(subtasks, key=lambda s: s["id"])
        self._set_state(t, "completed")

    def _output_files(self, t: _Task, task_dir: Path, succeeded: bool) -> str | None:
        """Batch output files of the primary: match in the working directory, PUT through the SAS."""
        wd = task_dir / "wd"
        errors = []
        for of in t.body.get("outputFiles") or []:
            cond = ((of.get("uploadOptions") or {}).get("uploadCondition") or "tasksuccess").lower()
            if (cond == "tasksuccess" and not succeeded) or (cond == "taskfailure" and succeeded):
                continue
            pattern = of["filePattern"].replace("\\", "/")
            dest = (of.get("destination") or {}).get("container") or {}
            url, path = dest.get("containerUrl"), dest.get("path")
            if not url:
                continue
            wildcard = any(c in pattern for c in "*?[")
            matches = sorted(p for p in glob.glob(pattern, root_dir=wd, recursive=True)
                             if (wd / p).is_file())
            for rel in matches:
                clean = re.sub(r"^(\.\./|\./)+", "", rel)
                if wildcard:
                    name = f"{path.rstrip('/')}/{clean}" if path else clean
                else:
                    name = path or Path(clean).name
                err = _put_blob(url, name, wd / rel)
                if err:
                    errors.append(err)
        return "; ".join(errors) or None


# ---------------------------------------------------------------------------------------------- HTTP

def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body or b"{}")
    except ValueError:
        raise _Error(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.") from None
    if not isinstance(data, dict):
        raise _Error(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.")
    return data


def _etag() -> str:
    return f"0x{secrets.token_hex(8).upper()}"


def _safe_rel(file_path: str) -> str:
    rel = file_path.replace("\\", "/").lstrip("/")
    if not rel or any(p in ("..",) for p in rel.split("/")):
        raise _Error(400, "InvalidInput", "One of the request inputs is not valid.", {"FilePath": file_path})
    return rel


def _put_blob(container_url: str, blob: str, path: Path) -> str | None:
    base, _, sas = container_url.partition("?")
    url = f"{base.rstrip('/')}/{urllib.parse.quote(blob)}?{sas}"
    data = path.read_bytes()
    req = urllib.request.Request(url, data=data, method="PUT", headers={
        "x-ms-blob-type": "BlockBlob", "x-ms-version": "2021-08-06",
        "Content-MD5": base64.b64encode(hashlib.md5(data).digest()).decode()})
    try:
        with urllib.request.urlopen(req, timeout=60):
            return None
    except urllib.error.HTTPError as e:
        return f"upload of {blob} failed: HTTP {e.code}"
    except OSError as e:
        return f"upload of {blob} failed: {getattr(e, 'reason', e)}"


class _Handler(BaseHTTPRequestHandler):
    standin: BatchStandIn
    protocol_version = "HTTP/1.1"
    server_version = "BatchStandIn/1.0 (a local stand-in, not the Azure Batch service)"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read their own records
        pass

    def _serve(self) -> None:
        s = self.standin
        raw_path, _, query = self.path.partition("?")
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        record = RequestRecord(self.command, raw_path, 0, len(body))
        rid = secrets.token_hex(16)
        headers = {"request-id": rid}
        if self.headers.get("client-request-id"):
            headers["client-request-id"] = self.headers["client-request-id"]
        try:
            params = urllib.parse.parse_qs(query)
            version = (params.get("api-version") or [""])[0]
            if not version:
                raise _Error(400, "MissingRequiredQueryParameter", "A query parameter that's mandatory for this "
                             "request is not specified.", {"QueryParameterName": "api-version"})
            if version not in s.api_versions:
                raise _Error(400, "UnsupportedRequestVersion", "The specified request version is not supported.",
                             {"QueryParameterName": "api-version", "QueryParameterValue": version})
            s.check_auth(self.command, raw_path, query, self.headers)
            after = s._throttled(self.command, raw_path)
            if after is not None:
                record.throttled = True
                raise _Error(429, "TooManyRequests", "The server is busy: too many requests (the test asked the "
                             "stand-in to throttle).", headers={"Retry-After": f"{after:g}"})
            if raw_path.endswith("/addtaskcollection") and body:
                try:
                    record.tasks = len(json.loads(body).get("value") or [])
                except (ValueError, AttributeError):
                    pass
            status, payload, extra = s.handle(self.command, raw_path, params, body)
            headers.update(extra)
        except _Error as e:
            status = e.status
            headers.update(e.headers)
            payload = {"odata.metadata": f"{s.endpoint}/$metadata#Microsoft.Azure.Batch.Protocol.Entities.Container."
                                         "errors/@Element",
                       "code": e.code,
                       "message": {"lang": "en-US", "value": f"{e.message}\nRequestId:{rid}\nTime:{_now()}"}}
            if e.values:
                payload["values"] = [{"key": k, "value": v} for k, v in e.values.items()]
        except Exception as e:  # noqa: BLE001 - a stand-in bug: answer like the service would, keep a note
            s.errors.append(f"{self.command} {raw_path}: {e.__class__.__name__}: {e}")
            status = 500
            payload = {"code": "InternalError", "message": {"lang": "en-US", "value": "The server encountered an "
                                                            f"internal error.\nRequestId:{rid}\nTime:{_now()}"}}
        record.status = status
        with s._lock:  # recorded before the client can see the answer
            s.requests.append(record)
        self._reply(status, payload, headers)

    def _reply(self, status: int, payload: Any, headers: dict[str, str]) -> None:
        if isinstance(payload, Path):
            data = payload.read_bytes()
            ctype = "application/octet-stream"
            headers.update({"ocp-batch-file-isdirectory": "false", "ocp-batch-file-mode": "0o100644",
                            "ocp-creation-time": _rfc1123(), "Last-Modified": _rfc1123()})
        elif payload is None:
            data, ctype = b"", None
        else:
            data = json.dumps(payload).encode()
            ctype = "application/json;odata=minimalmetadata"
        self.send_response(status)
        if ctype:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        if status in (200, 201, 202):
            headers.setdefault("ETag", _etag())
            headers.setdefault("Last-Modified", _rfc1123())
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve  # type: ignore[assignment]


def mpi_base_env(venv_bin: str | Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The emulated nodes' environment ("image"): `venv_bin` (an MPI venv's bin) first on PATH, and no
    Azure credentials of the test process."""
    base = dict(os.environ if env is None else env)
    for k in list(base):
        if k.startswith(("AZURE_", "MPIBATCH_")):
            del base[k]
    base["PATH"] = f"{venv_bin}{os.pathsep}{base.get('PATH', '')}"
    return base

