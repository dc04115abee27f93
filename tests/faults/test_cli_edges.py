"""Issue 19 item 23: the CLI's smaller edges - a long number echoed whole, duplicate YAML keys, and
`outputs get --to` under a file. Each test failed before the fix."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from mpibatch.fileconventions import TaskOutputStorage, prepare_output_storage
from tests.faults.test_input_faults import BASE, MESSAGE_LIMIT, invoke, refused, write
from tests.infra.fixtures import Azurite


@pytest.mark.parametrize("where", [
    BASE.replace("  mpi: mpich\n", "  mpi: {flavor: mpich, processes_per_node: %s}\n"),
    BASE + "  instances: %s\n",
    BASE + "  max_retries: %s\n",
    BASE.replace("job: {id: j1}", "job: {id: j1}\npool: {id: p, nodes: %s}"),
])
def test_a_4000_digit_number_is_not_echoed_whole(tmp_path: Path, where: str) -> None:
    """Issue 19 item 23: "A 4,000-digit number is echoed whole in a 4,111-character error"."""
    res = invoke("render", write(tmp_path, where % ("9" * 4000)), "-o", "json")
    refused(res, "out of range", "-bit number>")
    assert "9" * 100 not in res.stderr


@pytest.mark.parametrize("text, key, lines", [
    (BASE + "  id: t2\n", "'id'", ("line 3, column 3", "line 6, column 3")),
    (BASE + "  environment: {A: '1', B: '2', A: '3'}\n", "'A'", ("line 6, column 17", "line 6, column 33")),
    ("job: {id: j1}\n" + BASE.replace("job: {id: j1}\n", "") + "job: {id: j2}\n", "'job'",
     ("line 1, column 1", "line 6, column 1")),
])
def test_a_duplicate_yaml_key_is_refused_naming_both_lines(tmp_path: Path, text: str, key: str,
                                                           lines: tuple[str, str]) -> None:
    """Issue 19 item 23: "duplicate YAML keys are accepted (the later silently wins: name the duplicate)"."""
    refused(invoke("render", write(tmp_path, text), "-o", "json"), f"the key {key} is given twice", *lines)


def test_a_5000_character_file_name_is_neither_echoed_whole_nor_a_traceback(tmp_path: Path) -> None:
    """Issue 19 item 23, a variant: a long value in a field's name (a file name of 5,000 characters)."""
    spec = write(tmp_path, BASE + f"  common_files: ['{'K' * 5000}']\n")
    refused(invoke("run", spec, "--runs-dir", str(tmp_path / "runs")), "task.common_files[0].source", "cut]")
    res = invoke("render", spec)  # the human table: the file is not on this machine (ENAMETOOLONG)
    assert res.exit_code == 0 and "[NOT FOUND on this machine]" in res.stdout, res.output[-500:]


def test_a_long_problem_text_is_cut_in_the_middle() -> None:
    from mpibatch.errors import SpecError

    e = SpecError("f", "a" * 3000 + "END", "fix it")
    assert len(str(e)) < 1100 and str(e).endswith("END (fix it)") and "characters cut" in str(e)


def test_outputs_get_to_a_path_under_a_file_is_bad_input(tmp_path: Path, azurite: Azurite) -> None:
    """Issue 19 item 23: "`outputs get --to` under a file is exit 3 (bad input is exit 2)"."""
    conn = azurite.connection_string
    prepare_output_storage("edges-job", connection_string=conn)
    (tmp_path / "out.txt").write_text("an output\n")
    TaskOutputStorage("edges-job", "t", connection_string=conn).save("TaskOutput", tmp_path / "out.txt",
                                                                     destination="out.txt")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a directory\n")
    env = {**os.environ, "AZURE_STORAGE_CONNECTION_STRING": conn}
    p = subprocess.run([sys.executable, "-m", "mpibatch.cli", "outputs", "get", "edges-job", "t", "--to",
                        str(a_file / "sub" / "dir")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert f"--to: {a_file / 'sub' / 'dir'} cannot be a directory: {a_file} is a file" in p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr) < MESSAGE_LIMIT
    assert a_file.read_text() == "not a directory\n"
    # The same command with a usable directory gets the file: the output was there to be fetched.
    p = subprocess.run([sys.executable, "-m", "mpibatch.cli", "outputs", "get", "edges-job", "t", "--to",
                        str(tmp_path / "got")], env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "got" / "$TaskOutput" / "out.txt").read_text() == "an output\n"


# A shell without job control starts `cmd &` with SIGINT ignored (what `bash scripts/test.sh &` does).
IN_BACKGROUND = ["bash", "-c", '"$@" & wait $!', "bash"]


def test_item24_sigint_tests_pass_when_the_suite_runs_in_the_background(tmp_path: Path) -> None:
    """Issue 19 item 24: "The test suite started in the background (`bash scripts/test.sh &`, `nohup`) fails
    its Ctrl-C tests: the command under test inherits an ignored SIGINT"."""
    probe = subprocess.run([*IN_BACKGROUND, sys.executable, "-c",
                            "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"],
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "True", probe  # the premise: a background child starts with SIGINT ignored
    test = "tests/faults/test_lifecycle_faults.py::test_ctrl_c_during_release_keeps_the_completed_task_s_outcome"
    p = subprocess.run([*IN_BACKGROUND, sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                        "--basetemp", str(tmp_path / "inner"), test],
                       cwd=Path(__file__).resolve().parents[2], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "1 passed" in p.stdout
