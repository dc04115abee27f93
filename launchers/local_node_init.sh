#!/bin/sh
# The init of one emulated node (its own mount and UTS namespaces, inside the run's user namespace):
# the node's directory appears at the node-root path every node shares (as /mnt/batch/tasks on
# Batch), /etc/hosts lists the nodes, the hostname is the node's, and /dev/shm is the node's own
# (MPI shared-memory segments never reach the host's, nor another node's or run's).
#   local_node_init.sh NODE_DIR NODE_ROOT HOSTS_FILE HOSTNAME
set -eu
mount --bind "$1" "$2"
mount --bind "$3" /etc/hosts
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
hostname "$4"  # sethostname(2): writing /proc/sys/kernel/hostname is refused to a normal user's namespace root
echo ready
# Stay alive until the executor ends the node (SIGKILL). One process per node, no shell loop: a run starts
# N of these (and /bin/sh, not bash: a smaller shell to start). Orphans of the node go to the run's PID 1.
exec sleep infinity
