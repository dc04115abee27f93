#!/usr/bin/env bash
# The main job, as a normal user on a fresh Debian machine with python3 and python3-venv: install
# mpibatch with an MPI runtime (MPICH) into .venv and run examples/hello as a real multi-instance
# task: 3 emulated nodes x 2 MPI ranks, in user namespaces (no root, no sudo).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import ensurepip, venv' 2> /dev/null; then
  echo "hello.sh: python3 cannot make virtual environments; as root: apt-get install python3-venv" >&2
  exit 2
fi
# A warm rerun installs nothing: the marker holds what was installed (the pattern of install-test-deps.sh).
marker=.venv/.mpibatch-hello-installed
stamp="-e .[mpich] pyproject=$(sha256sum pyproject.toml | cut -d' ' -f1)"
if ! { [ -x .venv/bin/mpibatch ] && [ -f "$marker" ] && [ "$(cat "$marker")" = "$stamp" ] \
       && .venv/bin/python -c 'import mpibatch' 2> /dev/null; }; then
  # Say why the first run is quiet for a while (pip -q): what is installed, and that it happens once.
  echo "hello.sh: installing mpibatch and its MPI runtime (MPICH, mpi4py) from PyPI into .venv -" \
       "once, about 30 s; later runs start at once" >&2
  .venv/bin/python -c '' 2> /dev/null || { rm -rf .venv; python3 -m venv .venv; }
  rm -f "$marker"
  .venv/bin/python -m pip install -q -e '.[mpich]'
  echo "hello.sh: installed; running examples/hello (3 emulated nodes x 2 ranks)" >&2
  printf '%s' "$stamp" > "$marker"
fi
exec .venv/bin/mpibatch run examples/hello/spec.yaml "$@"
