"""One result model for every executor: the task, and each instance (primary = 0)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

TAIL_CHARS = 4000  # stdout/stderr kept in the result; the full text stays at the path


@dataclass
class Failure:
    phase: str  # preparation | files | coordination | running | timeout | interrupted | collecting
    reason: str
    instance: int | None = None


@dataclass
class InstanceResult:
    index: int  # 0 = primary
    node_id: str
    host: str
    coordination_exit_code: int | None = None
    application_exit_code: int | None = None  # primary only
    stdout: str = ""  # tail
    stderr: str = ""  # tail
    stdout_path: str | None = None  # collected copy
    stderr_path: str | None = None
    files: list[str] = field(default_factory=list)  # collected outputs, relative to output_dir
    output_dir: str | None = None
    task_dir: str | None = None  # node task directory on this machine, when nodes are kept

    @property
    def role(self) -> str:
        return "primary" if self.index == 0 else "subtask"


@dataclass
class TaskResult:
    job_id: str
    task_id: str
    executor: str
    state: str  # completed | failed | active | running
    exit_code: int | None
    failure: Failure | None = None
    timed_out: bool = False
    attempts: int = 1  # retries + 1 (a requeue is not a retry)
    requeues: int = 0  # preempted and requeued (Batch's requeueCount)
    restored: list[int | None] = field(default_factory=list)  # task.checkpoint: each attempt's generation (None: fresh)
    elapsed_s: float = 0.0
    output_dir: str | None = None
    instances: list[InstanceResult] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # outputs expected but not collected
    # Rehearsals: the nodes' files on this machine, kept (--keep-nodes, or a failed collection) until the user
    # removes them.
    nodes_dir: str | None = None
    checkpoints_dir: str | None = None  # rehearsals: the task's checkpoint store (task.checkpoint)

    @property
    def succeeded(self) -> bool:
        return self.state == "completed" and self.exit_code == 0 and self.failure is None

    @property
    def primary(self) -> InstanceResult:
        return self.instances[0]

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["succeeded"] = self.succeeded
        return d


def tail(text: str, limit: int = TAIL_CHARS) -> str:
    return text if len(text) <= limit else "...[truncated]...\n" + text[-limit:]
