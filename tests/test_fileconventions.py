"""The File Conventions library against real Azurite: names as .NET writes them, any size with bounded
memory, blocks, tracked append blobs, and the faults a node meets (no write permission, expired SAS,
throttling, files that change while uploading)."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, generate_container_sas
from mpibatch.launchers.blobio import BlobError, ContainerClient

from mpibatch.conventions import JobOutputStorage, TaskOutputStorage, job_container_name, prepare_output_storage
from mpibatch.errors import InfraError, SpecError
from mpibatch.fileconventions import download_outputs
from tests.infra.fixtures import Azurite, azurite  # noqa: F401
from tests.storage_proxy import StorageProxy

pytestmark = pytest.mark.azure
REPO = Path(__file__).resolve().parents[1]


def sas_url(az: Azurite, container: str, permission: str, expiry: timedelta = timedelta(hours=1)) -> str:
    now = datetime.now(timezone.utc)
    sas = generate_container_sas(az.account, container, account_key=az.key, permission=permission,
                                 start=now - timedelta(minutes=5), expiry=now + expiry)
    return f"{az.blob_endpoint}/{container}?{sas}"


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_save_list_get_use_the_net_names(azurite: Azurite, tmp_path: Path, monkeypatch) -> None:
    job = "My_Job"  # "_" is not allowed in a container name: the hashed .NET name
    assert prepare_output_storage(job, connection_string=azurite.connection_string) == job_container_name(job)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "res").mkdir()
    (tmp_path / "res" / "a.txt").write_bytes(b"alpha")
    (tmp_path.parent / "stdout-of-task.txt").write_bytes(b"log")
    task = TaskOutputStorage(job, "Task-1", connection_string=azurite.connection_string)
    task.save("TaskOutput", "res/a.txt")
    task.save("TaskLog", "../stdout-of-task.txt")
    task.save("Custom7", "res/a.txt", destination="renamed/a.txt")
    JobOutputStorage(job, connection_string=azurite.connection_string).save("JobOutput", "res/a.txt")

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    names = sorted(b.name for b in service.get_container_client(job_container_name(job)).list_blobs())
    assert names == ["$JobOutput/res/a.txt", "Task-1/$Custom7/renamed/a.txt", "Task-1/$TaskLog/stdout-of-task.txt",
                     "Task-1/$TaskOutput/res/a.txt"]
    outs = task.list_outputs("TaskOutput")
    assert [(o.kind, o.path, o.size, o.md5) for o in outs] == \
        [("TaskOutput", "res/a.txt", 5, hashlib.md5(b"alpha").digest())]
    assert sorted(o.kind for o in task.list_outputs()) == ["Custom7", "TaskLog", "TaskOutput"]
    assert task.get_output("TaskOutput", "res/a.txt").download_to(tmp_path / "back.txt") == "downloaded"
    assert (tmp_path / "back.txt").read_bytes() == b"alpha"
    assert task.get_output("TaskOutput", "res/a.txt").download_to(tmp_path / "back.txt") == "kept"
    with pytest.raises(SpecError, match="kind"):
        task.save("$TaskOutput", "res/a.txt")
    with pytest.raises(SpecError, match="no TaskOutput output"):
        task.get_output("TaskOutput", "nope.txt")


def test_a_big_file_goes_in_blocks_with_bounded_memory_and_comes_back_identical(azurite: Azurite,
                                                                               tmp_path: Path) -> None:
    """1 GiB + 1 byte through save() in a separate process (its peak RSS measured), then back through
    get_output().download_to(); a proxy refuses any single Put Blob over 16 MiB, as the service does over
    its own limit, so only blocks get the file there."""
    job = "bigjob"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    src = tmp_path / "field.bin"
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(1024):
            f.write(block[i:] + block[:i])
        f.write(b"!")
    url = sas_url(azurite, job_container_name(job), "rcw")
    with StorageProxy(azurite.port, put_blob_limit=16 << 20) as proxy:
        # The peak of this program only: VmHWM belongs to the address space exec made (getrusage's
        # ru_maxrss survives exec and would count the forking pytest process too).
        code = ("import sys; from mpibatch.conventions import TaskOutputStorage as T; "
                "T('bigjob', 't1', container_url=sys.argv[1]).save('TaskOutput', sys.argv[2], destination='f.bin'); "
                "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))")
        out = subprocess.run([sys.executable, "-c", code, proxy.url(url), str(src)], capture_output=True,
                             text=True, timeout=600, cwd=REPO)
        assert out.returncode == 0, out.stderr
        peak_mib = int(out.stdout.split()[-1]) / 1024
        assert proxy.count("PUT", "block") >= 1024 // 8
        assert proxy.count("PUT", "blocklist") == 1
    assert peak_mib < 150, f"peak RSS of the saving process {peak_mib:.0f} MiB"
    back = tmp_path / "back" / "f.bin"
    stored = TaskOutputStorage(job, "t1", connection_string=azurite.connection_string).get_output("TaskOutput", "f.bin")
    assert stored.size == (1 << 30) + 1
    src_md5 = md5_of(src)  # once: 1 GiB
    assert stored.md5 == bytes.fromhex(src_md5)  # the whole file's MD5 is the blob's Content-MD5
    src.unlink()  # disk: keep one copy at a time
    stored.download_to(back)
    assert md5_of(back) == src_md5
    assert sorted(p.name for p in back.parent.iterdir()) == ["f.bin"]  # no .part left


def test_save_tracked_appends_while_the_writer_writes(azurite: Azurite, tmp_path: Path) -> None:
    job = "trackjob"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    log_file = tmp_path / "progress.log"
    log_file.write_bytes(b"")
    writer = TaskOutputStorage(job, "t", container_url=sas_url(azurite, job_container_name(job), "rcw"))
    reader = TaskOutputStorage(job, "t", connection_string=azurite.connection_string)
    seen: list[int] = []
    with writer.save_tracked("TaskLog", str(log_file), destination="progress.log", interval=0.1):
        for i in range(1, 6):
            with open(log_file, "ab") as f:
                f.write(f"step {i}\n".encode())
            for _ in range(100):  # bounded: 10 s at most for each step to show up
                size = next((o.size for o in reader.list_outputs("TaskLog")), 0)
                if size >= len(log_file.read_bytes()):
                    break
                time.sleep(0.1)
            seen.append(size)
        with open(log_file, "ab") as f:
            f.write(b"last line, only the final flush sends it\n")
    assert seen == sorted(seen) and seen[0] > 0 and seen[-1] > seen[0]  # it grew during the run
    back = tmp_path / "back.log"
    reader.get_output("TaskLog", "progress.log").download_to(back)
    assert back.read_bytes() == log_file.read_bytes()


def test_sas_without_write_and_expired_sas_name_the_file(azurite: Azurite, tmp_path: Path) -> None:
    job = "sasjob"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    f = tmp_path / "out.dat"
    f.write_bytes(b"x" * 100)
    read_only = TaskOutputStorage(job, "t", container_url=sas_url(azurite, job_container_name(job), "rl"))
    with pytest.raises(InfraError, match=r"out\.dat.*HTTP 403.*(write|expired)"):
        read_only.save("TaskOutput", str(f), destination="out.dat")
    expired = TaskOutputStorage(job, "t", container_url=sas_url(azurite, job_container_name(job), "rcw",
                                                                expiry=timedelta(minutes=-1)))
    with pytest.raises(InfraError, match=r"out\.dat.*HTTP 403") as e:
        expired.save("TaskOutput", str(f), destination="out.dat")
    assert "sig=" not in str(e.value)


def test_a_throttled_block_is_retried_and_a_file_that_grows_is_not_committed(azurite: Azurite,
                                                                            tmp_path: Path) -> None:
    job = "faultjob"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    url = sas_url(azurite, job_container_name(job), "rcw")
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(5 << 20))
    with StorageProxy(azurite.port) as proxy:
        client = ContainerClient(proxy.url(url), block_size=1 << 20, workers=2)
        proxy.throttle["block"] = 2
        size, md5 = client.upload_file(str(f), "t/$TaskOutput/data.bin")
        assert (size, md5) == (5 << 20, hashlib.md5(f.read_bytes()).digest())
        assert proxy.count("PUT", "block") == 5 + 2  # two answered 429, then retried

        grown = tmp_path / "grows.bin"
        grown.write_bytes(os.urandom(3 << 20))
        once = threading.Event()

        def grow(method: str, comp: str) -> None:
            if comp == "block" and not once.is_set():
                once.set()
                with open(grown, "ab") as g:
                    g.write(b"more")
        proxy.on_request = grow
        with pytest.raises(BlobError, match=r"grows\.bin.*changed size"):
            client.upload_file(str(grown), "t/$TaskOutput/grows.bin")
        assert proxy.count("PUT", "blocklist") == 1  # only the first file's
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    names = [b.name for b in service.get_container_client(job_container_name(job)).list_blobs()]
    assert names == ["t/$TaskOutput/data.bin"]


def test_an_interrupted_download_leaves_no_part_and_a_rerun_finishes(azurite: Azurite, tmp_path: Path) -> None:
    """Ctrl-C in the middle of a download: no `.part`, nothing under the final name; the rerun completes and a
    third run keeps the verified file."""
    job = "interruptjob"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(20 << 20))
    storage = TaskOutputStorage(job, "t", connection_string=azurite.connection_string, block_size=4 << 20)
    storage.save("TaskOutput", str(src), destination="data.bin")
    out = storage.get_output("TaskOutput", "data.bin")
    dest = tmp_path / "back" / "data.bin"
    seen = [0]

    def interrupt_midway(n: int) -> None:
        seen[0] += n
        if seen[0] > 8 << 20:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        out.download_to(dest, on_bytes=interrupt_midway)
    assert list(dest.parent.iterdir()) == []
    assert out.download_to(dest) == "downloaded" and dest.read_bytes() == src.read_bytes()
    assert out.download_to(dest) == "kept"


def test_many_downloads_share_ranges_and_one_bad_file_stops_only_itself(azurite: Azurite, tmp_path: Path) -> None:
    """download_outputs: files of several ranges, an empty one and a small one come back byte for byte through
    one pool; an output whose MD5 does not match what storage holds fails alone, leaving no `.part`."""
    job = "manyjob"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    storage = TaskOutputStorage(job, "t", connection_string=azurite.connection_string, workers=3,
                                range_size=1 << 20)
    sizes = {"a.bin": (7 << 19) + 5, "b.bin": 3 << 20, "empty.bin": 0, "small.bin": 100, "c/d.bin": (5 << 20) - 1}
    for name, size in sizes.items():
        (tmp_path / "src" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "src" / name).write_bytes(os.urandom(size))
        storage.save("TaskOutput", str(tmp_path / "src" / name), destination=name)
    found = sorted(storage.list_outputs("TaskOutput"), key=lambda o: o.path)
    bad = dataclasses.replace(next(o for o in found if o.path == "b.bin"), md5=hashlib.md5(b"other").digest())
    outputs = [bad if o.path == "b.bin" else o for o in found]
    moved, finished = [0], []
    outcomes = download_outputs(outputs, [tmp_path / "back" / o.path for o in outputs],
                                on_bytes=lambda n: moved.__setitem__(0, moved[0] + n),
                                on_done=lambda o, r: finished.append(o.path))
    by_path = dict(zip((o.path for o in outputs), outcomes))
    assert isinstance(by_path.pop("b.bin"), InfraError)
    assert by_path == {name: "downloaded" for name in sizes if name != "b.bin"}
    for name in by_path:
        assert (tmp_path / "back" / name).read_bytes() == (tmp_path / "src" / name).read_bytes()
    assert sorted(finished) == sorted(sizes)
    assert moved[0] >= sum(sizes.values()) - sizes["b.bin"]
    assert sorted(p.name for p in (tmp_path / "back").rglob("*")) == ["a.bin", "c", "d.bin", "empty.bin", "small.bin"]
