"""The multi-instance task lifecycle, in one place for every rehearsal executor (docs/batch-semantics.md).
A Transport gives it nodes, files and processes (local namespaces, or SSH hosts); RehearsalExecutor
turns a Transport into an Executor.

Order: job preparation once per node -> common files to every node, task files to the primary ->
coordination on all nodes at once -> the application on the primary only after every
coordination succeeded -> when the primary exits, subtasks are ended; its exit code is the
task's -> retries re-run the lifecycle -> outputs collected -> job release on every node.
"""
from __future__ import annotations

import http.client
import logging
import shlex
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, Sequence

from ..durations import human
from ..errors import InfraError, SpecError
from ..nodeenv import NodeLayout, batch_env
from ..plan import TaskPlan, plan_from_rendered
from ..redaction import redact, redact_url
from ..results import Failure, InstanceResult, TaskResult, tail
from ..spec import FileRef, Spec
from . import Executor, Progress, TaskHandle, rendered

if TYPE_CHECKING:
    from ..render import Rendered

log = logging.getLogger(__name__)
POLL_S = 0.05


@dataclass
class Node:
    index: int
    host: str  # address in AZ_BATCH_HOST_LIST
    node_id: str
    root: str  # node root directory, as the node sees it


class Proc(Protocol):
    def poll(self) -> int | None: ...
    def kill(self) -> None: ...


class Transport(Protocol):
    name: str

    def open(self, n: int) -> list[Node]: ...
    def make_dirs(self, node: Node, dirs: Sequence[str], clean: Sequence[str] = ()) -> None: ...
    def put(self, node: Node, local: Path, node_path: str) -> None: ...
    def start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str,
              stderr: str) -> Proc: ...
    def lost(self, node: Node) -> str | None:
        """Why the node is gone (host down, node killed), or None while it is alive."""
    def end_processes(self) -> None:
        """End every process the run started on every node (by process group / namespace)."""
    def read_tail(self, node: Node, path: str, limit: int) -> str: ...
    def collect(self, node: Node, node_dir: str, patterns: Sequence[str], dest: Path) -> list[str]:
        """Copy files under node_dir matching patterns into dest; return relative paths."""
    def fetch(self, node: Node, node_path: str, dest: Path) -> bool: ...
    def close(self) -> None: ...


