"""Local rehearsal at scale, as a user runs it: `mpibatch run` (the console script of this checkout's venv)
of N emulated nodes x 1 rank of examples/hello/hello.py, against bare `mpiexec -n N python3 hello.py` and
against MPICH alone on N "hosts" of this machine (the floor: one proxy per host, no mpibatch), all as
whole processes with PATH starting at .venvs/mpich/bin, then .venv/bin (so both use that venv's mpiexec, python3
and mpi4py: mpibatch puts its own venv first on the nodes' PATH only when PATH lacks it, and .venv is an editable
install, whose import hook costs every Python start there about 8 ms - 0.5 s of CPU over 64 ranks), for
N = 16, 32, 64; medians of alternating runs. Also where mpibatch's time goes, per phase, from its own progress
lines on stderr (`[  1.2s] phase: detail`), timed as they arrive:

  CLI start      process start -> `starting`         interpreter, imports, the spec read and checked
  node start     `starting` -> `files`              the emulated nodes' namespaces come up
  files          `files` -> `coordination: 0/N`      common files to every node
  coordination   `coordination: 0/N` -> `running`    the coordination command on every node
  application    `running` -> `collecting`           mpiexec on the primary, ranks on every node
  collection     `collecting` -> the process exits   logs and outputs of every instance, teardown, report

CPU bare / CPU mpibatch: CPU seconds (user + system) of each whole process tree (getrusage of the waited-for
children), medians: what the run costs the machine, which load from other work does not change the way it
changes wall times. On a 2-core machine a run cannot take less wall time than half its CPU.

Goal (issue 22, item 11): mpibatch <= 1.5x bare at 64 nodes, and its time growing linearly with N.

    .venv/bin/python benchmarks/rehearsal_scaling.py [--nodes 16,32,64] [--runs 3] [--baseline COMMIT] [--no-write]

--baseline COMMIT measures that commit's mpibatch too (its `git archive`, on PYTHONPATH), run for run with this
checkout's: before/after numbers taken under the same load.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "hello" / "hello.py"
MPICH_BIN = REPO / ".venvs" / "mpich" / "bin"
MPIBATCH = REPO / ".venv" / "bin" / "mpibatch"
PHASES = (("CLI start", ""), ("node start", "starting"), ("files", "files"), ("coordination", "coordination"),
          ("application", "running"), ("collection", "collecting"))
NAMES = tuple(name for name, _ in PHASES)
PROGRESS = re.compile(r"^\[\s*([0-9.]+)s\] ([a-z ]+): (.*)$")
TIMEOUT_S = 300
CPU_MARK = "<cpu>"  # the last "line" of a run: its CPU seconds in place of an arrival time
HELLO_COMMAND = ("python3", "hello.py")


def spec_text(n: int, command: Sequence[str] = HELLO_COMMAND) -> str:
    return (f"job: {{id: scaling}}\ntask:\n  id: n{n}\n  instances: {n}\n"
            f"  mpi: {{flavor: mpich, processes_per_node: 1}}\n  command: {json.dumps(list(command))}\n"
            "  common_files: [{source: hello.py, path: hello.py}]\n"
            "  outputs: [{pattern: \"rank-*.txt\"}]\n  max_wall_clock: 5m\n")


def phases(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """Seconds per phase from mpibatch's progress lines, each with the time it arrived since the process
    started: a phase runs from its first line to the first line of the next phase; the last one (collection)
    to the end of the process, the first (CLI start) from the process start. Pure."""
    starts: dict[str, float] = {"": 0.0}
    for at, line in lines:
        m = PROGRESS.match(line)
        if m and m.group(2) not in starts:
            starts[m.group(2)] = at
    out: dict[str, float] = {}
    for k, (name, key) in enumerate(PHASES):
        if key not in starts:
            continue
        nxt = next((starts[p] for _, p in PHASES[k + 1:] if p in starts), total)
        out[name] = max(0.0, nxt - starts[key])
    return out


def cpu_s() -> float:
    """CPU seconds (user + system) of every waited-for descendant so far: the whole process tree of a run
    (ranks, proxies, shells), not just its top process. Load from other work does not add to it."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def timed(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str, list[tuple[float, str]]]:
    """Run argv to its end (killed after TIMEOUT_S): seconds, stdout, and each stderr line with its arrival."""
    lines: list[tuple[float, str]] = []
    with tempfile.TemporaryFile("w+") as out:
        c0, t0 = cpu_s(), time.monotonic()
        p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=subprocess.PIPE, text=True)
        watchdog = threading.Timer(TIMEOUT_S, p.kill)
        watchdog.start()
        try:
            assert p.stderr is not None
            for line in p.stderr:
                lines.append((time.monotonic() - t0, line.rstrip("\n")))
            rc = p.wait()
        finally:
            watchdog.cancel()
        took = time.monotonic() - t0
        lines.append((cpu_s() - c0, CPU_MARK))
        out.seek(0)
        stdout = out.read()
    if rc != 0:
        err = "\n".join(line for _, line in lines[-20:])
        raise SystemExit(f"{' '.join(argv)} exited with {rc}:\n{err}\n{stdout[-2000:]}")
    return took, stdout, lines


