"""MPI flavours, one module each, registered by name."""
from __future__ import annotations

from ..errors import SpecError
from .base import Flavor, Launch
from .intelmpi import IntelMpi
from .mpich import Mpich
from .msmpi import MsMpi
from .openmpi import OpenMpi

FLAVORS: dict[str, Flavor] = {f.name: f for f in (IntelMpi(), MsMpi(), OpenMpi(), Mpich())}


def get_flavor(name: str, field: str = "task.mpi.flavor") -> Flavor:
    try:
        return FLAVORS[name.lower()]
    except KeyError:
        raise SpecError(field, f"unknown MPI flavour {name!r}",
                        f"choose one of: {', '.join(FLAVORS)}") from None


__all__ = ["FLAVORS", "Flavor", "Launch", "get_flavor"]
