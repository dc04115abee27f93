"""Azure Batch File Conventions: container and blob names, byte-exact with the .NET library.

Pure functions: no network, disk or clock. Sources (azure-sdk-for-net, sdk/batch/Microsoft.Azure.Batch.Conventions
.Files): ``src/Utilities/ContainerNameUtils.cs`` (container names), ``src/StoragePath.cs`` (blob names and the
``../`` rule), ``src/TaskOutputKind.cs`` / ``JobOutputKind.cs`` (kinds), and the README. The code here is ours;
the expected names in the tests come from the library's own unit tests, so tools written against the .NET
library (Batch Explorer, the portal's file view) find what we upload.

Layout in the job's container::

    {taskId}/${Kind}/{path}          task output          (task id case kept)
    ${Kind}/{path}                   job output
    {taskId}/${Kind}/{i}/{path}      ours: output of instance i of a multi-instance task
"""
from __future__ import annotations

import hashlib
import re

from mpibatch.errors import SpecError, shown

__all__ = [
    "CONTAINER_PREFIX",
    "JOB_KINDS",
    "KINDS",
    "MAX_BLOB_NAME",
    "TASK_KINDS",
    "instance_output_blob",
    "instance_output_prefix",
    "job_container_name",
    "job_output_blob",
    "job_output_prefix",
    "normalize_relative_path",
    "task_output_blob",
    "task_output_prefix",
    "validate_job_id",
    "validate_kind",
    "validate_task_id",
]

TASK_KINDS: tuple[str, ...] = ("TaskOutput", "TaskPreview", "TaskLog", "TaskIntermediate")
JOB_KINDS: tuple[str, ...] = ("JobOutput", "JobPreview")
KINDS: tuple[str, ...] = TASK_KINDS + JOB_KINDS

CONTAINER_PREFIX = "job-"
MAX_BLOB_NAME = 1024  # Azure Storage limit on a blob name

# Patterns are applied with fullmatch(): re's '$' also matches before a trailing newline.
_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# Jobs created by a job schedule are named "{scheduleId}:job-{n}" by the Batch service; ':' is why the
# .NET library folds ':' too.
_SCHEDULED_JOB_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}:job-[0-9]+$")
_KIND = re.compile(r"^[A-Za-z0-9]+$")

# ContainerNameUtils.cs
_PERMITTED_CONTAINER_NAME = re.compile(r"^[a-z0-9][-a-z0-9]*$")
_FOLD = re.compile(r"[:_-]+")
_MAX_USABLE_JOB_ID = 63 - len(CONTAINER_PREFIX)  # 59: a container name is at most 63 characters
_MAX_ID_IN_HASHED_NAME = 15  # room is 63 - 4 ("job-") - 1 - 40 (SHA-1 hex) = 18; .NET uses 15, so must we


