"""Issue 19's faults on the local executor (items 2 and 13), each as a test that failed before the fix.
`mpibatch run` is a separate process, as a user runs it; real MPICH ranks from the PyPI runtime.
scripts/test-unprivileged.sh runs this file as a normal user too."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.faults.helpers import start_cli
from tests.faults.test_local_faults import cli_env, write_spec

pytestmark = pytest.mark.mpi

KEPT_LINE = re.compile(r"^the nodes' files are kept \(until you remove them\): (/\S+)$", re.M)


def run_cli(tmp: Path, env: dict[str, str], spec: Path, *args: str) -> tuple[int, str, str]:
    p = start_cli(["run", str(spec), *args], env, tmp)
    out, err = p.communicate(timeout=180)
    return p.returncode, out, err


def test_item2_keep_nodes_prints_where_and_the_next_run_leaves_them(tmp_path: Path) -> None:
    """Issue 19 item 2: "`--keep-nodes` directories go the same way [the next `mpibatch run` deletes
    them as a dead run's leftovers], and `--keep-nodes` never says where they are"."""
    env = cli_env(tmp_path)
    spec = write_spec(tmp_path, instances=2)
    rc, out, err = run_cli(tmp_path, env, spec, "--runs-dir", str(tmp_path / "runs"), "--keep-nodes")
    assert rc == 0, err
    m = KEPT_LINE.search(out)
    assert m, out
    kept = Path(m.group(1))
    assert (kept / "0" / "workitems" / "faults" / "job-1" / "t" / "stdout.txt").is_file()
    # A second run sweeps the directories of dead runs at start-up: this one was kept, so it stays.
    rc, out, err = run_cli(tmp_path, env, spec, "--runs-dir", str(tmp_path / "runs2"), "-o", "json")
    assert rc == 0, err
    assert json.loads(out)["nodes_dir"] is None  # not kept, not said
    assert (kept / "0" / "workitems").is_dir(), "the next run removed the kept nodes' files"
    assert len(list(Path(env["TMPDIR"]).glob("mpibatch-nodes-*"))) == 1  # the second run's own are gone


def test_item2_files_kept_after_a_failed_collection_survive_the_next_run(tmp_path: Path, tiny_fs: Path) -> None:
    """Issue 19 item 2: "After a failed collection the message says the nodes' files are kept at DIR;
    the next `mpibatch run` deletes DIR as a dead run's leftovers" (and `-o json` names DIR)."""
    env = cli_env(tmp_path)
    spec = write_spec(tmp_path, instances=2)
    spec.write_text(spec.read_text().replace("command: [python3, shm.py, '0']",
                                             "command: 'head -c 3000000 /dev/urandom > big.bin'")
                    + "  outputs: [big.bin]\n")
    rc, out, err = run_cli(tmp_path, env, spec, "--runs-dir", str(tiny_fs), "-o", "json")
    assert rc == 1, err
    result = json.loads(out)
    assert result["failure"]["phase"] == "collecting", result["failure"]
    kept = Path(result["nodes_dir"])
    assert str(kept) in result["failure"]["reason"]
    assert list(kept.rglob("big.bin"))
    again = tmp_path / "again"
    again.mkdir()
    rc, out, err = run_cli(tmp_path, env, write_spec(again, instances=1), "--runs-dir", str(tmp_path / "runs2"))
    assert rc == 0, err
    assert list(kept.rglob("big.bin")), "the next run removed the nodes' files the failed one said it kept"


# A rank reads the environment of every process it can see (the run's PID 1, the node inits, the MPI
# launcher and proxies, the other ranks) and names each planted value it finds.
SCAN_PY = r"""
import os, sys
secrets = sys.argv[1].split(",")
read, found = [], []
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        data = open(f"/proc/{pid}/environ", "rb").read().decode(errors="replace")
    except OSError:
        continue
    read.append(pid)
    found += [f"{pid}:{s}" for s in secrets if s in data]
print("READ", " ".join(sorted(read, key=int)))
print("FOUND", " ".join(found) or "none")
"""


def test_item13_no_process_a_node_can_see_holds_the_operators_secrets(tmp_path: Path) -> None:
    """Issue 19 item 13: "Every operator variable (`AZURE_STORAGE_KEY`, `AZURE_CLIENT_SECRET`,
    `AZURE_BATCH_ACCESS_KEY`, ...) is readable on every local node through `/proc/1/environ` of the run's
    PID 1, as root and as a normal user"."""
    planted = {"AZURE_STORAGE_KEY": "planted-storage-key-7f3a", "AZURE_CLIENT_SECRET": "planted-client-secret-91c",
               "AZURE_BATCH_ACCESS_KEY": "planted-batch-key-c0de",
               "AZURE_STORAGE_CONNECTION_STRING": "AccountKey=planted-conn-key-5e5e",
               "SOME_TOKEN": "planted-token-ab12"}
    env = cli_env(tmp_path, **planted)
    (tmp_path / "scan.py").write_text(SCAN_PY)
    spec = write_spec(tmp_path, instances=3, sleep=0)
    values = ",".join(planted.values())
    spec.write_text(spec.read_text()
                    .replace("command: [python3, shm.py, '0']", f"command: [python3, scan.py, '{values}']")
                    .replace("common_files: [shm.py]", "common_files: [shm.py, scan.py]"))
    rc, out, err = run_cli(tmp_path, env, spec, "--runs-dir", str(tmp_path / "runs"))
    assert rc == 0, err
    stdout = (tmp_path / "runs" / "faults" / "t" / "0" / "stdout.txt").read_text()
    reads = [line.split()[1:] for line in stdout.splitlines() if line.startswith("READ")]
    founds = [line.split(None, 1)[1] for line in stdout.splitlines() if line.startswith("FOUND")]
    assert len(reads) == 6 and len(founds) == 6, stdout  # two ranks per node
    for pids in reads:
        # PID 1 of the run and the node inits are among what each rank read: the scan could see them.
        assert "1" in pids and len(pids) >= 6, pids
    assert founds == ["none"] * 6, founds
