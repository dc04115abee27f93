"""Faults of the durable writer (issue 19, items 1, 4, 5, 6, 7, 12): a full disk under `outputs get` and
`collect`, two outputs with one collected name, a resource file cut short, Ctrl-C while collecting, names of
250-255 bytes, and a `kill -9` during a resource-file download. Real parts only: Azurite, the Batch stand-in
with MPICH ranks, `mpibatch emulate`, the local executor and SSH hosts in network namespaces, HTTP servers on
127.0.0.1 that this file starts. Each test's docstring quotes the item it injects."""
from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mpibatch.launchers import fileio

from mpibatch.executors import leftovers
from mpibatch.executors.collection import collection_targets
from mpibatch.executors.local import LocalExecutor
from mpibatch.executors.resource_files import fetch_to
from mpibatch.spec import parse_spec
from tests.faults.test_collection_faults import Runner, runner, spec  # noqa: F401
from tests.faults.test_lifecycle_faults import WAIT_S, cli, read_until, trickling_server  # noqa: F401
from tests.infra.batch_emulator import BatchEmulator
from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import Azurite, azurite, mpi_env, ssh_cluster3  # noqa: F401
from tests.infra.httpserve import serving
from tests.test_azure_executor import MPIBATCH, cli_env, hello_spec, run_cli, secrets_of, standin  # noqa: F401


def temporaries(root: Path) -> list[Path]:
    """What an interrupted or failed write may leave: the durable writer's temporaries and old `.part` names."""
    return [p for p in root.rglob("*") if p.name.endswith(".part") or fileio.is_temp_name(p.name)]


