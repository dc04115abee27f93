"""`mpibatch init`: a runnable copy of a shipped example, never over a user's files (issue 22 item 2).
The installed-wheel path (init + run from a fresh venv) is in test_packaging.py."""
from __future__ import annotations

import json
import os
from pathlib import Path

from click.testing import CliRunner

from mpibatch.cli import main
from mpibatch.cli.init import available, examples_dir

REPO = Path(__file__).resolve().parents[1]


def invoke(cwd: Path, *args: str):
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(main, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)


def test_every_example_of_the_checkout_is_offered() -> None:
    assert set(available()) == {p.name for p in (REPO / "examples").iterdir() if (p / "README.md").is_file()}
    assert (examples_dir() / "hello" / "spec.yaml").is_file()


def test_no_arguments_writes_hello_and_lists_the_others(tmp_path: Path) -> None:
    res = invoke(tmp_path, "init")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "hello" / "spec.yaml").read_bytes() == (REPO / "examples/hello/spec.yaml").read_bytes()
    assert "mpibatch run hello/spec.yaml" in res.output and "heat-simulation" in res.output


def test_list_writes_nothing(tmp_path: Path) -> None:
    res = invoke(tmp_path, "init", "--list")
    assert res.exit_code == 0 and "wrap-existing-code" in res.output and not list(tmp_path.iterdir())


def test_a_nested_example_keeps_its_tree_and_modes(tmp_path: Path) -> None:
    assert invoke(tmp_path, "init", "shared-dir", "sd").exit_code == 0
    assert (tmp_path / "sd/case/system/controlDict").is_file()
    assert invoke(tmp_path, "init", "wrap-existing-code", "w").exit_code == 0
    assert os.access(tmp_path / "w/run-imb.sh", os.X_OK)


def test_refusals_are_bad_input_and_write_nothing(tmp_path: Path) -> None:
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "mine.txt").write_text("keep me")
    res = invoke(tmp_path, "init", "hello", "taken")
    assert res.exit_code == 2 and "taken is not empty" in res.output
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["mine.txt"]
    res = invoke(tmp_path, "init", "helo", "x")
    assert res.exit_code == 2 and "did you mean 'hello'" in res.output and not (tmp_path / "x").exists()
    (tmp_path / "empty").mkdir()
    assert invoke(tmp_path, "init", "hello", "empty").exit_code == 0  # an empty directory is fine


def test_an_empty_spec_names_the_init_command(tmp_path: Path) -> None:
    (tmp_path / "spec.yaml").write_text("")
    res = invoke(tmp_path, "render", "spec.yaml", "-o", "json")
    assert res.exit_code == 2 and "mpibatch init hello" in json.loads(res.stdout)["message"]
