"""The run spec: dataclasses, loading from YAML, validation.

Field names are a user-facing contract (see README "The spec"). Every problem raises SpecError
naming the field and saying how to fix it; all problems found are reported together.

This module owns the sections (job, pool, task) and the public entry points; the pieces live in
spec_model (the dataclasses), spec_fields (one parser per field), spec_checks (rules across sections)
and spec_yaml (the bounded YAML loader). Every public name of those is importable from here.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from .durations import parse_duration
from .errors import SpecError, shown
from .spec_checkpoint import parse_checkpoint
from .spec_checks import MAX_ARG_BYTES, MAX_COMMAND_BYTES, MAX_ENVIRONMENT_BYTES, cross_checks
from .spec_fields import (
    ENV_NAME_RE,
    SETUP_KINDS,
    SETUP_WORD_RE,
    Collector,
    SourceCheck,
    as_choice,
    as_int,
    as_mapping,
    as_str,
    check_keys,
    check_node_path,
    parse_command,
    parse_environment,
    parse_files,
    parse_image,
    parse_node_task,
    parse_outputs,
    parse_setup,
    validate_id,
)
from .spec_model import IMAGE_ALIASES, Command, FileRef, Image, Job, Mpi, NodeTask, Output, Pool, Setup, Spec, Task
from .spec_yaml import MAX_SPEC_BYTES, MAX_YAML_DEPTH, parse_yaml, read_spec_text

__all__ = [
    "Command", "ENV_NAME_RE", "FABRICS", "FileRef", "IMAGE_ALIASES", "Image", "Job", "MAX_ARG_BYTES",
    "MAX_COMMAND_BYTES", "MAX_ENVIRONMENT_BYTES", "MAX_INSTANCES", "MAX_SPEC_BYTES", "MAX_YAML_DEPTH", "Mpi",
    "NodeTask", "Output", "Pool", "SETUP_KINDS", "SETUP_WORD_RE", "SHARED_DIRS", "Setup", "Spec", "Task",
    "check_node_path", "load_spec", "parse_spec", "parse_yaml", "read_spec_text", "validate_id",
]

FABRICS = ("auto", "tcp", "sriov", "networkdirect")
SHARED_DIRS = ("none", "sshfs", "nfs")
MAX_INSTANCES = 100  # Batch caps inter-node communication pools at 100 nodes


def _pool(value: Any) -> Pool | None:
    if value is None:
        return None
    from . import rdma

    m = as_mapping(value, "pool")
    keys = ("id", "vm_size", "nodes", "spot_nodes", "low_priority_nodes", "image", "inter_node_communication",
            "task_slots_per_node")
    c = Collector()
    c.run(lambda: check_keys(m, keys, "pool"))
    pid = c.run(lambda: validate_id(m["id"], "pool.id")) if "id" in m else None
    vm = c.run(lambda: rdma.validate_vm_size(m["vm_size"], "pool.vm_size")) if "vm_size" in m else None
    nodes = c.run(lambda: as_int(m["nodes"], "pool.nodes", 0, 1000)) if "nodes" in m else None
    low = c.run(lambda: _spot_nodes(m), 0)
    image = c.run(lambda: parse_image(m.get("image"), "pool.image"))
    inc = m.get("inter_node_communication", True)
    if not isinstance(inc, bool):
        c.errors.append(SpecError("pool.inter_node_communication", f"{shown(inc)} is not true/false",
                                  "write true or false"))
        inc = True
    slots = c.run(lambda: as_int(m.get("task_slots_per_node", 1), "pool.task_slots_per_node", 1, 256), 1)
    c.raise_if_any()
    return Pool(id=pid, vm_size=vm, nodes=nodes, spot_nodes=low, image=image,
                inter_node_communication=inc, task_slots_per_node=slots)


def _spot_nodes(m: Mapping[str, Any]) -> int:
    """pool.spot_nodes: Spot nodes (low-priority ones on Batch-managed accounts; both are the REST API's
    targetLowPriorityNodes). `low_priority_nodes` is its older name."""
    if "spot_nodes" in m and "low_priority_nodes" in m:
        raise SpecError("pool.spot_nodes", "is given together with pool.low_priority_nodes, its older name",
                        "keep pool.spot_nodes only")
    name = "low_priority_nodes" if "low_priority_nodes" in m else "spot_nodes"
    return as_int(m.get(name, 0), f"pool.{name}", 0, 1000)


def _mpi(value: Any) -> Mpi:
    from .mpi import names as flavor_names

    flavors = tuple(flavor_names())
    if value is None:
        raise SpecError("task.mpi", "is missing", f"add mpi: {{flavor: {'|'.join(flavors)}}}")
    if isinstance(value, str):
        value = {"flavor": value}
    m = as_mapping(value, "task.mpi")
    c = Collector()
    c.run(lambda: check_keys(m, ("flavor", "processes_per_node", "options", "fabric", "setup"), "task.mpi"))
    if "flavor" not in m:
        c.errors.append(SpecError("task.mpi.flavor", "is missing", f"choose one of: {', '.join(flavors)}"))
    flavor = c.run(lambda: as_choice(m["flavor"], "task.mpi.flavor", flavors)) if "flavor" in m else None
    setup = c.run(lambda: parse_setup(m.get("setup"), "task.mpi.setup"))
    ppn = c.run(lambda: as_int(m.get("processes_per_node", 1), "task.mpi.processes_per_node", 1, 4096), 1)
    fabric = c.run(lambda: as_choice(m.get("fabric", "auto"), "task.mpi.fabric", FABRICS), "auto")
    opts = m.get("options", []) or []
    if not isinstance(opts, list):
        c.errors.append(SpecError("task.mpi.options", "expected a list of launcher arguments",
                                  "write e.g. [-genv, I_MPI_DEBUG, '5']"))
        opts = []
    options = tuple(c.run(partial(as_str, o, f"task.mpi.options[{i}]"), "") for i, o in enumerate(opts))
    c.raise_if_any()
    assert flavor is not None  # for mypy: a missing one was an error above
    return Mpi(flavor=flavor, processes_per_node=ppn, options=options, fabric=fabric, setup=setup)


def _task(value: Any, base_dir: Path, check: SourceCheck | None) -> Task:
    m = as_mapping(value, "task")
    keys = ("id", "instances", "mpi", "command", "coordination", "shared_dir", "common_files", "files",
            "environment", "outputs", "max_wall_clock", "max_retries", "retention", "checkpoint")
    c = Collector()
    c.run(lambda: check_keys(m, keys, "task"))
    if "id" not in m:
        c.errors.append(SpecError("task.id", "is missing", "give the task an id such as run-1"))
    tid = c.run(lambda: validate_id(m["id"], "task.id")) if "id" in m else None
    instances = c.run(lambda: as_int(m.get("instances", 1), "task.instances", 1, MAX_INSTANCES), 1)
    mpi = c.run(lambda: _mpi(m.get("mpi")))
    if "command" not in m:
        c.errors.append(SpecError("task.command", "is missing", "give the program, e.g. [python, app.py]"))
    cmd = c.run(lambda: parse_command(m["command"], "task.command")) if "command" in m else None
    coord = m.get("coordination") or None
    if coord is not None:
        coord = c.run(lambda: as_str(coord, "task.coordination"))
    shared = c.run(lambda: as_choice(m.get("shared_dir", "none"), "task.shared_dir", SHARED_DIRS), "none")
    common = c.run(lambda: parse_files(m.get("common_files"), "task.common_files", base_dir, check), ())
    files = c.run(lambda: parse_files(m.get("files"), "task.files", base_dir, check), ())
    env = c.run(lambda: parse_environment(m.get("environment"), "task.environment"), {})
    outputs = c.run(lambda: parse_outputs(m.get("outputs"), "task.outputs"), ())
    wall = c.run(lambda: parse_duration(m["max_wall_clock"], "task.max_wall_clock")) \
        if m.get("max_wall_clock") is not None else None
    retries = c.run(lambda: as_int(m.get("max_retries", 0), "task.max_retries", 0, 100), 0)
    retention = c.run(lambda: parse_duration(m["retention"], "task.retention")) \
        if m.get("retention") is not None else None
    checkpoint = c.run(lambda: parse_checkpoint(m.get("checkpoint")))
    c.raise_if_any()
    assert tid is not None and cmd is not None  # for mypy: a missing one was an error above
    return Task(id=tid, command=cmd, mpi=mpi, instances=instances, coordination=coord, shared_dir=shared,
                common_files=common, files=files, environment=env, outputs=outputs, max_wall_clock=wall,
                max_retries=retries, retention=retention, checkpoint=checkpoint)


def _job(value: Any, base_dir: Path, check: SourceCheck | None) -> Job:
    m = as_mapping(value, "job")
    c = Collector()
    c.run(lambda: check_keys(m, ("id", "pool", "preparation", "release"), "job"))
    if "id" not in m:
        c.errors.append(SpecError("job.id", "is missing", "give the job an id such as cfd-run-1"))
    jid = c.run(lambda: validate_id(m["id"], "job.id")) if "id" in m else None
    pool = c.run(lambda: validate_id(m["pool"], "job.pool")) if m.get("pool") is not None else None
    prep = c.run(lambda: parse_node_task(m.get("preparation"), "job.preparation", base_dir, check))
    rel = c.run(lambda: parse_node_task(m.get("release"), "job.release", base_dir))
    if rel is not None and rel.files:
        c.errors.append(SpecError("job.release.files", "a job release task takes no files",
                                  "download them in job.preparation instead"))
    c.raise_if_any()
    assert jid is not None  # for mypy: a missing one was an error above
    return Job(id=jid, pool=pool, preparation=prep, release=rel)



def parse_spec(data: Any, base_dir: Path | str = ".", *, check_source: SourceCheck | None = None) -> Spec:
    """Build a validated Spec from a mapping (e.g. parsed YAML). Relative local sources resolve
    against `base_dir`; `check_source(path, field)`, if given, vets each local source in the same pass."""
    base = Path(base_dir)
    m = as_mapping(data, "")
    c = Collector()
    c.run(lambda: check_keys(m, ("job", "pool", "task"), ""))
    if "job" not in m:
        c.errors.append(SpecError("job", "is missing", "add a job section with at least job.id"))
    if "task" not in m:
        c.errors.append(SpecError("task", "is missing", "add a task section with id, mpi and command"))
    job = c.run(lambda: _job(m["job"], base, check_source)) if "job" in m else None
    pool = c.run(lambda: _pool(m.get("pool")))
    task = c.run(lambda: _task(m["task"], base, check_source)) if "task" in m else None
    c.raise_if_any()
    assert job is not None and task is not None  # for mypy: a missing one was an error above
    spec = Spec(job=job, task=task, pool=pool, base_dir=base)
    if spec.job.pool is None and pool and pool.id:
        spec = replace(spec, job=replace(spec.job, pool=pool.id))
    cross_checks(spec)
    return spec


def load_spec(path: str | Path, *, check_files: bool = False) -> Spec:
    """Read and validate a YAML spec file. `check_files`: also check, in the same pass, that every local
    source is a readable file (for commands that run or upload them; render does not need them)."""
    p = Path(path)
    data = parse_yaml(read_spec_text(p), str(p))
    if data is None:
        raise SpecError(str(p), "is empty", "start from a working one: mpibatch init hello DIR writes DIR/spec.yaml")
    return parse_spec(data, p.parent, check_source=_readable_source if check_files else None)


def _readable_source(path: str, field: str) -> None:
    from .inputfiles import check_readable_file

    check_readable_file(path, field=f"{field} {path}",
                        fix="give a readable regular file (relative paths are relative to the spec file)")

