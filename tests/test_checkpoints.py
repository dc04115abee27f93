"""Checkpoints (docs/checkpoints.md): the generation rules, the manifest, the spec field and --preempt-at, and a
rehearsal preempted twice that restores its newest complete generation each time."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from mpibatch.launchers import checkpoint as ck
from mpibatch.launchers import protocol

from mpibatch.cli import main as cli
from mpibatch.errors import SpecError, SpecErrors
from mpibatch.preemption import due, parse_preempt_at
from mpibatch.spec import Spec, parse_spec
from tests.infra.cluster import SshCluster
from tests.infra.fixtures import VENVS, mpi_env, ssh_cluster_factory  # noqa: F401
from tests.infra.preempt import run_preempted

DATA = Path(__file__).parent / "data" / "checkpoint"
TASK = "t"


def names(index: int, complete: list[int], partial: list[int] = ()) -> list[str]:
    out = []
    for g in [*complete, *partial]:
        out.append(f"{ck.generation_prefix(TASK, index, g)}/restart.1")
    out += [ck.manifest_name(TASK, index, g) for g in complete]
    return out


# ------------------------------------------------------------------------------------------- the rules
def test_names_put_generations_under_task_intermediate() -> None:
    assert ck.generation_prefix("sim", 2, 7) == "sim/$TaskIntermediate/2/checkpoint/000007"
    assert ck.manifest_name("sim", 0, 12) == "sim/$TaskIntermediate/0/checkpoint/000012.json"


def test_scan_counts_a_generation_complete_only_with_its_manifest() -> None:
    listing = names(0, [1, 2], partial=[3]) + names(1, [1])
    assert ck.scan(listing, TASK, 0) == ({1, 2, 3}, {1, 2})
    assert ck.scan(listing, TASK, 1) == ({1}, {1})
    # A file that merely ends in .json inside a generation is a file, not a manifest.
    inner = [f"{ck.generation_prefix(TASK, 0, 4)}/state.json"]
    assert ck.scan(inner, TASK, 0) == ({4}, set())


def test_restorable_primary_takes_its_newest_complete_all_takes_the_newest_every_instance_completed() -> None:
    complete = {0: {1, 2, 3}, 1: {1, 2}, 2: {2, 3}}
    assert ck.restorable(complete, 3, "primary") == 3
    assert ck.restorable(complete, 3, "all") == 2
    assert ck.restorable({0: {1}, 1: set()}, 2, "all") is None
    assert ck.restorable({}, 1, "primary") is None


def test_pruning_keeps_the_newest_complete_and_anything_newer() -> None:
    assert ck.to_prune({1, 2, 3, 4, 5}, {1, 2, 4}, keep=2) == {1}
    assert ck.to_prune({1, 2, 3, 4, 5}, {1, 2, 4}, keep=1) == {1, 2, 3}
    assert ck.to_prune({1}, set(), keep=2) == set()  # nothing complete yet: nothing goes


def test_a_manifest_path_never_leaves_the_working_directory() -> None:
    assert ck.safe_rel("restart.1") and ck.safe_rel("ck/a/b.bin")
    assert not any(ck.safe_rel(r) for r in ("", "/etc/passwd", "../x", "a/../../x", ".mpibatch-node.env"))


def test_next_generation_follows_every_instance() -> None:
    assert ck.next_generation([]) == 1
    assert ck.next_generation({3, 5, 4}) == 6


def test_a_file_is_saved_only_when_unchanged_for_an_interval_and_new() -> None:
    a = (("restart.1", 10, 100),)
    b = (("restart.1", 12, 200),)
    assert not ck.should_save(None, a, None)  # first look: not yet quiet for an interval
    assert ck.should_save(a, a, None)
    assert not ck.should_save(a, b, None)  # still changing
    assert not ck.should_save(a, a, a)  # already saved (or restored)
    assert not ck.should_save((), (), None)  # nothing to save


def test_manifest_round_trips_and_is_read_strictly() -> None:
    m = protocol.CheckpointManifest(generation=3, index=1, node_id="n", saved_at="now",
                                    files={"restart.1": {"size": 4, "md5": "x"}})
    assert protocol.CheckpointManifest.from_json(m.to_json()) == m
    data = json.loads(m.to_json())
    for bad in ({**data, "schema": 2}, {**data, "generation": "3"}, {**data, "files": {"a": {"size": 1}}}):
        with pytest.raises(protocol.RecordError):
            protocol.CheckpointManifest.from_json(json.dumps(bad))


def test_saver_and_restore_through_a_store(tmp_path: Path) -> None:
    wd, store, wd2 = tmp_path / "wd", ck.DirStore(str(tmp_path / "store")), tmp_path / "wd2"
    wd.mkdir(), wd2.mkdir()
    saver = ck.Saver(store, TASK, 0, 1, str(wd), "restart.*", keep=2, node_id="node-0")
    assert ck.restore(store, TASK, 0, 1, "primary", str(wd2)) == (
        None, "no complete checkpoint generation: the program starts fresh")
    assert ck.export_lines(None) == "unset MPIBATCH_RESTART MPIBATCH_CHECKPOINT\n"
    assert ck.export_lines(4) == "export MPIBATCH_RESTART=1\nexport MPIBATCH_CHECKPOINT=4\n"
    for n in range(4):
        (wd / "restart.dat").write_bytes(bytes([n]) * 1000)
        assert saver.look() is None  # first seen: not yet quiet
        assert saver.look() == n + 1
        assert saver.look() is None  # unchanged: not saved twice
    _, complete = ck.scan(store.names(TASK), TASK, 0)
    assert complete == {3, 4}  # keep: 2
    # A generation cut short (a node died while copying, no manifest) is never restored.
    store.put_bytes(f"{ck.generation_prefix(TASK, 0, 5)}/restart.dat", b"half")
    g, line = ck.restore(store, TASK, 0, 1, "primary", str(wd2))
    assert g == 4 and "generation 4" in line
    assert (wd2 / "restart.dat").read_bytes() == bytes([3]) * 1000
    # A stored file that no longer matches its manifest is refused, never put in place.
    (tmp_path / "store" / ck.generation_prefix(TASK, 0, 4) / "restart.dat").write_bytes(b"x" * 1000)
    (wd2 / "restart.dat").unlink()
    with pytest.raises(OSError):
        ck.restore(store, TASK, 0, 1, "primary", str(wd2))
    assert not (wd2 / "restart.dat").exists()


# ------------------------------------------------------------------------------------------- spec and options
SPEC = {"job": {"id": "j"}, "task": {"id": "t", "mpi": {"flavor": "mpich"}, "command": ["a"]}}


def with_checkpoint(value: object) -> dict:
    return {**SPEC, "task": {**SPEC["task"], "checkpoint": value}}


def test_spec_checkpoint_defaults_and_every_field_checked() -> None:
    c = parse_spec(with_checkpoint({"pattern": "restart.*"}), Path(".")).task.checkpoint
    assert (c.pattern, c.from_, c.every, c.keep) == ("restart.*", "primary", 600, 2)
    given = {"pattern": "ck/**", "from": "all", "every": "1s", "keep": 5}
    c = parse_spec(with_checkpoint(given), Path(".")).task.checkpoint
    assert (c.from_, c.every, c.keep) == ("all", 1, 5)
    with pytest.raises(SpecErrors) as e:
        parse_spec(with_checkpoint({"pattern": "../x", "from": "both", "every": "0s", "keep": 0}), Path("."))
    fields = sorted(err.field for err in e.value.errors)
    assert fields == ["task.checkpoint.every", "task.checkpoint.from", "task.checkpoint.keep",
                      "task.checkpoint.pattern"]
    with pytest.raises(SpecError, match="task.checkpoint.evry.*did you mean 'every'"):
        parse_spec(with_checkpoint({"pattern": "a", "evry": "1m"}), Path("."))
    with pytest.raises(SpecError, match="task.checkpoint.pattern: is missing"):
        parse_spec(with_checkpoint({"every": "1m"}), Path("."))
    windows = with_checkpoint({"pattern": "a"})
    windows["task"]["mpi"] = {"flavor": "msmpi"}
    with pytest.raises(SpecError, match="task.checkpoint: is only supported on Linux"):
        parse_spec(windows, Path("."))


def test_render_passes_the_checkpoint_to_the_nodes() -> None:
    out = CliRunner().invoke(cli, ["render", str(DATA / "spec.yaml"), "-o", "json"])
    assert out.exit_code == 0, out.output
    line = json.loads(out.output)["task"]["commandLine"]
    assert "checkpoint.py\" restore" in line and "--checkpoint-every 1" in line and "--checkpoint-keep 2" in line
    assert line.index("checkpoint.py") < line.index("track.py") < line.index("counter.py")
    human = CliRunner().invoke(cli, ["render", str(DATA / "spec.yaml")]).output
    assert "restart.json on the primary" in human and "every 1s" in human and "2 complete generations kept" in human


def test_preempt_at_parses_increasing_times_and_refuses_the_rest() -> None:
    assert parse_preempt_at("30s,75s") == (30, 75)
    assert parse_preempt_at(None) == ()
    for bad in ("75s,30s", "0s", "soon", "30s,30s"):
        with pytest.raises(SpecError):
            parse_preempt_at(bad)
    assert due((30, 75), 0, 30.0) and not due((30, 75), 1, 74.9) and not due((30,), 1, 999)


def test_preemptions_come_at_their_times_and_on_demand_each_once() -> None:
    from mpibatch.executors.local import LocalExecutor
    from mpibatch.preemption import Preemptions

    p = Preemptions((30,))
    assert not p.take(10.0)
    p.ask()
    assert p.take(10.0) and not p.take(10.0)  # a request is one eviction, not a time
    assert p.take(30.0) and not p.take(99.0)
    with pytest.raises(RuntimeError, match="nothing to preempt"):
        LocalExecutor().preempt()


def test_run_refuses_bad_preempt_at_before_anything_starts(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["run", str(DATA / "spec.yaml"), "--preempt-at", "9s,3s",
                                   "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "--preempt-at" in res.output and "increasing order" in res.output
    assert not (tmp_path / "runs").exists()
    res = CliRunner().invoke(cli, ["run", str(DATA / "spec.yaml"), "--resume-from", str(tmp_path / "nothing"),
                                   "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "no checkpoints in" in res.output
    res = CliRunner().invoke(cli, ["run", str(DATA / "spec.yaml"), "--executor", "azure", "--preempt-at", "5s",
                                   "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "the azure executor does not take it" in res.output
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------------- a rehearsal
# 0.1 s each, a checkpoint every 20 steps (2 s): a generation is saved every 2 s or so. Rehearsals are evicted
# once the attempt running saved a generation (tests/infra/preempt.py), whatever start-up took.
STEPS = 200


def counter_spec(*extra: str, **task: object) -> Spec:
    data = yaml.safe_load((DATA / "spec.yaml").read_text())
    data["task"]["command"][2] = str(STEPS)
    data["task"]["command"] += list(extra)
    data["task"].update(task)
    return parse_spec(data, DATA)


def expected_total() -> int:
    return sum(6 + 4 * s for s in range(STEPS))  # 4 ranks add rank + step each step


@pytest.mark.mpi
def test_preempted_twice_restores_the_newest_generation_and_finishes(tmp_path: Path) -> None:
    from mpibatch.executors.local import LocalExecutor

    phases: list[str] = []
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs", progress=lambda p, d: phases.append(p))
    result, seen = run_preempted(ex, counter_spec(), 2)
    assert result.succeeded, (result.failure, [(i.stdout, i.stderr) for i in result.instances])
    assert (result.requeues, result.attempts) == (2, 1)  # requeued, not retried
    assert phases.count("preempted") == 2
    assert result.restored[1] >= seen[0] and result.restored[2] >= seen[1] > result.restored[1]
    out = (Path(result.output_dir) / "0" / "result.txt").read_text().split()
    start, total, generation = int(out[1]), int(out[3]), out[5]
    assert total == expected_total()  # the same as without preemption
    assert start > 0 and generation != "-"  # the last attempt started from a checkpoint, not from scratch
    assert f"restored checkpoint generation {generation}" in result.primary.stderr
    # Each attempt's generation, as the result reports it: the first started fresh, the later ones did not.
    assert len(result.restored) == 3 and result.restored[0] is None and result.restored[2] == int(generation)
    assert result.restored[1] is not None and result.restored[1] < result.restored[2]
    # The store moved into the run's directory, with at most `keep` complete generations.
    store = ck.DirStore(result.checkpoints_dir or "")
    _, complete = ck.scan(store.names("counter"), "counter", 0)
    assert 1 <= len(complete) <= 2 and int(generation) <= max(complete)
    manifest = protocol.CheckpointManifest.from_json(store.read(ck.manifest_name("counter", 0, max(complete))))
    assert list(manifest.files) == ["restart.json"]

    # A new run resumes from that store: it starts where the last saved generation left off.
    again = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs")
    again.resume_from = Path(result.checkpoints_dir or "")
    second = again.submit(counter_spec()).result()
    assert second.succeeded and second.requeues == 0
    words = (Path(second.output_dir) / "0" / "result.txt").read_text().split()
    newest = json.loads(store.read(f"{ck.generation_prefix('counter', 0, max(complete))}/restart.json"))
    assert int(words[1]) == newest["step"]
    assert int(words[3]) == total


@pytest.mark.mpi
def test_from_all_each_instance_gets_its_own_part_back(tmp_path: Path) -> None:
    """from: all: every node's files make up a generation; each instance gets its own part back, and every
    rank restores the same step."""
    from mpibatch.executors.local import LocalExecutor

    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs")
    spec = counter_spec("-1", "ranks", checkpoint={"pattern": "restart-*.json", "from": "all", "every": "1s",
                                                   "keep": 2})
    result, seen = run_preempted(ex, spec, 1)
    assert result.succeeded, (result.failure, [(i.stdout, i.stderr) for i in result.instances])
    assert result.requeues == 1 and result.restored[0] is None and result.restored[1] >= seen[0]
    words = (Path(result.output_dir) / "0" / "result.txt").read_text().split()
    assert int(words[1]) > 0 and int(words[3]) == expected_total()
    store = ck.DirStore(result.checkpoints_dir or "")
    g = int(words[5])
    for i, ranks in ((0, [0, 1]), (1, [2, 3])):  # 2 ranks per node: instance 1 holds ranks 2 and 3
        # Each node's restore step (its stderr reaches the primary's through the launcher) put back 2 files.
        assert f"mpibatch checkpoint [{i}]: restored checkpoint generation {g}: 2 files" in result.primary.stderr
        _, complete = ck.scan(store.names("counter"), "counter", i)
        newest = protocol.CheckpointManifest.from_json(store.read(ck.manifest_name("counter", i, max(complete))))
        assert sorted(newest.files) == [f"restart-{r}.json" for r in ranks]


@pytest.mark.mpi
def test_a_retry_restores_the_newest_generation(tmp_path: Path) -> None:
    """A crash (not a preemption) is retried by max_retries, and the retry starts from the checkpoint too."""
    from mpibatch.executors.local import LocalExecutor

    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs")
    result = ex.submit(counter_spec("70", max_retries=1)).result()
    assert result.succeeded, (result.failure, [(i.stdout, i.stderr) for i in result.instances])
    assert (result.attempts, result.requeues) == (2, 0)
    words = (Path(result.output_dir) / "0" / "result.txt").read_text().split()
    assert 0 < int(words[1]) <= 70 and int(words[3]) == expected_total()


def test_open_mpi_forwards_an_azure_only_variable_only_when_it_is_set() -> None:
    """The node steps' `-x` of the SAS URLs (set on Azure only) is dropped by bash when the name is unset."""
    import subprocess

    from mpibatch.mpi import get_flavor
    from mpibatch.shell import sh_join

    words = sh_join(get_flavor("openmpi").forward_if_set(["MPIBATCH_PERSIST_URL", "MPIBATCH_CHECKPOINT_URL"]))
    line = f'unset MPIBATCH_CHECKPOINT_URL; MPIBATCH_PERSIST_URL="a b"; printf "%s|" {words}'
    assert subprocess.run(["bash", "-c", line], capture_output=True, text=True).stdout == "-x|MPIBATCH_PERSIST_URL|"
    assert get_flavor("mpich").forward_if_set(["MPIBATCH_PERSIST_URL"]) == []  # hydra forwards everything


