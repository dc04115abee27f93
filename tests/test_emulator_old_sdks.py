"""Code written for old azure-batch releases - 6.0.0 (api-version 2018-12-01.8.0), 8.0.0 (2019-08-01.10.0),
11.0.0 (2021-06-01.14.0), the versions the public Batch samples pin - runs unchanged against `mpibatch
emulate`: a pool with a start task (its slots under the name of its version: `maxTasksPerNode` before
2020-09-01.12.0), a job, a task collection, the task's stdout. Each SDK is the real one from PyPI
(scripts/install-test-deps.sh puts it in .venvs/batch-sdks/<version>), run by the batch14 interpreter, which
has the msrest stack they share, with PYTHONPATH on it."""
from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import VENVS, require

pytestmark = pytest.mark.azure
BATCH14 = VENVS / "batch14" / "bin" / "python"
SDKS = Path(os.environ.get("MPIBATCH_BATCH_SDKS") or VENVS / "batch-sdks")  # override: where else they were put
SCRIPT = Path(__file__).parent / "clients" / "batch_old_workflow.py"
PINNED = {"6.0.0": "2018-12-01.8.0", "8.0.0": "2019-08-01.10.0", "11.0.0": "2021-06-01.14.0"}


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    if not BATCH14.exists():
        pytest.fail(f"{BATCH14} missing: run scripts/install-test-deps.sh", pytrace=False)
    emu = EmulatorProcess(tmp_path / "state", storage="none").start()
    try:
        yield emu
    finally:
        emu.stop()


@pytest.mark.parametrize("sdk", list(PINNED))
def test_an_old_sdk_runs_unchanged_in_its_own_api_version(emulator: EmulatorProcess, sdk: str) -> None:
    where = SDKS / sdk
    require([] if (where / "azure" / "batch" / "__init__.py").is_file() else
            [f"azure-batch {sdk} not in {where}: run scripts/install-test-deps.sh"], f"azure-batch {sdk}")
    p = subprocess.run([str(BATCH14), str(SCRIPT)], capture_output=True, text=True, timeout=240,
                       env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(where), **emulator.exports})
    assert p.returncode == 0, p.stderr[-3000:] + "\n--- emulator log:\n" + "\n".join(emulator.log[-40:])
    seen = json.loads(p.stdout)
    assert (seen["sdk"], seen["api_version"]) == (sdk, PINNED[sdk])
    # the SDK read its own property name back: the answer was in its version's shape
    assert seen["slot_name"] == ("max_tasks_per_node" if sdk != "11.0.0" else "task_slots_per_node")
    assert seen["slots"] == 2
    assert seen["counts"] == [1, 1, 0]  # task counts in the version's shape (bare before 2020-09-01.12.0)
    assert seen["exit_code"] == 0 and seen["stdout"] == "hello from hello\n" and seen["listed"] == ["hello"]
