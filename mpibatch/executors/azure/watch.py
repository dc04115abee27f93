"""Watching a task: polling with progress, and a Batch task + its subtasks -> mpibatch's TaskResult.

Instances are numbered as everywhere in mpibatch (0 = the primary); a subtask is mapped to its instance
through the node ids that the nodes persisted (``instance.json``), else in subtask-id order. The reason
of a failure and the instance table use that same numbering. A subtask that fails before the
application ran is a coordination failure (docs/batch-semantics.md#lifecycle).
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from ... import conventions
from ...checkpoints import restore_message
from ...errors import InfraError
from ...launchers.protocol import TASK_LOG
from ...results import Failure, InstanceResult, TaskResult
from .client import Batch, state_of

Say = Callable[[str, str], None]
Restores = Callable[[Any], list[int | None]]  # a Batch task -> the generation each attempt restored
INSTANCE_INFO = conventions.INSTANCE_INFO
ACTIVE_WARNING_S = 600  # a task active this long most likely waits for nodes that never come
PRIMARY_COORDINATION_FAILED = "CommandLaunchFailed"  # the failure code of a coordination command that failed


def _dt(value: Any) -> datetime | None:
    return value if isinstance(value, datetime) else None


def _node(obj: Any) -> str | None:
    return getattr(obj.node_info, "node_id", None) if obj is not None and obj.node_info else None


def instance_count(task: Any) -> int:
    mis = task.multi_instance_settings
    return mis.number_of_instances if mis and mis.number_of_instances else 1


def map_subtasks(subtasks: Sequence[Any], node_ids: Mapping[int, str | None], n: int,
                 notes: list[str], task_id: str) -> dict[int, int]:
    """Subtask id -> instance index, through the node ids (instance -> node id) in the instance.json
    records the nodes persisted. Subtasks without one take the remaining indices in subtask-id order
    (noted when some records exist, since then one was expected)."""
    node_to_index = {node: i for i, node in node_ids.items() if node and i > 0}
    index_of: dict[int, int] = {}
    for st in subtasks:
        node = _node(st)
        if node and node in node_to_index and node_to_index[node] not in index_of.values():
            index_of[st.id] = node_to_index[node]
    free = [i for i in range(1, n) if i not in index_of.values()]
    for st in sorted(subtasks, key=lambda s: s.id):
        if st.id not in index_of and free:
            index_of[st.id] = free.pop(0)
            if node_ids:
                notes.append(f"subtask {st.id}: no {conventions.task_output_prefix(task_id, TASK_LOG)}/*/"
                             f"{INSTANCE_INFO} names its node; "
                             f"taken as instance {index_of[st.id]}")
    return index_of


def _failed_subtask(subtasks: Sequence[Any], index_of: Mapping[int, int]) -> tuple[int, Any] | None:
    """The failed subtask of the lowest instance, with that instance."""
    failed = [(index_of.get(st.id, st.id), st) for st in subtasks
              if st.exit_code not in (0, None) or state_of(getattr(st, "result", None)) == "failure"]
    return min(failed, key=lambda x: x[0]) if failed else None


def _batch_said(fi: Any, batch: Batch) -> str:
    """Batch's failure info as one line (redacted: Batch may quote a resource file's URL)."""
    if fi is None:
        return ""
    details = "; ".join(f"{d.name}={d.value}" for d in (fi.details or []) if getattr(d, "name", None))
    return batch.redact(f"{state_of(fi.category)} {fi.code or ''}: {fi.message or ''}".strip()
                        + (f" ({details})" if details else ""))


def _coordination_failure(sub: tuple[int, Any], said: str, *, ran: bool) -> Failure:
    i, st = sub
    node = _node(st)
    code = f"exited with code {st.exit_code}" if st.exit_code is not None else "failed"
    where = f"instance {i} (subtask {st.id}" + (f", node {node}" if node and not ran else "") + ")"
    return Failure("coordination", f"the coordination command {code} on {where}"
                   + (f"; Batch: {said}" if said and not ran else ""), i)


def _failure(task: Any, subtasks: Sequence[Any], index_of: Mapping[int, int], batch: Batch) -> Failure | None:
    """The phase a failed task failed in, from Batch's failure info, exit code and subtasks."""
    info = task.execution_info
    exit_code = info.exit_code if info else None
    fi = info.failure_info if info else None
    code, said = (fi.code or "") if fi is not None else "", _batch_said(fi, batch)
    if code.startswith("Blob") or "ResourceFile" in code:
        return Failure("files", said)
    if "Upload" in code:
        return Failure("collecting", said)
    sub = _failed_subtask(subtasks, index_of)
    if sub is not None and exit_code is None:  # the application never ran: coordination failed on a node
        return _coordination_failure(sub, said, ran=False)
    if code == PRIMARY_COORDINATION_FAILED and exit_code is None:
        # The coordination command failed on the primary (e.g. no launcher on its PATH): the application
        # never ran there either. mpibatch's own step and a user's `coordination:` alike.
        node = f", node {_node(task)}" if _node(task) else ""
        return Failure("coordination", f"the coordination command failed on instance 0 (the primary{node}); "
                       f"Batch: {said}", 0)
    if said:
        return Failure("running", said)
    if state_of(task.state) == "completed" and exit_code not in (0, None):
        return Failure("running", f"the application exited with code {exit_code} on the primary", 0)
    return _coordination_failure(sub, said, ran=True) if sub is not None else None


