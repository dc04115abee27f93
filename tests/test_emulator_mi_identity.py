"""Who a multi-instance task runs as in `mpibatch emulate` (run as root): its node's user, as every other task.

Batch's rule ("Run tasks under user accounts in Batch"): a non-admin auto-user unless `userIdentity` asks for
an admin one. Here the coordination command, the primary's command and every MPI rank (started on the other
nodes through the launchers' remote shell, as over ssh on a pool) run as the primary node's host user: a
non-admin task is not root even inside its nodes, an elevated one is root there only; neither changes the host
outside its node's directory - though the MPI runtime, whose venv is under a directory that user may not enter,
runs (exposed read-only into the nodes)."""
from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from mpibatch.emulator.multiuser import exposure, image_paths
from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import mpi_env, require
from tests.test_emulator_spot import add_task, get, make_pool, wait_for

pytestmark = pytest.mark.azure
ADMIN = {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
NONADMIN = {"autoUser": {"scope": "pool", "elevationLevel": "nonadmin"}}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    require([] if os.geteuid() == 0 else ["root (the emulator switches to each node's user)"], "task identity")
    emu = EmulatorProcess(tmp_path / "state", storage="none", env=mpi_env("mpich")).start()
    try:
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        yield BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, emu.key))
    finally:
        emu.stop()


def rank_script(outside: dict[str, Path]) -> str:
    """What each MPI rank prints: its uid, host, and each write's status outside its node (0: written)."""
    writes = "; ".join(f"(echo x > {p}) 2>/dev/null; echo {name}=$?" for name, p in outside.items())
    return f"echo uid=$(id -u) host=$(hostname); {writes}; echo mine > $AZ_BATCH_NODE_SHARED_DIR/ok && echo own=ok"


def run_mpi_task(client: Any, identity: dict[str, Any], outside: dict[str, Path]) -> list[str]:
    make_pool(client, "mip", 2, 0, enableInterNodeCommunication=True)
    rank = rank_script(outside).replace("'", "'\"'\"'")
    cmd = ("/bin/bash -c 'cat $AZ_BATCH_NODE_SHARED_DIR/coord; "
           f"mpiexec -hosts $AZ_BATCH_HOST_LIST -n 2 -ppn 1 /bin/bash -c '\"'\"'{rank}'\"'\"''")
    add_task(client, "mij", "mip", {
        "id": "mpi", "commandLine": cmd, "userIdentity": identity,
        "multiInstanceSettings": {"numberOfInstances": 2,
                                  "coordinationCommandLine": "/bin/bash -c 'echo coord=$(id -u) > "
                                                             "$AZ_BATCH_NODE_SHARED_DIR/coord'"}})
    t = wait_for("the MPI task", lambda: (lambda t: t if t["state"] == "completed" else None)(
        get(client, "/jobs/mij/tasks/mpi")))
    out = b"".join(client.download_task_file("mij", "mpi", "stdout.txt")).decode()
    err = b"".join(client.download_task_file("mij", "mpi", "stderr.txt")).decode()
    assert t["executionInfo"].get("exitCode") == 0, (t["executionInfo"], out, err)
    return out.splitlines()


def outside_paths(tmp_path: Path) -> dict[str, Path]:
    """The host's /etc, the checkout (where the MPI runtime lives), the test's own directory (which the
    emulator's user may write); /tmp and /dev/shm, which are the task's own (written there, never the host's)."""
    name = f"mpibatch-mi-{secrets.token_hex(6)}"
    return {"etc": Path("/etc") / name, "checkout": Path.cwd() / name, "test": tmp_path / name,
            "python": Path(sys.base_prefix) / name,  # exposed read-only into the nodes
            "tmp": Path("/tmp") / name, "shm": Path("/dev/shm") / name}


def check_ranks(lines: list[str], uid: str, outside: dict[str, Path]) -> None:
    ranks = [line for line in lines if line.startswith("uid=")]
    assert sorted(ranks) == [f"uid={uid} host=node-0", f"uid={uid} host=node-1"], lines  # both nodes, both ranks
    assert lines.count("own=ok") == 2, lines
    for name in ("etc", "checkout", "test", "python"):  # refused, not silently redirected
        assert lines.count(f"{name}=1") == 2, (name, lines)
    assert not any(p.exists() for p in outside.values()), [str(p) for p in outside.values() if p.exists()]


def test_a_non_admin_mpi_task_is_not_root_on_any_node_and_writes_only_its_nodes(client: Any, tmp_path: Path) -> None:
    outside = outside_paths(tmp_path)
    lines = run_mpi_task(client, NONADMIN, outside)
    assert lines[0] == "coord=1000", lines  # the coordination command too
    check_ranks(lines, "1000", outside)


def test_an_elevated_mpi_task_is_root_inside_its_nodes_only(client: Any, tmp_path: Path) -> None:
    outside = outside_paths(tmp_path)
    lines = run_mpi_task(client, ADMIN, outside)
    assert lines[0] == "coord=0", lines
    check_ranks(lines, "0", outside)


