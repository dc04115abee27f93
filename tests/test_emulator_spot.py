"""Spot / low-priority nodes in `mpibatch emulate`, and their preemption on demand.

The rules checked come from "Use Spot VMs with Batch workloads" (a preempted node is evicted and all its
work lost; the task that was running is requeued to run on another node; Batch seeks back to the pool's
target), the REST reference (node state `preempted`, `isDedicated`, `currentLowPriorityNodes`,
`executionInfo.requeueCount` as distinct from `retryCount`) and "Compute node environment variables"
(`AZ_BATCH_NODE_IS_DEDICATED`). Requests go through azure-batch 15.1's own pipeline; the preemption through
the emulator's operator path and through `mpibatch emulate preempt`.
"""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.emulator import MPIBATCH, EmulatorProcess, processes_mentioning, wait_for
from tests.infra.fixtures import require

pytestmark = pytest.mark.azure
API = "2025-06-01"




@pytest.fixture
def emu(tmp_path: Path) -> Iterator[EmulatorProcess]:
    e = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        yield e
    finally:
        e.stop()


@pytest.fixture
def client(emu: EmulatorProcess) -> Any:
    return emu.batch_client()


def call(client: Any, method: str, path: str, body: Any = None) -> Any:
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    url = f"{client._config.endpoint}{path}?api-version={API}"
    data = json.dumps(body).encode() if body is not None else None
    try:
        return client.send_request(HttpRequest(method, url, content=data, headers={
            "Content-Type": "application/json; odata=minimalmetadata"}))
    except HttpResponseError as e:
        return e.response


def get(client: Any, path: str) -> dict[str, Any]:
    resp = call(client, "GET", path)
    assert resp.status_code == 200, resp.text()
    return dict(resp.json())


def nodes(client: Any, pool: str) -> list[dict[str, Any]]:
    return list(get(client, f"/pools/{pool}/nodes")["value"])


def make_pool(client: Any, pool: str, dedicated: int, spot: int, **extra: Any) -> list[dict[str, Any]]:
    body = {"id": pool, "vmSize": "standard_d2s_v3", "targetDedicatedNodes": dedicated,
            "targetLowPriorityNodes": spot, **extra}
    assert call(client, "POST", "/pools", body).status_code == 201
    return list(wait_for("the pool's nodes idle", lambda: (lambda ns: ns if len(ns) == dedicated + spot and all(
        n["state"] == "idle" for n in ns) else None)(nodes(client, pool))))


def add_task(client: Any, job: str, pool: str, task: dict[str, Any]) -> None:
    if call(client, "GET", f"/jobs/{job}").status_code == 404:
        assert call(client, "POST", "/jobs", {"id": job, "poolInfo": {"poolId": pool}}).status_code == 201
    assert call(client, "POST", f"/jobs/{job}/tasks", task).status_code == 201


def back_to_target(client: Any, pool: str, spot: int, gone: str) -> list[dict[str, Any]]:
    """The pool seeks back to its target: the preempted node leaves, a fresh Spot node joins."""
    def check() -> list[dict[str, Any]] | None:
        ns = nodes(client, pool)
        fresh = [n for n in ns if not n["isDedicated"] and n["state"] in ("idle", "running")]
        return ns if len(fresh) == spot and gone not in {n["id"] for n in ns} else None
    ns = wait_for("the pool back at its target", check)
    assert get(client, f"/pools/{pool}")["currentLowPriorityNodes"] == spot
    return ns


