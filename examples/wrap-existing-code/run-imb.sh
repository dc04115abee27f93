#!/bin/bash
# Wrap a binary nobody here wrote, unchanged: find it on the node, give it the libraries it links
# against, and pass every argument through. IMB-MPI1 ships with Intel MPI (impi-rt, HPC images).
set -euo pipefail
bin=$(command -v IMB-MPI1) || { echo "IMB-MPI1 is not installed on $(hostname)" >&2; exit 127; }
prefix=$(dirname "$(dirname "$bin")")
export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$bin" "$@"
