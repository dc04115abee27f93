"""`mpibatch outputs list JOB` without a task lists the job's own outputs and every task's (issue 22 item 7),
against a real Azurite: names written by the File Conventions library, read back by the CLI."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpibatch.conventions import JobOutputStorage, TaskOutputStorage, prepare_output_storage
from tests.infra.fixtures import Azurite, azurite  # noqa: F401

pytestmark = pytest.mark.azure
MPIBATCH = Path(sys.executable).parent / "mpibatch"


def cli(az: Azurite, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AZURE_")}
    env["AZURE_STORAGE_CONNECTION_STRING"] = az.connection_string
    p = subprocess.run([str(MPIBATCH), "outputs", "list", *args], env=env, capture_output=True, text=True, timeout=60)
    assert az.key not in p.stdout + p.stderr
    return p


def test_list_without_a_task_shows_every_tasks_outputs(azurite: Azurite, tmp_path: Path) -> None:  # noqa: F811
    job = "list-job-1"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    f = tmp_path / "r.txt"
    f.write_bytes(b"result")
    mpi_task = TaskOutputStorage(job, "mpi-task", connection_string=azurite.connection_string)
    for i in range(3):  # mpibatch's layout: one folder per instance
        mpi_task.save("TaskOutput", f, destination=f"{i}/rank-{i}.txt")
    mpi_task.save("TaskLog", f, destination="0/stdout.txt")
    TaskOutputStorage(job, "Other_Task", connection_string=azurite.connection_string).save("TaskOutput", f,
                                                                                          destination="a.txt")
    JobOutputStorage(job, connection_string=azurite.connection_string).save("JobOutput", f, destination="sum.csv")

    p = cli(azurite, job, "-o", "json")
    assert p.returncode == 0, p.stderr
    rows = {(r["task"], r["kind"], r["path"]) for r in json.loads(p.stdout)}
    assert rows == {("mpi-task", "TaskOutput", "0/rank-0.txt"), ("mpi-task", "TaskOutput", "1/rank-1.txt"),
                    ("mpi-task", "TaskOutput", "2/rank-2.txt"), ("mpi-task", "TaskLog", "0/stdout.txt"),
                    ("Other_Task", "TaskOutput", "a.txt"), (None, "JobOutput", "sum.csv")}

    table = cli(azurite, job)
    assert table.returncode == 0 and "no outputs" not in table.stdout
    lines = table.stdout.splitlines()
    assert len(lines) == 6 and sum(line.startswith("mpi-task  ") for line in lines) == 4, table.stdout
    assert any(line.startswith("-") and line.rstrip().endswith("sum.csv") for line in lines), table.stdout

    only = cli(azurite, job, "--kind", "TaskOutput", "-o", "json")
    assert {r["task"] for r in json.loads(only.stdout)} == {"mpi-task", "Other_Task"}
    one = cli(azurite, job, "Other_Task", "-o", "json")  # with a task: that task's alone, as before
    assert [r["path"] for r in json.loads(one.stdout)] == ["a.txt"] and "task" not in json.loads(one.stdout)[0]
    none = cli(azurite, "list-job-none", "-o", "json")  # a job that stored nothing: no container at all
    assert none.returncode == 2 and "has no output container" in json.loads(none.stdout)["message"], none.stderr
    prepare_output_storage("list-job-empty", connection_string=azurite.connection_string)
    empty = cli(azurite, "list-job-empty")
    assert empty.returncode == 0 and "no outputs for list-job-empty" in empty.stdout
