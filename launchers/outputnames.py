"""Batch File Conventions names, built and parsed in one place (docs/file-conventions.md).

Standard library only: the nodes' persist step imports this file from beside it, and the client
imports it as ``mpibatch.launchers.outputnames`` (re-exported by ``mpibatch.conventions``). Every
other module - the persist step, the Azure collector, the rehearsal collectors, the Batch stand-in,
``render`` - goes through these functions, so node and client cannot disagree about a name.

Layout in the job's container (``job_container_name``)::

    {taskId}/${Kind}/{path}          task output          (the .NET library's names)
    ${Kind}/{path}                   job output
    {taskId}/${Kind}/{i}/{path}      mpibatch: output of instance i of a multi-instance task
    {taskId}/$TaskLog/{i}/live/...   mpibatch: the instance's logs, kept live while the task runs
"""
from __future__ import annotations

import hashlib
import os
import re
from typing import NamedTuple

try:  # as the package mpibatch.launchers (client side, tests)
    from .protocol import (
        INSTANCE_INFO,
        KIND_RULE,
        KIND_RULE_TEXT,
        KINDS,
        LIVE_DIR,
        TASK_LOG,
        is_kind,
        is_node_file,
    )
except ImportError:  # as a script on the node: the modules are shipped beside it
    from protocol import (  # type: ignore[no-redef]
        INSTANCE_INFO,
        KIND_RULE,
        KIND_RULE_TEXT,
        KINDS,
        LIVE_DIR,
        TASK_LOG,
        is_kind,
        is_node_file,
    )

CONTAINER_PREFIX = "job-"
MAX_BLOB_NAME = 1024  # Azure Storage limit on a blob name

# Patterns are applied with fullmatch(): re's '$' also matches before a trailing newline.
_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Jobs created by a job schedule are named "{scheduleId}:job-{n}" by the Batch service; ':' is why the
# .NET library folds ':' too.
_SCHEDULED_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}:job-[0-9]+")
_PERMITTED_CONTAINER_NAME = re.compile(r"[a-z0-9][-a-z0-9]*")
_FOLD = re.compile(r"[:_-]+")
_MAX_USABLE_JOB_ID = 63 - len(CONTAINER_PREFIX)  # 59: a container name is at most 63 characters
_MAX_ID_IN_HASHED_NAME = 15  # room is 63 - 4 - 1 - 40 = 18; the .NET library uses 15, so must we


class NameRuleError(ValueError):
    """A name breaks a File Conventions rule. `field` names the input, `fix` says what to do;
    ``mpibatch.conventions`` turns it into a SpecError (exit code 2)."""

    def __init__(self, field: str, problem: str, fix: str = ""):
        self.field, self.problem, self.fix = field, problem, fix
        super().__init__(f"{field}: {problem}" + (f" ({fix})" if fix else ""))


def _shown(value: object) -> str:
    # Never echo a huge rejected value whole.
    if isinstance(value, str):
        return repr(value) if len(value) <= 80 else repr(value[:60]) + f"... ({len(value)} characters)"
    return type(value).__name__


# ---------------------------------------------------------------------------------------------- ids and kinds
def validate_batch_id(value: str, field: str, what: str = "id", example: str = "mpi-task-1") -> str:
    """Return `value` if it is a Batch id: up to 64 letters, digits, '-' and '_' (the one id rule)."""
    if not isinstance(value, str) or not _ID.fullmatch(value):
        problem = f"the {what} is empty" if value == "" else f"{_shown(value)} is not a valid Batch {what}"
        if isinstance(value, str) and len(value) > 64:
            problem = f"the {what} is {len(value)} characters long; the limit is 64"
        raise NameRuleError(field, problem, f"use at most 64 letters, digits, '-' and '_', e.g. {example}")
    return value


def validate_job_id(job_id: str, field: str = "job.id") -> str:
    """A Batch job id, or ``{scheduleId}:job-{n}`` (the id Batch gives jobs made by a job schedule)."""
    if isinstance(job_id, str) and _SCHEDULED_JOB_ID.fullmatch(job_id):
        return job_id
    return validate_batch_id(job_id, field, "job id", "cfd-run-42")


