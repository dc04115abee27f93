"""The run spec: dataclasses, loading from YAML, validation.

Field names are a user-facing contract (see README "The spec"). Every problem raises SpecError
naming the field and saying how to fix it; all problems found are reported together.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Mapping

import yaml

from .durations import parse_duration
from .errors import SpecError, SpecErrors, shown
from .inputfiles import read_text_file
from .shell import CMD_SAFE_WORD

ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# A word of task.mpi.setup goes into the coordination line as it is: only characters no shell treats
# specially (so it never needs quoting, and means the same on every node).
SETUP_WORD_RE = re.compile(r"^[A-Za-z0-9_./+:,=@%-]+$")
SETUP_KINDS = ("module", "source")
FABRICS = ("auto", "tcp", "sriov", "networkdirect")
SHARED_DIRS = ("none", "sshfs", "nfs")
MAX_INSTANCES = 100  # Batch caps inter-node communication pools at 100 nodes
# What a spec may cost (docs/limits.md): a spec is a page of YAML, not a data file.
MAX_SPEC_BYTES = 1024 * 1024
MAX_YAML_DEPTH = 32
# Linux refuses exec (E2BIG) of any one argument or NAME=value longer than MAX_ARG_STRLEN (128 KiB);
# a node runs the rendered command line as one `bash -c` argument, so the spec's parts stay well below.
MAX_ARG_BYTES = 128 * 1024 - 1
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENVIRONMENT_BYTES = 256 * 1024  # all of task.environment; leaves room for Batch's variables and the image's


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
    kind: str = "TaskOutput"


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
    low_priority_nodes: int = 0
    image: Image | None = None
    inter_node_communication: bool = True
    task_slots_per_node: int = 1

    @property
    def os(self) -> str | None:
        return self.image.os if self.image else None


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


# ---------------------------------------------------------------- parsing helpers

class _Collector:
    """Gathers SpecErrors so the user sees every problem at once."""

    def __init__(self) -> None:
        self.errors: list[SpecError] = []

    def run(self, fn: Callable[[], Any], default: Any = None) -> Any:
        try:
            return fn()
        except SpecErrors as e:
            self.errors.extend(e.errors)
        except SpecError as e:
            self.errors.append(e)
        return default

    def raise_if_any(self) -> None:
        if len(self.errors) == 1:
            raise self.errors[0]
        if self.errors:
            raise SpecErrors(self.errors)


def _check_keys(data: Mapping[str, Any], allowed: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(allowed)}"
            raise SpecError(f"{where}.{key}" if where else str(key), "unknown key", hint)


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise SpecError(where, f"expected a mapping, got {type(value).__name__}",
                        "write it as 'key: value' lines")
    return value


def _int(value: Any, where: str, lo: int, hi: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(where, f"{shown(value)} is not a whole number", f"write a number >= {lo}")
    if value < lo or (hi is not None and value > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise SpecError(where, f"{value} is out of range", f"use a number {rng}")
    return value


def _str(value: Any, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise SpecError(where, f"{shown(value)} is not a string", "quote it")
    text = str(value)
    if "\x00" in text:
        raise SpecError(where, "contains a NUL byte", "remove it")
    return text


def validate_id(value: Any, where: str) -> str:
    from .conventions import validate_batch_id  # the one id rule

    return validate_batch_id(_str(value, where), where, "id", "run-1")


def _choice(value: Any, where: str, choices: tuple[str, ...]) -> str:
    text = _str(value, where).lower()
    if text not in choices:
        close = difflib.get_close_matches(text, choices, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise SpecError(where, f"unknown value {shown(value)}", f"{hint}choose one of: {', '.join(choices)}")
    return text


def check_node_path(value: Any, where: str) -> str:
    """A destination path on the node: relative, no '..', no drive letter; normalised to '/'."""
    text = _str(value, where).strip()
    fix = "give a relative path inside the task directory, e.g. input/data.bin"
    if not text:
        raise SpecError(where, "is empty", fix)
    if PureWindowsPath(text).drive or text.startswith(("/", "\\")) or PureWindowsPath(text).root:
        raise SpecError(where, f"{shown(text)} is absolute", fix)
    parts = PurePosixPath(text.replace("\\", "/")).parts
    if ".." in parts:
        raise SpecError(where, f"{shown(text)} escapes the task directory with '..'", fix)
    if any(c in text for c in "\n\r\t"):
        raise SpecError(where, f"{shown(text)} contains a control character", fix)
    clean = "/".join(p for p in parts if p != ".")
    if not clean:
        raise SpecError(where, f"{shown(text)} names no file", fix)
    return clean


def _command(value: Any, where: str) -> Command:
    if isinstance(value, str):
        if not value.strip():
            raise SpecError(where, "is empty", "give the program to run, e.g. [python, app.py]")
        return Command(shell=value)
    if isinstance(value, list):
        if not value:
            raise SpecError(where, "is an empty list", "give the program to run, e.g. [python, app.py]")
        argv = tuple(_str(v, f"{where}[{i}]") for i, v in enumerate(value))
        if not argv[0]:
            raise SpecError(f"{where}[0]", "program name is empty", "name the program to run")
        return Command(argv=argv)
    raise SpecError(where, f"expected a list (argv) or a string (shell line), got {type(value).__name__}",
                    "write e.g. [python, app.py] or \"python app.py > out.txt\"")


def _files(value: Any, where: str, base_dir: Path) -> tuple[FileRef, ...]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(where, "expected a list of {source, path}", "write - {source: ./x, path: x}")
    out: list[FileRef] = []
    seen: dict[str, int] = {}
    c = _Collector()
    for i, item in enumerate(value):
        w = f"{where}[{i}]"

        def one(item: Any = item, w: str = w) -> FileRef:
            if isinstance(item, str):
                item = {"source": item}
            m = _mapping(item, w)
            _check_keys(m, ("source", "path"), w)
            if "source" not in m:
                raise SpecError(f"{w}.source", "is missing", "name a local file or an http(s) URL")
            source = _str(m["source"], f"{w}.source").strip()
            if not source:
                raise SpecError(f"{w}.source", "is empty", "name a local file or an http(s) URL")
            is_url = source.startswith(("http://", "https://"))
            if "://" in source and not is_url:
                raise SpecError(f"{w}.source", f"unsupported URL scheme in {shown(source)}",
                                "use a local path or an http(s) URL")
            default_path = PurePosixPath(source.split("?")[0]).name if is_url else Path(source).name
            path = check_node_path(m.get("path", default_path), f"{w}.path")
            if not is_url:
                source = str((base_dir / source).resolve()) if not Path(source).is_absolute() else source
            return FileRef(source=source, path=path)

        ref = c.run(one)
        if ref is None:
            continue
        key = ref.path.lower()  # Windows nodes and many tools are case-insensitive
        if key in seen:
            c.errors.append(SpecError(f"{w}.path", f"{shown(ref.path)} is also the destination of "
                                      f"{where}[{seen[key]}]", "give each file its own path"))
            continue
        seen[key] = i
        out.append(ref)
    c.raise_if_any()
    return tuple(out)


def _environment(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    m = _mapping(value, where)
    env: dict[str, str] = {}
    for k, v in m.items():
        name = str(k)
        if not ENV_NAME_RE.fullmatch(name):
            raise SpecError(f"{where}.{name}", "is not a valid environment variable name",
                            "use letters, digits and '_', not starting with a digit")
        if name.upper().startswith("AZ_BATCH_") or name.upper() == "CCP_NODES":
            raise SpecError(f"{where}.{name}", "is set by Batch on every node",
                            "pick another name; Batch would override it")
        if v is None:
            raise SpecError(f"{where}.{name}", "has no value", "give a value, quoted if needed")
        env[name] = _str(v, f"{where}.{name}")
    return env


def _outputs(value: Any, where: str) -> tuple[Output, ...]:
    from .conventions import KINDS  # local import: conventions is a leaf module

    if value is None:
        return ()
    if not isinstance(value, list):
        raise SpecError(where, "expected a list of {pattern, kind}", "write - {pattern: 'results/**'}")
    out = []
    for i, item in enumerate(value):
        w = f"{where}[{i}]"
        if isinstance(item, str):
            item = {"pattern": item}
        m = _mapping(item, w)
        _check_keys(m, ("pattern", "kind"), w)
        if "pattern" not in m:
            raise SpecError(f"{w}.pattern", "is missing", "write a glob such as results/**")
        pattern = check_node_path(m["pattern"], f"{w}.pattern")
        kind = _str(m.get("kind", "TaskOutput"), f"{w}.kind")
        if kind not in KINDS and not re.match(r"^[A-Za-z][A-Za-z0-9]{0,62}$", kind):
            raise SpecError(f"{w}.kind", f"{shown(kind)} is not a File Conventions kind",
                            f"use one of {', '.join(KINDS)} or a custom name of letters and digits")
        out.append(Output(pattern=pattern, kind=kind))
    return tuple(out)


def _node_task(value: Any, where: str, base_dir: Path) -> NodeTask | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"command": value}
    m = _mapping(value, where)
    _check_keys(m, ("command", "files"), where)
    if "command" not in m:
        raise SpecError(f"{where}.command", "is missing", "give the command to run on each node")
    c = _Collector()
    cmd = c.run(lambda: _command(m["command"], f"{where}.command"))
    files = c.run(lambda: _files(m.get("files"), f"{where}.files", base_dir), ())
    c.raise_if_any()
    return NodeTask(command=cmd, files=files)


def _image(value: Any, where: str) -> Image | None:
    if value is None:
        return None
    if isinstance(value, str):
        key = value.lower()
        if key not in IMAGE_ALIASES:
            raise SpecError(where, f"unknown image {shown(value)}",
                            f"use one of {', '.join(IMAGE_ALIASES)} or a mapping with "
                            "publisher, offer, sku, version, node_agent")
        return IMAGE_ALIASES[key]
    m = _mapping(value, where)
    keys = ("publisher", "offer", "sku", "version", "node_agent")
    _check_keys(m, keys, where)
    missing = [k for k in keys if k not in m and k != "version"]
    if missing:
        raise SpecError(where, f"missing {', '.join(missing)}",
                        "give publisher, offer, sku and node_agent (version defaults to latest)")
    return Image(*(_str(m.get(k, "latest"), f"{where}.{k}") for k in keys))


def _pool(value: Any) -> Pool | None:
    if value is None:
        return None
    from . import rdma

    m = _mapping(value, "pool")
    keys = ("id", "vm_size", "nodes", "low_priority_nodes", "image", "inter_node_communication",
            "task_slots_per_node")
    _check_keys(m, keys, "pool")
    c = _Collector()
    pid = c.run(lambda: validate_id(m["id"], "pool.id")) if "id" in m else None
    vm = c.run(lambda: rdma.validate_vm_size(m["vm_size"], "pool.vm_size")) if "vm_size" in m else None
    nodes = c.run(lambda: _int(m["nodes"], "pool.nodes", 0, 1000)) if "nodes" in m else None
    low = c.run(lambda: _int(m.get("low_priority_nodes", 0), "pool.low_priority_nodes", 0, 1000), 0)
    image = c.run(lambda: _image(m.get("image"), "pool.image"))
    inc = m.get("inter_node_communication", True)
    if not isinstance(inc, bool):
        c.errors.append(SpecError("pool.inter_node_communication", f"{shown(inc)} is not true/false",
                                  "write true or false"))
        inc = True
    slots = c.run(lambda: _int(m.get("task_slots_per_node", 1), "pool.task_slots_per_node", 1, 256), 1)
    c.raise_if_any()
    return Pool(id=pid, vm_size=vm, nodes=nodes, low_priority_nodes=low, image=image,
                inter_node_communication=inc, task_slots_per_node=slots)


def _setup(value: Any, where: str) -> Setup | None:
    """task.mpi.setup: {module: mpi/impi-2021}, {source: /opt/x/vars.sh [args]}, none, or absent."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().lower() == "none":
        return Setup("none")
    example = "write {module: mpi/impi-2021} or {source: /opt/intel/oneapi/mpi/latest/env/vars.sh}"
    if not isinstance(value, Mapping):
        raise SpecError(where, f"expected a mapping, got {type(value).__name__}", example)
    _check_keys(value, SETUP_KINDS, where)
    if len(value) != 1:
        raise SpecError(where, "needs exactly one of module or source", example)
    kind, raw = next(iter(value.items()))
    field_ = f"{where}.{kind}"
    words = tuple(_str(raw, field_).split())
    if not words:
        raise SpecError(field_, "is empty", example)
    for w in words:
        if not SETUP_WORD_RE.fullmatch(w):
            raise SpecError(field_, f"{w!r} would need quoting on the node's command line",
                            "use names and paths of letters, digits and . _ / + : , = @ % - only")
    if kind == "source" and not words[0].startswith("/"):
        raise SpecError(field_, f"{words[0]!r} is a relative path; the script is on the node, where no "
                        "working directory is shared", "give its absolute path on the node, e.g. "
                        "/opt/intel/oneapi/mpi/latest/env/vars.sh")
    if kind == "module" and any(w.startswith("-") for w in words):
        raise SpecError(field_, "holds an option, not a module name", "give module names only")
    return Setup(kind, words)


