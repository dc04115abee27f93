"""Collection: what every instance of a finished task produced, into ``<runs>/<job>/<task>/<instance>/``.

The same layout and the same TaskResult as the rehearsal executors. Logs come from Batch (the
primary's task files; a subtask's files from its node), else from the copy the node persisted;
outputs come from the job's container under their File Conventions names, verified (size, MD5).
Anything that could not be brought back is listed in ``TaskResult.missing``, never skipped silently.
Why subtasks persist their own files: docs/batch-semantics.md#outputs.

Four phases: :func:`plan` (the task, its blobs and the nodes' ``instance.json`` records), then per
instance :func:`fetch_logs` and :func:`check_records` (what the nodes said they stored or could not),
then :func:`fetch_outputs` for every instance at once, and :func:`report`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import conventions
from ...conventions import LOG_FILES
from ...errors import InfraError, SpecError
from ...launchers.fileio import WriteError
from ...launchers.protocol import LIVE_DIR, TASK_LOG, InstanceRecord, RecordError, is_mpibatch_log
from ...render import PERSIST_URL_VAR
from ...results import InstanceResult, TaskResult
from ...transfers import Transfers
from ..collection import collected_path, finish_output_dir, new_output_dir, read_tail
from .checkpoints import restored
from .client import Batch, state_of
from .storage import Storage, write_chunks
from .watch import instance_count, map_subtasks, task_result

Say = Callable[[str, str], None]


@dataclass
class Plan:
    """What one collection works from: the task, its instances and what is in the job's container."""

    task: Any
    container: str
    n: int
    persisted: bool  # the nodes were told to persist (the task was submitted with a container SAS)
    pool_id: str | None
    blobs: list[Any]
    per: dict[int, list[tuple[str, str, Any]]]  # instance -> [(kind, path, blob)]
    records: dict[int, InstanceRecord]
    result: TaskResult
    out: Path
    sub_of: dict[int, Any]
    missing: list[str] = field(default_factory=list)
    # Outputs of every instance, downloaded together at the end: (instance's files, target, blob, dir).
    downloads: list[tuple[list[str], str, Any, Path]] = field(default_factory=list)

    @property
    def declared(self) -> list[tuple[str, str]]:
        """The task's declared outputs, as the nodes recorded them (every instance is told the same)."""
        return next((r.declared for _, r in sorted(self.records.items()) if r.declared), [])


def collect(batch: Batch, storage: Storage, job_id: str, task_id: str, runs_dir: Path, say: Say, *,
            transfers: Transfers | None = None) -> TaskResult:
    """Bring back every instance's stdout/stderr and persisted outputs into
    ``<runs_dir>/<job>/<task>/<instance>/``: a new directory (never overwrites a finished collection),
    or the one an interrupted collect left, resumed (files already there and verified are kept).
    `transfers` is told about the output blobs (the logs are small and come first, unreported)."""
    p = plan(batch, storage, job_id, task_id, runs_dir)
    say("collecting", f"{p.n} instance(s) of {job_id}/{task_id} into {p.out}")
    if transfers is not None:
        planned = [b for i in range(p.n) for kind, rel, b in p.per.get(i, []) if not is_mpibatch_log(kind, rel)]
        transfers.planned(len(planned), sum(b.size or 0 for b in planned))
    why = _why(p.result)  # for subtasks whose persist step did not finish
    for r in p.result.instances:
        d = p.out / str(r.index)
        d.mkdir(parents=True, exist_ok=True)
        r.output_dir = str(d)
        _identify(r, p.records.get(r.index))
        check_records(p, r.index, task_id, why)
        fetch_logs(batch, storage, p, r, job_id, task_id)
        r.files = plan_outputs(p, r.index, d, transfers)
    fetch_outputs(storage, p, transfers)
    return report(storage, p, say)


