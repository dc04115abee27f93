"""Checkpoints on the Azure path (docs/checkpoints.md#azure-batch): `mpibatch submit` against `mpibatch emulate`
with Azurite and the real azure-batch SDK. The nodes save generations into the job's container through the
checkpoint SAS; a Spot preemption requeues the task, whose restore step puts the newest complete generation
back; `--resume-from JOB/TASK` starts a new task from another one's; `submit` and `status` say what each
attempt restored. The program is tests/data/checkpoint/counter.py: real MPI ranks (MPICH), 4 of them."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from mpibatch.launchers import checkpoint as ck

from tests.infra.emulator import MPIBATCH, EmulatorProcess, wait_for
from tests.infra.fixtures import azurite_missing, mpi_env, require
from tests.test_emulator_cli import cli
from tests.test_emulator_spot import call, make_pool, nodes

pytestmark = pytest.mark.azure
DATA = Path(__file__).parent / "data" / "checkpoint"
STEPS = 90  # 0.1 s a step, a checkpoint every 30 steps (3 s): two looks of the tracker (every second) and room
CKPT = "30"


def counter_spec(tmp_path: Path, job: str, task: str, **changes: Any) -> Path:
    d = tmp_path / f"{job}-{task}"
    shutil.copytree(DATA, d)
    data = yaml.safe_load((d / "spec.yaml").read_text())
    data["job"].update({"id": job, "pool": "spotpool"})
    data["task"].update({"id": task, **changes})
    data["task"]["command"][2:4] = [str(STEPS), CKPT]
    (d / "spec.yaml").write_text(yaml.safe_dump(data))
    return d / "spec.yaml"


def expected_total() -> int:
    return sum(6 + 4 * s for s in range(STEPS))  # 4 ranks add rank + step each step


def result_words(runs: Path, job: str, task: str) -> list[str]:
    """result.txt of the primary: ``start S total T generation G`` (this attempt's start step and checkpoint)."""
    found = sorted((runs / job).glob(f"{task}*/0/result.txt"))
    assert found, list((runs / job).rglob("*"))
    return found[-1].read_text().split()


def restorable(emu: EmulatorProcess, job: str, task: str, from_: str = "primary") -> int | None:
    """The generation a new attempt would restore, read from the emulator's Azurite."""
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(emu.connection_string)
    container = service.get_container_client(f"job-{job}")
    if not container.exists():
        return None
    names = [b.name for b in container.list_blobs(name_starts_with=f"{task}/")]
    return ck.restorable({i: ck.scan(names, task, i)[1] for i in range(2)}, 2, from_)


def test_only_a_task_that_checkpoints_gets_the_checkpoint_sas() -> None:
    from click.testing import CliRunner

    from mpibatch.cli import main
    from mpibatch.payload import batch_task
    from mpibatch.render import render
    from mpibatch.spec import parse_spec

    data = yaml.safe_load((DATA / "spec.yaml").read_text())
    env = {e.name: e.value for e in batch_task(render(parse_spec(data, DATA))).environment_settings}
    assert env["MPIBATCH_CHECKPOINT_URL"].startswith("<") and "MPIBATCH_PERSIST_URL" in env
    shown = CliRunner().invoke(main, ["render", str(DATA / "spec.yaml")]).output
    assert "MPIBATCH_CHECKPOINT_URL" in shown and "sig=" not in shown
    data["task"].pop("checkpoint")
    env = {e.name: e.value for e in batch_task(render(parse_spec(data, DATA))).environment_settings}
    assert "MPIBATCH_CHECKPOINT_URL" not in env and "MPIBATCH_PERSIST_URL" in env


def test_the_job_container_keeps_the_generation_rules(azurite: Any, tmp_path: Path) -> None:
    """The store the nodes use on Batch, through the SAS they get, against Azurite: quiet files saved as
    generations, `keep` pruning, a generation without its manifest never restored, a stored file that no
    longer matches its manifest refused, and the primary's restore record."""
    from mpibatch.launchers.blobio import BlobError, ContainerClient

    from mpibatch.executors.azure.storage import Storage, sas_expiry

    storage = Storage.from_env({"AZURE_STORAGE_CONNECTION_STRING": azurite.connection_string})
    container = storage.ensure_container("ck-store")
    store = ck.BlobStore(ContainerClient(storage.checkpoint_container_url(container, sas_expiry(60))))
    wd, wd2 = tmp_path / "wd", tmp_path / "wd2"
    wd.mkdir(), wd2.mkdir()
    saver = ck.Saver(store, "t", 0, 1, str(wd), "restart.*", keep=2, node_id="n0")
    for n in range(4):
        (wd / "restart.dat").write_bytes(bytes([n]) * 3000)
        assert saver.look() is None  # first seen: not yet quiet
        assert saver.look() == n + 1
        assert saver.look() is None  # unchanged: not saved twice
    names = store.names("t/")
    assert ck.scan(names, "t", 0) == ({3, 4}, {3, 4})  # keep: 2, the older ones deleted, files and manifests
    store.put_bytes(f"{ck.generation_prefix('t', 0, 5)}/restart.dat", b"half")  # no manifest: a node died
    g, line = ck.restore(store, "t", 0, 1, "primary", str(wd2))
    assert (g, line) == (4, "restored checkpoint generation 4: 1 files")
    assert (wd2 / "restart.dat").read_bytes() == bytes([3]) * 3000
    records = store.names(ck.restore_record_prefix("t") + "/")
    assert len(records) == 1 and json.loads(store.read(records[0]))["generation"] == 4
    # a stored file that does not match its manifest is refused, never put in place
    (tmp_path / "other").write_bytes(b"x" * 3000)
    store.client.upload_file(str(tmp_path / "other"), f"{ck.generation_prefix('t', 0, 4)}/restart.dat")
    (wd2 / "restart.dat").unlink()
    with pytest.raises(BlobError, match="MD5 mismatch"):
        ck.restore(store, "t", 0, 1, "primary", str(wd2))
    assert os.listdir(wd2) == []
    # the write-only SAS of the persist step could not have found a generation: why the nodes get another one
    with pytest.raises(BlobError) as e:
        list(ContainerClient(storage.persist_container_url(container, sas_expiry(60))).list_blobs("t/"))
    assert e.value.status == 403


def start_emulator(tmp_path: Path) -> tuple[EmulatorProcess, Any]:
    require(azurite_missing() + ([] if os.geteuid() == 0 else ["root (rehearsal nodes)"]), "Azurite, root")
    emu = EmulatorProcess(tmp_path / "state", env=mpi_env("mpich")).start()
    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential

    client = BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, emu.key))
    make_pool(client, "spotpool", 0, 3, enableInterNodeCommunication=True)
    return emu, client


