"""The coordination step's reachability check grows linearly with the node count: the primary logs in to every
host once, every other node probes the primary's ssh port only (not every peer: N x N probes at 64 nodes).
Real coordinate.sh, real TCP on loopback addresses, a remote shell that records whom it was asked to reach."""
from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

from mpibatch.launchers import protocol, script_path

from mpibatch.executors.localenv import SYSTEM_PATH

HOSTS = [f"127.0.0.{i}" for i in range(1, 9)]  # the primary first; the whole 127/8 is the loopback


def coordinate(tmp_path: Path, *, master: bool, **env: str) -> subprocess.CompletedProcess[str]:
    wd, shared = tmp_path / "wd", tmp_path / "shared"
    wd.mkdir(exist_ok=True)
    shared.mkdir(exist_ok=True)
    base = {"PATH": SYSTEM_PATH, "HOME": str(tmp_path), "AZ_BATCH_TASK_WORKING_DIR": str(wd),
            "AZ_BATCH_TASK_SHARED_DIR": str(shared), "AZ_BATCH_HOST_LIST": ",".join(HOSTS),
            "AZ_BATCH_MASTER_NODE": f"{HOSTS[0]}:6000", "AZ_BATCH_NODE_ID": "tvm-2",
            "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true" if master else "false", **env}
    return subprocess.run(["bash", script_path("coordinate.sh"), "--rank-dir", str(tmp_path / "r" / "t"),
                           *protocol.coordinate_args()], env=base, capture_output=True, text=True, timeout=60)


class Listener:
    """A TCP port on `address` that records the local address of every connection it accepts."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.bind((address, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.reached: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        for _ in range(600):  # at most 2 minutes
            if self.stop.is_set():
                return
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                self.reached.append(conn.getsockname()[0])

    def close(self) -> list[str]:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()
        return sorted(self.reached)


def test_a_subtask_probes_the_primary_only(tmp_path: Path) -> None:
    # Bound to every address: a probe of any peer would be accepted and recorded.
    listener = Listener("0.0.0.0")
    try:
        proc = coordinate(tmp_path, master=False, MPIBATCH_PEER_PORT=str(listener.port))
    finally:
        reached = listener.close()
    assert proc.returncode == 0, proc.stderr
    assert reached == [HOSTS[0]]


def test_a_subtask_that_cannot_reach_the_primary_names_the_pair(tmp_path: Path) -> None:
    listener = Listener(HOSTS[1])  # a peer answers, the primary does not
    try:
        proc = coordinate(tmp_path, master=False, MPIBATCH_PEER_PORT=str(listener.port))
    finally:
        listener.close()
    assert proc.returncode == 1
    assert f"cannot reach {HOSTS[0]} from this node (tvm-2) on port {listener.port}" in proc.stderr


def test_the_primary_logs_in_to_every_host_once(tmp_path: Path) -> None:
    log = tmp_path / "logins"
    rsh = tmp_path / "rsh.sh"
    rsh.write_text(f'#!/bin/bash\necho "$1" >> {log}\n')
    rsh.chmod(0o755)
    proc = coordinate(tmp_path, master=True, MPIBATCH_RSH=str(rsh))
    assert proc.returncode == 0, proc.stderr
    assert sorted(log.read_text().split()) == sorted(HOSTS)
