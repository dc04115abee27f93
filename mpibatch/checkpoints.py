"""The rehearsals' checkpoint store (docs/checkpoints.md): a directory under the runs directory that stands in
for the job's container, with the same names. While a task runs it is ``<runs>/<job>/<task>.checkpoints``; when
the run is collected it moves into the run's directory as ``checkpoints/``. ``--resume-from`` seeds a new
run's store with the newest complete generation of an earlier one - by ``copy_generation``, which also seeds a
task submitted to Batch (executors/azure/checkpoints.py)."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SpecError
from .launchers import checkpoint, protocol
from .spec import Spec

if TYPE_CHECKING:
    from .executors import Progress
    from .plan import TaskPlan

log = logging.getLogger(__name__)
STORE_DIR = "checkpoints"  # in a collected run's directory
RUNNING_SUFFIX = ".checkpoints"  # <runs>/<job>/<task>.checkpoints while the task runs
OPTION = "--resume-from"


def running_store(runs_dir: Path, job_id: str, task_id: str) -> Path:
    return Path(runs_dir) / job_id / f"{task_id}{RUNNING_SUFFIX}"


def _tasks_in(store: Path) -> list[str]:
    return sorted(p.name for p in store.iterdir() if (p / f"${protocol.TASK_INTERMEDIATE}").is_dir()) \
        if store.is_dir() else []


def resume_source(text: str, runs_dir: str | Path, spec: Spec) -> Path:
    """The store `text` names: a run directory (its ``checkpoints/``), or JOB/TASK under the runs directory
    (its newest run, else the store of a run that never finished). Bad input when it holds no checkpoint."""
    given = Path(text)
    candidates = [given / STORE_DIR, given]
    if "/" in text.strip("/") and text.count("/") == 1 and not given.exists():
        job, task = text.split("/")
        candidates = [Path(runs_dir) / job / f"{task}.latest" / STORE_DIR, running_store(Path(runs_dir), job, task)]
    for store in candidates:
        if _tasks_in(store):
            if len(_tasks_in(store)) > 1:
                raise SpecError(OPTION, f"{store} holds checkpoints of several tasks: {', '.join(_tasks_in(store))}",
                                "name the run directory of one task")
            return store
    raise SpecError(OPTION, f"no checkpoints in {text}", "give a run directory (mpibatch-runs/JOB/TASK.N) or JOB/TASK "
                    f"of a run whose spec has task.checkpoint (looked in {', '.join(map(str, candidates))})")


def seed(store: Path, source: Path, task_id: str, instances: int, from_: str) -> int | None:
    """Copy the newest complete generation of `source` into `store` under `task_id`, verified, manifests
    last. Returns its number, None when `source` has no complete one."""
    return copy_generation(checkpoint.DirStore(str(source)), _tasks_in(source)[0], checkpoint.DirStore(str(store)),
                           task_id, instances, from_)


def copy_generation(src: checkpoint.Store, src_task: str, dest: checkpoint.Store, task_id: str, instances: int,
                    from_: str) -> int | None:
    """Copy the newest complete generation of `src_task` in `src` to `task_id` in `dest` (the same number),
    each file verified on the way, each instance's manifest last; a copy that fails leaves no manifest. Returns
    the generation, None when `src` has no complete one."""
    g, _ = checkpoint.newest_restorable(src, src_task, instances, from_)  # the one the nodes would restore
    if g is None:
        return None
    with tempfile.TemporaryDirectory(prefix=protocol.NODE_FILE_PREFIX) as tmp:
        for i in range(instances) if from_ == "all" else (0,):
            manifest = checkpoint.Manifest.from_json(src.read(checkpoint.manifest_name(src_task, i, g)))
            try:
                for n, (rel, info) in enumerate(sorted(manifest.files.items())):
                    if not checkpoint.safe_rel(rel):
                        continue
                    local = os.path.join(tmp, str(n))
                    src.get(f"{checkpoint.generation_prefix(src_task, i, g)}/{rel}", local, int(info["size"]),
                            str(info["md5"]))
                    dest.put(local, f"{checkpoint.generation_prefix(task_id, i, g)}/{rel}")
                    os.unlink(local)
                dest.put_bytes(checkpoint.manifest_name(task_id, i, g), manifest.to_json().encode())
            except BaseException:
                dest.delete_generation(task_id, i, g)
                raise
    return g


def restore_message(attempt: int, generation: int | None) -> str:
    """What the progress says about an attempt's restore (every executor)."""
    return (f"attempt {attempt} restores generation {generation}" if generation is not None
            else f"attempt {attempt}: no complete generation, the program starts fresh")


def moved_aside(store: Path) -> Path:
    return store.with_name(store.name + ".old")


def open_store(runs_dir: Path, job_id: str, task_id: str) -> Path:
    """An empty store for a new run (a dead run's store, never collected, moves aside as .old)."""
    store = running_store(runs_dir, job_id, task_id)
    if store.exists():
        old = moved_aside(store)
        shutil.rmtree(old, ignore_errors=True)
        store.rename(old)
        log.warning("the checkpoints of an earlier run that never finished are now in %s", old)
    store.mkdir(parents=True)
    return store


def close_store(store: Path, output_dir: str | None) -> Path:
    """Into the collected run's directory (where --resume-from RUNDIR finds it); returns where it is."""
    if output_dir and Path(output_dir).is_dir():
        target = Path(output_dir) / STORE_DIR
        store.rename(target)
        return target
    return store


def open_run_store(runs_dir: Path, plan: TaskPlan, resume_from: Path | None, progress: Progress | None) -> Path:
    """A run's store: empty, or seeded with the newest complete generation of `resume_from`."""
    assert plan.checkpoint is not None
    running = running_store(runs_dir, plan.job_id, plan.task_id)
    if resume_from is not None and resume_from.resolve() == running.resolve():
        resume_from = moved_aside(running)  # a dead run of this very task: open_store moves its store there
    store = open_store(runs_dir, plan.job_id, plan.task_id)
    if resume_from is not None:
        g = seed(store, resume_from, plan.task_id, plan.instances, plan.checkpoint.from_)
        (progress or (lambda phase, detail: None))(
            "checkpoints", f"resuming from generation {g} of {resume_from}" if g is not None
            else f"{resume_from} has no complete generation: the program starts fresh")
    return store
