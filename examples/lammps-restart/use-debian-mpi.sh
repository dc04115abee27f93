# shellcheck shell=bash
# Sourced by mpibatch's coordination step on every node (task.mpi.setup: {source: use-debian-mpi.sh}):
# Debian's lammps package is linked with Debian's Open MPI (mpi-default-bin), so its mpirun and orted,
# in /usr/bin, must come before any other MPI runtime on PATH (a venv's, a module's).
export PATH="/usr/bin:/bin:$PATH"
