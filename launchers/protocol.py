"""The node protocol: every name mpibatch's node-side scripts and its client share, in one place.

Standard library only, no sibling imports: the nodes run it beside coordinate.sh, track.py, persist.py,
outputnames.py and blobio.py (`python3 -S`, no site-packages); the client imports it as
``mpibatch.launchers.protocol``. What lives here:

* the output kinds and the one rule for a valid (custom) kind;
* the names under a task's ``$TaskLog`` (the logs, ``live/``, ``instance.json``) and the
  :class:`InstanceRecord` that ``instance.json`` holds (written by the tracker and the persist step,
  read by ``collect`` and ``logs``);
* the files mpibatch itself writes on a node (the node id, the node's environment, the per-rank wrapper,
  the tracker/persist handshake) - ``coordinate.sh`` gets their names as arguments
  (:func:`coordinate_args`), never as literals;
* the node's working-directory layout (:class:`NodeLayout`);
* the ``--output Kind=pattern`` encoding between ``render`` and track.py / persist.py;
* a node process's identity (instance number, host, node id).
"""
from __future__ import annotations

import difflib
import json
import os
import re
import socket
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------------------------------------- output kinds
TASK_OUTPUT, TASK_PREVIEW, TASK_LOG, TASK_INTERMEDIATE = "TaskOutput", "TaskPreview", "TaskLog", "TaskIntermediate"
JOB_OUTPUT, JOB_PREVIEW = "JobOutput", "JobPreview"
TASK_KINDS: tuple[str, ...] = (TASK_OUTPUT, TASK_PREVIEW, TASK_LOG, TASK_INTERMEDIATE)
JOB_KINDS: tuple[str, ...] = (JOB_OUTPUT, JOB_PREVIEW)
KINDS: tuple[str, ...] = TASK_KINDS + JOB_KINDS
# The one rule for a kind: a letter, then letters and digits, at most 63 (applied with fullmatch).
KIND_RULE = re.compile(r"[A-Za-z][A-Za-z0-9]{0,62}")
KIND_RULE_TEXT = "a letter, then letters and digits (at most 63, case-sensitive)"
_NEAR_MISS_RATIO = 0.85  # TaskOuput/TaskOutput is 0.95; Checkpoints/TaskOutput is 0.38


def is_kind(kind: object) -> bool:
    """True if `kind` is a standard kind or a well-formed custom one."""
    return isinstance(kind, str) and KIND_RULE.fullmatch(kind) is not None


def near_standard_kind(kind: str) -> str | None:
    """The standard kind that `kind` is a near miss of (a typo or a case slip), or None.

    A kind that differs from a standard one only in case, or is within a letter or two of one
    (``TaskOuput``, ``Tasklogs``), is a mistake: Batch would store it under another name than the one
    the user expects. A custom kind on purpose is one far from all of them (``Checkpoints``)."""
    if kind in KINDS:
        return None
    folded = {k.lower(): k for k in KINDS}
    if kind.lower() in folded:
        return folded[kind.lower()]
    close = difflib.get_close_matches(kind.lower(), list(folded), n=1, cutoff=_NEAR_MISS_RATIO)
    return folded[close[0]] if close else None


# ---------------------------------------------------------------------------------------------- under $TaskLog
LOG_FILES: tuple[str, ...] = ("stdout.txt", "stderr.txt")
INSTANCE_INFO = "instance.json"  # per instance, under $TaskLog: which node ran it, what it uploaded
LIVE_DIR = "live"  # $TaskLog/{i}/live/std*.txt: the logs as the tracker keeps them while the task runs
LIVE_LOGS: tuple[str, ...] = tuple(f"{LIVE_DIR}/{n}" for n in LOG_FILES)
PERSISTED_LOG_NAMES: tuple[str, ...] = (*LOG_FILES, *LIVE_LOGS, INSTANCE_INFO)  # mpibatch's, not user outputs
# $TaskLog/0/checkpoint-restores/<when>.json: one record per attempt of what its restore step put back (Azure)
CHECKPOINT_RESTORES_DIR = "checkpoint-restores"


def is_mpibatch_log(kind: str, path: str) -> bool:
    """A blob path mpibatch keeps under ``$TaskLog`` for itself (logs, live logs, instance.json, restore
    records)."""
    return kind == TASK_LOG and (path in PERSISTED_LOG_NAMES or path.startswith(f"{CHECKPOINT_RESTORES_DIR}/"))


