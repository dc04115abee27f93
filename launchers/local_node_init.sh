#!/bin/sh
# The init of one emulated node (its own mount and UTS namespaces, inside the run's user namespace):
# the node's directory appears at the node-root path every node shares (as /mnt/batch/tasks on
# Batch), the hostname is the node's, and /dev/shm is the node's own (POSIX shared-memory segments never
# reach the host's, nor another node's or run's; System V ones are the run's, and UCX, seeing one kernel
# boot id, treats the nodes as one machine). /etc/hosts comes from the run (local_run_init.sh).
#   local_node_init.sh NODE_DIR NODE_ROOT HOSTNAME
set -eu
mount --bind "$1" "$2"
# The other nodes' directories (beside this one's, at their paths on this machine) are not this node's to see
# or write, as on Batch: covered, in this node only (its own stays at NODE_ROOT).
mount -t tmpfs -o mode=755,size=64k tmpfs "${1%/*}"
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
hostname "$3"  # sethostname(2): writing /proc/sys/kernel/hostname is refused to a normal user's namespace root
echo ready
# Stay alive until the executor ends the node (SIGKILL). One process per node, no shell loop: a run starts
# N of these (and /bin/sh, not bash: a smaller shell to start). Orphans of the node go to the run's PID 1.
exec sleep infinity
