"""Each rank reads the case from the shared directory (unpacked once, by the primary), works on its
share, and writes its result into its own node's working directory; rank 0 gathers a summary."""
import hashlib
import os
from pathlib import Path

from mpi4py import MPI

comm = MPI.COMM_WORLD
case = Path(os.environ["AZ_BATCH_TASK_SHARED_DIR"]) / "motorbike"
files = sorted(p for p in case.rglob("*") if p.is_file())
digest = hashlib.sha256(b"".join(p.read_bytes() for p in files)).hexdigest()[:16]
host = MPI.Get_processor_name()
Path(f"result-{comm.rank}.txt").write_text(f"rank {comm.rank} on {host} read {len(files)} files, sha256 {digest}\n")
lines = comm.gather(f"rank {comm.rank} on {host}: {len(files)} case files, sha256 {digest}", root=0)
if comm.rank == 0:
    Path("summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print("same case everywhere:", len({line.rsplit(" ", 1)[1] for line in lines}) == 1)
