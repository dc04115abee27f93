"""Every host entry of an SSH run needs a node root of its own: entries that reach one machine
(``host:port`` aliases) or a shared filesystem would overwrite each other's task files and collect each
other's outputs. Found before anything starts: each host writes a marker holding a random token into the
node root, then every host lists the node root; a marker read back through another host names the pair."""
from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import paramiko

from ...errors import InfraError
from .connection import Host

FIX = ("give each machine once - for several nodes on one machine use --executor local or "
       "task.mpi.processes_per_node - and a --node-root no other host entry shares")


def shared_roots(hosts: Sequence[Host], node_root: str, run_id: str,
                 mkdirs: Callable[[Host, paramiko.SFTPClient], None]) -> list[list[int]]:
    """The groups (host indices, each group sorted, two or more hosts) whose node roots are one directory.
    `mkdirs(host, sftp)` makes the node root. The markers are removed whatever happens."""
    tokens = [secrets.token_hex(16) for _ in hosts]
    prefix = f".mpibatch-root-{run_id}-"

    def write(i: int) -> None:
        h = hosts[i]
        with h.sftp_lock:
            sftp = h.sftp_client()
            mkdirs(h, sftp)
            with sftp.open(f"{node_root}/{prefix}{i}", "wb") as f:
                f.write(tokens[i].encode())

    def seen(j: int) -> frozenset[int]:
        """Host j and every other host whose marker host j reads back, token and all."""
        h = hosts[j]
        found = {j}
        with h.sftp_lock:
            sftp = h.sftp_client()
            for name in sftp.listdir(node_root):
                i = int(name[len(prefix):]) if name.startswith(prefix) and name[len(prefix):].isdigit() else j
                if i != j and i < len(tokens):
                    with sftp.open(f"{node_root}/{name}", "rb") as f:
                        if f.read(64).decode(errors="replace") == tokens[i]:
                            found.add(i)
        return frozenset(found)

    def remove(i: int) -> None:
        h = hosts[i]
        with h.sftp_lock, contextlib.suppress(OSError, paramiko.SSHException, EOFError):
            h.sftp_client().remove(f"{node_root}/{prefix}{i}")

    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        try:
            list(pool.map(write, range(len(hosts))))
            groups = {g for g in pool.map(seen, range(len(hosts))) if len(g) > 1}
        except (OSError, paramiko.SSHException, EOFError) as e:
            raise InfraError(f"checking that every host has a node root {node_root} of its own failed: {e}") from None
        finally:
            list(pool.map(remove, range(len(hosts))))
    return sorted((sorted(g) for g in groups), key=lambda g: g[0])


def describe(hosts: Sequence[Host], group: Sequence[int], node_root: str) -> str:
    """One group of host entries that share `node_root`, for the message. Pure."""
    names = [f"hosts[{i}] {hosts[i].label}" for i in group]
    return (f"{', '.join(names[:-1])} and {names[-1]} share one node root {node_root} (a marker written through "
            "one was read through another: one machine under several entries, or a shared filesystem); their "
            "nodes would overwrite each other's files")