# ------------------------------------------------------------------------------------------ item 1
@pytest.mark.azure
def test_item1_outputs_get_onto_a_full_disk_keeps_no_truncated_file(azurite: Azurite, tmp_path: Path,  # noqa: F811
                                                                     tiny_fs: Path) -> None:
    """1. `outputs get` onto a full disk writes a truncated file under its final name and reports it
    downloaded (exit 0); a rerun fails but keeps the truncated file."""
    from mpibatch.fileconventions import TaskOutputStorage, prepare_output_storage

    job = f"full-{os.getpid()}-{time.monotonic_ns()}"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    store = TaskOutputStorage(job, "t", connection_string=azurite.connection_string)
    (tmp_path / "big.bin").write_bytes(os.urandom(3 << 20))  # 3 MiB: more than the disk holds
    (tmp_path / "small.txt").write_text("small\n")
    store.save("TaskOutput", tmp_path / "big.bin", destination="big.bin")
    store.save("TaskOutput", tmp_path / "small.txt", destination="small.txt")
    dest = tiny_fs / "got"
    (dest / "$TaskOutput").mkdir(parents=True)
    (dest / "$TaskOutput" / "big.bin").write_bytes(b"\0" * 1000)  # what an older mpibatch left: truncated
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    env["AZURE_STORAGE_CONNECTION_STRING"] = azurite.connection_string
    for _ in range(2):  # a rerun is no better off, and keeps nothing truncated either
        p = subprocess.run([str(MPIBATCH), "outputs", "get", job, "t", "--to", str(dest), "-o", "json"],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 3, (p.stdout, p.stderr)
        got = json.loads(p.stdout)
        failed = [b for b in got["failed"] if b.endswith("big.bin")]
        assert failed and "no space left" in got["files"][failed[0]] and "big.bin" in got["files"][failed[0]], got
        assert not (dest / "$TaskOutput" / "big.bin").exists()
        assert (dest / "$TaskOutput" / "small.txt").read_text() == "small\n"
        assert temporaries(tiny_fs) == []
    assert azurite.key not in p.stdout + p.stderr


@pytest.mark.azure
def test_item1_collect_onto_a_full_disk_fails_and_names_the_file(standin: BatchEmulator, azurite: Azurite,  # noqa: F811
                                                                  tmp_path: Path, tiny_fs: Path) -> None:
    """1. `collect` (Azure path) onto a full disk writes a truncated file under its final name and exits 0."""
    spec_path, job_id, task_id = hello_spec(
        tmp_path, command=["python3", "big.py"],
        outputs=[{"pattern": "big.bin", "kind": "TaskOutput"}, {"pattern": "rank-*.txt", "kind": "TaskOutput"}],
        common_files=[{"source": "hello.py", "path": "hello.py"}, {"source": "big.py", "path": "big.py"}])
    (spec_path.parent / "big.py").write_text(
        "import os\nfrom mpi4py import MPI\nif MPI.COMM_WORLD.rank == 0:\n"
        "    open('big.bin', 'wb').write(os.urandom(3 << 20))\nexec(open('hello.py').read())\n")
    env = cli_env(standin, azurite)
    secrets = secrets_of(standin, azurite)
    p = run_cli(["submit", str(spec_path), "-o", "json", "--runs-dir", str(tmp_path / "runs")], env, *secrets)
    assert p.returncode == 0, p.stderr
    for _ in range(2):  # the rerun resumes into the same directory and fails the same way
        c = run_cli(["collect", job_id, task_id, "--to", str(tiny_fs), "-o", "json"], env, *secrets)
        assert c.returncode != 0, (c.stdout, c.stderr)
        assert "big.bin" in c.stdout + c.stderr and "no space left" in c.stdout + c.stderr, (c.stdout, c.stderr)
        assert not [q for q in tiny_fs.rglob("big.bin")], "a truncated big.bin under its final name"
        assert temporaries(tiny_fs) == []


@pytest.fixture
def big_server() -> Iterator[str]:
    """HTTP on 127.0.0.1 serving 3 MiB (more than the tiny disk holds) with its Content-Length."""
    body = os.urandom(3 << 20)

    class Big(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    with serving(Big) as base:
        yield f"{base}/input.dat"


def test_item1_a_resource_file_download_onto_a_full_disk(tiny_fs: Path, big_server: str) -> None:
    """Issue 18 item 2's writers onto a full disk: a downloaded resource file (the local and SSH executors'
    cache, the emulator's working directories) leaves nothing and names the file."""
    dest = tiny_fs / "input.dat"
    with pytest.raises(fileio.WriteError, match="input.dat.*no space left"):
        fetch_to(big_server, dest, timeout=30)
    assert list(tiny_fs.iterdir()) == []


def test_item1_a_batch_file_fetch_onto_a_full_disk_or_cut_short(tiny_fs: Path) -> None:
    """... and a Batch task or node file fetched by `collect` (storage.write_chunks): a full disk, or fewer
    bytes than Batch's Content-Length, leaves nothing under the name and names the file."""
    from mpibatch.executors.azure.storage import write_chunks

    with pytest.raises(fileio.WriteError, match="stdout.txt.*no space left"):
        write_chunks((b"x" * (1 << 20) for _ in range(3)), tiny_fs / "stdout.txt")
    with pytest.raises(fileio.WriteError, match="stderr.txt.*size mismatch"):
        write_chunks([b"0123456789"], tiny_fs / "stderr.txt", size=1000)
    assert list(tiny_fs.iterdir()) == []


# ------------------------------------------------------------------------------------------ item 4
def test_item4_the_targets_of_two_outputs_never_collide() -> None:
    targets, problems = collection_targets(["a.txt", "stdout.txt", "$TaskOutput/stdout.txt", "stderr.txt"])
    assert targets == [("a.txt", "a.txt"), ("$TaskOutput/stdout.txt", "$TaskOutput/stdout.txt"),
                       ("stderr.txt", "$TaskOutput/stderr.txt")]
    assert len(problems) == 1 and problems[0].startswith("stdout.txt: not collected: its collected name "
                                                         "$TaskOutput/stdout.txt is the path of another output")


@pytest.mark.mpi
def test_item4_two_outputs_with_one_collected_name_are_refused(runner: Runner, tmp_path: Path) -> None:  # noqa: F811
    """4. Two outputs that map to the same collected name (`stdout.txt` and `$TaskOutput/stdout.txt` under
    `**`): one is dropped silently, exit 0. Chosen: the clash is refused - the run fails in collecting and
    names both; the file that has that path is collected; the other stays on the node, whose files are kept."""
    r = runner(spec(tmp_path, "mkdir -p '$TaskOutput'; echo mine > '$TaskOutput/stdout.txt'; "
                              "echo renamed > stdout.txt", ["**"], instances=1))
    assert not r.succeeded and r.failure is not None and r.failure.phase == "collecting", r.failure
    assert "stdout.txt: not collected" in r.failure.reason and "$TaskOutput/stdout.txt" in r.failure.reason
    assert "kept" in r.failure.reason
    got = Path(r.output_dir or "", "0")
    assert (got / "$TaskOutput" / "stdout.txt").read_text() == "mine\n"
    files = r.instances[0].files
    assert "$TaskOutput/stdout.txt" in files and "stdout.txt" not in files, files
    kept = r.failure.reason.rsplit("kept: ", 1)[1].split(" ")[0]
    if "/mpibatch-nodes-" in kept:  # local: kept on this machine
        assert [q for q in Path(kept).rglob("stdout.txt") if q.read_text() == "renamed\n"]
        subprocess.run(["rm", "-rf", "--", str(Path(kept).parent)], check=True)


# ------------------------------------------------------------------------------------------ item 5
@pytest.fixture
def short_server() -> Iterator[str]:
    """HTTP on 127.0.0.1 that answers Content-Length 1000, sends 10 bytes and closes the connection."""

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.wfile.flush()
            self.close_connection = True

        def log_message(self, *a: object) -> None:
            pass

    with serving(Short) as base:
        yield f"{base}/input.dat?sig=SECRET"


@pytest.mark.mpi
def test_item5_a_resource_file_cut_short_fails_the_task_before_it_starts(tmp_path: Path,
                                                                        short_server: str) -> None:
    """5. A resource file cut short (Content-Length 1000, 10 bytes, connection closed) is accepted: the local
    executor runs the program on the 10-byte file."""
    marker = tmp_path / "ran"
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs")
    r = ex.submit(parse_spec({"job": {"id": "short"}, "task": {
        "id": "t", "instances": 2, "mpi": "mpich", "command": ["/bin/touch", str(marker)],
        "files": [{"source": short_server, "path": "input.dat"}]}}, tmp_path)).result()
    assert r.failure is not None and r.failure.phase == "files", r.failure
    assert "input.dat" in r.failure.reason and "got 10 of its 1000 bytes" in r.failure.reason, r.failure.reason
    assert "SECRET" not in r.failure.reason
    assert not marker.exists(), "the program started on a short input"


@pytest.mark.azure
def test_item5_the_emulator_reports_a_resource_file_cut_short_in_failure_info(tmp_path: Path,
                                                                              short_server: str) -> None:
    """5. ... and the emulator reports the task a success."""
    from azure.batch import BatchClient
    from azure.core.credentials import AzureNamedKeyCredential

    from tests.test_emulator_rest import GOOD_JOB, call, wait_completed

    emu = EmulatorProcess(tmp_path / "state", storage="none", pools=("p1:1",)).start()
    try:
        client = BatchClient(emu.endpoint, AzureNamedKeyCredential(emu.account, emu.key))
        marker = tmp_path / "ran"
        assert call(client, "POST", "/jobs", {**GOOD_JOB, "id": "short"}).status_code == 201
        task = {"id": "t", "commandLine": f"/bin/touch {marker}",
                "resourceFiles": [{"httpUrl": short_server, "filePath": "input.dat"}]}
        assert call(client, "POST", "/jobs/short/tasks", task).status_code == 201
        t = wait_completed(client, "short", "t")
        info = t.execution_info
        assert info.result == "failure" and info.failure_info is not None, info
        assert info.failure_info.code == "ResourceFileDownloadFailed", info.failure_info
        assert "input.dat" in info.failure_info.message and "got 10 of its 1000 bytes" in info.failure_info.message
        assert "SECRET" not in info.failure_info.message
        assert not marker.exists(), "the program started on a short input"
    finally:
        emu.stop()


# ------------------------------------------------------------------------------------------ item 6
@pytest.mark.mpi
def test_item6_ctrl_c_while_collecting_leaves_no_temporary_file(tmp_path: Path) -> None:
    """6. Ctrl-C during collection leaves hundreds of MB of `.part` files in the runs dir."""
    size = 1 << 30
    p = cli(tmp_path, f"job: {{id: j1}}\ntask: {{id: t1, instances: 2, mpi: mpich, "
                      f"command: 'truncate -s {size} big.dat', coordination: 'truncate -s {size} big.dat', "
                      "outputs: [big.dat]}\n")
    read_until(p, "collecting:")
    runs = tmp_path / "runs"
    deadline = time.monotonic() + WAIT_S
    while not temporaries(runs):  # a copy is under way: Ctrl-C comes in the middle of it
        assert time.monotonic() < deadline and p.poll() is None, "no copy seen in progress"
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    try:
        out, err = p.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        pytest.fail("the run did not end after Ctrl-C")
    assert p.returncode == 1 and "interrupted" in out, (out, err)
    assert temporaries(runs) == [], temporaries(runs)
    assert all(c.stat().st_size == size for c in runs.rglob("big.dat")), "a partial copy under its final name"
    assert os.listdir(tmp_path / "tmp") == [], "temporary directories left behind"


# ------------------------------------------------------------------------------------------ item 7
@pytest.mark.mpi
@pytest.mark.parametrize("length", [250, 255])
def test_item7_outputs_named_with_250_to_255_bytes_are_collected(runner: Runner, tmp_path: Path,  # noqa: F811
                                                                 length: int) -> None:
    """7. Output names of 250-255 bytes (legal) can never be collected: the temporary name is over NAME_MAX."""
    name = "n" * (length - 4) + ".dat"
    r = runner(spec(tmp_path, f"echo long > {name}", ["*.dat"], instances=2))
    assert r.succeeded, r.failure
    for inst in r.instances:
        assert inst.files == [name]
        assert Path(r.output_dir or "", str(inst.index), name).read_text() == "long\n"


# ------------------------------------------------------------------------------------------ item 12
def _dead_identity() -> tuple[int, str]:
    """The PID and start time of a process that has ended (its PID may be reused later, with another time)."""
    p = subprocess.Popen(["sleep", "5"])
    try:
        ident = leftovers.process_identity(p.pid)
    finally:
        p.kill()
        p.wait()
    assert ident is not None
    pid, start = ident.split()
    return int(pid), start


def test_item12_only_dead_runs_download_dirs_are_swept(tmp_path: Path) -> None:
    pid, start = _dead_identity()
    dead = tmp_path / f"{leftovers.DOWNLOADS_PREFIX}{pid}.{start}.abc123"
    live = leftovers.downloads_dir(tmp_path)
    other = tmp_path / f"{leftovers.DOWNLOADS_PREFIX}not-ours"
    for d in (dead, live, other):
        d.mkdir()
        (d / "input.dat").write_text("x")
    assert leftovers.sweep_dead_downloads(tmp_path) == [dead]
    assert not dead.exists() and live.exists() and other.exists()


@pytest.mark.mpi
def test_item12_kill_9_during_a_download_is_cleaned_up_by_the_next_run(tmp_path: Path,
                                                                       trickling_server: str) -> None:  # noqa: F811
    """12. `kill -9` of a run whose task has http resource files leaves `$TMPDIR/mpibatch-downloads-*`; the
    next run's clean-up only knows `mpibatch-nodes-*`."""
    tmp = tmp_path / "tmp"
    p = cli(tmp_path, f"job: {{id: j1}}\ntask: {{id: t1, instances: 2, mpi: mpich, command: [/bin/true], "
                      f"files: [{{source: '{trickling_server}', path: input.dat}}]}}\n")
    deadline = time.monotonic() + WAIT_S
    while not list(tmp.glob(f"{leftovers.DOWNLOADS_PREFIX}*/*")):  # the download has begun
        assert time.monotonic() < deadline and p.poll() is None, "no download started"
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=WAIT_S)
    assert list(tmp.glob(f"{leftovers.DOWNLOADS_PREFIX}*")), "the killed run left nothing to clean up"
    live = leftovers.downloads_dir(tmp)  # a run still going (this process): its downloads stay
    live.mkdir()
    again = cli(tmp_path, "job: {id: j2}\ntask: {id: t1, instances: 2, mpi: mpich, command: [/bin/true]}\n")
    out, err = again.communicate(timeout=WAIT_S)
    assert again.returncode == 0, (out, err)
    assert sorted(os.listdir(tmp)) == [live.name], "a dead run's directories are left"
