"""What a preemption costs with and without `task.checkpoint` (issue 21 item 5).

The heat run (examples/heat-simulation, which checkpoints its field) on the local executor, 3 nodes x 2 ranks:
uninterrupted, then preempted twice (`--preempt-at`, every node evicted as a Spot VM is), each with its
`task.checkpoint` and with the checkpoint removed. Per variant: the wall time, the application's time summed
over every attempt, the seconds computed twice (that sum minus the uninterrupted run's), the bytes saved and
restored (from the checkpoint store's manifests), and the time to restore (the restored attempts' coordination
step, which downloads the checkpoint, minus the first attempt's).

Goal: the work computed twice per preemption is at most one checkpoint interval plus the restore time. The
checkpoint interval is measured: the uninterrupted run's application time over the generations it saved.

    python benchmarks/checkpoint_preemption.py [--spec SPEC] [--flavor mpich] [--preempt-at 30%,65%]
        [--args "400 5000"] [--every 1s]

Times in `--preempt-at` are fractions of the uninterrupted run's application time (or seconds: `8s,16s`), so
the preemptions fall inside the run whatever this machine's pace. Writes the '## checkpoint_preemption'
section of benchmarks/RESULTS.md.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mpibatch.launchers import checkpoint as ck  # noqa: E402

from benchmarks._results import write_section  # noqa: E402
from mpibatch.spec import Spec, parse_spec  # noqa: E402
from mpibatch.spec_yaml import parse_yaml  # noqa: E402
from tests.infra.fixtures import mpi_env  # noqa: E402

DEFAULT_SPEC = REPO / "examples" / "heat-simulation" / "spec.yaml"


@dataclass
class Run:
    """One rehearsal, measured from the lifecycle's progress events."""

    variant: str
    preemptions: int
    succeeded: bool
    wall_s: float
    app_s: list[float]  # the application's time in each attempt
    coord_s: list[float]  # each attempt's coordination step (where the restore happens)
    generations: int  # checkpoint generations saved (the newest generation number)
    generation_bytes: int  # one generation, every instance's part
    restores: int  # attempts that started from a checkpoint
    failure: str = ""


def phases(events: list[tuple[float, str]], end: float) -> tuple[list[float], list[float]]:
    """Per attempt: (coordination seconds, application seconds) from (time, phase) events."""
    coord, app = [], []
    started = running = None
    for t, phase in events:
        if phase == "coordination" and started is None:
            started = t
        elif phase == "running" and started is not None:
            coord.append(t - started)
            running, started = t, None
        elif phase in ("preempted", "collecting") and running is not None:
            app.append(t - running)
            running = None
    if running is not None:
        app.append(end - running)
    return coord, app


def store_facts(store_dir: str | None, spec: Spec) -> tuple[int, int]:
    """(newest generation number, bytes of the newest complete generation over every instance)."""
    if not store_dir or not Path(store_dir).is_dir():
        return 0, 0
    store, task = ck.DirStore(store_dir), spec.task.id
    complete, used = ck.complete_generations(store, task, spec.task.instances)
    newest = max(used, default=0)
    size = 0
    for index, done in complete.items():
        if done:
            manifest = ck.Manifest.from_json(store.read(ck.manifest_name(task, index, max(done))))
            size += sum(int(info["size"]) for info in manifest.files.values())
    return newest, size


def run_once(spec: Spec, flavor: str, runs_dir: Path, variant: str, preempt_at: tuple[int, ...]) -> Run:
    from mpibatch.executors.local import LocalExecutor

    events: list[tuple[float, str]] = []
    t0 = time.monotonic()
    ex = LocalExecutor(base_env=mpi_env(flavor), runs_dir=runs_dir,
                       progress=lambda phase, detail: events.append((time.monotonic() - t0, phase)))
    ex.preempt_at = preempt_at
    result = ex.submit(spec).result()
    wall = time.monotonic() - t0
    coord, app = phases(events, wall)
    generations, size = store_facts(result.checkpoints_dir, spec)
    restores = sum(1 for g in result.restored if g is not None)  # attempts that started from a generation
    failure = f"{result.failure.phase}: {result.failure.reason}" if result.failure else ""
    if failure:
        print(f"{variant}: FAILED in {failure}", file=sys.stderr)
    return Run(variant, result.requeues, result.succeeded, wall, app, coord, generations, size, restores, failure)


def load(path: Path, extra: str, every: str) -> Spec:
    """The spec, with `extra` appended to its shell command and the tracker's look interval set."""
    data = parse_yaml(path.read_text(), str(path))
    task = data.get("task") or {}
    if extra and isinstance(task.get("command"), str):
        task["command"] += " " + extra
    if isinstance(task.get("checkpoint"), dict):
        task["checkpoint"]["every"] = every
    return parse_spec(data, path.resolve().parent)


