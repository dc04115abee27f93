"""Spec rules that involve more than one section (checked once every section parsed), and the exec
size limits a node's command line must fit. Pure: no I/O."""
from __future__ import annotations

from .errors import SpecError, shown
from .shell import CMD_SAFE_WORD
from .spec_fields import Collector
from .spec_model import Command, Spec

# Linux refuses exec (E2BIG) of any one argument or NAME=value longer than MAX_ARG_STRLEN (128 KiB);
# a node runs the rendered command line as one `bash -c` argument, so the spec's parts stay well below.
MAX_ARG_BYTES = 128 * 1024 - 1
MAX_COMMAND_BYTES = 64 * 1024
MAX_ENVIRONMENT_BYTES = 256 * 1024  # all of task.environment; leaves room for Batch's variables and the image's


def cross_checks(spec: Spec) -> None:
    """Rules that involve more than one section. Three of them (instances vs the pool's nodes, the
    flavour's OS vs the image's, job.pool vs pool.id) refuse a spec whose own `pool:` contradicts its
    task; poolcheck.check judges any pool's facts (REST or spec) with its own fields and severities."""
    c = Collector()
    t, p = spec.task, spec.pool
    if p and p.nodes is not None and t.instances > p.nodes + p.spot_nodes:
        c.errors.append(SpecError("task.instances", f"{t.instances} instances but pool {p.id or ''} has "
                                  f"{p.nodes + p.spot_nodes} nodes".replace("  ", " "),
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
    if spec.os == "windows" and t.checkpoint:
        c.errors.append(SpecError("task.checkpoint", "is only supported on Linux nodes (the tracker and the restore "
                                  "step are Linux node steps)", "drop it, or use a Linux flavour and pool"))
    if spec.os == "windows" and t.shared_dir != "none":
        c.errors.append(SpecError("task.shared_dir", f"{t.shared_dir} is only supported on Linux pools",
                                  "use shared_dir: none on Windows"))
    if spec.os == "windows":
        _check_cmd_words(spec, c)
    _check_setup_source(spec, c)
    for i, ref in enumerate(t.common_files):
        if ref.path.split("/")[0].lower() == "mpibatch":
            c.errors.append(SpecError(f"task.common_files[{i}].path", f"{shown(ref.path)} is inside mpibatch/, where "
                                      "mpibatch's own node-side launchers go", "put the file under another directory"))
    _check_exec_sizes(spec, c)
    if p and p.id and spec.job.pool and p.id.lower() != spec.job.pool.lower():
        c.errors.append(SpecError("job.pool", f"{shown(spec.job.pool)} differs from pool.id {shown(p.id)}",
                                  "make them the same or drop one"))
    c.raise_if_any()


def _check_setup_source(spec: Spec, c: Collector) -> None:
    """A relative `task.mpi.setup.source` is a common file: it lands in $AZ_BATCH_TASK_SHARED_DIR on every
    node, where the coordination step sources it. Any other relative path names nothing on the node."""
    setup = spec.task.mpi.setup
    if not setup or setup.kind != "source" or setup.words[0].startswith("/"):
        return
    script = setup.words[0]
    if script not in {ref.path for ref in spec.task.common_files}:
        c.errors.append(SpecError("task.mpi.setup.source", f"{script!r} is a relative path and no common file "
                                  "of the task has it: the script is on the node, where no working directory is "
                                  "shared", "give its absolute path on the node, e.g. "
                                  "/opt/intel/oneapi/mpi/latest/env/vars.sh, or ship it in task.common_files "
                                  f"with path: {script}"))


def _nbytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def _check_exec_sizes(spec: Spec, c: Collector) -> None:
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


def _check_cmd_words(spec: Spec, c: Collector) -> None:
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
            c.errors.append(SpecError(where, f"{shown(word)} would need quotes on the cmd /c line "
                                      "(spaces or & | < > ^)",
                                      "use values without spaces, or a shell-line string for the command"))

