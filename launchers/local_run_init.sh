#!/bin/bash
# PID 1 of one local run: started by `unshare --user --map-root-user --pid --mount ...`, so the run
# has its own user, PID and mount namespaces (no root needed); every node of the run lives under it.
#   local_run_init.sh HOSTS_FILE
set -euo pipefail
# /etc/hosts lists the run's nodes: bound once here, every node's mount namespace starts as a copy of this one.
mount --bind "$1" /etc/hosts
echo ready
# Stay alive (and reap orphans) until the executor, or the death of its controller, ends the run.
exec bash -c 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done'