def run_once(argv: list[str], tmp: Path, env: dict[str, str]) -> tuple[float, dict[str, float], int]:
    took, out, err = timed(argv, tmp, env)
    shutil.rmtree(tmp / "runs", ignore_errors=True)
    return took, {**phases(err, took), "CPU": err[-1][0]}, len(re.findall(r"^\S+\s+(?:primary|subtask)\s", out, re.M))


def measure(n: int, runs: int, tmp: Path, variants: dict[str, dict[str, str]],
            command: Sequence[str] = HELLO_COMMAND) -> dict[str, dict[str, object]]:
    """Per variant (name -> environment): medians of its runs, each run after a bare one (alternating, so a
    busy moment of the machine hits every variant alike)."""
    (tmp / f"n{n}.yaml").write_text(spec_text(n, command))
    mpibatch = [str(MPIBATCH), "run", f"n{n}.yaml", "--runs-dir", str(tmp / "runs")]
    bare = [str(MPICH_BIN / "mpiexec"), "-n", str(n), *command]
    # The floor no launcher of emulated nodes goes below: MPICH alone, one proxy per "host" of this machine
    # (the same addresses the nodes get), no namespaces, no mpibatch.
    hosts = [str(MPICH_BIN / "mpiexec"), "-launcher", "fork", "-hosts", ",".join(f"127.0.1.{i + 1}" for i in range(n)),
             "-n", str(n), "-ppn", "1", *command]
    bare_t: list[float] = []
    bare_cpu: list[float] = []
    hosts_t: list[float] = []
    got: dict[str, list[tuple[float, dict[str, float], int]]] = {v: [] for v in variants}
    for _ in range(runs):
        hosts_t.append(timed(hosts, tmp, next(iter(variants.values())))[0])
        for name, env in variants.items():
            took, _, lines = timed(bare, tmp, env)
            bare_t.append(took)
            bare_cpu.append(lines[-1][0])
            got[name].append(run_once(mpibatch, tmp, env))
    return {name: {"n": n, "bare": statistics.median(bare_t), "hosts": statistics.median(hosts_t),
                   "mpibatch": statistics.median(r[0] for r in rs),
                   "phases": {p: statistics.median(r[1].get(p, 0.0) for r in rs) for p in (*NAMES, "CPU")},
                   "bare_cpu": statistics.median(bare_cpu), "rows": rs[-1][2]} for name, rs in got.items()}


