"""The emulator's state directory (pure: no server, no processes): what a restart does to what was
running when the emulator went away without a clean stop (killed, machine lost)."""
from __future__ import annotations

import json
from pathlib import Path

from mpibatch.emulator.state import Store, key


def test_a_task_running_at_a_crash_is_failed_with_the_reason_on_restart(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.jobs[key("j")] = {"id": "j", "state": "terminating"}
    store.tasks[key("j", "t")] = {"id": "t", "_job": "j", "state": "running", "executionInfo": {"startTime": "x"},
                                  "_subtasks": [{"id": 1, "state": "running"}]}
    store.tasks[key("j", "done")] = {"id": "done", "_job": "j", "state": "completed",
                                     "executionInfo": {"exitCode": 0, "result": "success"}}
    store.nodes[key("p", "n")] = {"id": "n", "_pool": "p", "_root": str(tmp_path / "n"), "state": "running",
                                  "_running": [key("j", "t")],
                                  "runningTasksCount": 1, "runningTaskSlotsCount": 1}
    store.save()
    assert json.loads((tmp_path / "state.json").read_text())["tasks"]  # written under its final name
    assert not (tmp_path / "state.tmp").exists()

    again = Store(tmp_path)
    assert again.load() == ["j/t"]
    t = again.tasks[key("j", "t")]
    assert t["state"] == "completed" and t["previousState"] == "running"
    assert t["executionInfo"]["result"] == "failure"
    assert t["executionInfo"]["failureInfo"]["code"] == "EmulatorRestarted"
    assert "stopped while this task was running" in t["executionInfo"]["failureInfo"]["message"]
    assert t["_subtasks"][0]["state"] == "completed" and t["_subtasks"][0]["result"] == "failure"
    assert again.tasks[key("j", "done")]["executionInfo"] == {"exitCode": 0, "result": "success"}
    node = again.nodes[key("p", "n")]
    assert node["state"] == "idle" and node["_running"] == [] and node["runningTasksCount"] == 0
    assert again.jobs[key("j")]["state"] == "completed"


def test_no_state_dir_keeps_nothing(tmp_path: Path) -> None:
    store = Store(None)
    store.jobs["j"] = {"id": "j"}
    store.save()
    assert Store(None).load() == [] and list(tmp_path.iterdir()) == []


def test_bad_command_line_input_is_exit_2_before_anything_starts(tmp_path: Path) -> None:
    import subprocess
    import sys

    mpibatch = Path(sys.executable).parent / "mpibatch"
    for args, field in [(["--pool", "p:x"], "--pool"), (["--pool", "bad id:2"], "--pool"),
                        (["--account", "Not_Valid"], "--account"), (["--key", "not base64!"], "--key"),
                        (["--storage", "AccountName=x"], "--storage")]:
        p = subprocess.run([str(mpibatch), "emulate", "--port", "0", "--storage", "none",
                            "--state-dir", str(tmp_path / "s"), *args], capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, (args, p.stderr)
        assert field in p.stderr and "export" not in p.stdout
        assert not (tmp_path / "s").exists()  # nothing created