def plan(batch: Batch, storage: Storage, job_id: str, task_id: str, runs_dir: Path) -> Plan:
    """The completed task, its subtasks mapped to instances, its blobs by instance and the nodes'
    records; the (new or resumed) output directory."""
    task = batch.task(job_id, task_id)
    state = state_of(task.state)
    if state != "completed":
        raise SpecError("TASK", f"task {job_id}/{task_id} is {state or 'not started'}: its outputs are uploaded "
                        "when it ends", f"wait for it with `mpibatch status {job_id} {task_id} --wait`, then collect")
    container = conventions.job_container_name(job_id)
    n = instance_count(task)
    subtasks = batch.subtasks(job_id, task_id) if n > 1 else []
    blobs = storage.list_blobs(container, f"{task_id}/")
    per: dict[int, list[tuple[str, str, Any]]] = {}
    for b in blobs:
        named = conventions.parse_task_blob(task_id, b.name)
        if named and named.instance is not None:
            per.setdefault(named.instance, []).append((named.kind, named.path, b))
    missing: list[str] = []
    records = read_records(storage, container, task_id, per, missing)
    index_of = map_subtasks(subtasks, {i: r.node_id for i, r in records.items()}, n, missing, task_id)
    result = task_result(batch, job_id, task, subtasks, index_of)
    result.restored = restored(storage, job_id, task)
    out = new_output_dir(runs_dir, job_id, task_id, resume=True)
    result.output_dir = str(out)
    by_index = {r.index: r for r in result.instances}
    result.instances = [by_index.get(i) or InstanceResult(index=i, node_id="", host="")
                        for i in sorted({*by_index, *range(n)})]
    persisted = any(e.name == PERSIST_URL_VAR for e in (task.environment_settings or []))
    return Plan(task=task, container=container, n=n, persisted=persisted, pool_id=_pool_id(batch, task, job_id),
                blobs=blobs, per=per, records=records, result=result, out=out,
                sub_of={index_of.get(st.id, st.id): st for st in subtasks}, missing=missing)


def read_records(storage: Storage, container: str, task_id: str, per: dict[int, list[tuple[str, str, Any]]],
                 missing: list[str]) -> dict[int, InstanceRecord]:
    """Each instance's instance.json; one that cannot be read is named in `missing`."""
    records: dict[int, InstanceRecord] = {}
    for i, items in per.items():
        for kind, rel, b in items:
            if kind != TASK_LOG or rel != conventions.INSTANCE_INFO:
                continue
            try:
                records[i] = InstanceRecord.from_json(storage.read_blob(container, b.name) or b"")
            except RecordError as e:
                missing.append(f"{b.name}: {e}")
    return records


def _pool_id(batch: Batch, task: Any, job_id: str) -> str | None:
    pool_id = getattr(task.node_info, "pool_id", None) if task.node_info else None
    if not pool_id:
        job = batch.get_job(job_id)
        pool_id = getattr(job.pool_info, "pool_id", None) if job and job.pool_info else None
    return pool_id


def _identify(r: InstanceResult, record: InstanceRecord | None) -> None:
    if record is None:
        return
    r.host = str(record.host or r.host or "")
    if not r.node_id and record.node_id:
        r.node_id = record.node_id


def check_records(p: Plan, i: int, task_id: str, why: str) -> None:
    """What instance `i`'s node recorded against what is in the container: no record where one was
    expected, declared outputs a persist step that did not finish may not have saved, and files it
    said it stored that are not there."""
    if not p.persisted:
        return
    record = p.records.get(i)
    if record is None and (p.n > 1 or i == 0):
        p.missing.append(f"{conventions.instance_info_blob(task_id, i)}: not in container {p.container} (the "
                         "node's persist step did not run or failed)")
    if i > 0:
        p.missing.extend(unsaved_outputs(task_id, i, record, p.declared, why))
    names = {b.name for b in p.blobs}
    for blob_name in (record.files if record else {}):
        if blob_name not in names:
            p.missing.append(f"{blob_name}: uploaded by the node's persist step but not in container {p.container}")


def fetch_logs(batch: Batch, storage: Storage, p: Plan, r: InstanceResult, job_id: str, task_id: str) -> None:
    """stdout/stderr of instance `r`: from Batch (the primary's task files, a subtask's node files),
    else the copy the node persisted, else the tracker's live copy."""
    i, d = r.index, Path(r.output_dir or p.out / str(r.index))
    logs_from_blob = {rel: b for kind, rel, b in p.per.get(i, []) if kind == TASK_LOG}
    for name in LOG_FILES:
        if i == 0:
            problem = fetch_batch_file(
                batch, lambda name=name, **kw: batch.client.download_task_file(job_id, task_id, name, **kw), d / name)
        else:
            problem = _fetch_subtask_file(batch, p.sub_of.get(i), p.pool_id, name, d / name)
        if problem:
            problem = _persisted_log(storage, p.container, logs_from_blob, name, d / name, problem)
        if problem:
            p.missing.append(f"instance {i} {name}: {problem}")
            continue
        setattr(r, name[:6], read_tail(d / name))  # the end only, whatever the log's size
        setattr(r, f"{name[:6]}_path", str(d / name))


