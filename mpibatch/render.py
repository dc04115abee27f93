"""Spec -> the multi-instance task exactly as the Batch service receives it.

Rendered once; the local and SSH executors run these same strings, the Azure executor sends them
(a difference between a rehearsal and a Batch run is a bug). Pure: no I/O.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from . import rdma
from .launchers import protocol, script_path
from .mpi import FLAVORS, Flavor, get_flavor
from .shell import Raw, Word, bash_c, cmd_join, sh_join
from .spec import Command, FileRef, Output, Setup, Spec

LAUNCHER_DIR = "mpibatch"  # node-side launchers land in $AZ_BATCH_TASK_SHARED_DIR/mpibatch/
# What every Linux node gets under $AZ_BATCH_TASK_SHARED_DIR/mpibatch (launchers/).
NODE_FILES = ("coordinate.sh", "persist.py", "track.py", "outputnames.py", "protocol.py", "blobio.py", "checkpoint.py",
              "checkpoint_store.py", "fileio.py", "blobdownload.py")
PERSIST_URL_VAR = "MPIBATCH_PERSIST_URL"  # container SAS for subtask outputs, set at submit time
# Written by the coordination step into each node's working directory (docs/hpc-nodes.md): the
# node's own environment (activated runtime, its InfiniBand device), and the per-rank wrapper that
# sources it before it becomes the program.
NODE_ENV_FILE = protocol.NODE_ENV_FILE
RANK_WRAPPER = protocol.RANK_WRAPPER


def launcher_source(name: str) -> str:
    """Path of a node-side script shipped in the package."""
    return script_path(name)


@dataclass(frozen=True)
class Rendered:
    spec: Spec
    os: str
    flavor: Flavor
    fabric: str  # resolved: sriov | networkdirect | tcp | none
    command_line: str
    coordination_command_line: str
    environment: dict[str, str]
    common_files: tuple[FileRef, ...]
    files: tuple[FileRef, ...]
    outputs: tuple[Output, ...]
    rank_dir: str  # where ranks start, as the node's shell writes it
    setup: Setup | None  # how the runtime is activated on each node (None: it is on PATH)
    setup_origin: str  # where the setup comes from: task.mpi.setup, an image default, or none
    node_env_line: str  # Linux: the primary sources its node's environment with this before the launcher
    rank_wrapper: str  # Linux: the word that starts every rank through its node's wrapper

    def launcher_argv(self, argv: list[Word]) -> list[Word]:
        """A flavour's launcher argv as this task starts it (after the runtime's setup)."""
        return _launcher(argv, self.flavor, self.setup)
    preparation_command_line: str | None
    release_command_line: str | None

    @property
    def instances(self) -> int:
        return self.spec.task.instances


def resolve_fabric(spec: Spec) -> str:
    """`auto` follows the pool's VM size: RDMA sizes get their fabric, others no fabric settings."""
    fabric = spec.task.mpi.fabric
    if fabric != "auto":
        return fabric
    if spec.pool and spec.pool.vm_size:
        return rdma.classify(spec.pool.vm_size)
    return "none"


def resolve_setup(spec: Spec, flavor: Flavor) -> tuple[Setup | None, str]:
    """task.mpi.setup if given (`none` turns the image default off), else the flavour's module on an
    Azure HPC image, else nothing."""
    given = spec.task.mpi.setup
    if given is not None:
        return (None, "task.mpi.setup: none") if given.kind == "none" else (given, "task.mpi.setup")
    image = spec.pool.image if spec.pool else None
    module = flavor.hpc_image_modules.get(image.offer.lower()) if image else None
    if image and module:
        return Setup("module", (module,)), f"default for the {image.offer} image"
    return None, "no task.mpi.setup and no image default: the runtime is on the node's PATH"


def _node_step_args(spec: Spec, flavor: Flavor, fabric: str, setup: Setup | None) -> list[Word]:
    """coordinate.sh's node-side steps: activate the runtime, check it is the spec's flavour, find the
    node's InfiniBand ports, write the node's environment for its ranks."""
    args: list[Word] = ["--fabric", fabric]
    if setup and setup.kind == "module":
        args += [w for m in setup.words for w in ("--module", m)]
    elif setup and setup.kind == "source":
        args += ["--source", setup.words[0], *[w for a in setup.words[1:] for w in ("--source-arg", a)]]
    if flavor.launcher and flavor.version_signature:
        args += ["--launcher", flavor.launcher, "--expect", flavor.title]
        args += [w for f in FLAVORS.values() if f.os == "linux" and f.version_signature
                 for w in ("--runtime", f"{f.title}={f.version_signature}")]
    # The user's environment wins: a name the user set is forwarded as given, never replaced per node.
    args += [w for name, fact in sorted(flavor.node_env.items()) if name not in spec.task.environment
             for w in ("--node-var", f"{name}={fact}")]
    return args


