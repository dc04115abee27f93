"""A multi-instance task on rehearsal nodes: mpibatch's LocalExecutor runs it with every rule of the
multi-instance lifecycle (common files on every node, coordination everywhere, the application on the
primary only, subtasks ended with it), and its launchers' remote-shell hooks in the environment let a
plain `mpiexec -hosts $AZ_BATCH_HOST_LIST ...` reach every node. The pool nodes the scheduler chose are
the instances: each one's files endpoint then also serves its rehearsal node's tree."""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..executors.local import LocalExecutor, LocalTransport
from ..launchers.protocol import TASK_DIR_DEPTH, NodeLayout
from ..plan import TaskPlan
from ..spec import FileRef
from . import identity
from .errors import now_iso
from .fetch import fetch, left
from .multiuser import NodeUserTransport
from .nodes import env_settings
from .state import key, set_state

if TYPE_CHECKING:
    from .core import Emulator

log = logging.getLogger(__name__)


class _Executor(LocalExecutor):
    """The local executor, its nodes kept after the run (the node files endpoint serves them) and carrying
    the pool nodes' ids as AZ_BATCH_NODE_ID (as the subtask list names them); hostnames stay node-0, ..."""

    def __init__(self, node_ids: list[str], user: identity.TaskUser | None, **kwargs: Any) -> None:
        super().__init__(keep_nodes=True, **kwargs)
        self.node_ids = node_ids
        self.user = user  # None: the emulator's own user (it is not root)

    def make_transport(self, **kwargs: Any) -> LocalTransport:
        return super().make_transport(**kwargs) if self.user is None else NodeUserTransport(self.user, **kwargs)

    def transport_for(self, plan: TaskPlan) -> tuple[LocalTransport, dict[str, str]]:
        t, env = super().transport_for(plan)
        opened = t.open

        def open_with_pool_ids(n: int) -> list[Any]:
            nodes = opened(n)
            for node, node_id in zip(nodes, self.node_ids):
                node.node_id = node_id
            t.opened_nodes = nodes  # type: ignore[attr-defined]
            return nodes

        restart = t._start_nodes

        def restart_with_hostnames() -> None:  # a retry's fresh node inits: hostnames stay node-<instance>
            ids = [node.node_id for node in t.nodes]
            for node in t.nodes:
                node.node_id = f"node-{node.index}"
            try:
                restart()
            finally:
                for node, node_id in zip(t.nodes, ids):
                    node.node_id = node_id

        t.open = open_with_pool_ids  # type: ignore[method-assign]
        t._start_nodes = restart_with_hostnames  # type: ignore[method-assign]
        return t, env


def _stage(emu: Emulator, owner: str, items: list[dict[str, Any]] | None, dest: Path,
           wall: float | None) -> tuple[tuple[FileRef, ...], dict[str, Any] | None]:
    """Fetch resource files into `dest` as a node would (within the wall clock, each with its fileMode), then
    name them as local sources: the rehearsal nodes get copies with the same permission bits."""
    if not items:
        return (), None
    failure = fetch(emu.procs, owner, items, emu.storage, dest, wall)
    if failure:
        return (), failure
    found = sorted(p for p in dest.rglob("*") if p.is_file() and not p.is_symlink())
    return tuple(FileRef(source=str(p), path=p.relative_to(dest).as_posix()) for p in found), None


