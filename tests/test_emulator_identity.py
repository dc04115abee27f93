"""Who a task runs as in `mpibatch emulate` (run as root): never the emulator's own user.

Batch's rule ("Run tasks under user accounts in Batch"): a task runs as a non-admin auto-user unless its
`userIdentity` asks for an admin one; an admin task is root of its node, and of nothing else. Here an
elevated start task is root inside its node only - writes to /etc, /usr/local/bin and /tmp do not reach
the host - and a non-admin task is not root even inside; both write their node's directory."""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import require
from tests.test_emulator_spot import add_task, call, get, make_pool, nodes, wait_for

pytestmark = pytest.mark.azure
ADMIN = {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Any]:
    require([] if os.geteuid() == 0 else ["root (the emulator switches to each node's user)"], "task identity")
    emu = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        yield BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, emu.key))
    finally:
        emu.stop()


def node_file(client: Any, pool: str, node: str, path: str) -> str:
    return b"".join(client.download_node_file(pool, node, path)).decode()


def test_an_elevated_start_task_is_root_in_its_node_only(client: Any, tmp_path: Path) -> None:
    token = secrets.token_hex(6)
    outside = [Path(f"/etc/mpibatch-test-{token}"), Path(f"/usr/local/bin/mpibatch-x-{token}"),
               Path(f"/tmp/mpibatch-identity-{token}"), Path(f"/dev/shm/mpibatch-identity-{token}")]
    script = "; ".join([f"id -u; echo changed > {outside[0]}; echo etc=$?", f"echo x > {outside[1]}; echo usr=$?",
                        f"umount /tmp; echo x > {outside[2]}; echo tmp=$?", f"echo x > {outside[3]}; echo shm=$?",
                        "echo mine > $AZ_BATCH_NODE_SHARED_DIR/ok; echo shared=$?"])
    body = {"id": "idp", "vmSize": "standard_d2s_v3", "targetDedicatedNodes": 1, "startTask": {
        "commandLine": f"/bin/bash -c '{script}'", "userIdentity": ADMIN, "waitForSuccess": True}}
    assert call(client, "POST", "/pools", body).status_code == 201
    node = wait_for("the start task", lambda: (lambda ns: ns[0] if ns and ns[0]["state"] in (
        "idle", "starttaskfailed") else None)(nodes(client, "idp")))
    assert node["state"] == "idle", node_file(client, "idp", node["id"], "startup/stderr.txt")
    assert node["startTaskInfo"]["exitCode"] == 0
    out = node_file(client, "idp", node["id"], "startup/stdout.txt").splitlines()
    assert out[0] == "0", out  # root inside its node
    assert "shared=0" in out, out
    assert not any(p.exists() for p in outside), [str(p) for p in outside if p.exists()]
    assert "etc=0" not in out and "usr=0" not in out, out  # refused, not silently redirected
    assert node_file(client, "idp", node["id"], "shared/ok") == "mine\n"


def test_tasks_are_non_admin_unless_they_ask(client: Any) -> None:
    make_pool(client, "idt", 1, 0)
    add_task(client, "idj", "idt", {"id": "plain", "commandLine": "/bin/bash -c 'id -u; echo w > mine; cat mine'"})
    add_task(client, "idj", "idt", {"id": "admin", "commandLine": "/bin/bash -c 'id -u'", "userIdentity": ADMIN})
    for task in ("plain", "admin"):
        wait_for(task, lambda t=task: get(client, f"/jobs/idj/tasks/{t}")["state"] == "completed")
    plain = b"".join(client.download_task_file("idj", "plain", "stdout.txt")).decode().split()
    assert plain[0] != "0" and plain[1:] == ["w"], plain
    assert b"".join(client.download_task_file("idj", "admin", "stdout.txt")).decode().split() == ["0"]
    assert get(client, "/jobs/idj/tasks/plain")["executionInfo"]["exitCode"] == 0


def test_a_link_a_task_plants_for_a_later_task_is_never_followed(client: Any) -> None:
    """A task may not prepare another task's directory on its node, nor swap its own for a link: the node's
    root and the directories above task directories stay root's (the emulator, which makes task directories,
    opens their logs and serves their files as root, would otherwise act through such a link). Later tasks
    run in directories of their own."""
    token = secrets.token_hex(6)
    target = Path(f"/etc/mpibatch-link-{token}")
    make_pool(client, "idl", 1, 0)
    plant = ("d=$AZ_BATCH_NODE_ROOT_DIR/workitems/idk/job-1; mkdir -p $d/logs; echo logs=$?; "
             f"ln -s /etc $d/dir; echo dir=$?; ln -s {target} $AZ_BATCH_NODE_ROOT_DIR/x; echo root=$?; "
             'cd /; mv "$AZ_BATCH_TASK_DIR" "$AZ_BATCH_TASK_DIR.old"; echo own=$?')
    add_task(client, "idk", "idl", {"id": "plant", "commandLine": f"/bin/bash -c '{plant}'"})
    wait_for("plant", lambda: get(client, "/jobs/idk/tasks/plant")["state"] == "completed")
    out = b"".join(client.download_task_file("idk", "plant", "stdout.txt")).decode().split()
    assert out == ["logs=1", "dir=1", "root=1", "own=1"], out  # every one refused
    for victim in ("dir", "logs"):
        add_task(client, "idk", "idl", {"id": victim, "commandLine": "/bin/bash -c 'echo pwned > x; cat x'"})
        wait_for(victim, lambda v=victim: get(client, f"/jobs/idk/tasks/{v}")["state"] == "completed")
        t = get(client, f"/jobs/idk/tasks/{victim}")
        assert t["executionInfo"].get("exitCode") == 0, t["executionInfo"]
        assert b"".join(client.download_task_file("idk", victim, "stdout.txt")) == b"pwned\n"
    assert not target.exists() and not Path("/etc/wd").exists() and not Path("/etc/stdout.txt").exists()


def test_a_reimaged_node_s_new_directories_are_its_user_s_again(client: Any) -> None:
    """Reimage wipes and remakes the node's directories: its tasks write its shared directory as before."""
    node = make_pool(client, "idr", 1, 0)[0]
    assert call(client, "POST", f"/pools/idr/nodes/{node['id']}/reimage", {}).status_code == 202
    wait_for("idle after reimage", lambda: nodes(client, "idr")[0]["state"] == "idle")
    add_task(client, "idrj", "idr", {"id": "w", "commandLine": "/bin/bash -c 'echo x > $AZ_BATCH_NODE_SHARED_DIR/f; "
                                                                  "echo shared=$?'"})
    wait_for("w", lambda: get(client, "/jobs/idrj/tasks/w")["state"] == "completed")
    assert b"".join(client.download_task_file("idrj", "w", "stdout.txt")) == b"shared=0\n"
