"""Collection rules shared by every executor (docs/file-conventions.md#collection).

* The runs directory is checked before anything starts; each run gets a new ``<runs>/<job>/<task>``.
* Inside an instance's folder, the logs are ``stdout.txt`` / ``stderr.txt``; an output with one of those
  names goes to ``$<Kind>/<name>`` instead, so it never overwrites the log (:func:`collected_path`).
* A file is written through the durable writer (``launchers/fileio.py``): no partial file has a final name,
  and an interrupted collection leaves no temporary file.
* Two outputs that would have the same collected name are refused (:func:`collection_targets`).
* Only regular files are collected: a symlink (to ``/dev/zero``, or out of the working directory) is refused.
* Log tails read the last bytes only, whatever the file's size.

:func:`collect_instances` is the rehearsal lifecycle's collection phase, over its Transport.
"""
from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, TypeVar

from ..conventions import INSTANCE_INFO, LOG_FILES
from ..errors import InfraError, LogShrank, SpecError
from ..launchers import fileio
from ..launchers.protocol import TASK_OUTPUT
from ..results import TAIL_CHARS, Failure, TaskResult

if TYPE_CHECKING:
    from ..launchers.protocol import NodeLayout
    from .transport import Node, Transport

COPY_CHUNK = 1024 * 1024


class CollectError(OSError):
    """Some files of one instance could not be collected; the others were. `problems` name each file."""

    def __init__(self, files: list[str], problems: list[str]):
        super().__init__("; ".join(problems))
        self.files, self.problems = files, problems


def _not_a_directory(path: Path) -> Path | None:
    """The nearest existing ancestor of `path` (or `path` itself) when it is not a directory."""
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return None if p.is_dir() else p
    return None


def check_runs_dir(runs_dir: Path, field: str = "--runs-dir", example: str = "./mpibatch-runs") -> Path:
    """Create `runs_dir` if missing and prove a file can be written there - before any node starts
    (or any download: `outputs get --to`)."""
    fix = f"give a directory you can write to, e.g. {field} {example}"
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise SpecError(field, f"{runs_dir} exists and is not a directory", fix) from None
    except OSError as e:
        if (blocker := _not_a_directory(runs_dir)) is not None:
            raise SpecError(field, f"{runs_dir} cannot be a directory: {blocker} is a file, not a directory",
                            fix) from None
        raise SpecError(field, f"cannot create {runs_dir}: {e.strerror or e}", fix) from None
    if not runs_dir.is_dir():
        raise SpecError(field, f"{runs_dir} is not a directory", fix)
    probe = runs_dir / f".mpibatch-probe-{uuid.uuid4().hex}"
    try:
        with open(probe, "wb") as f:
            f.write(b"probe")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise SpecError(field, f"cannot write in {runs_dir}: {e.strerror or e}", fix) from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return runs_dir


IN_PROGRESS = ".mpibatch-collecting"  # in an output directory whose collection has not finished


def new_output_dir(runs_dir: Path, job_id: str, task_id: str, *, resume: bool = False) -> Path:
    """runs_dir/job/task, or task.2, task.3...: a second run never overwrites the first. With `resume`
    (``collect``), a directory whose collection was interrupted is returned again, so a rerun resumes
    there (verified files are kept); call :func:`finish_output_dir` when the collection is complete."""
    parent = Path(runs_dir) / job_id
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InfraError(f"cannot create {parent}: {e.strerror or e}") from None
    for n in range(1, 10_000):
        d = parent / (task_id if n == 1 else f"{task_id}.{n}")
        if resume and (d / IN_PROGRESS).exists():
            return d
        try:
            d.mkdir()
        except FileExistsError:
            continue
        if resume:
            (d / IN_PROGRESS).touch()
        point_latest(d)
        return d
    raise InfraError(f"too many runs of {job_id}/{task_id} in {runs_dir}: clean some up")


def point_latest(run_dir: Path) -> None:
    """runs_dir/job/task.latest -> the newest run of that task (task, task.2, ...): a stable name for
    scripts and READMEs (a task id never holds a dot, so no run is ever called that). Replaced
    atomically: a reader sees the old run or the new one."""
    link = run_dir.parent / f"{run_dir.name.split('.')[0]}.latest"
    tmp = run_dir.parent / f".{link.name}.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_dir.name)
    os.replace(tmp, link)


