"""Where the local executor puts each emulated node's files: mpibatch's own node-side scripts are one copy per
run, hard-linked into every node (they are never written there), while the user's common files stay each node's
own copy, as on Batch; and a TMPDIR under /dev/shm (which every node covers with its own) still works."""
from __future__ import annotations

import fcntl
import os
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mpibatch.launchers.protocol import NodeLayout

from mpibatch.executors.leftovers import remove_tree
from mpibatch.executors.local import LocalExecutor, LocalTransport
from mpibatch.executors.localenv import FS_IOC_GETFLAGS, FS_TOPDIR_FL, scratch_base, spread_subdirectories
from mpibatch.executors.userns import exited_within
from mpibatch.render import LAUNCHER_DIR, NODE_FILES
from mpibatch.results import TaskResult
from tests.infra.fixtures import mpi_env
from tests.test_local_executor import make_spec, run

pytestmark = pytest.mark.mpi


@contextmanager
def kept_run(tmp_path: Path, spec: object) -> Iterator[tuple[TaskResult, LocalTransport]]:
    """A successful local run whose node directories stay until the end of the block."""
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs", keep_nodes=True)
    r = ex.submit(spec).result()
    assert r.succeeded, r.failure
    t = ex.transport
    assert t is not None
    try:
        yield r, t
    finally:
        t.keep_nodes = False
        t.close()


def test_node_scripts_shared_user_files_each_nodes_own(tmp_path: Path) -> None:
    # node-1 appends to its copy of the common file before the ranks start; the others must not see it
    script = ('if [ "$AZ_BATCH_NODE_ID" = node-1 ]; then '
              'echo "# written on node-1" >> "$AZ_BATCH_TASK_SHARED_DIR/hello.py"; fi')
    with kept_run(tmp_path, make_spec(tmp_path, instances=3, ppn=1, coordination=script)) as (_, t):
        shared = [t.host_path(n, NodeLayout(n.root, "j1", "t1").task_shared_dir) for n in t.nodes]
        for name in NODE_FILES:
            inodes = {os.stat(d / LAUNCHER_DIR / name).st_ino for d in shared}
            assert len(inodes) == 1, f"{name}: one copy expected, found {len(inodes)}"
        user = [d / "hello.py" for d in shared]
        assert len({os.stat(p).st_ino for p in user}) == 3, "each node needs its own copy of a common file"
        assert [p.read_text().endswith("# written on node-1\n") for p in user] == [False, True, False]


@pytest.mark.parametrize("tmp, base", [("/dev/shm", "/tmp"), ("/dev/shm/x/y", "/tmp"), ("/dev/shmx", "/dev/shmx"),
                                       ("/var/tmp", "/var/tmp")])
def test_scratch_base(tmp: str, base: str) -> None:
    assert scratch_base(tmp) == base


def test_scratch_base_skips_what_the_user_may_not_write(tmp_path: Path) -> None:
    missing, there = tmp_path / "missing", tmp_path / "there"
    there.mkdir()
    assert scratch_base("/dev/shm", (str(missing), str(there))) == str(there)
    assert scratch_base("/dev/shm/x", (str(missing),)) == str(missing)  # none: the first, and its error later


def test_tmpdir_under_dev_shm_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shm = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        monkeypatch.setattr(tempfile, "tempdir", str(shm))
        r = run(tmp_path, make_spec(tmp_path, instances=2, ppn=1))
        assert r.succeeded, r.failure
    finally:
        os.rmdir(shm)


def test_a_node_cannot_see_or_write_another_nodes_directory(tmp_path: Path) -> None:
    """Every node's directory lies on this machine beside the others (under the run's directory, which the agent's
    address table names); a node sees only its own, as on Batch."""
    script = ('nodes="${MPIBATCH_LOCAL_NODES%/*}/nodes"; ls -A "$nodes" > seen.txt; '
              'for i in 0 1 2; do touch "$nodes/$i/intruder-$AZ_BATCH_NODE_ID" 2> /dev/null; done; true')
    spec = make_spec(tmp_path, instances=3, ppn=1, coordination=script, outputs=[{"pattern": "seen.txt"}])
    with kept_run(tmp_path, spec) as (r, t):
        for inst in r.instances:
            assert (Path(inst.output_dir) / "seen.txt").read_text() == "", inst.index
        assert not list((t.workdir / "nodes").rglob("intruder-*"))


def test_without_hard_links_the_node_scripts_are_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file system that refuses hard links (some network and FUSE ones) gets plain copies: the run works."""
    def refuse(src: object, dst: object) -> None:
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(os, "link", refuse)
    r = run(tmp_path, make_spec(tmp_path, instances=2, ppn=1))
    assert r.succeeded, r.failure


def _flags(path: Path) -> int | None:
    """The directory's inode flags (chattr's), None where the file system keeps none."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(8)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf)
        return int(struct.unpack_from("i", buf)[0])
    except OSError:
        return None
    finally:
        os.close(fd)


def test_node_directories_are_spread_over_the_file_system_where_it_can(tmp_path: Path) -> None:
    """On ext4 (this machine's /tmp, without a journal) the nodes' parent is flagged +T, so each run's node
    directories land away from the inodes the last run freed; elsewhere the call says it did nothing."""
    d = tmp_path / "d"
    d.mkdir()
    fs = subprocess.run(["stat", "-f", "-c", "%T", str(d)], capture_output=True, text=True, check=True).stdout.strip()
    done = spread_subdirectories(str(d))
    flags = _flags(d)
    assert done == bool(flags is not None and flags & FS_TOPDIR_FL)
    if fs.startswith("ext"):
        assert done, f"{fs}: the +T flag was not set"
    link = tmp_path / "link"
    link.symlink_to(d)
    assert not spread_subdirectories(str(link))  # never through a symlink
    assert not spread_subdirectories(str(tmp_path / "missing"))
    with kept_run(tmp_path, make_spec(tmp_path, instances=2, ppn=1)) as (_, t):
        nodes_flags = _flags(Path(t.kept_dir))
        assert bool(nodes_flags is not None and nodes_flags & FS_TOPDIR_FL) == spread_subdirectories(t.kept_dir)


def test_remove_tree_waits_for_rm_by_its_exit_and_bounds_it(tmp_path: Path) -> None:
    tree = tmp_path / "run"
    (tree / "nodes" / "0" / "wd").mkdir(parents=True)
    (tree / "nodes" / "0" / "wd" / "f").write_text("x")
    (tree / "link").symlink_to("/etc")  # removed, never followed
    remove_tree(tree)
    assert not os.path.lexists(tree) and os.path.isdir("/etc")
    quick = subprocess.Popen(["sleep", "0.2"])
    start = time.monotonic()
    assert exited_within(quick, 30) and quick.returncode == 0
    assert time.monotonic() - start < 5
    stuck = subprocess.Popen(["sleep", "30"])
    try:
        assert not exited_within(stuck, 0.2) and stuck.returncode is None
    finally:
        stuck.kill()
        stuck.wait()
