"""Job schedules ("Schedule jobs for efficiency" and "Job Schedule" in the Batch REST reference): add / get /
list / exists / update (PUT) / patch / delete / terminate / disable / enable, and the clock that creates their
jobs. A schedule's jobs are named `<scheduleId>:job-<n>` (n from 1) from its `jobSpecification`; at most one of
them is active at a time. `schedule`: no job before `doNotRunUntil` (default: at once) nor after `doNotRunAfter`;
`recurrenceInterval` between the start times of successive jobs (none: one job); an occurrence that cannot
start within `startWindow` of its time (the previous job still runs) is skipped. Without a recurrence the
schedule completes once its job completes, and so it does past `doNotRunAfter`.

The emulator takes intervals from 1 second (the service's minimum is 1 minute) so that tests run quickly."""
from __future__ import annotations

import logging
import math
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..durations import iso_seconds
from . import autopools, jobs, schema
from .errors import BatchError, exists
from .state import key, public, set_state, touch

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)
TICK_S = 0.25  # the clock looks at every schedule this often
TIMES = ("doNotRunUntil", "doNotRunAfter")
DURATIONS = ("startWindow", "recurrenceInterval")


def _not_found() -> BatchError:
    return BatchError(404, "JobScheduleNotFound", "The specified job schedule does not exist.")


def _epoch(text: str | None, prop: str) -> float | None:
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise schema.invalid_value(f"schedule.{prop}", "an ISO 8601 date and time, e.g. 2026-01-31T12:00:00Z") \
            from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def check_schedule(emu: Emulator, sched: dict[str, Any]) -> dict[str, Any]:
    """The `schedule` object's values (types are checked by schema.py)."""
    for prop in TIMES:
        _epoch(sched.get(prop), prop)
    for prop in DURATIONS:
        text = sched.get(prop)
        if not text:
            continue
        seconds = iso_seconds(text)
        if seconds is None or seconds < 1:
            raise schema.invalid_value(f"schedule.{prop}", "an ISO 8601 duration of at least 1 second, e.g. PT1M")
    return sched


