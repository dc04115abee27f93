"""MPICH (hydra): mpiexec -hosts $AZ_BATCH_HOST_LIST -n N*P -ppn P."""
from __future__ import annotations

from typing import Sequence

from ..shell import Raw, Word
from .base import Flavor


class Mpich(Flavor):
    name = "mpich"
    title = "MPICH"
    hostfile_style = "colon"

    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        host_arg: Word = ",".join(hosts) if hosts is not None else Raw('"$AZ_BATCH_HOST_LIST"')
        # Hydra propagates mpiexec's environment to all ranks by default (its per-variable flag
        # would be -env NAME VALUE, not -env NAME=VALUE).
        return ["mpiexec", "-hosts", host_arg, "-n", str(nprocs), "-ppn", str(ppn), "-wdir", rank_dir]

    def fabric_env(self, fabric: str) -> dict[str, str]:
        if fabric == "sriov":  # the MPICH wheels talk UCX; pin it to the InfiniBand port
            return {"UCX_NET_DEVICES": "mlx5_0:1"}
        if fabric == "tcp":
            return {"UCX_TLS": "tcp,self"}
        return {}  # NetworkDirect has no UCX support: check-pool reports it

    def local_agent_env(self, agent: str) -> dict[str, str]:
        return {"HYDRA_LAUNCHER": "rsh", "HYDRA_LAUNCHER_EXEC": agent}
