"""outputs_transfer: persisting and collecting outputs, mpibatch against azure-storage-blob, in the same run.

Per node: one big file and many 1 MiB files. mpibatch's side runs the node-side persist step
(``launchers/persist.py``, standard library only) once per node, all nodes at once, then collects with
``mpibatch outputs get``. The SDK's side, per node at once, sends each file with
``ContainerClient.upload_blob(max_concurrency=8)`` and brings everything back with
``download_blob(max_concurrency=8).readinto``. Storage is a real Azurite on this machine (loopback). Wall time
of each phase and the peak RSS of the largest process are reported side by side.

Peak RSS is each process's own VmHWM, read by a small wrapper when the process exits: ru_maxrss from wait4
is not enough, because exec keeps the high-water mark of the address space it replaces, and Python's
subprocess forks with vfork, so every child's ru_maxrss is at least this benchmark's own peak.
To fit the full size on one disk, every node's files are hard links to one set of source files, and each
side's blobs and downloaded copy are deleted once measured (after the downloaded copy is checked: every file
there, each of the right size).

    python benchmarks/outputs_transfer.py [--nodes 3] [--big-mib 4096] [--small 2000] [--no-write]
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._results import write_section  # noqa: E402
from tests.infra.fixtures import azurite_missing, start_azurite  # noqa: E402

SDK_UPLOAD = """
import sys, os
from azure.storage.blob import ContainerClient
c = ContainerClient.from_container_url(sys.argv[1])
root, prefix = sys.argv[2], sys.argv[3]
for dirpath, _, names in os.walk(root):
    for n in sorted(names):
        p = os.path.join(dirpath, n)
        with open(p, "rb") as f:
            c.upload_blob(prefix + os.path.relpath(p, root), f, overwrite=True, max_concurrency=8)
"""
SDK_DOWNLOAD = """
import sys, os
from azure.storage.blob import ContainerClient
c = ContainerClient.from_container_url(sys.argv[1])
dest, prefix = sys.argv[2], sys.argv[3]
for b in c.list_blobs(name_starts_with=prefix):
    p = os.path.join(dest, b.name[len(prefix):])
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb") as f:
        c.download_blob(b.name, max_concurrency=8).readinto(f)
"""


# Runs a module (-m NAME) or a script / code (-c CODE) as __main__, then records this process's VmHWM.
MEASURED = """
import atexit, os, runpy, sys
out = sys.argv[1]
def hwm():
    with open("/proc/self/status") as f:
        kib = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:"))
    with open(out, "w") as f:
        f.write(str(kib))
atexit.register(hwm)
how, what, sys.argv = sys.argv[2], sys.argv[3], [sys.argv[3], *sys.argv[4:]]
if how == "-m":
    runpy.run_module(what, run_name="__main__", alter_sys=True)
elif how == "-c":
    sys.argv[0] = "-c"
    exec(compile(what, "<string>", "exec"), {"__name__": "__main__"})
else:
    sys.path.insert(0, os.path.dirname(what))
    runpy.run_path(what, run_name="__main__")
