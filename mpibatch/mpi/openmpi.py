"""Open MPI: mpirun --host h1:P,h2:P -np N*P --map-by ppr:P:node, env forwarded with -x."""
from __future__ import annotations

from typing import Sequence

from ..shell import Raw, Word
from .base import Flavor


class OpenMpi(Flavor):
    name = "openmpi"
    title = "Open MPI"
    hostfile_style = "slots"

    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        if hosts is not None:
            host_arg: Word = ",".join(f"{h}:{ppn}" for h in hosts)
        else:  # 10.0.0.4,10.0.0.5 -> 10.0.0.4:P,10.0.0.5:P, expanded by bash on the node
            host_arg = Raw(f'"${{AZ_BATCH_HOST_LIST//,/:{ppn},}}:{ppn}"')
        argv: list[Word] = ["mpirun", "--host", host_arg, "-np", str(nprocs),
                            "--map-by", f"ppr:{ppn}:node", "--wdir", rank_dir]
        # Unlike hydra, Open MPI does not forward the environment to remote ranks: -x each name.
        for name in env_names:
            argv += ["-x", name]
        return argv

    def fabric_env(self, fabric: str) -> dict[str, str]:
        if fabric == "sriov":
            # UCX over the InfiniBand port; with accelerated networking it can be mlx5_1.
            return {"OMPI_MCA_pml": "ucx", "UCX_NET_DEVICES": "mlx5_0:1"}
        if fabric == "tcp":
            return {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "tcp,sm,self"}
        return {}

    def local_agent_env(self, agent: str) -> dict[str, str]:
        # Open MPI 5 (PRRTE) reads plm_ssh_agent; 4.x read plm_rsh_agent.
        return {"PRTE_MCA_plm_ssh_agent": agent, "OMPI_MCA_plm_rsh_agent": agent}

    def rehearsal_env(self, *, is_root: bool) -> dict[str, str]:
        env = {"OMPI_MCA_mpi_yield_when_idle": "1",
               "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}
        if is_root:
            env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        return env