def test_spot_pool_nodes_say_they_are_not_dedicated(client: Any) -> None:
    ns = make_pool(client, "mixed", 1, 2)
    pool = get(client, "/pools/mixed")
    assert (pool["targetDedicatedNodes"], pool["targetLowPriorityNodes"]) == (1, 2)
    assert (pool["currentDedicatedNodes"], pool["currentLowPriorityNodes"]) == (1, 2)
    assert sorted(n["isDedicated"] for n in ns) == [False, False, True]
    assert all(n["id"].endswith("_d" if n["isDedicated"] else "_p") for n in ns)
    # each task sees its node's kind; a dedicated node cannot be preempted
    add_task(client, "kinds", "mixed", {"id": "t", "commandLine": "/bin/bash -c 'echo $AZ_BATCH_NODE_IS_DEDICATED'"})
    t = wait_for("the task", lambda: (lambda t: t if t["state"] == "completed" else None)(
        get(client, "/jobs/kinds/tasks/t")))
    node = next(n for n in ns if n["id"] == t["nodeInfo"]["nodeId"])
    out = b"".join(client.download_task_file("kinds", "t", "stdout.txt")).decode()
    assert out == ("true\n" if node["isDedicated"] else "false\n")
    dedicated = next(n for n in ns if n["isDedicated"])
    resp = call(client, "POST", f"/_emulator/pools/mixed/nodes/{dedicated['id']}/preempt")
    assert resp.status_code == 409 and resp.json()["code"] == "NodeNotPreemptible"
    # resize both kinds
    assert call(client, "POST", "/pools/mixed/resize", {"targetDedicatedNodes": 0,
                                                         "targetLowPriorityNodes": 3}).status_code == 202
    ns = wait_for("3 Spot nodes", lambda: (lambda ns: ns if len(ns) == 3 and all(
        not n["isDedicated"] for n in ns) else None)(nodes(client, "mixed")))
    pool = get(client, "/pools/mixed")
    assert (pool["currentDedicatedNodes"], pool["currentLowPriorityNodes"]) == (0, 3)


def test_a_preempted_spot_node_requeues_its_task_which_then_completes(emu: EmulatorProcess, client: Any) -> None:
    make_pool(client, "spot", 0, 2)
    # the first run waits to be preempted; a requeued run finishes
    add_task(client, "j", "spot", {"id": "t", "commandLine": "/bin/bash -c 'echo run; sleep 3; echo finished'",
                                   "constraints": {"maxTaskRetryCount": 2}})
    running = wait_for("the task running", lambda: (lambda t: t if t["state"] == "running" else None)(
        get(client, "/jobs/j/tasks/t")))
    victim = running["nodeInfo"]["nodeId"]
    wait_for("the task's process on its node before the preemption", lambda: processes_mentioning(victim),
             timeout=15)  # "running" is reported as the process starts
    assert call(client, "POST", f"/_emulator/pools/spot/nodes/{victim}/preempt").status_code == 202
    assert get(client, f"/pools/spot/nodes/{victim}")["state"] == "preempted"
    wait_for("no process left on the preempted node", lambda: not processes_mentioning(victim), timeout=15)
    again = call(client, "POST", f"/_emulator/pools/spot/nodes/{victim}/preempt")
    assert again.status_code in (404, 409)  # already preempted (409) or already replaced (404)

    done = wait_for("the task completed", lambda: (lambda t: t if t["state"] == "completed" else None)(
        get(client, "/jobs/j/tasks/t")))
    info = done["executionInfo"]
    assert (info["result"], info["exitCode"], info["requeueCount"], info["retryCount"]) == ("success", 0, 1, 0)
    assert done["nodeInfo"]["nodeId"] != victim
    ns = back_to_target(client, "spot", 2, victim)
    assert done["nodeInfo"]["nodeId"] in {n["id"] for n in ns}
    assert "task j/t: requeued (its node was preempted), requeue count 1" in "\n".join(emu.log)


