"""outputs_transfer: persisting and collecting outputs, mpibatch against azure-storage-blob, in the same run.

Per node: one big file and many 1 MiB files. mpibatch's side runs the node-side persist step
(``launchers/persist.py``, standard library only) once per node, all nodes at once, then collects with
``mpibatch outputs get``. The SDK's side, per node at once, sends each file with
``ContainerClient.upload_blob(max_concurrency=8)`` and brings everything back with
``download_blob(max_concurrency=8).readinto``. Storage is a real Azurite on this machine (loopback). Wall time
of each phase and the peak RSS of the largest process (from wait4) are reported side by side.

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


def run_all(cmds: list[tuple[list[str], dict[str, str], Path]]) -> tuple[float, float]:
    """Start every command at once; wall time until the last ends, and the largest peak RSS (MiB)."""
    t0 = time.monotonic()
    procs = [subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL) for argv, env, cwd in cmds]
    peak = 0.0
    pending = {p.pid: p for p in procs}
    while pending:
        pid, status, usage = os.wait4(-1, 0)
        if pid in pending:
            p = pending.pop(pid)
            p.returncode = os.waitstatus_to_exitcode(status)
            if p.returncode != 0:
                raise SystemExit(f"{p.args[:3]} exited with {p.returncode}")
            peak = max(peak, usage.ru_maxrss / 1024)
    return time.monotonic() - t0, peak


def make_nodes(work: Path, nodes: int, big_mib: int, small: int) -> list[Path]:
    big = work / "big.bin"
    with open(big, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(big_mib):
            f.write(block[i % 4096:] + block[:i % 4096])
    wds = []
    for n in range(1, nodes + 1):
        wd = work / f"node-{n}" / "wd"
        (wd / "small").mkdir(parents=True)
        os.link(big, wd / "big.bin")  # the same bytes on every node, stored once on this disk
        for i in range(small):
            (wd / "small" / f"f{i:05d}.bin").write_bytes(os.urandom(1 << 20))
        (wd.parent / "stdout.txt").write_bytes(b"")
        (wd.parent / "stderr.txt").write_bytes(b"")
        wds.append(wd)
    big.unlink()
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
        service.create_container("job-bench")
        now = datetime.now(timezone.utc)
        sas = generate_container_sas(az.account, "job-bench", account_key=az.key, permission="racwl",
                                     start=now - timedelta(minutes=5), expiry=now + timedelta(hours=6))
        url = f"{az.blob_endpoint}/job-bench?{sas}"
        wds = make_nodes(work, args.nodes, args.big_mib, args.small)
        hosts = ",".join(f"10.0.0.{i + 4}" for i in range(args.nodes + 1))
        base = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        rows = []

        persist = [([sys.executable, str(REPO / "launchers" / "persist.py"), "--task", "t",
                     "--output", "TaskOutput=**"],
                    {**base, "MPIBATCH_PERSIST_URL": url, "AZ_BATCH_HOST_LIST": hosts,
                     "AZ_BATCH_MASTER_NODE": "10.0.0.4:6000", "PMI_RANK": str(n)}, wd)
                   for n, wd in enumerate(wds, start=1)]
        rows.append(("mpibatch persist.py", "upload", *run_all(persist)))
        got = work / "got-mpibatch"
        env = {**base, "AZURE_STORAGE_CONNECTION_STRING": az.connection_string}
        rows.append(("mpibatch outputs get", "download",
                     *run_all([([sys.executable, "-m", "mpibatch.cli", "outputs", "get", "bench", "t", "--to",
                                 str(got)], env, REPO)])))
        shutil.rmtree(got)

        sdk_up = [([sys.executable, "-c", SDK_UPLOAD, url, str(wd), f"sdk/{n}/"], base, REPO)
                  for n, wd in enumerate(wds, start=1)]
        rows.append(("azure-storage-blob upload_blob(max_concurrency=8)", "upload", *run_all(sdk_up)))
        sdk_down = [([sys.executable, "-c", SDK_DOWNLOAD, url, str(work / "got-sdk"), "sdk/"], base, REPO)]
        rows.append(("azure-storage-blob download_blob(max_concurrency=8)", "download", *run_all(sdk_down)))
    finally:
        proc.stop()
        shutil.rmtree(work, ignore_errors=True)

    total_mib = args.nodes * (args.big_mib + args.small)
    lines = [f"{args.nodes} nodes, each one {args.big_mib} MiB file and {args.small} files of 1 MiB "
             f"({total_mib:,} MiB in all), Azurite on loopback, {os.cpu_count()} cores; uploads from every node at "
             "once, downloads by one client. Peak RSS: the largest process (ru_maxrss from wait4).", "",
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