def _mpi(value: Any) -> Mpi:
    from .mpi import names as flavor_names

    flavors = tuple(flavor_names())
    if value is None:
        raise SpecError("task.mpi", "is missing", f"add mpi: {{flavor: {'|'.join(flavors)}}}")
    if isinstance(value, str):
        value = {"flavor": value}
    m = _mapping(value, "task.mpi")
    _check_keys(m, ("flavor", "processes_per_node", "options", "fabric", "setup"), "task.mpi")
    if "flavor" not in m:
        raise SpecError("task.mpi.flavor", "is missing", f"choose one of: {', '.join(flavors)}")
    c = _Collector()
    flavor = c.run(lambda: _choice(m["flavor"], "task.mpi.flavor", flavors))
    setup = c.run(lambda: _setup(m.get("setup"), "task.mpi.setup"))
    ppn = c.run(lambda: _int(m.get("processes_per_node", 1), "task.mpi.processes_per_node", 1, 4096), 1)
    fabric = c.run(lambda: _choice(m.get("fabric", "auto"), "task.mpi.fabric", FABRICS), "auto")
    opts = m.get("options", []) or []
    if not isinstance(opts, list):
        c.errors.append(SpecError("task.mpi.options", "expected a list of launcher arguments",
                                  "write e.g. [-genv, I_MPI_DEBUG, '5']"))
        opts = []
    options = tuple(c.run(lambda i=i, o=o: _str(o, f"task.mpi.options[{i}]"), "") for i, o in enumerate(opts))
    c.raise_if_any()
    return Mpi(flavor=flavor, processes_per_node=ppn, options=options, fabric=fabric, setup=setup)


