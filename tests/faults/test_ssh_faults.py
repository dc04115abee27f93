"""Issue 12 item 6 on the SSH executor, against real sshd hosts in network namespaces the test makes."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.infra.cluster import SshCluster
from tests.infra.fixtures import VENVS

pytestmark = pytest.mark.mpi


def test_item6_sigkill_of_mpibatch_run_ends_the_remote_processes(ssh_cluster3: SshCluster, tmp_path: Path) -> None:
    """Issue 12 item 6: "On SSH, the remote `setsid` group, mpiexec and ranks survive a dead controller.
    Tie every run's lifetime to its controller (on SSH, to the connection)"."""
    c = ssh_cluster3
    spec = {"job": {"id": "kill9"},
            "task": {"id": "t", "instances": 3, "mpi": {"flavor": "mpich"}, "command": "sleep 60",
                     "max_wall_clock": "2m",
                     "environment": {"PATH": f"{VENVS / 'mpich' / 'bin'}:/usr/sbin:/usr/bin:/sbin:/bin"}}}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(spec))
    cli = [sys.executable, "-m", "mpibatch.cli", "run", str(tmp_path / "spec.yaml"), "--executor", "ssh",
           "--hosts", ",".join(c.hosts), "--user", "root", "--key", str(c.client_key_path),
           "--known-hosts", str(c.known_hosts_path), "--runs-dir", str(tmp_path / "runs")]
    p = subprocess.Popen(cli, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL,
                         cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and p.poll() is None:  # the application runs on every host
            if all(any("sleep 60" in cmd for _, cmd in c.process_table(i)) for i in range(3)):
                break
            time.sleep(0.1)
        assert p.poll() is None and all(any("sleep 60" in cmd for _, cmd in c.process_table(i)) for i in range(3))
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    left = c.wait_idle(timeout=5)
    assert not left, f"processes of the killed run still alive on the hosts: {left}"
