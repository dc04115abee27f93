"""Rehearsal nodes that look like Azure HPC nodes (docs/hpc-nodes.md): a fake InfiniBand sysfs tree per
node, and environment-modules modulefiles for MPI runtimes on this machine. The coordination step reads
them exactly as it reads /sys and the image's modules on a real node.
"""
from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError

SYSFS_VAR = "MPIBATCH_SYSFS"  # coordinate.sh reads $MPIBATCH_SYSFS/class/infiniband instead of /sys
FAKE_SYSFS = "fake-sysfs"  # under each node's root directory, so each node sees its own tree
DEFAULT_MODULE = "mpi/venv"  # the modulefile for the MPI runtime of the venv mpibatch runs from
_DEVICE = re.compile(r"^[A-Za-z0-9_]{1,32}$")
_MODULE = re.compile(r"^[A-Za-z0-9_.+-]+(/[A-Za-z0-9_.+-]+)*$")
_FIX = ("give one entry per node: a device name (mlx5_ib0), NAME:down (port not active) or none, "
        "e.g. mlx5_ib0,mlx5_0,none")


@dataclass(frozen=True)
class NodeIb:
    """One node's InfiniBand: a device with one port (active or down), or no device at all."""

    device: str | None
    active: bool = True


def parse_node_ib(value: str | Sequence[str], field: str = "--node-ib") -> list[NodeIb]:
    """'mlx5_ib0,mlx5_0:down,none' -> one NodeIb per node."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for i, raw in enumerate(items):
        item = raw.strip()
        name, _, state = item.partition(":")
        if item.lower() == "none":
            out.append(NodeIb(None))
        elif _DEVICE.fullmatch(name) and state.lower() in ("", "active", "down"):
            out.append(NodeIb(name, active=state.lower() != "down"))
        else:
            raise SpecError(field, f"entry {i + 1} ({item!r}) is not a device name, NAME:down or none", _FIX)
    if not out:
        raise SpecError(field, "is empty", _FIX)
    return out


def check_node_count(nodes: Sequence[NodeIb], instances: int, field: str = "--node-ib") -> None:
    if len(nodes) != instances:
        raise SpecError(field, f"describes {len(nodes)} node(s) but the task has {instances} instance(s)",
                        f"give exactly {instances} comma-separated entries")


def write_sysfs(root: Path, ib: NodeIb) -> None:
    """A sysfs tree as an Azure HPC node shows it: /sys/class/infiniband/DEV/ports/1/{state,link_layer}
    ("4: ACTIVE", "InfiniBand") and the IPoIB interface ib0 (type 32 = ARPHRD_INFINIBAND)."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "class" / "infiniband").mkdir(parents=True)
    eth = root / "class" / "net" / "eth0"
    eth.mkdir(parents=True)
    (eth / "type").write_text("1\n")
    if ib.device is None:
        return
    port = root / "class" / "infiniband" / ib.device / "ports" / "1"
    port.mkdir(parents=True)
    (port / "state").write_text("4: ACTIVE\n" if ib.active else "1: DOWN\n")
    (port / "link_layer").write_text("InfiniBand\n")
    ipoib = root / "class" / "net" / "ib0"
    ipoib.mkdir(parents=True)
    (ipoib / "type").write_text("32\n")


def runtime_prefix(path_value: str) -> Path | None:
    """The prefix (venv) of the first MPI launcher on PATH: PREFIX/bin/mpiexec."""
    for prog in ("mpiexec", "mpirun"):
        found = shutil.which(prog, path=path_value)
        if found:
            return Path(found).parent.parent
    return None


def modulefile(prefix: Path) -> str:
    """A Tcl modulefile (environment modules and Lmod read both) that activates the MPI runtime
    installed under `prefix`, as the HPC images' mpi/* modules do."""
    lines = ["#%Module1.0", f"## MPI runtime under {prefix} (written by mpibatch for a rehearsal)",
             f"prepend-path PATH {prefix}/bin", f"prepend-path LD_LIBRARY_PATH {prefix}/lib"]
    if (prefix / "bin" / "impi_info").exists():  # Intel MPI's tools look for their root
        lines.append(f"setenv I_MPI_ROOT {prefix}")
    return "\n".join(lines) + "\n"


def write_modulefiles(directory: Path, runtimes: Mapping[str, str | Path]) -> None:
    """One modulefile per name (mpi/venv -> DIRECTORY/mpi/venv) for the runtime at each prefix."""
    for name, prefix in runtimes.items():
        if not _MODULE.fullmatch(name) or ".." in name.split("/"):
            raise SpecError("module name", f"{name!r} is not a module name", "use names like mpi/venv")
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(modulefile(Path(prefix)))
