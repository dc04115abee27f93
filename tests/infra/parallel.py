"""How the suite runs on several pytest-xdist workers (``-n 3 --dist loadgroup``, scripts/test.sh) and stays
correct: three rules, each in one place, for tests written later as much as for today's.

* **Shared fixtures stay shared.** A test that uses a module-scoped (or class- or package-scoped) fixture joins
  its module's ``xdist_group``, so the one worker that runs the module sets the fixture up once; without the
  group each worker would start its own sshd hosts or emulator. A test's own ``xdist_group`` marker wins.
* **Each worker has its own temporary directory.** ``TMPDIR`` of worker ``gwN`` is a fresh directory, so a
  test that checks "nothing new left in the temporary directory" (``tempfile.gettempdir()``) sees its own
  runs only, never another worker's. Without workers nothing changes.
* **``@pytest.mark.alone`` tests run with no other test of the run at the same time**: those that judge
  timing (latencies, "within N seconds" of a kill) or compare machine-wide state (all network namespaces,
  all of ``/dev/shm``). Every other test holds a shared lock while it runs; an ``alone`` test takes it
  exclusively (and first closes a gate, so that it is not starved by the others taking turns).

Pure rules (which group, which lock) are plain functions; the hooks below only apply them.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

ALONE = "alone"
SHARED_SCOPES = ("class", "module", "package")
# How long a test waits for the run lock: the longest single test it can wait behind, with room (the
# per-test timeout is 300 s; it does not count this wait).
LOCK_WAIT_S = 900.0
LOCK_POLL_S = 0.05


def group_for(module_id: str, fixture_scopes: Iterable[str]) -> str | None:
    """The xdist group of a test of module `module_id` that uses fixtures of `fixture_scopes`: its module
    when one of them outlives a single test, else none (any worker may run it)."""
    return module_id if any(scope in SHARED_SCOPES for scope in fixture_scopes) else None


def _fixture_scopes(item: pytest.Item) -> list[str]:
    info = getattr(item, "_fixtureinfo", None)
    if info is None:
        return []
    # the last definition of a name is the one the test gets (a module's own overrides conftest's)
    return [defs[-1].scope for defs in info.name2fixturedefs.values() if defs]


RUN_DIR_ENV = "MPIBATCH_TESTS_RUN_DIR"  # the run's directory, from the controller to its workers


def _worker_id(config: pytest.Config) -> str | None:
    workerinput = getattr(config, "workerinput", None)
    return None if workerinput is None else str(workerinput["workerid"])


def _is_controller(config: pytest.Config) -> bool:
    return _worker_id(config) is None and bool(getattr(config.option, "numprocesses", None))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{ALONE}: runs with no other test of the run at the same time "
                                       "(timing verdicts, machine-wide before/after comparisons)")
    if _is_controller(config):
        if config.getoption("dist") != "loadgroup":
            raise pytest.UsageError("with -n, add --dist loadgroup: tests that share a module's sshd hosts or "
                                    "emulator must run on one worker (tests/infra/parallel.py)")
        # the workers inherit the environment: their temporary directories and the run lock live here
        run_dir = Path(tempfile.mkdtemp(prefix="mpibatch-tests-"))
        run_dir.chmod(0o755)  # mkdtemp makes it 0700: the workers' TMPDIRs below must be reachable as /tmp is
        config.stash[_RUN_DIR] = run_dir
        os.environ[RUN_DIR_ENV] = str(run_dir)
        return
    worker, run = _worker_id(config), os.environ.get(RUN_DIR_ENV)
    if worker is None or run is None:
        return
    # before any test asks tempfile for its directory: every later gettempdir() answers the worker's own
    tmp = Path(run) / worker
    tmp.mkdir()
    tmp.chmod(0o1777)  # as /tmp: a run's processes under another user or a user namespace write here too
    os.environ["TMPDIR"] = str(tmp)
    tempfile.tempdir = None
    config.stash[_RUN_DIR] = Path(run)


def pytest_unconfigure(config: pytest.Config) -> None:
    run_dir = config.stash.get(_RUN_DIR, None)
    if run_dir is not None and _is_controller(config):
        os.environ.pop(RUN_DIR_ENV, None)
        shutil.rmtree(run_dir, ignore_errors=True)


_RUN_DIR = pytest.StashKey[Path]()


@pytest.hookimpl(tryfirst=True)  # before xdist reads the markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("xdist_group") is not None:
            continue
        group = group_for(item.nodeid.split("::", 1)[0], _fixture_scopes(item))
        if group is not None:
            item.add_marker(pytest.mark.xdist_group(group))


def group_of(item: pytest.Item) -> str | None:
    """The test's xdist group (its `xdist_group` markers, joined as xdist joins them), or none."""
    names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                    for m in item.iter_markers("xdist_group")})
    return "_".join(names) or None


