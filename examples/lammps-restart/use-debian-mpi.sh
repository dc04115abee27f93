# shellcheck shell=bash
# Sourced by mpibatch's coordination step on every node (task.mpi.setup: {source: use-debian-mpi.sh}):
# Debian's lammps package is linked with Debian's Open MPI (mpi-default-bin), so its mpirun and orted,
# in /usr/bin, must come before any other MPI runtime on PATH (a venv's, a module's).
export PATH="/usr/bin:/bin:$PATH"
# Open MPI 4.1 makes its session directory's top level (ompi.<host>.<uid>) when mpirun starts, and fails
# with "mkdir ... File exists" when another mpirun makes it at the same moment: the program's mpirun and
# the one that starts mpibatch's checkpoint tracker start together on the primary. Made here, beforehand.
mkdir -p "${TMPDIR:-/tmp}/ompi.$(hostname).$(id -u)"
