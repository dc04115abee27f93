"""One bounded reader (issue 18 item 3; issue 19 item 19): memory stays flat whatever the file's size.

A 4 GiB log (sparse: the task extends its own stdout.txt) read through the emulator's files API with an
`ocp-range` by the real azure-batch 15.1 SDK, a 4 GiB collected log printed by `mpibatch logs`, and an
800 MiB Batch output file uploaded by the emulator to Azurite: each keeps the peak RSS (VmHWM, read from
/proc/<pid>/status) of the process that served, read or uploaded it under 100 MB. Reading or uploading the
file whole, as before, costs its size (3.8 GB for the range, 814 MB for the upload)."""
from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from mpibatch.executors.collection import new_output_dir
from tests.infra.emulator import EmulatorProcess
from tests.infra.emulator import wait_for as shared_wait_for
from tests.infra.fixtures import azurite_missing, require

pytestmark = pytest.mark.azure
LIMIT_KIB = 100 * 1000 * 1000 // 1024  # 100 MB
GIB = 1024 ** 3


def vm_hwm_kib(pid: int) -> int:
    """The peak resident set size of a live process, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 120) -> Any:
    return shared_wait_for(what, check, timeout)


def batch_client(emu: EmulatorProcess) -> Any:
    return emu.batch_client()


def run_task(client: Any, job: str, task: Any) -> Any:
    from azure.batch import models as m

    client.create_job(m.BatchJobCreateOptions(id=job, pool_info=m.BatchPoolInfo(pool_id="p1")))
    client.create_task(job, task)
    return wait_for(f"{job}/{task.id}", lambda: (lambda t: t if t.state == "completed" else None)(
        client.get_task(job, task.id)))


@pytest.fixture
def emu(tmp_path: Path) -> Iterator[EmulatorProcess]:
    e = EmulatorProcess(tmp_path / "state", storage="none", pools=("p1:1:1",)).start()
    try:
        yield e
    finally:
        e.stop()


def test_a_100_byte_range_of_a_4_gib_log_keeps_the_emulator_small(emu: EmulatorProcess, tmp_path: Path) -> None:
    from azure.batch import models as m

    client = batch_client(emu)
    # stdout.txt is open for appending: the echo lands after the 4 GiB hole truncate made.
    t = run_task(client, "big", m.BatchTaskCreateOptions(id="t", command_line=(
        "/bin/bash -c 'truncate -s 4G \"$AZ_BATCH_TASK_DIR/stdout.txt\" && echo the-last-line'")))
    assert t.execution_info.exit_code == 0, t.execution_info
    size = 4 * GIB + len(b"the-last-line\n")
    props = client.get_task_file_properties("big", "t", "stdout.txt")
    assert int(props.content_length) == size
    end = b"".join(client.download_task_file("big", "t", "stdout.txt", ocp_range=f"bytes={4 * GIB}-{4 * GIB + 99}"))
    assert end == b"the-last-line\n"
    path = f"{t.node_info.task_root_directory}/stdout.txt"
    middle = b"".join(client.download_node_file("p1", t.node_info.node_id, path,
                                                ocp_range="bytes=2000000000-2000000099"))
    assert middle == b"\0" * 100
    suffix = b"".join(client.download_task_file("big", "t", "stdout.txt", ocp_range="bytes=-5"))
    assert suffix == b"line\n"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    env.update({"AZURE_BATCH_ENDPOINT": emu.endpoint, "AZURE_BATCH_ACCOUNT": emu.account,
                "AZURE_BATCH_ACCESS_KEY": emu.key})
    p = subprocess.run([sys.executable, "-c", MEASURED_CLI, str(tmp_path / "hwm"), "logs", "big", "t", "--tail", "20"],
                       env=env, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout == b"\0" * 6 + b"the-last-line\n"  # the tail through the Batch file API
    assert int((tmp_path / "hwm").read_text()) < LIMIT_KIB
    peak = vm_hwm_kib(emu.proc.pid)  # type: ignore[union-attr]
    assert peak < LIMIT_KIB, f"the emulator's peak RSS is {peak} KiB for 100-byte ranges of a 4 GiB log"


# Runs the CLI as __main__ and records this process's own VmHWM when it exits (atexit runs on sys.exit).
MEASURED_CLI = """
import atexit, sys
out = sys.argv.pop(1)
def hwm():
    with open("/proc/self/status") as f:
        kib = next(l.split()[1] for l in f if l.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(kib)
atexit.register(hwm)
from mpibatch.cli import main
sys.argv[0] = "mpibatch"
main()
"""


def test_mpibatch_logs_of_a_4_gib_log_stays_small(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    d = new_output_dir(runs, "bigjob", "bigtask")
    (d / "0").mkdir()
    with open(d / "0" / "stdout.txt", "wb") as f:
        f.truncate(4 * GIB)
        f.seek(4 * GIB)
        f.write(b"the-last-line\n")
    hwm = tmp_path / "hwm"
    cli = subprocess.Popen([sys.executable, "-c", MEASURED_CLI, str(hwm), "logs", "bigjob", "bigtask",
                            "--executor", "local", "--runs-dir", str(runs)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
    assert cli.stdout is not None
    tail = subprocess.run(["tail", "-c", "100"], stdin=cli.stdout, capture_output=True, timeout=300)
    cli.stdout.close()
    rc = cli.wait(timeout=60)
    err = cli.stderr.read().decode() if cli.stderr else ""
    assert rc == 0, err
    assert tail.stdout == b"\0" * 86 + b"the-last-line\n"  # every byte went through, to the last
    peak = int(hwm.read_text())
    assert peak < LIMIT_KIB, f"mpibatch logs' peak RSS is {peak} KiB for a 4 GiB log"
    p = subprocess.run([sys.executable, "-c", MEASURED_CLI, str(hwm), "logs", "bigjob", "bigtask", "--runs-dir",
                        str(runs), "--tail", "14"], capture_output=True, timeout=60)
    assert p.returncode == 0 and p.stdout == b"the-last-line\n", p.stderr
    assert int(hwm.read_text()) < LIMIT_KIB


def test_an_800_mib_output_file_upload_keeps_the_emulator_small(tmp_path: Path) -> None:
    require(azurite_missing(), "Azurite")
    from azure.batch import models as m
    from azure.storage.blob import BlobServiceClient, ContainerSasPermissions, generate_container_sas

    emu = EmulatorProcess(tmp_path / "state", pools=("p1:1:1",)).start()  # --storage auto: its own Azurite
    try:
        svc = BlobServiceClient.from_connection_string(emu.connection_string)
        svc.create_container("outputs")
        sas = generate_container_sas(svc.account_name, "outputs", account_key=svc.credential.account_key,
                                     permission=ContainerSasPermissions(write=True, create=True),
                                     expiry=datetime.now(timezone.utc) + timedelta(hours=1))
        url = f"{svc.url.rstrip('/')}/outputs?{sas}"
        size = 800 * 1024 * 1024
        t = run_task(batch_client(emu), "up", m.BatchTaskCreateOptions(
            id="t", command_line=f"/bin/bash -c 'truncate -s {size} big.bin && echo end >> big.bin'",
            output_files=[m.OutputFile(file_pattern="big.bin", destination=m.OutputFileDestination(
                container=m.OutputFileBlobContainerDestination(container_url=url, path="big.bin")),
                upload_options=m.OutputFileUploadConfiguration(upload_condition="taskSuccess"))]))
        assert t.execution_info.result == "success", t.execution_info
        blob = svc.get_blob_client("outputs", "big.bin")
        assert blob.get_blob_properties().size == size + 4
        assert blob.download_blob(offset=size, length=4).readall() == b"end\n"
        peak = vm_hwm_kib(emu.proc.pid)  # type: ignore[union-attr]
        assert peak < LIMIT_KIB, f"the emulator's peak RSS is {peak} KiB for an 800 MiB upload"
    finally:
        emu.stop()


def test_ranges_are_parsed_as_the_service_does(emu: EmulatorProcess) -> None:
    """`bytes=a-b`, `bytes=a-`, the suffix `bytes=-n`; a malformed or reversed range is 400 InvalidRange in
    Batch's error body (it used to drop the connection)."""
    from azure.batch import models as m
    from azure.core.exceptions import HttpResponseError
    from azure.core.rest import HttpRequest

    client = batch_client(emu)
    run_task(client, "r", m.BatchTaskCreateOptions(id="t", command_line="/usr/bin/printf 0123456789"))
    url = f"{emu.endpoint}/jobs/r/tasks/t/files/stdout.txt?api-version=2025-06-01"

    def get(rng: str, verb: str = "GET") -> Any:  # raw, through the SDK's pipeline (its Shared Key signing)
        try:
            resp = client.send_request(HttpRequest(verb, url, headers={"ocp-range": rng} if rng else {}),
                                       stream=True)
        except HttpResponseError as e:  # 15.1's exception policy raises on an error status
            resp = e.response
        resp.read()
        return resp

    for rng, body, content_range in (("bytes=2-5", b"2345", "bytes 2-5/10"), ("bytes=7-", b"789", "bytes 7-9/10"),
                                     ("bytes=-3", b"789", "bytes 7-9/10"), ("bytes=8-100", b"89", "bytes 8-9/10")):
        resp = get(rng)
        assert (resp.status_code, resp.content, resp.headers["Content-Range"]) == (200, body, content_range), rng
    for bad in ("bytes=5-2", "bytes=-", "lines=1-2", "bytes=" + "9" * 30 + "-"):
        resp = get(bad)
        assert (resp.status_code, resp.json()["code"]) == (400, "InvalidRange"), bad
    head = get("", "HEAD")
    assert head.status_code == 200 and head.headers["Content-Length"] == "10"
