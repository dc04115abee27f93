"""submit_sweep: submitting a 1,000-task parameter sweep of multi-instance tasks.

mpibatch's submission path (``AzureExecutor.submit_many`` -> ``add_tasks``: addtaskcollection in chunks
of <= 100 tasks and < 1 MB, a few requests at a time) against azure-batch 15.1's own
``BatchClient.create_tasks`` on the *same* task payloads, in the same run, against mpibatch's Batch
EMULATOR (mpibatch.emulator, as tests/infra/batch_emulator.py runs it with scheduling disabled on the nodes:
an emulator, not the Batch service; tasks are stored, not run) and real Azurite storage. Each side adds the
payloads to its own fresh job; sides alternate, the table shows medians. The emulator's request hook records
every request's size and task count, so the limits are observed, not assumed.

Two payload shapes: the hello example as a sweep (one PARAM per task, ~4 KB per task), and the same
with 12 KB of parameters per task - 100 such tasks are over 1 MB, which Batch refuses
(413 RequestBodyTooLarge) and azure-batch's create_tasks only learns by sending.

    python benchmarks/submit_sweep.py [--tasks 1000] [--reps 3] [--no-write]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import write_section  # noqa: E402
from tests.infra.batch_emulator import BatchEmulator  # noqa: E402
from tests.infra.fixtures import azurite_missing, start_azurite  # noqa: E402



def sweep_specs(spec_path: Path, n: int, pad: int) -> list[Any]:
    from mpibatch.spec import load_spec

    base = load_spec(spec_path)
    extra = {"PAD": "x" * pad} if pad else {}
    return [replace(base, task=replace(base.task, id=f"sweep-{i:05d}",
                                       environment={**base.task.environment, "PARAM": str(i), **extra}))
            for i in range(n)]


def collection_stats(standin: BatchEmulator, job_id: str) -> dict[str, Any]:
    reqs = [r for r in standin.requests if r.path == f"/jobs/{job_id}/addtaskcollection"]
    ok = [r for r in reqs if r.status == 200]
    return {"requests": len(reqs), "refused": len(reqs) - len(ok),
            "max_tasks": max((r.tasks for r in reqs), default=0),
            "max_bytes": max((r.body_bytes for r in reqs), default=0),
            "over_limit": sum(1 for r in reqs if r.tasks > 100 or r.body_bytes >= 1_000_000),
            "tasks": sum(1 for k in standin.tasks if k[0] == job_id.lower())}


def _serve(conn: Any, work_dir: str) -> None:
    """The emulator in its own process (a service is not in the client's process: no shared GIL)."""
    standin = BatchEmulator(Path(work_dir), hold=True).start()
    standin.add_pool("sweep-pool", nodes=4)
    conn.send(standin.env())
    try:
        while True:
            cmd, arg = conn.recv()
            if cmd == "stats":
                conn.send(collection_stats(standin, arg))
            elif cmd == "stop":
                break
    finally:
        standin.stop()
        conn.send("stopped")


class RemoteStandIn:
    def __init__(self, work_dir: Path) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child, str(work_dir)), daemon=True)
        self.proc.start()
        if not self.conn.poll(60):
            raise SystemExit("the Batch emulator did not start")
        self.env: dict[str, str] = self.conn.recv()

    def stats(self, job_id: str) -> dict[str, Any]:
        self.conn.send(("stats", job_id))
        return self.conn.recv()

    def stop(self) -> None:
        try:
            self.conn.send(("stop", None))
            self.conn.poll(30) and self.conn.recv()
        finally:
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(10)


