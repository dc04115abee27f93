"""MPICH (hydra): mpiexec -hosts $AZ_BATCH_HOST_LIST -n N*P -ppn P."""
from __future__ import annotations

from collections.abc import Sequence

from ..shell import Word
from .base import Flavor, hydra_argv


class Mpich(Flavor):
    name = "mpich"
    title = "MPICH"
    hostfile_style = "colon"
    launcher = "mpiexec"
    version_signature = "HYDRA build details"
    rank_vars = ("PMI_RANK",)
    node_env = {"UCX_NET_DEVICES": "ucx"}  # the MPICH wheels talk UCX
    uses_ucx = True
    node_packages = ("mpiexec.hydra", "mpich", "mpich")

    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        return hydra_argv("mpiexec", hosts, ppn, nprocs, rank_dir)

    def fabric_env(self, fabric: str) -> dict[str, str]:
        # On InfiniBand, UCX_NET_DEVICES comes from each node's own ports (node_env), not from here.
        if fabric == "tcp":
            return {"UCX_TLS": "tcp,self"}
        return {}  # NetworkDirect has no UCX support: check-pool reports it

    def local_agent_env(self, agent: str) -> dict[str, str]:
        return {"HYDRA_LAUNCHER": "rsh", "HYDRA_LAUNCHER_EXEC": agent}
