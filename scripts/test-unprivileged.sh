#!/usr/bin/env bash
# The local-executor tests as a normal user, so that the rootless local executor cannot regress.
# Run as root (CI runs it after scripts/test.sh): makes the user, gives it its own copy of this
# checkout with its own venvs (root's Python may live where other users cannot run it), then runs
# the tests as that user with CI=1 (a test that cannot run fails, never skips). Extra arguments go
# to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
user=${MPIBATCH_TEST_USER:-mpibatch-ci}
[ "$(id -u)" -eq 0 ] || { echo "test-unprivileged: run as root (it creates the user $user)" >&2; exit 2; }
id -u "$user" > /dev/null 2>&1 || useradd --create-home --shell /bin/bash "$user"
home=$(getent passwd "$user" | cut -d: -f6)
copy="$home/mpibatch"
# Tracked and new files of this checkout, without venvs or caches (rebuilt as the user when changed).
mkdir -p "$copy"
git ls-files -co --exclude-standard -z | tar --null -T - -c | tar -x -C "$copy" --no-same-owner
chown -R "$user:" "$copy"
# A normal user's environment: the system Python, no root paths; pip's settings (mirrors) pass through.
envs=(HOME="$home" USER="$user" LOGNAME="$user" LANG=C.UTF-8 CI=1 PATH=/usr/local/bin:/usr/bin:/bin
  MPIBATCH_TEST_WORKERS="${MPIBATCH_TEST_WORKERS:-3}")
while IFS='=' read -r name value; do
  case "$name" in PIP_*) envs+=("$name=$value") ;; esac
done < <(env)
# shellcheck disable=SC2016 # the inner script expands as the user
exec runuser -u "$user" -- env -i "${envs[@]}" bash -c '
  set -euo pipefail
  cd "$HOME/mpibatch"
  [ "$(id -u)" -ne 0 ]
  bash scripts/install-test-deps.sh --venvs-only
  # (the kept-directories test fills a tiny tmpfs, which only root can mount: it runs in the root run)
  exec .venv/bin/python -m pytest -p no:cacheprovider -n "${MPIBATCH_TEST_WORKERS:-3}" --dist loadgroup \
    tests/test_local_executor.py tests/test_local_rootless.py \
    tests/faults/test_local_faults.py tests/faults/test_local_edges.py \
    --deselect tests/faults/test_local_edges.py::test_item2_files_kept_after_a_failed_collection_survive_the_next_run \
    "$@"' bash "$@"
