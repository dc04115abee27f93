"""`mpibatch outputs list | get` and the collector's "missing" rule, end to end: the Batch stand-in runs a
real multi-instance task (MPICH ranks), the nodes' persist step and Batch output files store into Azurite,
and the CLI reads it back through the File Conventions library."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite, azurite  # noqa: F401
from tests.test_azure_executor import cli_env, container_blobs, hello_spec, run_cli, secrets_of, standin  # noqa: F401

pytestmark = pytest.mark.azure

SUBTASK_ONLY = """
from mpi4py import MPI
if MPI.COMM_WORLD.rank == 2:  # 2 ranks per node: rank 2 is on the first subtask's node
    open("only-sub.txt", "w").write("from a subtask\\n")
exec(open("hello.py").read())
"""


def test_outputs_list_and_get_read_what_the_task_stored(standin: BatchEmulator, azurite: Azurite,
                                                        tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path)
    env = cli_env(standin, azurite)
    secrets = secrets_of(standin, azurite)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], env, *secrets)
    assert p.returncode == 0, p.stderr

    listed = run_cli(["outputs", "list", job_id, task_id, "-o", "json"], env, *secrets)
    assert listed.returncode == 0, listed.stderr
    rows = json.loads(listed.stdout)
    blobs = container_blobs(azurite, job_id)
    task_blobs = {n for n in blobs if n.startswith(f"{task_id}/$")}
    assert {r["blob"] for r in rows} == task_blobs
    logs = {r["path"]: r for r in rows if r["kind"] == "TaskLog"}
    assert set(logs) >= {f"{i}/{where}std{s}.txt" for i in range(3) for where in ("", "live/") for s in ("out", "err")}
    assert logs["0/live/stdout.txt"]["size"] == logs["0/stdout.txt"]["size"] > 0  # the tracker's final flush
    only = run_cli(["outputs", "list", job_id, task_id, "--kind", "TaskOutput", "-o", "json"], env, *secrets)
    assert {r["kind"] for r in json.loads(only.stdout)} == {"TaskOutput"}

    dest = tmp_path / "got"
    got = run_cli(["outputs", "get", job_id, task_id, "--to", str(dest), "-o", "json"], env, *secrets)
    assert got.returncode == 0, got.stderr
    first = json.loads(got.stdout)
    assert set(first["files"].values()) == {"downloaded"} and not first["failed"]
    for r in rows:
        local = dest / f"${r['kind']}" / r["path"]
        if r["md5"] is None:  # an append blob (live log) has no MD5: its size is what is checked
            assert local.stat().st_size == r["size"], r["path"]
        else:
            assert hashlib.md5(local.read_bytes()).hexdigest() == r["md5"], r["path"]
    assert not [p for p in dest.rglob("*.part")]
    again = run_cli(["outputs", "get", job_id, task_id, "--to", str(dest), "-o", "json"], env, *secrets)
    assert set(json.loads(again.stdout)["files"].values()) == {"kept"}  # a rerun skips verified files


def test_a_single_file_only_a_subtask_writes_is_not_missing_on_the_primary(standin: BatchEmulator,
                                                                           azurite: Azurite,
                                                                           tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, command=["python3", "wrapper.py"],
                                       outputs=[{"pattern": "only-sub.txt", "kind": "TaskOutput"}],
                                       common_files=[{"source": "hello.py", "path": "hello.py"},
                                                     {"source": "wrapper.py", "path": "wrapper.py"}])
    (spec.parent / "wrapper.py").write_text(SUBTASK_ONLY)
    env = cli_env(standin, azurite)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")], env,
                *secrets_of(standin, azurite))
    result = json.loads(p.stdout)
    assert p.returncode == 0 and result["missing"] == [], (p.stderr, result["missing"])
    with_file = [i["index"] for i in result["instances"] if "only-sub.txt" in i["files"]]
    assert with_file and 0 not in with_file


CLASHING = """
import os
from mpi4py import MPI
if MPI.COMM_WORLD.rank == 2:  # the first subtask's node: its outputs come back through storage
    os.makedirs("$TaskOutput", exist_ok=True)
    open("$TaskOutput/stdout.txt", "w").write("mine\\n")
    open("stdout.txt", "w").write("renamed\\n")
exec(open("hello.py").read())
"""


def test_two_outputs_with_one_collected_name_are_refused_on_collect(standin: BatchEmulator, azurite: Azurite,
                                                                   tmp_path: Path) -> None:
    """Issue 19 item 4 on the Azure path: `stdout.txt` (collected as `$TaskOutput/stdout.txt`, a log has its
    name) and a file that is `$TaskOutput/stdout.txt` itself: the clash is refused and named, never one file
    written over the other."""
    spec, job_id, task_id = hello_spec(tmp_path, command=["python3", "wrapper.py"], outputs=["**"],
                                       common_files=[{"source": "hello.py", "path": "hello.py"},
                                                     {"source": "wrapper.py", "path": "wrapper.py"}])
    (spec.parent / "wrapper.py").write_text(CLASHING)
    p = run_cli(["submit", str(spec), "--output", "json", "--runs-dir", str(tmp_path / "runs")],
                cli_env(standin, azurite), *secrets_of(standin, azurite))
    result = json.loads(p.stdout)
    refused = [m for m in result["missing"] if "not collected" in m]
    assert p.returncode != 0 and len(refused) == 1 and "$TaskOutput/stdout.txt" in refused[0], result["missing"]
    got = tmp_path / "runs" / job_id / task_id / "1" / "$TaskOutput" / "stdout.txt"
    assert got.read_text() == "mine\n"
