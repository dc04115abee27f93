"""The multi-instance task lifecycle, in one place for every rehearsal executor (docs/batch-semantics.md).
A Transport gives it nodes, files and processes (local namespaces, or SSH hosts); RehearsalExecutor
(executors/rehearsal.py) turns a Transport into an Executor.

Order: job preparation once per node -> common files to every node, task files to the primary ->
coordination on all nodes at once -> the application on the primary only after every
coordination succeeded -> when the primary exits, subtasks are ended; its exit code is the
task's -> retries re-run the lifecycle -> outputs collected -> job release on every node.
"""
from __future__ import annotations

import errno
import logging
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .. import checkpoints, preemption
from ..durations import human
from ..launchers.protocol import CHECKPOINT_STORE_VAR, WORKITEMS, NodeLayout
from ..nodeenv import batch_env
from ..plan import TaskPlan
from ..results import Failure, InstanceResult, TaskResult, reason_tail
from ..spec import FileRef
from . import Progress, leftovers
from .checkpoint_sync import NodeStores, newest_complete
from .collection import collect_instances
from .resource_files import DownloadTimeout, FilesError, download
from .transport import Node, Proc, Transport, start_on_all, wait_any

log = logging.getLogger(__name__)
POLL_S = 0.05
LOST_GRACE_S = 0.5
# Batch stops a job release task after 15 minutes and refuses a longer limit (docs/batch-semantics.md#lifecycle).
RELEASE_TIMEOUT_S = 15 * 60.0
# Exit code 127 is the shell's "command not found": on a rehearsal node, most often the MPI launcher.
NOT_FOUND_HINT = (": code 127 means a command was not found on the node - most likely the MPI launcher "
                  "(mpirun/mpiexec) or the program is not on the node's PATH; put its directory first with "
                  "--remote-path-prepend DIR (SSH) or task.environment.PATH")


class _Preempted(Exception):
    """Every node of the task was evicted (--preempt-at): the task goes back to the queue."""


class _Failed(Exception):
    def __init__(self, failure: Failure, timed_out: bool = False):
        self.failure, self.timed_out = failure, timed_out


