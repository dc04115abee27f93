#!/bin/bash
# Wrapper for an existing MPI binary: find it, give it the libraries it needs, run it unchanged.
#   run-imb.sh [IMB-MPI1 arguments...]
# Every rank runs this script (mpirun starts it on every node), so it sets up the environment of
# each rank itself - no need for the environment to be the same on every node beforehand.
set -euo pipefail
imb=$(command -v IMB-MPI1) || {
    echo "run-imb.sh: IMB-MPI1 not found on $(hostname) (PATH=$PATH): install Intel MPI on the node" >&2
    exit 127
}
# Intel MPI's binaries need its lib directory: <prefix>/bin/IMB-MPI1 -> <prefix>/lib (pip's impi-rt
# layout) or $I_MPI_ROOT/lib (oneAPI layout, e.g. the Azure HPC images).
prefix=${I_MPI_ROOT:-$(dirname "$(dirname "$(readlink -f "$imb")")")}
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$imb" "$@"
