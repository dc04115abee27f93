"""Wording a user reads (issue 22 item 8): failure reasons never show half a word, an interrupted or
timed-out task is not "FAILED in interrupted", render's MPI setup line says "none" once, and the README
and docs say what the code does."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpibatch.cli import main
from mpibatch.executors.local import LocalExecutor
from mpibatch.render import render
from mpibatch.report import format_result
from mpibatch.results import Failure, InstanceResult, TaskResult, reason_tail
from mpibatch.spec import load_spec, parse_spec
from tests.infra.fixtures import mpi_env
from tests.test_azure_executor import require_local_nodes

REPO = Path(__file__).resolve().parents[1]
HELLO = REPO / "examples" / "hello" / "spec.yaml"


@pytest.mark.parametrize("text,limit,want", [
    ("connect: Connection refused", 100, "connect: Connection refused"),  # nothing cut: as it is
    ("connect: Connection refused", 8, "...refused"),                      # cut inside "Connection"
    ("connect: Connection refused", 7, "...refused"),                      # cut at a space: same
    ("...[truncated]...\nefused and more", 100, "...and more"),            # cut before (the tail reader)
    ("a" * 50, 10, "..." + "a" * 10),                                     # one long word: marked
    ("  x  ", 10, "x"),
])
def test_reason_tail_cuts_at_a_word_and_says_so(text: str, limit: int, want: str) -> None:
    assert reason_tail(text, limit) == want


def test_reason_tail_told_of_an_earlier_cut() -> None:
    assert reason_tail("efused: gone", 100, cut=True) == "...gone"


def _result(phase: str) -> TaskResult:
    return TaskResult("j", "t", "local", "failed", None, failure=Failure(phase, "interrupted by the user; every "
                      "process was ended" if phase == "interrupted" else "max_wall_clock 5s exceeded"),
                      instances=[InstanceResult(0, "node-0", "127.0.1.1")])


@pytest.mark.parametrize("phase,headline", [("interrupted", "STOPPED: interrupted by the user"),
                                            ("timeout", "TIMED OUT: max_wall_clock 5s exceeded")])
def test_failure_headline_reads_as_english(phase: str, headline: str) -> None:
    text = format_result(_result(phase))
    assert headline in text and "FAILED in" not in text, text


def test_render_says_none_once_for_mpi_setup(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["render", str(HELLO)], catch_exceptions=False)
    line = next(x for x in res.output.splitlines() if x.startswith("MPI setup"))
    assert line.count("none") == 1 and "the runtime is on the node's PATH" in line, line
    spec = tmp_path / "spec.yaml"
    spec.write_text("job: {id: j}\ntask: {id: t, mpi: {flavor: mpich, setup: none}, command: x}\n")
    res = CliRunner().invoke(main, ["render", str(spec)], catch_exceptions=False)
    line = next(x for x in res.output.splitlines() if x.startswith("MPI setup"))
    assert line.split()[2:] == ["none", "(task.mpi.setup:", "none)"], line


def test_readme_hello_output_counts_the_common_files_the_run_sends() -> None:
    readme = (REPO / "README.md").read_text()
    shown = re.search(r"files: (\d+) common files to 3 nodes", readme)
    assert shown, "the README shows hello.sh's files line"
    assert int(shown.group(1)) == len(render(load_spec(HELLO)).common_files)


def test_emulator_doc_does_not_ask_for_root_for_multi_instance_tasks() -> None:
    doc = (REPO / "docs" / "emulator.md").read_text()
    assert "needs root" not in doc and "normal user" in doc


@pytest.mark.mpi
def test_coordination_failure_reason_shows_whole_words(tmp_path: Path) -> None:
    require_local_nodes()
    words = " ".join(f"word{i:04d}" for i in range(400))  # 3,600 characters: the reason keeps the end
    script = tmp_path / "noisy.sh"
    script.write_text(f"echo '{words} Connection refused' >&2\nexit 3\n")
    spec = parse_spec({"job": {"id": "j"}, "task": {
        "id": "t", "instances": 2, "mpi": "mpich", "command": "true", "coordination": "bash noisy.sh",
        "common_files": [{"source": str(script), "path": "noisy.sh"}]}}, tmp_path)
    result = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs").submit(spec).result()
    assert result.failure is not None and result.failure.phase == "coordination", result.failure
    tail = result.failure.reason.split("the application was not started: ", 1)[1]
    assert tail.startswith("...") and tail.endswith("Connection refused"), tail
    assert all(re.fullmatch(r"word\d{4}", w) for w in tail[3:].split()[:-2]), tail[:80]
    assert len(tail) <= 803



@pytest.mark.mpi
def test_a_silent_coordination_failure_says_its_stderr_is_empty(tmp_path: Path) -> None:
    require_local_nodes()
    spec = parse_spec({"job": {"id": "j"}, "task": {
        "id": "t", "instances": 2, "mpi": "mpich", "command": "true", "coordination": "exit 3"}}, tmp_path)
    result = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs").submit(spec).result()
    assert result.failure is not None and result.failure.phase == "coordination", result.failure
    assert result.failure.reason.endswith("the application was not started: (stderr empty)"), result.failure.reason

def _many(n: int, odd: int | None = None) -> TaskResult:
    insts = [InstanceResult(i, f"node-{i}", f"127.0.1.{i + 1}", 0, 0 if i == 0 else None,
                            files=["f"] * (3 if i == 0 else 2)) for i in range(n)]
    if odd is not None:
        insts[odd].coordination_exit_code = 1
    return TaskResult("j", "t", "local", "completed", 0, instances=insts)


def test_summary_of_64_instances_stays_short_and_shows_the_odd_one() -> None:
    lines = format_result(_many(64, odd=17)).splitlines()
    rest = lines[2:]
    table = rest[:rest.index("")] if "" in rest else rest
    assert [row.split()[0] for row in table] == ["inst", "0", "1-16", "17", "18-63"], table
    assert "node-18..node-63" in table[-1] and table[-1].split()[1] == "subtask"
    assert table[3].split()[:2] == ["17", "subtask"] and table[3].split()[4] == "1"


def test_summary_of_a_few_instances_keeps_one_row_each() -> None:
    lines = format_result(_many(3)).splitlines()
    assert [row.split()[0] for row in lines[3:6]] == ["0", "1", "2"] and len(lines) == 6