def validate_batch_id(value: str, field: str, what: str = "id", example: str = "mpi-task-1") -> str:
    """Return `value` if it is a Batch id: up to 64 letters, digits, '-' and '_' (the one id rule)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = repr(value) if isinstance(value, str) else type(value).__name__
        problem = f"the {what} is empty" if value == "" else f"{shown} is not a valid Batch {what}"
        if isinstance(value, str) and len(value) > 64:
            problem = f"the {what} is {len(value)} characters long; the limit is 64"
        raise SpecError(field, problem, f"use at most 64 letters, digits, '-' and '_', e.g. {example}")
    return value


def validate_job_id(job_id: str, field: str = "job.id") -> str:
    """Return `job_id` if it is a Batch job id. Also accepted: ``{scheduleId}:job-{n}``, the id the Batch
    service gives jobs created by a job schedule."""
    if isinstance(job_id, str) and _SCHEDULED_JOB_ID.fullmatch(job_id):
        return job_id
    return validate_batch_id(job_id, field, "job id", "cfd-run-42")


def validate_task_id(task_id: str, field: str = "task.id") -> str:
    """Return `task_id` if it is a Batch task id: up to 64 letters, digits, '-' and '_'."""
    return validate_batch_id(task_id, field, "task id", "mpi-task-1")


def job_container_name(job_id: str, field: str = "job.id") -> str:
    """The blob container the File Conventions use for a job's outputs.

    ``"job-" + id.lower()`` when that is a valid container name; otherwise ``job-{safe}-{sha1}`` where
    sha1 is the hex SHA-1 of the lower-cased id's UTF-8 bytes and safe is the lower-cased id with each run
    of ``[:_-]`` folded to one '-', trimmed of '-', cut to 15 characters (and trimmed again), or ``job``
    if nothing is left. ``MyTerrificJob`` -> ``job-myterrificjob``.
    """
    validate_job_id(job_id, field)
    # Batch ids are unique case-insensitively, so the lower-cased id still identifies the job.
    lowered = job_id.lower()
    if (
        len(lowered) <= _MAX_USABLE_JOB_ID
        and _PERMITTED_CONTAINER_NAME.fullmatch(lowered)
        and not lowered.endswith("-")
        and "--" not in lowered
    ):
        return CONTAINER_PREFIX + lowered
    digest = hashlib.sha1(lowered.encode("utf-8")).hexdigest()
    safe = _FOLD.sub("-", lowered).strip("-")
    if len(safe) > _MAX_ID_IN_HASHED_NAME:
        safe = safe[:_MAX_ID_IN_HASHED_NAME].strip("-")  # the cut can leave a trailing '-'
    elif safe == "":
        safe = "job"
    return f"{CONTAINER_PREFIX}{safe}-{digest}"


def validate_kind(kind: str, field: str = "output.kind") -> str:
    """Return `kind` if it is a standard kind (:data:`KINDS`) or a valid custom one (letters and digits).

    Kinds are case-sensitive and written without the ``$`` (it is added in the blob name).
    """
    if not isinstance(kind, str) or not _KIND.fullmatch(kind):
        what = shown(kind) if isinstance(kind, str) else type(kind).__name__
        fix = f"use one of {', '.join(KINDS)}, or a custom kind made of letters and digits"
        if isinstance(kind, str) and kind.startswith("$"):
            fix = f"drop the leading '$' ({shown(kind[1:])}); it is added to the blob name for you"
        problem = "the output kind is empty" if kind == "" else f"{what} is not a valid output kind"
        raise SpecError(field, problem, fix)
    return kind


def normalize_relative_path(relative_path: str, field: str = "output.path") -> str:
    """The blob-name form of a file path relative to the task working directory.

    Backslashes become '/'; leading ``../`` and ``./`` segments are dropped, so ``..\\stdout.txt`` (the task's
    stdout, one level above ``wd``) is stored as ``stdout.txt``, as the .NET library does. ``..`` further in
    (``a/../../b``) is kept as written, again as .NET does: a blob name cannot leave its container. Empty
    names, absolute paths and names ending in '/' (a directory, not a file) are refused.
    """
    if not isinstance(relative_path, str):
        raise SpecError(field, f"expected a relative file path, got {type(relative_path).__name__}", "e.g. results/out.h5")
    if relative_path == "":
        raise SpecError(field, "the file path is empty", "give a path relative to the task working directory, e.g. results/out.h5")
    path = relative_path.replace("\\", "/")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise SpecError(field, f"{shown(relative_path)} is an absolute path", "give a path relative to the task working directory, e.g. results/out.h5")
    while True:
        if path.startswith("../"):
            path = path[3:]
        elif path.startswith("./"):
            path = path[2:]
        else:
            break
    if path.startswith("/"):
        raise SpecError(field, f"{shown(relative_path)} has a doubled '/' after its leading '../'", "write it without the extra '/'")
    if path in ("", ".", ".."):
        raise SpecError(field, f"{shown(relative_path)} names no file", "give the file's path, e.g. ../stdout.txt or results/out.h5")
    if path.endswith("/"):
        raise SpecError(field, f"{shown(relative_path)} ends with '/', so it names a directory", "name a file inside it, e.g. results/out.h5")
    return path


def _checked_blob(name: str, field: str) -> str:
    if len(name) > MAX_BLOB_NAME:
        raise SpecError(field, f"the blob name would be {len(name)} characters; Azure Storage allows {MAX_BLOB_NAME}", "use a shorter path")
    return name


def task_output_prefix(task_id: str, kind: str, *, task_field: str = "task.id", kind_field: str = "output.kind") -> str:
    """``{taskId}/${Kind}`` - the .NET library's prefix for a task's outputs of one kind.

    No trailing '/', as in .NET and as the Batch service's output-file ``path`` wants it; add one when
    listing blobs so that kind ``TaskLog`` does not also match a custom kind ``TaskLogs``.
    """
    return f"{validate_task_id(task_id, task_field)}/${validate_kind(kind, kind_field)}"


def job_output_prefix(kind: str, *, kind_field: str = "output.kind") -> str:
    """``${Kind}`` - the prefix for a job's outputs of one kind."""
    return f"${validate_kind(kind, kind_field)}"


