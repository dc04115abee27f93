"""Issue 19's SSH first-contact faults (items 20, 21, 22) on real sshd hosts in network namespaces
(tests/infra/cluster.py), each as a test that failed before the fix."""
from __future__ import annotations

import secrets
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from mpibatch.launchers import protocol, script_path

from mpibatch.executors.ssh import SshExecutor
from mpibatch.spec import parse_spec
from tests.infra.cluster import SshCluster
from tests.infra.fixtures import VENVS

pytestmark = pytest.mark.cluster
Make = Callable[..., SshCluster]

HELLO = """\
from mpi4py import MPI
comm = MPI.COMM_WORLD
names = comm.gather(MPI.Get_processor_name(), root=0)
if comm.rank == 0:
    print("NAMES", ",".join(sorted(set(names))), "SIZE", comm.size)
"""


def hello(tmp: Path, instances: int = 3) -> Any:
    (tmp / "hello.py").write_text(HELLO)
    return parse_spec({"job": {"id": "edges"}, "task": {
        "id": "t", "instances": instances, "mpi": {"flavor": "mpich", "processes_per_node": 1},
        "command": ["python3", "hello.py"], "common_files": ["hello.py"], "max_wall_clock": "90s"}}, tmp)


def write_cli_spec(tmp: Path) -> Path:
    hello(tmp)
    spec = tmp / "spec.yaml"
    spec.write_text("job: {id: edges}\ntask: {id: t, instances: 3, mpi: mpich, command: [python3, hello.py], "
                    "common_files: [hello.py]}\n")
    return spec


def executor(c: SshCluster, tmp: Path, hosts: list[str], **kw: Any) -> SshExecutor:
    return SshExecutor(hosts, user="root", key=str(c.client_key_path), known_hosts=str(c.known_hosts_path),
                       runs_dir=str(tmp / "runs"), remote_path_prepend=[str(VENVS / "mpich" / "bin")], **kw)


@pytest.mark.parametrize("how", ["host:port", "--port"])
def test_item20_peers_are_checked_on_the_port_the_executor_used(ssh_cluster_factory: Make, tmp_path: Path,
                                                                 how: str) -> None:
    """Issue 19 item 20: "The coordination step checks peers on port 22 whatever `--port`, `host:port` or
    `~/.ssh/config` say". No sshd listens on 22 here; each host's port is in the hosts' ssh config (for MPI)."""
    ports = [2222, 2223, 2224] if how == "host:port" else [2201] * 3
    c = ssh_cluster_factory(3, ports=ports)
    if how == "host:port":
        ex = executor(c, tmp_path, [f"{h}:{p}" for h, p in zip(c.hosts, ports)])
    else:
        ex = executor(c, tmp_path, c.hosts, port=2201)
    r = ex.submit(hello(tmp_path)).result()
    assert r.succeeded, (r.failure, [i.stderr for i in r.instances])
    assert [i.coordination_exit_code for i in r.instances] == [0, 0, 0]
    assert f"NAMES {','.join(c.names)} SIZE 3" in r.primary.stdout


def subtask_peer_check(tmp: Path, hosts: str, ports: str) -> subprocess.CompletedProcess[str]:
    """coordinate.sh on a subtask node: only its step 3 (the peer check) has work to do."""
    (tmp / "wd").mkdir(exist_ok=True)
    (tmp / "shared").mkdir(exist_ok=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp), "AZ_BATCH_TASK_WORKING_DIR": str(tmp / "wd"),
           "AZ_BATCH_TASK_SHARED_DIR": str(tmp / "shared"), "AZ_BATCH_HOST_LIST": hosts,
           "AZ_BATCH_MASTER_NODE": "127.0.0.1:6000", "AZ_BATCH_NODE_ID": "tvm-1",
           "AZ_BATCH_IS_CURRENT_NODE_MASTER": "false", "MPIBATCH_PEER_PORTS": ports}
    return subprocess.run(["bash", script_path("coordinate.sh"), "--rank-dir", str(tmp / "r" / "t"),
                           *protocol.coordinate_args()], env=env,
                          capture_output=True, text=True, timeout=60)


