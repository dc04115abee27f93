"""The Batch endpoint the Azure executor's tests talk to: mpibatch's emulator (mpibatch.emulator), in
process, so that tests can define pools, read what the client sent, and inject throttling. The same
attributes the tests used before: `env()`, `key`, `account`, `add_pool()`, `pools`, `jobs`, `tasks`,
`task()`, `requests`, `throttle()`, `throttled`, `wait_idle()`, `errors`.

With `hold=True` the pool's nodes have scheduling disabled (a Batch node state), so tasks are stored and
stay active - the submission tests need neither root nor MPI then."""
from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpibatch.emulator import Emulator
from mpibatch.emulator.errors import BatchError
from mpibatch.emulator.tasks import collection_count


@dataclass
class RequestRecord:
    method: str
    path: str
    status: int
    body_bytes: int
    tasks: int = 0  # tasks in an addtaskcollection request
    throttled: bool = False


@dataclass
class TaskView:
    state: str
    execution: dict[str, Any]


class _Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(self.format(record))


class BatchEmulator:
    def __init__(self, work_dir: Path, *, image: dict[str, str] | None = None, hold: bool = False) -> None:
        self.hold = hold
        self.emu = Emulator(port=0, state_dir=work_dir / "emulator", storage=None, image=image,
                            on_event=lambda msg: None)
        self.requests: list[RequestRecord] = []
        self.created_bodies: dict[str, dict[str, Any]] = {}
        self._throttle: list[list[Any]] = []
        self._local = threading.local()  # per request thread: was this request throttled?
        self._lock = threading.Lock()
        self._errors = _Errors()
        self.emu.before_request = self._before
        self.emu.after_request = self._after

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> BatchEmulator:
        logging.getLogger("mpibatch.emulator").addHandler(self._errors)
        self.emu.start()
        return self

    def stop(self) -> None:
        try:
            self.emu.stop()
        finally:
            logging.getLogger("mpibatch.emulator").removeHandler(self._errors)

    # ------------------------------------------------------------------ what the tests read
    @property
    def account(self) -> str:
        return self.emu.account

    @property
    def key(self) -> str:
        return self.emu.key

    @property
    def endpoint(self) -> str:
        return self.emu.endpoint

    def env(self) -> dict[str, str]:
        return {k: v for k, v in self.emu.env().items() if k != "AZURE_STORAGE_CONNECTION_STRING"}

    @property
    def errors(self) -> list[str]:
        return list(self._errors.messages)

    @property
    def pools(self) -> dict[str, dict[str, Any]]:
        with self.emu.store.lock:
            return {k: {**p, "created_body": self.created_bodies.get(k)} for k, p in self.emu.store.pools.items()}

    @property
    def jobs(self) -> dict[str, dict[str, Any]]:
        with self.emu.store.lock:
            return dict(self.emu.store.jobs)

    @property
    def tasks(self) -> dict[tuple[str, str], dict[str, Any]]:
        with self.emu.store.lock:
            return {tuple(k.split("/", 1)): t for k, t in self.emu.store.tasks.items()}  # type: ignore[misc]

    def task(self, job_id: str, task_id: str) -> TaskView | None:
        t = self.emu.store.tasks.get(f"{job_id.lower()}/{task_id.lower()}")
        return None if t is None else _LiveTask(t)  # type: ignore[return-value]

    @property
    def throttled(self) -> int:
        return sum(1 for r in self.requests if r.throttled)

    # ------------------------------------------------------------------ test controls
    def add_pool(self, pool_id: str, *, nodes: int = 3, inter_node: bool = True, slots: int = 1,
                 vm_size: str = "standard_d4s_v3", **extra: Any) -> dict[str, Any]:
        from mpibatch.emulator import pools

        body = {"id": pool_id, "vmSize": vm_size, "targetDedicatedNodes": nodes,
                "enableInterNodeCommunication": inter_node, "taskSlotsPerNode": slots,
                "virtualMachineConfiguration": {
                    "imageReference": {"publisher": "microsoft-dsvm", "offer": "ubuntu-hpc", "sku": "2204",
                                       "version": "latest"}, "nodeAgentSKUId": "batch.node.ubuntu 22.04"},
                **extra}
        pool = pools.add(self.emu, body)
        if self.hold:
            self._hold(pool_id)
        return pool

    def _hold(self, pool_id: str) -> None:
        with self.emu.store.lock:
            for n in self.emu.store.pool_nodes(pool_id):
                n["schedulingState"] = "disabled"

    def throttle(self, count: int, *, method: str | None = None, path: str | None = None,
                 retry_after: float = 1) -> None:
        """Answer the next `count` requests (matching `method` and the `path` regex) with 429 TooManyRequests
        and a Retry-After header."""
        with self._lock:
            self._throttle.append([count, method, re.compile(path) if path else None, retry_after])

    def wait_idle(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.emu.store.lock:
                busy = any(t["state"] in ("running", "preparing") for t in self.emu.store.tasks.values())
            if not busy:
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ hooks
    def _before(self, method: str, path: str, body: bytes) -> None:
        with self._lock:
            for rule in self._throttle:
                count, m, p, after = rule
                if (m is None or m == method) and (p is None or p.search(path)):
                    rule[0] -= 1
                    if rule[0] <= 0:
                        self._throttle.remove(rule)
                    self._local.throttled = True
                    raise BatchError(429, "TooManyRequests", "The server is busy (the test asked the emulator to "
                                     "throttle).", headers={"Retry-After": f"{after:g}"})

    def _after(self, method: str, path: str, status: int, body: bytes) -> None:
        import json

        throttled = getattr(self._local, "throttled", False) and status == 429
        self._local.throttled = False
        record = RequestRecord(method, path, status, len(body), throttled=throttled)
        if path.endswith("/addtaskcollection"):
            record.tasks = collection_count(body)
        if method == "POST" and path.rstrip("/") == "/pools" and status == 201:
            sent = json.loads(body)
            self.created_bodies[sent["id"].lower()] = sent
            if self.hold:
                self._hold(sent["id"])
        self.requests.append(record)


class _LiveTask:
    """A task as the emulator holds it now (reads through to the live state)."""

    def __init__(self, t: dict[str, Any]) -> None:
        self._t = t

    @property
    def state(self) -> str:
        return str(self._t["state"])

    @property
    def execution(self) -> dict[str, Any]:
        return dict(self._t.get("executionInfo") or {})

    @property
    def body(self) -> dict[str, Any]:
        """The task as the client added it (with the properties the service fills in)."""
        return {k: v for k, v in self._t.items() if not k.startswith("_")}
