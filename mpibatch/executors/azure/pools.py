"""Pools: read one and check that a multi-instance task fits it, or create one fit for MPI.

A task that could never start on its pool (inter-node communication off, more than one task slot per
node, too few nodes) stays active forever without an error from Batch, so the check runs before
anything is created (docs/batch-semantics.md#pool-rules).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from ... import poolcheck, poolfacts, rdma
from ...errors import SpecError, SpecErrors
from ...mpi import get_flavor
from ...payload import image_reference
from ...render import Rendered, render
from ...spec import IMAGE_ALIASES, Command, Image, Job, Mpi, Pool, Spec, Task
from .client import Batch

Say = Callable[[str, str], None]


def get_pool(batch: Batch, pool_id: str, field: str = "job.pool") -> dict[str, Any]:
    """The pool as REST JSON (camelCase); bad input when it does not exist."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        pool = batch.call(f"getting pool {pool_id}", batch.client.get_pool, pool_id)
    except ResourceNotFoundError:
        raise SpecError(field, f"pool {pool_id!r} does not exist in Batch account {batch.account.name}",
                        "create it with `mpibatch pool create SPEC`, or name an existing pool") from None
    return dict(pool.as_dict())


def raise_errors(problems: list[poolcheck.Problem], say: Say) -> None:
    """Warnings are reported; errors raise (all of them at once)."""
    errors = [SpecError(p.field, p.message, p.fix) for p in problems if p.severity == "error"]
    for p in problems:
        if p.severity != "error":
            say("warning", f"{p.field}: {p.message} ({p.fix})")
    if errors:
        raise SpecErrors(errors) if len(errors) > 1 else errors[0]


def check_pool(spec: Spec, pool_json: Mapping[str, Any], say: Say) -> list[poolcheck.Problem]:
    """Check the task fits the pool; errors raise SpecError (nothing is created)."""
    problems = poolcheck.check(spec, poolfacts.pool_from_rest(pool_json))
    raise_errors(problems, say)
    return problems


def follow_pool_size(r: Rendered, pool_json: Mapping[str, Any], say: Say) -> Rendered:
    """`fabric: auto` follows the real pool: without a pool.vm_size in the spec, the pool's VM size
    decides the fabric, and the task is rendered again with it. A task rendered by something other
    than `render` (a benchmark's own command line) is kept as it is: its maker must pass the size."""
    spec = r.spec
    size = poolfacts.pool_from_rest(pool_json).vm_size
    if spec.task.mpi.fabric != "auto" or not size or (spec.pool and spec.pool.vm_size):
        return r
    if rdma.classify(size) == r.fabric or r != render(spec):  # nothing changes, or not ours to re-render
        return r
    followed = render(replace(spec, pool=replace(spec.pool or Pool(), vm_size=size)))
    say("fabric", f"auto: {followed.fabric}, from the pool's VM size {size}")
    return followed


def pool_check(batch: Batch, pool_id: str, spec: Spec | None = None
               ) -> tuple[poolfacts.PoolFacts, list[poolcheck.Problem]]:
    """The pool's facts and problems: the full check with a spec, else the pool-level rules only."""
    facts = poolfacts.pool_from_rest(get_pool(batch, pool_id, field="pool"))
    if spec is not None:
        return facts, poolcheck.check(replace(spec, job=replace(spec.job, pool=facts.id or pool_id)), facts)
    flavor = "msmpi" if facts.os == "windows" else "intelmpi"
    probe = Spec(job=Job(id="pool-check", pool=facts.id or pool_id),
                 task=Task(id="pool-check", command=Command(argv=("true",)), mpi=Mpi(flavor=flavor), instances=1),
                 pool=Pool(id=facts.id, vm_size=facts.vm_size))
    return facts, [p for p in poolcheck.check(probe, facts) if p.field.startswith("pool.")]