def rank_dir(spec: Spec) -> Word:
    """Where every rank starts. Linux: a per-node symlink to that node's working directory, created
    by the coordination step at the same path on every node (AZ_BATCH_NODE_SHARED_DIR is the same
    path everywhere; the subtasks' own directories are not). Windows: the task shared dir (MS-MPI)."""
    if spec.os == "windows":
        return Raw("%AZ_BATCH_TASK_SHARED_DIR%")
    # ids are [A-Za-z0-9_-] only (validated), safe inside double quotes
    return Raw(f'"$AZ_BATCH_NODE_SHARED_DIR/mpibatch/{spec.job.id}/{spec.task.id}"')


def _shell_line(cmd: Command, os: str) -> str:
    if os == "windows":
        return "cmd /c " + (cmd.shell if cmd.shell is not None else cmd_join(cmd.argv or ()))
    return bash_c(cmd.shell if cmd.shell is not None else sh_join(cmd.argv or ()))


def _program_argv(cmd: Command, os: str) -> list[Word]:
    if cmd.argv is not None:
        return list(cmd.argv)
    # A Windows shell line goes through as written (cmd expands its %VARS%); POSIX lines are quoted.
    return ["cmd", "/c", Raw(cmd.shell or "")] if os == "windows" else ["/bin/bash", "-c", cmd.shell or ""]


def rank_wrapper(spec: Spec) -> str:
    """Every rank starts through its node's wrapper, which sources that node's environment first."""
    return f'{str(rank_dir(spec))[:-1]}/{RANK_WRAPPER}"'


def node_env_line() -> str:
    """Sources the node's environment (written by the coordination step) into the primary's shell."""
    return ("# shellcheck source=/dev/null\n"
            + sh_join([".", Raw(f'"$AZ_BATCH_TASK_WORKING_DIR/{NODE_ENV_FILE}"')]) + " || exit 3")


# The primary's shell variable holding one directory per launch (Flavor.session_dir_var).
LAUNCH_DIRS_VAR = "mpibatch_launches"


def session_dirs_line(flavor: Flavor) -> str:
    """Makes the directory under which each launch gets its own session-directory base, removed when the
    command ends (a killed command's is in the node's TMPDIR or /tmp). Empty for a flavour without one."""
    if not flavor.session_dir_var:
        return ""
    return (f'{LAUNCH_DIRS_VAR}=$(mktemp -d "${{TMPDIR:-/tmp}}/mpibatch.XXXXXX") || '
            '{ echo "mpibatch: cannot make a directory in ${TMPDIR:-/tmp} for the launchers\' session directories '
            '(set TMPDIR to a writable directory)" >&2; exit 3; }\n'
            f"trap 'rm -rf -- \"${LAUNCH_DIRS_VAR}\"' EXIT\n")


def own_session_dir(argv: list[Word], flavor: Flavor, launch: str) -> list[Word]:
    """`argv` (a launcher's) with its own session-directory base: launches that start or end together on
    one node (the tracker's, the program's) never share one."""
    if not flavor.session_dir_var:
        return list(argv)
    return [Raw(f'{flavor.session_dir_var}="${LAUNCH_DIRS_VAR}/{launch}"'), *argv]


def _launcher(argv: list[Word], flavor: Flavor, setup: Setup | None) -> list[Word]:
    if setup and flavor.absolute_launcher_after_setup:
        return [Raw(f'"$(command -v {argv[0]})"'), *argv[1:]]
    return list(argv)


