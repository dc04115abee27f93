"""Open MPI: mpirun --host h1:P,h2:P -np N*P --map-by ppr:P:node, env forwarded with -x."""
from __future__ import annotations

from collections.abc import Sequence

from ..shell import Raw, Word
from .base import Flavor


class OpenMpi(Flavor):
    name = "openmpi"
    title = "Open MPI"
    hostfile_style = "slots"
    launcher = "mpirun"
    version_signature = r"\(Open MPI\)|OpenRTE"
    rank_vars = ("OMPI_COMM_WORLD_RANK", "PMIX_RANK")
    # -x forwards the primary's value to every rank, so the device must be set on each node instead.
    node_env = {"UCX_NET_DEVICES": "ucx"}
    uses_ucx = True
    node_packages = ("mpirun", "openmpi-bin", "openmpi")
    # HPC-X (NVIDIA's Open MPI build for InfiniBand) is the Open MPI of the Azure HPC images.
    hpc_image_modules = {"ubuntu-hpc": "mpi/hpcx", "almalinux-hpc": "mpi/hpcx"}
    absolute_launcher_after_setup = True  # mpirun(1): an absolute path implies --prefix
    # Open MPI 4.x (ORTE, also HPC-X): every mpirun and orted of a node shares <base>/ompi.<node>.<uid>, and
    # each one starting or ending removes it when it looks empty: two launches starting together fail with
    # "mkdir ... File exists". mpirun passes this MCA variable on to its orteds. Open MPI 5 ignores it (its
    # session directory is named by the launcher's PID).
    session_dir_var = "OMPI_MCA_orte_tmpdir_base"

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

    def forward_if_set(self, names: Sequence[str]) -> list[Word]:
        # `-x NAME` of an unset NAME makes mpirun warn "Could not find the environment variable": bash drops it.
        return [Raw(f"${{{n}+-x {n}}}") for n in names]

    def fabric_env(self, fabric: str) -> dict[str, str]:
        if fabric == "sriov":
            # UCX over InfiniBand; which device (mlx5_0, mlx5_ib0, mlx5_1...) is found on each node.
            return {"OMPI_MCA_pml": "ucx"}
        if fabric == "tcp":
            return {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "tcp,sm,self"}
        return {}

    def local_agent_env(self, agent: str) -> dict[str, str]:
        # Open MPI 5 (PRRTE) reads plm_ssh_agent; 4.x read plm_rsh_agent.
        return {"PRTE_MCA_plm_ssh_agent": agent, "OMPI_MCA_plm_rsh_agent": agent}

    def ssh_rehearsal_env(self, forward: Sequence[str]) -> dict[str, str]:
        # Unlike hydra, Open MPI starts remote ranks with its daemon's (login) environment.
        return {**super().ssh_rehearsal_env(forward), "OMPI_MCA_mca_base_env_list": ";".join(forward)}

    def rehearsal_env(self, *, is_root: bool) -> dict[str, str]:
        env = {"OMPI_MCA_mpi_yield_when_idle": "1",
               "PRTE_MCA_rmaps_default_mapping_policy": ":oversubscribe"}
        if is_root:
            env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
        return env
