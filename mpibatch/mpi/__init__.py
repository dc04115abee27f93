"""MPI flavours, one module each, in a registry by name.

Adding a flavour is one module that subclasses `Flavor` and calls `register_flavor` (the four built-in
ones are registered below); the spec, the renderer, the pool check and the executors only ask the
registry.
"""
from __future__ import annotations

from ..errors import SpecError
from .base import Flavor, Launch
from .intelmpi import IntelMpi
from .mpich import Mpich
from .msmpi import MsMpi
from .openmpi import OpenMpi

FLAVORS: dict[str, Flavor] = {}


def register_flavor(flavor: Flavor) -> Flavor:
    """Make `flavor` usable by name in specs and on the command line (names are case-insensitive)."""
    name = flavor.name.lower()
    if not name or not name.isidentifier():
        raise ValueError(f"a flavour needs a simple name, got {flavor.name!r}")
    if flavor.os not in ("linux", "windows"):
        raise ValueError(f"flavour {name}: os must be linux or windows, got {flavor.os!r}")
    FLAVORS[name] = flavor
    return flavor


def unregister_flavor(name: str) -> None:
    """Forget a flavour (tests that add a throwaway one)."""
    FLAVORS.pop(name.lower(), None)


def names() -> list[str]:
    return list(FLAVORS)


def get_flavor(name: str, field: str = "task.mpi.flavor") -> Flavor:
    try:
        return FLAVORS[name.lower()]
    except KeyError:
        raise SpecError(field, f"unknown MPI flavour {name!r}",
                        f"choose one of: {', '.join(FLAVORS)}") from None


for _f in (IntelMpi(), MsMpi(), OpenMpi(), Mpich()):
    register_flavor(_f)

__all__ = ["FLAVORS", "Flavor", "Launch", "get_flavor", "names", "register_flavor", "unregister_flavor"]