GROUPS_FILE = "groups-{worker}.json"


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook tells the controller that collection finished
def pytest_collection_finish(session: pytest.Session) -> None:
    """A worker leaves the groups of what it collected for the controller's scheduler (xdist 3.8 renames the
    tests of a group by a node attribute that pytest 9.2 no longer reads, so its `loadgroup` finds none).
    Written before the worker reports its collection: the scheduler reads it as soon as every worker has."""
    run_dir, worker = session.config.stash.get(_RUN_DIR, None), _worker_id(session.config)
    if run_dir is None or worker is None:
        return
    groups = {item.nodeid: g for item in session.items if (g := group_of(item)) is not None}
    part = run_dir / f".{worker}.part"
    part.write_text(json.dumps(groups))
    part.replace(run_dir / GROUPS_FILE.format(worker=worker))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadgroup`, with the groups the workers wrote: one group's tests run on one worker, the
    largest groups first; every other test goes to whichever worker is free."""
    from xdist.scheduler import LoadScopeScheduling

    run_dir = config.stash[_RUN_DIR]

    class GroupScheduling(LoadScopeScheduling):  # type: ignore[misc]
        groups: dict[str, str] | None = None

        def _split_scope(self, nodeid: str) -> str:
            if self.groups is None:  # called once every worker has collected (and written its file)
                self.groups = {}
                files = sorted(run_dir.glob(GROUPS_FILE.format(worker="*")))
                if not files:  # cannot happen with the hook order above: say so rather than split a group
                    raise RuntimeError(f"no worker left its test groups in {run_dir} (tests/infra/parallel.py)")
                for f in files:
                    self.groups.update(json.loads(f.read_text()))
            return self.groups.get(nodeid, nodeid)

    return GroupScheduling(config, log)


# ---------------------------------------------------------------------------------------------- the run lock
def _flock(fd: int, mode: int, what: str) -> None:
    """`flock(fd, mode)`, polled without blocking so that the wait has a bound."""
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"waited {LOCK_WAIT_S:.0f} s for {what}: a test of another worker hangs") from None
            time.sleep(LOCK_POLL_S)


@contextmanager
def run_lock(gate: Path, lock: Path, *, alone: bool) -> Iterator[None]:
    """Shared while an ordinary test runs; exclusive for an `alone` test, which closes the gate first so
    that the ordinary tests finish and no new one starts."""
    gfd = os.open(gate, os.O_RDWR | os.O_CREAT, 0o600)
    lfd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if alone:
            _flock(gfd, fcntl.LOCK_EX, "the gate of the run lock")
            _flock(lfd, fcntl.LOCK_EX, "the other workers' tests to end")
        else:
            _flock(gfd, fcntl.LOCK_SH, "an alone test of another worker")
            _flock(lfd, fcntl.LOCK_SH, "an alone test of another worker")
            fcntl.flock(gfd, fcntl.LOCK_UN)
        yield
    finally:
        os.close(lfd)  # closing releases the locks
        os.close(gfd)


@pytest.hookimpl(hookwrapper=True, tryfirst=True)  # outside pytest-timeout: waiting is not the test's time
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    run_dir = item.config.stash.get(_RUN_DIR, None)
    if run_dir is None or _worker_id(item.config) is None:  # one process: nothing runs beside a test
        yield
        return
    with run_lock(run_dir / "gate", run_dir / "lock", alone=item.get_closest_marker(ALONE) is not None):
        yield
