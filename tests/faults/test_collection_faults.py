"""Collection under faults (issue 12, items 1, 2, 3, 4, 10, 14), on the local executor and on SSH hosts in
network namespaces. Each test's docstring quotes the item it checks."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mpibatch.errors import SpecError
from mpibatch.executors.collection import read_tail
from mpibatch.executors.local import LocalExecutor
from mpibatch.executors.ssh import SshExecutor
from mpibatch.results import TaskResult
from mpibatch.spec import parse_spec
from tests.infra.cluster import SshCluster
from tests.infra.fixtures import REPO_ROOT, VENVS, mpi_env, require, ssh_cluster3  # noqa: F401

pytestmark = pytest.mark.mpi
Runner = Callable[..., TaskResult]


def spec(tmp: Path, script: str, outputs: list[str], instances: int = 2) -> Any:
    """A task whose program is a bash script run by every rank (one per node), in its working directory."""
    return parse_spec({"job": {"id": "faults"}, "task": {
        "id": "t", "instances": instances, "mpi": {"flavor": "mpich", "processes_per_node": 1},
        "command": ["/bin/bash", "-c", script], "outputs": [{"pattern": p} for p in outputs],
        "max_wall_clock": "120s"}}, tmp)


@pytest.fixture(params=["local", "ssh"])
def runner(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Runner]:
    """run(spec, runs_dir=...) on the executor under test."""
    if request.param == "local":
        def run_local(s: Any, runs_dir: Path | None = None) -> TaskResult:
            return LocalExecutor(base_env=mpi_env("mpich"), runs_dir=runs_dir or tmp_path / "runs").submit(s).result()
        yield run_local
    else:
        cluster: SshCluster = request.getfixturevalue("ssh_cluster3")

        def run_ssh(s: Any, runs_dir: Path | None = None) -> TaskResult:
            ex = SshExecutor(cluster.hosts[:2], user="root", key=str(cluster.client_key_path),
                             known_hosts=str(cluster.known_hosts_path), runs_dir=str(runs_dir or tmp_path / "runs"),
                             remote_path_prepend=[str(VENVS / "mpich" / "bin")])
            return ex.submit(s).result()
        yield run_ssh


def test_item1_an_output_named_stdout_never_overwrites_the_log(runner: Runner, tmp_path: Path) -> None:
    """1. An output named `stdout.txt` / `stderr.txt` (pattern `*.txt`) silently **overwrites the instance's
    logs** in `mpibatch-runs/<job>/<task>/<i>/`."""
    r = runner(spec(tmp_path, "echo LOG-LINE; echo OUTPUT-FILE > stdout.txt; echo other > result.txt", ["*.txt"]))
    assert r.succeeded, r.failure
    assert "LOG-LINE" in Path(r.output_dir or "", "0", "stdout.txt").read_text()  # the application's log
    for inst in r.instances:
        d = Path(r.output_dir or "", str(inst.index))
        assert (d / "$TaskOutput" / "stdout.txt").read_text() == "OUTPUT-FILE\n"
        assert sorted(inst.files) == ["$TaskOutput/stdout.txt", "result.txt"]


def test_item2_an_unusable_runs_dir_is_refused_before_anything_starts(runner: Runner, tmp_path: Path) -> None:
    """2. An unusable `--runs-dir` (a file, a path under /proc) is found only **after** the task ran:
    traceback, exit 1, node directories removed - every output and log lost. Check it before anything starts."""
    marker = tmp_path / "ran"
    s = spec(tmp_path, f"touch {marker}", [])
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    for bad in (a_file, Path("/proc/mpibatch-runs"), a_file / "below"):
        with pytest.raises(SpecError, match="--runs-dir"):
            runner(s, runs_dir=bad)
    assert not marker.exists()


def test_item2_the_cli_exits_2_and_starts_nothing(tmp_path: Path) -> None:
    """2. (the same, as a user meets it) `mpibatch run --runs-dir FILE` exits 2 with one clear line."""
    (tmp_path / "spec.yaml").write_text("job: {id: j}\ntask: {id: t, instances: 2, mpi: mpich, command: 'true'}\n")
    (tmp_path / "runs").write_text("a file")
    before = set(os.listdir(tempfile.gettempdir()))
    p = subprocess.run([sys.executable, "-m", "mpibatch.cli", "run", str(tmp_path / "spec.yaml"), "--runs-dir",
                        str(tmp_path / "runs")], env=mpi_env("mpich"), capture_output=True, text=True, timeout=60,
                       cwd=REPO_ROOT)
    assert p.returncode == 2, p.stderr
    assert "--runs-dir" in p.stderr and "Traceback" not in p.stderr
    assert not [n for n in set(os.listdir(tempfile.gettempdir())) - before if n.startswith("mpibatch-nodes-")]


@pytest.fixture
def tiny_runs_dir(tiny_fs: Path) -> Path:
    """A 1 MiB tmpfs: the runs dir's disk is full after 1 MiB."""
    return tiny_fs