def test_the_operator_command_preempts_through_the_running_emulator(emu: EmulatorProcess, client: Any) -> None:
    make_pool(client, "cli", 0, 1)
    # long enough for the preempt command to start and land while the first run still runs, however busy
    add_task(client, "cj", "cli", {"id": "t", "commandLine": "/bin/bash -c 'sleep 10'"})
    victim = wait_for("the task running", lambda: (lambda t: t["nodeInfo"]["nodeId"] if t["state"] == "running"
                                                   else None)(get(client, "/jobs/cj/tasks/t")))
    cmd = [str(MPIBATCH), "emulate", "preempt", "--state-dir", str(emu.state_dir), "cli", victim]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 0, p.stderr
    assert victim in p.stdout and "preempted" in p.stdout
    assert emu.key not in p.stdout + p.stderr
    done = wait_for("the task completed", lambda: (lambda t: t if t["state"] == "completed" else None)(
        get(client, "/jobs/cj/tasks/t")))
    assert (done["executionInfo"]["requeueCount"], done["executionInfo"]["exitCode"]) == (1, 0)
    back_to_target(client, "cli", 1, victim)
    # bad input: a node that is not there, a state dir no emulator uses
    p = subprocess.run([*cmd[:-1], "nope"], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and "nope" in p.stderr, p.stderr
    p = subprocess.run([str(MPIBATCH), "emulate", "preempt", "--state-dir", str(emu.state_dir.parent / "none"), "cli",
                        victim], capture_output=True, text=True, timeout=60, env=env)
    assert p.returncode == 2 and "--state-dir" in p.stderr, p.stderr


def test_a_preempted_node_requeues_a_multi_instance_task_whole(emu: EmulatorProcess, client: Any) -> None:
    require([] if os.geteuid() == 0 else ["root (rehearsal nodes in namespaces)"], "multi-instance tasks")
    make_pool(client, "mpi", 0, 3, enableInterNodeCommunication=True)
    add_task(client, "mj", "mpi", {
        "id": "m", "commandLine": "/bin/bash -c 'sleep 4; echo primary done'",
        "multiInstanceSettings": {"numberOfInstances": 2, "coordinationCommandLine": "/bin/true"}})
    wait_for("the task running", lambda: get(client, "/jobs/mj/tasks/m")["state"] == "running")
    busy = [n["id"] for n in nodes(client, "mpi") if n["state"] == "running"]
    assert len(busy) == 2
    victim = busy[1]
    assert call(client, "POST", f"/_emulator/pools/mpi/nodes/{victim}/preempt").status_code == 202
    requeued = wait_for("the task requeued", lambda: (lambda t: t if t["executionInfo"].get("requeueCount") else None)(
        get(client, "/jobs/mj/tasks/m")))
    assert requeued["state"] in ("active", "preparing", "running")
    done = wait_for("the task completed", lambda: (lambda t: t if t["state"] == "completed" else None)(
        get(client, "/jobs/mj/tasks/m")), timeout=120)
    info = done["executionInfo"]
    assert (info["result"], info["exitCode"], info["requeueCount"], info["retryCount"]) == ("success", 0, 1, 0)
    subs = get(client, "/jobs/mj/tasks/m/subtasksinfo")["value"]
    ran_on = {done["nodeInfo"]["nodeId"]} | {s["nodeInfo"]["nodeId"] for s in subs}
    assert len(ran_on) == 2 and victim not in ran_on
    # the files are the requeued run's, not the evicted one's
    assert b"".join(client.download_task_file("mj", "m", "stdout.txt")) == b"primary done\n"
    back_to_target(client, "mpi", 3, victim)


def test_submit_and_status_show_the_preemption_and_the_requeue(tmp_path: Path) -> None:
    """mpibatch's own Azure path: `submit` prints the requeue as it happens, `-o json` and `status` carry it."""
    from tests.infra.fixtures import azurite_missing, mpi_env
    from tests.test_emulator_cli import cli, hello

    require(azurite_missing() + ([] if os.geteuid() == 0 else ["root (rehearsal nodes)"]), "Azurite, root")
    emu = EmulatorProcess(tmp_path / "state", env=mpi_env("mpich")).start()
    try:
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        client = BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, emu.key))
        make_pool(client, "mpipool", 0, 3, enableInterNodeCommunication=True)
        # the real program after a pause in which the preemption comes
        spec = hello(tmp_path, "spot-emu", command=["/bin/bash", "-c", "sleep 4 && exec python3 hello.py"],
                     mpi={"flavor": "mpich", "processes_per_node": 1}, instances=2)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
        submit = subprocess.Popen([str(MPIBATCH), "submit", str(spec), "--output", "json", "--runs-dir",
                                   str(tmp_path / "runs")], env={**env, **emu.exports}, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        try:
            wait_for("the task running", lambda: (lambda r: r.status_code == 200 and r.json()["state"] == "running")(
                call(client, "GET", "/jobs/spot-emu/tasks/hello-mpi")))
            victim = next(n["id"] for n in nodes(client, "mpipool") if n["state"] == "running")
            pre = cli(["emulate", "preempt", "--state-dir", str(emu.state_dir), "mpipool", victim], emu)
            assert pre.returncode == 0, pre.stderr
            out, err = submit.communicate(timeout=240)
        finally:
            if submit.poll() is None:
                submit.kill()
                submit.wait(10)
        assert submit.returncode == 0, out + err
        assert "preempted: requeued (1)" in err, err
        result = json.loads(out)
        assert (result["state"], result["exit_code"], result["requeues"], result["attempts"]) == ("completed", 0, 1, 1)
        p = cli(["status", "spot-emu", "hello-mpi"], emu)
        assert p.returncode == 0 and "requeued 1x (preempted)" in p.stdout, p.stdout + p.stderr
        s = json.loads(cli(["status", "spot-emu", "hello-mpi", "--output", "json"], emu).stdout)
        assert s["requeues"] == 1
    finally:
        emu.stop()
