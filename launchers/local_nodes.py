"""The inits of a local run's emulated nodes, made by one process: started once per run inside the run's user,
PID and mount namespaces (`python3 -I -S local_nodes.py NODES_DIR NODE_ROOT HOSTNAME...`), it forks one init
per HOSTNAME, i.e. per node, in its own mount and UTS namespaces:
- node i's directory (NODES_DIR/i) appears at NODE_ROOT, the path every node shares (as /mnt/batch/tasks on
  Batch); the other nodes' directories, beside it under NODES_DIR, are covered (not this node's to see or write);
- its hostname is HOSTNAME;
- /dev/shm is its own (POSIX shared-memory segments never reach the host's, nor another node's or run's; System V
  ones are the run's, and UCX, seeing one kernel boot id, treats the nodes as one machine).
/etc/hosts comes from the run (local_run_init.sh). Each init writes `ready INDEX PID` (its PID in the run's PID
namespace) or `failed INDEX REASON` on stdout, then sleeps until the executor ends the run.

One fork per node instead of a chain of programs (nsenter, unshare, a shell, mount three times, hostname,
sleep): at 64 nodes that chain was most of a run's start-up CPU. Standard library only; the system calls through
ctypes (os.unshare is Python 3.12+).
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys

CLONE_NEWNS, CLONE_NEWUTS = 0x00020000, 0x04000000
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE = 0x2, 0x4, 0x1000, 0x4000, 0x40000

libc = ctypes.CDLL(None, use_errno=True)


def _call(what: str, rc: int) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    def b(s: str | None) -> bytes | None:
        return s.encode() if s is not None else None
    _call(f"mount {source} on {target}", libc.mount(b(source), b(target), b(fstype), ctypes.c_ulong(flags), b(data)))


def become_node(nodes_dir: str, node_root: str, index: int, hostname: str) -> None:
    """This process becomes node `index`'s init (see the module's text)."""
    _call("unshare", libc.unshare(CLONE_NEWNS | CLONE_NEWUTS))
    mount("none", "/", None, MS_REC | MS_PRIVATE)  # nothing of this node's mounts reaches the run, nor back
    mount(f"{nodes_dir}/{index}", node_root, None, MS_BIND)
    mount("tmpfs", nodes_dir, "tmpfs", 0, "mode=755,size=64k")  # over the others: this node's stays at node_root
    mount("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777")
    name = hostname.encode()
    _call("sethostname", libc.sethostname(name, len(name)))


def node_init(nodes_dir: str, node_root: str, index: int, hostname: str) -> None:
    """The forked child: one line on stdout (each under PIPE_BUF: lines of different nodes never mix), then
    sleep until killed (SIGKILL with the run; the kernel ends it with the run's PID 1 in any case)."""
    try:
        become_node(nodes_dir, node_root, index, hostname)
        line = f"ready {index} {os.getpid()}\n"
    except OSError as e:
        line = f"failed {index} {e.strerror or e}\n"
    os.write(1, line.encode())
    if not line.startswith("ready"):
        os._exit(1)
    fd = os.open(os.devnull, os.O_RDWR)  # no pipe of the executor stays open in a node's init
    for n in (0, 1, 2):
        os.dup2(fd, n)
    os.close(fd)
    while True:
        signal.pause()


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: local_nodes.py NODES_DIR NODE_ROOT HOSTNAME...", file=sys.stderr)
        return 2
    nodes_dir, node_root, hostnames = argv[0], argv[1], argv[2:]
    for index, hostname in enumerate(hostnames):
        if os.fork() == 0:
            try:
                node_init(nodes_dir, node_root, index, hostname)
            finally:
                os._exit(1)
    os.close(1)  # only the inits write there
    # Reap each init that ends (a lost node); gone with the last of them, or with the run.
    while True:
        try:
            os.wait()
        except ChildProcessError:
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
