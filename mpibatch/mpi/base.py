"""What every MPI flavour module provides. Pure: no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

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


class Flavor:
    name: str = ""
    os: str = "linux"
    hostfile_style: str = "colon"
    title: str = ""

    # -- the rules of the flavour (override) --------------------------------------------------
    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        raise NotImplementedError

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
        return Launch(argv=[*argv, *options], env=env)