def _linux_lines(spec: Spec, flavor: Flavor, env: Mapping[str, str], fabric: str,
                 setup: Setup | None) -> tuple[str, str]:
    t = spec.task
    rdir = rank_dir(spec)
    launch = flavor.launch(None, t.mpi.processes_per_node, t.mpi.options, env, "none", rdir,
                           instances=t.instances)
    argv = _launcher(launch.argv, flavor, setup)
    wrapper = Raw(rank_wrapper(spec))
    app = sh_join([*own_session_dir(argv, flavor, "app"), wrapper, *_program_argv(t.command, "linux")])
    # Subtasks have no Batch output files: when submitted to Azure, one process per node tracks that
    # node's logs and outputs while the program runs (track.py), and one persists them before the
    # primary exits (persist.py, which ends the tracker first).
    node_env = dict.fromkeys(("AZ_BATCH_HOST_LIST", "AZ_BATCH_MASTER_NODE"), "")
    sas_urls = (PERSIST_URL_VAR, *((protocol.CHECKPOINT_URL_VAR,) if t.checkpoint else ()))  # Azure only
    one_per_node = [*_launcher(flavor.launch(None, 1, (), node_env, "none", rdir, instances=t.instances).argv,
                               flavor, setup), *flavor.forward_if_set(sas_urls)]
    declared: list[Word] = ["--task", t.id, "--rank-vars", ",".join(flavor.rank_vars)]
    for o in t.outputs:
        declared += ["--output", protocol.encode_output(o.kind, o.pattern)]

    def node_step(name: str, *action: str) -> str:
        launch = action[0] if action else name.removesuffix(".py")  # restore, track, persist
        return sh_join([*own_session_dir(one_per_node, flavor, launch),
                        "python3", Raw(f'"$AZ_BATCH_TASK_SHARED_DIR/{LAUNCHER_DIR}/{name}"'), *action, *declared])

    persisting = f'[ -n "${{{PERSIST_URL_VAR}:-}}" ]'
    restore = ""
    if t.checkpoint:
        # A rehearsal's checkpoint store also needs the tracker (it saves them) and its stop (persist.py). Each
        # node puts back its part of the newest complete generation before the program starts, one process per
        # node (only a rank knows its instance number), into the node environment every rank sources. The
        # store: a rehearsal's directory, or the job's container (Azure: the checkpoint SAS).
        declared += t.checkpoint.tracker_args()
        stores = (protocol.CHECKPOINT_STORE_VAR, protocol.CHECKPOINT_URL_VAR)
        store = "{ " + " || ".join(f'[ -n "${{{v}:-}}" ]' for v in stores) + "; }"
        persisting = f"{{ {persisting} || {store}; }}"
        restore = (f"if {store}; then {node_step('checkpoint.py', 'restore')} < /dev/null || "
                   "{ echo 'mpibatch: restoring the checkpoint failed' >&2; exit 3; }; fi\n")
    script = (f"{node_env_line()}\n"
              f"{session_dirs_line(flavor)}"
              f"{restore}"
              f"if {persisting}; then {node_step('track.py')} < /dev/null > /dev/null & track=$!; fi\n"
              f"{app}; rc=$?\n"
              f"if {persisting}; then\n"
              f"  {node_step('persist.py')}"
              " || { echo 'mpibatch: persisting subtask outputs failed' >&2; kill \"$track\" 2> /dev/null; }\n"
              '  wait "$track"  # each tracker ends once its node\'s persist step began\n'
              "fi\n"
              "exit $rc")
    names = dict.fromkeys(f.path.split("/")[0] for f in t.common_files)  # top-level entries, in order
    links = [a for name in names for a in ("--link", name)]
    coord_argv: list[Word] = ["bash", Raw(f'"$AZ_BATCH_TASK_SHARED_DIR/{LAUNCHER_DIR}/coordinate.sh"'),
                              "--rank-dir", rdir, "--shared-dir", t.shared_dir, *links, *protocol.coordinate_args(),
                              *_node_step_args(spec, flavor, fabric, setup)]
    coord = sh_join(coord_argv)
    if t.coordination:
        coord += " && " + sh_join(["/bin/bash", "-c", t.coordination])
    return bash_c(script), bash_c(coord)


def _windows_lines(spec: Spec, flavor: Flavor, env: Mapping[str, str]) -> tuple[str, str]:
    t = spec.task
    launch = flavor.launch(None, t.mpi.processes_per_node, t.mpi.options, env, "none", rank_dir(spec),
                           instances=t.instances)
    argv = [*launch.argv, *_program_argv(t.command, "windows")]
    app = "cmd /c " + cmd_join(argv)
    coord = "cmd /c " + cmd_join(flavor.coordination_argv() or ["rem"])
    if t.coordination:
        coord += " && " + t.coordination
    return app, coord


def render(spec: Spec) -> Rendered:
    """The whole multi-instance task for `spec`."""
    flavor = get_flavor(spec.task.mpi.flavor)
    fabric = resolve_fabric(spec)
    setup, setup_origin = resolve_setup(spec, flavor) if spec.os == "linux" else (None, "none")
    # The user's environment always wins over fabric defaults.
    env = {**flavor.fabric_env(fabric), **dict(spec.task.environment)}
    if spec.os == "windows":
        app, coord = _windows_lines(spec, flavor, env)
        launchers: tuple[FileRef, ...] = ()
    else:
        app, coord = _linux_lines(spec, flavor, env, fabric, setup)
        launchers = tuple(FileRef(launcher_source(n), f"{LAUNCHER_DIR}/{n}")
                          for n in NODE_FILES)
    job = spec.job
    return Rendered(
        spec=spec, os=spec.os, flavor=flavor, fabric=fabric, command_line=app,
        coordination_command_line=coord, environment=env,
        common_files=launchers + spec.task.common_files, files=spec.task.files,
        outputs=spec.task.outputs, rank_dir=str(rank_dir(spec)), setup=setup, setup_origin=setup_origin,
        node_env_line=node_env_line() if spec.os == "linux" else "",
        rank_wrapper=rank_wrapper(spec) if spec.os == "linux" else "",
        preparation_command_line=_shell_line(job.preparation.command, spec.os) if job.preparation else None,
        release_command_line=_shell_line(job.release.command, spec.os) if job.release else None,
    )


def source_label(ref: FileRef) -> str:
    """How `render` shows a file whose upload happens only at submit time."""
    if ref.is_url:
        return ref.source
    return f"<upload at submit: {Path(ref.source).name} -> job container, read-only SAS>"
