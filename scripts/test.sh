#!/usr/bin/env bash
# Everything the tests need (openssh-server, sshfs, shellcheck, MPI runtimes, Azurite, Python deps),
# then the linters (ruff, mypy) over the package and every test. Runs as root: the tests build network
# namespaces and sshd hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
.venv/bin/ruff check mpibatch launchers
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
