"""A small MPI program that checkpoints its own way: every rank adds its rank + step each step.

    counter.py STEPS CKPT DELAY [FAIL_AT [MODE]]

MODE primary (default): rank 0 writes restart.json (step and running total; written to a temporary name, then
renamed) every CKPT steps and reads it back when MPIBATCH_RESTART=1. MODE ranks: every rank writes its own
restart-<rank>.json on its node (task.checkpoint from: all) and reads its own back; the ranks must agree on the
step. FAIL_AT (>= 0) makes a run that did not restart fail at that step (a crash that Batch retries).
result.txt says where this attempt started and what it computed."""
import json
import os
import sys
import time

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
steps, ckpt, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
fail_at = int(sys.argv[4]) if len(sys.argv) > 4 else -1
per_rank = len(sys.argv) > 5 and sys.argv[5] == "ranks"
restarted = os.environ.get("MPIBATCH_RESTART") == "1"
mine = f"restart-{rank}.json" if per_rank else "restart.json"
writer = per_rank or rank == 0


def save(step: int, value: int) -> None:
    with open(mine + ".tmp", "w") as f:
        json.dump({"step": step, "value": value}, f)
    os.replace(mine + ".tmp", mine)


start, value = 0, 0  # value: the running total (primary mode) or this rank's own part of it (ranks mode)
if restarted and writer:
    with open(mine) as f:
        state = json.load(f)
    start, value = state["step"], state["value"]
if per_rank:
    if comm.allreduce(start, op=MPI.MIN) != comm.allreduce(start, op=MPI.MAX):
        print(f"rank {rank}: the ranks restored different steps", flush=True)
        comm.Abort(8)
else:
    start, value = comm.bcast((start, value), root=0)
for step in range(start, steps):
    if step == fail_at and not restarted:
        print(f"failing at step {step}", flush=True)
        comm.Abort(7)
    value += rank + step if per_rank else comm.allreduce(rank + step, op=MPI.SUM)
    comm.Barrier()
    time.sleep(delay)
    if writer and (step + 1) % ckpt == 0:
        save(step + 1, value)
total = comm.allreduce(value, op=MPI.SUM) if per_rank else value
if rank == 0:
    with open("result.txt", "w") as f:
        f.write(f"start {start} total {total} generation {os.environ.get('MPIBATCH_CHECKPOINT', '-')}\n")
    print(f"started at step {start}, total {total}")
