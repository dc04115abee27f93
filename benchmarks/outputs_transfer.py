"""outputs_transfer: persisting and collecting outputs, mpibatch against azure-storage-blob, in the same run.

Per node: one big file and many 1 MiB files. mpibatch's side runs the node-side persist step
(``launchers/persist.py``, standard library only) once per node, all nodes at once, then collects with
``mpibatch outputs get``. The SDK's side, per node at once, sends each file with
``ContainerClient.upload_blob(max_concurrency=8)`` and brings everything back with
``download_blob(max_concurrency=8).readinto``. Storage is a real Azurite on this machine (loopback). Wall time
of each phase and the peak RSS of the largest process are reported side by side.

Peak RSS is each process's own VmHWM, read by a small wrapper when the process exits. ru_maxrss from wait4
is not enough: exec keeps the high-water mark of the address space it replaces (after fork, a copy of the
parent's; after the vfork Python's subprocess uses, the parent's own), so a child's ru_maxrss is at least the
benchmark's own peak (measured: a parent holding 400 MiB gives `python -c pass` an ru_maxrss of 413 MiB).
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
from tests.infra.fixtures import Azurite, azurite_missing, start_azurite  # noqa: E402

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
    for p, (argv, _, _) in zip(procs, cmds):
        if p.wait() != 0:
            raise SystemExit(f"{argv[:3]} exited with {p.returncode}")
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


def container_url(az: Azurite, name: str) -> str:
    """Create container `name` in `az`; its URL with a SAS (read, add, create, write, list)."""
    from azure.storage.blob import BlobServiceClient, generate_container_sas

    BlobServiceClient.from_connection_string(az.connection_string).create_container(name)
    now = datetime.now(timezone.utc)
    sas = generate_container_sas(az.account, name, account_key=az.key, permission="racwl",
                                 start=now - timedelta(minutes=5), expiry=now + timedelta(hours=6))
    return f"{az.blob_endpoint}/{name}?{sas}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--big-mib", type=int, default=4096)
    ap.add_argument("--small", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if azurite_missing():
        raise SystemExit("; ".join(azurite_missing()))
    work = Path(tempfile.mkdtemp(prefix="mpibatch-bench-outputs-"))
    try:
        wds = make_nodes(work, args.nodes, args.big_mib, args.small)
        hosts = ",".join(f"10.0.0.{i + 4}" for i in range(args.nodes + 1))
        base = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
        hwm = work / "hwm"
        prefix_of = {wd: f"{n}/" for n, wd in enumerate(wds, start=1)}
        rows = []

        def persist(url: str) -> list[tuple[list[str], dict[str, str], Path]]:
            return [(measured("", str(REPO / "launchers" / "persist.py"), "--task", "t", "--output", "TaskOutput=**"),
                     {**base, "MPIBATCH_PERSIST_URL": url, "AZ_BATCH_HOST_LIST": hosts,
                      "AZ_BATCH_MASTER_NODE": "10.0.0.4:6000", "PMI_RANK": str(n)}, wd)
                    for n, wd in enumerate(wds, start=1)]

        def outputs_get(az: Azurite, url: str, got: Path) -> tuple[list[str], dict[str, str], Path]:
            return (measured("-m", "mpibatch.cli", "outputs", "get", "bench", "t", "--to", str(got)),
                    {**base, "AZURE_STORAGE_CONNECTION_STRING": az.connection_string}, REPO)

        def sdk_up(url: str) -> list[tuple[list[str], dict[str, str], Path]]:
            return [(measured("-c", SDK_UPLOAD, url, str(wd), prefix_of[wd]), base, REPO) for wd in wds]

        def sdk_down(az: Azurite, url: str, got: Path) -> tuple[list[str], dict[str, str], Path]:
            return measured("-c", SDK_DOWNLOAD, url, str(got), ""), base, REPO

        for side, up, down, copy in (("mpibatch", persist, outputs_get, "$TaskOutput"),
                                     ("sdk", sdk_up, sdk_down, "")):
            # A fresh Azurite per side: the same empty store for both, and its disk freed once measured.
            (work / "azurite").mkdir()
            az, proc = start_azurite(work / "azurite")
            try:
                url = container_url(az, "job-bench")
                got = work / f"got-{side}"
                os.sync()  # the previous phase's writes are on disk before this one is timed
                rows.append((side, "upload", *run_all(up(url), hwm)))
                os.sync()
                rows.append((side, "download", *run_all([down(az, url, got)], hwm)))
                check_copy(got / copy, wds, prefix_of)
                shutil.rmtree(got)
            finally:
                proc.stop()
                shutil.rmtree(work / "azurite")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total_mib = args.nodes * (args.big_mib + args.small)
    lines = [f"{args.nodes} nodes, each one {args.big_mib} MiB file and {args.small} files of 1 MiB "
             f"({total_mib:,} MiB in all), Azurite on loopback, {os.cpu_count()} cores; uploads from every node at "
             "once, downloads by one client; a fresh Azurite for each side. Peak RSS: the largest process's own VmHWM, "
             "read as it exits. "
             "Downloaded copies checked (every file, its size) outside the timed part.", "",
             "| side | phase | wall s | MiB/s | peak RSS MiB |", "|---|---|---|---|---|"]
    names = {("mpibatch", "upload"): "mpibatch persist.py", ("mpibatch", "download"): "mpibatch outputs get",
             ("sdk", "upload"): "azure-storage-blob upload_blob(max_concurrency=8)",
             ("sdk", "download"): "azure-storage-blob download_blob(max_concurrency=8)"}
    for side, phase, wall, peak in sorted(rows, key=lambda r: (r[1] == "download", r[0] == "sdk")):
        side = names[side, phase]
        lines.append(f"| {side} | {phase} | {wall:.1f} | {total_mib / wall:.0f} | {peak:.0f} |")
    lines += ["", f"`python benchmarks/outputs_transfer.py --nodes {args.nodes} --big-mib {args.big_mib} "
              f"--small {args.small}`"]
    print("\n".join(lines))
    if not args.no_write:
        write_section("outputs_transfer", "\n".join(lines))


if __name__ == "__main__":
    main()