def new_output_dir(runs_dir: Path, job_id: str, task_id: str) -> Path:
    """runs_dir/job/task, or task.2, task.3...: a second run never overwrites the first."""
    parent = Path(runs_dir) / job_id
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        d = parent / (task_id if n == 1 else f"{task_id}.{n}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
    raise InfraError(f"too many runs of {job_id}/{task_id} in {runs_dir}: clean some up")


def check_local_sources(plan: TaskPlan) -> None:
    """Bad input before anything runs: every local source must exist."""
    for where, refs in (("task.common_files", plan.common_files), ("task.files", plan.files),
                        ("job.preparation.files", plan.preparation_files)):
        for i, ref in enumerate(refs):
            if not ref.is_url and not Path(ref.source).is_file():
                raise SpecError(f"{where}[{i}].source", f"{ref.source} does not exist or is not a file",
                                "fix the path (relative paths are relative to the spec file)")


def download(ref: FileRef, cache: Path, timeout: float = 60) -> Path:
    """Fetch an http(s) source once; the error names the file and the URL without its SAS."""
    dest = cache / f"{abs(hash(ref.source))}-{Path(ref.path).name}"
    if dest.exists():
        return dest
    try:
        with urllib.request.urlopen(ref.source, timeout=timeout) as resp, open(dest, "wb") as f:
            shutil.copyfileobj(resp, f)
    except urllib.error.HTTPError as e:
        dest.unlink(missing_ok=True)
        raise _FilesError(f"resource file {ref.path}: HTTP {e.code} {redact(e.reason)} from {redact_url(ref.source)}")
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as e:  # e.g. InvalidURL
        dest.unlink(missing_ok=True)
        reason = redact(getattr(e, "reason", e))  # the exception may quote the URL, SAS included
        raise _FilesError(f"resource file {ref.path}: cannot download {redact_url(ref.source)}: {reason}")
    return dest


class _FilesError(Exception):
    pass


class _Failed(Exception):
    def __init__(self, failure: Failure, timed_out: bool = False):
        self.failure, self.timed_out = failure, timed_out


class Lifecycle:
    def __init__(self, plan: TaskPlan, transport: Transport, *, base_env: dict[str, str],
                 runs_dir: Path, progress: Progress | None = None, account: str = "local") -> None:
        self.plan, self.t = plan, transport
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
        return {**self.base_env, **self.plan.environment, **batch}

    def _wait(self, procs: dict[int, Proc], phase: str, nodes: list[Node], watch: Sequence[Node] = ()) -> dict[int, int]:
        """Wait for every process; fail on timeout, lost node; returns exit codes by instance."""
        codes: dict[int, int] = {}
        while len(codes) < len(procs):
            for i, p in procs.items():
                if i not in codes and (rc := p.poll()) is not None:
                    # A process that "exited" because its node went away: say so, naming the node.
                    if rc != 0 and (why := self.t.lost(nodes[i])):
                        raise _Failed(Failure(phase, f"instance {i} ({nodes[i].host}) was lost after "
                                              f"{time.monotonic() - self.t0:.1f}s: {why}", i))
                    codes[i] = rc
                    if phase == "coordination":
                        self._say("coordination", f"{len(codes)}/{len(procs)} done")
            for n in watch:
                if n.index not in procs or n.index in codes:
                    why = self.t.lost(n)
                    if why:
                        raise _Failed(Failure(phase, f"instance {n.index} ({n.host}) was lost after "
                                              f"{time.monotonic() - self.t0:.1f}s: {why}", n.index))
            if self.deadline and time.monotonic() > self.deadline and len(codes) < len(procs):
                raise _Failed(Failure("timeout", f"max_wall_clock {human(self.plan.max_wall_clock or 0)} "
                                      f"exceeded during {phase}; every process was ended"), timed_out=True)
            if len(codes) < len(procs):
                time.sleep(POLL_S)
        return codes

    # ------------------------------------------------------------------ phases
    def run(self) -> TaskResult:
        plan = self.plan
        check_local_sources(plan)
        result = TaskResult(job_id=plan.job_id, task_id=plan.task_id, executor=self.t.name, state="running",
                            exit_code=None)
        cache = Path(tempfile.mkdtemp(prefix="mpibatch-downloads-"))
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
                for attempt in range(plan.max_retries + 1):
                    result.attempts = attempt + 1
                    try:
                        self._attempt(nodes, hosts, layouts, cache, result)
                        break
                    except _Failed as f:
                        self.t.end_processes()
                        if f.timed_out or attempt == plan.max_retries:
                            raise
                        self._say("retrying", f"attempt {attempt + 2}/{plan.max_retries + 1}: {f.failure.reason}")
            except _Failed as f:
                result.failure, result.timed_out = f.failure, f.timed_out
            except KeyboardInterrupt:
                result.failure = Failure("interrupted", "interrupted by the user; every process was ended")
            self.t.end_processes()
            self._collect(nodes, layouts, result)
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

    def _node_task(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout], name: str,
                   command_line: str, files: Sequence[FileRef], cache: Path) -> dict[int, int]:
        procs: dict[int, Proc] = {}
        for n, lay in zip(nodes, layouts):
            tdir = lay.node_task_dir(name)
            self.t.make_dirs(n, [f"{tdir}/wd"], clean=[tdir])
            for ref in files:
                self.t.put(n, self._local(ref, cache), f"{tdir}/wd/{ref.path}")
            procs[n.index] = self.t.start(n, command_line, self._env(n, hosts, lay, tdir), f"{tdir}/wd",
                                          f"{tdir}/stdout.txt", f"{tdir}/stderr.txt")
        return self._wait(procs, name, nodes)

    def _local(self, ref: FileRef, cache: Path) -> Path:
        try:
            return download(ref, cache) if ref.is_url else Path(ref.source)
        except _FilesError as e:
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
                err = self.t.read_tail(nodes[i], f"{layouts[i].node_task_dir('jobpreparation')}/stderr.txt", 500)
                raise _Failed(Failure("preparation", f"job preparation task exited with code {bad[i]} on "
                                      f"instance {i} ({nodes[i].host}): {err.strip()}", i))

    def _release(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout]) -> None:
        if not self.plan.release_command_line or not nodes:
            return
        self._say("release", f"job release task on {len(nodes)} nodes")
        try:
            codes = self._node_task(nodes, hosts, layouts, "jobrelease", self.plan.release_command_line, (), Path("."))
        except _Failed as f:  # Batch does not fail the task for its job release task
            log.warning("job release task: %s", f.failure.reason)
            return
        for i, c in codes.items():
            if c != 0:
                log.warning("job release task exited with code %s on instance %s", c, i)

    def _attempt(self, nodes: list[Node], hosts: list[str], layouts: list[NodeLayout], cache: Path,
                 result: TaskResult) -> None:
        plan = self.plan
        for r in result.instances:
            r.coordination_exit_code = r.application_exit_code = None
        result.exit_code = None
        # A retry starts from fresh task directories.
        self._say("files", f"{len(plan.common_files)} common files to {len(nodes)} nodes, {len(plan.files)} to the primary")
        with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
            list(pool.map(lambda nl: self.t.make_dirs(nl[0], nl[1].dirs()[2:], clean=[nl[1].task_dir]),
                          zip(nodes, layouts)))
            copies = [(n, self._local(ref, cache), f"{lay.task_shared_dir}/{ref.path}")
                      for n, lay in zip(nodes, layouts) for ref in plan.common_files]
            copies += [(nodes[0], self._local(ref, cache), f"{layouts[0].working_dir}/{ref.path}") for ref in plan.files]
            list(pool.map(lambda c: self.t.put(*c), copies))

        self._say("coordination", f"0/{len(nodes)}")
        procs = {n.index: self.t.start(n, plan.coordination_command_line, self._env(n, hosts, lay), lay.working_dir,
                                       f"{lay.task_dir}/stdout.txt", f"{lay.task_dir}/stderr.txt")
                 for n, lay in zip(nodes, layouts)}
        codes = self._wait(procs, "coordination", nodes, watch=nodes)
        for i, c in codes.items():
            result.instances[i].coordination_exit_code = c
        bad = sorted(i for i, c in codes.items() if c != 0)
        if bad:
            i = bad[0]
            err = self.t.read_tail(nodes[i], f"{layouts[i].task_dir}/stderr.txt", 800).strip()
            raise _Failed(Failure("coordination", f"coordination command exited with code {codes[i]} on instance {i} "
                                  f"({nodes[i].host}); the application was not started: {err}", i))

        self._say("running", f"application on the primary ({nodes[0].host})")
        lay0 = layouts[0]
        app = self.t.start(nodes[0], plan.command_line, self._env(nodes[0], hosts, lay0), lay0.working_dir,
                           f"{lay0.task_dir}/stdout.txt", f"{lay0.task_dir}/stderr.txt")
        rc = self._wait({0: app}, "running", nodes, watch=nodes[1:])[0]
        result.instances[0].application_exit_code = rc
        result.exit_code = rc
        if rc != 0:
            raise _Failed(Failure("running", f"the application exited with code {rc} on the primary", 0))

    def _collect(self, nodes: list[Node], layouts: list[NodeLayout], result: TaskResult) -> None:
        if not nodes:
            return
        self._say("collecting", f"outputs of {len(nodes)} instances")
        out = new_output_dir(self.runs_dir, self.plan.job_id, self.plan.task_id)
        result.output_dir = str(out)
        patterns = [o.pattern for o in self.plan.outputs]

        def one(n: Node) -> None:
            r, lay = result.instances[n.index], layouts[n.index]
            d = out / str(n.index)
            d.mkdir()
            r.output_dir = str(d)
            for name in ("stdout.txt", "stderr.txt"):
                if self.t.fetch(n, f"{lay.task_dir}/{name}", d / name):
                    text = (d / name).read_text(errors="replace")
                    setattr(r, name[:6], tail(text))
                    setattr(r, f"{name[:6]}_path", str(d / name))
            if patterns:
                r.files = self.t.collect(n, lay.working_dir, patterns, d)

        with ThreadPoolExecutor(max_workers=min(8, len(nodes))) as pool:
            for f in [pool.submit(one, n) for n in nodes]:
                try:
                    f.result()
                except OSError as e:
                    result.missing.append(f"collecting failed: {e}")


def split_command_line(command_line: str) -> list[str]:
    """How a Linux Batch node splits a task command line (no shell: just words)."""
    return shlex.split(command_line)


class RehearsalExecutor(Executor):
    """An executor that runs the lifecycle itself over a Transport: when `submit` returns, the task
    has ended and every instance's outputs are in `runs_dir`."""

    def __init__(self, *, runs_dir: str | Path = "mpibatch-runs", progress: Progress | None = None) -> None:
        self.runs_dir = Path(runs_dir)
        self.progress = progress

    def submit(self, task: "Rendered | Spec") -> TaskHandle:
        result = self.run_plan(plan_from_rendered(rendered(task)))
        return TaskHandle(self, result.job_id, result.task_id, result)

    def run_plan(self, plan: TaskPlan) -> TaskResult:
        """Run a plan (a rendered spec, or a task as the Batch REST API describes it)."""
        transport, base_env = self.transport_for(plan)
        return Lifecycle(plan, transport, base_env=base_env, runs_dir=self.runs_dir, progress=self.progress,
                         account=self.name).run()

    def transport_for(self, plan: TaskPlan) -> tuple[Transport, dict[str, str]]:
        """A fresh Transport for one run, and the environment every node process starts from."""
        raise NotImplementedError