def validate_task_id(task_id: str, field: str = "task.id") -> str:
    return validate_batch_id(task_id, field, "task id", "mpi-task-1")


def validate_kind(kind: str, field: str = "output.kind") -> str:
    """A standard kind (:data:`KINDS`) or a custom one (the one rule: ``protocol.KIND_RULE``), no '$'."""
    if not is_kind(kind):
        fix = f"use one of {', '.join(KINDS)}, or a custom kind: {KIND_RULE_TEXT}"
        if isinstance(kind, str) and kind.startswith("$"):
            fix = f"drop the leading '$' ({kind[1:]!r}); it is added to the blob name for you"
        problem = "the output kind is empty" if kind == "" else f"{_shown(kind)} is not a valid output kind"
        raise NameRuleError(field, problem, fix)
    return kind


def _check_instance(instance: int, field: str = "instance") -> int:
    # bool is an int subclass; True as "instance 1" would be a caller bug.
    if isinstance(instance, bool) or not isinstance(instance, int) or instance < 0:
        raise NameRuleError(field, f"instance must be a whole number >= 0 (0 is the primary), got {_shown(instance)}",
                            "e.g. 0 for the primary, 1 for the first subtask")
    return instance


# ---------------------------------------------------------------------------------------------- container
def job_container_name(job_id: str, field: str = "job.id") -> str:
    """The job's container, as the .NET library's ContainerNameUtils names it.

    ``"job-" + id.lower()`` when that is a valid container name; otherwise ``job-{safe}-{sha1}``: sha1 is
    the hex SHA-1 of the lower-cased id's UTF-8 bytes, safe is the lower-cased id with each run of
    ``[:_-]`` folded to one '-', trimmed of '-', cut to 15 characters (and trimmed again), or ``job`` if
    nothing is left. ``MyTerrificJob`` -> ``job-myterrificjob``.
    """
    validate_job_id(job_id, field)
    lowered = job_id.lower()  # Batch ids are unique case-insensitively
    if (len(lowered) <= _MAX_USABLE_JOB_ID and _PERMITTED_CONTAINER_NAME.fullmatch(lowered)
            and not lowered.endswith("-") and "--" not in lowered):
        return CONTAINER_PREFIX + lowered
    digest = hashlib.sha1(lowered.encode("utf-8")).hexdigest()
    safe = _FOLD.sub("-", lowered).strip("-")
    if len(safe) > _MAX_ID_IN_HASHED_NAME:
        safe = safe[:_MAX_ID_IN_HASHED_NAME].strip("-")  # the cut can leave a trailing '-'
    elif safe == "":
        safe = "job"
    return f"{CONTAINER_PREFIX}{safe}-{digest}"


# ---------------------------------------------------------------------------------------------- blob names
def normalize_relative_path(relative_path: str, field: str = "output.path") -> str:
    """The blob-name form of a path relative to the task working directory.

    Backslashes become '/'; leading ``../`` and ``./`` are dropped (``..\\stdout.txt``, the task's stdout
    one level above ``wd``, is stored as ``stdout.txt``), as the .NET library does; ``..`` further in is
    kept as written, as .NET does. Empty, absolute and directory ('/'-ended) names are refused.
    """
    fix = "give a path relative to the task working directory, e.g. results/out.h5"
    if not isinstance(relative_path, str):
        raise NameRuleError(field, f"expected a relative file path, got {_shown(relative_path)}", fix)
    if relative_path == "":
        raise NameRuleError(field, "the file path is empty", fix)
    path = relative_path.replace("\\", "/")
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        raise NameRuleError(field, f"{_shown(relative_path)} is an absolute path", fix)
    while path.startswith(("../", "./")):
        path = path[3:] if path.startswith("../") else path[2:]
    if path.startswith("/"):
        raise NameRuleError(field, f"{_shown(relative_path)} has a doubled '/' after its leading '../'",
                            "write it without the extra '/'")
    if path in ("", ".", ".."):
        raise NameRuleError(field, f"{_shown(relative_path)} names no file",
                            "give the file's path, e.g. ../stdout.txt or results/out.h5")
    if path.endswith("/"):
        raise NameRuleError(field, f"{_shown(relative_path)} ends with '/', so it names a directory",
                            "name a file inside it, e.g. results/out.h5")
    return path


