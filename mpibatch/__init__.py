"""mpibatch: run MPI programs as Azure Batch multi-instance tasks, and rehearse them locally or over SSH."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import InfraError, MpibatchError, SpecError
from .spec import Spec, load_spec, parse_spec

if TYPE_CHECKING:
    from .results import TaskResult

__version__ = "0.1.0"


def run(spec: Spec, **options: Any) -> TaskResult:
    """Run `spec` on this machine with Batch semantics (the local executor) and return its result."""
    from .executors import get_executor

    return get_executor("local", **options).submit(spec).result()


__all__ = ["InfraError", "MpibatchError", "Spec", "SpecError", "load_spec", "parse_spec", "run"]