def finish_output_dir(d: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (d / IN_PROGRESS).unlink()


def collected_path(rel: str, kind: str = TASK_OUTPUT) -> str:
    """Where an output lands in its instance's folder: its own path, unless that is a log's or the
    instance record's name (``stdout.txt``...), then ``$<Kind>/<path>``."""
    return f"${kind}/{rel}" if rel in (*LOG_FILES, INSTANCE_INFO) else rel


def collection_targets(rels: Sequence[str], kind: str = TASK_OUTPUT) -> tuple[list[tuple[str, str]], list[str]]:
    """(path, collected name) of each output, and a problem for each output that cannot have its collected
    name because another output is already called that (``stdout.txt`` goes to ``$TaskOutput/stdout.txt``,
    a name a task can also give a file of its own). The clash is refused, never resolved silently: the file
    that has that path itself is collected, the renamed one is named in the problem (and stays on the node)."""
    own = set(rels)
    targets: list[tuple[str, str]] = []
    problems: list[str] = []
    for rel in rels:
        target = collected_path(rel, kind)
        if target != rel and target in own:
            problems.append(f"{rel}: not collected: its collected name {target} is the path of another output; "
                            "rename one of them")
        else:
            targets.append((rel, target))
    return targets, problems


class Cancelled(Exception):
    """The collection was interrupted (Ctrl-C): the copies of its worker threads stop at their next piece."""


_worker = threading.local()  # the cancel event of the collection a worker thread works for (run_all)


def check_cancelled() -> None:
    event = getattr(_worker, "cancel", None)
    if event is not None and event.is_set():
        raise Cancelled("collection interrupted")


def copy_stream(read: Callable[[int], bytes], dest: Path, size: int | None = None) -> int:
    """Copy what `read(n)` returns into `dest` through the durable writer (temporary name, short writes and a
    full disk checked, `size` verified when known, fsync, rename); returns the bytes copied. A cancelled
    collection stops between pieces and leaves no temporary file."""
    check_cancelled()
    dest.parent.mkdir(parents=True, exist_ok=True)

    def piece(n: int) -> bytes:
        check_cancelled()
        return read(n)

    with fileio.DurableFile(dest, size=size) as out:
        copied = out.copy_from(piece, COPY_CHUNK)
        out.commit()
    return copied


def remove_temporaries(root: Path) -> None:
    """Remove the durable writer's temporary files under `root` (what interrupted copies left)."""
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            if fileio.is_temp_name(name):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))