def _job_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A jobSpecification passes every rule of a job (what is refused for a job is refused here too)."""
    return jobs.check_spec(schema.check_rules(spec, "job"), in_schedule=True)  # read with the schedule's model


def _first_due(sched: dict[str, Any]) -> float:
    return _epoch(sched.get("doNotRunUntil"), "doNotRunUntil") or time.time()


def add(emu: Emulator, body: Any) -> dict[str, Any]:
    body = schema.validate(body, "jobschedule.add", "job schedule", required=("id", "schedule", "jobSpecification"))
    schema.check_id(body["id"], "id")
    sched = check_schedule(emu, body["schedule"])
    spec = _job_spec(body["jobSpecification"])
    auto = (spec.get("poolInfo") or {}).get("autoPoolSpecification")
    with emu.store.lock:
        if key(body["id"]) in emu.store.schedules:
            raise exists("JobSchedule")
        pool_id = None
        if auto is not None and auto["poolLifetimeOption"] == "jobSchedule":  # one pool for all its jobs
            pool_id = autopools.create(emu, auto, f"jobschedule:{body['id']}")
        t = time.time()
        s = {**body, "jobSpecification": spec, "url": f"{emu.endpoint}/jobschedules/{body['id']}",
             "creationTime": _iso(t), "state": "active", "stateTransitionTime": _iso(t), "executionInfo": {},
             "_jobs": 0, "_due": _first_due(sched), "_autoPool": pool_id}
        _show_next(s)
        touch(s)
        emu.store.schedules[key(body["id"])] = s
        emu.event(f"job schedule {body['id']}: added")
        tick(emu, s, time.time())  # a first job due now exists when the add is answered, as on the service
    emu.store.mark(("schedules", s))
    return s


def get(emu: Emulator, schedule_id: str) -> dict[str, Any]:
    s = emu.store.schedules.get(key(schedule_id))
    if s is None:
        raise _not_found()
    return s


def view(s: dict[str, Any]) -> dict[str, Any]:
    return public(s)


def listing(emu: Emulator) -> list[dict[str, Any]]:
    with emu.store.lock:
        return [view(s) for s in emu.store.schedules.values()]


def jobs_of(emu: Emulator, schedule_id: str) -> list[dict[str, Any]]:
    s = get(emu, schedule_id)
    with emu.store.lock:
        return [j for j in emu.store.jobs.values() if j.get("_schedule") == s["id"]]


def _changeable(s: dict[str, Any]) -> None:
    if s["state"] == "completed":
        raise BatchError(409, "JobScheduleCompleted", "The specified job schedule is already in a completed state.")
    if s["state"] == "deleting":
        raise BatchError(409, "JobScheduleBeingDeleted", "The specified job schedule has been marked for deletion "
                         "and is being deleted.")
    if s["state"] == "terminating":
        raise BatchError(409, "JobScheduleBeingTerminated", "The specified job schedule is being terminated.")


def update(emu: Emulator, schedule_id: str, body: Any, *, replace: bool) -> None:
    """PUT (`replace`: schedule and jobSpecification required, metadata cleared when absent) or PATCH (only
    what is given). The new values apply to the jobs created from now on."""
    role = "jobschedule.replace" if replace else "jobschedule.update"
    body = schema.validate(body, role, "job schedule", required=("schedule", "jobSpecification") if replace else ())
    changes: dict[str, Any] = {}
    if body.get("schedule") is not None:
        changes["schedule"] = check_schedule(emu, body["schedule"])
    if body.get("jobSpecification") is not None:
        changes["jobSpecification"] = _job_spec(body["jobSpecification"])
    if body.get("metadata") is not None or replace:
        changes["metadata"] = body.get("metadata") or []
    s = get(emu, schedule_id)
    with emu.store.lock:
        _changeable(s)
        s.update(changes)
        if "schedule" in changes:
            s["_due"] = _first_due(s["schedule"]) if not s["_jobs"] else _next_due(s, time.time())
            _show_next(s)
        touch(s)
    emu.store.mark(("schedules", s))


def set_enabled(emu: Emulator, schedule_id: str, enabled: bool) -> None:
    s = get(emu, schedule_id)
    with emu.store.lock:
        _changeable(s)
        set_state(s, "active" if enabled else "disabled")
    emu.store.mark(("schedules", s))
    emu.event(f"job schedule {s['id']}: {s['state']}")


def terminate(emu: Emulator, schedule_id: str) -> None:
    """No more jobs; its active job is terminated; the clock completes the schedule once that job has."""
    s = get(emu, schedule_id)
    with emu.store.lock:
        _changeable(s)
        set_state(s, "terminating")
        active = _active_job(emu, s)
    emu.store.mark(("schedules", s))
    emu.event(f"job schedule {s['id']}: terminating")
    if active is not None:
        try:
            jobs.terminate(emu, active["id"], None, reason="UserTerminate")
        except BatchError:  # completing already
            pass


def delete(emu: Emulator, schedule_id: str) -> None:
    """The schedule and every job it created (their tasks with them); the clock removes it once they are gone."""
    s = get(emu, schedule_id)
    with emu.store.lock:
        if s["state"] == "deleting":
            return
        set_state(s, "deleting")
    emu.store.mark(("schedules", s))
    emu.event(f"job schedule {s['id']}: deleting")
    for j in jobs_of(emu, s["id"]):
        jobs.delete(emu, j["id"])


# ---------------------------------------------------------------------------------------------- the clock
def _active_job(emu: Emulator, s: dict[str, Any]) -> dict[str, Any] | None:
    recent = (s.get("executionInfo") or {}).get("recentJob")
    job = emu.store.jobs.get(key(recent["id"])) if recent else None
    return job if job is not None and job["state"] != "completed" else None


def _next_due(s: dict[str, Any], now: float) -> float | None:
    """The next occurrence after the last job (`_last`), skipping those already past; None: no recurrence."""
    interval = s.get("_interval")
    if not interval:
        return None
    last = s.get("_last", now)
    return last + interval * max(1, math.ceil((now - last) / interval))


def _show_next(s: dict[str, Any]) -> None:
    info = s.setdefault("executionInfo", {})
    info.pop("nextRunTime", None)
    if s.get("_due") is not None and s["state"] in ("active", "disabled"):
        info["nextRunTime"] = _iso(s["_due"])


def _complete(emu: Emulator, s: dict[str, Any]) -> None:
    set_state(s, "completed")
    s["_due"] = None
    _show_next(s)
    s["executionInfo"]["endTime"] = _iso(time.time())
    emu.store.mark(("schedules", s))
    emu.event(f"job schedule {s['id']}: completed")
    autopools.owner_ended(emu, s.get("_autoPool"), f"jobschedule:{s['id']}")


def _create_job(emu: Emulator, s: dict[str, Any], now: float) -> None:
    n = s["_jobs"] + 1
    job_id = f"{s['id']}:job-{n}"
    s["_jobs"], s["_last"] = n, s["_due"]
    s["_interval"] = emu.seconds(s["schedule"].get("recurrenceInterval"))
    s["_due"] = _next_due(s, now)
    try:
        job = jobs.create(emu, {**s["jobSpecification"], "id": job_id}, pool_id=s.get("_autoPool"))
    except BatchError as e:  # e.g. the pool it names is gone: the service skips the occurrence too
        emu.event(f"job schedule {s['id']}: job {job_id} not created ({e.code}: {e.message})")
    else:
        job["_schedule"] = s["id"]
        s["executionInfo"]["recentJob"] = {"id": job_id, "url": job["url"]}
        emu.store.mark(("jobs", job))
    _show_next(s)
    touch(s)
    emu.store.mark(("schedules", s))


def tick(emu: Emulator, s: dict[str, Any], now: float) -> None:
    """One look at a schedule (the caller holds the store's lock): create its due job, or end it."""
    state = s["state"]
    if state == "completed":
        return
    active = _active_job(emu, s)
    if state == "deleting":
        if not any(j.get("_schedule") == s["id"] for j in emu.store.jobs.values()):
            del emu.store.schedules[key(s["id"])]
            emu.store.gone("schedules", key(s["id"]))
            emu.event(f"job schedule {s['id']}: deleted")
            autopools.owner_ended(emu, s.get("_autoPool"), f"jobschedule:{s['id']}")
        return
    after = _epoch(s["schedule"].get("doNotRunAfter"), "doNotRunAfter")
    due = s.get("_due")
    if state == "terminating" or due is None or (after is not None and now > after):
        if active is None:
            _complete(emu, s)
        return
    if now < due:
        return
    window = emu.seconds(s["schedule"].get("startWindow"))
    if window is not None and now > due + window:  # this occurrence could not start in time: skipped
        s["_last"], s["_interval"] = due, emu.seconds(s["schedule"].get("recurrenceInterval"))
        s["_due"] = _next_due(s, now)
        _show_next(s)
        emu.store.mark(("schedules", s))
        return
    if state == "active" and active is None:
        _create_job(emu, s, now)


class Clock:
    """The emulator's thread that ticks every schedule; it ends with the emulator."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="emulator-schedules", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _loop(self) -> None:
        while not self._stop.wait(TICK_S):
            with self.emu.store.lock:
                for s in list(self.emu.store.schedules.values()):
                    try:
                        tick(self.emu, s, time.time())
                    except Exception:  # noqa: BLE001 - an emulator bug must not stop every schedule
                        log.exception("job schedule %s", s.get("id"))
