#!/usr/bin/env bash
# The main job, on a fresh Debian machine: install mpibatch with an MPI runtime (MPICH) into .venv
# and run examples/hello as a real multi-instance task: 3 emulated nodes x 2 MPI ranks.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
if ! python3 -c 'import ensurepip, venv' 2> /dev/null; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq python3-venv
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q -e '.[mpich]'
# The local executor emulates Batch nodes with Linux namespaces: it runs as root.
$SUDO .venv/bin/mpibatch run examples/hello/spec.yaml "$@"