def task_result(batch: Batch, job_id: str, task: Any, subtasks: Sequence[Any],
                index_of: Mapping[int, int] | None = None) -> TaskResult:
    """The task's state, exit code, failure and instances (nothing downloaded)."""
    if index_of is None:
        index_of = map_subtasks(subtasks, {}, instance_count(task), [], task.id)
    info = task.execution_info
    state = state_of(task.state)
    exit_code = info.exit_code if info else None
    failure = _failure(task, subtasks, index_of, batch)
    timed_out = False
    elapsed = 0.0
    start, end = (_dt(info.start_time), _dt(info.end_time)) if info else (None, None)
    if start and end:
        elapsed = (end - start).total_seconds()
    wall = task.constraints.max_wall_clock_time if task.constraints else None
    if failure is not None and wall is not None and elapsed >= wall.total_seconds() - 1:
        timed_out = True
        failure = Failure("timeout", f"max_wall_clock ({wall}) exceeded: {failure.reason}", failure.instance)
    if state == "completed":
        rstate = "completed" if failure is None or exit_code not in (None, 0) else "failed"
    else:
        rstate = {"active": "active", "preparing": "running", "running": "running"}.get(state, state or "active")
    instances = [InstanceResult(index=0, node_id=_node(task) or "", host="", application_exit_code=exit_code)]
    for st in sorted(subtasks, key=lambda s: index_of.get(s.id, s.id)):
        instances.append(InstanceResult(index=index_of.get(st.id, st.id), node_id=_node(st) or "", host="",
                                        coordination_exit_code=st.exit_code))
    return TaskResult(job_id=job_id, task_id=task.id, executor="azure", state=rstate,
                      exit_code=exit_code, failure=failure, timed_out=timed_out,
                      attempts=retry_count(task) + 1, elapsed_s=round(elapsed, 3),
                      instances=instances, requeues=requeue_count(task))


def requeue_count(task: Any) -> int:
    """executionInfo.requeueCount: how often Batch requeued the task (a Spot node preempted under it)."""
    info = task.execution_info
    return (getattr(info, "requeue_count", None) or 0) if info else 0


def retry_count(task: Any) -> int:
    """executionInfo.retryCount: how often Batch retried the task after a failure (maxTaskRetryCount)."""
    info = task.execution_info
    return (info.retry_count or 0) if info else 0