# ---------------------------------------------------------------------------------------------- node files
NODE_FILE_PREFIX = ".mpibatch-"  # every file mpibatch writes beside the user's starts with this: never an output
NODE_ID_FILE = ".mpibatch-node"  # in the working dir: AZ_BATCH_NODE_ID=<id>, written by coordinate.sh
NODE_ENV_FILE = ".mpibatch-node.env"  # in the working dir: this node's environment for its ranks
RANK_WRAPPER = ".mpibatch-rank"  # in the working dir: every rank starts through it
PERSIST_MARK = ".mpibatch-persisting"  # in the task dir: written by persist.py before it looks for the tracker
TRACKER_PID_FILE = ".mpibatch-track.pid"  # in the task dir: how persist.py finds the tracker
TRACKER_STATE_FILE = ".mpibatch-track.json"  # in the task dir: what the tracker saved
CHECKPOINT_STATE_FILE = ".mpibatch-checkpoint.json"  # in the task dir: what the restore step put back
HANDSHAKE_FILES: tuple[str, ...] = (PERSIST_MARK, TRACKER_PID_FILE, TRACKER_STATE_FILE, CHECKPOINT_STATE_FILE)


def is_node_file(name: str) -> bool:
    """A file name mpibatch writes on a node or while collecting (``.mpibatch-*``): never a user output."""
    return name.startswith(NODE_FILE_PREFIX)


def coordinate_args() -> list[str]:
    """The names coordinate.sh writes and clears, as its arguments (it holds no name of its own)."""
    args = ["--node-id-file", NODE_ID_FILE, "--node-env-file", NODE_ENV_FILE, "--rank-wrapper", RANK_WRAPPER]
    return args + [w for name in HANDSHAKE_FILES for w in ("--clear", name)]


# ---------------------------------------------------------------------------------------------- node layout
WORKITEMS = "workitems"
JOB_DIR = "job-1"  # Batch's directory of a job's tasks on a node
NODE_DIRS: tuple[str, ...] = ("shared", "startup", WORKITEMS)
TASK_DIR_DEPTH = 4  # <node root>/workitems/<job>/job-1/<task>


def task_dir_rel(job_id: str, name: str) -> str:
    """``workitems/<job>/job-1/<name>``: a task's (or job preparation / release task's) directory,
    relative to the node root."""
    return f"{WORKITEMS}/{job_id}/{JOB_DIR}/{name}"


@dataclass(frozen=True)
class NodeLayout:
    """Paths as the node sees them, for one task on a node rooted at `root`."""

    root: str
    job_id: str
    task_id: str

    @property
    def shared(self) -> str:
        return f"{self.root}/shared"

    @property
    def startup(self) -> str:
        return f"{self.root}/startup"

    @property
    def job_dir(self) -> str:
        return f"{self.root}/{WORKITEMS}/{self.job_id}/{JOB_DIR}"

    @property
    def task_dir(self) -> str:
        return f"{self.job_dir}/{self.task_id}"

    @property
    def working_dir(self) -> str:
        return f"{self.task_dir}/wd"

    @property
    def task_shared_dir(self) -> str:
        # The same path on every instance; a local directory, not a network share.
        return f"{self.task_dir}/shared"

    def node_task_dir(self, name: str) -> str:
        """Directory of a job preparation / release task."""
        return f"{self.job_dir}/{name}"

    def dirs(self) -> list[str]:
        return [self.shared, self.startup, self.working_dir, self.task_shared_dir]


# ---------------------------------------------------------------------------------------------- --output
def encode_output(kind: str, pattern: str) -> str:
    """``Kind=pattern``, one ``--output`` argument of track.py / persist.py (a kind has no '=')."""
    return f"{kind}={pattern}"


def decode_outputs(args: list[str]) -> list[tuple[str, str]]:
    """The inverse of :func:`encode_output` for every ``--output`` argument."""
    return [(k, p) for k, _, p in (a.partition("=") for a in args)]


# ---------------------------------------------------------------------------------------------- identity
# Where the rank number is, when the command line does not say (--rank-vars, from the flavour).
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")


def instance_index(position: int, hosts: list[str], master: str) -> int:
    """Instance numbers: the primary (on the master node) is 0, subtasks follow in host-list order."""
    m = hosts.index(master) if master in hosts else 0
    if position == m:
        return 0
    return position + 1 if position < m else position


