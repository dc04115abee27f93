"""Local executor: N emulated Batch nodes on this machine, without root. A run is one user
namespace (the caller is root only inside it) holding one PID namespace, and per node a mount + UTS
namespace: every node sees its own files at the same node-root path (as on a Batch pool), its own
/dev/shm and TMPDIR, its own hostname, and has its own loopback address (127.0.1.x).
MPI launchers reach node i through mpibatch's remote-shell agent. The run's PID 1 dies with its
controller (even a SIGKILLed one), and with it every process of the run.
"""
from __future__ import annotations

import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import InfraError
from ..launchers import script_path
from ..launchers.outputnames import match_outputs
from ..launchers.protocol import NodeLayout
from ..plan import TaskPlan
from ..results import TaskResult
from . import Progress, collection, hpcnode
from .leftovers import CONTROLLER_FILE, KEPT_FILE, process_identity, remove_tree, sweep_stale_workdirs
from .localenv import default_base_env, rehearsal_env, scratch_base, spread_subdirectories
from .nodeinits import NodeInits, stop_helper
from .rehearsal import RehearsalExecutor
from .transport import Node, Proc, split_command_line
from .userns import check_namespaces, child_pid, die_with_parent, tool

log = logging.getLogger(__name__)
LOOPBACK_PREFIX = "127.0.1."
NODE_SCRIPTS = Path(script_path("coordinate.sh")).parent  # where the node-side scripts are installed


def _scratch_copy(src: Path, dest: Path) -> None:
    """A plain copy, not fileio's durable one: a node's root is scratch, gone with the run, and no node process
    runs while files arrive (an fsync per file per node was most of the files phase at 64 nodes). Its mode is
    the source's."""
    shutil.copyfile(src, dest)
    os.chmod(dest, os.stat(src).st_mode & 0o7777)