def test_item20_each_peer_is_checked_on_its_own_port_even_at_one_address(tmp_path: Path) -> None:
    """Issue 19 item 20: "per-host ports may differ - then check each peer on its own port" (two entries of
    one address: the check's result files were named by address, so one hid the other)."""
    with socket.socket() as listening, socket.socket() as closed:
        listening.bind(("127.0.0.1", 0))
        listening.listen(8)
        closed.bind(("127.0.0.1", 0))
        open_port, closed_port = listening.getsockname()[1], closed.getsockname()[1]
        closed.close()  # nothing listens there now
        both = subtask_peer_check(tmp_path, "127.0.0.1,127.0.0.1", f"{open_port},{open_port}")
        assert both.returncode == 0, both.stderr
        one = subtask_peer_check(tmp_path, "127.0.0.1,127.0.0.1", f"{open_port},{closed_port}")
    assert one.returncode == 1, one.stderr
    assert f"cannot reach 127.0.0.1 from this node (tvm-1) on port {closed_port}" in one.stderr
    assert f"on port {open_port}" not in one.stderr and "on port 22" not in one.stderr


def test_item21_a_host_without_sftp_is_named_with_the_cause_and_the_fix(ssh_cluster_factory: Make,
                                                                        tmp_path: Path) -> None:
    """Issue 19 item 21: "A host without the SFTP subsystem gives `error: Channel closed.; Channel closed.;
    ...` (exit 3): name the host, the cause (no SFTP) and the fix"."""
    c = ssh_cluster_factory(3, no_sftp=[1])
    p = subprocess.run([sys.executable, "-m", "mpibatch.cli", "run", str(write_cli_spec(tmp_path)), "--executor",
                        "ssh", "--hosts", ",".join(c.hosts), "--user", "root", "--key", str(c.client_key_path),
                        "--known-hosts", str(c.known_hosts_path), "--runs-dir", str(tmp_path / "runs")],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert p.returncode == 3, (p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, p.stderr
    msg = lines[0]
    assert msg.startswith(f"error: root@{c.hosts[1]}: its SSH server refused an SFTP session"), msg
    assert "no SFTP subsystem" in msg and "`Subsystem sftp internal-sftp`" in msg and "reload sshd" in msg, msg
    assert c.hosts[0] not in msg and c.hosts[2] not in msg, msg  # only the host that lacks it
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").rglob("*.txt"))
    assert not c.wait_idle(timeout=10)


@pytest.mark.parametrize("how", ["one machine, three ports", "a shared /tmp"])
def test_item22_host_entries_that_share_a_node_root_are_refused_before_anything_starts(
        ssh_cluster_factory: Make, tmp_path: Path, how: str) -> None:
    """Issue 19 item 22: "Host entries that share one filesystem (three `127.0.0.1:PORT` aliases) share one node
    root: runs fail on `Directory not empty` ... and every instance collects every rank's files"."""
    root = f"/tmp/mpibatch-edges-{secrets.token_hex(4)}"
    if how == "one machine, three ports":
        c = ssh_cluster_factory(1, extra_ports=[2201, 2202])
        hosts = [f"{c.hosts[0]}:{p}" for p in (22, 2201, 2202)]
        shared = "hosts[0] root@{0}, hosts[1] root@{0}:2201 and hosts[2] root@{0}:2202".format(c.hosts[0])
    else:  # three machines whose /tmp is one directory (an NFS-mounted node root, say)
        c = ssh_cluster_factory(3, private_dirs=())
        hosts = list(c.hosts)
        shared = "hosts[0] root@{}, hosts[1] root@{} and hosts[2] root@{}".format(*c.hosts)
    try:
        p = subprocess.run([sys.executable, "-m", "mpibatch.cli", "run", str(write_cli_spec(tmp_path)),
                            "--executor", "ssh", "--hosts", ",".join(hosts), "--user", "root", "--key",
                            str(c.client_key_path), "--known-hosts", str(c.known_hosts_path), "--node-root", root,
                            "--runs-dir", str(tmp_path / "runs")], cwd=tmp_path, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 2, (p.stdout, p.stderr)
        assert f"{shared} share one node root {root}" in p.stderr, p.stderr
        assert "--executor local" in p.stderr and "Traceback" not in p.stderr
        assert "coordination" not in p.stderr and not list((tmp_path / "runs").iterdir())  # nothing ran
        left = list(Path(c.node_path(0, root)).iterdir())
        assert not left, f"markers or files left in the node root: {left}"
        assert not c.wait_idle(timeout=10)
    finally:
        subprocess.run(["rm", "-rf", "--", str(c.node_path(0, root))], check=True)
