#!/usr/bin/env bash
# Everything the tests need (openssh-server, sshfs, shellcheck, MPI runtimes, Azurite, Python deps),
# then the linters (ruff over the package, the node scripts and the tests; mypy) and every test. Runs as
# root: the tests build network namespaces and sshd hosts.
# The tests run on MPIBATCH_TEST_WORKERS pytest-xdist workers (default 3: most tests wait on subprocesses,
# so three keep two cores busy); tests/infra/parallel.py says what may run side by side. A `-n 0` among the
# arguments runs them in this one process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
.venv/bin/ruff check mpibatch launchers tests
.venv/bin/mypy
exec .venv/bin/python -m pytest -n "${MPIBATCH_TEST_WORKERS:-3}" --dist loadgroup "$@"
