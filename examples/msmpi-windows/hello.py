"""Each rank reports its host, its Batch node and its rank; rank 0 checks a collective."""
from mpi4py import MPI

comm = MPI.COMM_WORLD
try:  # written by mpibatch's coordination step in each node's working directory
    with open(".mpibatch-node") as f:
        node_id = f.read().strip().partition("=")[2]
except OSError:
    node_id = "?"
line = f"rank {comm.rank}/{comm.size} host {MPI.Get_processor_name()} node {node_id}"
lines = comm.gather(line, root=0)
total = comm.allreduce(comm.rank)
if comm.rank == 0:
    print("\n".join(lines))
    print(f"sum of ranks = {total} (expected {comm.size * (comm.size - 1) // 2})")
    with open("hello-summary.txt", "w") as f:
        f.write("\n".join(lines) + "\n")
with open(f"rank-{comm.rank}.txt", "w") as f:
    f.write(line + "\n")