@pytest.mark.mpi
def test_an_open_mpi_rehearsal_names_no_unset_variable(tmp_path: Path) -> None:
    """A rehearsal has no SAS URLs: mpirun of the node steps is not asked to forward them (it would warn
    "Could not find the environment variable" on every run), and the steps still run on every node."""
    from mpibatch.executors.local import LocalExecutor

    ex = LocalExecutor(base_env=mpi_env("openmpi"), runs_dir=tmp_path / "runs")
    spec = counter_spec(command=["python3", "counter.py", "10", "5", "0.1"],
                        mpi={"flavor": "openmpi", "processes_per_node": 2})
    result = ex.submit(spec).result()
    assert result.succeeded, (result.failure, [(i.stdout, i.stderr) for i in result.instances])
    for i in (0, 1):  # the restore step, one process per node through that launch line
        assert f"mpibatch checkpoint [{i}]: no complete checkpoint generation" in result.primary.stderr
    assert "Could not find" not in "".join(i.stdout + i.stderr for i in result.instances)


@pytest.mark.cluster
def test_over_ssh_the_executor_pulls_generations_and_a_requeue_restores_one(
        ssh_cluster_factory: Callable[..., SshCluster], tmp_path: Path) -> None:  # noqa: F811 (the fixture)
    """SSH hosts do not see the runs directory: each node's tracker saves into its own node store, the executor
    pulls complete generations from it while the program runs and pushes the newest back before each attempt."""
    from mpibatch.executors.ssh import SshExecutor

    c = ssh_cluster_factory(2)
    ex = SshExecutor(c.hosts, user="root", key=str(c.client_key_path), runs_dir=str(tmp_path / "runs"),
                     known_hosts=str(c.known_hosts_path), remote_path_prepend=[str(VENVS / "mpich" / "bin")])
    result, seen = run_preempted(ex, counter_spec(), 1)  # once a generation is pulled into the run's store
    assert result.succeeded, (result.failure, [(i.stdout, i.stderr) for i in result.instances])
    assert (result.requeues, result.attempts) == (1, 1)
    words = (Path(result.output_dir) / "0" / "result.txt").read_text().split()
    assert int(words[1]) > 0 and int(words[3]) == expected_total()
    assert f"restored checkpoint generation {words[5]}" in result.primary.stderr
    assert result.restored == [None, int(words[5])] and int(words[5]) >= seen[0]  # pushed before attempt 2
    _, complete = ck.scan(ck.DirStore(result.checkpoints_dir or "").names("counter"), "counter", 0)
    assert 1 <= len(complete) <= 2
    assert not c.wait_idle(timeout=10)


