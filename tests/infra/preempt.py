"""Rehearsals preempted once a checkpoint generation is complete, not at a fixed time: a fixed `--preempt-at`
is eaten by start-up on a loaded machine, and an eviction before the first generation proves nothing about
restoring one. The eviction is the executor's own (`RehearsalExecutor.preempt`, as at a --preempt-at time)."""
from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

from mpibatch.checkpoints import running_store
from mpibatch.executors.checkpoint_sync import newest_complete
from mpibatch.executors.rehearsal import RehearsalExecutor
from mpibatch.results import TaskResult
from mpibatch.spec import Spec

POLL_S = 0.2
RESTORES = re.compile(r"^attempt (\d+)(?: restores generation (\d+)|: no complete generation)")


def run_preempted(ex: RehearsalExecutor, spec: Spec, times: int, timeout: float = 300) -> tuple[TaskResult,
                                                                                               list[int]]:
    """Run `spec` on `ex` (the task must checkpoint), evicting every node `times` times, each once the attempt
    running has saved a complete generation newer than the one it restored. Returns the result and, for each
    eviction, the newest complete generation seen just before it (the next attempt restores that one or,
    if one more completed meanwhile, a newer one)."""
    assert spec.task.checkpoint is not None
    restored: list[int] = []  # by attempt: the generation it restored (0: none)
    said = ex.progress

    def progress(phase: str, detail: str) -> None:
        if phase == "checkpoints" and (m := RESTORES.match(detail)):
            restored.append(int(m.group(2) or 0))
        if said:
            said(phase, detail)

    ex.progress = progress
    store = running_store(ex.runs_dir, spec.job.id, spec.task.id)
    seen: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(lambda: ex.submit(spec).result())
        deadline = time.monotonic() + timeout  # bounded: the run's own max_wall_clock ends it sooner
        for k in range(times):
            while not run.done() and time.monotonic() < deadline:
                newest = newest_complete(store, spec.task.id, spec.task.instances, spec.task.checkpoint) \
                    if store.is_dir() and len(restored) == k + 1 else None
                if newest is not None and newest > restored[k]:
                    seen.append(newest)
                    ex.preempt()
                    break
                time.sleep(POLL_S)
            else:
                raise AssertionError(f"preemption {k + 1}: the attempt saved no new generation "
                                     f"(restored by each attempt: {restored}); the run: "
                                     f"{run.result(timeout) if run.done() else 'still running'}")
        return run.result(timeout), seen