class LocalTransport:
    name = "local"
    poll_s = 0.01  # only where a process offers no descriptor to wait on (each wakes the lifecycle as it ends)
    MODULEFILES = "modulefiles"  # in the run's directory: what the nodes' `module avail` lists
    # Popen arguments of the run's init and node inits (a subclass starts them as another user).
    spawn_as: dict[str, Any] = {}

    def __init__(self, keep_nodes: bool = False, workdir: str | None = None,
                 node_setup: Callable[[Node, Path], None] | None = None,
                 workdir_setup: Callable[[Path], None] | None = None,
                 helper_env: Mapping[str, str] | None = None) -> None:
        self.keep_nodes = keep_nodes
        # The run's PID 1 and the node inits live in the run's PID namespace, where every node process can
        # read their /proc/PID/environ: they start from the nodes' clean image, never the operator's environment.
        # Only the image's variables: the helpers need PATH and locale, not what the run adds to the image.
        self.helper_env = default_base_env(dict(helper_env) if helper_env is not None else None)
        self.node_setup = node_setup  # fills node i's root directory (as this machine sees it) before it starts
        self.workdir_setup = workdir_setup  # fills the run's directory once it exists
        # Named now, made by open(): bad input found before that leaves nothing behind.
        self.workdir = Path(workdir or Path(scratch_base()) / f"mpibatch-nodes-{secrets.token_hex(6)}")
        self.mount_point = self.workdir / "node"  # every node's root appears here, in its namespace
        self.nodes_dir = self.workdir / "hosts"  # address -> PID of the node's init, for the agent
        self.hosts_file = self.workdir / "etc-hosts"
        # Each node's own TMPDIR, at the same path on every node: MPI session directories (named by
        # PIDs, which every run's PID namespace reuses) never meet another node's, run's or user's.
        self.node_tmp = str(self.mount_point / "tmp")
        self.given_workdir, self.made = workdir is not None, False
        self.nodes: list[Node] = []
        self.inits: NodeInits | None = None
        self.run_init: subprocess.Popen[bytes] | None = None
        self.run_init_pid = 0
        self._up = threading.Lock()
        self._staging = threading.Lock()
        self.procs: list[Proc] = []
        self.pid_namespaces: set[str] = set()  # for tests: no process may remain in these
        # The emulator ends a terminated task's processes from another thread than the run's.
        self._ending = threading.Lock()

    # ------------------------------------------------------------------ nodes
    def open(self, n: int) -> list[Node]:
        sweep_stale_workdirs(self.workdir.parent)
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=self.given_workdir)
        self.made = True
        (self.workdir / CONTROLLER_FILE).write_text(process_identity(os.getpid()) or "")
        if self.workdir_setup:
            self.workdir_setup(self.workdir)
        for d in (self.mount_point, self.nodes_dir, self.workdir / "nodes"):
            d.mkdir(parents=True, exist_ok=True)
        spread_subdirectories(str(self.workdir / "nodes"))
        self.nodes = [Node(index=i, host=f"{LOOPBACK_PREFIX}{i + 1}", node_id=f"node-{i}", root=str(self.mount_point))
                      for i in range(n)]
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{nd.host} {nd.node_id}" for nd in self.nodes]
        self.hosts_file.write_text("\n".join(lines) + "\n")
        for nd in self.nodes:
            self.host_path(nd, nd.root).mkdir(parents=True, exist_ok=True)
            self.host_path(nd, self.node_tmp).mkdir(mode=0o1777, exist_ok=True)
            if self.node_setup:
                self.node_setup(nd, self.host_path(nd, nd.root))
        self._start_nodes()
        return self.nodes

    def _start_nodes(self) -> None:
        """A fresh run namespace and every node's init in it, awaited by _nodes_up() before the first node
        process starts: the files arrive in the nodes' directories meanwhile. One process forks every node's
        init (launchers/local_nodes.py): a run's start-up does not grow with a chain of programs per node."""
        self._start_run_init()
        self.inits = NodeInits(self._enter(self.run_init_pid, "-p", "-m"), os.path.realpath(sys.executable),
                               str(self.workdir / "nodes"), str(self.mount_point), [nd.node_id for nd in self.nodes],
                               {"env": self.helper_env, **self.spawn_as})

    def _nodes_up(self) -> None:
        """Every node is up, and the agent's address table names only them, before any node process starts
        (a retry after end_processes() never sees a PID of the previous namespace)."""
        with self._up:  # the lifecycle starts the nodes' processes from several threads
            if self.run_init is None:  # ended after a failed attempt or a preemption: fresh nodes
                self._start_nodes()
            if self.inits is None or self.inits.pids:
                return
            ns_pids = self.inits.await_ready()
            for nd in self.nodes:
                (self.nodes_dir / nd.host).write_text(ns_pids[nd.index])

    def _start_run_init(self) -> None:
        """PID 1 of the run: its user namespace holds the run's PID and mount namespaces.
        Every node process lives under it, so its death ends them all; it dies with this process
        (PR_SET_PDEATHSIG on unshare, whose --kill-child passes the SIGKILL on to PID 1). One PID
        namespace for the run: MPI launchers on node 0 must start processes on node i."""
        self.run_init = subprocess.Popen(
            ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child=SIGKILL", "--mount",
             "--propagation", "private", "--mount-proc", "--",
             "/bin/bash", script_path("local_run_init.sh"), str(self.hosts_file)],
            env=self.helper_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, preexec_fn=die_with_parent(), **self.spawn_as)
        if self.run_init.stdout is None or self.run_init.stdout.readline().strip() != b"ready":
            err = stop_helper(self.run_init)
            self.run_init = None
            raise InfraError(f"could not create the namespaces of the emulated nodes: {err or 'unshare failed'}")
        self.run_init_pid = child_pid(self.run_init.pid)
        try:
            self.pid_namespaces.add(os.readlink(f"/proc/{self.run_init_pid}/ns/pid"))
        except OSError:
            pass

    def _enter(self, pid: int, *namespaces: str) -> list[str]:
        """nsenter into process `pid`'s user namespace (keeping our uid, root inside) and `namespaces`."""
        return [tool("nsenter"), "-t", str(pid), "-U", "--preserve-credentials", *namespaces, "--"]

    def _node_pids(self, index: int) -> list[int]:
        """Every process in node `index`'s mount namespace, found by PID."""
        try:
            ns = os.readlink(f"/proc/{self.holder_pid(index)}/ns/mnt")
        except (OSError, InfraError):
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.readlink(f"/proc/{entry}/ns/mnt") == ns:
                        pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def holder_pid(self, index: int) -> int:
        """Node `index`'s init, by its PID on this machine (once the nodes are up)."""
        if self.inits is None or index not in self.inits.pids:
            raise InfraError(f"emulated node {index} is not up")
        return self.inits.pids[index]

    def host_path(self, node: Node, node_path: str) -> Path:
        """Where a path of the node's lives on this machine."""
        rel = os.path.relpath(node_path, self.mount_point)
        if rel.startswith(".."):
            raise InfraError(f"{node_path} is outside node {node.index}'s root")
        return self.workdir / "nodes" / str(node.index) / rel

    # ------------------------------------------------------------------ files
    def make_dirs(self, node: Node, dirs: Sequence[str], clean: Sequence[str] = ()) -> None:
        for d in clean:
            shutil.rmtree(self.host_path(node, d), ignore_errors=True)
        for d in dirs:
            self.host_path(node, d).mkdir(parents=True, exist_ok=True)

    def put(self, node: Node, local: Path, node_path: str) -> None:
        dest = self.host_path(node, node_path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if local.parent == NODE_SCRIPTS:
            # mpibatch's own node-side files, the same on every node and never written there: hard links to
            # one copy per run. Each file made costs an inode, and ext4 without a journal skips recently freed
            # ones by reading each: per-node copies cost back-to-back 64-node runs seconds of CPU
            # (docs/local-executor.md#many-nodes).
            dest.unlink(missing_ok=True)
            try:
                os.link(self._staged(local), dest)
                return
            except OSError as e:  # a file system without hard links: a copy, as for every other file
                log.debug("no hard link for %s (%s): copied", dest, e)
        _scratch_copy(local, dest)

    def _staged(self, local: Path) -> Path:
        """The run's one copy of a node-side script (made by the first node that needs it)."""
        staged = self.workdir / "node-scripts" / local.name
        with self._staging:
            if not staged.exists():
                staged.parent.mkdir(exist_ok=True)
                _scratch_copy(local, staged)
        return staged

    def read_tail(self, node: Node, path: str, limit: int) -> str:
        return collection.read_tail(self.host_path(node, path), limit)

    def fetch(self, node: Node, node_path: str, dest: Path) -> bool:
        src = self.host_path(node, node_path)
        if not os.path.lexists(src):
            return False
        collection.copy_regular(src, dest)
        return True

    def collect(self, node: Node, node_dir: str, patterns: Sequence[str], dest: Path) -> list[str]:
        root = self.host_path(node, node_dir)
        files: list[str] = []
        if os.path.islink(root):
            raise collection.CollectError(
                [], [f"{node_dir} was replaced by a symlink; not followed, nothing collected"])
        # Regular files only; a linked root yields none. Two outputs with one collected name: a problem.
        targets, problems = collection.collection_targets(match_outputs(str(root), list(patterns)))
        for rel, target in targets:
            try:
                collection.copy_regular(root / rel, dest / target)
                files.append(target)
            except OSError as e:
                problems.append(f"{rel}: {e.strerror or e}")
        if problems:
            raise collection.CollectError(files, problems)
        return files

    def keep_files(self) -> str:
        self.keep_nodes = True
        self._mark_kept()
        return self.kept_dir

    @property
    def kept_dir(self) -> str:
        """Where the nodes' files are once kept (what the user is told to look at, then remove)."""
        return str(self.workdir / "nodes")

    def _mark_kept(self) -> None:
        if self.made and self.workdir.is_dir():
            (self.workdir / KEPT_FILE).write_text(
                "mpibatch keeps these emulated nodes' files until you remove this directory\n")

    # ------------------------------------------------------------------ processes
    def start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str,
              stderr: str) -> Proc:
        """Started by node i's init, in its namespaces (launchers/local_nodes.py): no `nsenter` and no fork of
        this process per node process."""
        self._nodes_up()
        assert self.inits is not None  # _nodes_up() made them
        proc = self.inits.spawn(node.index, split_command_line(command_line), env, cwd, stdout, stderr)
        self.procs.append(proc)
        return proc

    def lost(self, node: Node) -> str | None:
        inits = self.inits
        if self.run_init is None or inits is None or not inits.pids:
            return None
        if inits.ended(node.index):
            return f"emulated node {node.node_id} went down (its init process ended)"
        if inits.problem:  # the agent that started the node processes, and hears of their ends
            return f"emulated node {node.node_id} went down ({inits.problem})"
        return None

    def kill_node(self, index: int) -> None:
        """Tests: make node `index` disappear mid-run, as a lost VM would."""
        self._nodes_up()
        for pid in self._node_pids(index):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def end_processes(self) -> None:
        """Kill PID 1 of the run's namespace: the kernel then ends every process in it.
        A second caller waits until the first is done, so both return with nothing running."""
        with self._ending:
            for name in os.listdir(self.nodes_dir) if self.nodes_dir.is_dir() else ():
                (self.nodes_dir / name).unlink(missing_ok=True)  # no stale PIDs for the agent
            run_init, self.run_init = self.run_init, None
            inits, self.inits = self.inits, None
            procs, self.procs = self.procs, []
            if inits is not None:  # first: it ends the node processes it started, and is then gone with them
                inits.stop()
            if run_init is not None:
                stop_helper(run_init)
            for proc in procs:
                proc.kill()

    def close(self) -> None:
        self.end_processes()
        if self.keep_nodes:
            self._mark_kept()
        elif self.made:
            remove_tree(self.workdir)


