"""Collection: what every instance of a finished task produced, into ``<runs>/<job>/<task>/<instance>/``.

The same layout and the same TaskResult as the rehearsal executors. Logs come from Batch (the
primary's task files; a subtask's files from its node), else from the copy the node persisted;
outputs come from the job's container under their File Conventions names, verified (size, MD5).
Anything that could not be brought back is listed in ``TaskResult.missing``, never skipped silently.
Why subtasks persist their own files: docs/batch-semantics.md#outputs.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ... import conventions
from ...conventions import INSTANCE_INFO, LIVE_LOGS, LOG_FILES
from ...errors import InfraError, SpecError
from ...launchers.fileio import WriteError
from ...render import PERSIST_URL_VAR
from ...results import InstanceResult, TaskResult
from ...transfers import Transfers
from ..collection import collected_path, finish_output_dir, new_output_dir, read_tail
from .client import Batch, state_of
from .storage import Storage, write_chunks
from .watch import instance_count, map_subtasks, task_result

Say = Callable[[str, str], None]


def collect(batch: Batch, storage: Storage, job_id: str, task_id: str, runs_dir: Path, say: Say, *,
            transfers: Transfers | None = None) -> TaskResult:
    """Bring back every instance's stdout/stderr and persisted outputs into
    ``<runs_dir>/<job>/<task>/<instance>/``: a new directory (never overwrites a finished collection),
    or the one an interrupted collect left, resumed (files already there and verified are kept).
    `transfers` is told about the output blobs (the logs are small and come first, unreported)."""
    task = batch.task(job_id, task_id)
    state = state_of(task.state)
    if state != "completed":
        raise SpecError("TASK", f"task {job_id}/{task_id} is {state or 'not started'}: its outputs are uploaded "
                        "when it ends", f"wait for it with `mpibatch status {job_id} {task_id} --wait`, then collect")
    container = conventions.job_container_name(job_id)
    n = instance_count(task)
    persisted = any(e.name == PERSIST_URL_VAR for e in (task.environment_settings or []))
    subtasks = batch.subtasks(job_id, task_id) if n > 1 else []
    pool_id = getattr(task.node_info, "pool_id", None) if task.node_info else None
    if not pool_id:
        job = batch.get_job(job_id)
        pool_id = getattr(job.pool_info, "pool_id", None) if job and job.pool_info else None

    blobs = storage.list_blobs(container, f"{task_id}/")
    infos: dict[int, dict[str, Any]] = {}
    parsed = {b.name: conventions.parse_task_blob(task_id, b.name) for b in blobs}
    for b in blobs:
        p = parsed[b.name]
        if p and p.kind == "TaskLog" and p.instance is not None and p.path == INSTANCE_INFO:
            raw = storage.read_blob(container, b.name)
            try:
                infos[p.instance] = json.loads(raw or b"{}")
            except ValueError:
                pass
    missing: list[str] = []
    index_of = map_subtasks(subtasks, infos, n, missing, task_id)
    result = task_result(batch, job_id, task, subtasks, index_of)
    out = new_output_dir(runs_dir, job_id, task_id, resume=True)
    result.output_dir = str(out)
    say("collecting", f"{n} instance(s) of {job_id}/{task_id} into {out}")
    by_index = {r.index: r for r in result.instances}
    for i in range(n):
        by_index.setdefault(i, InstanceResult(index=i, node_id="", host=""))
    result.instances = [by_index[i] for i in sorted(by_index)]
    sub_of = {index_of.get(st.id, st.id): st for st in subtasks}

    # blobs by instance: {i: [(kind, rel, blob)]}
    per: dict[int, list[tuple[str, str, Any]]] = {}
    names = {b.name for b in blobs}
    for b in blobs:
        p = parsed[b.name]
        if p and p.instance is not None:
            per.setdefault(p.instance, []).append((p.kind, p.path, b))

    if transfers is not None:
        planned = [b for i in by_index for kind, rel, b in per.get(i, [])
                   if not (kind == "TaskLog" and rel in (*LOG_FILES, *LIVE_LOGS, INSTANCE_INFO))]
        transfers.planned(len(planned), sum(b.size or 0 for b in planned))

    # Outputs of every instance, downloaded together at the end: (instance's files, target, blob, dir).
    downloads: list[tuple[list[str], str, Any, Path]] = []
    declared, why = _declared(task), _why(result)  # for subtasks whose persist step did not finish
    for r in result.instances:
        i = r.index
        d = out / str(i)
        d.mkdir(parents=True, exist_ok=True)
        r.output_dir = str(d)
        info = infos.get(i, {})
        r.host = str(info.get("host") or r.host or "")
        if not r.node_id and info.get("node_id"):
            r.node_id = str(info["node_id"])
        if persisted and i not in infos and (n > 1 or i == 0):
            missing.append(f"{task_id}/$TaskLog/{i}/{INSTANCE_INFO}: not in container {container} (the "
                           "node's persist step did not run or failed)")
        if persisted and i > 0:
            missing += unsaved_outputs(task_id, i, infos.get(i), declared, why)
        logs_from_blob = {rel: b for kind, rel, b in per.get(i, []) if kind == "TaskLog"}
        for name in LOG_FILES:
            if i == 0:
                problem = fetch_batch_file(
                    batch, lambda name=name, **kw: batch.client.download_task_file(job_id, task_id, name, **kw),
                    d / name)
            else:
                problem = _fetch_subtask_file(batch, sub_of.get(i), pool_id, name, d / name)
            if problem and name in logs_from_blob:  # node gone or file cleaned up: the persisted copy
                blob_problem = storage.download_blob(container, logs_from_blob[name], d / name)
                problem = None if blob_problem is None else f"{problem}; persisted copy: {blob_problem}"
            elif problem and f"live/{name}" in logs_from_blob:  # never persisted: what the tracker kept
                blob_problem = storage.download_blob(container, logs_from_blob[f"live/{name}"], d / name)
                problem = (f"{problem}; the live copy ({d / name}) may lack the end" if blob_problem is None
                           else f"{problem}; live copy: {blob_problem}")
            if problem:
                missing.append(f"instance {i} {name}: {problem}")
                continue
            setattr(r, name[:6], read_tail(d / name))  # the end only, whatever the log's size
            setattr(r, f"{name[:6]}_path", str(d / name))
        # Outputs (every kind but the logs handled above) and anything else the node persisted.
        files: list[str] = []
        for kind, rel, b in sorted(per.get(i, []), key=lambda x: x[1]):
            if kind == "TaskLog" and rel in (*LOG_FILES, *LIVE_LOGS, INSTANCE_INFO):
                continue
            if not conventions.is_safe_relative(rel):
                missing.append(f"{b.name}: unsafe name, not downloaded")
                if transfers is not None:
                    transfers.file_done()
                continue
            # An output named like a log never replaces it (docs/file-conventions.md#collection).
            target = f"$TaskLog/{rel}" if kind == "TaskLog" else collected_path(rel, kind)
            if target in files:
                target = f"${kind}/{rel}"
            files.append(target)
            downloads.append((files, target, b, d))
        for blob_name in (info.get("files") or {}):
            if blob_name not in names:
                missing.append(f"{blob_name}: uploaded by the node's persist step but not in container {container}")
        r.files = files
    problems = storage.download_blobs(container, [(b, into / target) for _, target, b, into in downloads],
                                      on_bytes=transfers.moved if transfers else None,
                                      on_done=transfers.file_done if transfers else None)
    for (files, target, b, _), problem in zip(downloads, problems):
        if problem:
            missing.append(f"{b.name}: {problem}")
            files.remove(target)
    if result.instances:  # after every instance: a single-file output may come from a subtask only
        p0 = result.instances[0]
        _primary_named_outputs(storage, task, result, container, blobs, Path(p0.output_dir or out / "0"), p0.files,
                               missing)
    result.missing = missing
    finish_output_dir(out)
    if missing:
        say("collecting", f"{len(missing)} item(s) could not be collected: see 'missing' in the result")
    return result


def unsaved_outputs(task_id: str, i: int, info: dict[str, Any] | None, declared: list[tuple[str, str]],
                    why: str) -> list[str]:
    """Every declared output of subtask instance `i` that may not have reached storage, and why: the
    node's persist step did not finish (no instance.json, or only the tracker's, which is not final)."""
    if info is not None and info.get("final", True):
        return []  # the persist step ran: what it could not send is checked by the caller
    info = info or {}
    saved = [p for p in (conventions.parse_task_blob(task_id, b) for b in info.get("files") or {})
             if p is not None and p.instance == i]
    out = []
    for kind, pattern in [(str(k), str(p)) for k, p in info.get("declared") or declared]:
        got = [p for p in saved if p.kind == kind and conventions.glob_match(p.path, pattern)]
        if got:
            out.append(f"instance {i} {kind} {pattern!r}: the node's persist step did not finish ({why}); "
                       f"{len(got)} file(s) were saved while the task ran (last at {info.get('saved_at')}), "
                       "later changes are lost")
        else:
            out.append(f"instance {i} {kind} {pattern!r}: not saved - the node's persist step did not finish ({why}) "
                       "and no matching file was complete while the task ran")
    return out


def _declared(task: Any) -> list[tuple[str, str]]:
    """(kind, pattern) of the task's declared outputs, read back from its Batch output files."""
    out = []
    for of in task.output_files or []:
        dest = of.destination.container if of.destination else None
        pattern = (of.file_pattern or "").replace("\\", "/")
        named = conventions.parse_task_blob(task.id, f"{dest.path}/x") if dest and dest.path else None
        if named and not (named.kind == "TaskLog" and pattern == "../std*.txt"):
            out.append((named.kind, pattern))
    return out


