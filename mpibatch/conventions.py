"""Azure Batch File Conventions: names byte-exact with the .NET library, and (re-exported from
:mod:`mpibatch.fileconventions`) the storage API that mirrors it (docs/file-conventions.md).

The naming rule is written once, in the node-side module ``launchers/outputnames.py`` (standard library
only, so the nodes' persist step uses the very same code); here its errors become :class:`SpecError`
(exit code 2). Sources: azure-sdk-for-net, ``sdk/batch/Microsoft.Azure.Batch.Conventions.Files``
(``ContainerNameUtils.cs``, ``StoragePath.cs``, ``TaskOutputKind.cs``, ``JobOutputKind.cs``, README).

Layout in the job's container::

    {taskId}/${Kind}/{path}          task output          (task id case kept)
    ${Kind}/{path}                   job output
    {taskId}/${Kind}/{i}/{path}      ours: output of instance i of a multi-instance task
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import SpecError
from .launchers import outputnames as _names
from .launchers.outputnames import (
    CONTAINER_PREFIX,
    MAX_BLOB_NAME,
    ParsedBlob,
    glob_match,
    is_safe_relative,
    is_single_file,
    match_outputs,
    parse_job_blob,
    parse_task_blob,
    pattern_regex,
)
from .launchers.protocol import INSTANCE_INFO, JOB_KINDS, KINDS, LIVE_LOGS, LOG_FILES, TASK_KINDS

F = TypeVar("F", bound=Callable[..., Any])


def _spec_errors(fn: F) -> F:
    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except _names.NameRuleError as e:
            raise SpecError(e.field, e.problem, e.fix or None) from None
    return checked  # type: ignore[return-value]


validate_batch_id = _spec_errors(_names.validate_batch_id)
validate_job_id = _spec_errors(_names.validate_job_id)
validate_task_id = _spec_errors(_names.validate_task_id)
validate_kind = _spec_errors(_names.validate_kind)
job_container_name = _spec_errors(_names.job_container_name)
normalize_relative_path = _spec_errors(_names.normalize_relative_path)
task_output_prefix = _spec_errors(_names.task_output_prefix)
job_output_prefix = _spec_errors(_names.job_output_prefix)
instance_output_prefix = _spec_errors(_names.instance_output_prefix)
task_output_blob = _spec_errors(_names.task_output_blob)
job_output_blob = _spec_errors(_names.job_output_blob)
instance_output_blob = _spec_errors(_names.instance_output_blob)
instance_info_blob = _spec_errors(_names.instance_info_blob)
live_log_blob = _spec_errors(_names.live_log_blob)

__all__ = [
    "CONTAINER_PREFIX", "INSTANCE_INFO", "JOB_KINDS", "KINDS", "LIVE_LOGS", "LOG_FILES", "MAX_BLOB_NAME", "TASK_KINDS",
    "ParsedBlob", "glob_match", "instance_info_blob", "instance_output_blob", "instance_output_prefix",
    "is_safe_relative", "is_single_file", "job_container_name", "live_log_blob", "job_output_blob", "job_output_prefix",
    "match_outputs", "normalize_relative_path", "parse_job_blob", "parse_task_blob", "pattern_regex",
    "task_output_blob", "task_output_prefix", "validate_batch_id", "validate_job_id", "validate_kind",
    "validate_task_id",
]

# The storage API (public File Conventions library), loaded when first used: it builds on the names above
# and brings the blob client, which a spec check or a local run does not need (start-up time).
_STORAGE_API = ("JobOutputStorage", "StoredOutput", "TaskOutputStorage", "TrackedFile", "prepare_output_storage")
__all__ += list(_STORAGE_API)

if TYPE_CHECKING:
    from .fileconventions import (  # noqa: F401
        JobOutputStorage,
        StoredOutput,
        TaskOutputStorage,
        TrackedFile,
        prepare_output_storage,
    )


def __getattr__(name: str) -> Any:
    if name in _STORAGE_API:
        from . import fileconventions

        return getattr(fileconventions, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