class MultiInstanceRun:
    def __init__(self, emu: Emulator, task: dict[str, Any], nodes: list[dict[str, Any]]) -> None:
        self.emu, self.t, self.nodes = emu, task, nodes
        self.executor: _Executor | None = None
        self.ended = False
        self.moved_from = self.moved_to = ""

    def end(self) -> None:
        self.ended = True
        transport = self.executor.transport if self.executor else None
        if transport is not None:
            transport.end_processes()

    def _subtasks(self, state: str) -> list[dict[str, Any]]:
        return [{"id": i, "state": state, "startTime": self.t["executionInfo"].get("startTime")}
                for i in range(1, len(self.nodes))]

    def run(self) -> tuple[int | None, dict[str, Any] | None, Path | None]:
        emu, t = self.emu, self.t
        job = emu.store.jobs[key(t["_job"])]
        mis = t["multiInstanceSettings"]
        requeues = t["executionInfo"].get("requeueCount", 0)  # each run after a preemption keeps its own tree
        run_dir = emu.work_dir / "runs" / (f"{t['_job']}-{t['id']}-{t['_seq']}" + (f"-r{requeues}" if requeues else ""))
        wall, started = emu.seconds(t["constraints"].get("maxWallClockTime")), time.monotonic()
        staged: list[tuple[FileRef, ...]] = []
        for name, items in (("common", mis.get("commonResourceFiles")), ("files", t.get("resourceFiles"))):
            refs, failure = _stage(emu, f"task:{key(t['_job'], t['id'])}", items, run_dir / "staged" / name,
                                   left(wall, started))
            if failure:
                return None, failure, None
            staged.append(refs)
        rest = left(wall, started)
        plan = TaskPlan(
            job_id=t["_job"], task_id=t["id"], instances=len(self.nodes), command_line=t["commandLine"],
            coordination_command_line=mis.get("coordinationCommandLine") or "/bin/true",
            common_files=staged[0], files=staged[1],
            environment={**self._spot_env(), **env_settings(job.get("commonEnvironmentSettings")),
                         **env_settings(t.get("environmentSettings"))},
            max_wall_clock=None if rest is None else max(1, _whole_seconds(rest) or 0),
            max_retries=max(0, t["constraints"].get("maxTaskRetryCount") or 0), pool_id=t["_pool"])

        def progress(phase: str, detail: str) -> None:
            if phase == "coordination" and not t.get("_subtasks"):
                with emu.store.lock:
                    t["_subtasks"] = self._subtasks("running")
                    live = self._live_primary_dir()
                    if live is not None and not t.get("_task_dir"):  # the task files endpoint serves it live
                        t["_task_dir"] = str(live)
            if phase == "retrying":  # Batch counts a retry when it starts: a client polling sees it then
                with emu.store.lock:
                    t["executionInfo"]["retryCount"] = t["executionInfo"].get("retryCount", 0) + 1
                emu.store.mark(("tasks", t))
            if phase == "starting":
                with emu.store.lock:
                    set_state(t, "running")
                    t["executionInfo"]["startTime"] = now_iso()
                emu.store.mark(("tasks", t))
                emu.store.flush()
                emu.event(f"task {t['_job']}/{t['id']}: running on {len(self.nodes)} nodes")

        # Every instance runs as the primary's node user (multiuser.py), with the task's userIdentity.
        user = identity.for_task(self.nodes[0], t.get("userIdentity"), emu.store.pools.get(key(t["_pool"])))
        self.executor = _Executor([n["id"] for n in self.nodes], user, base_env=emu.image,
                                  runs_dir=run_dir / "collected", progress=progress)
        if self.ended:
            return None, None, None
        try:
            result = self.executor.run_plan(plan)
        finally:
            self._keep(run_dir)
            shutil.rmtree(run_dir / "staged", ignore_errors=True)  # every node has its copies
        return self._report(result)

    def _spot_env(self) -> dict[str, str]:
        """Instances on Spot nodes say so; the rehearsal nodes say "true" otherwise (one value for all the
        instances: a task on dedicated and Spot nodes at once sees "true" everywhere)."""
        spot = all(not n.get("isDedicated", True) for n in self.nodes)
        return {"AZ_BATCH_NODE_IS_DEDICATED": "false"} if spot else {}

    def _live_primary_dir(self) -> Path | None:
        """The primary's task directory while it runs (as Batch serves a running task's files); replaced
        by the kept copy when the run ends."""
        tr = self.executor.transport if self.executor else None
        nodes = getattr(tr, "opened_nodes", None)
        if tr is None or not nodes:
            return None
        return tr.host_path(nodes[0], NodeLayout(nodes[0].root, self.t["_job"], self.t["id"]).task_dir)

    def _keep(self, run_dir: Path) -> None:
        """Move the kept node trees under the emulator's work directory (its state dir, when given), so
        they live and go with it; every process of the run has ended by now."""
        t = self.executor.transport if self.executor else None
        if t is None or not Path(t.workdir).exists():
            return
        self.moved_from, self.moved_to = str(t.workdir), str(run_dir / "nodes")
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.move(self.moved_from, self.moved_to)

    def _report(self, result: Any) -> tuple[int | None, dict[str, Any] | None, Path | None]:
        emu, t = self.emu, self.t
        subtasks, primary_dir = [], None
        for r in result.instances:
            if not r.task_dir:
                continue
            pool_node = self.nodes[r.index]
            task_dir = Path(r.task_dir.replace(self.moved_from, self.moved_to, 1) if self.moved_from else r.task_dir)
            root = task_dir.parents[TASK_DIR_DEPTH - 1]  # the node root (protocol.task_dir_rel)
            rel = task_dir.relative_to(root).as_posix()
            with emu.store.lock:
                roots = pool_node.setdefault("_extra_roots", [])
                if str(root) not in roots:
                    roots.append(str(root))
            info = {"affinityId": pool_node["affinityId"], "nodeUrl": pool_node["url"], "poolId": t["_pool"],
                    "nodeId": pool_node["id"], "taskRootDirectory": rel,
                    "taskRootDirectoryUrl": f"{pool_node['url']}/files/{rel}"}
            if r.index == 0:
                primary_dir = task_dir
                with emu.store.lock:
                    t["nodeInfo"], t["_task_dir"] = info, str(task_dir)
                continue
            code = r.coordination_exit_code
            sub = {"id": r.index, "nodeInfo": info, "state": "completed",
                   "startTime": t["executionInfo"].get("startTime"), "endTime": now_iso(),
                   "result": "success" if code == 0 else "failure"}
            if code is not None:
                sub["exitCode"] = code
            subtasks.append(sub)
        with emu.store.lock:
            t["_subtasks"] = sorted(subtasks, key=lambda s: s["id"])
            t["executionInfo"]["retryCount"] = max(0, result.attempts - 1)
        fail = result.failure
        failure = None
        if fail is not None and fail.phase == "files":
            failure = {"category": "UserError", "code": "BlobAccessDenied" if "HTTP 403" in fail.reason
                       else "ResourceFileDownloadFailed", "message": fail.reason}
        elif fail is not None and result.exit_code is None:
            failure = {"category": "UserError", "code": "TaskEnded" if fail.phase == "timeout" else
                       "CommandLaunchFailed" if fail.phase == "coordination" else "Unknown", "message": fail.reason}
        return result.exit_code, failure, primary_dir


def _whole_seconds(seconds: float | None) -> int | None:
    """The rehearsal lifecycle counts its wall clock in whole seconds (rounded up: never cut a task short)."""
    return None if seconds is None else int(-(-seconds // 1))
