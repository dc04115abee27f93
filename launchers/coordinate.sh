#!/bin/bash
# mpibatch coordination step: runs on every instance (primary and subtasks) before the application.
# It only does what can be known on the node; mpibatch rendered everything else.
#   --rank-dir DIR      where ranks start: made a symlink to this node's working directory
#   --shared-dir MODE   none | sshfs | nfs: share the primary's task shared dir with every node
#   --link NAME         a common file (in the task shared dir) to link into the working directory
# Environment: the Batch variables (docs/batch-semantics.md#environment); MPIBATCH_RSH (remote shell, default ssh) and
# MPIBATCH_PEER_CHECK=0 (skip the reachability check) for rehearsal executors.
set -euo pipefail

rank_dir="" shared_mode="none" links=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rank-dir) rank_dir=$2; shift 2 ;;
    --shared-dir) shared_mode=$2; shift 2 ;;
    --link) links+=("$2"); shift 2 ;;
    *) echo "mpibatch coordinate: unknown argument $1" >&2; exit 2 ;;
  esac
done
: "${AZ_BATCH_TASK_WORKING_DIR:?not a Batch task}" "${AZ_BATCH_TASK_SHARED_DIR:?}" "${AZ_BATCH_HOST_LIST:?}"
node="${AZ_BATCH_NODE_ID:-?}"
master_ip="${AZ_BATCH_MASTER_NODE%:*}"
is_master="${AZ_BATCH_IS_CURRENT_NODE_MASTER:-false}"
log() { echo "mpibatch coordinate [$node]: $*" >&2; }

# 1. The same path on every node leads to that node's own working directory (subtask directory
#    names differ from the primary's; AZ_BATCH_NODE_SHARED_DIR does not).
mkdir -p "$(dirname "$rank_dir")"
ln -sfn "$AZ_BATCH_TASK_WORKING_DIR" "$rank_dir"
printf 'AZ_BATCH_NODE_ID=%s\n' "$node" > "$AZ_BATCH_TASK_WORKING_DIR/.mpibatch-node"

# 2. Every host must reach every other one. The primary logs in to every host the way the MPI
#    launcher will (ssh on Batch and SSH hosts): N logins, not N x N. Every other node checks that
#    the ssh port of each peer answers, so a one-way firewall is still named by its pair.
if [ "${MPIBATCH_PEER_CHECK:-1}" != 0 ]; then
  read -r -a rsh <<< "${MPIBATCH_RSH:-ssh -o BatchMode=yes -o ConnectTimeout=10}"
  port="${MPIBATCH_PEER_PORT:-22}"
  IFS=, read -r -a hosts <<< "$AZ_BATCH_HOST_LIST"
  tmp=$(mktemp -d)
  for h in "${hosts[@]}"; do
    if [ "$is_master" = true ]; then
      (rc=0; timeout 30 "${rsh[@]}" "$h" true < /dev/null > "$tmp/$h.out" 2>&1 || rc=$?; echo "$rc" > "$tmp/$h.rc") &
    elif [ "$port" != none ]; then
      # shellcheck disable=SC2016  # $0/$1 expand in the inner bash, on purpose
      (rc=0; timeout 10 bash -c 'exec 3<> "/dev/tcp/$0/$1"' "$h" "$port" > "$tmp/$h.out" 2>&1 || rc=$?
       echo "$rc" > "$tmp/$h.rc") &
    fi
  done
  wait
  how="with '${rsh[0]}'"; [ "$is_master" = true ] || how="on port $port"
  failed=0
  for h in "${hosts[@]}"; do
    [ -f "$tmp/$h.rc" ] || continue
    rc=$(cat "$tmp/$h.rc")
    if [ "$rc" != 0 ]; then
      log "cannot reach $h from this node ($node) $how: exit $rc: $(tail -n 3 "$tmp/$h.out" | tr '\n' ' ')"
      failed=1
    fi
  done
  rm -rf "$tmp"
  [ "$failed" = 0 ] || exit 1
fi

# 3. A directory shared by all nodes (the task shared dir is NOT shared on Batch).
case "$shared_mode" in
  none) ;;
  sshfs)
    if [ "$is_master" != true ]; then
      opts=(-o reconnect -o ServerAliveInterval=15 -o StrictHostKeyChecking=yes -o BatchMode=yes)
      if [ -n "${MPIBATCH_RSH:-}" ]; then
        opts+=(-o "ssh_command=$MPIBATCH_RSH" -o "sftp_server=${MPIBATCH_SFTP_SERVER:-/usr/lib/openssh/sftp-server}")
      fi
      sshfs "${opts[@]}" "$master_ip:$AZ_BATCH_TASK_SHARED_DIR" "$AZ_BATCH_TASK_SHARED_DIR"
      log "mounted $master_ip:$AZ_BATCH_TASK_SHARED_DIR (sshfs)"
    fi ;;
  nfs)
    # The NFS steps of the Azure Batch Linux MPI sample: the master exports, the others mount.
    if [ "$is_master" = true ]; then
      command -v exportfs > /dev/null || { apt-get -y update && apt-get -y install nfs-kernel-server; }
      echo "$AZ_BATCH_TASK_SHARED_DIR *(rw,sync,no_root_squash,no_subtree_check)" >> /etc/exports
      exportfs -ra
      systemctl restart nfs-kernel-server || service nfs-kernel-server restart
    else
      command -v mount.nfs > /dev/null || { apt-get -y update && apt-get -y install nfs-common; }
      for attempt in 1 2 3 4 5 6 7 8 9 10; do
        if mount -t nfs "$master_ip:$AZ_BATCH_TASK_SHARED_DIR" "$AZ_BATCH_TASK_SHARED_DIR"; then break; fi
        [ "$attempt" = 10 ] && { log "NFS mount from $master_ip failed 10 times"; exit 1; }
        sleep "$attempt"
      done
    fi ;;
  *) log "unknown shared dir mode $shared_mode"; exit 2 ;;
esac

# 4. Common files land in the task shared dir (a Batch rule users trip on): link them into the
#    working directory, where the ranks start.
for name in "${links[@]}"; do
  if [ -e "$AZ_BATCH_TASK_SHARED_DIR/$name" ] && [ ! -e "$AZ_BATCH_TASK_WORKING_DIR/$name" ]; then
    ln -s "$AZ_BATCH_TASK_SHARED_DIR/$name" "$AZ_BATCH_TASK_WORKING_DIR/$name"
  fi
done
