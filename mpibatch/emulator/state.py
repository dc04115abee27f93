"""The emulator's state: pools, nodes, jobs and tasks as the REST API shows them (camelCase dicts), plus
private bookkeeping under keys that start with "_" (never sent to clients). With a state directory the
whole store is written to `state.json` (atomically, at most a few times a second) and read back on start:
tasks that were running when the emulator stopped are then completed as failed, with the reason."""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import new_etag, now_iso

log = logging.getLogger(__name__)
SAVE_EVERY_S = 0.5
RESTART_FAILURE = {"category": "ServerError", "code": "EmulatorRestarted",
                   "message": "mpibatch emulate stopped while this task was running; its processes were ended. "
                              "Add the task again to run it."}


def key(*ids: str) -> str:
    """Ids are unique case-insensitively: the lower-case id (joined with '/') is the key."""
    return "/".join(i.lower() for i in ids)


def public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


def touch(d: dict[str, Any]) -> None:
    d["eTag"], d["lastModified"] = new_etag(), now_iso()


def set_state(d: dict[str, Any], state: str) -> bool:
    """Move an entity to `state` (with previousState and times); False if it was there already."""
    if d.get("state") == state:
        return False
    d["previousState"], d["state"] = d.get("state"), state
    d["previousStateTransitionTime"] = d.get("stateTransitionTime")
    d["stateTransitionTime"] = now_iso()
    touch(d)
    return True


class Store:
    def __init__(self, state_dir: Path | None) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.pools: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}  # key(pool, node) -> node
        self.jobs: dict[str, dict[str, Any]] = {}
        self.tasks: dict[str, dict[str, Any]] = {}  # key(job, task) -> task, in the order they were added
        self.meta: dict[str, Any] = {}
        self.state_dir = state_dir
        self._dirty = False
        self._saver: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ queries
    def pool_nodes(self, pool_id: str) -> list[dict[str, Any]]:
        prefix = key(pool_id) + "/"
        return [n for k, n in self.nodes.items() if k.startswith(prefix)]

    def job_tasks(self, job_id: str) -> Iterator[dict[str, Any]]:
        prefix = key(job_id) + "/"
        return (t for k, t in self.tasks.items() if k.startswith(prefix))

    def mark(self) -> None:
        """Something changed: persist soon and wake the scheduler."""
        with self.lock:
            self._dirty = True
            self.changed.notify_all()

    # ------------------------------------------------------------------ persistence
    @property
    def path(self) -> Path | None:
        return self.state_dir / "state.json" if self.state_dir else None

    def load(self) -> list[str]:
        """Read the saved state; returns the ids of tasks that were running (now failed)."""
        if self.path is None or not self.path.exists():
            return []
        data = json.loads(self.path.read_text())
        self.pools, self.nodes = data.get("pools", {}), data.get("nodes", {})
        self.jobs, self.tasks, self.meta = data.get("jobs", {}), data.get("tasks", {}), data.get("meta", {})
        failed = []
        for t in self.tasks.values():
            if t.get("state") in ("running", "preparing"):
                set_state(t, "completed")
                info = t.setdefault("executionInfo", {})
                info.update({"endTime": now_iso(), "result": "failure", "failureInfo": dict(RESTART_FAILURE)})
                for sub in t.get("_subtasks", []):
                    if sub.get("state") != "completed":
                        sub.update({"state": "completed", "endTime": now_iso(), "result": "failure",
                                    "failureInfo": dict(RESTART_FAILURE)})
                failed.append(f"{t['_job']}/{t['id']}")
        for n in self.nodes.values():  # the emulator's restart is every node's reboot
            n.update({"_running": [], "runningTasksCount": 0, "runningTaskSlotsCount": 0})
            if n.get("state") in ("running", "starting", "rebooting", "creating"):
                set_state(n, "idle" if n.get("state") == "running" else "unknown")
        for j in self.jobs.values():
            if j.get("state") in ("terminating", "deleting"):
                set_state(j, "completed")
        self._dirty = True
        return failed

    def save(self) -> None:
        if self.path is None:
            return
        with self.lock:
            data = json.dumps({"pools": self.pools, "nodes": self.nodes, "jobs": self.jobs, "tasks": self.tasks,
                               "meta": self.meta})
            self._dirty = False
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(data)
        os.replace(tmp, self.path)  # never half-written under its final name

    def start_saving(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)

        def loop() -> None:
            while not self._stop.wait(SAVE_EVERY_S):
                if self._dirty:
                    try:
                        self.save()
                    except OSError as e:
                        log.error("cannot save the state to %s: %s", self.path, e)
                        time.sleep(SAVE_EVERY_S)

        self._saver = threading.Thread(target=loop, name="emulator-state", daemon=True)
        self._saver.start()

    def stop_saving(self) -> None:
        if self._saver is None:  # never started (the emulator did not get that far): nothing to keep
            return
        self._stop.set()
        self._saver.join(5)
        self.save()