def _why(result: TaskResult) -> str:
    if result.timed_out:
        return "the task hit its max wall clock time"
    if result.failure is not None:
        return result.failure.reason
    return f"the program exited with code {result.exit_code}" if result.exit_code else "the task ended before it"


def _fetch_subtask_file(batch: Batch, st: Any, pool_id: str | None, name: str, dest: Path) -> str | None:
    """A subtask's log, read from its node (Batch gives the subtask's directory: never built here)."""
    info = st.node_info if st is not None else None
    root = getattr(info, "task_root_directory", None)
    node = getattr(info, "node_id", None)
    sub_pool = getattr(info, "pool_id", None) or pool_id
    if not (root and node and sub_pool):
        return "the subtask has no node information"
    path = f"{root.replace(chr(92), '/').strip('/')}/{name}"
    return fetch_batch_file(batch, lambda **kw: batch.client.download_node_file(sub_pool, node, path, **kw), dest)


def _primary_named_outputs(storage: Storage, task: Any, result: TaskResult, container: str, blobs: Sequence[Any],
                           d: Path, files: list[str], missing: list[str]) -> None:
    """Batch output files naming one file (no wildcard) upload to exactly their `path`: expect that
    blob, and bring it back when it lies outside the instance folders listed above."""
    by_name = {b.name: b for b in blobs}
    ok = result.exit_code == 0 and result.failure is None
    for of in task.output_files or []:
        pattern = (of.file_pattern or "").replace("\\", "/")
        dest = of.destination.container if of.destination else None
        cond = state_of(of.upload_options.upload_condition) if of.upload_options else "tasksuccess"
        if not pattern or dest is None or not conventions.is_single_file(pattern):
            continue
        if (cond == "tasksuccess" and not ok) or (cond == "taskfailure" and ok):
            continue
        rel = conventions.normalize_relative_path(pattern)
        blob = dest.path or Path(rel).name
        b = by_name.get(blob)
        if b is None and any(rel in r.files for r in result.instances[1:]):
            continue  # only a subtask wrote it: not missing on the primary (docs/file-conventions.md#missing)
        if b is None:
            missing.append(f"{rel}: Batch output file not uploaded to {container}/{blob} (no such file on the "
                           "primary, or the upload failed)")
            continue
        named = conventions.parse_task_blob(task.id, blob)
        if rel in files or rel in LOG_FILES or (named is not None and named.instance == 0):
            continue  # already collected from the instance folder
        problem = storage.download_blob(container, b, d / rel)
        if problem:
            missing.append(f"{blob}: {problem}")
        else:
            files.append(rel)


def fetch_batch_file(batch: Batch, fetch: Callable[..., Any], dest: Path) -> str | None:
    """Download a task or node file to `dest`, checking its size; None when good, else why not."""
    from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

    holder: dict[str, Any] = {}

    def cls(pipeline_response: Any, deserialized: Any, headers: Any) -> Any:
        holder["headers"] = headers
        holder["encoding"] = pipeline_response.http_response.headers.get("Content-Encoding")
        return deserialized

    try:
        stream = batch.call(f"downloading {dest.name}", fetch, cls=cls)
        length = None if holder.get("encoding") else (holder.get("headers") or {}).get("Content-Length")
        write_chunks(stream, dest, size=None if length is None else int(length))  # durable; size verified
    except ResourceNotFoundError:
        return "not found on the node (retention over, node reimaged or removed?)"
    except ResourceExistsError as e:  # 409: the files are not available (yet)
        return f"not available: {batch.message(e)}"
    except InfraError as e:
        return str(e)
    except WriteError as e:  # names the file: a full disk, a short or mismatched download
        return batch.redact(str(e))
    except OSError as e:
        return f"download failed: {batch.redact(str(e))}"
    return None


__all__ = ["LOG_FILES", "collect", "fetch_batch_file"]
