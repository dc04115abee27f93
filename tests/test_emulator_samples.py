"""The calls Microsoft's public Python samples for Batch make (sample1-4 and the MPI sample of
azure-batch-samples, the Python quickstart, the ffmpeg tutorial), in our own words (tests/clients/
samples_equivalents.py: the same operations, bodies and order; nothing fetched), against `mpibatch emulate` with
its Azurite, once per API version: azure-batch 6.0.0 (2018-12-01.8.0), 8.0.0 (2019-08-01.10.0), 11.0.0
(2021-06-01.14.0) - the versions the samples pin - 14.2 (2024-02-01.19.0), and 15.1 (2025-06-01: the same flows
in that SDK's API, tests/clients/samples_equivalents15.py). docs/emulator.md says how to run the real samples."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.emulator import EmulatorProcess
from tests.infra.fixtures import VENVS, azurite_missing, require

pytestmark = pytest.mark.azure
BATCH14 = VENVS / "batch14" / "bin" / "python"
SDKS = Path(os.environ.get("MPIBATCH_BATCH_SDKS") or VENVS / "batch-sdks")
CLIENTS = Path(__file__).parent / "clients"
VERSIONS = {"6.0.0": "2018-12-01.8.0", "8.0.0": "2019-08-01.10.0", "11.0.0": "2021-06-01.14.0",
            "14.2.0": "2024-02-01.19.0", "15.1.0": "2025-06-01"}


@pytest.fixture
def emulator(tmp_path: Path) -> Iterator[EmulatorProcess]:
    if not BATCH14.exists():
        pytest.fail(f"{BATCH14} missing: run scripts/install-test-deps.sh", pytrace=False)
    require(azurite_missing(), "Azurite")
    emu = EmulatorProcess(tmp_path / "state", storage="auto").start()
    try:
        yield emu
    finally:
        emu.stop()


def run_equivalents(emulator: EmulatorProcess, sdk: str) -> dict:
    env = {"PATH": "/usr/bin:/bin", **emulator.exports}
    python, script = BATCH14, CLIENTS / "samples_equivalents.py"
    if sdk == "15.1.0":  # the main venv's own SDK, a different client API
        python, script = Path(sys.executable), CLIENTS / "samples_equivalents15.py"
    elif sdk != "14.2.0":  # 14.2 is batch14's own; the older ones go first on its path
        where = SDKS / sdk
        require([] if (where / "azure" / "batch" / "__init__.py").is_file() else
                [f"azure-batch {sdk} not in {where}: run scripts/install-test-deps.sh"], f"azure-batch {sdk}")
        env["PYTHONPATH"] = str(where)
    p = subprocess.run([str(python), str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stderr[-3000:] + "\n--- emulator log:\n" + "\n".join(emulator.log[-40:])
    return json.loads(p.stdout)


@pytest.mark.parametrize("sdk", list(VERSIONS))
def test_the_samples_calls_in_each_api_version(emulator: EmulatorProcess, sdk: str) -> None:
    seen = run_equivalents(emulator, sdk)
    assert (seen["sdk"], seen["api_version"]) == (sdk, VERSIONS[sdk])
    hello = seen["hello"]
    if sdk == "15.1.0":  # 2025-06-01 has no cloudServiceConfiguration to send
        assert hello["refused"] is None
    else:
        assert hello["refused"][0] == "InvalidPropertyValue" and "retired" in hello["refused"][1]
    assert hello["auto_pool_prefix"] == "HelloWorld" and hello["out"] == ["Hello world from hello\n", ""]
    # the start task's and the task's script came as resource files; the second pool.add is PoolExists
    assert seen["resources"] == {"exists": "PoolExists", "out": "listing\nlisting.sh\n"}
    assert seen["schedule"] == {"job": "sched:job-1", "out": "managed by sched:job-1\n", "job_state": "completed"}
    mpi = seen["mpi"]
    assert mpi["exit_code"] == 0 and mpi["subtasks"] == ["completed", "completed"]
    lines = mpi["out"].splitlines()  # the primary's stdout, uploaded by the output file on completion
    assert lines[0].startswith("instances=3 hosts=") and len(lines[0].split("hosts=")[1].split(",")) == 3
    assert "coordinated" in lines[1:]  # the coordination script (no fileMode: 0770) ran before the application
    assert seen["quickstart"] == {"tasks": {f"Task{i}": [True, f"data {i}\n"] for i in range(3)}}
    assert seen["ffmpeg"] == {"converted": "A CLIP\n", "dedicated": [False, False], "low_priority": 2}