@pytest.mark.mpi
@pytest.mark.alone  # evicted at fixed times, each after a checkpoint was saved
def test_cli_run_preempt_at_and_resume_from_job_task(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`mpibatch run --preempt-at` shows the requeue in -o json; `--resume-from JOB/TASK` starts from that
    task's newest run."""
    monkeypatch.setenv("PATH", mpi_env("mpich")["PATH"])
    runs = str(tmp_path / "runs")
    res = CliRunner().invoke(cli, ["run", str(DATA / "spec.yaml"), "--preempt-at", "7s", "--runs-dir", runs,
                                   "-o", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output[res.output.index("{"):])
    assert (out["requeues"], out["attempts"], out["succeeded"]) == (1, 1, True)
    assert out["checkpoints_dir"].endswith("ckpt/counter/checkpoints")
    res = CliRunner().invoke(cli, ["run", str(DATA / "spec.yaml"), "--resume-from", "ckpt/counter", "--runs-dir", runs])
    assert res.exit_code == 0, res.output
    assert "resuming from generation" in res.output and "requeued" not in res.output
    assert "checkpoint generation restored by each attempt: " in res.output
    assert "checkpoints (resume with --resume-from):" in res.output and "ckpt/counter.2/checkpoints" in res.output


def test_resume_from_a_run_that_never_finished(tmp_path: Path) -> None:
    """A killed run leaves its store at <job>/<task>.checkpoints; --resume-from JOB/TASK finds it, and the new
    run's store starts from its newest complete generation (the old one moves aside, nothing is lost)."""
    from mpibatch.checkpoints import open_run_store, resume_source
    from mpibatch.plan import plan_from_rendered
    from mpibatch.render import render

    spec = counter_spec()
    runs = tmp_path / "runs"
    dead = runs / "ckpt" / "counter.checkpoints"
    wd = tmp_path / "wd"
    wd.mkdir()
    saver = ck.Saver(ck.DirStore(str(dead)), "counter", 0, 2, str(wd), "restart.json", keep=2, node_id=None)
    (wd / "restart.json").write_text('{"step": 40}')
    assert saver.look() is None and saver.look() == 1
    source = resume_source("ckpt/counter", runs, spec)
    assert source == dead
    seen: list[str] = []
    store = open_run_store(runs, plan_from_rendered(render(spec)), source, lambda p, d: seen.append(d))
    assert store == dead and seen == [f"resuming from generation 1 of {dead.with_name(dead.name + '.old')}"]
    restored = tmp_path / "restored"
    restored.mkdir()
    assert ck.restore(ck.DirStore(str(store)), "counter", 0, 2, "primary", str(restored))[0] == 1
    assert (restored / "restart.json").read_text() == '{"step": 40}'