def _persisted_log(storage: Storage, container: str, logs_from_blob: dict[str, Any], name: str, dest: Path,
                   problem: str) -> str | None:
    """The log from the node's persisted copy (node gone or file cleaned up), else from the live copy
    the tracker kept (never persisted); None when one came, else why not."""
    live = f"{LIVE_DIR}/{name}"
    if name in logs_from_blob:
        blob_problem = storage.download_blob(container, logs_from_blob[name], dest)
        return None if blob_problem is None else f"{problem}; persisted copy: {blob_problem}"
    if live in logs_from_blob:
        blob_problem = storage.download_blob(container, logs_from_blob[live], dest)
        return (f"{problem}; the live copy ({dest}) may lack the end" if blob_problem is None
                else f"{problem}; live copy: {blob_problem}")
    return problem


def plan_outputs(p: Plan, i: int, d: Path, transfers: Transfers | None) -> list[str]:
    """Instance `i`'s outputs (every blob but mpibatch's own logs and record) queued for download;
    the collected names, in the instance's folder."""
    files: list[str] = []
    own = {rel for _, rel, _ in p.per.get(i, [])}
    for kind, rel, b in sorted(p.per.get(i, []), key=lambda x: x[1]):
        if is_mpibatch_log(kind, rel):
            continue
        if not conventions.is_safe_relative(rel):
            p.missing.append(f"{b.name}: unsafe name, not downloaded")
            if transfers is not None:
                transfers.file_done()
            continue
        # An output named like a log never replaces it (docs/file-conventions.md#collection).
        target = f"${TASK_LOG}/{rel}" if kind == TASK_LOG else collected_path(rel, kind)
        if target in files or (target != rel and target in own):  # refused, never one file over another
            p.missing.append(f"{b.name}: not collected: its collected name {target} is the path of another "
                             "output; rename one of them")
            if transfers is not None:
                transfers.file_done()
            continue
        files.append(target)
        p.downloads.append((files, target, b, d))
    return files


def fetch_outputs(storage: Storage, p: Plan, transfers: Transfers | None) -> None:
    """Every queued output at once, verified; a failure takes the file out of its instance's list."""
    problems = storage.download_blobs(p.container, [(b, into / target) for _, target, b, into in p.downloads],
                                      on_bytes=transfers.moved if transfers else None,
                                      on_done=transfers.file_done if transfers else None)
    for (files, target, b, _), problem in zip(p.downloads, problems):
        if problem:
            p.missing.append(f"{b.name}: {problem}")
            files.remove(target)


def report(storage: Storage, p: Plan, say: Say) -> TaskResult:
    """Single-file Batch output files of the primary, then the result with everything missing named."""
    result = p.result
    if result.instances:  # after every instance: a single-file output may come from a subtask only
        p0 = result.instances[0]
        _primary_named_outputs(storage, p.task, result, p.container, p.blobs, Path(p0.output_dir or p.out / "0"),
                               p0.files, p.missing)
    result.missing = p.missing
    finish_output_dir(p.out)
    if p.missing:
        say("collecting", f"{len(p.missing)} item(s) could not be collected: see 'missing' in the result")
    return result


def unsaved_outputs(task_id: str, i: int, record: InstanceRecord | None, declared: list[tuple[str, str]],
                    why: str) -> list[str]:
    """Every declared output of subtask instance `i` that may not have reached storage, and why: the
    node's persist step did not finish (no instance.json, or only the tracker's, which is not final).
    `declared`: what the task declared, from any instance's record (used when `i` has none)."""
    if record is not None and record.final:
        return []  # the persist step ran: what it could not send is checked by the caller
    saved = [p for p in (conventions.parse_task_blob(task_id, b) for b in (record.files if record else {}))
             if p is not None and p.instance == i]
    out = []
    last = record.saved_at if record else "?"
    for kind, pattern in (record.declared if record else declared):
        got = [p for p in saved if p.kind == kind and conventions.glob_match(p.path, pattern)]
        if got:
            out.append(f"instance {i} {kind} {pattern!r}: the node's persist step did not finish ({why}); "
                       f"{len(got)} file(s) were saved while the task ran (last at {last}), "
                       "later changes are lost")
        else:
            out.append(f"instance {i} {kind} {pattern!r}: not saved - the node's persist step did not finish ({why}) "
                       "and no matching file was complete while the task ran")
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
