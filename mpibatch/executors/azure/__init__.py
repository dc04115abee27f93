"""Azure executor: the rendered multi-instance task, sent to an Azure Batch account (azure-batch 15.1).

``submit`` GETs the pool and refuses (SpecError, nothing created) when the task could never start
there; reaches storage before creating anything; creates the job if missing (with the spec's
preparation and release tasks); uploads inputs and mpibatch's node-side launchers once to the job's
container; creates the task with read-only SAS URLs for its resource files, a container SAS for the
primary's Batch output files and a write-only SAS through which every node persists its own outputs
(``launchers/persist.py``); and returns a `TaskHandle` without waiting. ``wait`` reports task and
subtask states as they change; ``collect`` brings back what every instance produced into
``<runs_dir>/<job>/<task>/<instance>/``, the same layout and TaskResult as the local executor.

The modules, one seam each: ``client`` (credentials, SDK calls, error mapping), ``pools``, ``submit``
(uploads, job, tasks, task collections), ``watch`` (polling, Batch task -> TaskResult), ``collect``,
``storage`` (blob storage and SAS), ``storage_account`` (the storage account and its credentials). Only this
package imports the Azure SDK.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ... import poolcheck, poolfacts
from ...redaction import redact
from ...render import Rendered
from ...results import TaskResult
from ...spec import Spec
from ...transfers import Transfers
from .. import Executor, Progress, TaskHandle, rendered
from . import checkpoints, logs, pools, watch
from . import collect as collecting
from . import submit as submission
from .client import Batch, BatchAccount
from .storage import Storage
from .submit import PreparedTasks, SubmitManyResult

log = logging.getLogger(__name__)


class AzureExecutor(Executor):
    """Runs rendered tasks as Batch multi-instance tasks. `client`/`storage` are built from the
    environment when not given."""

    name = "azure"

    def __init__(self, client: Any = None, storage: Storage | None = None, *, account: BatchAccount | None = None,
                 env: Mapping[str, str] | None = None, runs_dir: str | Path = "mpibatch-runs",
                 progress: Progress | None = None, poll_interval: float = 1.0, max_poll_interval: float = 5.0,
                 client_kwargs: Mapping[str, Any] | None = None, submit_threads: int = 4,
                 transfers: Transfers | None = None) -> None:
        self.batch = Batch(client, account=account, env=env, client_kwargs=client_kwargs)
        self._env = dict(env) if env is not None else None
        self._storage = storage
        self.runs_dir = Path(runs_dir)
        self.progress = progress
        self.poll_interval = max(0.05, poll_interval)
        self.max_poll_interval = max(self.poll_interval, max_poll_interval)
        self.submit_threads = max(1, submit_threads)
        self.transfers = transfers  # told about input uploads and collection downloads (mpibatch.transfers)

    @property
    def client(self) -> Any:
        return self.batch.client

    @property
    def account(self) -> BatchAccount:
        return self.batch.account

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            self._storage = Storage.from_env(self._env)
        return self._storage

    def _say(self, phase: str, detail: str) -> None:
        log.info("%s: %s", phase, redact(detail, self.batch.key))
        if self.progress is not None:
            self.progress(phase, detail)

    # ------------------------------------------------------------------ the Executor interface
    def submit(self, task: Rendered | Spec, *, resume_from: str | None = None) -> TaskHandle:
        """Check, upload, create the job (if missing) and the task; return without waiting. `resume_from`
        (JOB/TASK): the new task restores that task's newest complete checkpoint generation."""
        prepared = submission.prepare(self.batch, self.storage, [rendered(task)], self._say,
                                       transfers=self.transfers, resume_from=resume_from)
        submission.create_task(self.batch, prepared, self._say)
        return TaskHandle(self, prepared.job_id, prepared.rendered[0].spec.task.id)

    def status(self, job_id: str, task_id: str) -> TaskResult:
        """The task's state, exit code, failure and instances - without downloading anything."""
        return watch.status(self.batch, job_id, task_id, self._restores(job_id))

    def wait(self, job_id: str, task_id: str, *, timeout: float | None = None) -> TaskResult:
        """Poll until the task completes, reporting progress; InfraError after `timeout` seconds."""
        return watch.wait(self.batch, job_id, task_id, self._say, timeout=timeout, poll_interval=self.poll_interval,
                          max_poll_interval=self.max_poll_interval, restores=self._restores(job_id))

    def _restores(self, job_id: str) -> watch.Restores | None:
        """What each attempt of a task restored (read from storage; none when no storage is configured)."""
        storage = self._configured_storage()
        seen: dict[str, int | None] = {}
        return None if storage is None else lambda task: checkpoints.restored(storage, job_id, task, seen)

    def _configured_storage(self) -> Storage | None:
        import os

        env = self._env if self._env is not None else os.environ
        configured = self._storage is not None or any(
            env.get(k, "").strip() for k in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT"))
        return self.storage if configured else None

    def collect(self, job_id: str, task_id: str, *, to: str | Path | None = None) -> TaskResult:
        """Bring back every instance's logs and outputs into ``<to or runs_dir>/<job>/<task>/<instance>/``."""
        return collecting.collect(self.batch, self.storage, job_id, task_id, Path(to) if to else self.runs_dir,
                                  self._say, transfers=self.transfers)

    def read_log(self, job_id: str, task_id: str, instance: int = 0, stream: str = "stdout",
                 offset: int = 0) -> tuple[bytes, int, bool]:
        """Instance `instance`'s stdout or stderr from byte `offset`, at most a few MiB a call:
        (data, next offset, done). The tracked/persisted copy in storage if there is one, else the Batch
        file API in byte ranges. `done`: the task had completed and the end of the log was reached. A
        negative `offset` reads from -offset bytes before the end (a tail)."""
        storage = self._configured_storage()  # no storage: the Batch file API alone
        return logs.read_log(self.batch, storage, job_id, task_id, instance, stream, offset)

    # ------------------------------------------------------------------ Batch beyond one task
    def submit_many(self, items: Iterable[Spec | Rendered], *, threads: int | None = None) -> SubmitManyResult:
        """Submit many tasks of one job (a parameter sweep): checks and uploads once, then the task
        collection endpoint in chunks of at most 100 tasks and under 1 MB, a few requests at a time."""
        prepared = self.prepare_tasks(items)
        return self.add_tasks(prepared.job_id, prepared.tasks, threads=threads)

    def prepare_tasks(self, items: Iterable[Spec | Rendered]) -> PreparedTasks:
        """The checks and uploads of a submission, and the job (created if missing): task payloads
        ready for `add_tasks`."""
        from ...errors import SpecError

        tasks = [rendered(x) for x in items]
        if not tasks:
            raise SpecError("tasks", "nothing to submit", "give at least one spec")
        return submission.prepare(self.batch, self.storage, tasks, self._say, transfers=self.transfers)

    def add_tasks(self, job_id: str, tasks: list[Any], *, threads: int | None = None) -> SubmitManyResult:
        """Add prepared task payloads (BatchTaskCreateOptions) to a job through ``addtaskcollection``."""
        return submission.add_tasks(self.batch, job_id, tasks, self._say, threads=threads or self.submit_threads)

    def terminate_job(self, job_id: str, reason: str | None = "terminated by mpibatch", *,
                      timeout: float = 120.0) -> str:
        """Terminate the job (its running tasks end); returns the job's state afterwards."""
        return submission.terminate_job(self.batch, job_id, reason, self._say, timeout=timeout)

    def get_pool(self, pool_id: str, field: str = "job.pool") -> dict[str, Any]:
        return pools.get_pool(self.batch, pool_id, field)

    def pool_check(self, pool_id: str, spec: Spec | None = None
                   ) -> tuple[poolfacts.PoolFacts, list[poolcheck.Problem]]:
        """The pool's facts and problems: the full check with a spec, else the pool-level rules only."""
        return pools.pool_check(self.batch, pool_id, spec)

    def pool_create(self, spec: Spec, *, msmpi_installer_url: str | None = None) -> dict[str, Any]:
        """Create a pool fit for MPI from the spec's `pool:` section; returns the REST body sent."""
        return pools.pool_create(self.batch, spec, self._say, msmpi_installer_url=msmpi_installer_url)


__all__ = ["AzureExecutor", "BatchAccount", "PreparedTasks", "SubmitManyResult"]
