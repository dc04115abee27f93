"""Local executor: N emulated Batch nodes on this machine, each its own PID, mount and UTS
namespace, so every node sees its own files at the same node-root path (as on a Batch pool) and
has its own hostname and loopback address. MPI launchers reach node i through mpibatch's
remote-shell agent. Killing a node's PID-1 ends every process of that node, so no process
outlives the task.
"""
from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from ..errors import InfraError
from ..launchers import script_path
from ..launchers.persist import match_outputs
from . import Progress
from . import hpcnode
from .lifecycle import Node, RehearsalExecutor, split_command_line
from ..mpi import FLAVORS
from ..plan import TaskPlan
from ..results import TaskResult

log = logging.getLogger(__name__)
LOOPBACK_PREFIX = "127.0.1."


def rehearsal_env(agent: str, nodes_dir: str, *, is_root: bool) -> dict[str, str]:
    """What this machine needs and Batch nodes don't: the launchers' remote shell is our agent,
    plus each flavour's local flags. Set for every flavour (their variable names are distinct),
    so a plan from any source runs; the task's environment still wins."""
    # Emulated nodes have no sshd: the primary checks every node through the agent, the others skip.
    env: dict[str, str] = {"MPIBATCH_RSH": agent, "MPIBATCH_LOCAL_NODES": nodes_dir, "MPIBATCH_PEER_PORT": "none"}
    for flavor in FLAVORS.values():
        env |= flavor.local_agent_env(agent) | flavor.rehearsal_env(is_root=is_root)
    return env


def default_base_env() -> dict[str, str]:
    """The nodes' "image": this environment, with the running Python's bin dir (mpibatch's venv,
    where an MPI runtime wheel puts mpiexec) first on PATH."""
    env = dict(os.environ)
    bindir = os.path.dirname(sys.executable)
    if bindir not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    return env


class _LocalProc:
    def __init__(self, popen: subprocess.Popen[bytes]):
        self.popen = popen

    def poll(self) -> int | None:
        return self.popen.poll()

    def kill(self) -> None:
        if self.popen.poll() is None:
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.popen.wait()