"""


def measured(how: str, what: str, *args: str) -> list[str]:
    """What `run_all` runs: `what` as -m module, -c code, or (how "") a script path, with `args`."""
    return [how, what, *args]


def run_all(cmds: list[tuple[list[str], dict[str, str], Path]], hwm: Path) -> tuple[float, float]:
    """Start every command (built with `measured`) at once, each recording its peak RSS into hwm.<i>; wall
    time until the last ends, and the largest peak RSS (MiB)."""
    files = [hwm.with_suffix(f".{i}") for i in range(len(cmds))]
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", MEASURED, str(f), *argv], env=env, cwd=cwd,
                              stdout=subprocess.DEVNULL) for (argv, env, cwd), f in zip(cmds, files)]
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"{p.args[4:7]} exited with {p.returncode}")
    wall = time.monotonic() - t0
    return wall, max(int(f.read_text()) for f in files) / 1024


def check_copy(got: Path, wds: list[Path], prefix_of: dict[Path, str]) -> None:
    """Outside the timed part: every source file came back, with its size (mpibatch's downloader has also
    checked each file's MD5; the SDK's does not)."""
    want = {}
    for wd in wds:
        for dirpath, _, names in os.walk(wd):
            for n in names:
                p = Path(dirpath) / n
                want[prefix_of[wd] + str(p.relative_to(wd))] = p.stat().st_size
    have = {str(p.relative_to(got)): p.stat().st_size for p in got.rglob("*") if p.is_file()}
    wrong = [k for k, v in want.items() if have.get(k) != v]
    if wrong:
        raise SystemExit(f"{len(wrong)} of {len(want)} files missing or of the wrong size under {got}, e.g. {wrong[0]}")
    print(f"checked {len(want)} files under {got}", flush=True)


def make_nodes(work: Path, nodes: int, big_mib: int, small: int) -> list[Path]:
    """Every node's working directory: hard links to one big file and one set of small files (made once)."""
    src = work / "source"
    (src / "small").mkdir(parents=True)
    with open(src / "big.bin", "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(big_mib):
            f.write(block[i % 4096:] + block[:i % 4096])
    for i in range(small):
        (src / "small" / f"f{i:05d}.bin").write_bytes(os.urandom(1 << 20))
    wds = []
    for n in range(1, nodes + 1):
        wd = work / f"node-{n}" / "wd"
        (wd / "small").mkdir(parents=True)
        os.link(src / "big.bin", wd / "big.bin")
        for i in range(small):
            os.link(src / "small" / f"f{i:05d}.bin", wd / "small" / f"f{i:05d}.bin")
        (wd.parent / "stdout.txt").write_bytes(b"")
        (wd.parent / "stderr.txt").write_bytes(b"")
        wds.append(wd)
    return wds


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=4096)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if azurite_missing():
        raise SystemExit("; ".join(azurite_missing()))
    from azure.storage.blob import BlobServiceClient, generate_container_sas

    work = Path(tempfile.mkdtemp(prefix="mpibatch-bench-outputs-"))
    (work / "azurite").mkdir()
    az, proc = start_azurite(work / "azurite")
    try:
        service = BlobServiceClient.from_connection_string(az.connection_string)
        now = datetime.now(timezone.utc)

        def container_url(name: str) -> str:
            service.create_container(name)
            sas = generate_container_sas(az.account, name, account_key=az.key, permission="racwdl",
                                         start=now - timedelta(minutes=5), expiry=now + timedelta(hours=6))
            return f"{az.blob_endpoint}/{name}?{sas}"

        wds = make_nodes(work, args.nodes, args.big_mib, args.small)
        hosts = ",".join(f"10.0.0.{i + 4}" for i in range(args.nodes + 1))
        base = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        hwm = work / "hwm"
        rows = []

        url = container_url("job-bench")
        persist = [(measured("", str(REPO / "launchers" / "persist.py"), "--task", "t",
                             "--output", "TaskOutput=**"),
                    {**base, "MPIBATCH_PERSIST_URL": url, "AZ_BATCH_HOST_LIST": hosts,
                     "AZ_BATCH_MASTER_NODE": "10.0.0.4:6000", "PMI_RANK": str(n)}, wd)
                   for n, wd in enumerate(wds, start=1)]
        rows.append(("mpibatch persist.py", "upload", *run_all(persist, hwm)))
        got = work / "got-mpibatch"
        env = {**base, "AZURE_STORAGE_CONNECTION_STRING": az.connection_string}
        rows.append(("mpibatch outputs get", "download",
                     *run_all([(measured("-m", "mpibatch.cli", "outputs", "get", "bench", "t", "--to",
                                         str(got)), env, REPO)], hwm)))
        check_copy(got / "$TaskOutput", wds, {wd: f"{n}/" for n, wd in enumerate(wds, start=1)})
        shutil.rmtree(got)
        service.delete_container("job-bench")  # frees Azurite's copy before the SDK's side uploads

        url = container_url("sdk-bench")
        sdk_up = [(measured("-c", SDK_UPLOAD, url, str(wd), f"sdk/{n}/"), base, REPO)
                  for n, wd in enumerate(wds, start=1)]
        rows.append(("azure-storage-blob upload_blob(max_concurrency=8)", "upload", *run_all(sdk_up, hwm)))
        got = work / "got-sdk"
        sdk_down = [(measured("-c", SDK_DOWNLOAD, url, str(got), "sdk/"), base, REPO)]
        rows.append(("azure-storage-blob download_blob(max_concurrency=8)", "download", *run_all(sdk_down, hwm)))
        check_copy(got, wds, {wd: f"{n}/" for n, wd in enumerate(wds, start=1)})
        shutil.rmtree(got)
        service.delete_container("sdk-bench")
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)

    total_mib = args.nodes * (args.big_mib + args.small)
    lines = [f"{args.nodes} nodes, each one {args.big_mib} MiB file and {args.small} files of 1 MiB "
             f"({total_mib:,} MiB in all), Azurite on loopback, {os.cpu_count()} cores; uploads from every node at "
             "once, downloads by one client. Peak RSS: the largest process's own VmHWM, read as it exits. "
             "Downloaded copies checked (every file, its size) outside the timed part.", "",
             "| side | phase | wall s | MiB/s | peak RSS MiB |", "|---|---|---|---|---|"]
    for side, phase, wall, peak in rows:
        lines.append(f"| {side} | {phase} | {wall:.1f} | {total_mib / wall:.0f} | {peak:.0f} |")
    lines += ["", f"`python benchmarks/outputs_transfer.py --nodes {args.nodes} --big-mib {args.big_mib} "
              f"--small {args.small}`"]
    print("\n".join(lines))
    if not args.no_write:
        write_section("outputs_transfer", "\n".join(lines))


if __name__ == "__main__":
    main()
