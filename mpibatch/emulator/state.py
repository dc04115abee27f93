"""The emulator's state: pools, nodes, jobs and tasks as the REST API shows them (camelCase dicts), plus
private bookkeeping under keys that start with "_" (never sent to clients). With a state directory every
change a request makes is in the journal (fsynced) before the request is answered, and the whole store is
folded into `state.json` now and then (journal.py); both are read back on start: tasks that were running
when the emulator stopped are then completed as failed, with the reason."""
from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import new_etag, now_iso
from .journal import KINDS, Journal, entity_key, read_journal, read_snapshot, remove_stale_temporaries, write_snapshot

log = logging.getLogger(__name__)
SAVE_EVERY_S = 0.5  # background changes reach the journal at least this often
COMPACT_EVERY_S = 10.0  # the journal is folded into the snapshot at most this often...
COMPACT_BYTES = 4 * 1024 * 1024  # ...or once it is this big
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
        self.schedules: dict[str, dict[str, Any]] = {}  # job schedules (schedules.py)
        self.meta: dict[str, Any] = {}
        self.state_dir = state_dir
        self._dirty = False
        self._pending: dict[tuple[str, str], None] = {}  # (kind, key) changed since the last flush
        self._seq = 0  # the last journal record's number
        self._io = threading.Lock()  # one writer of the journal and the snapshot at a time
        self._journal = Journal(state_dir / "journal.jsonl") if state_dir else None
        self._compacted = 0.0
        self._saver: threading.Thread | None = None
        self._stop = threading.Event()

    # ------------------------------------------------------------------ queries
    def pool_nodes(self, pool_id: str) -> list[dict[str, Any]]:
        prefix = key(pool_id) + "/"
        return [n for k, n in self.nodes.items() if k.startswith(prefix)]

    def job_tasks(self, job_id: str) -> Iterator[dict[str, Any]]:
        prefix = key(job_id) + "/"
        return (t for k, t in self.tasks.items() if k.startswith(prefix))

    def mark(self, *changes: tuple[str, dict[str, Any]]) -> None:
        """Something changed: wake the scheduler; `changes` ((kind, entity) pairs) go to the journal at
        the next flush (every other change with the next snapshot)."""
        with self.lock:
            self._dirty = True
            for kind, d in changes:
                self._pending[(kind, entity_key(kind, d))] = None
            self.changed.notify_all()

    def gone(self, kind: str, k: str) -> None:
        """An entity was removed: the journal says so at the next flush."""
        with self.lock:
            self._dirty = True
            self._pending[(kind, k)] = None
            self.changed.notify_all()

    # ------------------------------------------------------------------ persistence
    @property
    def path(self) -> Path | None:
        return self.state_dir / "state.json" if self.state_dir else None

    def load(self) -> list[str]:
        """Read the saved state; returns the ids of tasks that were running (now failed)."""
        if self.path is None or self._journal is None:
            return []
        remove_stale_temporaries(self.path.parent)
        snap = read_snapshot(self.path)
        self.meta, self._seq = snap["meta"], snap["seq"]
        self.pools, self.nodes, self.jobs, self.tasks, self.schedules = (snap[k] for k in KINDS)
        for rec in read_journal(self._journal.path):
            if rec["seq"] <= snap["seq"]:
                continue  # already in the snapshot (a crash came between writing it and emptying the journal)
            section = getattr(self, rec["kind"])
            if rec["value"] is None:
                section.pop(rec["key"], None)
            else:
                section[rec["key"]] = rec["value"]
            self._seq = max(self._seq, rec["seq"])
        return self._after_restart()

    def _after_restart(self) -> list[str]:
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

    def flush(self) -> None:
        """Write the pending changes to the journal and fsync it (a no-op when nothing is pending)."""
        if self._journal is None:
            return
        with self._io:
            with self.lock:
                if not self._pending or self._journal.fd < 0:
                    return
                lines = []
                for kind, k in self._pending:
                    self._seq += 1
                    value = getattr(self, kind).get(k)
                    lines.append(json.dumps({"seq": self._seq, "kind": kind, "key": k, "value": value}) + "\n")
                self._pending = {}
            self._journal.append("".join(lines).encode())

    def save(self) -> None:
        """Fold everything into a new snapshot (the durable writer), then empty the journal."""
        if self.path is None or self._journal is None:
            return
        with self._io:
            with self.lock:
                data = json.dumps({"seq": self._seq, "pools": self.pools, "nodes": self.nodes, "jobs": self.jobs,
                                   "tasks": self.tasks, "schedules": self.schedules, "meta": self.meta})
                self._pending, self._dirty = {}, False
            write_snapshot(self.path, data.encode())
            self._journal.open_empty()
            self._compacted = time.monotonic()

    def _due(self) -> bool:
        j = self._journal
        return self._dirty and j is not None and (j.size > COMPACT_BYTES or
                                                  time.monotonic() - self._compacted > COMPACT_EVERY_S)

    def start_saving(self) -> None:
        """Fold what was loaded into a snapshot now (the journal starts empty), then keep saving."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

        def loop() -> None:
            while not self._stop.wait(SAVE_EVERY_S):
                try:
                    self.flush()
                    if self._due():
                        self.save()
                except OSError as e:
                    log.error("cannot save the state to %s: %s", self.state_dir, e)
                    time.sleep(SAVE_EVERY_S)

        self._saver = threading.Thread(target=loop, name="emulator-state", daemon=True)
        self._saver.start()

    def stop_saving(self) -> None:
        if self._saver is None:  # never started (the emulator did not get that far): nothing to keep
            return
        self._stop.set()
        self._saver.join(5)
        self.save()
        if self._journal is not None:
            self._journal.close()
