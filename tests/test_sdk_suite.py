"""azure-batch 15.1.0's own `tests/test_batch.py`, unchanged, run live against `mpibatch emulate`.

The file (with its conftest.py, decorators.py, async_wrapper.py) is read from the package's source
distribution on PyPI, which scripts/install-test-deps.sh downloads into .cache/sdk/; our stand-ins for
what it imports from Azure's test framework and its preparers are in tests/sdk_suite/ (a fresh emulator
per test, pools and jobs made through the data plane, Shared Key, no recordings). It runs in a network
namespace of its own with only loopback, so no request can leave this machine (the file's
upload-logs test names an Azure container). 16 test functions x sync/async client = 32 tests, all passing."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.infra.fixtures import REPO_ROOT, azurite_missing, require

pytestmark = [pytest.mark.azure]
SDIST = REPO_ROOT / ".cache" / "sdk" / "azure_batch-15.1.0.tar.gz"
SDIST_SHA256 = "2f684d176b457b7213535e145180a914ed6844b2d1066fcc22ac88c3ac9e3fa5"  # PyPI's file, pinned
FILES = ("test_batch.py", "conftest.py", "decorators.py", "async_wrapper.py")
FUNCTIONS = ("create_pools", "create_pool_with_blobfuse_mount", "create_pool_with_osdisksecurityprofile",
             "create_pool_with_osdiskdiskencryption", "update_pools", "scale_pools", "job_schedules",
             "network_configuration", "compute_nodes", "compute_node_extensions", "compute_node_user",
             "compute_node_remote_desktop", "files", "tasks", "jobs", "exception_policy")
RUN_TIMEOUT_S = 600


def _unpack(dest: Path) -> None:
    """The four files of the sdist's tests/, byte for byte (only those names; nothing else is extracted)."""
    with tarfile.open(SDIST) as tar:
        for name in FILES:
            member = tar.getmember(f"azure_batch-15.1.0/tests/{name}")
            data = tar.extractfile(member)
            assert member.isfile() and data is not None, name
            (dest / name).write_bytes(data.read())


def _isolated(argv: list[str]) -> list[str]:
    """`argv` in a new network namespace whose only interface is loopback (up)."""
    return ["unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]


def test_azure_batch_15_1_own_tests_pass_against_the_emulator(tmp_path: Path) -> None:
    missing = [] if SDIST.is_file() else [f"{SDIST.relative_to(REPO_ROOT)} missing (run "
                                          "scripts/install-test-deps.sh)"]
    missing += azurite_missing()
    if os.geteuid() != 0:
        missing.append("a network namespace of its own needs root")
    require(missing, "azure-batch 15.1.0's test file")
    assert hashlib.sha256(SDIST.read_bytes()).hexdigest() == SDIST_SHA256, "not PyPI's azure-batch 15.1.0 sdist"
    run = tmp_path / "tests"
    run.mkdir()
    _unpack(run)
    report = tmp_path / "report.xml"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "tests" / "sdk_suite"), str(REPO_ROOT)]),
           "MPIBATCH_SDK_SUITE_DIR": str(tmp_path)}
    argv = [sys.executable, "-m", "pytest", "-p", "asyncrun", "-p", "no:cacheprovider", "-q", "--timeout=240",
            f"--junitxml={report}", "test_batch.py"]
    proc = subprocess.Popen(_isolated(argv), cwd=run, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # its process group: the inner pytest and the emulators it started
        out, err = proc.communicate(timeout=30)
        raise AssertionError(f"not done in {RUN_TIMEOUT_S} s:\n{out[-4000:]}") from None
    assert report.is_file(), f"no report from the run:\n{out[-4000:]}\n{err[-2000:]}"
    cases = ET.parse(report).getroot().iter("testcase")
    outcome = {c.get("name"): ("passed" if not list(c) else c[0].tag) for c in cases}
    expected = {f"test_batch_{f}[{mode}]" for f in FUNCTIONS for mode in ("sync", "async")}
    assert set(outcome) == expected, out[-3000:]
    failed = sorted(name for name, result in outcome.items() if result != "passed")
    assert not failed and proc.returncode == 0, f"{failed}\n{out[-6000:]}\n{err[-2000:]}"
