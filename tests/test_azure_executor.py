"""The Azure executor and `mpibatch submit/status/collect/pool/job`, end to end.

Real parts: the azure-batch 15.1 client over http with Shared Key, Azurite blob storage, real MPI ranks
(the mpich venv) run by the local executor. The Batch service itself is played by `mpibatch emulate`'s
emulator (in process, tests/infra/batch_emulator.py) - an emulator of the documented REST API, not the
service.

No test reads a secret out of any output: every CLI run is checked for the Batch key, the storage key
and any SAS signature.
"""
from __future__ import annotations

import hashlib
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mpibatch.render import NODE_FILES
from mpibatch.spec import load_spec
from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite, mpi_env, require
from tests.infra.signals import default_sigint

pytestmark = pytest.mark.azure

REPO = Path(__file__).resolve().parents[1]
MPICH_BIN = REPO / ".venvs" / "mpich" / "bin"
MPIBATCH = Path(sys.executable).parent / "mpibatch"
POOL = "mpipool"
SAS_SIG = re.compile(r"\bsig=", re.IGNORECASE)


# ---------------------------------------------------------------------------------------------- helpers

def require_local_nodes() -> None:
    missing = []
    if os.geteuid() != 0:
        missing.append("not root (the local executor emulates nodes with namespaces)")
    for tool in ("unshare", "nsenter"):
        if shutil.which(tool) is None:
            missing.append(f"`{tool}` not found")
    if not (MPICH_BIN / "mpiexec").exists():
        missing.append(f"{MPICH_BIN}/mpiexec not found (scripts/install-test-deps.sh)")
    require(missing, "local executor with MPICH")


@pytest.fixture
def standin(tmp_path: Path) -> Iterator[BatchEmulator]:
    """The Batch emulator, its nodes running real MPI ranks (MPICH), one pool of 3 nodes."""
    require_local_nodes()
    s = BatchEmulator(tmp_path, image=mpi_env("mpich")).start()
    s.add_pool(POOL, nodes=3)
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def store_only(tmp_path: Path) -> Iterator[BatchEmulator]:
    """The Batch emulator with scheduling disabled on its nodes: tasks are stored, not run (no root needed)."""
    s = BatchEmulator(tmp_path, hold=True).start()
    s.add_pool(POOL, nodes=3)
    try:
        yield s
    finally:
        s.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def hello_spec(tmp_path: Path, *, job_id: str | None = None, pool: str = POOL, **task: Any) -> tuple[Path, str, str]:
    """examples/hello copied to tmp_path with job.pool set and a fresh job id; `task` overrides task keys."""
    d = tmp_path / "hello"
    shutil.copytree(REPO / "examples" / "hello", d, dirs_exist_ok=True)
    data = yaml.safe_load((d / "spec.yaml").read_text())
    data["job"]["id"] = job_id or unique("hello")
    data["job"]["pool"] = pool
    data["task"].update(task)
    (d / "spec.yaml").write_text(yaml.safe_dump(data))
    return d / "spec.yaml", data["job"]["id"], data["task"]["id"]


