"""The run spec's data model: frozen dataclasses, what `mpibatch.spec.parse_spec` builds.

Import them from `mpibatch.spec` (which re-exports every name here); this module holds no parsing.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .launchers.protocol import TASK_OUTPUT


@dataclass(frozen=True)
class Image:
    publisher: str
    offer: str
    sku: str
    version: str
    node_agent: str

    @property
    def os(self) -> str:
        return "windows" if self.node_agent.startswith("batch.node.windows") else "linux"

    @property
    def is_hpc(self) -> bool:
        return "hpc" in self.offer.lower() or "hpc" in self.sku.lower()


# Short names users may give for `pool.image`. HPC images carry the InfiniBand drivers and MPI.
IMAGE_ALIASES: dict[str, Image] = {
    "ubuntu-hpc": Image("microsoft-dsvm", "ubuntu-hpc", "2204", "latest", "batch.node.ubuntu 22.04"),
    "almalinux-hpc": Image("almalinux", "almalinux-hpc", "8_7-hpc-gen2", "latest", "batch.node.el 8"),
    "ubuntu": Image("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", "latest",
                    "batch.node.ubuntu 22.04"),
    "windows": Image("microsoftwindowsserver", "windowsserver", "2022-datacenter", "latest",
                     "batch.node.windows amd64"),
}


@dataclass(frozen=True)
class Command:
    """An argv list (quoted for the user) or a shell line (run under bash -c / cmd /c)."""

    argv: tuple[str, ...] | None = None
    shell: str | None = None

    def __post_init__(self) -> None:
        if (self.argv is None) == (self.shell is None):
            raise ValueError("Command takes exactly one of argv or shell")


@dataclass(frozen=True)
class FileRef:
    """`source` (local path, resolved against the spec's directory, or http(s) URL) -> `path` on the node."""

    source: str
    path: str

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


@dataclass(frozen=True)
class Output:
    pattern: str
    kind: str = TASK_OUTPUT


@dataclass(frozen=True)
class NodeTask:
    """Job preparation / release task: a shell line run once on each node."""

    command: Command
    files: tuple[FileRef, ...] = ()


@dataclass(frozen=True)
class Setup:
    """How the MPI runtime is activated on a node before the launcher runs: `module` (environment
    modules / Lmod: the words are module names) or `source` (words[0] is a script, the rest its
    arguments), or `none` (explicitly nothing, not even an image default)."""

    kind: str
    words: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.kind == "module":
            return "module load " + " ".join(self.words)
        if self.kind == "source":
            return "source " + " ".join(self.words)
        return "none"


@dataclass(frozen=True)
class Mpi:
    flavor: str
    processes_per_node: int = 1
    options: tuple[str, ...] = ()
    fabric: str = "auto"
    setup: Setup | None = None  # None: the image's default (render.resolve_setup)


@dataclass(frozen=True)
class Pool:
    id: str | None = None
    vm_size: str | None = None
    nodes: int | None = None
    spot_nodes: int = 0  # Spot (low-priority on Batch-managed accounts): targetLowPriorityNodes
    image: Image | None = None
    inter_node_communication: bool = True
    task_slots_per_node: int = 1

    @property
    def os(self) -> str | None:
        return self.image.os if self.image else None


DEFAULT_EVERY = 600  # task.checkpoint.every: 10 minutes


@dataclass(frozen=True)
class Checkpoint:
    pattern: str  # relative to each node's working directory, as task.outputs' patterns
    from_: str = "primary"  # primary | all: the nodes whose files make up a generation
    every: int = DEFAULT_EVERY  # seconds between two looks of the tracker
    keep: int = 2  # complete generations kept

    def tracker_args(self) -> list[str]:
        """track.py's arguments for this checkpoint (render passes them to every node)."""
        return ["--checkpoint", self.pattern, "--checkpoint-from", self.from_,
                "--checkpoint-every", str(self.every), "--checkpoint-keep", str(self.keep)]


@dataclass(frozen=True)
class Task:
    id: str
    command: Command
    mpi: Mpi
    instances: int = 1
    coordination: str | None = None
    shared_dir: str = "none"
    common_files: tuple[FileRef, ...] = ()
    files: tuple[FileRef, ...] = ()
    environment: Mapping[str, str] = field(default_factory=dict)
    outputs: tuple[Output, ...] = ()
    max_wall_clock: int | None = None  # seconds
    max_retries: int = 0
    retention: int | None = None  # seconds
    checkpoint: Checkpoint | None = None  # task.checkpoint (spec_checkpoint.py)


@dataclass(frozen=True)
class Job:
    id: str
    pool: str | None = None
    preparation: NodeTask | None = None
    release: NodeTask | None = None


@dataclass(frozen=True)
class Spec:
    job: Job
    task: Task
    pool: Pool | None = None
    base_dir: Path = Path(".")

    @property
    def os(self) -> str:
        """The nodes' OS: the pool's image decides; without one, the flavour does (msmpi -> Windows)."""
        if self.pool and self.pool.os:
            return self.pool.os
        from .mpi import get_flavor

        return get_flavor(self.task.mpi.flavor).os