@dataclass(frozen=True)
class Identity:
    """Who a node process is: its instance, host-list entry, host name and Batch node id."""

    index: int
    host: str | None
    hostname: str
    node_id: str | None
    task_dir: str
    wd: str


def whoami(rank_vars_arg: str) -> Identity:
    """This process's instance number and identity (from the Batch variables and its working dir)."""
    rank_vars = [v for v in rank_vars_arg.split(",") if v] or list(RANK_VARS)
    hosts = [h for h in os.environ.get("AZ_BATCH_HOST_LIST", "").split(",") if h]
    master = os.environ.get("AZ_BATCH_MASTER_NODE", "").rsplit(":", 1)[0]
    pos = next((int(os.environ[v]) for v in rank_vars if os.environ.get(v, "").isdigit()), 0)
    wd = os.path.realpath(os.getcwd())
    return Identity(index=instance_index(pos, hosts, master), host=hosts[pos] if pos < len(hosts) else None,
                    hostname=socket.gethostname(), node_id=_node_id(wd), task_dir=os.path.dirname(wd), wd=wd)


def _node_id(wd: str) -> str | None:
    try:
        with open(os.path.join(wd, NODE_ID_FILE)) as f:
            return f.read().strip().partition("=")[2] or None
    except OSError:
        return os.environ.get("AZ_BATCH_NODE_ID")


# ---------------------------------------------------------------------------------------------- instance.json
SCHEMA_VERSION = 1


class RecordError(ValueError):
    """An instance.json that is not a record this mpibatch reads."""


