"""The suite's parallel run (tests/infra/parallel.py) keeps its promises: the tests of a module-scoped fixture
run on one worker and set it up once, an `alone` test overlaps no other test, each worker has its own
temporary directory, and `-n` without `--dist loadgroup` is refused with the fix. The last three run a small
generated suite under real pytest-xdist workers."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.infra.parallel import group_for, run_lock

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("scopes, group", [
    ((), None), (("function", "session"), None), (("function", "module"), "tests/test_x.py"),
    (("class",), "tests/test_x.py"), (("package",), "tests/test_x.py")])
def test_a_fixture_that_outlives_a_test_groups_its_module(scopes: tuple[str, ...], group: str | None) -> None:
    assert group_for("tests/test_x.py", scopes) == group


def test_an_alone_holder_waits_for_the_others_and_holds_off_new_ones(tmp_path: Path) -> None:
    gate, lock = tmp_path / "gate", tmp_path / "lock"
    events: list[str] = []
    ordinary_in, release_ordinary, alone_waiting = threading.Event(), threading.Event(), threading.Event()

    def ordinary(name: str, hold: threading.Event | None) -> None:
        with run_lock(gate, lock, alone=False):
            events.append(f"{name} in")
            ordinary_in.set()
            if hold is not None:
                hold.wait(10)
            events.append(f"{name} out")

    def alone() -> None:
        alone_waiting.set()
        with run_lock(gate, lock, alone=True):
            events.append("alone in")
            time.sleep(0.3)
            events.append("alone out")

    first = threading.Thread(target=ordinary, args=("first", release_ordinary))
    first.start()
    assert ordinary_in.wait(10)
    lone = threading.Thread(target=alone)
    lone.start()
    assert alone_waiting.wait(10)
    time.sleep(0.3)  # the alone holder has closed the gate and waits for the first to end
    late = threading.Thread(target=ordinary, args=("late", None))
    late.start()
    time.sleep(0.3)
    assert events == ["first in"]  # neither the alone holder nor a newcomer got in
    release_ordinary.set()
    for t in (first, lone, late):
        t.join(15)
    assert events == ["first in", "first out", "alone in", "alone out", "late in", "late out"]


SUITE = {
    "conftest.py": 'pytest_plugins = ["tests.infra.parallel"]\n',
    "test_shared.py": '''
import os, time, pytest

@pytest.fixture(scope="module")
def made(tmp_path_factory):
    with open(os.environ["LOG"], "a") as f:
        f.write("setup " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
    return 1

@pytest.mark.parametrize("k", range(4))
def test_uses_the_shared_fixture(made, k):
    with open(os.environ["LOG"], "a") as f:
        f.write("shared " + os.environ["PYTEST_XDIST_WORKER"] + "\\n")
''',
    "test_timing.py": '''
import os, tempfile, time, json, pytest

def record(name, seconds):
    start = time.monotonic()
    time.sleep(seconds)
    with open(os.environ["LOG"], "a") as f:
        f.write("interval " + json.dumps([name, start, time.monotonic(), os.environ["PYTEST_XDIST_WORKER"],
                                          tempfile.gettempdir(),
                                          os.stat(tempfile.gettempdir()).st_mode & 0o7777]) + "\\n")

@pytest.mark.alone  # first: the other worker has ordinary tests to run meanwhile
def test_alone():
    record("alone", 1.0)

@pytest.mark.parametrize("k", range(8))
def test_ordinary(k):
    record(f"ordinary-{k}", 0.25)
''',
}


def run_suite(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    suite = tmp_path / "suite"
    suite.mkdir()
    for name, text in SUITE.items():
        (suite / name).write_text(text)
    log = tmp_path / "log.txt"
    log.touch()
    env = dict(os.environ, LOG=str(log), PYTHONPATH=str(REPO), TMPDIR=str(tmp_path))
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args], cwd=suite,
                       env=env, capture_output=True, text=True, timeout=240)
    return p, log.read_text().splitlines()


def test_a_parallel_run_groups_shared_fixtures_isolates_temp_dirs_and_runs_alone_tests_alone(tmp_path: Path) -> None:
    p, lines = run_suite(tmp_path, "-n", "2", "--dist", "loadgroup")
    assert p.returncode == 0, p.stdout + p.stderr
    setups = [line for line in lines if line.startswith("setup ")]
    assert len(setups) == 1, lines  # the module-scoped fixture, once: its tests share one worker
    assert {line.split()[1] for line in lines if line.startswith("shared ")} == {setups[0].split()[1]}
    intervals = [json.loads(line.split(" ", 1)[1]) for line in lines if line.startswith("interval ")]
    assert len(intervals) == 9
    (alone,) = [i for i in intervals if i[0] == "alone"]
    overlapping = [i[0] for i in intervals if i is not alone and i[1] < alone[2] and alone[1] < i[2]]
    assert not overlapping, intervals
    workers = {i[3] for i in intervals}
    assert workers == {"gw0", "gw1"}, intervals  # both workers ran ordinary tests
    tmpdirs = {i[3]: i[4] for i in intervals}
    assert len(set(tmpdirs.values())) == 2 and all(Path(d).name == w for w, d in tmpdirs.items()), tmpdirs
    assert all(Path(d).parent.parent == tmp_path for d in tmpdirs.values())
    assert {i[5] for i in intervals} == {0o1777}  # open to a run's other users, as /tmp is
    assert not [d for d in tmp_path.iterdir() if d.name.startswith("mpibatch-tests-")]  # the run's dir is gone


def test_workers_without_loadgroup_are_refused_with_the_fix(tmp_path: Path) -> None:
    p, lines = run_suite(tmp_path, "-n", "2")
    assert p.returncode == 4, p.stdout + p.stderr
    assert "--dist loadgroup" in p.stderr and not lines