def cli_env(standin: BatchEmulator, azurite: Azurite | None, **overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    env.update(standin.env())
    if azurite is not None:
        env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
    env.update(overrides)
    return env


def assert_no_secrets(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text, "a secret appeared in the output"
    assert not SAS_SIG.search(text), "a SAS signature appeared in the output"


def run_cli(args: list[str], env: dict[str, str], *secrets: str,
            timeout: float = 240) -> subprocess.CompletedProcess[str]:
    p = subprocess.run([str(MPIBATCH), *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert_no_secrets(p.stdout + p.stderr, *secrets)
    return p


def secrets_of(standin: BatchEmulator, azurite: Azurite | None = None) -> tuple[str, ...]:
    return (standin.key,) + ((azurite.key,) if azurite else ())


def container_blobs(azurite: Azurite, job_id: str) -> dict[str, Any]:
    from azure.storage.blob import BlobServiceClient

    from mpibatch.conventions import job_container_name

    c = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        job_container_name(job_id))
    if not c.exists():
        return {}
    return {b.name: b for b in c.list_blobs()}


def md5(path: Path) -> bytes:
    return hashlib.md5(path.read_bytes()).digest()


def nothing_created(standin: BatchEmulator, azurite: Azurite | None, job_id: str) -> None:
    assert standin.jobs == {} and standin.tasks == {}
    assert not any(r.method == "POST" and r.status in (200, 201) for r in standin.requests)
    if azurite is not None:
        assert container_blobs(azurite, job_id) == {}


# ---------------------------------------------------------------------------------------------- end to end

def test_submit_runs_mpi_ranks_persists_outputs_and_collect_brings_them_back(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path)
    env = cli_env(standin, azurite)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], env,
                *secrets_of(standin, azurite))
    assert p.returncode == 0, p.stdout + p.stderr + "\n" + "\n".join(standin.errors)
    result = json.loads(p.stdout)
    assert result["executor"] == "azure" and result["state"] == "completed" and result["exit_code"] == 0
    assert result["missing"] == [] and result["succeeded"]
    assert [i["index"] for i in result["instances"]] == [0, 1, 2]
    # progress: task and subtask states as they change (a poll may miss the short running state)
    assert f"task {task_id}: completed" in p.stderr
    assert re.search(r"subtask \d+: completed on tvmps_\w+", p.stderr)

    # Real MPI: 6 ranks on 3 nodes, the collective checked by rank 0 (the primary's stdout).
    primary = result["instances"][0]
    assert "sum of ranks = 15 (expected 15)" in primary["stdout"]
    nodes = {i["node_id"] for i in result["instances"]}
    assert len(nodes) == 3
    for inst in result["instances"]:
        assert len([f for f in inst["files"] if f.startswith("rank-")]) == 2, inst

    # In Azurite under File Conventions names, the instance in the path.
    blobs = container_blobs(azurite, job_id)
    for i in range(3):
        assert f"{task_id}/$TaskLog/{i}/stdout.txt" in blobs
        assert f"{task_id}/$TaskLog/{i}/instance.json" in blobs
        assert len([b for b in blobs if b.startswith(f"{task_id}/$TaskOutput/{i}/rank-")]) == 2
    assert f"{task_id}/$TaskOutput/0/hello-summary.txt" in blobs, sorted(blobs)
    # inputs: content-addressed, uploaded once; launchers among them
    assert any(b.startswith("mpibatch/inputs/") and b.endswith("/persist.py") for b in blobs)

    # `mpibatch collect` brings everything back again, into a new directory, with matching MD5s.
    p2 = run_cli(["collect", job_id, task_id, "--to", str(tmp_path / "collect"), "--output", "json"], env,
                 *secrets_of(standin, azurite))
    assert p2.returncode == 0, p2.stderr
    collected = json.loads(p2.stdout)
    assert collected["missing"] == []
    out = Path(collected["output_dir"])
    assert out == tmp_path / "collect" / job_id / task_id
    checked = 0
    for name, blob in blobs.items():
        m = re.match(rf"^{re.escape(task_id)}/\$TaskOutput/(\d+)/(.+)$", name)
        if not m:
            continue
        local = out / m.group(1) / m.group(2)
        assert local.is_file(), name
        assert md5(local) == bytes(blob.content_settings.content_md5), name
        checked += 1
    assert checked >= 7
    for i in range(3):
        assert (out / str(i) / "stdout.txt").is_file()
    assert (out / "0" / "stdout.txt").read_text() == primary["stdout"]
    # a second collect never overwrites the first
    p3 = run_cli(["collect", job_id, task_id, "--to", str(tmp_path / "collect"), "--output", "json"], env,
                 *secrets_of(standin, azurite))
    assert json.loads(p3.stdout)["output_dir"] == str(out) + ".2"

    # status, later
    p4 = run_cli(["status", job_id, task_id, "--output", "json"], env, *secrets_of(standin, azurite))
    assert p4.returncode == 0 and json.loads(p4.stdout)["state"] == "completed"
    p5 = run_cli(["status", job_id, task_id], env, *secrets_of(standin, azurite))  # the human table
    assert p5.returncode == 0 and "completed" in p5.stdout and "subtask" in p5.stdout, p5.stdout + p5.stderr
    assert all(r.tasks <= 100 and r.body_bytes < 1_000_000 for r in standin.requests)


def test_collect_reports_what_is_missing_instead_of_skipping_it(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    from azure.storage.blob import BlobServiceClient

    from mpibatch.conventions import job_container_name
    from mpibatch.executors.azure import AzureExecutor

    spec, job_id, task_id = hello_spec(tmp_path, instances=2)
    env = cli_env(standin, azurite)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], env,
                *secrets_of(standin, azurite))
    assert p.returncode == 0, p.stderr
    container = BlobServiceClient.from_connection_string(azurite.connection_string).get_container_client(
        job_container_name(job_id))
    gone = next(b.name for b in container.list_blobs(name_starts_with=f"{task_id}/$TaskOutput/1/"))
    container.delete_blob(gone)
    result = AzureExecutor(env=env, runs_dir=tmp_path / "again").collect(job_id, task_id)
    assert any(gone in m for m in result.missing), result.missing


