#!/bin/bash
# mpibatch coordination step: runs on every instance (primary and subtasks) before the application.
# It only does what can be known on the node; mpibatch rendered everything else (docs/hpc-nodes.md).
#   --rank-dir DIR      where ranks start: made a symlink to this node's working directory
#   --shared-dir MODE   none | sshfs | nfs: share the primary's task shared dir with every node
#   --link NAME         a common file (in the task shared dir) to link into the working directory
#   --module NAME       activate the MPI runtime with `module load NAME` (repeatable), or
#   --source SCRIPT     with `. SCRIPT ARG...` (--source-arg ARG, repeatable); relative: a common file
#   --launcher PROG --expect TITLE --runtime TITLE=ERE...
#                       `PROG --version` must match the ERE of TITLE, not that of another runtime
#   --fabric F          sriov | networkdirect | tcp | none: sriov needs an active InfiniBand port here
#   --node-var NAME=ucx|iface
#                       NAME, for this node's ranks, is its active InfiniBand ports (UCX names) or its
#                       IPoIB interface; unset when the node has none
#   --node-id-file F --node-env-file F --rank-wrapper F --clear F...
#                       the names of mpibatch's own node files (launchers/protocol.py, passed by render):
#                       the node id, this node's environment and the per-rank wrapper it writes into the
#                       working directory, and the last attempt's tracker/persist files it removes from
#                       the task directory
# Writes this node's environment and the per-rank wrapper into the working directory. Environment: the Batch variables (docs/batch-semantics.md#environment); for
# rehearsals MPIBATCH_RSH (remote shell, default ssh), MPIBATCH_PEER_CHECK=0 (skip the reachability
# check), MPIBATCH_SYSFS (default /sys); MPIBATCH_VERSION_WAIT (seconds `--launcher --version` may take, 30),
# MPIBATCH_LAUNCHER_CHECK=primary (the launcher is checked on the primary only).
set -euo pipefail

rank_dir="" shared_mode="none" links=() modules=() source_script="" source_args=()
launcher="" expect="" runtimes=() fabric="none" node_vars=()
node_id_file="" node_env_file="" rank_wrapper="" clear=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rank-dir) rank_dir=$2; shift 2 ;;
    --shared-dir) shared_mode=$2; shift 2 ;;
    --link) links+=("$2"); shift 2 ;;
    --module) modules+=("$2"); shift 2 ;;
    --source) source_script=$2; shift 2 ;;  # relative: a common file, in the task shared dir
    --source-arg) source_args+=("$2"); shift 2 ;;
    --launcher) launcher=$2; shift 2 ;;
    --expect) expect=$2; shift 2 ;;
    --runtime) runtimes+=("$2"); shift 2 ;;
    --fabric) fabric=$2; shift 2 ;;
    --node-var) node_vars+=("$2"); shift 2 ;;
    --node-id-file) node_id_file=$2; shift 2 ;;
    --node-env-file) node_env_file=$2; shift 2 ;;
    --rank-wrapper) rank_wrapper=$2; shift 2 ;;
    --clear) clear+=("$2"); shift 2 ;;
    *) echo "mpibatch coordinate: unknown argument $1" >&2; exit 2 ;;
  esac
done
: "${node_id_file:?--node-id-file is required}" "${node_env_file:?--node-env-file is required}" \
  "${rank_wrapper:?--rank-wrapper is required}"
: "${AZ_BATCH_TASK_WORKING_DIR:?not a Batch task}" "${AZ_BATCH_TASK_SHARED_DIR:?}" "${AZ_BATCH_HOST_LIST:?}"
node="${AZ_BATCH_NODE_ID:-?}"
master_ip="${AZ_BATCH_MASTER_NODE%:*}"
is_master="${AZ_BATCH_IS_CURRENT_NODE_MASTER:-false}"
wd=$AZ_BATCH_TASK_WORKING_DIR
# Bash builtins over small programs where they say the same: every fork costs, on each node, before the
# application may start (the whole-process benchmark counts it).
read_line() { local _v; { IFS= read -r _v || [ -n "$_v" ]; } 2> /dev/null < "$2" || return 1; printf -v "$1" '%s' "$_v"; }
read_line host_name /proc/sys/kernel/hostname || host_name=$(hostname 2> /dev/null || echo "?")
here=$node; [ "$host_name" = "$node" ] || here="$node, $host_name"
log() { echo "mpibatch coordinate [$node]: $*" >&2; }
tail_of() { tail -n 5 "$1" | tr '\n' ' ' | sed 's/ *$//'; }
quote() { local q="'\\''"; REPLY="'${1//\'/$q}'"; }  # into REPLY: no subshell per value
# A scratch directory, made when a step needs one (most nodes never do).
work=""
need_work() { if [ -z "$work" ]; then work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; fi; }

