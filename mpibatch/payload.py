"""Rendered task -> azure-batch 15.1 models (and the REST JSON they serialise to)."""
from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import timedelta

from azure.batch import models as bm

from . import conventions
from .launchers.protocol import CHECKPOINT_URL_VAR, TASK_LOG
from .render import PERSIST_URL_VAR, Rendered, source_label
from .spec import FileRef, Image

# What `render` shows where a real URL only exists at submit time.
OUTPUT_CONTAINER_PLACEHOLDER = "<job container URL + write SAS, created at submit>"
PERSIST_PLACEHOLDER = "<job container URL + write-only SAS for subtask outputs, created at submit>"
CHECKPOINT_PLACEHOLDER = "<job container URL + checkpoint SAS (racwdl), created at submit>"


def _admin_pool_user() -> bm.UserIdentity:
    # Linux MPI: the pool-scoped auto-user is the same account, with the same SSH setup, on every node.
    return bm.UserIdentity(auto_user=bm.AutoUserSpecification(scope=bm.AutoUserScope.POOL,
                                                              elevation_level=bm.ElevationLevel.ADMIN))


def resource_files(refs: tuple[FileRef, ...], url_for: Callable[[FileRef], str]) -> list[bm.ResourceFile]:
    return [bm.ResourceFile(http_url=url_for(r), file_path=r.path) for r in refs]


def output_files(r: Rendered, container_url: str) -> list[bm.OutputFile]:
    """The primary's outputs (instance 0) and logs, uploaded by Batch when the task completes, under
    File Conventions names. Subtasks have no output files in Batch: see persist.py."""
    task_id = r.spec.task.id
    upload = bm.OutputFileUploadConfiguration(upload_condition=bm.OutputFileUploadCondition.TASK_COMPLETION)
    out = [bm.OutputFile(file_pattern="../std*.txt", upload_options=upload, destination=bm.OutputFileDestination(
        container=bm.OutputFileBlobContainerDestination(
            container_url=container_url, path=conventions.instance_output_prefix(task_id, TASK_LOG, 0))))]
    for o in r.outputs:
        # With a wildcard, `path` is a virtual directory and matches keep their relative paths.
        prefix = conventions.instance_output_prefix(task_id, o.kind, 0)
        if not any(c in o.pattern for c in "*?["):  # one file: Batch takes `path` as the blob's name
            prefix = conventions.instance_output_blob(task_id, o.kind, 0, o.pattern)
        out.append(bm.OutputFile(file_pattern=o.pattern, upload_options=upload,
                                 destination=bm.OutputFileDestination(container=bm.OutputFileBlobContainerDestination(
                                     container_url=container_url, path=prefix))))
    return out


def batch_task(r: Rendered, *, url_for: Callable[[FileRef], str] | None = None,
               container_url: str = OUTPUT_CONTAINER_PLACEHOLDER,
               persist_url: str = PERSIST_PLACEHOLDER,
               checkpoint_url: str = CHECKPOINT_PLACEHOLDER) -> bm.BatchTaskCreateOptions:
    url_for = url_for or source_label
    t = r.spec.task
    env = dict(r.environment)
    if r.os == "linux":
        env[PERSIST_URL_VAR] = persist_url
    if r.os == "linux" and t.checkpoint:  # only a task that checkpoints gets read, list and delete
        env[CHECKPOINT_URL_VAR] = checkpoint_url
    constraints = bm.BatchTaskConstraints(
        max_wall_clock_time=timedelta(seconds=t.max_wall_clock) if t.max_wall_clock else None,
        retention_time=timedelta(seconds=t.retention) if t.retention else None,
        max_task_retry_count=t.max_retries)
    return bm.BatchTaskCreateOptions(
        id=t.id,
        command_line=r.command_line,
        resource_files=resource_files(r.files, url_for) or None,
        output_files=output_files(r, container_url),
        environment_settings=[bm.EnvironmentSetting(name=k, value=v) for k, v in sorted(env.items())] or None,
        constraints=constraints,
        required_slots=1,
        user_identity=_admin_pool_user() if r.os == "linux" else None,
        multi_instance_settings=bm.MultiInstanceSettings(
            number_of_instances=t.instances,
            coordination_command_line=r.coordination_command_line,
            common_resource_files=resource_files(r.common_files, url_for)),
    )


def batch_job(r: Rendered, *, url_for: Callable[[FileRef], str] | None = None) -> bm.BatchJobCreateOptions:
    url_for = url_for or source_label
    job = r.spec.job
    prep = rel = None
    if job.preparation and r.preparation_command_line:
        prep = bm.BatchJobPreparationTask(
            command_line=r.preparation_command_line, wait_for_success=True,
            resource_files=resource_files(job.preparation.files, url_for) or None,
            user_identity=_admin_pool_user() if r.os == "linux" else None)
    if job.release and r.release_command_line:
        rel = bm.BatchJobReleaseTask(command_line=r.release_command_line,
                                     user_identity=_admin_pool_user() if r.os == "linux" else None)
    return bm.BatchJobCreateOptions(id=job.id, pool_info=bm.BatchPoolInfo(pool_id=job.pool or "<pool id>"),
                                    job_preparation_task=prep, job_release_task=rel)


def image_reference(image: Image) -> bm.VirtualMachineConfiguration:
    return bm.VirtualMachineConfiguration(
        image_reference=bm.BatchVmImageReference(publisher=image.publisher, offer=image.offer, sku=image.sku,
                                                 version=image.version),
        node_agent_sku_id=image.node_agent)


def payload_json(r: Rendered, **kw: object) -> dict[str, Mapping]:
    """`{"job": ..., "task": ...}` as the Batch REST API takes them (camelCase)."""
    return {"job": batch_job(r).as_dict(), "task": batch_task(r, **kw).as_dict()}  # type: ignore[arg-type]