# ---------------------------------------------------------------------------------------------- refusals

def test_wrong_key_is_a_clear_authentication_error(standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    import base64

    spec, job_id, _ = hello_spec(tmp_path)
    wrong = base64.b64encode(b"not the key" * 6).decode()
    env = cli_env(standin, azurite, AZURE_BATCH_ACCESS_KEY=wrong)
    p = run_cli(["submit", str(spec)], env, wrong, *secrets_of(standin, azurite))
    assert p.returncode == 3, p.stderr
    assert f"authentication failed for Batch account {standin.account}" in p.stderr
    assert "check AZURE_BATCH_ACCESS_KEY" in p.stderr
    assert "Traceback" not in p.stderr
    nothing_created(standin, azurite, job_id)


def test_missing_pool_is_refused_before_anything_is_created(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, _ = hello_spec(tmp_path, job_id=None, pool="no-such-pool")
    p = run_cli(["submit", str(spec)], cli_env(standin, azurite), *secrets_of(standin, azurite))
    assert p.returncode == 2, p.stderr
    assert "pool 'no-such-pool' does not exist" in p.stderr and "mpibatch pool create" in p.stderr
    assert "nothing was submitted" in p.stderr
    nothing_created(standin, azurite, job_id)


def test_pool_without_inter_node_communication_is_refused(
        standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    standin.add_pool("tcp-pool", nodes=3, inter_node=False)
    spec, job_id, _ = hello_spec(tmp_path, pool="tcp-pool")
    p = run_cli(["submit", str(spec)], cli_env(standin, azurite), *secrets_of(standin, azurite))
    assert p.returncode == 2, p.stderr
    assert "enableInterNodeCommunication" in p.stderr and "inter-node communication is off" in p.stderr
    nothing_created(standin, azurite, job_id)


def test_pool_too_small_is_refused(standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    standin.add_pool("small", nodes=2)
    spec, job_id, _ = hello_spec(tmp_path, pool="small")  # 3 instances
    p = run_cli(["submit", str(spec)], cli_env(standin, azurite), *secrets_of(standin, azurite))
    assert p.returncode == 2 and "task.instances" in p.stderr, p.stderr
    nothing_created(standin, azurite, job_id)


def test_storage_unreachable_creates_no_job_or_task(store_only: BatchEmulator, tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from tests.infra.fixtures import AZURITE_KEY

    conn = (f"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{port}/devstoreaccount1;")
    spec, job_id, _ = hello_spec(tmp_path)
    env = cli_env(store_only, None, AZURE_STORAGE_CONNECTION_STRING=conn)
    p = run_cli(["submit", str(spec)], env, store_only.key, AZURITE_KEY, timeout=120)
    assert p.returncode == 3, p.stderr
    assert f"storage account devstoreaccount1 unreachable at 127.0.0.1:{port}" in p.stderr
    nothing_created(store_only, None, job_id)


def test_storage_not_configured_is_bad_input(store_only: BatchEmulator, tmp_path: Path) -> None:
    spec, job_id, _ = hello_spec(tmp_path)
    p = run_cli(["submit", str(spec)], cli_env(store_only, None), store_only.key)
    assert p.returncode == 2 and "AZURE_STORAGE_CONNECTION_STRING" in p.stderr, p.stderr
    nothing_created(store_only, None, job_id)


def test_throttled_requests_are_retried_then_succeed(store_only: BatchEmulator, azurite: Azurite,
                                                     tmp_path: Path) -> None:
    store_only.throttle(2, method="GET", path=r"^/pools/", retry_after=0.2)
    store_only.throttle(1, method="POST", path=r"^/jobs$", retry_after=0.2)
    store_only.throttle(2, method="POST", path=r"/tasks$", retry_after=0.2)
    spec, job_id, task_id = hello_spec(tmp_path)
    p = run_cli(["submit", str(spec), "--no-wait", "--output", "json"], cli_env(store_only, azurite),
                *secrets_of(store_only, azurite))
    assert p.returncode == 0, p.stderr
    assert store_only.throttled == 5
    assert store_only.task(job_id, task_id) is not None
    assert json.loads(p.stdout)["state"] == "active"
    assert f"mpibatch status {job_id} {task_id}" in p.stderr


def test_throttling_beyond_the_retries_is_reported(store_only: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    from mpibatch.errors import InfraError
    from mpibatch.executors.azure import AzureExecutor
    from mpibatch.spec import load_spec

    store_only.throttle(10, path=r"^/pools/", retry_after=0.1)
    spec, job_id, _ = hello_spec(tmp_path)
    ex = AzureExecutor(env=cli_env(store_only, azurite), client_kwargs={"retry_total": 2})
    with pytest.raises(InfraError, match="throttled: retried with backoff") as e:
        ex.submit(load_spec(spec))
    assert_no_secrets(str(e.value), *secrets_of(store_only, azurite))
    assert store_only.throttled == 3  # the first try and two retries
    nothing_created(store_only, azurite, job_id)


def test_existing_task_is_refused(store_only: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path)
    env = cli_env(store_only, azurite)
    assert run_cli(["submit", str(spec), "--no-wait"], env, *secrets_of(store_only, azurite)).returncode == 0
    p = run_cli(["submit", str(spec), "--no-wait"], env, *secrets_of(store_only, azurite))
    assert p.returncode == 2 and f"task {task_id!r} already exists" in p.stderr, p.stderr


# ---------------------------------------------------------------------------------------------- interrupts

def _start_and_interrupt(args: list[str], env: dict[str, str], task_id: str,
                         trigger: str | None = None) -> tuple[int, str, str]:
    """Run the CLI, send SIGINT once the task runs (or once a stderr line holds `trigger`), return
    (exit code, stdout, stderr). Bounded."""
    proc = subprocess.Popen([str(MPIBATCH), *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=default_sigint)
    lines: queue.Queue[str] = queue.Queue()
    stdout: list[str] = []
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True)  # type: ignore[union-attr]
    out_reader = threading.Thread(target=lambda: stdout.extend(proc.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    out_reader.start()
    seen: list[str] = []
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                assert proc.poll() is None, "".join(seen)
                continue
            seen.append(line)
            if (trigger or f"task {task_id}: running") in line:
                break
        else:
            raise AssertionError(f"never saw {trigger or 'the task run'}:\n" + "".join(seen))
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    reader.join(timeout=10)
    out_reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    return proc.returncode, "".join(stdout), "".join(seen)


def test_ctrl_c_while_waiting_prints_how_to_resume(standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, command="sleep 5",
                                       mpi={"flavor": "mpich", "processes_per_node": 1})
    rc, out, err = _start_and_interrupt(["submit", str(spec)], cli_env(standin, azurite), task_id)
    assert_no_secrets(out + err, *secrets_of(standin, azurite))
    assert rc == 130, err
    assert f"mpibatch status {job_id} {task_id}" in err and f"mpibatch collect {job_id} {task_id}" in err
    assert "Traceback" not in err
    # the task keeps running in Batch
    t = standin.task(job_id, task_id)
    assert t is not None and t.state in ("running", "completed")
    assert standin.wait_idle(60)
    assert t.state == "completed" and t.execution.get("exitCode") == 0


def test_terminate_on_interrupt_ends_the_job(standin: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, instances=2, command="sleep 60",
                                       mpi={"flavor": "mpich", "processes_per_node": 1})
    t0 = time.monotonic()
    rc, out, err = _start_and_interrupt(["submit", str(spec), "--terminate-on-interrupt"],
                                        cli_env(standin, azurite), task_id)
    assert_no_secrets(out + err, *secrets_of(standin, azurite))
    assert rc == 130, err
    assert f"terminating job {job_id}" in err
    assert standin.jobs[job_id.lower()]["state"] == "completed"
    assert standin.wait_idle(60)
    t = standin.task(job_id, task_id)
    assert t is not None and t.state == "completed"
    assert t.execution["failureInfo"]["code"] == "TaskEnded"
    assert time.monotonic() - t0 < 55  # ended, not run to its end


# ---------------------------------------------------------------------------------------------- pools, jobs

def test_pool_create_makes_an_mpi_pool_and_pool_check_accepts_it(
        store_only: BatchEmulator, tmp_path: Path) -> None:
    spec, _, _ = hello_spec(tmp_path)
    data = yaml.safe_load(spec.read_text())
    data["pool"] = {"id": "new-pool", "vm_size": "Standard_HB120rs_v3", "nodes": 4}
    data["job"]["pool"] = "new-pool"
    spec.write_text(yaml.safe_dump(data))
    env = cli_env(store_only, None)
    p = run_cli(["pool", "create", str(spec), "--output", "json"], env, store_only.key)
    assert p.returncode == 0, p.stderr
    sent = store_only.pools["new-pool"]["created_body"]
    assert sent["enableInterNodeCommunication"] is True and sent["taskSlotsPerNode"] == 1
    assert sent["virtualMachineConfiguration"]["imageReference"]["offer"] == "ubuntu-hpc"
    assert sent["virtualMachineConfiguration"]["nodeAgentSKUId"] == "batch.node.ubuntu 22.04"
    assert sent["startTask"]["waitForSuccess"] is True
    assert sent["startTask"]["userIdentity"]["autoUser"]["elevationLevel"] == "admin"
    assert "mpiexec.hydra" in sent["startTask"]["commandLine"]  # mpich installed if the image lacks it
    p = run_cli(["pool", "check", "new-pool"], env, store_only.key)
    assert p.returncode == 0 and "fit for MPI" in p.stdout, p.stdout + p.stderr
    p = run_cli(["pool", "create", str(spec)], env, store_only.key)
    assert p.returncode == 2 and "already exists" in p.stderr


def test_a_pool_with_spot_nodes_asks_for_them_as_low_priority_nodes(tmp_path: Path) -> None:
    # The body pool_create sends, built with the SDK's own models and serialised as the SDK sends it.
    from mpibatch.executors.azure.pools import choose_image, pool_body, start_task

    spec, _, _ = hello_spec(tmp_path)
    data = yaml.safe_load(spec.read_text())
    data["pool"] = {"id": "spot-pool", "vm_size": "Standard_D4s_v3", "nodes": 1, "spot_nodes": 2}
    data["job"]["pool"] = "spot-pool"
    spec.write_text(yaml.safe_dump(data))
    s = load_spec(spec)
    image = choose_image(s)
    body = pool_body(s.pool, image, start_task(s, image, None)).as_dict()
    assert (body["targetDedicatedNodes"], body["targetLowPriorityNodes"]) == (1, 2)
    assert body["enableInterNodeCommunication"] is True and body["taskSlotsPerNode"] == 1
    data["pool"].update(nodes=3, spot_nodes=0)
    spec.write_text(yaml.safe_dump(data))
    s = load_spec(spec)
    assert "targetLowPriorityNodes" not in pool_body(s.pool, image, start_task(s, image, None)).as_dict()


def test_windows_pool_needs_the_msmpi_installer_url(store_only: BatchEmulator, tmp_path: Path) -> None:
    spec, _, _ = hello_spec(tmp_path, mpi={"flavor": "msmpi", "processes_per_node": 1}, command=["app.exe"],
                            outputs=[])
    data = yaml.safe_load(spec.read_text())
    data["pool"] = {"id": "win-pool", "vm_size": "Standard_D4s_v3", "nodes": 3, "image": "windows"}
    data["job"]["pool"] = "win-pool"
    spec.write_text(yaml.safe_dump(data))
    env = cli_env(store_only, None)
    p = run_cli(["pool", "create", str(spec)], env, store_only.key)
    assert p.returncode == 2 and "--msmpi-installer" in p.stderr, p.stderr
    assert "win-pool" not in store_only.pools
    url = "https://example.invalid/MSMpiSetup.exe"
    p = run_cli(["pool", "create", str(spec), "--msmpi-installer", url], env, store_only.key)
    assert p.returncode == 0, p.stderr
    st = store_only.pools["win-pool"]["created_body"]["startTask"]
    assert st["commandLine"] == "cmd /c MSMpiSetup.exe -unattend -force"
    assert st["resourceFiles"] == [{"httpUrl": url, "filePath": "MSMpiSetup.exe"}]
    assert st["waitForSuccess"] is True and st["userIdentity"]["autoUser"]["elevationLevel"] == "admin"


def test_pool_check_refuses_a_misconfigured_pool(store_only: BatchEmulator) -> None:
    store_only.add_pool("slots", nodes=2, slots=4)
    p = run_cli(["pool", "check", "slots"], cli_env(store_only, None), store_only.key)
    assert p.returncode == 2 and "taskSlotsPerNode" in p.stdout, p.stdout + p.stderr
    p = run_cli(["pool", "check", "nope"], cli_env(store_only, None), store_only.key)
    assert p.returncode == 2 and "does not exist" in p.stderr


def test_job_terminate(store_only: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    spec, job_id, _ = hello_spec(tmp_path)
    env = cli_env(store_only, azurite)
    assert run_cli(["submit", str(spec), "--no-wait"], env, *secrets_of(store_only, azurite)).returncode == 0
    p = run_cli(["job", "terminate", job_id], env, *secrets_of(store_only, azurite))
    assert p.returncode == 0 and "completed" in p.stdout, p.stderr
    assert store_only.jobs[job_id.lower()]["state"] == "completed"
    p = run_cli(["job", "terminate", "no-such-job"], env, *secrets_of(store_only, azurite))
    assert p.returncode == 2 and "does not exist" in p.stderr


# ---------------------------------------------------------------------------------------------- sweeps

def test_submit_many_chunks_by_count_and_size(store_only: BatchEmulator, azurite: Azurite, tmp_path: Path) -> None:
    from dataclasses import replace

    from mpibatch.executors.azure import AzureExecutor
    from mpibatch.spec import load_spec

    spec_path, job_id, _ = hello_spec(tmp_path)
    base = load_spec(spec_path)
    big = "x" * 12_000  # 12 KB per task: 100 tasks would be over 1 MB
    specs = [replace(base, task=replace(base.task, id=f"sweep-{i:04d}", environment={"PARAM": str(i), "PAD": big}))
             for i in range(250)]
    ex = AzureExecutor(env=cli_env(store_only, azurite))
    res = ex.submit_many(specs)
    assert res.ok and len(res.added) == 250
    colls = [r for r in store_only.requests if r.path.endswith("/addtaskcollection")]
    assert sum(r.tasks for r in colls) == 250
    assert all(r.tasks <= 100 and r.body_bytes < 1_000_000 and r.status == 200 for r in colls)
    assert max(r.tasks for r in colls) < 100  # the size limit, not the count, cut these chunks
    # the inputs were uploaded once for all 250 tasks: the program and the node-side scripts
    assert len([b for b in container_blobs(azurite, job_id) if b.startswith("mpibatch/inputs/")]) == \
        1 + len(NODE_FILES)