def preempted_run(emu: EmulatorProcess, client: Any, spec: Path, runs: Path, from_: str) -> tuple[dict[str, Any], str]:
    """`mpibatch submit SPEC`, the primary's node preempted once a generation is complete: the result (-o json)
    and the progress. The generation the second attempt restored and the program's own account are checked."""
    data = yaml.safe_load(spec.read_text())
    job, task = data["job"]["id"], data["task"]["id"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    submit = subprocess.Popen([str(MPIBATCH), "submit", str(spec), "--output", "json", "--runs-dir", str(runs)],
                              env={**env, **emu.exports}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # preempted once a generation is complete in the container: mid-run
        try:
            wait_for("a complete generation", lambda: submit.poll() is not None or restorable(
                emu, job, task, from_), timeout=120)
        except AssertionError:
            submit.kill()
            raise AssertionError("no generation saved:\n" + submit.communicate()[1] + "\n".join(emu.log)) from None
        victim = next(n["id"] for n in nodes(client, "spotpool") if n["state"] == "running")
        resp = call(client, "POST", f"/_emulator/pools/spotpool/nodes/{victim}/preempt")  # at once: mid-run
        assert resp.status_code == 202, (resp.text(), submit.poll(), [
            (p, p.read_text()) for p in sorted((runs / job).rglob("std*.txt"))])
        got = call(client, "GET", f"/jobs/{job}/tasks/{task}").json()
        sas = {e["name"]: parse_qs(urlsplit(e["value"]).query).get("sp") for e in got["environmentSettings"]
               if e["name"].endswith("_URL")}
        assert sas == {"MPIBATCH_CHECKPOINT_URL": ["racwdl"], "MPIBATCH_PERSIST_URL": ["acw"]}
        out, err = submit.communicate(timeout=240)
    finally:
        if submit.poll() is None:
            submit.kill()
            submit.wait(10)
    assert submit.returncode == 0, out + err + "\n".join(emu.log)
    assert emu.key not in out + err and "sig=" not in out + err  # no key, no SAS signature
    result = json.loads(out)
    assert (result["state"], result["exit_code"], result["requeues"], result["attempts"]) == ("completed", 0, 1, 1)
    first, g = result["restored"]
    assert first is None and isinstance(g, int) and g >= 1, result["restored"]
    assert "preempted: requeued (1)" in err and f"attempt 2 restores generation {g}" in err, err
    start, total, generation = (lambda w: (int(w[1]), int(w[3]), w[5]))(result_words(runs, job, task))
    assert 0 < start < STEPS, "the requeued attempt went on from its checkpoint, not from step 0"
    assert (total, generation) == (expected_total(), str(g))
    return result, err


def test_a_preempted_task_restores_its_newest_generation_and_a_new_task_resumes_from_it(tmp_path: Path) -> None:
    emu, client = start_emulator(tmp_path)
    runs = tmp_path / "runs"
    try:
        result, _ = preempted_run(emu, client, counter_spec(tmp_path, "ck-emu", "counter"), runs, "primary")
        g = result["restored"][1]
        start = int(result_words(runs, "ck-emu", "counter")[1])
        # status says it too, from the records in the container
        s = json.loads(cli(["status", "ck-emu", "counter", "--output", "json"], emu).stdout)
        assert (s["requeues"], s["restored"]) == (1, [None, g])
        human = cli(["status", "ck-emu", "counter"], emu).stdout
        assert f"checkpoint generation restored by each attempt: none (started fresh), {g}" in human, human

        # a new task in another job resumes from the newest complete generation of that one
        newest = restorable(emu, "ck-emu", "counter")
        p = cli(["submit", str(counter_spec(tmp_path, "ck-next", "counter2")), "--resume-from", "ck-emu/counter",
                 "--output", "json", "--runs-dir", str(runs)], emu)
        assert p.returncode == 0, p.stdout + p.stderr
        assert f"resuming from generation {newest} of ck-emu/counter" in p.stderr, p.stderr
        nxt = json.loads(p.stdout)
        assert (nxt["state"], nxt["exit_code"], nxt["restored"]) == ("completed", 0, [newest])
        start2, total2, generation2 = (lambda w: (int(w[1]), int(w[3]), w[5]))(result_words(runs, "ck-next",
                                                                                            "counter2"))
        assert start2 >= start and (total2, generation2) == (expected_total(), str(newest))
    finally:
        emu.stop()


def test_a_retried_task_restores_its_newest_generation(tmp_path: Path) -> None:
    """The program fails once (not a preemption): Batch retries the task (retryCount 1, no requeue) and the
    retry's nodes restore the newest generation the failed attempt completed before it failed."""
    emu, client = start_emulator(tmp_path)
    runs = tmp_path / "runs"
    fail_at = 85  # the first attempt exits non-zero at step 85: its checkpoints of steps 30 and 60 are saved
    try:
        spec = counter_spec(tmp_path, "ck-retry", "counter", max_retries=1)
        data = yaml.safe_load(spec.read_text())
        data["task"]["command"].append(str(fail_at))
        spec.write_text(yaml.safe_dump(data))
        p = cli(["submit", str(spec), "--output", "json", "--runs-dir", str(runs)], emu)
        assert p.returncode == 0, p.stdout + p.stderr + "\n".join(emu.log)
        assert "sig=" not in p.stdout + p.stderr and emu.key not in p.stdout + p.stderr
        result = json.loads(p.stdout)
        assert (result["state"], result["exit_code"], result["attempts"], result["requeues"]) == (
            "completed", 0, 2, 0), result
        first, g = result["restored"]
        assert first is None and isinstance(g, int) and g >= 1, result["restored"]
        assert "preempted: requeued" not in p.stderr and f"attempt 2 restores generation {g}" in p.stderr, p.stderr
        assert p.stderr.index("counter: failed: retried (1)") < p.stderr.index("attempt 2 restores"), p.stderr
        info = call(client, "GET", "/jobs/ck-retry/tasks/counter").json()["executionInfo"]
        assert (info["retryCount"], info.get("requeueCount", 0)) == (1, 0), info
        # the retry went on from the step that generation holds, and computed the same total
        from azure.storage.blob import BlobServiceClient

        blob = f"{ck.generation_prefix('counter', 0, g)}/restart.json"
        saved = json.loads(BlobServiceClient.from_connection_string(emu.connection_string).get_blob_client(
            "job-ck-retry", blob).download_blob().readall())
        start, total, generation = (lambda w: (int(w[1]), int(w[3]), w[5]))(result_words(runs, "ck-retry", "counter"))
        assert (start, total, generation) == (saved["step"], expected_total(), str(g))
        assert 0 < start <= fail_at
        human = cli(["status", "ck-retry", "counter"], emu).stdout
        assert f"checkpoint generation restored by each attempt: none (started fresh), {g}" in human, human
        assert ": completed, exit code 0, " in human and ", attempts 2" in human and "requeued" not in human
        s = json.loads(cli(["status", "ck-retry", "counter", "--output", "json"], emu).stdout)
        assert (s["attempts"], s["requeues"], s["restored"]) == (2, 0, [None, g]), s
    finally:
        emu.stop()


def test_with_from_all_every_instance_gets_its_own_part_back(tmp_path: Path) -> None:
    """Every node saves its own files (the subtask's tracker too, through the same SAS), and the requeued
    attempt puts each instance's part back on whichever node now runs that instance."""
    emu, client = start_emulator(tmp_path)
    runs = tmp_path / "runs"
    try:
        argv = ["python3", "counter.py", "0", "0", "0.1", "-1", "ranks"]  # each rank its own restart-<rank>.json
        spec = counter_spec(tmp_path, "ck-all", "ranks", command=argv,
                            checkpoint={"pattern": "restart-*.json", "from": "all", "every": "1s", "keep": 2})
        result, _ = preempted_run(emu, client, spec, runs, "all")
        g = result["restored"][1]
        stderr = (sorted((runs / "ck-all").glob("ranks*/0/stderr.txt"))[-1]).read_text()
        for i in (0, 1):  # each node's restore step, through the launcher: its lines reach the primary's stderr
            assert f"mpibatch checkpoint [{i}]: restored checkpoint generation {g}: 2 files" in stderr, stderr
    finally:
        emu.stop()


def test_resume_from_is_checked_before_anything_is_created(tmp_path: Path) -> None:
    emu, client = start_emulator(tmp_path)
    try:
        # a task that exists but saved no checkpoint
        assert call(client, "POST", "/jobs", {"id": "src", "poolInfo": {"poolId": "spotpool"}}).status_code == 201
        assert call(client, "POST", "/jobs/src/tasks", {"id": "plain", "commandLine": "/bin/true"}).status_code == 201
        spec = counter_spec(tmp_path, "ck-new", "counter")
        no_checkpoint = counter_spec(tmp_path, "ck-new", "other", checkpoint=None)
        cases = [
            (spec, "src/nope", "task src/nope does not exist"),
            (spec, "nojob/nope", "task nojob/nope does not exist"),
            (spec, "just-a-name", "is not JOB/TASK"),
            (spec, "src/plain", "task src/plain has no complete checkpoint generation"),
            (no_checkpoint, "src/plain", "the spec has no task.checkpoint"),
        ]
        for path, source, said in cases:
            p = cli(["submit", str(path), "--resume-from", source, "--runs-dir", str(tmp_path / "runs")], emu)
            assert p.returncode == 2 and said in p.stderr, (source, p.stdout, p.stderr)
        # nothing was created: no job, no container
        assert call(client, "GET", "/jobs/ck-new").status_code == 404
        from azure.storage.blob import BlobServiceClient

        service = BlobServiceClient.from_connection_string(emu.connection_string)
        assert not service.get_container_client("job-ck-new").exists()
    finally:
        emu.stop()