class Lifecycle:
    def __init__(self, plan: TaskPlan, transport: Transport, *, base_env: dict[str, str],
                 runs_dir: Path, progress: Progress | None = None, account: str = "local",
                 release_timeout_s: float = RELEASE_TIMEOUT_S, preemptions: preemption.Preemptions | None = None,
                 checkpoint_env: dict[str, str] | None = None, checkpoint_sync: Path | None = None) -> None:
        self.plan, self.t = plan, transport
        self.preemptions = preemptions or preemption.Preemptions()
        self.checkpoint_env = checkpoint_env or {}  # where the nodes' checkpoint store is (empty: none)
        # Nodes that do not see the run's store (SSH): the executor pulls their generations into it.
        self.sync = NodeStores(transport, checkpoint_sync, plan.task_id, plan.instances, plan.checkpoint) \
            if checkpoint_sync is not None and plan.checkpoint is not None else None
        self.release_timeout_s = release_timeout_s
        self.base_env = base_env
        self.runs_dir = Path(runs_dir)
        self.progress = progress or (lambda phase, detail: None)
        self.account = account
        self.t0 = time.monotonic()
        self.deadline = self.t0 + plan.max_wall_clock if plan.max_wall_clock else None

    # ------------------------------------------------------------------ helpers
    def _say(self, phase: str, detail: str = "") -> None:
        log.info("%s %s", phase, detail)
        self.progress(phase, detail)

    def _env(self, node: Node, hosts: list[str], layout: NodeLayout, task_dir: str | None = None) -> dict[str, str]:
        batch = batch_env(layout, hosts=hosts, index=node.index, node_id=node.node_id, pool_id=self.plan.pool_id,
                          account=self.account, task_dir=task_dir)
        # Batch's own variables last: nothing overrides them (the spec refuses AZ_BATCH_* names).
        store = self.sync.env(node) if self.sync else self.checkpoint_env
        return {**self.base_env, **self.plan.environment, **store, **batch}

    def _wait(self, procs: dict[int, Proc], phase: str, nodes: list[Node], watch: Sequence[Node] = (),
              limit: tuple[float, str] | None = None) -> dict[int, int]:
        """Wait for every process; fail on timeout, lost node; returns exit codes by instance.
        `limit` is (deadline, what sets it); by default the task's max_wall_clock."""
        if limit is None and self.deadline is not None:
            limit = (self.deadline, f"max_wall_clock {human(self.plan.max_wall_clock or 0)}")
        codes: dict[int, int] = {}
        while len(codes) < len(procs):
            for i, p in procs.items():
                if i not in codes and (rc := p.poll()) is not None:
                    if rc != 0:  # a process that "exited" because its node went away: say so, naming the node
                        self._fail_if_lost(nodes[i], phase)
                    codes[i] = rc
                    if phase == "coordination" and tenth_passed(len(codes), len(procs)):
                        self._say("coordination", f"{len(codes)}/{len(procs)} done")
            for n in watch:
                if n.index not in procs or n.index in codes:
                    self._fail_if_lost(n, phase)
            if phase in ("coordination", "running") and self.preemptions.take(time.monotonic() - self.t0):
                raise _Preempted
            if self.sync and phase == "running":
                self.sync.pull(nodes)
            if limit and time.monotonic() > limit[0] and len(codes) < len(procs):
                raise _Failed(Failure("timeout", f"{limit[1]} exceeded during {phase}; every process was ended"),
                              timed_out=True)
            if len(codes) < len(procs):
                # Lost nodes, limits and preemption are looked at between: at most POLL_S.
                wait_any([p for i, p in procs.items() if i not in codes], POLL_S, getattr(self.t, "poll_s", POLL_S))
        if watch and any(codes.values()):
            self._settle(watch, phase)
        return codes

    def _fail_if_lost(self, n: Node, phase: str) -> None:
        if why := self.t.lost(n):
            raise _Failed(Failure(phase, f"instance {n.index} ({n.host}) was lost after "
                                  f"{time.monotonic() - self.t0:.1f}s: {why}", n.index))

    def _settle(self, watch: Sequence[Node], phase: str) -> None:
        """A process failed by a lost node can be seen ending before the node is seen gone (waits wake at once):
        look again for LOST_GRACE_S, so the failure names the lost node, not the exit code it caused."""
        end = time.monotonic() + LOST_GRACE_S
        while time.monotonic() < end:  # bounded: LOST_GRACE_S
            for n in watch:
                self._fail_if_lost(n, phase)
            time.sleep(0.02)


    # ------------------------------------------------------------------ phases
    def run(self) -> TaskResult:
        plan = self.plan
        result = TaskResult(job_id=plan.job_id, task_id=plan.task_id, executor=self.t.name, state="running",
                            exit_code=None)
        # Made by the first download only: a run without URLs (or a killed one) leaves nothing in /tmp.
        cache = leftovers.downloads_dir()
        leftovers.sweep_dead_downloads()  # a dead run's downloads (kill -9) go; a live run's stay
        nodes: list[Node] = []
        ran: list[Node] = []
        try:
            self._say("starting", f"{plan.instances} nodes")
            nodes = self.t.open(plan.instances)
            hosts = [n.host for n in nodes]
            layouts = [NodeLayout(n.root, plan.job_id, plan.task_id) for n in nodes]
            result.instances = [InstanceResult(index=n.index, node_id=n.node_id, host=n.host) for n in nodes]
            try:
                self._prepare_nodes(nodes, hosts, layouts, cache)
                ran = nodes
                self._attempts(nodes, hosts, layouts, cache, result)
            except _Failed as f:
                result.failure, result.timed_out = f.failure, f.timed_out
            except KeyboardInterrupt:
                result.failure = Failure("interrupted", "interrupted by the user; every process was ended")
            self.t.end_processes()
            task_started = bool(ran)
            collect_instances(self.t, nodes, layouts, result, runs_dir=self.runs_dir, job_id=plan.job_id,
                              task_id=plan.task_id, say=self._say, task_started=task_started,
                              patterns=[o.pattern for o in plan.outputs] if task_started else [])
            self._release(ran, hosts, layouts)
        finally:
            try:
                self.t.end_processes()
            finally:
                self.t.close()
                shutil.rmtree(cache, ignore_errors=True)
        # As on Batch: a task whose application ran to an exit code completed (with that code); one
        # that never got there (coordination, files, timeout, interrupt) failed.
        result.state = "completed" if result.exit_code is not None else "failed"
        result.elapsed_s = round(time.monotonic() - self.t0, 3)
        return result

    def _attempts(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout], cache: Path,
                  result: TaskResult) -> None:
        """Attempts until one ends: a failure is retried up to max_retries times; a preemption requeues the
        task on fresh nodes without counting as a retry (Batch's requeueCount, not retryCount)."""
        retries = 0
        while True:  # bounded: each pass uses up a retry or one of the finite preemption times
            result.attempts = retries + 1
            try:
                self._restoring(nodes, result)
                self._attempt(nodes, hosts, layouts, cache, result)
                if self.sync:
                    self.sync.pull(nodes, force=True)
                return
            except _Preempted:
                self._evict(nodes, layouts)
                result.requeues += 1
                self._say("preempted", f"every node evicted after {time.monotonic() - self.t0:.1f}s; "
                                       f"requeued ({result.requeues}) on fresh nodes")
                self._prepare_nodes(nodes, hosts, layouts, cache)
            except _Failed as f:
                self.t.end_processes()
                if f.timed_out or retries == self.plan.max_retries:
                    raise
                retries += 1
                self._say("retrying", f"attempt {retries + 1}/{self.plan.max_retries + 1}: {f.failure.reason}")

    def _restoring(self, nodes: list[Node], result: TaskResult) -> None:
        """Which generation this attempt restores (SSH nodes get it pushed first): said, and kept in the result."""
        c, direct = self.plan.checkpoint, self.checkpoint_env.get(CHECKPOINT_STORE_VAR)
        if c is None or not (self.sync or direct):
            return
        g = self.sync.push(nodes) if self.sync else newest_complete(Path(direct or ""), self.plan.task_id,
                                                                     self.plan.instances, c)
        result.restored.append(g)
        self._say("checkpoints", checkpoints.restore_message(len(result.restored), g))

    def _evict(self, nodes: list[Node], layouts: list[NodeLayout]) -> None:
        """As a VM is evicted: every process killed at once (no persist step), the node's directories gone."""
        self.t.end_processes()
        for n, lay in zip(nodes, layouts):
            batch_dirs = [lay.shared, lay.startup, f"{lay.root}/{WORKITEMS}"]
            self.t.make_dirs(n, [lay.shared, lay.startup], clean=batch_dirs)

    def _start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str, stderr: str,
               phase: str) -> Proc:
        try:
            return self.t.start(node, command_line, env, cwd, stdout, stderr)
        except OSError as e:
            if e.errno != errno.E2BIG:
                raise
            size = len(command_line) + sum(len(k) + len(v) + 2 for k, v in env.items())
            raise _Failed(Failure(phase, f"instance {node.index}: the command line and environment ({size} bytes) "
                                  "are too big for exec (E2BIG); shrink the environment the run starts from",
                                  node.index)) from None

    def _node_task(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout], name: str,
                   command_line: str, files: Sequence[FileRef], cache: Path,
                   limit: tuple[float, str] | None = None) -> dict[int, int]:
        for n, lay in zip(nodes, layouts):
            tdir = lay.node_task_dir(name)
            self.t.make_dirs(n, [f"{tdir}/wd"], clean=[tdir])
            for ref in files:
                self.t.put(n, self._local(ref, cache), f"{tdir}/wd/{ref.path}")

        by_index = {n.index: lay for n, lay in zip(nodes, layouts)}

        def start(n: Node) -> Proc:
            tdir = by_index[n.index].node_task_dir(name)
            return self._start(n, command_line, self._env(n, hosts, by_index[n.index], tdir), f"{tdir}/wd",
                               f"{tdir}/stdout.txt", f"{tdir}/stderr.txt", name)
        return self._wait(start_on_all(nodes, start), name, nodes, limit=limit)

    def _local(self, ref: FileRef, cache: Path) -> Path:
        try:
            return download(ref, cache, self.deadline) if ref.is_url else Path(ref.source)
        except DownloadTimeout as e:
            raise _Failed(Failure("timeout", f"max_wall_clock {human(self.plan.max_wall_clock or 0)} exceeded: {e}; "
                                  "every process was ended"), timed_out=True) from None
        except FilesError as e:
            raise _Failed(Failure("files", str(e))) from None

    def _prepare_nodes(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout], cache: Path) -> None:
        for n, lay in zip(nodes, layouts):
            self.t.make_dirs(n, [lay.shared, lay.startup])
        if self.plan.preparation_command_line:
            self._say("preparation", f"job preparation task on {len(nodes)} nodes")
            codes = self._node_task(nodes, hosts, layouts, "jobpreparation", self.plan.preparation_command_line,
                                    self.plan.preparation_files, cache)
            bad = {i: c for i, c in codes.items() if c != 0}
            if bad:
                i = min(bad)
                err = self._stderr_tail(nodes[i], f"{layouts[i].node_task_dir('jobpreparation')}/stderr.txt", 500)
                raise _Failed(Failure("preparation", f"job preparation task exited with code {bad[i]} on "
                                      f"instance {i} ({nodes[i].host}): {err}", i))

    def _stderr_tail(self, node: Node, path: str, limit: int) -> str:
        """The end of a node's stderr for a failure reason, cut at a word (one more byte read tells a cut)."""
        text = self.t.read_tail(node, path, limit + 1)
        return reason_tail(text, limit, cut=len(text) > limit) or "(stderr empty)"

    def _release(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout]) -> None:
        if not self.plan.release_command_line or not nodes:
            return
        # Its own limit, not the task's max_wall_clock (the task has ended); Batch does not fail the
        # task for its job release task, and neither does a timeout or Ctrl-C here.
        limit = (time.monotonic() + self.release_timeout_s,
                 f"the job release task's limit {human(int(self.release_timeout_s))}")
        try:
            self._say("release", f"job release task on {len(nodes)} nodes")
            codes = self._node_task(nodes, hosts, layouts, "jobrelease", self.plan.release_command_line, (), Path("."),
                                    limit=limit)
        except _Failed as f:
            self.t.end_processes()
            log.warning("job release task: %s", f.failure.reason)
            return
        except KeyboardInterrupt:
            self.t.end_processes()
            log.warning("job release task interrupted by the user and ended; the task's outcome stands")
            return
        for i, c in sorted(codes.items()):
            if c != 0:
                n = next(nd for nd in nodes if nd.index == i)
                err = self._stderr_tail(n, f"{layouts[i].node_task_dir('jobrelease')}/stderr.txt", 500)
                log.warning("job release task exited with code %s on instance %s (%s): %s", c, i, n.host, err)

    def _attempt(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout], cache: Path,
                 result: TaskResult) -> None:
        plan = self.plan
        for r in result.instances:
            r.coordination_exit_code = r.application_exit_code = None
        result.exit_code = None
        # A retry starts from fresh task directories.
        self._say("files", f"{len(plan.common_files)} common files to {len(nodes)} nodes, "
                           f"{len(plan.files)} to the primary")
        with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
            list(pool.map(lambda nl: self.t.make_dirs(nl[0], nl[1].dirs()[2:], clean=[nl[1].task_dir]),
                          zip(nodes, layouts)))
            copies = [(n, self._local(ref, cache), f"{lay.task_shared_dir}/{ref.path}")
                      for n, lay in zip(nodes, layouts) for ref in plan.common_files]
            copies += [(nodes[0], self._local(ref, cache), f"{layouts[0].working_dir}/{ref.path}")
                       for ref in plan.files]
            list(pool.map(lambda c: self.t.put(*c), copies))

        self._say("coordination", f"0/{len(nodes)}")
        by_index = {n.index: lay for n, lay in zip(nodes, layouts)}

        def coordinate(n: Node) -> Proc:
            lay = by_index[n.index]
            return self._start(n, plan.coordination_command_line, self._env(n, hosts, lay), lay.working_dir,
                               f"{lay.task_dir}/stdout.txt", f"{lay.task_dir}/stderr.txt", "coordination")
        procs = start_on_all(nodes, coordinate)
        codes = self._wait(procs, "coordination", nodes, watch=nodes)
        for i, c in codes.items():
            result.instances[i].coordination_exit_code = c
        bad = sorted(i for i, c in codes.items() if c != 0)
        if bad:
            i = bad[0]
            err = self._stderr_tail(nodes[i], f"{layouts[i].task_dir}/stderr.txt", 800)
            raise _Failed(Failure("coordination", f"coordination command exited with code {codes[i]} on instance {i} "
                                  f"({nodes[i].host}); the application was not started: {err}", i))

        self._say("running", f"application on the primary ({nodes[0].host})")
        lay0 = layouts[0]
        app = self._start(nodes[0], plan.command_line, self._env(nodes[0], hosts, lay0), lay0.working_dir,
                          f"{lay0.task_dir}/stdout.txt", f"{lay0.task_dir}/stderr.txt", "running")
        rc = self._wait({0: app}, "running", nodes, watch=nodes[1:])[0]
        result.instances[0].application_exit_code = rc
        result.exit_code = rc
        if rc != 0:
            raise _Failed(Failure("running", f"the application exited with code {rc} on the primary"
                                  + (NOT_FOUND_HINT if rc == 127 else ""), 0))


def tenth_passed(done: int, total: int) -> bool:
    """Whether `done` of `total` is worth a progress line: every one up to 10, then each tenth and the last
    (64 nodes: 10 lines, not 64). Pure."""
    return done == total or done * 10 // total != (done - 1) * 10 // total