@dataclass
class InstanceRecord:
    """What ``{task}/$TaskLog/{i}/instance.json`` holds: which node ran instance `index`, the outputs
    it was told to keep, what it stored (blob -> size and base64 MD5) and what it could not.
    ``final`` is False while only the tracker has written it (the persist step did not finish)."""

    index: int
    host: str | None
    hostname: str
    node_id: str | None
    final: bool
    declared: list[tuple[str, str]] = field(default_factory=list)
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    saved_at: str = ""
    schema: int = SCHEMA_VERSION

    @classmethod
    def new(cls, who: Identity, *, final: bool, declared: list[tuple[str, str]]) -> InstanceRecord:
        return cls(index=who.index, host=who.host, hostname=who.hostname, node_id=who.node_id, final=final,
                   declared=list(declared))

    def to_json(self) -> str:
        return json.dumps({"schema": self.schema, "index": self.index, "host": self.host, "hostname": self.hostname,
                           "node_id": self.node_id, "final": self.final, "saved_at": self.saved_at,
                           "declared": [[k, p] for k, p in self.declared], "files": self.files,
                           "failed": self.failed}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> InstanceRecord:
        """Strict: a record of another schema version, or with a field of the wrong type, is refused."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise RecordError(f"{INSTANCE_INFO} is not JSON ({e})") from None
        if not isinstance(data, dict):
            raise RecordError(f"{INSTANCE_INFO} holds a {type(data).__name__}, not an object")
        version = data.get("schema")
        if version != SCHEMA_VERSION:
            raise RecordError(f"{INSTANCE_INFO} has schema version {version!r}; this mpibatch reads version "
                              f"{SCHEMA_VERSION} (was the task run by another mpibatch version? collect it with "
                              "that one)")
        _check_fields(data)
        return cls(index=data["index"], host=data["host"], hostname=data["hostname"], node_id=data["node_id"],
                   final=data["final"], saved_at=data["saved_at"],
                   declared=[(str(k), str(p)) for k, p in data["declared"]],
                   files={str(b): dict(v) for b, v in data["files"].items()},
                   failed={str(b): str(v) for b, v in data["failed"].items()})


_FIELDS: dict[str, tuple[type, ...]] = {
    "index": (int,), "host": (str, type(None)), "hostname": (str,), "node_id": (str, type(None)), "final": (bool,),
    "saved_at": (str,), "declared": (list,), "files": (dict,), "failed": (dict,)}


def _check_fields(data: dict[str, Any]) -> None:
    unknown = sorted(set(data) - set(_FIELDS) - {"schema"})
    if unknown:
        raise RecordError(f"{INSTANCE_INFO} has unknown fields {', '.join(unknown)}")
    for name, types in _FIELDS.items():
        if name not in data:
            raise RecordError(f"{INSTANCE_INFO} lacks the field {name!r}")
        if not isinstance(data[name], types) or (name == "index" and isinstance(data[name], bool)):
            raise RecordError(f"{INSTANCE_INFO}: field {name!r} is a {type(data[name]).__name__}")
    if not all(isinstance(d, list) and len(d) == 2 for d in data["declared"]):
        raise RecordError(f"{INSTANCE_INFO}: 'declared' is not a list of [kind, pattern]")
    if not all(isinstance(v, dict) for v in data["files"].values()):
        raise RecordError(f"{INSTANCE_INFO}: 'files' is not a map of blob -> {{size, md5}}")


# ---------------------------------------------------------------------------------------------- checkpoints
# task.checkpoint (docs/checkpoints.md): generation `g` of instance `i` is stored as
#   {task}/$TaskIntermediate/{i}/checkpoint/{g:06d}/{path}   the files, then
#   {task}/$TaskIntermediate/{i}/checkpoint/{g:06d}.json     its manifest (CheckpointManifest), written LAST.
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_MANIFEST_SUFFIX = ".json"
CHECKPOINT_STORE_VAR = "MPIBATCH_CHECKPOINT_DIR"  # rehearsals: the directory that stands in for the container
CHECKPOINT_URL_VAR = "MPIBATCH_CHECKPOINT_URL"  # Azure: the job container's URL + the checkpoint SAS (racwdl)
RESTART_VAR = "MPIBATCH_RESTART"  # "1" for the program when a generation was restored
CHECKPOINT_VAR = "MPIBATCH_CHECKPOINT"  # the generation restored
CHECKPOINT_SCHEMA_VERSION = 1


def generation_name(generation: int) -> str:
    """``000012``: generations sort by name as by number."""
    return f"{generation:06d}"


@dataclass
class CheckpointManifest:
    """Generation `generation` of instance `index`: every file (path relative to the working directory ->
    size and base64 MD5). Its presence is what makes the instance's part of the generation complete."""

    generation: int
    index: int
    node_id: str | None
    saved_at: str
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    schema: int = CHECKPOINT_SCHEMA_VERSION
    # Added within schema 1 (an older manifest has neither; an older reader ignores them): when the newest of
    # its files was last modified (ns since the epoch, the node's clock) and how often its tracker looked (s).
    newest_mtime_ns: int | None = None
    every: float | None = None

    def to_json(self) -> str:
        data: dict[str, Any] = {"schema": self.schema, "generation": self.generation, "index": self.index,
                                "node_id": self.node_id, "saved_at": self.saved_at, "files": self.files}
        if self.newest_mtime_ns is not None and self.every is not None:
            data.update(newest_mtime_ns=self.newest_mtime_ns, every=self.every)
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> CheckpointManifest:
        """Strict: another schema version, or a field of the wrong type, is refused (RecordError)."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise RecordError(f"checkpoint manifest is not JSON ({e})") from None
        if not isinstance(data, dict) or data.get("schema") != CHECKPOINT_SCHEMA_VERSION:
            version = data.get("schema") if isinstance(data, dict) else None
            raise RecordError(f"checkpoint manifest of schema version {version!r}; this mpibatch reads version "
                              f"{CHECKPOINT_SCHEMA_VERSION}")
        types = {"generation": int, "index": int, "saved_at": str, "files": dict}
        for name, typ in types.items():
            if not isinstance(data.get(name), typ) or isinstance(data.get(name), bool):
                raise RecordError(f"checkpoint manifest: field {name!r} is missing or not a {typ.__name__}")
        files = data["files"]
        if not all(isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("md5"), str)
                   for v in files.values()):
            raise RecordError("checkpoint manifest: 'files' is not a map of path -> {size, md5}")
        node_id = data.get("node_id")
        newest, every = data.get("newest_mtime_ns"), data.get("every")
        if newest is not None or every is not None:
            if not (isinstance(newest, int) and isinstance(every, (int, float))) or isinstance(newest, bool) \
                    or isinstance(every, bool) or not every > 0:
                raise RecordError("checkpoint manifest: 'newest_mtime_ns' and 'every' are not an integer and a "
                                  "positive number of seconds")
        return cls(generation=data["generation"], index=data["index"], saved_at=data["saved_at"],
                   node_id=node_id if isinstance(node_id, str) else None,
                   files={str(k): {"size": v["size"], "md5": v["md5"]} for k, v in files.items()},
                   newest_mtime_ns=newest, every=float(every) if every is not None else None)
