"""Tests of the SSH cluster test infrastructure itself (tests/infra/cluster.py, tests/infra/fixtures.py)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import paramiko
import pytest

from tests.infra import cluster as cluster_mod
from tests.infra.cluster import SshCluster
from tests.infra.fixtures import REPO_ROOT, require, require_cluster, ssh_cluster3, ssh_cluster_factory  # noqa: F401

pytestmark = pytest.mark.cluster


def _paramiko_client(cluster: SshCluster, host: str) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(cluster.known_hosts_path))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(
        host, port=cluster.port, username=cluster.user, key_filename=str(cluster.client_key_path),
        allow_agent=False, look_for_keys=False, timeout=10, banner_timeout=10, auth_timeout=10,
    )
    return client


def _netns_names() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _links() -> set[str]:
    return {p.name for p in Path("/sys/class/net").iterdir()}


def test_three_hosts_distinct_names_addresses_no_default_route(ssh_cluster3: SshCluster) -> None:
    c = ssh_cluster3
    assert len(c.hosts) == 3 and len(set(c.hosts)) == 3
    assert c.names == ["node-0", "node-1", "node-2"]
    subnet = ipaddress.IPv4Network(c.subnet)
    assert all(ipaddress.IPv4Address(h) in subnet for h in c.hosts)
    assert subnet.subnet_of(ipaddress.IPv4Network("10.213.0.0/16"))
    for i, (ip, name) in enumerate(zip(c.hosts, c.names)):
        script = "hostname; ip -4 -o addr show dev eth0; ip route; getent hosts node-0 node-2"
        r = c.exec(i, ["sh", "-c", script], timeout=10)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == name
        assert f"inet {ip}/24" in lines[1]
        assert not any(line.startswith("default") for line in lines), r.stdout
        assert any(line.split()[:2] == [c.hosts[0], "node-0"] for line in lines), r.stdout
        assert any(line.split()[:2] == [c.hosts[2], "node-2"] for line in lines), r.stdout
    # The test process's own hostname is untouched.
    assert socket.gethostname() not in c.names


def test_node_to_node_ssh_with_checked_host_keys(ssh_cluster3: SshCluster) -> None:
    c = ssh_cluster3
    r = c.exec(0, ["ssh", c.hosts[2], "hostname"], timeout=20)
    assert (r.returncode, r.stdout.strip()) == (0, "node-2"), r.stderr
    # ... and back, by name (the node's /etc/hosts).
    r = c.exec(2, ["ssh", "node-0", "hostname"], timeout=20)
    assert (r.returncode, r.stdout.strip()) == (0, "node-0"), r.stderr
    # Host keys really are checked: with an empty known_hosts the same login is refused.
    r = c.exec(0, ["ssh", "-o", "UserKnownHostsFile=/dev/null", c.hosts[1], "hostname"], timeout=20)
    assert r.returncode == 255 and "Host key verification failed" in r.stderr, (r.stdout, r.stderr)
    # A wrong key for node-1 is refused too (node-2's key under node-1's address).
    wrong = c.known_hosts_path.read_text().splitlines()[2].split(" ", 1)[1]
    script = (f"printf '%s\\n' '{c.hosts[1]} {wrong}' > /tmp/kh && "
              f"ssh -o UserKnownHostsFile=/tmp/kh {c.hosts[1]} hostname; echo rc=$?")
    r = c.exec(0, ["sh", "-c", script], timeout=20)
    assert "rc=255" in r.stdout and "HOST IDENTIFICATION HAS CHANGED" in r.stderr, (r.stdout, r.stderr)
    # The nodes' /root/.ssh is the cluster's, not the machine's.
    r = c.exec(1, ["sh", "-c", "ls /root/.ssh"], timeout=10)
    assert sorted(r.stdout.split()) == ["config", "id_ed25519", "id_ed25519.pub", "known_hosts"]


def test_paramiko_reject_policy_connects_to_every_host(ssh_cluster3: SshCluster) -> None:
    c = ssh_cluster3
    for ip, name in zip(c.hosts, c.names):
        client = _paramiko_client(c, ip)
        try:
            _, stdout, _ = client.exec_command("hostname")
            assert stdout.read().decode().strip() == name
            assert stdout.channel.recv_exit_status() == 0
            with client.open_sftp() as sftp:
                with sftp.open(f"/tmp/sftp-{name}", "w") as fh:
                    fh.write(f"via sftp to {name}\n")
        finally:
            client.close()
    # SFTP wrote into each node's private /tmp.
    for i, name in enumerate(c.names):
        assert c.node_path(i, f"/tmp/sftp-{name}").read_text() == f"via sftp to {name}\n"
        assert not c.node_path(i, f"/tmp/sftp-{c.names[(i + 1) % 3]}").exists()
    # The cluster's own helpers: paramiko client, and OpenSSH options from the root namespace.
    client = c.ssh_client(1)
    _, stdout, _ = client.exec_command("hostname")
    assert stdout.read().decode().strip() == "node-1"
    client.close()
    r = subprocess.run(["ssh", *c.ssh_options(), c.hosts[2], "hostname"], capture_output=True, text=True, timeout=20)
    assert (r.returncode, r.stdout.strip()) == (0, "node-2"), r.stderr
    # Unknown host key + RejectPolicy: refused.
    client = paramiko.SSHClient()
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        client.connect(c.hosts[0], username="root", key_filename=str(c.client_key_path),
                       allow_agent=False, look_for_keys=False, timeout=10)
    client.close()
    assert c.wait_idle(timeout=10) == {}


def test_sshfs_between_nodes(ssh_cluster3: SshCluster) -> None:
    require_cluster(sshfs=True)
    c = ssh_cluster3
    assert c.exec(0, ["sh", "-c", "mkdir -p /tmp/x && echo from-node-0 > /tmp/x/a"]).returncode == 0
    # /tmp is private per node: node-2 cannot see node-0's file without the mount.
    assert c.exec(2, ["test", "-e", "/tmp/x/a"]).returncode == 1
    r = c.exec(2, ["sh", "-c", f"mkdir -p /tmp/mnt && sshfs -o BatchMode=yes {c.hosts[0]}:/tmp/x /tmp/mnt"], timeout=20)
    assert r.returncode == 0, r.stderr
    try:
        script = "grep ' /tmp/mnt ' /proc/self/mounts; cat /tmp/mnt/a; echo from-node-2 > /tmp/mnt/b"
        r = c.exec(2, ["sh", "-c", script], timeout=20)
        assert r.returncode == 0, r.stderr
        assert "fuse.sshfs" in r.stdout and "from-node-0" in r.stdout
        assert c.node_path(0, "/tmp/x/b").read_text() == "from-node-2\n"
        # The mount lives in node-2's mount namespace only.
        assert "/tmp/mnt" not in Path("/proc/self/mounts").read_text()
        assert c.exec(1, ["grep", "-c", "fuse.sshfs", "/proc/self/mounts"]).stdout.strip() == "0"
        assert any("sshfs" in cmd for _, cmd in c.process_table(2))
    finally:
        r = c.exec(2, ["fusermount3", "-u", "/tmp/mnt"], timeout=20)
    assert r.returncode == 0, r.stderr
    assert c.wait_idle(timeout=10) == {}


def test_processes_and_kill_sshd(ssh_cluster_factory) -> None:
    c = ssh_cluster_factory(2)
    # A background process started in node 1 is listed, its sshd is not.
    r = c.exec(1, ["sh", "-c", "sleep 300 >/dev/null 2>&1 & echo $!"], timeout=10)
    bg = int(r.stdout.strip())
    assert c.processes(1) == [bg]
    assert c.sshd_pid(1) not in c.processes(1)
    assert c.processes(0) == []
    # Dropping node 1: sshd gone, address unreachable; node 0 unaffected.
    c.kill_sshd(1)
    assert c.is_down(1)
    with pytest.raises(OSError):
        socket.create_connection((c.hosts[1], 22), timeout=1).close()
    r = c.exec(0, ["ssh", "-o", "ConnectTimeout=1", c.hosts[1], "true"], timeout=20)
    assert r.returncode == 255
    client = _paramiko_client(c, c.hosts[0])
    client.close()
    with pytest.raises(cluster_mod.ClusterError):
        c.exec(1, ["true"])
    # The orphan keeps running until teardown (a dropped host's processes are beyond reach).
    assert c.processes(1) == [bg]
    c.stop()
    assert not cluster_mod._pid_alive(bg)


@pytest.mark.alone  # compares every network namespace and link of the machine before and after
def test_teardown_leaves_nothing_behind(ssh_cluster_factory) -> None:
    before_ns, before_links = _netns_names(), _links()
    c = ssh_cluster_factory(3)
    assert set(c.namespaces) <= _netns_names()
    sshd_pids = [c.sshd_pid(i) for i in range(3)]
    # Leave work behind on purpose: a detached process, an open SSH session, an sshfs mount.
    bg = int(c.exec(0, ["sh", "-c", "setsid sleep 300 >/dev/null 2>&1 < /dev/null & echo $!"]).stdout)
    client = _paramiko_client(c, c.hosts[1])
    assert c.exec(2, ["sh", "-c", f"mkdir -p /tmp/m && sshfs {c.hosts[0]}:/tmp /tmp/m"], timeout=20).returncode == 0
    ns_pids = {p for i in range(3) for p in c.processes(i)}
    assert bg in ns_pids and len(ns_pids) >= 4  # sleep, ssh session, sshfs, its ssh, node-0's sftp session
    state = c.state_dir
    t0 = time.monotonic()
    c.stop()
    elapsed = time.monotonic() - t0
    client.close()
    assert _netns_names() == before_ns
    assert _links() == before_links
    assert not state.exists()
    alive = [p for p in [*sshd_pids, *ns_pids] if cluster_mod._pid_alive(p)]
    assert alive == []
    assert elapsed < 10
    c.stop()  # idempotent


def test_two_clusters_at_once_use_different_subnets(ssh_cluster_factory) -> None:
    a, b = ssh_cluster_factory(1), ssh_cluster_factory(1)
    assert a.subnet != b.subnet
    assert not set(a.namespaces) & set(b.namespaces)
    for c in (a, b):
        client = _paramiko_client(c, c.hosts[0])
        _, stdout, _ = client.exec_command("hostname")
        assert stdout.read().decode().strip() == "node-0"
        client.close()


_CHILD = """
import sys, time
sys.path.insert(0, {root!r})
from tests.infra.cluster import SshCluster
c = SshCluster(2).start()
print(c.run_id, *c.namespaces, *(c.sshd_pid(i) for i in range(2)), flush=True)
time.sleep(60)
"""


def _start_child_cluster() -> tuple[subprocess.Popen, str, list[str], list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", _CHILD.format(root=str(REPO_ROOT))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if len(line) != 5:
        proc.kill()
        pytest.fail(f"child cluster did not start: {line} {proc.stderr.read()}")
    return proc, line[0], line[1:3], [int(p) for p in line[3:]]


def test_sigterm_tears_down(ssh_cluster_factory) -> None:
    proc, _, namespaces, pids = _start_child_cluster()
    try:
        assert set(namespaces) <= _netns_names()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not set(namespaces) & _netns_names()
    assert not any(cluster_mod._pid_alive(p) for p in pids)


@pytest.mark.alone  # another worker's cluster start would sweep the killed run's cluster first
def test_stale_cluster_of_killed_run_is_cleaned(ssh_cluster_factory) -> None:
    proc, run_id, namespaces, pids = _start_child_cluster()
    try:
        # Starting a cluster runs cleanup_stale(): the child's live cluster (run lock held) is left alone.
        live = ssh_cluster_factory(1)
        assert set(namespaces) <= _netns_names()
    finally:
        proc.kill()  # SIGKILL: no chance to clean up
        proc.wait(timeout=10)
    assert set(namespaces) <= _netns_names() and all(cluster_mod._pid_alive(p) for p in pids)
    assert cluster_mod.cleanup_stale() == [run_id]
    assert not set(namespaces) & _netns_names()
    assert not any(cluster_mod._pid_alive(p) for p in pids)
    assert set(live.namespaces) <= _netns_names()
    assert live.exec(0, ["hostname"]).stdout.strip() == "node-0"


def test_missing_prerequisites_fail_in_ci_and_skip_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="sshd missing"):
        require(["sshd missing"], "SSH cluster")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="sshd missing"):
        require(["sshd missing"], "SSH cluster")
    require([], "SSH cluster")  # nothing missing: no-op
    if os.geteuid() == 0:
        assert cluster_mod.requirements_missing(sshfs=True) == []
