"""MS-MPI (Windows): smpd on every node, mpiexec reads CCP_NODES."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..shell import Raw, Word
from .base import Flavor


class MsMpi(Flavor):
    name = "msmpi"
    title = "MS-MPI"
    os = "windows"
    hostfile_style = "msmpi"
    rank_vars = ("PMI_RANK",)
    networkdirect = "native"

    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        # The doubled quotes survive cmd /c; mpiexec takes its hosts from CCP_NODES by default.
        argv: list[Word] = [Raw('""%MSMPI_BIN%\\mpiexec.exe""'), "-c", str(ppn), "-wdir", rank_dir]
        if hosts is not None:
            argv[1:1] = ["-hosts", str(len(hosts)), *[w for h in hosts for w in (h, str(ppn))]]
        return argv

    def env_argv(self, env: Mapping[str, str]) -> list[Word]:
        # mpiexec starts remote ranks through smpd, which does not pass the caller's environment.
        return [w for k in sorted(env) for w in ("-genv", k, env[k])]

    def fabric_env(self, fabric: str) -> dict[str, str]:
        if fabric == "tcp":
            return {"MPICH_DISABLE_ND": "1"}  # MS-MPI picks NetworkDirect by itself otherwise
        return {}

    def coordination_argv(self) -> list[Word]:
        # `start` lets the coordination command return while smpd keeps running.
        return [Raw("start"), Raw("cmd"), Raw("/c"), Raw('""%MSMPI_BIN%\\smpd.exe""'), Raw("-d")]