def checked_blob_name(name: str, field: str) -> str:
    if len(name) > MAX_BLOB_NAME:
        raise NameRuleError(field, f"the blob name would be {len(name)} characters; Azure Storage allows "
                            f"{MAX_BLOB_NAME}", "use a shorter path")
    return name


def task_output_prefix(task_id: str, kind: str, *, task_field: str = "task.id", kind_field: str = "output.kind") -> str:
    """``{taskId}/${Kind}`` (no trailing '/', as .NET and the Batch output-file ``path`` want it; add one
    when listing, so that kind ``TaskLog`` does not also match a custom kind ``TaskLogs``)."""
    return f"{validate_task_id(task_id, task_field)}/${validate_kind(kind, kind_field)}"


def job_output_prefix(kind: str, *, kind_field: str = "output.kind") -> str:
    """``${Kind}``: the prefix of a job's outputs of one kind."""
    return f"${validate_kind(kind, kind_field)}"


def instance_output_prefix(task_id: str, kind: str, instance: int, *, task_field: str = "task.id",
                           kind_field: str = "output.kind") -> str:
    """``{taskId}/${Kind}/{i}``: the prefix of one instance's outputs (mpibatch's extension)."""
    prefix = task_output_prefix(task_id, kind, task_field=task_field, kind_field=kind_field)
    return f"{prefix}/{_check_instance(instance)}"


def task_output_blob(task_id: str, kind: str, relative_path: str, *, task_field: str = "task.id",
                     kind_field: str = "output.kind", path_field: str = "output.path") -> str:
    """``{taskId}/${Kind}/{path}``: ``("mpi-1", "TaskLog", "../stdout.txt")`` -> ``mpi-1/$TaskLog/stdout.txt``."""
    prefix = task_output_prefix(task_id, kind, task_field=task_field, kind_field=kind_field)
    return checked_blob_name(f"{prefix}/{normalize_relative_path(relative_path, path_field)}", path_field)


def job_output_blob(kind: str, relative_path: str, *, kind_field: str = "output.kind",
                    path_field: str = "output.path") -> str:
    """``${Kind}/{path}``: ``("JobOutput", "summary.csv")`` -> ``$JobOutput/summary.csv``."""
    prefix = job_output_prefix(kind, kind_field=kind_field)
    return checked_blob_name(f"{prefix}/{normalize_relative_path(relative_path, path_field)}", path_field)


def instance_output_blob(task_id: str, kind: str, instance: int, relative_path: str, *, task_field: str = "task.id",
                         kind_field: str = "output.kind", path_field: str = "output.path") -> str:
    """``{taskId}/${Kind}/{i}/{path}``: output of instance `i` of a multi-instance task.

    mpibatch's extension of the File Conventions, which know no instances: every instance shares the task
    id, so each gets a folder under the kind named by its index (0 the primary, 1..N-1 the subtasks).
    ``("mpi-1", "TaskLog", 2, "../stdout.txt")`` -> ``mpi-1/$TaskLog/2/stdout.txt``. Tools that know only
    the .NET conventions see task outputs whose path starts with ``{i}/``.
    """
    prefix = instance_output_prefix(task_id, kind, instance, task_field=task_field, kind_field=kind_field)
    return checked_blob_name(f"{prefix}/{normalize_relative_path(relative_path, path_field)}", path_field)


def instance_info_blob(task_id: str, instance: int) -> str:
    """``{taskId}/$TaskLog/{i}/instance.json``: what the persist step of instance `i` recorded."""
    return instance_output_blob(task_id, TASK_LOG, instance, INSTANCE_INFO)


def live_log_blob(task_id: str, instance: int, log_name: str) -> str:
    """``{taskId}/$TaskLog/{i}/live/stdout.txt``: the append blob the node's tracker keeps up to date while
    the task runs. Its own name, because Batch replaces ``$TaskLog/0/stdout.txt`` with its upload of the
    primary's log when the task ends, and that upload must not meet an append blob."""
    return instance_output_blob(task_id, TASK_LOG, instance, f"{LIVE_DIR}/{log_name}")


