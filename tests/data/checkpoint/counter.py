"""A small MPI program that checkpoints its own way: every rank adds its rank + step each step; rank 0 writes
restart.json (step and running total, written to a temporary name then renamed) every CKPT steps and reads it
back when MPIBATCH_RESTART=1. result.txt says where this attempt started and what it computed."""
import json
import os
import sys
import time

from mpi4py import MPI

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
steps, ckpt, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
start, total = 0, 0
if os.environ.get("MPIBATCH_RESTART") == "1" and rank == 0:
    with open("restart.json") as f:
        state = json.load(f)
    start, total = state["step"], state["total"]
start, total = comm.bcast((start, total), root=0)
for step in range(start, steps):
    total += comm.allreduce(rank + step, op=MPI.SUM)
    time.sleep(delay)
    if rank == 0 and (step + 1) % ckpt == 0:
        with open("restart.json.tmp", "w") as f:
            json.dump({"step": step + 1, "total": total}, f)
        os.replace("restart.json.tmp", "restart.json")
if rank == 0:
    with open("result.txt", "w") as f:
        f.write(f"start {start} total {total} generation {os.environ.get('MPIBATCH_CHECKPOINT', '-')}\n")
    print(f"started at step {start}, total {total}")
