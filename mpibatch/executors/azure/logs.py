"""One instance's stdout/stderr on Azure, read in byte ranges (``mpibatch logs``).

Where a log is read from, in order:
1. the final copy in the job's container, ``{taskId}/$TaskLog/{i}/{stream}.txt`` (names only through
   ``mpibatch.conventions``), which outlives the node;
2. the live copy the node's tracker keeps while the task runs, ``{taskId}/$TaskLog/{i}/live/{stream}.txt``
   (it lags the node by at most the tracking interval);
3. the Batch file API: the primary's task file, or the subtask's file on its node under the
   ``node_info.task_root_directory`` the service reports (never built here). Reads use ``ocp-range``
   from the caller's offset, so following a running task downloads only what is new.

A read is *done* when the task was completed before the read began and the read reached the end of the log.
A log that is now shorter than the offset read from (truncated or rewritten in place on the node) raises
``LogShrank``: the follower starts again from byte 0 and says so. A negative offset reads the last -offset
bytes (``mpibatch logs --tail``).
"""
from __future__ import annotations

from typing import Any

from ... import conventions
from ...errors import InfraError, LogShrank, SpecError
from ...launchers.protocol import TASK_LOG, InstanceRecord, RecordError
from .client import Batch, state_of
from .storage import Storage
from .watch import instance_count, map_subtasks

CHUNK = 4 * 1024 * 1024  # bytes per read: memory stays bounded whatever the log's size
STREAMS = ("stdout", "stderr")


def read_log(batch: Batch, storage: Storage | None, job_id: str, task_id: str, instance: int, stream: str,
             offset: int, limit: int = CHUNK) -> tuple[bytes, int, bool]:
    """Up to `limit` bytes of instance `instance`'s `stream` from byte `offset`: (data, next offset, done)."""
    if stream not in STREAMS:
        raise SpecError("--stream", f"{stream!r} is not a log stream", "use stdout or stderr")
    task = batch.task(job_id, task_id)
    done = state_of(task.state) == "completed"
    n = instance_count(task)
    if not 0 <= instance < n:
        raise SpecError("--instance", f"task {job_id}/{task_id} has {n} instance(s); there is no instance {instance}",
                        f"give --instance 0 (the primary) to {n - 1}")
    name = f"{stream}.txt"
    if offset < 0:  # a tail: the last -offset bytes of the log as it is now
        offset = max(0, _size(batch, storage, task, job_id, task_id, instance, n, name) + offset)
    data = _from_storage(storage, job_id, task_id, instance, name, offset, limit)
    if data is None:
        data = _from_batch(batch, storage, task, job_id, task_id, instance, n, name, offset, limit)
    return data, offset + len(data), done and len(data) < limit


def _size(batch: Batch, storage: Storage | None, task: Any, job_id: str, task_id: str, instance: int, n: int,
          name: str) -> int:
    """The log's size where read_log would read it: the final or live copy in storage, else the Batch file
    (0 while there is none)."""
    if storage is not None:
        container = conventions.job_container_name(job_id)
        for blob in (conventions.instance_output_blob(task_id, TASK_LOG, instance, name),
                     conventions.live_log_blob(task_id, instance, name)):
            size = storage.blob_size(container, blob)
            if size is not None:
                return size
    where = _batch_file(batch, storage, task, job_id, task_id, instance, n, name, "")
    return 0 if where is None else (_file_size(batch, where[1], name) or 0)


def _from_storage(storage: Storage | None, job_id: str, task_id: str, instance: int, name: str, offset: int,
                  limit: int) -> bytes | None:
    """The final, else the live copy from `offset`; None when storage holds neither (or is not configured)."""
    if storage is None:
        return None
    container = conventions.job_container_name(job_id)
    for blob in (conventions.instance_output_blob(task_id, TASK_LOG, instance, name),
                 conventions.live_log_blob(task_id, instance, name)):
        data = storage.read_range(container, blob, offset, limit)
        if data is not None:
            return data
    return None