def _say_restarts(say: Say, task_id: str, before: tuple[int, int], now: tuple[int, int]) -> None:
    """Each requeue (a preemption) and retry (a failure), even one the polls never saw as a state."""
    if now[0] > before[0]:
        say("task", f"{task_id}: preempted: requeued ({now[0]}), runs again from its start on other nodes")
    if now[1] > before[1]:
        say("task", f"{task_id}: failed: retried ({now[1]}), runs again from its start")


def status(batch: Batch, job_id: str, task_id: str, restores: Restores | None = None) -> TaskResult:
    task = batch.task(job_id, task_id)
    subtasks = batch.subtasks(job_id, task_id) if state_of(task.state) in ("running", "completed") else []
    result = task_result(batch, job_id, task, subtasks)
    result.restored = restores(task) if restores is not None else []
    return result


def wait(batch: Batch, job_id: str, task_id: str, say: Say, *, timeout: float | None = None,
         poll_interval: float = 1.0, max_poll_interval: float = 5.0, restores: Restores | None = None) -> TaskResult:
    """Poll until the task completes, reporting task and subtask states (and, with `restores`, which
    checkpoint generation each attempt restored) as they change; the result without outputs. Raises
    InfraError after `timeout` seconds (the task keeps running)."""
    t0 = time.monotonic()
    interval = poll_interval
    last: str | None = None
    sub_last: dict[int, str] = {}
    restarts = (0, 0)  # (requeues, retries) said
    restored: list[int | None] = []
    active_since = t0
    warned_active = False
    while True:
        task = batch.task(job_id, task_id)
        state = state_of(task.state)
        if (counts := (requeue_count(task), retry_count(task))) != restarts:
            _say_restarts(say, task_id, restarts, counts)
            restarts = counts
            sub_last.clear()
        if state != last:
            node = _node(task)
            say("task", f"{task_id}: {state}" + (f" (primary on {node})" if node and state != "active" else ""))
            last, interval, active_since = state, poll_interval, time.monotonic()
        subtasks: list[Any] = []
        if state in ("running", "completed"):
            subtasks = batch.subtasks(job_id, task_id)
            for st in subtasks:
                s = state_of(st.state)
                if sub_last.get(st.id) != s:
                    sub_last[st.id] = s
                    node = _node(st)
                    code = f", exit code {st.exit_code}" if st.exit_code is not None else ""
                    say("subtask", f"{st.id}: {s}" + (f" on {node}" if node else "") + code)
        if restores is not None and state in ("running", "completed"):
            try:
                now = restores(task)
            except InfraError:  # storage away for a poll: said at the next one (collect reads them again)
                now = restored
            for attempt in range(len(restored) + 1, len(now) + 1):
                say("checkpoints", restore_message(attempt, now[attempt - 1]))
            restored = now
        if state == "completed":
            result = task_result(batch, job_id, task, subtasks)
            result.restored = restored
            return result
        if state == "active":
            job = batch.get_job(job_id)
            if job is not None and state_of(job.state) in ("completed", "terminating", "deleting"):
                raise InfraError(f"job {job_id} is {state_of(job.state)} and task {task_id} never started "
                                 "(Batch leaves active tasks of an ended job unscheduled)")
            if not warned_active and time.monotonic() - active_since > ACTIVE_WARNING_S:
                warned_active = True
                say("warning", f"task {task_id} has waited 10 minutes for nodes: check the pool "
                    f"(mpibatch pool check {getattr(task.node_info, 'pool_id', '') or 'POOL'})")
        if timeout is not None and time.monotonic() - t0 > timeout:
            raise InfraError(f"gave up waiting for task {job_id}/{task_id} after {timeout:.0f}s (it is {state}); "
                             f"resume with: mpibatch status {job_id} {task_id}")
        time.sleep(interval)
        interval = min(max_poll_interval, interval * 1.5)


__all__ = ["INSTANCE_INFO", "instance_count", "map_subtasks", "status", "task_result", "wait"]
