"""Whole-process overhead of a local run, as a user sees it: the `mpibatch` console script running
`mpibatch run examples/hello/spec.yaml` (3 emulated nodes x 2 ranks, every phase of the Batch lifecycle)
against bare `mpiexec -n 6 python3 hello.py`, both whole processes from the same venv, medians of 9 runs
taken alternately. Where mpibatch's extra time goes, per phase, from the moment each progress line
arrives (stderr) and the result line (stdout, unbuffered):

    interpreter  `python -c pass` of the venv (the console script pays it, as bare mpiexec's ranks do)
    import       until `mpibatch.cli` is imported (a probe run: the console script's code plus a mark)
    spec         from there until "starting: 3 nodes": click, the spec, the executor's checks
    node start   until "coordination: 0/3" (namespaces, node directories, common files)
    coordination until "running: application"
    app          until "collecting:" (mpiexec and the ranks: what bare runs)
    collection   until the result line
    exit         until the process has ended (nodes torn down, interpreter exit)

    python benchmarks/whole_process.py                      # as this user
    python benchmarks/whole_process.py --also-user NAME     # as root: also as NAME, from ~NAME/mpibatch
                                                            # (its own checkout and .venv: scripts/hello.sh)

Goal (issue 22 item 10): mpibatch run <= bare + 0.3 s.
"""
from __future__ import annotations

import argparse
import json
import os
import pwd
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "hello"
RUNS = 9
PHASES = ("interpreter", "import", "spec", "node start", "coordination", "app", "collection", "exit")
# (phase that ends when this line arrives, the line's start): the progress lines of the lifecycle
MARKS = (("start-up", "starting:"), ("node start", "coordination: 0/"), ("coordination", "running:"),
         ("app", "collecting:"), ("collection", "task "))


def _run(argv: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, list[tuple[float, str]]]:
    """Wall time of one whole process, and each output line with the time it arrived."""
    lines: list[tuple[float, str]] = []
    t0 = time.monotonic()
    p = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def read(stream: object) -> None:
        for line in stream:  # type: ignore[attr-defined]
            lines.append((time.monotonic() - t0, line))

    readers = [threading.Thread(target=read, args=(s,), daemon=True) for s in (p.stdout, p.stderr)]
    for r in readers:
        r.start()
    try:
        rc = p.wait(timeout=120)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=10)
    elapsed = time.monotonic() - t0
    for r in readers:
        r.join(timeout=10)
    if rc != 0:
        raise RuntimeError(f"{argv[0]} exited {rc}:\n" + "".join(line for _, line in lines))
    return elapsed, lines


def _phases(elapsed: float, lines: list[tuple[float, str]]) -> dict[str, float]:
    """Seconds per lifecycle phase of one mpibatch run, from its output lines."""
    ends = {}
    for phase, start in MARKS:
        t = next((t for t, line in lines if re.sub(r"^\[\s*[\d.]+s\] ", "", line).startswith(start)), None)
        if t is None:
            raise RuntimeError(f"no line starting {start!r} in:\n" + "".join(line for _, line in lines))
        ends[phase] = t
    out, prev = {}, 0.0
    for phase, _ in MARKS:
        out[phase], prev = ends[phase] - prev, ends[phase]
    out["exit"] = elapsed - prev
    return out


# What the console script does, plus one line on stderr once `mpibatch.cli` is imported: splits start-up.
PROBE = ("import sys; from mpibatch.cli import main; sys.stderr.write('mark: imported\\n'); "
         "sys.argv[0] = 'mpibatch'; sys.exit(main())")


def _startup(python: str, args: list[str], cwd: Path, env: dict[str, str], runs: int) -> dict[str, float]:
    """Start-up split by a probe run (the console script's two lines, and a mark after the import):
    the interpreter (`python -c pass`), the import, then the spec and set-up until "starting:"."""
    interp = statistics.median(_run([python, "-c", "pass"], cwd, env)[0] for _ in range(runs))
    imported, started = [], []
    for _ in range(runs):
        _, lines = _run([python, "-c", PROBE, *args], cwd, env)
        imported.append(next(t for t, line in lines if line.startswith("mark: imported")))
        started.append(next(t for t, line in lines if re.sub(r"^\[\s*[\d.]+s\] ", "", line).startswith("starting:")))
    return {"interpreter": interp, "import": max(0.0, statistics.median(imported) - interp),
            "spec": statistics.median(s - i for s, i in zip(started, imported))}