def task_output_blob(
    task_id: str,
    kind: str,
    relative_path: str,
    *,
    task_field: str = "task.id",
    kind_field: str = "output.kind",
    path_field: str = "output.path",
) -> str:
    """``{taskId}/${Kind}/{path}``, e.g. ``("mpi-1", "TaskLog", "../stdout.txt")`` -> ``mpi-1/$TaskLog/stdout.txt``."""
    prefix = task_output_prefix(task_id, kind, task_field=task_field, kind_field=kind_field)
    return _checked_blob(f"{prefix}/{normalize_relative_path(relative_path, path_field)}", path_field)


def job_output_blob(kind: str, relative_path: str, *, kind_field: str = "output.kind", path_field: str = "output.path") -> str:
    """``${Kind}/{path}``, e.g. ``("JobOutput", "summary.csv")`` -> ``$JobOutput/summary.csv``."""
    prefix = job_output_prefix(kind, kind_field=kind_field)
    return _checked_blob(f"{prefix}/{normalize_relative_path(relative_path, path_field)}", path_field)


def _check_instance(instance: int, field: str) -> int:
    # bool is an int subclass; True as "instance 1" would be a caller bug.
    if isinstance(instance, bool) or not isinstance(instance, int) or instance < 0:
        raise SpecError(field, f"instance must be a whole number >= 0 (0 is the primary), got {shown(instance)}", "e.g. 0 for the primary, 1 for the first subtask")
    return instance


def instance_output_prefix(
    task_id: str, kind: str, instance: int, *, task_field: str = "task.id", kind_field: str = "output.kind"
) -> str:
    """``{taskId}/${Kind}/{i}`` - prefix of one instance's outputs (mpibatch extension, see below)."""
    return f"{task_output_prefix(task_id, kind, task_field=task_field, kind_field=kind_field)}/{_check_instance(instance, 'instance')}"


def instance_output_blob(
    task_id: str,
    kind: str,
    instance: int,
    relative_path: str,
    *,
    task_field: str = "task.id",
    kind_field: str = "output.kind",
    path_field: str = "output.path",
) -> str:
    """``{taskId}/${Kind}/{i}/{path}``: output of instance `i` of a multi-instance task.

    This is mpibatch's extension of the File Conventions, which have no notion of instances: every instance
    of a multi-instance task shares one task id, so each gets its own folder under the task's kind, named by
    its instance index - 0 is the primary, 1..N-1 the subtasks (Batch's subtask ids). For example
    ``("mpi-1", "TaskLog", 2, "../stdout.txt")`` -> ``mpi-1/$TaskLog/2/stdout.txt``. Tools that know only the
    .NET conventions see these as task outputs whose path starts with ``{i}/``.
    """
    prefix = instance_output_prefix(task_id, kind, instance, task_field=task_field, kind_field=kind_field)
    return _checked_blob(f"{prefix}/{normalize_relative_path(relative_path, path_field)}", path_field)