def _from_batch(batch: Batch, storage: Storage | None, task: Any, job_id: str, task_id: str, instance: int, n: int,
                name: str, offset: int, limit: int) -> bytes:
    """From the Batch file API; empty while the file does not exist yet (task not started). An empty read
    past the start asks for the file's size: a log now shorter than `offset` raises LogShrank."""
    where = _batch_file(batch, storage, task, job_id, task_id, instance, n, name,
                        f"bytes={offset}-{offset + limit - 1}")
    if where is None:
        return b""  # not scheduled yet: nothing written
    fetch, props = where
    data = _ranged(batch, fetch, name)
    if not data and offset > 0:
        size = _file_size(batch, props, name)
        if size is not None and size < offset:
            raise LogShrank(name, offset, size)
    return data


def _batch_file(batch: Batch, storage: Storage | None, task: Any, job_id: str, task_id: str, instance: int, n: int,
                name: str, rng: str) -> tuple[Any, Any] | None:
    """(read the range `rng`, read the properties) of the log in the Batch file API: the primary's task file,
    a subtask's file on its node; None while the subtask is not scheduled."""
    c = batch.client
    if instance == 0:
        return (lambda: c.download_task_file(job_id, task_id, name, ocp_range=rng),
                lambda: c.get_task_file_properties(job_id, task_id, name))
    where = _subtask_file(batch, storage, task, job_id, task_id, instance, n, name)
    if where is None:
        return None
    pool, node, path = where
    return (lambda: c.download_node_file(pool, node, path, ocp_range=rng),
            lambda: c.get_node_file_properties(pool, node, path))


def _subtask_file(batch: Batch, storage: Storage | None, task: Any, job_id: str, task_id: str, instance: int,
                  n: int, name: str) -> tuple[str, str, str] | None:
    """(pool, node, path) of a subtask's log, None while it is not scheduled."""
    st = _subtask(batch, storage, job_id, task_id, instance, n)
    info = st.node_info if st is not None else None
    root = getattr(info, "task_root_directory", None)
    node = getattr(info, "node_id", None)
    pool = getattr(info, "pool_id", None) or _pool_of(batch, task, job_id)
    if not (root and node and pool):
        return None
    return pool, node, f"{root.replace(chr(92), '/').strip('/')}/{name}"


def _file_size(batch: Batch, props: Any, name: str) -> int | None:
    """The file's size from its properties (None when it is gone or the answer has none)."""
    from azure.core.exceptions import HttpResponseError

    try:
        return int(batch.call(f"reading {name}", props).content_length)
    except (HttpResponseError, TypeError, ValueError):
        return None


def _ranged(batch: Batch, fetch: Any, name: str) -> bytes:
    from azure.core.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError

    try:
        return b"".join(batch.call(f"reading {name}", fetch))
    except (ResourceNotFoundError, ResourceExistsError):
        return b""  # not written (yet), or the node's files are not available yet
    except HttpResponseError as e:
        if e.status_code == 416:  # a range past the end: nothing new
            return b""
        raise InfraError(f"reading {name} failed: {batch.message(e)}") from None


def _pool_of(batch: Batch, task: Any, job_id: str) -> str | None:
    pool = getattr(task.node_info, "pool_id", None) if task.node_info else None
    if pool:
        return pool
    job = batch.get_job(job_id)
    return getattr(job.pool_info, "pool_id", None) if job and job.pool_info else None


def _subtask(batch: Batch, storage: Storage | None, job_id: str, task_id: str, instance: int, n: int) -> Any | None:
    """The subtask that runs instance `instance`, mapped as ``collect`` maps it (instance.json node ids)."""
    subtasks = batch.subtasks(job_id, task_id)
    node_ids: dict[int, str | None] = {}
    if storage is not None:
        container = conventions.job_container_name(job_id)
        for i in range(1, n):
            raw = storage.read_blob(container, conventions.instance_info_blob(task_id, i))
            try:
                node_ids[i] = InstanceRecord.from_json(raw).node_id if raw else None
            except RecordError:
                pass  # unreadable: the subtask is mapped by id order, as collect maps it
        node_ids = {i: v for i, v in node_ids.items() if v}
    index_of = map_subtasks(subtasks, node_ids, n, [], task_id)
    return next((st for st in subtasks if index_of.get(st.id) == instance), None)


__all__ = ["CHUNK", "STREAMS", "read_log"]