def _task(value: Any, base_dir: Path) -> Task:
    m = _mapping(value, "task")
    keys = ("id", "instances", "mpi", "command", "coordination", "shared_dir", "common_files", "files",
            "environment", "outputs", "max_wall_clock", "max_retries", "retention")
    _check_keys(m, keys, "task")
    c = _Collector()
    if "id" not in m:
        c.errors.append(SpecError("task.id", "is missing", "give the task an id such as run-1"))
    tid = c.run(lambda: validate_id(m["id"], "task.id")) if "id" in m else None
    instances = c.run(lambda: _int(m.get("instances", 1), "task.instances", 1, MAX_INSTANCES), 1)
    mpi = c.run(lambda: _mpi(m.get("mpi")))
    if "command" not in m:
        c.errors.append(SpecError("task.command", "is missing", "give the program, e.g. [python, app.py]"))
    cmd = c.run(lambda: _command(m["command"], "task.command")) if "command" in m else None
    coord = m.get("coordination") or None
    if coord is not None:
        coord = c.run(lambda: _str(coord, "task.coordination"))
    shared = c.run(lambda: _choice(m.get("shared_dir", "none"), "task.shared_dir", SHARED_DIRS), "none")
    common = c.run(lambda: _files(m.get("common_files"), "task.common_files", base_dir), ())
    files = c.run(lambda: _files(m.get("files"), "task.files", base_dir), ())
    env = c.run(lambda: _environment(m.get("environment"), "task.environment"), {})
    outputs = c.run(lambda: _outputs(m.get("outputs"), "task.outputs"), ())
    wall = c.run(lambda: parse_duration(m["max_wall_clock"], "task.max_wall_clock")) \
        if m.get("max_wall_clock") is not None else None
    retries = c.run(lambda: _int(m.get("max_retries", 0), "task.max_retries", 0, 100), 0)
    retention = c.run(lambda: parse_duration(m["retention"], "task.retention")) \
        if m.get("retention") is not None else None
    c.raise_if_any()
    return Task(id=tid, command=cmd, mpi=mpi, instances=instances, coordination=coord, shared_dir=shared,
                common_files=common, files=files, environment=env, outputs=outputs, max_wall_clock=wall,
                max_retries=retries, retention=retention)


