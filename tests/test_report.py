"""The human summary of a run: at 64 instances the instance table stays a few rows (identical consecutive
instances grouped), every instance whose outcome differs keeps its own row, and JSON keeps every instance."""
from __future__ import annotations

import json

from mpibatch.report import format_result, instance_rows
from mpibatch.results import Failure, InstanceResult, TaskResult


def task(n: int, *, coord: dict[int, int | None] | None = None, files: dict[int, int] | None = None) -> TaskResult:
    coord, files = coord or {}, files or {}
    insts = [InstanceResult(index=i, node_id=f"node-{i}", host=f"127.0.1.{i + 1}",
                            coordination_exit_code=coord.get(i, 0), application_exit_code=0 if i == 0 else None,
                            files=[f"rank-{k}.txt" for k in range(files.get(i, 1))]) for i in range(n)]
    return TaskResult(job_id="j", task_id="t", executor="local", state="completed", exit_code=0, instances=insts)


def table_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.split()[:1] and line.split()[1:2] in (["primary"], ["subtask"])]


def test_64_identical_subtasks_are_one_row() -> None:
    rows, left = instance_rows(task(64).instances)
    assert left == 0
    assert rows == [("0", "primary", "node-0", "127.0.1.1", "0", "0", "1"),
                    ("1-63", "subtask", "node-1..node-63", "127.0.1.2..127.0.1.64", "0", "-", "1")]
    text = format_result(task(64))
    assert len(table_lines(text)) == 2
    assert "1-63  subtask  node-1..node-63" in text


def test_a_failed_instance_keeps_its_own_row_between_two_groups() -> None:
    r = task(64, coord={40: 1})
    rows, _ = instance_rows(r.instances)
    assert [row[0] for row in rows] == ["0", "1-39", "40", "41-63"]
    assert rows[2] == ("40", "subtask", "node-40", "127.0.1.41", "1", "-", "1")


def test_instances_that_never_ran_and_different_file_counts_are_told_apart() -> None:
    r = task(10, coord={7: None, 8: None, 9: None}, files={3: 2})
    assert [row[0] for row in instance_rows(r.instances)[0]] == ["0", "1", "2", "3", "4-6", "7-9"]
    assert instance_rows(r.instances)[0][-1][4] == "-"


def test_small_tasks_keep_one_row_per_instance() -> None:
    # the README's hello (3 nodes): two identical subtasks stay two rows
    rows, _ = instance_rows(task(3).instances)
    assert [row[0] for row in rows] == ["0", "1", "2"]
    assert [row[0] for row in instance_rows(task(4).instances)[0]] == ["0", "1-3"]


def test_a_table_still_too_long_is_cut_and_says_how_many_are_left_out() -> None:
    # every other subtask failed: nothing to group; 40 rows shown, the rest counted
    r = task(64, coord={i: 1 for i in range(1, 64, 2)})
    rows, left = instance_rows(r.instances)
    assert len(rows) == 40 and left == 24
    text = format_result(r)
    assert "... 24 more instances (every instance: --output json)" in text
    assert len(table_lines(text)) == 40


def test_json_keeps_every_instance() -> None:
    r = task(64)
    r.failure = Failure("running", "x", 0)
    d = json.loads(json.dumps(r.to_json()))
    assert [i["index"] for i in d["instances"]] == list(range(64))


def test_coordination_progress_says_each_tenth_not_each_node() -> None:
    from mpibatch.executors.lifecycle import tenth_passed
    assert [d for d in range(1, 65) if tenth_passed(d, 64)] == [7, 13, 20, 26, 32, 39, 45, 52, 58, 64]
    assert [d for d in range(1, 4) if tenth_passed(d, 3)] == [1, 2, 3]  # small tasks: every node
