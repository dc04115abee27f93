"""What poolcheck judges a pool by: one small :class:`PoolFacts`, built from the spec's `pool:` section
(:func:`pool_from_spec`) or from the Batch REST API's ``GET /pools/{id}`` JSON (:func:`pool_from_rest`;
``az batch pool show`` prints the same camelCase JSON). Pure: no I/O.

A REST pool that is malformed raises SpecError naming the property; a pool still resizing counts its
target nodes, a steady one its current nodes (docs/batch-semantics.md#pool-rules).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from . import rdma
from .errors import SpecError
from .spec import Image, Pool

__all__ = ["PoolFacts", "pool_from_rest", "pool_from_spec"]


@dataclass(frozen=True)
class PoolFacts:
    """What the checks need to know about a pool. None means unknown (not checked)."""

    source: Literal["spec", "rest"]
    id: str | None = None
    vm_size: str | None = None
    dedicated_nodes: int | None = None
    low_priority_nodes: int = 0
    inter_node_communication: bool = True
    task_slots_per_node: int = 1
    image: Image | None = None  # marketplace image (with node agent)
    custom_image: str | None = None  # virtualMachineImageId (Azure Compute Gallery): drivers unknown
    node_agent: str | None = None
    auto_scale: bool = False
    state: str | None = None  # REST: active | deleting
    allocation_state: str | None = None  # REST: steady | resizing | stopping
    resize_errors: tuple[str, ...] = ()

    @property
    def nodes(self) -> int | None:
        """Dedicated plus low-priority nodes, or None if unknown."""
        if self.dedicated_nodes is None:
            return None
        return self.dedicated_nodes + self.low_priority_nodes

    @property
    def os(self) -> str | None:
        agent = self.node_agent or (self.image.node_agent if self.image else None)
        if not agent:
            return None
        return "windows" if agent.lower().startswith("batch.node.windows") else "linux"

    @property
    def is_hpc_image(self) -> bool | None:
        """True for images with InfiniBand drivers (the HPC images), None when it cannot be told."""
        if self.image is None:
            return None
        text = f"{self.image.offer} {self.image.sku}".lower()
        return "hpc" in text or "rdma" in text

    # The name of a property where the user changes it: a spec field, or the REST property.
    def field(self, spec_name: str, rest_name: str) -> str:
        return f"pool.{spec_name}" if self.source == "spec" else f"pool.{rest_name}"



def pool_from_spec(pool: Pool) -> PoolFacts:
    """The facts of a spec's `pool:` section (already validated by spec.py)."""
    return PoolFacts(source="spec", id=pool.id, vm_size=pool.vm_size, dedicated_nodes=pool.nodes,
                     low_priority_nodes=pool.spot_nodes,
                     inter_node_communication=pool.inter_node_communication,
                     task_slots_per_node=pool.task_slots_per_node, image=pool.image,
                     node_agent=pool.image.node_agent if pool.image else None)


def _rest_int(data: Mapping[str, Any], key: str, where: str) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SpecError(f"{where}.{key}", f"{value!r} is not a node count", "give the pool JSON as "
                        "GET /pools/{id} or 'az batch pool show' returns it")
    return value


def _rest_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise SpecError(f"{where}.{key}", f"{value!r} is not a string", "give the pool JSON as "
                        "GET /pools/{id} or 'az batch pool show' returns it")
    return value


def _nodes(data: Mapping[str, Any], kind: str, steady: bool, where: str) -> int | None:
    """Nodes of one kind the task can count on: the target while the pool resizes towards it, the
    current count once it is steady (a steady pool below its target hit a resize error)."""
    target = _rest_int(data, f"target{kind}Nodes", where)
    current = _rest_int(data, f"current{kind}Nodes", where)
    if steady and current is not None:
        return current
    return target if target is not None else current


def pool_from_rest(data: Mapping[str, Any], where: str = "pool") -> PoolFacts:
    """Facts of a pool as the Batch REST API returns it (``GET /pools/{id}``, camelCase JSON)."""
    fix = "give the pool JSON as GET /pools/{id} or 'az batch pool show' returns it"
    if not isinstance(data, Mapping):
        raise SpecError(where, f"expected a JSON object, got {type(data).__name__}", fix)
    if "id" not in data and "vmSize" not in data:
        raise SpecError(where, "has neither 'id' nor 'vmSize': not a Batch pool", fix)
    vm_size = _rest_str(data, "vmSize", where)
    if vm_size is not None:
        vm_size = rdma.validate_vm_size(vm_size, f"{where}.vmSize")
    allocation = (_rest_str(data, "allocationState", where) or "").lower() or None
    steady = allocation in ("steady", None)
    dedicated = _nodes(data, "Dedicated", steady, where)
    low = _nodes(data, "LowPriority", steady, where) or 0
    slots = data.get("taskSlotsPerNode", data.get("maxTasksPerNode", 1))  # maxTasksPerNode: API < 2020-09
    if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
        raise SpecError(f"{where}.taskSlotsPerNode", f"{slots!r} is not a slot count", fix)
    inter = data.get("enableInterNodeCommunication", False)  # the REST default is false
    if not isinstance(inter, bool):
        raise SpecError(f"{where}.enableInterNodeCommunication", f"{inter!r} is not true/false", fix)
    vmc = data.get("virtualMachineConfiguration") or {}
    if not isinstance(vmc, Mapping):
        raise SpecError(f"{where}.virtualMachineConfiguration", "is not a JSON object", fix)
    ref = vmc.get("imageReference") or {}
    if not isinstance(ref, Mapping):
        raise SpecError(f"{where}.virtualMachineConfiguration.imageReference", "is not a JSON object", fix)
    agent = _rest_str(vmc, "nodeAgentSKUId", f"{where}.virtualMachineConfiguration")
    image = None
    if ref.get("publisher") and ref.get("offer"):
        image = Image(str(ref["publisher"]), str(ref["offer"]), str(ref.get("sku", "")),
                      str(ref.get("version", "latest")), agent or "")
    errors = data.get("resizeErrors") or []
    resize_errors = tuple(f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ")
                          for e in errors if isinstance(e, Mapping))
    return PoolFacts(source="rest", id=_rest_str(data, "id", where), vm_size=vm_size, dedicated_nodes=dedicated,
                     low_priority_nodes=low, inter_node_communication=inter, task_slots_per_node=slots,
                     image=image, custom_image=ref.get("virtualMachineImageId") if image is None else None,
                     node_agent=agent, auto_scale=bool(data.get("enableAutoScale", False)),
                     state=(_rest_str(data, "state", where) or "").lower() or None, allocation_state=allocation,
                     resize_errors=resize_errors)