def open_regular(path: Path | str) -> BinaryIO:
    """Open a regular file for reading without following a symlink in its last component; a symlink,
    FIFO or device raises OSError (so /dev/zero or a link out of the working directory is never read)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path} is not a regular file; not collected")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def copy_regular(src: Path | str, dest: Path) -> None:
    """Copy a regular file (never through a symlink) to `dest`, durably. The file must not change size while
    it is copied (the task has ended)."""
    try:
        f = open_regular(src)
    except OSError as e:
        if e.errno == 40:  # ELOOP: the last component is a symlink
            raise OSError(f"{src} is a symlink; not collected") from None
        raise
    with f:
        copy_stream(f.read, dest, os.fstat(f.fileno()).st_size)


def read_tail(path: Path | str, limit: int = TAIL_CHARS) -> str:
    """The last `limit` bytes of a collected log as text (bounded memory whatever the file's size)."""
    try:
        with fileio.open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            data = fileio.read_tail(f, limit)
    except OSError:
        return ""
    text = data.decode(errors="replace")
    return text if size <= limit else "...[truncated]...\n" + text


T = TypeVar("T")


CANCEL_WAIT_S = 10.0  # after Ctrl-C, how long the copies get to stop at their next piece


def run_all(fn: Callable[[T], None], items: Sequence[T], workers: int = 8) -> list[BaseException | None]:
    """fn(item) for every item, `workers` at a time, in daemon threads; the exception of each (or None).
    Ctrl-C cancels the calls (a copy stops at its next piece and removes its temporary file, see
    :func:`copy_stream`), waits at most CANCEL_WAIT_S for them, and raises KeyboardInterrupt: never a wait
    for every copy to end, as a thread pool's shutdown would."""
    results: list[BaseException | None] = [None] * len(items)
    slots = threading.Semaphore(max(1, workers))
    cancel = threading.Event()
    threads: list[threading.Thread] = []

    def one(i: int) -> None:
        _worker.cancel = cancel
        try:
            fn(items[i])
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            results[i] = e
        finally:
            slots.release()

    try:
        for i in range(len(items)):
            while not slots.acquire(timeout=0.2):
                pass
            th = threading.Thread(target=one, args=(i,), daemon=True, name=f"mpibatch-collect-{i}")
            th.start()
            threads.append(th)
        for th in threads:
            while th.is_alive():
                th.join(0.2)
    except KeyboardInterrupt:
        cancel.set()
        _join_all(threads, CANCEL_WAIT_S)
        raise
    return results


def _join_all(threads: Sequence[threading.Thread], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    for th in threads:
        th.join(max(0.0, deadline - time.monotonic()))


def collect_instances(t: Transport, nodes: list[Node], layouts: list[NodeLayout], result: TaskResult, *,
                      runs_dir: Path, job_id: str, task_id: str, patterns: Sequence[str],
                      say: Callable[[str, str], None], task_started: bool = True) -> None:
    """Every instance's logs and outputs into runs_dir/job/task/<i>/; when job preparation failed
    (the task never started), each node's job preparation logs instead, under <instance>/jobpreparation/.
    Any file that did not arrive fails the task (phase "collecting") and keeps the nodes' files, whose
    path the reason names (docs/file-conventions.md#collection). Ctrl-C leaves no temporary file."""
    if not nodes:
        return
    try:  # Ctrl-C from the first progress line on is an interrupted collection
        say("collecting", f"outputs of {len(nodes)} instances")
        try:
            out = new_output_dir(runs_dir, job_id, task_id)
        except InfraError as e:
            result.nodes_dir = t.keep_files()
            result.failure = result.failure or Failure("collecting", f"{e}; the nodes' files are kept: "
                                                                     f"{result.nodes_dir}")
            return
        result.output_dir = str(out)
        found: list[list[str]] = [[] for _ in nodes]

        def collect_one(n: Node) -> None:
            found[n.index] = _collect_instance(t, n, layouts[n.index], result, out, patterns, task_started)
        try:
            errors = run_all(collect_one, nodes, workers=8)
        finally:
            remove_temporaries(out)  # what copies still running after an interruption left
    except KeyboardInterrupt:
        _interrupted(result)
        return
    _report(t, result, out, say, _problems(errors, found))


def _collect_instance(t: Transport, n: Node, lay: NodeLayout, result: TaskResult, out: Path,
                      patterns: Sequence[str], task_started: bool) -> list[str]:
    """One instance's logs and outputs into out/<i>/; the problems (each names its file)."""
    r = result.instances[n.index]
    d = out / str(n.index)
    d.mkdir()
    r.output_dir = str(d)
    src, logs = (lay.task_dir, d) if task_started else (lay.node_task_dir("jobpreparation"), d / "jobpreparation")
    logs.mkdir(exist_ok=True)
    failed: list[str] = []
    for name in LOG_FILES:
        try:
            if t.fetch(n, f"{src}/{name}", logs / name):
                setattr(r, name[:6], read_tail(logs / name))  # the end only, whatever the size
                setattr(r, f"{name[:6]}_path", str(logs / name))
        except OSError as e:
            failed.append(f"instance {n.index} {name}: {e}")
    if patterns:
        try:
            r.files = t.collect(n, lay.working_dir, patterns, d)
        except CollectError as e:
            r.files = e.files
            failed += [f"instance {n.index} {p}" for p in e.problems]
        except OSError as e:
            failed.append(f"instance {n.index} outputs: {e}")
    return failed


def _interrupted(result: TaskResult) -> None:
    # The copies still running were cancelled, their temporary files removed; what was copied is incomplete.
    result.missing.append("collection was interrupted: outputs of some instances are incomplete")
    if result.failure is None:
        result.failure = Failure("collecting", "interrupted by the user while collecting; "
                                 f"{result.output_dir or 'the outputs'} is incomplete")


def _problems(errors: Sequence[BaseException | None], found: Sequence[list[str]]) -> list[str]:
    problems: list[str] = []
    for err in errors:
        if isinstance(err, OSError):
            problems.append(f"collecting failed: {err}")
        elif err is not None:
            raise err
    return problems + [p for per_node in found for p in per_node]


def _report(t: Transport, result: TaskResult, out: Path, say: Callable[[str, str], None],
            problems: list[str]) -> None:
    if not problems:
        return
    result.missing += problems
    kept = result.nodes_dir = t.keep_files()
    reason = (f"{len(problems)} file(s) could not be collected into {out} ({problems[0]}); the nodes' "
              f"files are kept: {kept}")
    say("collecting", reason)
    if result.failure is None:
        result.failure = Failure("collecting", reason)


def read_collected_log(runs_dir: Path, job_id: str, task_id: str, instance: int, stream: str, offset: int = 0,
                       limit: int = COPY_CHUNK) -> tuple[bytes, int, bool]:
    """A rehearsal run's collected log, ``<runs_dir>/<job>/<task>.latest/<i>/<stream>.txt`` (the newest run),
    from `offset` (negative: that many bytes before the end): (data, next offset, done). The run has ended,
    so `done` once the end is reached."""
    run = Path(runs_dir) / job_id / f"{task_id}.latest"
    if not run.is_dir():
        raise SpecError("TASK", f"no collected run of {job_id}/{task_id} in {runs_dir}",
                        "give the --runs-dir the task ran with, and the job and task ids of its spec")
    instances = sorted(int(p.name) for p in run.iterdir() if p.is_dir() and p.name.isdigit())
    if instance not in instances:
        have = f"0 to {instances[-1]}" if instances else "none"
        raise SpecError("--instance", f"run {run.resolve()} has no instance {instance} (instances: {have})",
                        "give --instance 0 (the primary) or a subtask's index")
    path = run / str(instance) / f"{stream}.txt"
    try:
        with fileio.open_regular(path) as f:
            size = os.fstat(f.fileno()).st_size
            offset = max(0, size + offset) if offset < 0 else offset
            data = fileio.read_range(f, offset, limit, limit=limit)
    except FileNotFoundError:
        raise InfraError(f"{path} was not collected (see 'missing' in the run's result)") from None
    if offset > size:
        raise LogShrank(str(path), offset, size)
    return data, offset + len(data), len(data) < limit
