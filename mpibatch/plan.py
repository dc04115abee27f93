"""TaskPlan: what an executor runs - a multi-instance task as Batch holds it (command lines,
files, environment, constraints). Built from a rendered spec, or (the Batch emulator, mpibatch.emulator)
from the REST JSON a Batch client sent."""
from __future__ import annotations

from dataclasses import dataclass, field

from .render import Rendered
from .spec import FileRef, Output
from .spec_model import Checkpoint


@dataclass(frozen=True)
class TaskPlan:
    job_id: str
    task_id: str
    instances: int
    command_line: str
    coordination_command_line: str
    common_files: tuple[FileRef, ...] = ()  # every node -> AZ_BATCH_TASK_SHARED_DIR
    files: tuple[FileRef, ...] = ()  # primary only -> AZ_BATCH_TASK_WORKING_DIR
    environment: dict[str, str] = field(default_factory=dict)
    outputs: tuple[Output, ...] = ()  # collected by the local/SSH executors from every instance
    max_wall_clock: int | None = None  # seconds
    max_retries: int = 0
    pool_id: str = "local"
    preparation_command_line: str | None = None
    preparation_files: tuple[FileRef, ...] = ()
    release_command_line: str | None = None
    checkpoint: Checkpoint | None = None  # task.checkpoint: the rehearsals' store stands in for the container


def plan_from_rendered(r: Rendered) -> TaskPlan:
    s = r.spec
    return TaskPlan(
        job_id=s.job.id, task_id=s.task.id, instances=s.task.instances, command_line=r.command_line,
        coordination_command_line=r.coordination_command_line, common_files=r.common_files, files=r.files,
        environment=dict(r.environment), outputs=r.outputs, max_wall_clock=s.task.max_wall_clock,
        max_retries=s.task.max_retries, pool_id=s.job.pool or "local",
        preparation_command_line=r.preparation_command_line,
        preparation_files=s.job.preparation.files if s.job.preparation else (),
        release_command_line=r.release_command_line, checkpoint=s.task.checkpoint)
