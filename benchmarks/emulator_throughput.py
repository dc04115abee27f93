"""emulator_throughput: how many short ordinary tasks `mpibatch emulate` adds, schedules and completes per
second, and what the emulator itself costs (CPU seconds, peak memory) while doing it.

A real `mpibatch emulate --pool bench:4:4` subprocess (4 nodes x 4 task slots, no storage), driven by the
azure-batch 15.1 SDK from this process: one job, N tasks of `/bin/true` added with `create_tasks` (chunks
of 100), then polled with `get_job_task_counts` until all completed. Rates come from the emulator's own
task timestamps (executionInfo startTime / endTime):
- added/s: N / the client's wall time of create_tasks;
- scheduled/s: N / (last task start - first task start);
- completed/s: N / (last task end - the moment the first task was added).
Emulator CPU is its process's user+system time (tasks are children, not counted; /proc/PID/stat), peak
memory its VmHWM (/proc/PID/status). Goal on this 2-core machine: >= 50 completed/s, < 200 MB.

    python benchmarks/emulator_throughput.py [--tasks 1000] [--reps 3] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import write_section  # noqa: E402
from tests.infra.emulator import EmulatorProcess  # noqa: E402

TIMEOUT_S = 600


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def one_run(n: int) -> dict[str, float]:
    from azure.batch import BatchClient, models as m
    from azure.core.credentials import AzureNamedKeyCredential

    with tempfile.TemporaryDirectory(prefix="emu-bench-") as tmp:
        emu = EmulatorProcess(Path(tmp) / "state", storage="none", pools=("bench:4:4",)).start()
        try:
            assert emu.proc is not None
            pid = emu.proc.pid
            client = BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, emu.key))
            deadline = time.monotonic() + 60
            while sum(1 for x in client.list_nodes("bench") if x.state == "idle") < 4:
                if time.monotonic() > deadline:
                    raise SystemExit("the pool's nodes did not become idle")
                time.sleep(0.1)
            client.create_job(m.BatchJobCreateOptions(id="bench", pool_info=m.BatchPoolInfo(pool_id="bench")))
            cpu0 = cpu_seconds(pid)
            t_add0 = time.time()
            client.create_tasks("bench", [m.BatchTaskCreateOptions(id=f"t{i:05d}", command_line="/bin/true")
                                          for i in range(n)])
            t_add1 = time.time()
            deadline = time.monotonic() + TIMEOUT_S
            while client.get_job_task_counts("bench").task_counts.completed < n:
                if time.monotonic() > deadline:
                    raise SystemExit("the tasks did not complete in time")
                time.sleep(0.2)
            cpu1 = cpu_seconds(pid)
            tasks = list(client.list_tasks("bench", select=["id", "executionInfo"]))
            starts = sorted(ts(t.execution_info.start_time.isoformat()) for t in tasks)
            ends = sorted(ts(t.execution_info.end_time.isoformat()) for t in tasks)
            bad = sum(1 for t in tasks if t.execution_info.exit_code != 0)
            return {"added": n / (t_add1 - t_add0), "scheduled": n / max(1e-3, starts[-1] - starts[0]),
                    "completed": n / max(1e-3, ends[-1] - t_add0), "cpu_s": cpu1 - cpu0, "peak_mb": peak_mb(pid),
                    "failed": bad}
        finally:
            emu.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    runs = [one_run(args.tasks) for _ in range(args.reps)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    rows = "\n".join(f"| {i + 1} | {r['added']:.0f} | {r['scheduled']:.0f} | {r['completed']:.0f} | "
                     f"{r['cpu_s']:.1f} | {r['peak_mb']:.0f} | {r['failed']:.0f} |" for i, r in enumerate(runs))
    body = (f"`python benchmarks/emulator_throughput.py --tasks {args.tasks} --reps {args.reps}`: a real "
            f"`mpibatch emulate --pool bench:4:4` (4 nodes x 4 slots), {args.tasks} tasks of `/bin/true` added "
            "by azure-batch 15.1 `create_tasks`, on this 2-core machine (client and emulator share it).\n\n"
            "| run | added/s | scheduled/s | completed/s | emulator CPU s | emulator peak MB | failed tasks |\n"
            "|---|---|---|---|---|---|---|\n" + rows +
            f"\n| median | {med['added']:.0f} | {med['scheduled']:.0f} | {med['completed']:.0f} | {med['cpu_s']:.1f} "
            f"| {med['peak_mb']:.0f} | {med['failed']:.0f} |\n\n"
            f"Goal: >= 50 completed tasks/s and < 200 MB: "
            f"{'met' if med['completed'] >= 50 and med['peak_mb'] < 200 else 'NOT met'} "
            f"(median {med['completed']:.0f}/s, {med['peak_mb']:.0f} MB). Completed/s counts from the first task "
            "added to the last one ended, so it includes adding; scheduled/s from the first start to the last.")
    print(body)
    if not args.no_write:
        write_section("emulator_throughput", body)


if __name__ == "__main__":
    main()