def run(n_tasks: int, reps: int, write: bool) -> str:
    from azure.batch import models as bm

    from mpibatch.executors.azure import AzureExecutor

    missing = azurite_missing()
    if missing:
        raise SystemExit("Azurite unavailable: " + "; ".join(missing))
    tmp = Path(tempfile.mkdtemp(prefix="mpibatch-sweep-"))
    (tmp / "azurite").mkdir()
    azurite, azurite_proc = start_azurite(tmp / "azurite")
    standin = RemoteStandIn(tmp)
    rows: list[str] = []
    notes: list[str] = []
    try:
        shutil.copytree(REPO / "examples" / "hello", tmp / "hello")
        spec_text = (tmp / "hello" / "spec.yaml").read_text().replace("  id: hello\n", "  id: sweep\n  pool: sweep-pool\n", 1)
        (tmp / "hello" / "spec.yaml").write_text(spec_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        env.update(standin.env)
        env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
        for label, pad in (("hello sweep (~4 KB/task)", 0), ("12 KB of parameters per task", 12_000)):
            specs = sweep_specs(tmp / "hello" / "spec.yaml", n_tasks, pad)
            ex = AzureExecutor(env=env)
            client = ex.client

            # 1. The whole mpibatch path once: pool check, storage, uploads, SAS, payloads, job, tasks.
            job_full = f"full-{pad}"
            specs_full = [replace(s, job=replace(s.job, id=job_full)) for s in specs]
            t0 = time.perf_counter()
            res = ex.submit_many(specs_full)
            full_s = time.perf_counter() - t0
            assert res.ok and len(res.added) == n_tasks, res.failed
            full = standin.stats(job_full)

            # 2. Same payloads, add only: mpibatch.add_tasks vs create_tasks (sequential / 4 threads).
            prepared = ex.prepare_tasks(specs)  # creates job "sweep", uploads once
            payloads = prepared.tasks
            sides: dict[str, Callable[[str], Any]] = {
                "mpibatch add_tasks (4 threads)": lambda job: ex.add_tasks(job, payloads),
                "azure-batch create_tasks": lambda job: client.create_tasks(job, payloads),
                "azure-batch create_tasks(max_concurrency=4)":
                    lambda job: client.create_tasks(job, payloads, max_concurrency=4),
            }
            times: dict[str, list[float]] = {k: [] for k in sides}
            stats: dict[str, dict[str, Any]] = {}
            names = list(sides)
            for rep in range(reps):
                order = names[rep % len(names):] + names[:rep % len(names)]  # rotate: no side always first
                for name in order:
                    fn = sides[name]
                    job = f"s{pad}-{names.index(name)}-{rep}"
                    client.create_job(bm.BatchJobCreateOptions(id=job, pool_info=bm.BatchPoolInfo(pool_id="sweep-pool")))
                    t0 = time.perf_counter()
                    fn(job)
                    times[name].append(time.perf_counter() - t0)
                    stats[name] = standin.stats(job)
                    assert stats[name]["tasks"] == n_tasks, f"{name}: {stats[name]['tasks']} tasks added"
            base = statistics.median(times["azure-batch create_tasks"])
            for name in sides:
                med = statistics.median(times[name])
                st = stats[name]
                rows.append(f"| {label} | {name} | {med:.3f} | {n_tasks / med:.0f} | {base / med:.2f} | "
                            f"{st['requests']} | {st['refused']} | {st['max_tasks']} | {st['max_bytes']:,} |")
            rows.append(f"| {label} | mpibatch submit_many, whole path once | {full_s:.3f} | {n_tasks / full_s:.0f} | "
                        f"- | {full['requests']} | {full['refused']} | {full['max_tasks']} | {full['max_bytes']:,} |")
            mp = stats["mpibatch add_tasks (4 threads)"]
            assert mp["over_limit"] == 0 and full["over_limit"] == 0 and mp["refused"] == 0, (mp, full)
            for name in ("azure-batch create_tasks", "azure-batch create_tasks(max_concurrency=4)"):
                sdk = stats[name]
                if sdk["refused"]:
                    notes.append(f"{label}: {name.removeprefix('azure-batch ')} sent {sdk['refused']} request(s) of "
                                 f"up to {sdk['max_bytes']:,} bytes that Batch refuses (413 RequestBodyTooLarge) "
                                 "before halving its chunks; mpibatch sized its chunks up front from the exact "
                                 "bytes it sends.")
            ratio = statistics.median(times["azure-batch create_tasks(max_concurrency=4)"]) / \
                statistics.median(times["mpibatch add_tasks (4 threads)"])
            notes.append(f"{label}: mpibatch add_tasks vs create_tasks(max_concurrency=4): {ratio:.2f}x "
                         "(1.00 = same speed).")
    finally:
        standin.stop()
        azurite_proc.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    header = ("| payload | submission path | median s | tasks/s | speed vs create_tasks | requests | refused "
              "(413) | max tasks/request | max request bytes |\n|---|---|---:|---:|---:|---:|---:|---:|---:|")
    body = (f"`python benchmarks/submit_sweep.py --tasks {n_tasks} --reps {reps}` ({os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d')}). {n_tasks} multi-instance tasks (the hello example, 3 instances, "
            "swept over one parameter) added to a fresh job by each side, against the Batch emulator of the "
            "tests (an emulator, not the Batch service, in its own process: requests are parsed and stored, "
            "tasks not run) over http with Shared Key; storage is Azurite. Same payloads for every side; sides alternate, in rotating order; medians of "
            f"{reps}. \"speed vs create_tasks\" = create_tasks' median time / this side's (higher is faster). "
            "The whole-path row also includes the pool check, storage check, uploads, SAS URLs and payload "
            "building, once.\nGoal: mpibatch at least as fast as create_tasks; no request over 100 tasks or 1 MB."
            "\n\n" + header + "\n" + "\n".join(rows))
    if notes:
        body += "\n\n" + "\n".join(f"- {n}" for n in notes)
    body += ("\n\nAgainst a local emulator the round trip is ~1 ms, so these numbers measure client-side cost and "
             "request count; against the real service each request costs tens of milliseconds and the concurrency "
             "and the absence of refused requests matter more. On this 2-core machine (client, emulator and Azurite "
             "share it) single runs scatter by +-20%: for the ~4 KB payloads, mpibatch and the threaded create_tasks "
             "are level within that noise (0.75x-1.2x across runs of 3-9 reps); mpibatch does not beat azure-batch "
             "there, it equals it with no tuning, and it beats it when chunks must be cut by size.")
    if write:
        write_section("submit_sweep", body)
    return body


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md alone")
    args = ap.parse_args()
    print(run(args.tasks, args.reps, not args.no_write))


if __name__ == "__main__":
    main()