def export_tree(commit: str, dest: Path) -> Path:
    """`commit` of this repository as a tree mpibatch runs from with PYTHONPATH=<tree> (its launchers too)."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    (dest / "mpibatch" / "launchers").symlink_to("../launchers")
    return dest


def table(results: list[dict[str, object]]) -> list[str]:
    names = [name for name, _ in PHASES]
    lines = ["| nodes | bare mpiexec (s) | MPICH alone on N hosts (s) | mpibatch run (s) | ratio | "
             "over bare per node (ms) | " + " | ".join(f"{p} (s)" for p in names)
             + " | CPU bare (s) | CPU mpibatch (s) | summary rows | goal met |",
             "|---" * (11 + len(names)) + "|"]
    for r in results:
        n, bare, mb = int(r["n"]), float(r["bare"]), float(r["mpibatch"])  # type: ignore[call-overload,arg-type]
        hosts = float(r["hosts"])  # type: ignore[arg-type]
        ph: dict[str, float] = r["phases"]  # type: ignore[assignment]
        cells = " | ".join(f"{ph.get(p, 0.0):.2f}" for p in names)
        goal = "yes" if mb <= 1.5 * bare else "no"
        lines.append(f"| {n} | {bare:.2f} | {hosts:.2f} ({hosts / bare:.2f}x) | {mb:.2f} | {mb / bare:.2f}x | "
                     f"{1000 * (mb - bare) / n:.0f} | {cells} | "
                     f"{float(r['bare_cpu']):.2f} | {ph['CPU']:.2f} | "  # type: ignore[arg-type]
                     f"{r['rows']} | {goal if n == 64 else '-'} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nodes", default="16,32,64", help="node counts, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="alternating runs per node count (median)")
    ap.add_argument("--baseline", metavar="COMMIT", help="also measure this commit's mpibatch, run for run")
    ap.add_argument("--no-write", action="store_true", help="print the tables, do not write RESULTS.md")
    ap.add_argument("--command", default=" ".join(HELLO_COMMAND),
                    help="each rank's program (split on spaces); /bin/true leaves mpibatch's own cost "
                         "(its own RESULTS.md section)")
    args = ap.parse_args()
    command = tuple(args.command.split())
    counts = [int(x) for x in args.nodes.split(",")]
    if not (MPIBATCH.exists() and (MPICH_BIN / "mpiexec").exists()):
        raise SystemExit(f"needs {MPIBATCH} and {MPICH_BIN / 'mpiexec'} (scripts/test.sh makes them)")
    env = dict(os.environ, PATH=os.pathsep.join((str(MPICH_BIN), str(MPIBATCH.parent), os.environ.get("PATH", ""))))
    env.pop("PYTHONPATH", None)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        variants = {"this checkout": env}
        if args.baseline:
            base = export_tree(args.baseline, Path(tempfile.mkdtemp(dir=tmp)))
            variants[f"baseline {args.baseline}"] = dict(env, PYTHONPATH=str(base))
        results: dict[str, list[dict[str, object]]] = {v: [] for v in variants}
        shutil.copy(HELLO, tmp / "hello.py")
        timed([str(MPICH_BIN / "mpiexec"), "-n", "2", "python3", "hello.py"], tmp, env)  # warm the page cache
        for n in counts:
            for name, r in measure(n, args.runs, tmp, variants, command).items():
                results[name].append(r)
                print(name, table(results[name])[-1], flush=True)
    custom = command != HELLO_COMMAND
    line = "python benchmarks/rehearsal_scaling.py" + (f" --nodes {args.nodes}" if args.nodes != "16,32,64" else "")
    line += f" --runs {args.runs}" if args.runs != 3 else ""
    line += f" --baseline {args.baseline}" if args.baseline else ""
    line += f" --command '{args.command}'" if custom else ""
    program = " ".join(command) if custom else "python3 hello.py"
    body = (f"`{line}` (medians of {args.runs} alternating whole processes: `.venv/bin/mpibatch run` of N "
            f"emulated nodes x 1 rank of `{program}` vs bare `mpiexec -n N {program}`, and "
            "MPICH alone on N hosts of this machine (`mpiexec -launcher fork -hosts 127.0.1.1,... -n N -ppn 1`: one "
            "proxy per host, no namespaces, no mpibatch - the floor), PATH starting at .venvs/mpich/bin, then .venv/bin "
            "(the ranks of all three run .venvs/mpich's python3); "
            "with --baseline, that commit's mpibatch (PYTHONPATH=its `git archive`) "
            "runs in turn with this checkout's; phases from mpibatch's progress lines as they arrive; summary rows "
            "= instance rows in the human summary; CPU = user + system seconds of the whole process tree). "
            "Goal: <= 1.5x bare at 64 nodes, time linear in N. 2-core "
            f"machine shared with other work (1-minute load average {load_before:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after).\n\n"
            + "\n\n".join(f"{name}:\n\n" + "\n".join(table(rs)) for name, rs in results.items()))
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section
        write_section(f"rehearsal_scaling ({program})" if custom else "rehearsal_scaling", body)


if __name__ == "__main__":
    main()
