"""Checkpoints with ``from: all`` (docs/checkpoints.md#generations): a generation is restored only when its parts
on every instance belong to one checkpoint (issue 21) - never parts of different checkpoints, as a tracker that
missed a checkpoint the others saved would number them. Each manifest says when its files were last written;
restore skips a generation whose parts were written `every` or more apart, and a tracker that missed one numbers
its later checkpoints as the others do again."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mpibatch.launchers import checkpoint as ck
from mpibatch.launchers import protocol

from mpibatch.spec import parse_spec
from tests.infra.fixtures import mpi_env

DATA = Path(__file__).parent / "data" / "checkpoint"
LAUNCHERS = Path(ck.__file__).parent
TASK = "counter"
S = 1_000_000_000  # ns in a second
T0 = 1_700_000_000 * S  # a checkpoint's write time (ns since the epoch)


# ------------------------------------------------------------------------------------------- the decision (pure)
def test_parts_written_within_one_every_belong_together() -> None:
    assert ck.mismatch({0: (T0, 4.0), 1: (T0 + S // 100, 4.0)}) is None  # the same step, 10 ms apart
    assert ck.mismatch({0: (T0, 4.0), 1: (T0 + 3 * S, 4.0), 2: (T0 + S, 4.0)}) is None
    assert ck.mismatch({0: (T0, 4.0)}) is None  # one instance: nothing to compare


def test_parts_written_an_every_or_more_apart_are_different_checkpoints() -> None:
    why = ck.mismatch({0: (T0, 4.0), 1: (T0 + 20 * S, 4.0), 2: (T0 + S, 4.0)})
    assert why == ("instance 1's files were written 20s after instance 0's (the trackers look every 4s): parts of "
                   "different checkpoints")
    assert ck.mismatch({0: (T0 + 4 * S, 4.0), 1: (T0, 4.0)}) is not None  # exactly one every: not one checkpoint
    assert ck.mismatch({0: (T0, 10.0), 1: (T0 + 5 * S, 2.0)}) is not None  # the shortest every is the bound


def test_manifests_without_the_stamp_are_not_checked_and_still_restore() -> None:
    assert ck.mismatch({0: (None, None), 1: (None, None)}) is None
    assert ck.mismatch({0: (T0, 4.0), 1: (None, None)}) is None  # an older tracker's part: nothing to compare
    assert ck.mismatch({0: (T0, 4.0), 1: (None, None), 2: (T0 + 9 * S, 4.0)}) is not None


def test_a_tracker_numbers_a_checkpoint_as_the_other_instances_did() -> None:
    # In step: another instance already saved this checkpoint as 5, or nothing yet.
    assert ck.aligned_number(5, T0, 4.0, [(5, (T0 + S // 10, 4.0))]) == 5
    assert ck.aligned_number(5, T0, 4.0, []) == 5
    # This tracker missed the checkpoint the others saved as 5 (written 10 s before this one): this one is 6.
    assert ck.aligned_number(5, T0, 4.0, [(5, (T0 - 10 * S, 4.0))]) == 6
    assert ck.aligned_number(5, T0, 4.0, [(5, (T0 - 10 * S, 4.0)), (6, (T0, 4.0))]) == 6
    # A newer checkpoint of another instance, or one without a stamp, says nothing about this one.
    assert ck.aligned_number(5, T0, 4.0, [(5, (T0 + 10 * S, 4.0)), (6, (None, None))]) == 5


def test_the_manifest_stamp_round_trips_and_older_manifests_still_read() -> None:
    m = protocol.CheckpointManifest(generation=3, index=1, node_id="n", saved_at="now",
                                    files={"restart.1": {"size": 4, "md5": "x"}}, newest_mtime_ns=T0, every=4.0)
    assert protocol.CheckpointManifest.from_json(m.to_json()) == m
    data = json.loads(m.to_json())
    assert data["schema"] == 1 and (data["newest_mtime_ns"], data["every"]) == (T0, 4.0)
    old = {k: v for k, v in data.items() if k not in ("newest_mtime_ns", "every")}  # what older trackers wrote
    assert ck.stamp(protocol.CheckpointManifest.from_json(json.dumps(old))) == (None, None)
    for bad in ({**data, "every": 0}, {**data, "newest_mtime_ns": "1"}, {**data, "every": None}):
        with pytest.raises(protocol.RecordError):
            protocol.CheckpointManifest.from_json(json.dumps(bad))


# ------------------------------------------------------------------------------------------- a store
def counter_state(rank: int, step: int) -> dict[str, int]:
    """What tests/data/checkpoint/counter.py (ranks mode) writes for `rank` at `step`."""
    return {"step": step, "value": sum(rank + s for s in range(step))}


def put_part(store: ck.DirStore, tmp: Path, index: int, g: int, step: int, mtime_ns: int | None,
             every: float | None = 4.0) -> None:
    """Instance `index`'s part of generation `g` as its tracker saves it: the files of its two ranks at `step`,
    written at `mtime_ns`, then the manifest (with no stamp when `mtime_ns` is None: an older tracker)."""
    files = {}
    for rank in (2 * index, 2 * index + 1):
        rel = f"restart-{rank}.json"
        src = tmp / "src" / rel
        src.parent.mkdir(exist_ok=True)
        src.write_text(json.dumps(counter_state(rank, step)))
        files[rel] = store.put(str(src), f"{ck.generation_prefix(TASK, index, g)}/{rel}")
    m = ck.Manifest(generation=g, index=index, node_id=f"node-{index}", saved_at="2026-12-04T19:00:00+00:00",
                    files=files, newest_mtime_ns=mtime_ns, every=every if mtime_ns is not None else None)
    store.put_bytes(ck.manifest_name(TASK, index, g), m.to_json().encode())


def missed_one(tmp: Path) -> ck.DirStore:
    """Checkpoints at steps 20, 40, 60 and 80, 10 s apart, trackers looking every 4 s. Instance 0 saved
    20, 40 and 60 as generations 1, 2, 3; instance 1 missed step 40 (a busy node) and, numbering on its own,
    saved 20, 60 and 80 as 1, 2, 3. Generations 2 and 3 are complete on both, but only 1 is one checkpoint."""
    store = ck.DirStore(str(tmp / "store"))
    for g, step in ((1, 20), (2, 40), (3, 60)):
        put_part(store, tmp, 0, g, step, T0 + (step // 2) * S)
    for g, step in ((1, 20), (2, 60), (3, 80)):
        put_part(store, tmp, 1, g, step, T0 + (step // 2) * S + S // 50)
    return store


def test_restore_skips_mismatched_generations_for_the_newest_consistent_one(tmp_path: Path) -> None:
    store = missed_one(tmp_path)
    assert ck.restorable(ck.complete_generations(store, TASK, 2)[0], 2, "all") == 3  # complete, all the same
    g, skipped = ck.newest_restorable(store, TASK, 2, "all")
    assert g == 1
    assert skipped == [
        "checkpoint generation 3 skipped: instance 1's files were written 10s after instance 0's (the trackers "
        "look every 4s): parts of different checkpoints",
        "checkpoint generation 2 skipped: instance 1's files were written 10s after instance 0's (the trackers "
        "look every 4s): parts of different checkpoints"]
    # from: primary has one part per generation: nothing to compare, its newest is restored.
    assert ck.newest_restorable(store, TASK, 2, "primary") == (3, [])


def test_no_consistent_generation_starts_fresh_and_old_manifests_restore_as_before(tmp_path: Path) -> None:
    store = ck.DirStore(str(tmp_path / "store"))
    put_part(store, tmp_path, 0, 1, 20, T0)
    put_part(store, tmp_path, 1, 1, 40, T0 + 10 * S)
    wd = tmp_path / "wd"
    wd.mkdir()
    g, line = ck.restore(store, TASK, 1, 2, "all", str(wd))
    assert g is None and line.splitlines() == [
        "checkpoint generation 1 skipped: instance 1's files were written 10s after instance 0's (the trackers "
        "look every 4s): parts of different checkpoints",
        "no complete checkpoint generation: the program starts fresh"]
    assert not list(wd.iterdir())
    # Manifests of older trackers (no stamp): restored as before, nothing to check them against.
    for i in (0, 1):
        put_part(store, tmp_path, i, 2, 40, None)
    assert ck.restore(store, TASK, 1, 2, "all", str(wd)) == (2, "restored checkpoint generation 2: 2 files")


@pytest.mark.parametrize("first", [0, 1])
def test_a_tracker_that_missed_a_checkpoint_numbers_the_next_as_the_others(tmp_path: Path, first: int) -> None:
    """Two real savers on one store: instance 1 never sees step 40 (its file goes from 20 to 60 between two
    looks); its step 60 still becomes generation 3, as on instance 0, whichever saves first."""
    store = ck.DirStore(str(tmp_path / "store"))
    wds = [tmp_path / f"wd{i}" for i in (0, 1)]
    savers = []
    for i, wd in enumerate(wds):
        wd.mkdir()
        savers.append(ck.Saver(store, TASK, i, 2, str(wd), "restart-*.json", keep=5, node_id=None, every=4.0))

    def write(i: int, step: int) -> None:
        for rank in (2 * i, 2 * i + 1):
            path = wds[i] / f"restart-{rank}.json"
            path.write_text(json.dumps(counter_state(rank, step)))
            os.utime(path, ns=(T0 + step * S // 2, T0 + step * S // 2))

    def save(i: int) -> int | None:
        assert savers[i].look() is None  # the first look at new files: not yet quiet for an interval
        return savers[i].look()

    for i in (0, 1):
        write(i, 20)
    assert [save(0), save(1)] == [1, 1]
    write(0, 40)
    assert save(0) == 2  # instance 1 misses this one
    for i in (0, 1):
        write(i, 60)
    assert [save(first), save(1 - first)] == [3, 3]
    assert ck.newest_restorable(store, TASK, 2, "all") == (3, [])
    manifest = ck.Manifest.from_json(store.read(ck.manifest_name(TASK, 1, 3)))
    assert (manifest.newest_mtime_ns, manifest.every) == (T0 + 30 * S, 4.0)
    assert 2 not in ck.complete_generations(store, TASK, 2)[0][1]  # the missed one: never complete


# ------------------------------------------------------------------------------------------- real runs
def test_each_nodes_restore_step_puts_back_the_consistent_generation(tmp_path: Path) -> None:
    """The restore step as the nodes run it (``python3 checkpoint.py restore``, one process per node) on a
    store where a missed checkpoint shifted one instance's numbering: both put back generation 1, and each
    node's log names the generations skipped and why."""
    store = missed_one(tmp_path)
    for i in (0, 1):
        wd = tmp_path / f"task{i}" / "wd"
        wd.mkdir(parents=True)
        (wd / protocol.NODE_ENV_FILE).write_text("export A=1\n")
        env = {"PATH": os.environ["PATH"], protocol.CHECKPOINT_STORE_VAR: store.root,
               "AZ_BATCH_HOST_LIST": "h0,h1", "AZ_BATCH_MASTER_NODE": "h0:6000", "PMI_RANK": str(i)}
        run = subprocess.run([sys.executable, str(LAUNCHERS / "checkpoint.py"), "restore", "--task", TASK,
                              "--checkpoint", "restart-*.json", "--checkpoint-from", "all"],
                             cwd=wd, env=env, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
        lines = run.stderr.splitlines()
        assert [x.split(":", 2)[1].strip() for x in lines] == [
            "checkpoint generation 3 skipped", "checkpoint generation 2 skipped",
            "restored checkpoint generation 1"], lines
        assert all(x.startswith(f"mpibatch checkpoint [{i}]: ") for x in lines)
        assert "parts of different checkpoints" in lines[0]
        for rank in (2 * i, 2 * i + 1):
            assert json.loads((wd / f"restart-{rank}.json").read_text()) == counter_state(rank, 20)
        assert (wd / protocol.NODE_ENV_FILE).read_text() == (
            "export A=1\nexport MPIBATCH_RESTART=1\nexport MPIBATCH_CHECKPOINT=1\n")


@pytest.mark.mpi
def test_a_rehearsal_resumed_from_a_store_with_a_missed_checkpoint_restores_one_checkpoint(tmp_path: Path) -> None:
    """The whole path: a run resumed from that store (4 ranks on 2 nodes, counter.py checking that every rank
    restored the same step, else it aborts) starts at step 20 - generation 1 - and computes the right total."""
    from mpibatch.executors.local import LocalExecutor

    store = missed_one(tmp_path)
    data = yaml.safe_load((DATA / "spec.yaml").read_text())
    data["task"]["command"] = ["python3", "counter.py", "60", "20", "0.05", "-1", "ranks"]
    data["task"]["checkpoint"] = {"pattern": "restart-*.json", "from": "all", "every": "1s", "keep": 2}
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs")
    ex.resume_from = Path(store.root)
    result = ex.submit(parse_spec(data, DATA)).result()
    assert result.succeeded, (result.failure, [(i.stdout, i.stderr) for i in result.instances])
    words = (Path(result.output_dir) / "0" / "result.txt").read_text().split()
    assert (int(words[1]), words[5]) == (20, "1")
    assert int(words[3]) == sum(r + s for r in range(4) for s in range(60))
    assert result.restored == [1]
    for i in (0, 1):
        assert f"mpibatch checkpoint [{i}]: restored checkpoint generation 1: 2 files" in result.primary.stderr
