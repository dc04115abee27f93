"""RehearsalExecutor: an Executor that runs the multi-instance lifecycle (executors/lifecycle.py) itself, over
the Transport a subclass gives it (local namespaces, SSH hosts)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .. import checkpoints, preemption
from ..launchers.protocol import CHECKPOINT_STORE_VAR
from ..plan import TaskPlan, plan_from_rendered
from ..results import TaskResult
from ..spec import Spec
from . import Executor, Progress, TaskHandle, rendered
from .collection import check_runs_dir
from .lifecycle import RELEASE_TIMEOUT_S, Lifecycle
from .resource_files import check_local_sources
from .transport import Transport

if TYPE_CHECKING:
    from ..render import Rendered


class RehearsalExecutor(Executor):
    """An executor that runs the lifecycle itself over a Transport: when `submit` returns, the task
    has ended and every instance's outputs are in `runs_dir`."""

    release_timeout_s: float = RELEASE_TIMEOUT_S  # an instance may lower it (tests do)
    preempt_at: tuple[int, ...] = ()  # --preempt-at: seconds after the start when every node is evicted
    _preemptions: preemption.Preemptions | None = None  # the running task's
    resume_from: Path | None = None  # --resume-from: a checkpoint store whose newest complete generation starts it

    def __init__(self, *, runs_dir: str | Path = "mpibatch-runs", progress: Progress | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.progress = progress

    def submit(self, task: Rendered | Spec) -> TaskHandle:
        result = self.run_plan(plan_from_rendered(rendered(task)))
        return TaskHandle(self, result.job_id, result.task_id, result)

    def run_plan(self, plan: TaskPlan) -> TaskResult:
        """Run a plan (a rendered spec, or a task as the Batch REST API describes it)."""
        check_local_sources(plan)  # before the transport exists: a bad source leaves nothing behind
        self.preflight(plan)
        check_runs_dir(self.runs_dir)  # an unusable runs dir is bad input: found before any node exists
        store = checkpoints.open_run_store(self.runs_dir, plan, self.resume_from, self.progress) \
            if plan.checkpoint else None
        transport, base_env = self.transport_for(plan)
        self._preemptions = preemption.Preemptions(self.preempt_at)
        direct = store is not None and self.nodes_see_runs_dir
        store_env = {CHECKPOINT_STORE_VAR: str(store.resolve())} if store and direct else {}
        result = Lifecycle(plan, transport, base_env=base_env, runs_dir=self.runs_dir, progress=self.progress,
                           account=self.name, release_timeout_s=self.release_timeout_s, preemptions=self._preemptions,
                           checkpoint_env=store_env, checkpoint_sync=None if direct else store).run()
        if store:
            result.checkpoints_dir = str(checkpoints.close_store(store, result.output_dir))
        return result

    def preempt(self) -> None:
        """Evict every node of the running task now, as at a --preempt-at time (call it from another thread
        while `submit` runs: e.g. once a checkpoint generation is complete)."""
        if self._preemptions is None:
            raise RuntimeError("no task has started: nothing to preempt")
        self._preemptions.ask()

    # True: the nodes reach this machine's runs directory at the same path and write the store directly;
    # else the lifecycle pulls each node's own store into it (checkpoint_sync.py).
    nodes_see_runs_dir = False

    def preflight(self, plan: TaskPlan) -> None:
        """The executor's own checks of bad input, before anything (even the runs directory) is made."""

    def transport_for(self, plan: TaskPlan) -> tuple[Transport, dict[str, str]]:
        """A fresh Transport for one run, and the environment every node process starts from."""
        raise NotImplementedError