# 1. The same path on every node leads to that node's own working directory (subtask directory
#    names differ from the primary's; AZ_BATCH_NODE_SHARED_DIR does not).
mkdir -p "${rank_dir%/*}"  # the parent: rank_dir is an absolute path below the node's shared dir
ln -sfn "$wd" "$rank_dir"
printf 'AZ_BATCH_NODE_ID=%s\n' "$node" > "$wd/$node_id_file"
# A retry starts afresh: no word of the last attempt's tracker and persist step (track.py).
task_dir=${wd%/}; task_dir=${task_dir%/*}
stale=()
for name in "${clear[@]}"; do
  if [ -e "$task_dir/$name" ] || [ -L "$task_dir/$name" ]; then stale+=("$task_dir/$name"); fi
done
if [ ${#stale[@]} -gt 0 ]; then rm -f "${stale[@]}"; fi

# 2. This node's environment for its ranks. Every rank starts through the rank wrapper, which sources
#    it: with Open MPI (-x forwards the primary's values) and hydra alike, a rank sees its own node's.
#    Written in place: no rank starts before every node's coordination has ended (and a retry starts
#    from a fresh task directory).
env_out="$wd/$node_env_file"
: > "$env_out"

# 2a. Activate the MPI runtime the way a login shell would make `module` available (a Batch task's
#     shell is not a login shell), and keep what the activation changed.
case "$source_script" in "" | /*) ;; *) source_script=$AZ_BATCH_TASK_SHARED_DIR/$source_script ;; esac
if [ ${#modules[@]} -gt 0 ] || [ -n "$source_script" ]; then
  declare -A before=()
  while IFS= read -r -d '' kv; do before[${kv%%=*}]=${kv#*=}; done < <(env -0)
  need_work
  if [ ${#modules[@]} -gt 0 ]; then how="module load ${modules[*]}"; else how="source $source_script ${source_args[*]}"; fi
  rc=0
  (
    set +euo pipefail
    if [ ${#modules[@]} -gt 0 ]; then
      if ! type module > /dev/null 2>&1; then
        for init in "${MODULESHOME:-/nonexistent}/init/bash" /etc/profile.d/modules.sh /etc/profile.d/lmod.sh \
                    /usr/share/modules/init/bash /usr/share/lmod/lmod/init/bash; do
          # shellcheck disable=SC1090  # the image's modules init script
          if [ -f "$init" ]; then . "$init"; break; fi
        done
      fi
      if ! type module > /dev/null 2>&1; then
        echo "no environment modules on this node (no module command, no /etc/profile.d/modules.sh or lmod.sh)" >&2
        exit 1
      fi
      module load "${modules[@]}" || exit
    else
      [ -f "$source_script" ] || { echo "$source_script: no such file" >&2; exit 1; }
      # shellcheck disable=SC1090  # the user's activation script, on the node
      . "$source_script" "${source_args[@]}" || exit
    fi
    env -0 > "$work/env.after"
  ) > "$work/setup.out" 2>&1 < /dev/null || rc=$?
  if [ "$rc" != 0 ]; then
    log "task.mpi.setup failed on this node ($here): $how: exit $rc: $(tail_of "$work/setup.out")"
    exit 1
  fi
  while IFS= read -r -d '' kv; do
    name=${kv%%=*} value=${kv#*=}
    [[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || continue
    case "$name" in PWD | OLDPWD | SHLVL | _) continue ;; esac
    if [ "${before[$name]+set}" != set ] || [ "${before[$name]}" != "$value" ]; then
      quote "$value"; printf 'export %s=%s\n' "$name" "$REPLY" >> "$env_out"
    fi
  done < "$work/env.after"
  set +u
  # shellcheck disable=SC1090  # written just above
  . "$env_out"
  set -u
fi

# 2b. The runtime on this node must be the spec's flavour: another MPI's launcher takes the arguments
#     it understands and runs the ranks by its own rules, without a word. Emulated nodes share one
#     machine's programs and the task's PATH: there the primary's finding is every node's
#     (MPIBATCH_LAUNCHER_CHECK=primary), and the check - a program run, 3 ms a node - runs once.
if [ -n "$launcher" ] && { [ "$is_master" = true ] || [ "${MPIBATCH_LAUNCHER_CHECK:-}" != primary ]; }; then
  path=""  # where PATH finds it, by bash's own lookup (`hash`: no subshell)
  case "$launcher" in
    */*) if [ -x "$launcher" ]; then path=$launcher; fi ;;
    *) if hash "$launcher" 2> /dev/null; then path=${BASH_CMDS[$launcher]:-}; fi ;;
  esac
  if [ -n "$path" ]; then
    # `PROG --version`, given 30 s (a launcher that hangs must not hang the node), timed by `read -t`: no
    # `timeout` program on every node. Its exit status says nothing here, its output everything.
    out="" rc=0
    { IFS= read -r -d '' -t "${MPIBATCH_VERSION_WAIT:-30}" out; } < <(exec "$path" --version 2>&1 < /dev/null) || rc=$?
    if [ "$rc" -gt 128 ]; then kill "$!" 2> /dev/null || true; fi  # timed out: it is still running
    found=""
    for r in "${runtimes[@]}"; do
      regex=${r#*=}
      if [[ $out =~ $regex ]]; then found=${r%%=*}; break; fi
    done
    first="" version=""  # the first non-empty line, and the first that names a version (spaces squeezed)
    while IFS= read -r line; do
      if [ -z "$first" ] && [ -n "$line" ]; then first=$line; fi
      if [ -z "$version" ] && [[ ${line,,} == *version* ]]; then
        version=$line
        while [[ $version == *"  "* ]]; do version=${version//  / }; done
      fi
    done <<< "$out"
    if [ -n "$version" ] && [ "$version" != "$first" ]; then first="$first $version"; fi
    if [ -z "$found" ]; then
      log "warning: cannot tell which MPI $path is ($launcher --version: ${first:-no output}); the spec says $expect"
    elif [ "$found" != "$expect" ]; then
      log "the spec's flavour is $expect but $launcher on this node ($here) is $found: $path" \
          "($launcher --version: $first). Activate $expect with task.mpi.setup or environment.PATH, or set" \
          "task.mpi.flavor to match."
      exit 1
    fi
  elif [ "$is_master" = true ]; then
    log "$launcher, the $expect launcher, is not on PATH on this node ($here): PATH=$PATH." \
        "Activate the runtime with task.mpi.setup ({module: ...} or {source: /path/to/vars.sh}) or environment.PATH."
    exit 1
  fi
fi

# 2c. This node's InfiniBand ports (device names differ between nodes of one pool). An SR-IOV
#     InfiniBand fabric without an active port here would silently fall back to TCP: refuse.
sysfs=${MPIBATCH_SYSFS:-/sys}
ports=() seen=() iface=""
for port_dir in "$sysfs"/class/infiniband/*/ports/*; do
  [ -d "$port_dir" ] || continue
  dev=${port_dir%/ports/*}; dev=${dev##*/}; port=${port_dir##*/}
  read_line state "$port_dir/state" || state="?: unreadable"; state=${state#*: }
  read_line layer "$port_dir/link_layer" || layer=unknown
  seen+=("$dev:$port $state $layer")
  if [ "$state" = ACTIVE ] && [ "$layer" = InfiniBand ]; then ports+=("$dev:$port"); fi
done
for net in "$sysfs"/class/net/*; do
  net_type=""; read_line net_type "$net/type" || true
  if [ "$net_type" = 32 ]; then iface=${net##*/}; break; fi  # ARPHRD_INFINIBAND
done
ucx=""; for p in "${ports[@]}"; do ucx+=${ucx:+,}$p; done
if [ "$fabric" = sriov ] && [ -z "$ucx" ]; then
  what="no InfiniBand device under $sysfs/class/infiniband"
  if [ ${#seen[@]} -gt 0 ]; then what="$(IFS=,; echo "${seen[*]}") (none ACTIVE with link layer InfiniBand)"; fi
  log "the task's fabric is sriov (InfiniBand RDMA) but this node ($here) has no active InfiniBand" \
      "port: found $what. The application would run over TCP: not starting it. Use an RDMA size with an" \
      "HPC image, or task.mpi.fabric: tcp if TCP is intended."
  exit 1
fi
if [ -n "$ucx" ]; then log "InfiniBand: active ports $ucx${iface:+, IPoIB interface $iface}"; fi
if [ "$fabric" != tcp ]; then
  for nv in "${node_vars[@]}"; do
    name=${nv%%=*}
    case "${nv#*=}" in ucx) value=$ucx ;; iface) value=$iface ;; *) value="" ;; esac
    if [ -n "$value" ]; then
      quote "$value"; printf 'export %s=%s\n' "$name" "$REPLY" >> "$env_out"
    else
      printf 'unset %s\n' "$name" >> "$env_out"
    fi
  done
fi
quote "$env_out"
{  # /bin/sh: started once per rank, and the node environment is plain `export NAME='value'` / `unset NAME`
  echo '#!/bin/sh'
  echo '# mpibatch: every rank on this node starts here: this node environment, then the program.'
  printf '. %s || exit 127\n' "$REPLY"
  echo 'exec "$@"'
} > "$wd/$rank_wrapper"
chmod 755 "$wd/$rank_wrapper"

# 3. The paths the MPI launcher takes must be open. The primary logs in to every host the way the
#    launcher will (ssh on Batch and SSH hosts); every other node checks that the primary's ssh port
#    answers (the launcher's daemons connect back to it), so a one-way firewall is named by its pair.
#    2(N-1) checks in all, not N x N: at 64 nodes every sshd would otherwise take 63 probes at once,
#    more unauthenticated connections than sshd's MaxStartups default (10) lets through unrefused.
#    The port of an entry: MPIBATCH_PEER_PORTS (one per AZ_BATCH_HOST_LIST entry, in its order: the SSH
#    executor passes the ports it used), else MPIBATCH_PEER_PORT (none: no port check), else 22.
if [ "${MPIBATCH_PEER_CHECK:-1}" != 0 ]; then
  read -r -a rsh <<< "${MPIBATCH_RSH:-ssh -o BatchMode=yes -o ConnectTimeout=10}"
  IFS=, read -r -a hosts <<< "$AZ_BATCH_HOST_LIST"
  IFS=, read -r -a peer_ports <<< "${MPIBATCH_PEER_PORTS:-}"
  peer_port() { REPLY=${peer_ports[$1]:-${MPIBATCH_PEER_PORT:-22}}; [[ $REPLY =~ ^[0-9]+$ ]] || REPLY=none; }
  primary=${master_ip#[}; primary=${primary%]}
  checks=()  # the checks' PIDs by index; their output in $work/INDEX.out (entries may share an address)
  for i in "${!hosts[@]}"; do
    h=${hosts[$i]}; peer_port "$i"; port=$REPLY
    if [ "$is_master" = true ]; then
      need_work
      timeout 30 "${rsh[@]}" "$h" true < /dev/null > "$work/$i.out" 2>&1 &
      checks[i]=$!
    elif [ "$port" != none ] && [ "$h" = "$primary" ]; then
      need_work
      # shellcheck disable=SC2016  # $0/$1 expand in the inner bash, on purpose
      timeout 10 bash -c 'exec 3<> "/dev/tcp/$0/$1"' "$h" "$port" > "$work/$i.out" 2>&1 &
      checks[i]=$!
    fi
  done
  failed=0
  for i in "${!checks[@]}"; do
    rc=0; wait "${checks[$i]}" || rc=$?
    peer_port "$i"; how="with '${rsh[0]}'"; [ "$is_master" = true ] || how="on port $REPLY"
    if [ "$rc" != 0 ]; then
      log "cannot reach ${hosts[$i]} from this node ($node) $how: exit $rc: $(tail -n 3 "$work/$i.out" | tr '\n' ' ')"
      failed=1
    fi
  done
  [ "$failed" = 0 ] || exit 1
fi

# 4. A directory shared by all nodes (the task shared dir is NOT shared on Batch).
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

# 5. Common files land in the task shared dir (a Batch rule users trip on): link them into the
#    working directory, where the ranks start.
for name in "${links[@]}"; do
  if [ -e "$AZ_BATCH_TASK_SHARED_DIR/$name" ] && [ ! -e "$AZ_BATCH_TASK_WORKING_DIR/$name" ]; then
    ln -s "$AZ_BATCH_TASK_SHARED_DIR/$name" "$AZ_BATCH_TASK_WORKING_DIR/$name"
  fi
done
