"""Whole-process overhead of a local run, as a user sees it: `mpibatch run examples/hello/spec.yaml`
(3 emulated nodes x 2 ranks, every phase of the Batch lifecycle) against bare
`mpiexec -n 6 python3 hello.py` on this machine, both as whole processes from the same venv, medians
of 7. Also how long the CLI takes to start (`python -X importtime`), and whether it loaded the Azure SDK.

    python benchmarks/whole_process.py                    # as this user
    python benchmarks/whole_process.py --also-user NAME   # as root: also as NAME, from its own checkout
                                                          # (scripts/test-unprivileged.sh makes it)

Goal (issue 11): mpibatch run <= 1.1 x bare + 0.3 s.
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "hello"
RUNS = 7


def _timed(argv: list[str], cwd: Path, env: dict[str, str]) -> float:
    t0 = time.monotonic()
    subprocess.run(argv, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - t0


def measure() -> dict[str, object]:
    bindir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copy(HELLO / "hello.py", tmp / "hello.py")
        mpibatch = [sys.executable, "-m", "mpibatch.cli", "run", str(HELLO / "spec.yaml"), "--runs-dir", str(tmp / "runs")]
        bare = [str(bindir / "mpiexec"), "-n", "6", "python3", "hello.py"]
        _timed(bare, tmp, env), _timed(mpibatch, tmp, env)  # warm the page cache
        runs = {"bare": [], "mpibatch": []}
        for _ in range(RUNS):
            runs["bare"].append(_timed(bare, tmp, env))
            runs["mpibatch"].append(_timed(mpibatch, tmp, env))
        imp = subprocess.run([sys.executable, "-X", "importtime", "-m", "mpibatch.cli", "run", str(HELLO / "spec.yaml"),
                              "--runs-dir", str(tmp / "runs")], cwd=tmp, env=env, capture_output=True, text=True)
    cli_us = max((int(m.group(1)) for m in re.finditer(r"\|\s+(\d+) \| mpibatch\.cli$", imp.stderr, re.M)), default=0)
    return {"user": pwd.getpwuid(os.getuid()).pw_name, "uid": os.getuid(),
            "bare": statistics.median(runs["bare"]), "mpibatch": statistics.median(runs["mpibatch"]),
            "cli_import_s": cli_us / 1e6, "azure_loaded": bool(re.search(r"\| +azure\.", imp.stderr))}


def row(m: dict[str, object]) -> str:
    bare, mb = float(m["bare"]), float(m["mpibatch"])  # type: ignore[arg-type]
    who = "root" if m["uid"] == 0 else f"unprivileged ({m['user']})"
    return (f"| {who} | {bare:.2f} | {mb:.2f} | {mb / bare:.2f}x | {mb - bare:+.2f} | "
            f"{float(m['cli_import_s']):.3f} | {'yes' if m['azure_loaded'] else 'no'} | "  # type: ignore[arg-type]
            f"{'yes' if mb <= 1.1 * bare + 0.3 else 'no'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print this user's numbers as JSON, write nothing")
    ap.add_argument("--also-user", help="as root: measure as this user too, from ~USER/mpibatch/.venv")
    args = ap.parse_args()
    results = [measure()]
    if args.json:
        print(json.dumps(results[0]))
        return
    if args.also_user:
        home = Path(pwd.getpwnam(args.also_user).pw_dir)
        out = subprocess.run(["runuser", "-u", args.also_user, "--", "env", "-i", f"HOME={home}", "LANG=C.UTF-8",
                              "PATH=/usr/local/bin:/usr/bin:/bin", str(home / "mpibatch/.venv/bin/python"),
                              str(home / "mpibatch/benchmarks/whole_process.py"), "--json"],
                             cwd=home, capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout))
    lines = ["| who | bare mpiexec (s) | mpibatch run (s) | ratio | over bare (s) | CLI import (s) | Azure SDK loaded | goal met |",
             "|---|---|---|---|---|---|---|---|", *(row(m) for m in results)]
    command = "python benchmarks/whole_process.py" + (f" --also-user {args.also_user}" if args.also_user else "")
    body = (f"`{command}` (medians of {RUNS} whole processes: "
            "`mpibatch run examples/hello/spec.yaml`, 3 emulated nodes x 2 ranks of MPICH, vs bare "
            "`mpiexec -n 6 python3 hello.py` from the same venv; goal <= 1.1x bare + 0.3 s; CLI import from "
            "`python -X importtime`). 2-core machine shared with other work.\n\n" + "\n".join(lines))
    print(body)
    sys.path.insert(0, str(Path(__file__).parent))
    from _results import write_section
    write_section("whole_process", body)


if __name__ == "__main__":
    main()
