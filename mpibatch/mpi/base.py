"""What every MPI flavour module provides. Pure: no I/O."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from ..shell import Raw, Word

# The hosts are unknown at submit time: the launch line reads them on the node at run time.
RUNTIME_HOSTS = None


@dataclass(frozen=True)
class Launch:
    """The launcher argv (the program's argv is appended after it) and the environment the
    application command needs (fabric defaults merged under the user's values)."""

    argv: list[Word]
    env: dict[str, str] = field(default_factory=dict)


def hydra_argv(program: str, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word) -> list[Word]:
    """Hydra launchers (Intel MPI, MPICH): `PROGRAM -hosts H -n N*P -ppn P -wdir DIR`. Hydra passes the
    launcher's whole environment to every rank by default, so task environment settings need no flags."""
    host_arg: Word = ",".join(hosts) if hosts is not None else Raw('"$AZ_BATCH_HOST_LIST"')
    return [program, "-hosts", host_arg, "-n", str(nprocs), "-ppn", str(ppn), "-wdir", rank_dir]


# What the coordination step found on a node, by the name it gives to a per-node variable
# (docs/hpc-nodes.md): "ucx" = the node's active InfiniBand ports as UCX names (mlx5_0:1,...),
# "iface" = its IPoIB interface.
NODE_FACTS = ("ucx", "iface")


class Flavor:
    """Everything mpibatch knows about one MPI flavour. Subclass, set the facts, override the rules,
    and pass an instance to `mpibatch.mpi.register_flavor`."""

    name: str = ""
    title: str = ""
    os: str = "linux"  # the nodes' OS: linux | windows
    hostfile_style: str = "colon"
    # The program that starts the ranks, and an extended regex its `--version` output matches: the
    # coordination step refuses a node whose launcher belongs to another flavour.
    launcher: str = ""
    version_signature: str = ""
    # Where a rank finds its rank number (the persist step and the latency benchmark read them).
    rank_vars: tuple[str, ...] = ()
    # Per-node variables set on every node from what its coordination step found there (NODE_FACTS);
    # the user's task.environment wins over them.
    node_env: dict[str, str] = {}
    # Talks UCX: rehearsal hosts without InfiniBand pin UCX to TCP.
    uses_ucx: bool = False
    # NetworkDirect (A8/A9/H16r RDMA): "native", "dapl" (old releases only) or "none".
    networkdirect: str = "none"
    # (probe, deb, rpm): a pool created by mpibatch installs the deb/rpm when `probe` is not found.
    node_packages: tuple[str, str, str] | None = None
    # Azure HPC images (by image offer) -> the environment module that activates this flavour there.
    hpc_image_modules: dict[str, str] = {}
    # With task.mpi.setup, start the launcher by its absolute path (Open MPI then finds its remote
    # daemons under the same prefix).
    absolute_launcher_after_setup: bool = False
    # An environment variable naming the directory under which the launcher and its daemons on every node
    # make their session directories. Set, every launch of a task gets a base of its own: launchers whose
    # session directory is named by the node and user only (Open MPI 4) never meet on a node.
    session_dir_var: str = ""

    # -- the rules of the flavour (override) --------------------------------------------------
    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        raise NotImplementedError

    def env_argv(self, env: Mapping[str, str]) -> list[Word]:
        """Launcher flags that carry the task environment to remote ranks, put right after the launcher
        (MS-MPI's -genv). Hydra forwards the whole environment by itself; Open MPI's -x is in its argv."""
        return []

    def forward_if_set(self, names: Sequence[str]) -> list[Word]:
        """Launcher flags that carry each of `names` to remote ranks only if it is set on the node at run time
        (mpibatch's SAS URLs exist on Azure only). Hydra forwards the whole environment by itself: none."""
        return []

    def fabric_env(self, fabric: str) -> dict[str, str]:
        """Environment for 'sriov', 'networkdirect', 'tcp' or 'none' (no opinion)."""
        return {}

    def coordination_argv(self) -> list[Word] | None:
        """A service every node must start before the application (MS-MPI's smpd)."""
        return None

    def local_agent_env(self, agent: str) -> dict[str, str]:
        """Rehearsal only: make the launcher reach 'node i' through mpibatch's remote-shell agent."""
        return {}

    def rehearsal_env(self, *, is_root: bool) -> dict[str, str]:
        """Rehearsal only: flags this kind of machine needs (docs/rehearsal-machine.md). Never sent to Batch."""
        return {}

    def ssh_rehearsal_env(self, forward: Sequence[str]) -> dict[str, str]:
        """SSH rehearsal hosts only: make `forward` (names) reach the ranks on every host, whose
        launcher daemons start with a login environment."""
        return {"UCX_TLS": "tcp,self"} if self.uses_ucx else {}

    # -- derived --------------------------------------------------------------------------------
    def launch(self, hosts: Sequence[str] | None, ppn: int, options: Sequence[str],
               user_env: Mapping[str, str], fabric: str, rank_dir: Word,
               instances: int | None = None) -> Launch:
        """Launcher argv and env. `hosts=None` means: read them from the node's environment at
        run time (then `instances` gives the count). The user's environment wins over fabric
        defaults (Batch Shipyard overrode users' values: its issue #339)."""
        n = len(hosts) if hosts is not None else instances
        if n is None or n < 1:
            raise ValueError("need the hosts or the number of instances")
        env = {**self.fabric_env(fabric), **dict(user_env)}
        argv = self.launcher_argv(hosts, ppn, n * ppn, rank_dir, sorted(env))
        return Launch(argv=[*argv[:1], *self.env_argv(env), *argv[1:], *options], env=env)