def test_item3_a_collection_failure_fails_the_run_and_keeps_the_nodes_files(
        runner: Runner, tmp_path: Path, tiny_runs_dir: Path) -> None:
    """3. A collection failure (disk full on the runs dir) exits **0 with `"succeeded": true`**; a truncated
    file stays under its final name; later files are never tried; the node sources are deleted. A run whose
    outputs did not all arrive has not succeeded; partial files never carry a final name; the nodes' files
    are kept (and their path printed) when collection fails."""
    r = runner(spec(tmp_path, "head -c 3000000 /dev/urandom > a-big.bin; echo small > b-small.txt",
                    ["a-big.bin", "b-small.txt"]), runs_dir=tiny_runs_dir)
    assert not r.succeeded
    assert r.failure is not None and r.failure.phase == "collecting", r.failure
    assert "a-big.bin" in r.failure.reason and "kept" in r.failure.reason
    assert any("a-big.bin" in m for m in r.missing)
    collected = [p.relative_to(tiny_runs_dir) for p in tiny_runs_dir.rglob("*") if p.is_file()]
    assert not [p for p in collected if p.name.endswith(".part") or p.name == "a-big.bin"], collected
    assert any(p.name == "b-small.txt" for p in collected)  # the later file was still tried
    kept = r.failure.reason.rsplit("kept: ", 1)[1].split(" ")[0]
    if kept.startswith("/tmp/mpibatch-nodes-"):  # local: kept on this machine
        assert list(Path(kept).rglob("a-big.bin"))
        subprocess.run(["rm", "-rf", "--", str(Path(kept).parent)], check=True)


def test_item4_double_star_matches_names_with_a_newline(runner: Runner, tmp_path: Path) -> None:
    """4. `**` never matches a name containing a newline (the glob regex lacks DOTALL): such a file is
    **silently not collected** and not listed as missing."""
    r = runner(spec(tmp_path, "mkdir -p res/sub; echo a > $'res/sub/two\\nlines.txt'; echo b > res/plain.txt",
                    ["res/**"]))
    assert r.succeeded, r.failure
    for inst in r.instances:
        assert sorted(inst.files) == ["res/plain.txt", "res/sub/two\nlines.txt"]
        assert Path(r.output_dir or "", str(inst.index), "res/sub/two\nlines.txt").read_text() == "a\n"


def test_item10_log_tails_read_only_the_tail(tmp_path: Path) -> None:
    """10. Log tails read whole files: a 1 GiB stdout costs 4.2 GB RSS; a stderr symlinked to `/dev/zero`
    never ends."""
    big = tmp_path / "stdout.txt"
    with open(big, "wb") as f:
        f.truncate(1 << 30)  # 1 GiB (sparse)
        f.seek((1 << 30) - 4)
        f.write(b"END\n")
    tracemalloc.start()
    text = read_tail(big)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert text.endswith("END\n") and peak < 1 << 20
    link = tmp_path / "stderr.txt"
    link.symlink_to("/dev/zero")
    assert read_tail(link) == ""  # not followed, so it ends


def test_item10_a_stderr_linked_to_dev_zero_does_not_hang_the_run(runner: Runner, tmp_path: Path) -> None:
    """10. ... a stderr symlinked to `/dev/zero` never ends."""
    r = runner(spec(tmp_path, "rm -f ../stderr.txt; ln -s /dev/zero ../stderr.txt; echo done", []))
    assert not r.succeeded and r.failure is not None and r.failure.phase == "collecting"
    assert any("stderr.txt" in m and ("symlink" in m or "regular" in m) for m in r.missing), r.missing
    assert "done" in r.instances[0].stdout


def test_item14_collection_never_follows_symlinks_out_of_the_working_directory(runner: Runner,
                                                                               tmp_path: Path) -> None:
    """14. Collection follows symlinks a program made: replacing `../stdout.txt` or its working directory
    with a link brings files from outside the working directory into the results."""
    outside = tmp_path / "outside"
    (outside / "res").mkdir(parents=True)
    (outside / "res" / "secret.txt").write_text("SECRET")
    script = (f"mkdir -p res; echo mine > res/mine.txt; ln -s {outside}/res/secret.txt res/link.txt; "
              f"ln -s {outside}/res res/dirlink; rm -f ../stdout.txt; ln -s {outside}/res/secret.txt ../stdout.txt")
    r = runner(spec(tmp_path, script, ["res/**", "*.txt"]))
    for inst in r.instances:
        assert inst.files == ["res/mine.txt"]
    got = [p for p in Path(r.output_dir or "").rglob("*") if p.is_file()]
    assert not [p for p in got if "SECRET" in p.read_text(errors="replace")], got
    assert any("stdout.txt" in m for m in r.missing)
