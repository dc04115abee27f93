"""Does this pool run this task? Everything that would make a multi-instance task never start or
silently run slow, checked before anything is submitted (issue 2, item 7). Pure: no I/O.

A pool's :class:`~mpibatch.poolfacts.PoolFacts` (from the spec's `pool:` section or the Batch REST API's
pool JSON: mpibatch/poolfacts.py) go through every rule of RULES; :func:`check` returns a list of
:class:`Problem`, each naming the field to change and saying how.

Why these rules (docs/batch-semantics.md#pool-rules, docs/mpi-launch-rules.md):

* a pool without inter-node communication, or with more than one task slot per node, or with fewer nodes
  than the task's instances, never schedules the task: it stays *active* forever and Batch reports no error;
* a Spot/low-priority node can be preempted at any moment: the task is requeued and, without a
  checkpoint, runs again from its start (what the Batch docs say is quoted in SPOT_DOCUMENTED);
* RDMA settings on a size without InfiniBand make the MPI runtime fail at start; an RDMA size without the
  HPC image's drivers, or a runtime that cannot use the size's fabric (Open MPI / MPICH on NetworkDirect),
  runs over TCP at about ten times the latency.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

from . import rdma
from .launchers.protocol import RESTART_VAR
from .mpi import FLAVORS, get_flavor
from .poolfacts import PoolFacts
from .spec import IMAGE_ALIASES, Image, Spec

__all__ = ["Problem", "check", "summary"]

Severity = Literal["error", "warning"]

_HPC_IMAGES = "pool.image: ubuntu-hpc (microsoft-dsvm/ubuntu-hpc, node agent batch.node.ubuntu 22.04) or " \
              "almalinux-hpc (almalinux/almalinux-hpc, node agent batch.node.el 8)"
_REST_HPC_IMAGES = "an HPC image: microsoft-dsvm/ubuntu-hpc with node agent 'batch.node.ubuntu 22.04', or " \
                   "almalinux/almalinux-hpc with 'batch.node.el 8'"


@dataclass(frozen=True)
class Problem:
    """One thing to fix. `field` names what to change (a spec field such as ``task.instances`` or, for
    a pool read from the REST API, its property such as ``pool.enableInterNodeCommunication``)."""

    field: str
    message: str
    fix: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.severity}: {self.field}: {self.message} ({self.fix})"


# ---------------------------------------------------------------------------------------------- the checks

def _either(names: list[str]) -> str:
    """'a, b or c'."""
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1] if names else ""


def _fabric(spec: Spec) -> str:
    """The fabric the rendered task carries (render.resolve_fabric: auto follows the spec's vm_size)."""
    from .render import resolve_fabric  # render imports the MPI flavours; keep this module light to import

    return resolve_fabric(spec)


def _image_name(image: Image) -> str:
    full = f"{image.publisher}/{image.offer}/{image.sku}"
    alias = next((a for a, known in IMAGE_ALIASES.items() if known == image), None)
    return f"{alias} ({full})" if alias else full


@dataclass(frozen=True)
class _Case:
    """What every rule looks at: the spec, the pool, and facts derived once."""

    spec: Spec
    pool: PoolFacts

    @property
    def rest(self) -> bool:
        return self.pool.source == "rest"

    @property
    def name(self) -> str:
        return f"pool {self.pool.id}" if self.pool.id else "the pool"

    @property
    def cls(self) -> str:
        return rdma.classify(self.pool.vm_size) if self.pool.vm_size else rdma.NONE

    @property
    def rendered(self) -> str:
        return _fabric(self.spec)


Rule = Callable[[_Case], Iterator[Problem]]


# -- the pool itself ----------------------------------------------------------------------------
def _pool_named(c: _Case) -> Iterator[Problem]:
    pool, job_pool = c.pool, c.spec.job.pool
    if pool.id and job_pool and pool.id.lower() != job_pool.lower():  # Batch ids ignore case
        yield Problem("job.pool", f"the job runs on pool {job_pool!r} but the pool checked is {pool.id!r}",
                      f"set job.pool: {pool.id} or check the pool the job runs on")
    if pool.state == "deleting":
        yield Problem("pool.state", f"pool {pool.id!r} is being deleted", "create a new pool and point job.pool at it")


def _inter_node(c: _Case) -> Iterator[Problem]:
    if not c.pool.inter_node_communication:
        yield Problem(c.pool.field("inter_node_communication", "enableInterNodeCommunication"),
                      "inter-node communication is off: Batch never schedules a multi-instance task on this pool "
                      "(it stays active forever, with no error)",
                      "set pool.inter_node_communication: true" if not c.rest else
                      "create the pool with enableInterNodeCommunication: true (an existing pool can change it "
                      "only while it has 0 nodes)")


def _slots(c: _Case) -> Iterator[Problem]:
    if c.pool.task_slots_per_node > 1:
        yield Problem(c.pool.field("task_slots_per_node", "taskSlotsPerNode"),
                      f"{c.pool.task_slots_per_node} task slots per node: a multi-instance task needs pools with 1 "
                      "slot per node and is never scheduled otherwise",
                      "set pool.task_slots_per_node: 1 (run more ranks per node with task.mpi.processes_per_node)"
                      if not c.rest else "use a pool with taskSlotsPerNode: 1 (an existing pool can change it "
                      "only while it has 0 nodes); run more ranks per node with task.mpi.processes_per_node")


# -- nodes --------------------------------------------------------------------------------------
def _node_count(c: _Case) -> Iterator[Problem]:
    pool, instances, nodes = c.pool, c.spec.task.instances, c.pool.nodes
    grow = "set pool.nodes" if not c.rest else "resize the pool (targetDedicatedNodes)"
    severity: Severity = "warning" if pool.auto_scale else "error"
    scale_note = " (the pool autoscales: its formula must grow it while the task waits)" if pool.auto_scale else ""
    if nodes == 0:
        yield Problem(pool.field("nodes", "targetDedicatedNodes"),
                      f"{c.name} has 0 nodes: the task waits until it has {instances}{scale_note}",
                      f"{grow} to at least {instances}", severity)
    elif nodes is not None and instances > nodes:
        errs = f"; resize errors: {'; '.join(pool.resize_errors)}" if pool.resize_errors else ""
        yield Problem("task.instances", f"{instances} instances but the pool has {nodes} node(s) "
                      f"({pool.dedicated_nodes} dedicated + {pool.low_priority_nodes} low-priority/Spot): the task "
                      f"would never start{scale_note}{errs}",
                      f"lower task.instances to {nodes} or {grow} to at least {instances}", severity)
    elif pool.resize_errors:
        yield Problem("pool.resizeErrors", f"the last resize failed: {'; '.join(pool.resize_errors)}",
                      "fix the cause (quota, capacity) before the pool shrinks or is resized again", "warning")


# What the Batch docs say about Spot / low-priority nodes, quoted by the rules below (the page dated 2023-04-11).
SPOT_DOCS = "https://learn.microsoft.com/azure/batch/batch-spot-vms"
SPOT_DOCUMENTED = (
    f"the Batch docs ({SPOT_DOCS}) put no restriction on multi-instance tasks or inter-node communication "
    "on Spot/low-priority nodes, but say long-running MPI jobs over several VMs aren't well suited to them: "
    "one preempted VM can make the whole job run again; the interrupted task is requeued and the preempted "
    "VM's local data is lost")


def _spot(c: _Case) -> Iterator[Problem]:
    if c.pool.low_priority_nodes > 0:
        mixed = c.pool.dedicated_nodes not in (None, 0)
        yield Problem(c.pool.field("spot_nodes", "targetLowPriorityNodes"),
                      ("the pool mixes dedicated and Spot/low-priority nodes" if mixed else
                       "the pool's nodes are Spot/low-priority") + f": {SPOT_DOCUMENTED}",
                      "give the task a task.checkpoint so a requeued attempt restores it, or use dedicated nodes "
                      + ("only (pool.spot_nodes: 0)" if not c.rest else "only (targetLowPriorityNodes: 0)"),
                      "warning")


def _spot_checkpoint(c: _Case) -> Iterator[Problem]:
    if c.pool.low_priority_nodes > 0 and c.spec.task.checkpoint is None:
        yield Problem("task.checkpoint", f"{c.name} has Spot/low-priority nodes and the task saves no "
                      "checkpoint: every preemption starts it again from its first step",
                      'add task.checkpoint: {pattern: "restart.*", every: 10m} naming the files your program '
                      f"writes to resume (it reads {RESTART_VAR}=1 on a restored attempt)", "warning")


# -- operating system ---------------------------------------------------------------------------
def _os(c: _Case) -> Iterator[Problem]:
    flavor, pool = get_flavor(c.spec.task.mpi.flavor), c.pool
    if pool.os in ("linux", "windows") and flavor.os != pool.os:
        fits = _either([n for n, f in FLAVORS.items() if f.os == pool.os])
        agent = "batch.node.windows amd64" if flavor.os == "windows" else "batch.node.ubuntu 22.04"
        yield Problem("task.mpi.flavor", f"{flavor.name} needs a {flavor.os.capitalize()} pool but {c.name} runs "
                      f"{pool.os.capitalize()} ({pool.node_agent})", f"use {fits or 'another flavour'} on "
                      f"{pool.os.capitalize()} pools, or a {flavor.os.capitalize()} pool (node agent {agent}) "
                      f"for {flavor.name}")


# -- fabric and RDMA (pools whose size is known) ------------------------------------------------
def _vm_size_differs(c: _Case) -> Iterator[Problem]:
    size, asked = c.pool.vm_size, c.spec.pool.vm_size if c.spec.pool else None
    if size and asked and c.rest and asked.lower() != size.lower():
        differs = rdma.classify(asked) != c.cls
        yield Problem("pool.vm_size", f"the spec says {asked} but {c.name} is {size}",
                      f"set pool.vm_size: {size} so that the rendered task gets {size}'s fabric settings",
                      "error" if differs else "warning")


def _rdma_settings(c: _Case) -> Iterator[Problem]:
    size, cls = c.pool.vm_size, c.cls
    if not size:
        return
    rendered, asked = c.rendered, c.spec.task.mpi.fabric
    follow = f"set pool.vm_size: {size} in the spec (fabric auto follows it)"
    if rendered in (rdma.SRIOV, rdma.NETWORKDIRECT) and cls == rdma.NONE:
        yield Problem("task.mpi.fabric", f"the task carries {rendered} (InfiniBand) settings but {size} has no "
                      "InfiniBand: the MPI runtime would fail to start or fall back to TCP",
                      "use task.mpi.fabric: auto or tcp, or an RDMA size such as Standard_HB120rs_v3"
                      if asked != "auto" else follow)
    elif rendered in (rdma.SRIOV, rdma.NETWORKDIRECT) and cls != rendered:
        yield Problem("task.mpi.fabric", f"the task carries {rendered} settings but {size} is a {cls} size",
                      f"use task.mpi.fabric: auto (gives {cls} on {size})" if asked != "auto" else follow)


def _rdma_unused(c: _Case) -> Iterator[Problem]:
    size, cls = c.pool.vm_size, c.cls
    if not size or cls == rdma.NONE:
        return
    rendered = c.rendered
    if rendered == "tcp":
        yield Problem("task.mpi.fabric", f"fabric tcp on {size}, an InfiniBand ({cls}) size: the run pays for RDMA "
                      "and gets TCP latency (about 10x slower for small messages)",
                      "use task.mpi.fabric: auto, or a cheaper size without RDMA if TCP is intended", "warning")
    elif rendered == rdma.NONE:
        yield Problem("task.mpi.fabric", f"{size} is an InfiniBand ({cls}) size but the rendered task carries no "
                      "fabric settings (fabric auto, and the spec has no pool.vm_size to pick them from)",
                      f"set pool.vm_size: {size} in the spec, or task.mpi.fabric: {cls}", "warning")


def _drivers(c: _Case) -> Iterator[Problem]:
    pool, size = c.pool, c.pool.vm_size
    if not size or c.cls == rdma.NONE or c.rendered == "tcp" or pool.os == "windows":
        return
    if pool.image is not None and pool.is_hpc_image is False:
        yield Problem(pool.field("image", "virtualMachineConfiguration.imageReference"),
                      f"{size} is an InfiniBand size but the image {_image_name(pool.image)} has no InfiniBand "
                      "drivers: MPI would fail to start with the fabric settings, or run over TCP",
                      f"use {_HPC_IMAGES if not c.rest else _REST_HPC_IMAGES}")
    elif pool.is_hpc_image is None and pool.custom_image:
        yield Problem("pool.virtualMachineConfiguration.imageReference.virtualMachineImageId",
                      f"{size} is an InfiniBand size and the pool runs a custom image ({pool.custom_image}): "
                      "mpibatch cannot tell whether it has the InfiniBand drivers",
                      f"make sure the image is built from {_REST_HPC_IMAGES}", "warning")


def _networkdirect(c: _Case) -> Iterator[Problem]:
    size, flavor = c.pool.vm_size, get_flavor(c.spec.task.mpi.flavor)
    if not size or c.cls != rdma.NETWORKDIRECT or c.rendered == "tcp":
        return
    if flavor.networkdirect == "none":
        yield Problem("task.mpi.flavor", f"{flavor.title} cannot use NetworkDirect RDMA, the only RDMA of {size}: "
                      "ranks would talk TCP (about 10x the latency)",
                      "use flavor: intelmpi on this size (I_MPI_FABRICS=shm:dapl), or an SR-IOV size (HB, HC, "
                      "HX, NDv4...) where Open MPI and MPICH use UCX")
    elif flavor.networkdirect == "dapl":
        yield Problem("task.mpi.flavor", f"{size} speaks NetworkDirect only, through DAPL (I_MPI_FABRICS=shm:dapl), "
                      "which Intel MPI 2019 and later no longer have",
                      "install Intel MPI 2018 or earlier (5.x) on the pool, or use an SR-IOV size", "warning")


# Every pool-vs-task rule, in the order their problems are reported (errors before warnings).
RULES: tuple[Rule, ...] = (_pool_named, _inter_node, _slots, _node_count, _spot, _spot_checkpoint, _os,
                           _vm_size_differs, _rdma_settings, _rdma_unused, _drivers, _networkdirect)


def check(spec: Spec, pool: PoolFacts) -> list[Problem]:
    """Every problem that would keep `spec`'s task from starting on `pool`, or make it silently slow.
    Errors first, then warnings; an empty list means the pool fits."""
    case = _Case(spec, pool)
    out = [problem for rule in RULES for problem in rule(case)]
    out.sort(key=lambda p: p.severity != "error")  # stable: errors first, in rule order
    return out


def summary(spec: Spec, pool: PoolFacts) -> str:
    """One line describing the pool and the task, for a clean check."""
    t = spec.task
    parts = [f"pool {pool.id or '(no id)'}"]
    if pool.vm_size:
        parts.append(f"{pool.vm_size} ({rdma.classify(pool.vm_size)})")
    if pool.nodes is not None:
        lp = f" + {pool.low_priority_nodes} Spot/low-priority" if pool.low_priority_nodes else ""
        parts.append(f"{pool.dedicated_nodes} dedicated{lp} node(s)")
    parts.append("inter-node on" if pool.inter_node_communication else "inter-node OFF")
    parts.append(f"{pool.task_slots_per_node} slot/node")
    if pool.image:
        parts.append(_image_name(pool.image))
    elif pool.custom_image:
        parts.append("custom image")
    task = (f"task {t.id}: {t.instances} instance(s) x {t.mpi.processes_per_node} rank(s), {t.mpi.flavor}, "
            f"fabric {_fabric(spec)}")
    return ", ".join(parts) + " -> " + task