def parse_times(text: str, whole_app_s: float) -> tuple[int, ...]:
    """'30%,65%' of the uninterrupted application time (after the first attempt's start-up), or '8s,16s'."""
    out = []
    for word in text.split(","):
        word = word.strip()
        seconds = float(word[:-1]) / 100 * whole_app_s if word.endswith("%") else float(word.rstrip("s"))
        out.append(max(1, round(seconds)))
    return tuple(out)


def row(r: Run, whole: Run, interval: float) -> str:
    twice = sum(r.app_s) - sum(whole.app_s)
    per = twice / r.preemptions if r.preemptions else 0.0
    first = r.coord_s[0] if r.coord_s else 0.0
    restore = max(0.0, max(r.coord_s[1:], default=first) - first)  # the slowest restored attempt's extra time
    goal = "-" if not r.preemptions else ("yes" if per <= interval + restore + 0.5 else "no")
    return (f"| {r.variant} | {r.preemptions} | {'yes' if r.succeeded else 'NO'} | {r.wall_s:.1f} | "
            f"{sum(r.app_s):.1f} | {twice:.1f} | {per:.1f} | {r.generations * r.generation_bytes / 1e6:.2f} | "
            f"{r.restores * r.generation_bytes / 1e6:.2f} | {restore:.2f} | {goal} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--flavor", default=None, help="the venv of .venvs/ the nodes start with (default: the spec's)")
    ap.add_argument("--preempt-at", default="30%,65%")
    ap.add_argument("--args", default="400 5000", help="appended to the task's shell command (heat: a checkpoint "
                    "every 400 steps, 5 ms a step, so the run lasts 20 s or more); '' for none")
    ap.add_argument("--every", default="1s", help="task.checkpoint.every for this benchmark (the tracker's look)")
    ap.add_argument("--no-write", action="store_true", help="print the table, leave RESULTS.md alone")
    args = ap.parse_args(argv)
    spec = load(args.spec, args.args, args.every)
    if spec.task.checkpoint is None:
        print(f"{args.spec} has no task.checkpoint: nothing to compare", file=sys.stderr)
        return 2
    bare = replace(spec, task=replace(spec.task, checkpoint=None))
    flavor = args.flavor or spec.task.mpi.flavor
    with tempfile.TemporaryDirectory(prefix="ckpt-bench-") as tmp:
        runs = Path(tmp)
        whole = run_once(spec, flavor, runs / "a", "checkpoint, uninterrupted", ())
        at = parse_times(args.preempt_at, sum(whole.app_s))
        start = whole.coord_s[0] if whole.coord_s else 0.0  # the first attempt's app starts after coordination
        at = tuple(max(1, round(t + start)) for t in at)
        hit = run_once(spec, flavor, runs / "b", f"checkpoint, preempted at {','.join(f'{t}s' for t in at)}", at)
        whole_bare = run_once(bare, flavor, runs / "c", "no checkpoint, uninterrupted", ())
        hit_bare = run_once(bare, flavor, runs / "d", "no checkpoint, preempted", at)
    interval = sum(whole.app_s) / whole.generations if whole.generations else float("inf")
    shown = args.spec.resolve().relative_to(REPO) if args.spec.resolve().is_relative_to(REPO) else args.spec
    lines = [
        f"`python benchmarks/checkpoint_preemption.py --spec {shown} --preempt-at {args.preempt_at} --args "
        f"'{args.args}' --every {args.every}` (local "
        f"executor, {spec.task.instances} nodes x {spec.task.mpi.processes_per_node} ranks, {flavor}, "
        "2-core machine shared with other work; one run "
        "each). Computed twice = the application's time over every attempt minus the uninterrupted run's; "
        f"checkpoint interval measured on the uninterrupted run: {interval:.1f} s "
        f"({whole.generations} generations of {whole.generation_bytes / 1e6:.2f} MB). Goal: computed twice per "
        "preemption <= one checkpoint interval + the restore time.",
        "",
        "| variant | preemptions | completed | wall (s) | app, all attempts (s) | computed twice (s) | "
        "per preemption (s) | saved (MB) | restored (MB) | restore (s) | goal met |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        row(whole, whole, interval), row(hit, whole, interval), row(whole_bare, whole_bare, interval),
        row(hit_bare, whole_bare, interval),
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_section("checkpoint_preemption", table)
    return 0 if hit.succeeded and hit.preemptions == len(at) else 1


if __name__ == "__main__":
    sys.exit(main())