def pool_create(batch: Batch, spec: Spec, say: Say, *, msmpi_installer_url: str | None = None) -> dict[str, Any]:
    """Create a pool fit for MPI from the spec's `pool:` section; returns the REST body sent."""
    from azure.core.exceptions import ResourceExistsError

    p = spec.pool
    if p is None or not p.id:
        raise SpecError("pool.id", "is missing", "add a pool section with id, vm_size and nodes")
    missing = [n for n, v in (("pool.vm_size", p.vm_size), ("pool.nodes", p.nodes)) if v is None]
    if missing:
        raise SpecError(missing[0], "is missing", "give vm_size (e.g. Standard_HB120rs_v3) and nodes")
    image = p.image or choose_image(spec)
    p = replace(p, image=image, inter_node_communication=True, task_slots_per_node=1)
    spec = replace(spec, pool=p)
    raise_errors(poolcheck.check(spec, poolfacts.pool_from_spec(p)), say)
    body = pool_body(p, image, start_task(spec, image, msmpi_installer_url))
    try:
        batch.call(f"creating pool {p.id}", batch.client.create_pool, body)
    except ResourceExistsError:
        raise SpecError("pool.id", f"pool {p.id!r} already exists in Batch account {batch.account.name}",
                        f"check it with `mpibatch pool check {p.id}` or choose another id") from None
    spot = f" + {p.spot_nodes} Spot/low-priority" if p.spot_nodes else ""
    say("pool", f"{p.id} created: {p.nodes}{spot} x {p.vm_size}, {image.offer}/{image.sku}, inter-node on, "
        "1 task slot per node")
    return dict(body.as_dict())


def pool_body(p: Pool, image: Image, start: Any) -> Any:
    """The pool an MPI task can run on: inter-node communication, 1 slot per node, nodes spread; Spot nodes
    (pool.spot_nodes) are the REST API's targetLowPriorityNodes (low-priority on Batch-managed accounts)."""
    from azure.batch import models as bm

    assert p.id and p.vm_size  # pool_create checked them
    return bm.BatchPoolCreateOptions(
        id=p.id, vm_size=p.vm_size, virtual_machine_configuration=image_reference(image),
        target_dedicated_nodes=p.nodes, target_low_priority_nodes=p.spot_nodes or None,
        enable_inter_node_communication=True, task_slots_per_node=1, start_task=start,
        task_scheduling_policy=bm.BatchTaskSchedulingPolicy(node_fill_type=bm.BatchNodeFillType.SPREAD))


def choose_image(spec: Spec) -> Image:
    """The image for a pool created by mpibatch: Windows for MS-MPI, otherwise the Ubuntu HPC image
    (InfiniBand drivers, HPC-X / Intel MPI), which also suits sizes without RDMA."""
    if get_flavor(spec.task.mpi.flavor).os == "windows":
        return IMAGE_ALIASES["windows"]
    return IMAGE_ALIASES["ubuntu-hpc"]


def start_task(spec: Spec, image: Image, msmpi_installer_url: str | None) -> Any:
    """What each node installs when it joins the pool (as the pool's admin auto-user, waited for)."""
    from azure.batch import models as bm

    from ...shell import bash_c

    admin = bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope=bm.AutoUserScope.POOL,
                                                              elevation_level=bm.ElevationLevel.ADMIN))
    if image.os == "windows":
        if not msmpi_installer_url:
            raise SpecError("--msmpi-installer", "Windows MPI pools install MS-MPI in their start task, and "
                            "mpibatch needs the installer's URL",
                            "pass --msmpi-installer URL of MSMpiSetup.exe (your copy in blob storage, or "
                            "Microsoft's download link)")
        if not msmpi_installer_url.startswith(("https://", "http://")):
            raise SpecError("--msmpi-installer", "is not an http(s) URL", "give the URL of MSMpiSetup.exe")
        return bm.BatchStartTask(
            command_line="cmd /c MSMpiSetup.exe -unattend -force",
            resource_files=[bm.ResourceFile(http_url=msmpi_installer_url, file_path="MSMpiSetup.exe")],
            user_identity=admin, wait_for_success=True, max_task_retry_count=2)
    packages = get_flavor(spec.task.mpi.flavor).node_packages
    steps = ["set -e",
             "install() { if command -v apt-get >/dev/null; then apt-get update -q && "
             "DEBIAN_FRONTEND=noninteractive apt-get install -y -q \"$1\"; else dnf install -y \"$2\"; fi; }",
             "command -v python3 >/dev/null || install python3 python3"]
    if packages:
        probe, deb, rpm = packages
        steps.append(f"command -v {probe} >/dev/null || ls /opt/*/bin/{probe} >/dev/null 2>&1 || install {deb} {rpm}")
    return bm.BatchStartTask(command_line=bash_c("\n".join(steps)), user_identity=admin, wait_for_success=True,
                             max_task_retry_count=2)


__all__ = ["check_pool", "choose_image", "follow_pool_size", "get_pool", "pool_body", "pool_check", "pool_create",
           "start_task"]
