"""The environment of the local executor's emulated nodes: the "image" they start from (a clean environment
taken from the operator's, the running Python's venv first on PATH), and what this machine adds for MPI
launchers that Batch nodes do not need (the remote-shell agent, each flavour's local flags).
"""
from __future__ import annotations

import os
import sys
import tempfile

from ..mpi import FLAVORS


def rehearsal_env(agent: str, nodes_dir: str, *, is_root: bool) -> dict[str, str]:
    """What this machine needs and Batch nodes don't: the launchers' remote shell is our agent,
    plus each flavour's local flags. Set for every flavour (their variable names are distinct),
    so a plan from any source runs; the task's environment still wins."""
    # Emulated nodes have no sshd: the primary checks every node through the agent, the others skip.
    env: dict[str, str] = {"MPIBATCH_RSH": agent, "MPIBATCH_LOCAL_NODES": nodes_dir, "MPIBATCH_PEER_PORT": "none"}
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
