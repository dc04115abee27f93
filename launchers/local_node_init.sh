#!/bin/bash
# The init of one emulated node (its own mount and UTS namespaces): the node's directory appears
# at the node-root path every node shares (as /mnt/batch/tasks on Batch), /etc/hosts lists the
# nodes, the hostname is the node's.
#   local_node_init.sh NODE_DIR NODE_ROOT HOSTS_FILE HOSTNAME
set -euo pipefail
mount --bind "$1" "$2"
mount --bind "$3" /etc/hosts
hostname "$4"
echo ready
# Stay alive (and reap orphans) until the executor ends the node.
exec bash -c 'trap "exit 0" TERM; while :; do sleep 3600 & wait $!; done'