class ParsedBlob(NamedTuple):
    """A blob name read back: its kind, the instance folder (None for .NET-style names) and the path."""

    kind: str
    instance: int | None
    path: str


def parse_task_blob(task_id: str, blob_name: str, *, instances: bool = True) -> ParsedBlob | None:
    """The inverse of :func:`task_output_blob` / :func:`instance_output_blob`; None for names of other
    tasks, job outputs and names no builder makes. With ``instances=True`` a first path segment of
    digits is the instance folder (mpibatch's layout); ``False`` reads names as the .NET library does.
    Task ids match case-sensitively, as the names are written."""
    head = f"{task_id}/$"
    if not blob_name.startswith(head):
        return None
    kind, sep, rest = blob_name[len(head):].partition("/")
    if not sep or not KIND_RULE.fullmatch(kind) or not rest:
        return None
    if instances:
        first, sep, path = rest.partition("/")
        if sep and path and first.isascii() and first.isdigit() and str(int(first)) == first:
            return ParsedBlob(kind, int(first), path)
    return ParsedBlob(kind, None, rest)


def parse_job_blob(blob_name: str) -> ParsedBlob | None:
    """The inverse of :func:`job_output_blob`: ``$JobOutput/a.csv`` -> (JobOutput, None, a.csv)."""
    if not blob_name.startswith("$"):
        return None
    kind, sep, path = blob_name[1:].partition("/")
    if not sep or not path or not KIND_RULE.fullmatch(kind):
        return None
    return ParsedBlob(kind, None, path)


def is_safe_relative(path: str) -> bool:
    """True if `path` can be written under a local directory without leaving it (no '', '.', '..'
    segments, not absolute): the check every collector applies to a name read from storage."""
    return bool(path) and not path.startswith("/") and all(p not in ("", ".", "..") for p in path.split("/"))


# ---------------------------------------------------------------------------------------------- output patterns
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """An output pattern as a regex: '*' and '?' stay within a directory, '**' spans directories.
    DOTALL: a file name may contain a newline, and it is still matched."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out, re.DOTALL)


def glob_match(rel_path: str, pattern: str) -> bool:
    """Does a file's path relative to the working directory match an output pattern?"""
    return pattern_regex(pattern).fullmatch(rel_path) is not None


def is_single_file(pattern: str) -> bool:
    """A pattern without wildcards names one file (docs/file-conventions.md#missing)."""
    return not any(c in pattern for c in "*?[")


def select_outputs(rel_paths: list[str] | tuple[str, ...], patterns: list[str] | tuple[str, ...]) -> list[str]:
    """The paths (relative to the working directory) that match any pattern, sorted. mpibatch's own
    files (``.mpibatch-*``: the node's id, environment and rank wrapper, the durable writer's
    temporaries) are never outputs, whatever the pattern: the one rule of every executor."""
    rxs = [pattern_regex(p) for p in patterns]
    return sorted(rel for rel in rel_paths
                  if not is_node_file(rel.rsplit("/", 1)[-1]) and any(rx.fullmatch(rel) for rx in rxs))


def match_outputs(root: str, patterns: list[str] | tuple[str, ...]) -> list[str]:
    """Regular files under `root` matching any pattern (:func:`select_outputs`), as sorted relative paths.

    Symlinks are neither followed nor collected, and a `root` that is itself a symlink yields nothing:
    collection never reads outside the working directory."""
    if os.path.islink(root) or not os.path.isdir(root):
        return []
    names = []
    for dirpath, _dirnames, filenames in os.walk(root):  # os.walk does not descend into dir symlinks
        rel_dir = os.path.relpath(dirpath, root)
        names += [name if rel_dir == "." else f"{rel_dir}/{name}" for name in filenames]
    return [rel for rel in select_outputs(names, patterns)
            if not os.path.islink(os.path.join(root, rel)) and os.path.isfile(os.path.join(root, rel))]