class LocalTransport:
    name = "local"

    def __init__(self, keep_nodes: bool = False, workdir: str | None = None,
                 node_setup: Callable[[Node, Path], None] | None = None) -> None:
        self.keep_nodes = keep_nodes
        self.node_setup = node_setup  # fills node i's root directory (as this machine sees it) before it starts
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="mpibatch-nodes-"))
        self.mount_point = self.workdir / "node"  # every node's root appears here, in its namespace
        self.nodes_dir = self.workdir / "hosts"  # address -> PID of the node's init, for the agent
        self.hosts_file = self.workdir / "etc-hosts"
        self.nodes: list[Node] = []
        self.holders: dict[int, subprocess.Popen[bytes]] = {}
        self.holder_pids: dict[int, int] = {}
        self.run_init: subprocess.Popen[bytes] | None = None
        self.run_init_pid = 0
        self.procs: list[_LocalProc] = []
        self.ended: set[int] = set()
        self.pid_namespaces: set[str] = set()  # for tests: no process may remain in these

    # ------------------------------------------------------------------ nodes
    def open(self, n: int) -> list[Node]:
        if shutil.which("unshare") is None or shutil.which("nsenter") is None:
            raise InfraError("the local executor needs unshare and nsenter (util-linux)")
        if os.geteuid() != 0:
            raise InfraError("the local executor emulates nodes with Linux namespaces and must run as root "
                             "(or use --executor ssh with your own hosts)")
        for d in (self.mount_point, self.nodes_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.nodes = [Node(index=i, host=f"{LOOPBACK_PREFIX}{i + 1}", node_id=f"node-{i}", root=str(self.mount_point))
                      for i in range(n)]
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost"]
        lines += [f"{nd.host} {nd.node_id}" for nd in self.nodes]
        self.hosts_file.write_text("\n".join(lines) + "\n")
        for nd in self.nodes:
            self.host_path(nd, nd.root).mkdir(parents=True, exist_ok=True)
            if self.node_setup:
                self.node_setup(nd, self.host_path(nd, nd.root))
            self._start_holder(nd)
        return self.nodes

    def _ensure_run_init(self) -> int:
        """PID 1 of the run's PID namespace: every node process lives under it, so killing it ends
        them all. (One namespace for the run: a process cannot enter a sibling's PID namespace, and
        MPI launchers on node 0 must start processes on node i.)"""
        if self.run_init is None or self.run_init.poll() is not None:
            self.run_init = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--kill-child=SIGKILL", "--mount", "--propagation", "private",
                 "--mount-proc", "--", "/bin/bash", "-c",
                 'trap "exit 0" TERM; echo ready; while :; do sleep 3600 & wait $!; done'],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
            if self.run_init.stdout is None or self.run_init.stdout.readline().strip() != b"ready":
                raise InfraError("could not create a PID namespace for the emulated nodes")
            self.run_init_pid = self._child_pid(self.run_init.pid)
            try:
                self.pid_namespaces.add(os.readlink(f"/proc/{self.run_init_pid}/ns/pid"))
            except OSError:
                pass
        return self.run_init_pid

    def _start_holder(self, node: Node) -> None:
        init = self._ensure_run_init()
        p = subprocess.Popen(
            ["nsenter", "-t", str(init), "-p", "-m", "--", "unshare", "--mount", "--uts", "--propagation", "private",
             "--", "/bin/bash", script_path("local_node_init.sh"), str(self.workdir / "nodes" / str(node.index)),
             str(self.mount_point), str(self.hosts_file), node.node_id],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        line = p.stdout.readline() if p.stdout else b""
        if line.strip() != b"ready":
            p.wait(timeout=10)
            err = p.stderr.read().decode(errors="replace") if p.stderr else ""
            raise InfraError(f"could not create emulated node {node.index}: {err.strip() or 'no namespace'}")
        self.holders[node.index] = p
        self.ended.discard(node.index)
        holder_pid = self._child_pid(p.pid)
        self.holder_pids[node.index] = holder_pid
        # The agent runs inside the run's namespace, whose /proc numbers processes its own way.
        status = Path(f"/proc/{holder_pid}/status").read_text()
        ns_pid = next(line.split()[-1] for line in status.splitlines() if line.startswith("NSpid:"))
        (self.nodes_dir / node.host).write_text(ns_pid)

    @staticmethod
    def _child_pid(pid: int) -> int:
        """PID (in our namespace) of the child a fork-and-wait tool (unshare, nsenter) started."""
        for _ in range(200):
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.005)
        raise InfraError(f"process {pid} started no child")

    def _node_pids(self, index: int) -> list[int]:
        """Every process in node `index`'s mount namespace, found by PID."""
        try:
            ns = os.readlink(f"/proc/{self.holder_pids[index]}/ns/mnt")
        except (OSError, KeyError):
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
        shutil.copyfile(local, dest)
        shutil.copymode(local, dest)

    def read_tail(self, node: Node, path: str, limit: int) -> str:
        try:
            data = self.host_path(node, path).read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode(errors="replace")

    def fetch(self, node: Node, node_path: str, dest: Path) -> bool:
        src = self.host_path(node, node_path)
        if not src.is_file():
            return False
        shutil.copyfile(src, dest)
        return True

    def collect(self, node: Node, node_dir: str, patterns: Sequence[str], dest: Path) -> list[str]:
        root = self.host_path(node, node_dir)
        found = sorted({rel for p in patterns for rel in match_outputs(str(root), p)})
        for rel in found:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, dest / rel)
        return found

    # ------------------------------------------------------------------ processes
    def start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str,
              stderr: str) -> _LocalProc:
        if node.index in self.ended or self.holders[node.index].poll() is not None:
            self._start_holder(node)
        argv = ["nsenter", "-t", str(self.holder_pids[node.index]), "-p", "-m", "-u", "--",
                # nsenter's --wd resolves outside the node's mount namespace: chdir inside it.
                "env", f"--chdir={cwd}", *split_command_line(command_line)]
        with open(self.host_path(node, stdout), "ab") as out, open(self.host_path(node, stderr), "ab") as err:
            p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                 start_new_session=True)
        proc = _LocalProc(p)
        self.procs.append(proc)
        return proc

    def lost(self, node: Node) -> str | None:
        h = self.holders.get(node.index)
        if node.index in self.ended or h is None or h.poll() is None:
            return None
        return f"emulated node {node.node_id} went down (its init process exited with {h.returncode})"

    def kill_node(self, index: int) -> None:
        """Tests: make node `index` disappear mid-run, as a lost VM would."""
        for pid in self._node_pids(index):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def end_processes(self) -> None:
        if self.run_init is not None:  # PID 1 of the run's namespace: its death ends every node process
            if self.run_init.poll() is None:
                os.killpg(self.run_init.pid, signal.SIGKILL)
            self.run_init.wait()
            if self.run_init.stdout:
                self.run_init.stdout.close()
        for i, h in self.holders.items():
            if h.poll() is None:
                try:
                    os.killpg(h.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            h.wait()
            for stream in (h.stdout, h.stderr):
                if stream:
                    stream.close()
            self.ended.add(i)
        for p in self.procs:
            p.kill()
        self.procs.clear()

    def close(self) -> None:
        self.end_processes()
        if not self.keep_nodes:
            shutil.rmtree(self.workdir, ignore_errors=True)


class LocalExecutor(RehearsalExecutor):
    """Runs a multi-instance task on this machine with Batch semantics."""

    name = "local"

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

    def transport_for(self, plan: TaskPlan) -> tuple[LocalTransport, dict[str, str]]:
        t = self.transport = LocalTransport(keep_nodes=self.keep_nodes, node_setup=self._setup_node)
        agent = script_path("local_rsh.sh")
        env = {**self.base_env, **rehearsal_env(agent, str(t.nodes_dir), is_root=os.geteuid() == 0)}
        if self.modules:  # nodes that look like HPC images: their MPI runtimes behind modules
            modulepath = t.workdir / "modulefiles"
            hpcnode.write_modulefiles(modulepath, self.modules)
            env["MODULEPATH"] = os.pathsep.join(p for p in (str(modulepath), env.get("MODULEPATH", "")) if p)
        if self.node_ib is not None:
            env[hpcnode.SYSFS_VAR] = f"{t.mount_point}/{hpcnode.FAKE_SYSFS}"
        return t, env

    def run_plan(self, plan: TaskPlan) -> TaskResult:
        if self.node_ib is not None:  # bad input, before anything starts
            hpcnode.check_node_count(self.node_ib, plan.instances)
        result = super().run_plan(plan)
        t = self.transport
        if self.keep_nodes and t is not None:
            for r, node in zip(result.instances, t.nodes):
                r.task_dir = str(t.host_path(node, f"{node.root}/workitems/{plan.job_id}/job-1/{plan.task_id}"))
        return result
