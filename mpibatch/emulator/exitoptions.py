"""Task `exitConditions` and a job's `onTaskFailure: performExitOptionsJobAction`, by the REST reference's
ExitConditions / ExitOptions: the options of the task's exit code (`exitCodes`, then `exitCodeRanges`), of
a resource-file download that failed (`preProcessingError`) or of an output-file upload that failed
(`fileUploadError`), else `default` when the task failed. Unset actions default to jobAction `none` and
dependencyAction `satisfy` for exit code 0, `terminate` and `block` for everything else. The job action
is taken only when the job's onTaskFailure is performExitOptionsJobAction; a task ended by request takes
none. `check` and `choose` are pure."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

from . import schema

if TYPE_CHECKING:
    from .core import Emulator

PERFORM = "performexitoptionsjobaction"
JOB_ACTIONS = ("none", "disable", "terminate")
DEPENDENCY_ACTIONS = ("satisfy", "block")
TERMINATE_REASON = "TaskFailed"  # the service's terminateReason for a job ended by a task's exit options


def _options(conditions: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = [(f"exitCodes[{i}].exitOptions", m.get("exitOptions") or {})
             for i, m in enumerate(conditions.get("exitCodes") or [])]
    found += [(f"exitCodeRanges[{i}].exitOptions", r.get("exitOptions") or {})
              for i, r in enumerate(conditions.get("exitCodeRanges") or [])]
    found += [(name, conditions[name]) for name in ("preProcessingError", "fileUploadError", "default")
              if conditions.get(name)]
    return found


def check(conditions: Any, on_task_failure: str) -> None:
    """A task's exitConditions against its job: actions spelled as the API spells them, ranges in order, and
    no jobAction unless the job performs exit options (the service refuses it then, as here)."""
    if not conditions:
        return
    for i, r in enumerate(conditions.get("exitCodeRanges") or []):
        if r.get("start") is None or r.get("end") is None or r["start"] > r["end"]:
            raise schema.invalid_value(f"exitConditions.exitCodeRanges[{i}]", "start and end, start <= end")
    for where, opts in _options(conditions):
        prop = f"exitConditions.{where}"
        if opts.get("jobAction") is not None:
            schema.enum(opts["jobAction"], f"{prop}.jobAction", JOB_ACTIONS)
            if on_task_failure != PERFORM:
                raise schema.invalid_value(f"{prop}.jobAction", "a jobAction needs a job whose onTaskFailure is "
                                           "performExitOptionsJobAction")
        if opts.get("dependencyAction") is not None:
            schema.enum(opts["dependencyAction"], f"{prop}.dependencyAction", DEPENDENCY_ACTIONS)


def choose(conditions: Any, exit_code: int | None, failure_code: str | None) -> tuple[str, str]:
    """(jobAction, dependencyAction) for a task that completed with `exit_code` (None: its command never ran
    or reported none) and `failure_code` (failureInfo.code, None on success)."""
    c = conditions or {}
    chosen: dict[str, Any] | None = None
    if failure_code == "FileUploadFailed":
        chosen = c.get("fileUploadError")
    elif exit_code is None and failure_code not in (None, "TaskEnded"):
        chosen = c.get("preProcessingError")  # its resource files failed: the command never started
    elif exit_code is not None:
        chosen = next((m.get("exitOptions") for m in c.get("exitCodes") or [] if m.get("code") == exit_code), None)
        if chosen is None:
            chosen = next((r.get("exitOptions") for r in c.get("exitCodeRanges") or []
                           if r["start"] <= exit_code <= r["end"]), None)
    success = exit_code == 0 and failure_code is None
    if chosen is None and not success:
        chosen = c.get("default")
    chosen = chosen or {}
    return ((chosen.get("jobAction") or ("none" if success else "terminate")).lower(),
            (chosen.get("dependencyAction") or ("satisfy" if success else "block")).lower())


def take_job_action(emu: Emulator, job: dict[str, Any], t: dict[str, Any]) -> None:
    """After `t` completed: its job action, when its job asks for exit options and it was not ended by a
    request (the scheduler notes its dependency action as it completes it)."""
    info = t["executionInfo"]
    job_action, _ = choose(t.get("exitConditions"), info.get("exitCode"), (info.get("failureInfo") or {}).get("code"))
    if job.get("onTaskFailure") != PERFORM or job_action == "none" or job["state"] != "active":
        return
    from . import jobops, jobs

    def act() -> None:
        try:
            if job_action == "terminate":
                jobs.terminate(emu, job["id"], None, reason=TERMINATE_REASON)
            else:
                jobops.disable(emu, job["id"], {"disableTasks": "requeue"})
        except schema.BatchError as e:  # the job changed meanwhile (terminated, deleted): nothing to do
            emu.event(f"job {job['id']}: exit options of task {t['id']}: {job_action} not taken ({e.code})")

    emu.event(f"job {job['id']}: task {t['id']} exit options: {job_action}")
    threading.Thread(target=act, name=f"exitoptions-{job['id']}", daemon=True).start()
