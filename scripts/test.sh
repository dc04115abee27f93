#!/usr/bin/env bash
# Everything the tests need (openssh-server, sshfs, shellcheck, MPI runtimes, Azurite, Python deps),
# then every test. Runs as root: the tests build network namespaces and sshd hosts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-test-deps.sh
exec .venv/bin/python -m pytest "$@"