class LocalExecutor(RehearsalExecutor):
    """Runs a multi-instance task on this machine with Batch semantics."""

    name = "local"
    nodes_see_runs_dir = True  # emulated nodes see this machine's files (their own node root aside)

    def __init__(self, base_env: dict[str, str] | None = None, runs_dir: str | Path = "mpibatch-runs",
                 keep_nodes: bool = False, progress: Progress | None = None,
                 node_ib: str | Sequence[str] | None = None, modules: Mapping[str, str] | None = None) -> None:
        """`node_ib`: each node's fake InfiniBand (hpcnode.parse_node_ib), e.g. "mlx5_ib0,mlx5_0,none".
        `modules`: modulefiles the nodes offer (name -> MPI runtime prefix); by default mpi/venv for
        the runtime first on the nodes' PATH."""
        super().__init__(runs_dir=runs_dir, progress=progress)
        self.base_env = dict(base_env) if base_env is not None else default_base_env()
        self.keep_nodes = keep_nodes
        self.node_ib = hpcnode.parse_node_ib(node_ib) if node_ib is not None else None
        if modules is None:
            prefix = hpcnode.runtime_prefix(self.base_env.get("PATH", ""))
            modules = {hpcnode.DEFAULT_MODULE: str(prefix)} if prefix else {}
        self.modules = dict(modules)
        self.transport: LocalTransport | None = None  # the last run's, for inspection

    def _setup_node(self, node: Node, root: Path) -> None:
        if self.node_ib is not None:
            hpcnode.write_sysfs(root / hpcnode.FAKE_SYSFS, self.node_ib[node.index])

    def preflight(self, plan: TaskPlan) -> None:
        check_namespaces()  # exit 2 naming the setting that blocks it
        if self.node_ib is not None:
            hpcnode.check_node_count(self.node_ib, plan.instances)

    def make_transport(self, **kwargs: Any) -> LocalTransport:
        """The run's transport (the emulator's subclass runs the nodes as a node's user)."""
        return LocalTransport(**kwargs)

    def transport_for(self, plan: TaskPlan) -> tuple[LocalTransport, dict[str, str]]:
        t = self.transport = self.make_transport(
            keep_nodes=self.keep_nodes, node_setup=self._setup_node, helper_env=self.base_env,
            workdir_setup=(lambda d: hpcnode.write_modulefiles(d / LocalTransport.MODULEFILES, self.modules))
            if self.modules else None)
        agent = script_path("local_rsh.sh")
        # Node processes are root inside the run's user namespace (the operator's uid outside).
        env = {**self.base_env, "TMPDIR": t.node_tmp, **rehearsal_env(agent, str(t.nodes_dir), is_root=True)}
        if self.modules:  # nodes that look like HPC images: their MPI runtimes behind modules
            modulepath = str(t.workdir / LocalTransport.MODULEFILES)
            env["MODULEPATH"] = os.pathsep.join(p for p in (modulepath, env.get("MODULEPATH", "")) if p)
        if self.node_ib is not None:
            env[hpcnode.SYSFS_VAR] = f"{t.mount_point}/{hpcnode.FAKE_SYSFS}"
        return t, env

    def run_plan(self, plan: TaskPlan) -> TaskResult:
        result = super().run_plan(plan)
        t = self.transport
        if self.keep_nodes and t is not None and t.made:
            result.nodes_dir = t.kept_dir
            for r, node in zip(result.instances, t.nodes):
                r.task_dir = str(t.host_path(node, NodeLayout(node.root, plan.job_id, plan.task_id).task_dir))
        return result
