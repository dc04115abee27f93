"""SSH executor: the same multi-instance lifecycle (mpibatch.executors.lifecycle) on real hosts over paramiko.

.connection is the connection layer (clients, host keys, keepalive, remote shell lines); .transport is
the lifecycle's Transport over it. The first host is the primary. Host keys are checked against
known_hosts, unless the loudly named opt-out is given.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ...hostlist import HostSpec
from ...mpi import FLAVORS
from ...plan import TaskPlan
from .. import Progress
from ..rehearsal import RehearsalExecutor
from .connection import INSECURE_FLAG, RUN_VAR, SYSTEM_PATH, WIRE_LOG, check_host_count
from .transport import DEFAULT_NODE_ROOT, SshTransport

# coordinate.sh checks each peer's ssh port: the ports this executor reached the hosts on, in host-list order.
PEER_PORTS_VAR = "MPIBATCH_PEER_PORTS"

__all__ = ["DEFAULT_NODE_ROOT", "INSECURE_FLAG", "RUN_VAR", "SYSTEM_PATH", "WIRE_LOG", "SshExecutor",
           "SshTransport", "rehearsal_env"]


def rehearsal_env(*, is_root: bool) -> dict[str, str]:
    """Per-flavour flags for rehearsal hosts (docs/rehearsal-machine.md), without the local
    executor's agent: MPI launchers use the hosts' own ssh. Each flavour says what its ranks need
    there (UCX over TCP: across network namespaces, and on hosts without InfiniBand, UCX would pick
    shared memory or absent devices), and how PATH (where the hosts' MPI and Python are) and the run
    marker (for the cleanup sweep) reach ranks that start with a login environment."""
    env: dict[str, str] = {}
    for flavor in FLAVORS.values():
        env |= flavor.rehearsal_env(is_root=is_root) | flavor.ssh_rehearsal_env(["PATH", RUN_VAR])
    return env


class SshExecutor(RehearsalExecutor):
    """Runs a multi-instance task on SSH hosts with Batch semantics (the first host is the primary)."""

    name = "ssh"

    def __init__(self, hosts: Sequence[str | HostSpec], user: str | None = None, key: str | None = None,
                 known_hosts: str | None = None, port: int = 22, node_root: str = DEFAULT_NODE_ROOT,
                 insecure_accept_unknown_host_keys: bool = False, base_env: dict[str, str] | None = None,
                 runs_dir: str | Path = "mpibatch-runs", progress: Progress | None = None,
                 remote_path_prepend: Sequence[str] = ()) -> None:
        super().__init__(runs_dir=runs_dir, progress=progress)
        self.hosts = list(hosts)
        self.user, self.key, self.known_hosts, self.port = user, key, known_hosts, port
        self.node_root = node_root
        self.insecure = insecure_accept_unknown_host_keys
        self.base_env = dict(base_env) if base_env is not None else None
        self.remote_path_prepend = list(remote_path_prepend)
        self.transport: SshTransport | None = None  # the last run's, for inspection
        self._new_transport()  # bad input fails now, before any connection

    def _new_transport(self) -> SshTransport:
        return SshTransport(self.hosts, user=self.user, key=self.key, known_hosts=self.known_hosts, port=self.port,
                            node_root=self.node_root, insecure_accept_unknown_host_keys=self.insecure)

    def preflight(self, plan: TaskPlan) -> None:
        check_host_count(plan.instances, len(self.hosts))  # before the runs dir or any connection

    def transport_for(self, plan: TaskPlan) -> tuple[SshTransport, dict[str, str]]:
        t = self.transport = self._new_transport()
        if self.base_env is not None:
            env = dict(self.base_env)
        else:
            env = rehearsal_env(is_root=t.users == {"root"})
        if "PATH" not in env or self.remote_path_prepend:
            path = env.get("PATH", SYSTEM_PATH)
            env["PATH"] = ":".join([*self.remote_path_prepend, path])
        env[PEER_PORTS_VAR] = ",".join(str(h.port) for h in t.hosts[:plan.instances])
        return t, env
