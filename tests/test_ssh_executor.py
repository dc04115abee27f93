"""The SSH executor on a real multi-host cluster (network namespaces with their own sshd: tests/infra)."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from mpibatch.errors import InfraError, SpecError
from mpibatch.executors.ssh import SshExecutor
from mpibatch.spec import parse_spec
from tests.infra.cluster import SshCluster
from tests.infra.fixtures import REPO_ROOT, ssh_cluster3, ssh_cluster_factory  # noqa: F401
from tests.infra.signals import default_sigint

pytestmark = pytest.mark.cluster

VENVS = REPO_ROOT / ".venvs"
HELLO = """\
from mpi4py import MPI
comm = MPI.COMM_WORLD
names = comm.gather(MPI.Get_processor_name(), root=0)
total = comm.allreduce(comm.rank + 1)
if comm.rank == 0:
    print("NAMES", ",".join(sorted(set(names))))
    print("RANKS", comm.size, "SUM", total)
"""


def _spec(tmp: Path, job: str, *, flavor: str = "mpich", instances: int = 3, ppn: int = 1,
          command: Any = ("python3", "hello.py"), **task: Any) -> Any:
    (tmp / "hello.py").write_text(HELLO)
    data = {"job": {"id": job},
            "task": {"id": "t", "instances": instances, "mpi": {"flavor": flavor, "processes_per_node": ppn},
                     "command": list(command) if not isinstance(command, str) else command,
                     "common_files": [{"source": "hello.py", "path": "hello.py"}],
                     "max_wall_clock": "60s", **task}}
    return parse_spec(data, tmp)


def _executor(c: SshCluster, tmp: Path, flavor: str = "mpich", hosts: list[str] | None = None,
              **kw: Any) -> SshExecutor:
    kw.setdefault("known_hosts", str(c.known_hosts_path))
    return SshExecutor(hosts or c.hosts, user="root", key=str(c.client_key_path), runs_dir=str(tmp / "runs"),
                       remote_path_prepend=[str(VENVS / flavor / "bin")], **kw)


def _assert_idle(c: SshCluster) -> None:
    left = c.wait_idle(timeout=10)
    assert not left, f"processes left on the hosts: {left}"


@pytest.mark.parametrize("flavor,ppn", [("intelmpi", 2), ("openmpi", 1), ("mpich", 2)])
def test_mpi4py_ranks_span_the_three_hosts(ssh_cluster3: SshCluster, tmp_path: Path, flavor: str, ppn: int) -> None:
    c = ssh_cluster3
    r = _executor(c, tmp_path, flavor).submit(_spec(tmp_path, f"hello-{flavor}", flavor=flavor, ppn=ppn)).result()
    out = r.instances[0].stdout
    assert r.succeeded, (r.failure, out, r.instances[0].stderr)
    n = 3 * ppn
    assert f"NAMES {','.join(c.names)}" in out
    assert f"RANKS {n} SUM {n * (n + 1) // 2}" in out
    assert [i.host for i in r.instances] == c.hosts
    assert all(i.coordination_exit_code == 0 for i in r.instances)
    # Batch's directory layout, collected per instance.
    assert Path(r.output_dir, "0", "stdout.txt").read_text() == (Path(r.instances[0].stdout_path).read_text())
    _assert_idle(c)


def test_double_star_collects_no_mpibatch_file_over_ssh(ssh_cluster3: SshCluster, tmp_path: Path) -> None:
    """Issue 19 item 8 on SSH hosts: the node's .mpibatch-* files and a writer's temporary are not outputs."""
    c = ssh_cluster3
    spec = _spec(tmp_path, "stars", instances=2, coordination="echo mine > mine.txt; : > .mpibatch-0a1b2c3d.part",
                 outputs=[{"pattern": "**"}])
    r = _executor(c, tmp_path).submit(spec).result()
    assert r.succeeded, r.failure
    for inst in r.instances:
        assert "mine.txt" in inst.files, inst.files
        assert not [f for f in inst.files if f.rsplit("/", 1)[-1].startswith(".mpibatch-")], inst.files
    _assert_idle(c)


def test_imb_pingpong_between_two_hosts(ssh_cluster3: SshCluster, tmp_path: Path) -> None:
    c = ssh_cluster3
    venv = VENVS / "intelmpi"
    spec = _spec(tmp_path, "imb", flavor="intelmpi", instances=2, ppn=1,
                 command=["IMB-MPI1", "PingPong", "-msglog", "0:4", "-iter", "200"],
                 environment={"LD_LIBRARY_PATH": str(venv / "lib")})
    r = _executor(c, tmp_path, "intelmpi").submit(spec).result()
    out = r.instances[0].stdout
    assert r.succeeded, (r.failure, out, r.instances[0].stderr)
    assert "Benchmarking PingPong" in out and "#bytes #repetitions" in out
    assert len(r.instances) == 2
    _assert_idle(c)


WRITE_ON_HOST_3 = ('[ "$(hostname)" != node-2 ] || echo "from node-2" > "$AZ_BATCH_TASK_SHARED_DIR/from-node-2.txt"')


@pytest.mark.parametrize("shared", ["sshfs", "none"])
def test_sshfs_shared_dir(ssh_cluster3: SshCluster, tmp_path: Path, shared: str) -> None:
    c = ssh_cluster3
    job = f"shared-{shared}"
    spec = _spec(tmp_path, job, command=WRITE_ON_HOST_3, shared_dir=shared)
    r = _executor(c, tmp_path).submit(spec).result()
    assert r.succeeded, (r.failure, r.instances[0].stderr, [i.stderr for i in r.instances])
    on_primary = c.node_path(0, f"/tmp/mpibatch/workitems/{job}/job-1/t/shared/from-node-2.txt")
    on_host_3 = c.node_path(2, f"/tmp/mpibatch/workitems/{job}/job-1/t/shared/from-node-2.txt")
    if shared == "sshfs":
        assert on_primary.read_text() == "from node-2\n"
    else:
        assert not on_primary.exists()
        assert on_host_3.read_text() == "from node-2\n"  # written locally: nothing is shared
    # The sshfs mount is gone with the task.
    r2 = c.exec(2, ["sh", "-c", "grep -c fuse.sshfs /proc/self/mounts || true"])
    assert r2.stdout.strip() == "0", r2.stdout
    _assert_idle(c)


def test_unknown_host_key_is_refused(ssh_cluster3: SshCluster, tmp_path: Path) -> None:
    c = ssh_cluster3
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(SpecError) as e:
        _executor(c, tmp_path, known_hosts=str(empty)).submit(_spec(tmp_path, "keys")).result()
    msg = str(e.value)
    assert "unknown" in msg and c.hosts[0] in msg and "ssh-keyscan" in msg
    assert "--insecure-accept-unknown-host-keys" in msg
    # A changed key (node-1's key under node-0's address) is refused too.
    lines = c.known_hosts_path.read_text().splitlines()
    wrong = tmp_path / "wrong"
    wrong.write_text(f"{c.hosts[0]} {lines[1].split(' ', 1)[1]}\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(SpecError, match="CHANGED"):
        _executor(c, tmp_path, known_hosts=str(wrong)).submit(_spec(tmp_path, "keys")).result()
    # The loudly named opt-out runs.
    r = _executor(c, tmp_path, known_hosts=str(empty), insecure_accept_unknown_host_keys=True).submit(
        _spec(tmp_path, "keys")).result()
    assert r.succeeded, r.failure


def test_unreachable_host_fails_fast(ssh_cluster3: SshCluster, tmp_path: Path) -> None:
    c = ssh_cluster3
    assert c.subnet is not None
    ghost = str(c.subnet.network_address + 200)
    t0 = time.monotonic()
    with pytest.raises(InfraError) as e:
        _executor(c, tmp_path, hosts=[c.hosts[0], ghost, c.hosts[2]]).submit(_spec(tmp_path, "ghost")).result()
    assert time.monotonic() - t0 < 8
    assert ghost in str(e.value) and "unreachable" in str(e.value)
    _assert_idle(c)


def test_host_dropping_mid_run_fails_the_task_and_cleans_the_others(ssh_cluster_factory: Any, tmp_path: Path) -> None:
    c = ssh_cluster_factory(3)
    running = threading.Event()

    def progress(phase: str, detail: str) -> None:
        if phase == "running":
            running.set()

    ex = _executor(c, tmp_path, progress=progress)
    spec = _spec(tmp_path, "drop", command="sleep 30")
    killer = threading.Thread(target=lambda: running.wait(30) and (time.sleep(1.0), c.kill_sshd(2)))
    killer.start()
    t0 = time.monotonic()
    r = ex.submit(spec).result()
    killer.join(10)
    assert time.monotonic() - t0 < 25
    assert not r.succeeded and r.failure is not None
    assert c.hosts[2] in r.failure.reason and "lost" in r.failure.reason, r.failure
    assert r.failure.instance == 2
    left = c.wait_idle(timeout=10)  # nodes 0 and 1 (node 2 is down)
    assert not left, f"processes left on the hosts still up: {left}"


def test_sigint_to_the_cli_cleans_every_host(ssh_cluster3: SshCluster, tmp_path: Path) -> None:
    c = ssh_cluster3
    (tmp_path / "hello.py").write_text(HELLO)
    spec = {"job": {"id": "sigint"},
            "task": {"id": "t", "instances": 3, "mpi": {"flavor": "mpich"}, "command": "sleep 60",
                     "max_wall_clock": "2m",
                     # the hosts' PATH: where this machine's MPICH venv is (shared filesystem)
                     "environment": {"PATH": f"{VENVS / 'mpich' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cli = [sys.executable, "-m", "mpibatch.cli", "run", str(tmp_path / "spec.yaml"), "--executor", "ssh",
           "--hosts", ",".join(c.hosts), "--user", "root", "--key", str(c.client_key_path),
           "--known-hosts", str(c.known_hosts_path), "--runs-dir", str(tmp_path / "runs")]
    p = subprocess.Popen(cli, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         text=True, cwd=tmp_path, preexec_fn=default_sigint)
    try:
        deadline = time.monotonic() + 30
        # Wait until the application runs on the hosts (sleep processes on all three).
        while time.monotonic() < deadline and p.poll() is None:
            if all(any("sleep 60" in cmd for _, cmd in c.process_table(i)) for i in range(3)):
                break
            time.sleep(0.1)
        assert p.poll() is None, p.communicate()
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 1, (out, err)
    assert "interrupted" in out + err, (out, err)
    _assert_idle(c)


def test_more_instances_than_hosts_is_bad_input_before_anything_starts(ssh_cluster3: SshCluster,
                                                                      tmp_path: Path) -> None:
    """Two hosts for three instances: exit 2 with the one message, no progress line, no runs dir, and
    nothing on the hosts (no connection was needed to know)."""
    c = ssh_cluster3
    spec = {"job": {"id": "few"}, "task": {"id": "t", "instances": 3, "mpi": {"flavor": "mpich"},
                                           "command": "hostname", "max_wall_clock": "60s"}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    runs = tmp_path / "runs"
    node_root = "/tmp/mpibatch-few-hosts"
    cli = [sys.executable, "-m", "mpibatch.cli", "run", str(tmp_path / "spec.yaml"), "--executor", "ssh",
           "--hosts", ",".join(c.hosts[:2]), "--user", "root", "--key", str(c.client_key_path),
           "--known-hosts", str(c.known_hosts_path), "--runs-dir", str(runs), "--node-root", node_root]
    p = subprocess.run(cli, capture_output=True, text=True, stdin=subprocess.DEVNULL, cwd=tmp_path, timeout=60)
    assert p.returncode == 2, (p.stdout, p.stderr)
    out = p.stdout + p.stderr
    assert "the task needs 3 instances (one per host) but 2 host(s) were given" in out, out
    assert "give at least 3 hosts or lower task.instances" in out, out
    assert "starting" not in out, out
    assert not runs.exists()
    for i in range(2):
        r = c.exec(i, ["sh", "-c", f"test -e {node_root} && echo present || echo absent"])
        assert r.stdout.strip() == "absent", r.stdout
    _assert_idle(c)
