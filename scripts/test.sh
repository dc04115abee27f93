#!/usr/bin/env bash
# Everything the tests need (openssh-server, sshfs, shellcheck, MPI runtimes, Azurite, Python deps),
# then the linters (ruff over the package, the node scripts and the tests; mypy) and every test. Runs as
# root: the tests build network namespaces and sshd hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
.venv/bin/ruff check mpibatch launchers tests
.venv/bin/mypy
exec .venv/bin/python -m pytest "$@"