def _job(value: Any, base_dir: Path) -> Job:
    m = _mapping(value, "job")
    _check_keys(m, ("id", "pool", "preparation", "release"), "job")
    c = _Collector()
    if "id" not in m:
        c.errors.append(SpecError("job.id", "is missing", "give the job an id such as cfd-run-1"))
    jid = c.run(lambda: validate_id(m["id"], "job.id")) if "id" in m else None
    pool = c.run(lambda: validate_id(m["pool"], "job.pool")) if m.get("pool") is not None else None
    prep = c.run(lambda: _node_task(m.get("preparation"), "job.preparation", base_dir))
    rel = c.run(lambda: _node_task(m.get("release"), "job.release", base_dir))
    if rel is not None and rel.files:
        c.errors.append(SpecError("job.release.files", "a job release task takes no files",
                                  "download them in job.preparation instead"))
    c.raise_if_any()
    return Job(id=jid, pool=pool, preparation=prep, release=rel)


def _cross_checks(spec: Spec) -> None:
    """Rules that involve more than one section."""
    c = _Collector()
    t, p = spec.task, spec.pool
    if p and p.nodes is not None and t.instances > p.nodes + p.low_priority_nodes:
        c.errors.append(SpecError("task.instances", f"{t.instances} instances but pool {p.id or ''} has "
                                  f"{p.nodes + p.low_priority_nodes} nodes".replace("  ", " "),
                                  "lower task.instances or grow the pool: the task would never start"))
    if p and p.os:
        from .mpi import FLAVORS

        wanted = FLAVORS[t.mpi.flavor].os
        if wanted != p.os:
            fits = [name for name, f in FLAVORS.items() if f.os == p.os]
            c.errors.append(SpecError("task.mpi.flavor", f"{t.mpi.flavor} needs a {wanted.capitalize()} pool",
                                      f"use pool.image: {wanted}, or {'/'.join(fits)} on "
                                      f"{p.os.capitalize()} pools"))
    if t.mpi.setup and t.mpi.setup.kind != "none" and spec.os == "windows":
        c.errors.append(SpecError("task.mpi.setup", "is for Linux nodes (environment modules or a script "
                                  "to source)", "drop it; install MS-MPI in the pool's start task"))
    if spec.os == "windows" and t.shared_dir != "none":
        c.errors.append(SpecError("task.shared_dir", f"{t.shared_dir} is only supported on Linux pools",
                                  "use shared_dir: none on Windows"))
    if spec.os == "windows":
        _check_cmd_words(spec, c)
    for i, ref in enumerate(t.common_files):
        if ref.path.split("/")[0].lower() == "mpibatch":
            c.errors.append(SpecError(f"task.common_files[{i}].path", f"{shown(ref.path)} is inside mpibatch/, where "
                                      "mpibatch's own node-side launchers go", "put the file under another directory"))
    _check_exec_sizes(spec, c)
    if p and p.id and spec.job.pool and p.id.lower() != spec.job.pool.lower():
        c.errors.append(SpecError("job.pool", f"{shown(spec.job.pool)} differs from pool.id {shown(p.id)}",
                                  "make them the same or drop one"))
    c.raise_if_any()


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_exec_sizes(spec: Spec, c: _Collector) -> None:
    """What a node hands to exec must fit Linux's limits, or the run fails with E2BIG after nodes started."""
    t = spec.task
    fix = "put large data in a file (common_files) and pass its path"
    env = t.environment
    for k, v in env.items():
        if _nbytes(k) + 1 + _nbytes(v) > MAX_ARG_BYTES:
            c.errors.append(SpecError(f"task.environment.{k}", f"is {_nbytes(v)} bytes; exec refuses a variable "
                                      f"over {MAX_ARG_BYTES + 1} bytes (E2BIG)", fix))
    total = sum(_nbytes(k) + _nbytes(v) + 2 for k, v in env.items())
    if total > MAX_ENVIRONMENT_BYTES and all(_nbytes(k) + 1 + _nbytes(v) <= MAX_ARG_BYTES for k, v in env.items()):
        c.errors.append(SpecError("task.environment", f"is {total} bytes in all; at most {MAX_ENVIRONMENT_BYTES} "
                                  "leaves exec room for Batch's variables (E2BIG otherwise)", fix))
    parts: list[tuple[str, Command | None, tuple[str, ...]]] = [("task.command", t.command, t.mpi.options)]
    for name, nt in (("job.preparation.command", spec.job.preparation), ("job.release.command", spec.job.release)):
        parts.append((name, nt.command if nt else None, ()))
    for where, cmd, extra in parts:
        if cmd is None:
            continue
        size = sum(_nbytes(w) + 1 for w in (cmd.argv or (cmd.shell or "",)) + extra)
        if size > MAX_COMMAND_BYTES:
            c.errors.append(SpecError(where, f"is {size} bytes; a node runs it as one exec argument, so at most "
                                      f"{MAX_COMMAND_BYTES} bytes", "move the logic into a script file"))
    if t.coordination and _nbytes(t.coordination) > MAX_COMMAND_BYTES:
        c.errors.append(SpecError("task.coordination", f"is {_nbytes(t.coordination)} bytes; at most "
                                  f"{MAX_COMMAND_BYTES}", "move the logic into a script file"))


