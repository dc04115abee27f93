#!/bin/bash
# mpibatch's remote-shell agent for the local executor: called like ssh by MPI launchers
# (`local_rsh.sh [ssh options] HOST COMMAND...`), it runs COMMAND in emulated node HOST's
# namespaces, with a login-like environment (no Batch task variables, as over ssh on Batch).
set -euo pipefail
while [ $# -gt 0 ]; do
  case "$1" in
    -[bcDEeFIiJLlmOoPpQRSWw]) shift 2 ;;  # ssh options that take a value
    -*) shift ;;
    *) break ;;
  esac
done
host=${1:?usage: local_rsh.sh [options] HOST COMMAND}
shift
# Builtins only before the exec (MPI launchers start this once per node: no cat, no env).
nodes=${MPIBATCH_LOCAL_NODES:?the local executor sets it}
pid=""
{ read -r pid < "$nodes/$host"; } 2> /dev/null || true
[ -n "$pid" ] || { echo "mpibatch local: no emulated node has address $host" >&2; exit 255; }
for name in "${!AZ_BATCH_@}" CCP_NODES; do unset "$name"; done
# Already inside the run's user and PID namespaces (as root there): enter only the
# node's mount and UTS namespaces. A caller that is not root (a non-admin task of `mpibatch
# emulate`) owns the node's user namespace instead: it enters that too, and stays itself there.
if [ "$EUID" -ne 0 ]; then
  exec nsenter -t "$pid" -U --preserve-credentials -m -u -- /bin/sh -c "$*"
fi
exec nsenter -t "$pid" -m -u -- /bin/sh -c "$*"