def _st(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 0, 0, 1, uid, uid, 0, 0, 0, 0))


def test_exposure_covers_the_first_closed_directory_and_binds_the_image_back() -> None:
    modes = {"/": 0o755, "/root": 0o700, "/root/py": 0o755, "/root/py/3.11": 0o755, "/tmp": 0o1777,
             "/tmp/run": 0o755, "/opt": 0o755, "/opt/mpi": 0o755}
    covers, binds = exposure(7, ["/root/py/3.11", "/opt/mpi"], ["/tmp/run"], ["/tmp"],
                             stat_of=lambda p: _st(modes[p]))
    assert covers == ["/root", "/tmp"]
    assert binds == [("/tmp/run", True), ("/root/py/3.11", False)]  # /opt/mpi is open: left as it is


def test_a_task_cannot_swap_its_directory_for_a_link_to_what_only_root_reads(client: Any) -> None:
    """The emulator reads a run's logs back, and serves them, as root: a task that replaces its own directory
    by a symlink to a directory only root may read must get nothing from there. Its directory's parent is
    not the task's to change (the node's root and the directories above task directories stay root's)."""
    secret = Path("/root") / f"mpibatch-secret-{secrets.token_hex(6)}"
    secret.mkdir(mode=0o700)
    try:
        for name in ("stdout.txt", "stderr.txt"):
            (secret / name).write_text("SECRET\n")
        make_pool(client, "mil", 2, 0, enableInterNodeCommunication=True)
        d = '"$AZ_BATCH_TASK_DIR"'
        swap = f"cd /; mv {d} {d}.old 2>/dev/null; echo mv=$?; ln -sfT {secret} {d} 2>/dev/null; echo ln=$?"
        add_task(client, "mlj", "mil", {"id": "swap", "commandLine": f"/bin/bash -c '{swap}'",
                                        "multiInstanceSettings": {"numberOfInstances": 2,
                                                                  "coordinationCommandLine": "/bin/true"}})
        t = wait_for("the task", lambda: (lambda t: t if t["state"] == "completed" else None)(
            get(client, "/jobs/mlj/tasks/swap")))
        out = b"".join(client.download_task_file("mlj", "swap", "stdout.txt")).decode()
        err = b"".join(client.download_task_file("mlj", "swap", "stderr.txt")).decode()
        assert "SECRET" not in out + err, (out, err, t["executionInfo"])
        assert "mv=0" not in out and "ln=0" not in out and "mv=" in out, out  # the task ran; its swap was refused
    finally:
        for f in secret.iterdir():
            f.unlink()
        secret.rmdir()


def test_a_retried_non_admin_mpi_task_runs_again_as_the_same_user_on_fresh_nodes(client: Any) -> None:
    """A retry (maxTaskRetryCount) restarts the nodes: the same user, the same hostnames, MPI across them."""
    make_pool(client, "mir", 2, 0, enableInterNodeCommunication=True)
    count = "f=$AZ_BATCH_NODE_SHARED_DIR/n; n=$(cat $f 2>/dev/null || echo 0); echo $((n+1)) > $f"
    rank = '/bin/sh -c "echo \\$(id -u)@\\$(hostname)"'
    cmd = f"{count}; echo attempt=$n; mpiexec -hosts $AZ_BATCH_HOST_LIST -n 2 -ppn 1 {rank}; [ $n -ge 1 ]"
    add_task(client, "mrj", "mir", {"id": "again", "commandLine": f"/bin/bash -c '{cmd}'", "userIdentity": NONADMIN,
                                    "constraints": {"maxTaskRetryCount": 1},
                                    "multiInstanceSettings": {"numberOfInstances": 2,
                                                              "coordinationCommandLine": "/bin/true"}})
    t = wait_for("the task", lambda: (lambda t: t if t["state"] == "completed" else None)(
        get(client, "/jobs/mrj/tasks/again")))
    out = b"".join(client.download_task_file("mrj", "again", "stdout.txt")).decode().split()
    assert t["executionInfo"]["retryCount"] == 1 and t["executionInfo"].get("exitCode") == 0, (t["executionInfo"], out)
    assert out[0] == "attempt=1" and sorted(out[1:]) == ["1000@node-0", "1000@node-1"], out


def test_a_venv_on_the_path_is_exposed_whole(tmp_path: Path) -> None:
    """A venv's Python needs its pyvenv.cfg and site-packages, not only bin/: with the venv under a directory the
    run covers (a checkout in /tmp), exposing bin/ alone ran the ranks without the venv's packages."""
    base = tmp_path / "python" / "bin"
    base.mkdir(parents=True)
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base}\ninclude-system-site-packages = false\n")
    plain = tmp_path / "tools"
    plain.mkdir()
    found = image_paths({"PATH": f"{venv / 'bin'}:{plain}"})
    assert str(venv) in found and str(venv / "bin") not in found
    assert str(base.parent) in found and str(plain) in found