def _check_cmd_words(spec: Spec, c: _Collector) -> None:
    """Words mpibatch quotes for cmd /c must not hold what cmd cannot take inside quotes."""
    bad = set('%"\n')
    fix = "use a shell-line string for the command, or a .cmd wrapper script"
    words = [(f"task.command[{i}]", w) for i, w in enumerate(spec.task.command.argv or ())]
    words += [(f"task.mpi.options[{i}]", w) for i, w in enumerate(spec.task.mpi.options)]
    words += [(f"task.environment.{k}", v) for k, v in spec.task.environment.items()]
    for where, word in words:
        if bad & set(word):
            c.errors.append(SpecError(where, f"{shown(word)} holds % or \" or a newline, which cannot pass safely "
                                      "through cmd /c on Windows", fix))
        elif word and not CMD_SAFE_WORD.fullmatch(word):
            # cmd /c strips the line's first and last quote: a quoted word at the end would break the
            # ""%MSMPI_BIN%\mpiexec.exe"" form, so words that need quotes are refused.
            c.errors.append(SpecError(where, f"{shown(word)} would need quotes on the cmd /c line (spaces or & | < > ^)",
                                      "use values without spaces, or a shell-line string for the command"))


def parse_spec(data: Any, base_dir: Path | str = ".") -> Spec:
    """Build a validated Spec from a mapping (e.g. parsed YAML). Relative local sources resolve
    against `base_dir`."""
    base = Path(base_dir)
    m = _mapping(data, "")
    c = _Collector()
    c.run(lambda: _check_keys(m, ("job", "pool", "task"), ""))
    if "job" not in m:
        c.errors.append(SpecError("job", "is missing", "add a job section with at least job.id"))
    if "task" not in m:
        c.errors.append(SpecError("task", "is missing", "add a task section with id, mpi and command"))
    job = c.run(lambda: _job(m["job"], base)) if "job" in m else None
    pool = c.run(lambda: _pool(m.get("pool")))
    task = c.run(lambda: _task(m["task"], base)) if "task" in m else None
    c.raise_if_any()
    spec = Spec(job=job, task=task, pool=pool, base_dir=base)
    if spec.job.pool is None and pool and pool.id:
        spec = replace(spec, job=replace(spec.job, pool=pool.id))
    _cross_checks(spec)
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate a YAML spec file."""
    p = Path(path)
    data = parse_yaml(read_spec_text(p), str(p))
    if data is None:
        raise SpecError(str(p), "is empty", "see examples/hello/spec.yaml for a starting point")
    return parse_spec(data, p.parent)


def read_spec_text(p: Path) -> str:
    """The spec's text: a small regular UTF-8 file (a huge one would cost its size many times over
    in YAML objects)."""
    return read_text_file(p, field=str(p), limit=MAX_SPEC_BYTES,
                          fix="give a UTF-8 YAML file of at most 1 MiB; put data in files named in common_files")


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and deep nesting: the cost of a spec stays proportional to its size."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise _Refused(mark, "YAML aliases (*name) are not accepted in a spec",
                           "write the value out where it is used")
        self._depth = getattr(self, "_depth", 0) + 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _Refused(self.peek_event().start_mark, f"nested deeper than {MAX_YAML_DEPTH} levels",
                               "a spec needs only a few levels of mappings and lists")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _Refused(Exception):
    def __init__(self, mark: Any, problem: str, fix: str) -> None:
        self.mark, self.problem, self.fix = mark, problem, fix


def parse_yaml(text: str, name: str) -> Any:
    """YAML text -> plain data, every failure a SpecError naming the line."""
    try:
        return yaml.load(text, Loader=_SpecLoader)  # noqa: S506 - a SafeLoader subclass
    except _Refused as e:
        raise SpecError(name, f"{e.problem} (line {e.mark.line + 1}, column {e.mark.column + 1})", e.fix) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(name, f"is not valid YAML{where}: {getattr(e, 'problem', e)}",
                        "fix the YAML syntax") from None
    except ValueError as e:  # e.g. an integer of more than 4300 digits
        raise SpecError(name, f"holds a value YAML cannot convert: {str(e)[:120]}", "fix the value") from None