def measure(runs: int = RUNS, baseline: Path | None = None) -> dict[str, object]:
    """Medians of bare mpiexec and of `mpibatch run`, alternated (with `baseline`, a venv's bin directory
    holding another mpibatch, that one too, in the same rounds: a before/after under the same load)."""
    bindir = Path(sys.executable).parent
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    run_env = dict(env, PYTHONUNBUFFERED="1")  # the result line arrives when it is printed, not at exit
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copy(HELLO / "hello.py", tmp / "hello.py")
        mpibatch = [str(bindir / "mpibatch"), "run", str(HELLO / "spec.yaml"), "--runs-dir", str(tmp / "runs")]
        bare = [str(bindir / "mpiexec"), "-n", "6", "python3", "hello.py"]
        other = None if baseline is None else [str(baseline / "mpibatch"), *mpibatch[1:]]
        _run(bare, tmp, env), _run(mpibatch, tmp, run_env)  # warm the page cache
        bare_s, mb_s, phases, base_s, base_phases = [], [], [], [], []
        for _ in range(runs):  # alternate, so load from other work hits both alike
            bare_s.append(_run(bare, tmp, env)[0])
            elapsed, lines = _run(mpibatch, tmp, run_env)
            mb_s.append(elapsed)
            phases.append(_phases(elapsed, lines))
            if other is not None:
                elapsed, lines = _run(other, tmp, run_env)
                base_s.append(elapsed)
                base_phases.append(_phases(elapsed, lines))
        start = _startup(sys.executable, mpibatch[1:], tmp, run_env, runs)
        base_start = _startup(str(baseline / "python"), mpibatch[1:], tmp, run_env, runs) if baseline else {}
        probe = subprocess.run([sys.executable, "-X", "importtime", str(bindir / "mpibatch"), "run",
                                str(HELLO / "spec.yaml"), "--runs-dir", str(tmp / "runs")], cwd=tmp, env=env,
                               capture_output=True, text=True)
    out: dict[str, object] = {
        "user": pwd.getpwuid(os.getuid()).pw_name, "uid": os.getuid(), "runs": runs,
        "bare": statistics.median(bare_s), "mpibatch": statistics.median(mb_s),
        "phases": _split_startup(phases, start), "azure_loaded": bool(re.search(r"\| +azure\.", probe.stderr))}
    if base_s:
        out["baseline"] = {"mpibatch": statistics.median(base_s),
                           "phases": _split_startup(base_phases, base_start)}
    return out


def _split_startup(phases: list[dict[str, float]], start: dict[str, float]) -> dict[str, float]:
    """Median per phase; the start-up of the runs themselves replaced by the probe's split of it."""
    per = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
    per.pop("start-up")
    return {**start, **per}


def rows(m: dict[str, object]) -> tuple[str, str]:
    bare, mb = float(m["bare"]), float(m["mpibatch"])  # type: ignore[arg-type]
    who = ("root" if m["uid"] == 0 else "normal user") + f" ({m['user']})"
    total = (f"| {who} | {bare:.2f} | {mb:.2f} | {mb - bare:+.2f} | {'yes' if mb <= bare + 0.3 else 'no'} | "
             f"{'yes' if m['azure_loaded'] else 'no'} |")
    ph: dict[str, float] = m["phases"]  # type: ignore[assignment]
    phases = f"| {who} | " + " | ".join(f"{ph[p]:.3f}" for p in PHASES) + f" | {sum(ph.values()):.2f} |"
    return total, phases


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print this user's numbers as JSON, write nothing")
    ap.add_argument("--runs", type=int, default=RUNS, help=f"runs of each (default {RUNS})")
    ap.add_argument("--also-user", help="as root: measure as this user too, from ~USER/mpibatch/.venv")
    ap.add_argument("--user-dir", default="mpibatch", help="the user's checkout, relative to its home (default "
                    "mpibatch; scripts/hello.sh there makes its .venv)")
    ap.add_argument("--user-baseline", help="the user's other checkout (relative to its home) to measure as the "
                    "baseline in the same rounds")
    ap.add_argument("--no-write", action="store_true", help="print the tables, leave RESULTS.md alone")
    ap.add_argument("--baseline", type=Path, help="a venv bin directory with another mpibatch, measured in the same "
                    "rounds (before/after)")
    args = ap.parse_args()
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        print("whole_process: PYTHONDONTWRITEBYTECODE is set: every run compiles mpibatch's modules from source, "
              "which a user's runs do not (unset it to measure what they feel)", file=sys.stderr)
    results: list[dict[str, object]] = [measure(args.runs, args.baseline)]
    if args.json:
        print(json.dumps(results[0]))
        return
    if args.also_user:
        home = Path(pwd.getpwnam(args.also_user).pw_dir)
        checkout = home / args.user_dir
        extra = ["--baseline", str(home / args.user_baseline / ".venv/bin")] if args.user_baseline else []
        out = subprocess.run(["runuser", "-u", args.also_user, "--", "env", "-i", f"HOME={home}", "LANG=C.UTF-8",
                              "PATH=/usr/local/bin:/usr/bin:/bin", str(checkout / ".venv/bin/python"),
                              str(checkout / "benchmarks/whole_process.py"), "--json", "--runs", str(args.runs),
                              *extra], cwd=home, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout))
    for m in list(results):
        if "baseline" in m:  # shown as its own rows, named after the run it was measured with
            b: dict[str, object] = dict(m["baseline"])  # type: ignore[arg-type]
            results.append({**m, **b, "user": f"{m['user']}, baseline", "azure_loaded": False})
    table = [rows(m) for m in results]
    totals = ["| who | bare mpiexec (s) | mpibatch run (s) | over bare (s) | goal bare + 0.3 s met | "
              "Azure SDK loaded |", "|---|---|---|---|---|---|", *(t for t, _ in table)]
    phases = ["| who | " + " | ".join(PHASES) + " | sum |", "|---" * (len(PHASES) + 2) + "|", *(p for _, p in table)]
    command = " ".join(["python benchmarks/whole_process.py", *sys.argv[1:]])
    body = (f"`{command}`: medians of {args.runs} whole processes taken alternately - the `mpibatch` console "
            "script running `mpibatch run examples/hello/spec.yaml` (3 emulated nodes x 2 ranks of MPICH) vs bare "
            "`mpiexec -n 6 python3 hello.py` from the same venv; goal <= bare + 0.3 s. 2-core machine shared "
            "with other work.\n\n" + "\n".join(totals) + "\n\nWhere mpibatch's time goes (seconds, medians per "
            "phase; `app` is what bare runs; see the script's docstring for where each phase ends):\n\n"
            + "\n".join(phases))
    print(body)
    if not args.no_write:
        sys.path.insert(0, str(Path(__file__).parent))
        from _results import write_section
        write_section("whole_process", body)


if __name__ == "__main__":
    main()
