"""Intel MPI (Linux): mpirun -hosts $AZ_BATCH_HOST_LIST -n N*P -ppn P."""
from __future__ import annotations

from collections.abc import Sequence

from ..shell import Word
from .base import Flavor, hydra_argv


class IntelMpi(Flavor):
    name = "intelmpi"
    title = "Intel MPI"
    hostfile_style = "colon"
    launcher = "mpirun"
    version_signature = r"Intel\(R\) MPI"
    rank_vars = ("PMI_RANK", "MPI_LOCALRANKID")
    # FI_PROVIDER=mlx is libfabric's provider on top of UCX: it honours UCX_NET_DEVICES.
    node_env = {"UCX_NET_DEVICES": "ucx"}
    uses_ucx = True
    networkdirect = "dapl"  # Intel MPI 5.x (2018 and older) only
    # ubuntu-hpc and almalinux-hpc install Intel MPI behind this module (Azure/azhpc-images).
    hpc_image_modules = {"ubuntu-hpc": "mpi/impi-2021", "almalinux-hpc": "mpi/impi-2021"}

    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        return hydra_argv("mpirun", hosts, ppn, nprocs, rank_dir)

    def fabric_env(self, fabric: str) -> dict[str, str]:
        if fabric == "sriov":  # HB/HC/HX/NDv4...: Intel MPI 2019+ over libfabric's mlx provider
            return {"I_MPI_FABRICS": "shm:ofi", "FI_PROVIDER": "mlx"}
        if fabric == "networkdirect":  # A8/A9/H16r...: Intel MPI 5.x over DAPL; keep the shm: prefix
            return {"I_MPI_FABRICS": "shm:dapl", "I_MPI_DAPL_PROVIDER": "ofa-v2-ib0",
                    "I_MPI_DYNAMIC_CONNECTION": "0"}
        if fabric == "tcp":
            return {"I_MPI_FABRICS": "shm:ofi", "FI_PROVIDER": "tcp"}
        return {}

    def local_agent_env(self, agent: str) -> dict[str, str]:
        return {"I_MPI_HYDRA_BOOTSTRAP": "rsh", "I_MPI_HYDRA_BOOTSTRAP_EXEC": agent}

    def rehearsal_env(self, *, is_root: bool) -> dict[str, str]:
        # Busy-polling ranks starve a 2-core machine; wait mode lets them sleep.
        return {"I_MPI_WAIT_MODE": "1"}
