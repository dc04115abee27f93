"""The environment of the local executor's emulated nodes: the "image" they start from (a clean environment
taken from the operator's, the running Python's venv first on PATH), and what this machine adds for MPI
launchers that Batch nodes do not need (the remote-shell agent, each flavour's local flags).
"""
from __future__ import annotations

import fcntl
import os
import struct
import sys
import tempfile

from ..mpi import FLAVORS


def rehearsal_env(agent: str, nodes_dir: str, *, is_root: bool) -> dict[str, str]:
    """What this machine needs and Batch nodes don't: the launchers' remote shell is our agent,
    plus each flavour's local flags. Set for every flavour (their variable names are distinct),
    so a plan from any source runs; the task's environment still wins."""
    # No reachability check (coordinate.sh step 3): it names a firewall between two VMs, and emulated nodes have
    # none - the agent reaches a node by its init's PID, and the launch itself says so if it cannot. At 64 nodes
    # the primary's 63 logins through the agent were 250 programs and a tenth of a second before every run.
    # The launcher's flavour is checked on the primary only: every emulated node runs this machine's programs.
    env: dict[str, str] = {"MPIBATCH_RSH": agent, "MPIBATCH_LOCAL_NODES": nodes_dir, "MPIBATCH_PEER_CHECK": "0",
                           "MPIBATCH_LAUNCHER_CHECK": "primary"}
    for flavor in FLAVORS.values():
        env |= flavor.local_agent_env(agent) | flavor.rehearsal_env(is_root=is_root)
    return env


# What a node "image" takes from the operator's environment: where programs and libraries are, the
# home and locale. Nothing else: on Batch no client variable (keys, connection strings) reaches a node.
IMAGE_VARS = ("PATH", "HOME", "LANG", "LANGUAGE", "TZ", "USER", "LOGNAME", "LD_LIBRARY_PATH")
IMAGE_PREFIXES = ("LC_",)
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def default_base_env(environ: dict[str, str] | None = None, python: str = sys.executable) -> dict[str, str]:
    """The nodes' "image": a clean environment (IMAGE_VARS from `environ`), with the running Python's
    bin dir (mpibatch's venv, where an MPI runtime wheel puts mpiexec) first on PATH. Pure."""
    src = os.environ if environ is None else environ
    env = {k: v for k, v in src.items() if k in IMAGE_VARS or k.startswith(IMAGE_PREFIXES)}
    env.setdefault("LANG", "C.UTF-8")
    path = env.get("PATH") or SYSTEM_PATH
    bindir = os.path.dirname(python)
    if bindir not in path.split(os.pathsep):
        path = bindir + os.pathsep + path
    env["PATH"] = path
    return env


NODE_SHM = "/dev/shm"  # every node mounts its own here


def scratch_base(tmp: str | None = None, others: tuple[str, ...] = ("/tmp", "/var/tmp")) -> str:
    """Where a run's node directories go: the temporary directory, unless it lies under /dev/shm, which every
    node covers with its own (TMPDIR=/dev/shm would hide the nodes' files from the nodes): then the first of
    `others` this user may write, as tempfile would have chosen without TMPDIR."""
    tmp = os.path.realpath(tmp or tempfile.gettempdir())
    if tmp != NODE_SHM and not tmp.startswith(NODE_SHM + "/"):
        return tmp
    return next((d for d in others if os.access(d, os.W_OK | os.X_OK)), others[0])


FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602  # linux/fs.h (the kernel reads and writes an int)
FS_TOPDIR_FL = 0x00020000  # chattr +T: "the top of a directory hierarchy"


def spread_subdirectories(path: str) -> bool:
    """Ask the file system to place each subdirectory of `path` in a block group of its own choosing (ext2/3/4
    honour it; others refuse or ignore it: False, nothing changed). Why: ext4 *without a journal* will not reuse
    an inode freed in the last minute or more and reads every such inode to skip it, and a 64-node run frees
    about 1,500: the next run's node directories, all beside the last run's in one group, cost seconds of CPU
    in that scan. Spread out, each node's directory meets the few inodes the same node freed last time."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        flags = struct.unpack_from("i", buf)[0]
        if not flags & FS_TOPDIR_FL:
            fcntl.ioctl(fd, FS_IOC_SETFLAGS, struct.pack("i", flags | FS_TOPDIR_FL) + bytes(4))
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
