"""The executor seam: one interface, a registry by name, a handle per task - and a new executor is one module.

The throwaway executor below knows nothing of mpibatch's internals: it subclasses the public `Executor`, takes
the rendered task, and returns a `TaskHandle`. It is plugged in twice, through `register()` in this process and
through the `mpibatch.executors` entry-point group of an installed distribution in a fresh process, and the CLI's
`run` uses it like the built-ins.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpibatch.cli import main
from mpibatch.errors import SpecError
from mpibatch.executors import Executor, TaskHandle, executor_class, get_executor, names, register, rendered

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "spec.yaml"

# A complete executor module, as a plugin author would write it: it "runs" the task by writing the command lines
# it was given into the primary's stdout.
PLUGIN = '''
from mpibatch.executors import Executor, TaskHandle, rendered
from mpibatch.results import InstanceResult, TaskResult


class EchoExecutor(Executor):
    name = "echo"

    def __init__(self, runs_dir="mpibatch-runs", progress=None, greeting="echo"):
        self.greeting = greeting
        self.progress = progress

    def submit(self, task):
        r = rendered(task)
        if self.progress:
            self.progress("running", f"{r.instances} instances, nowhere")
        out = f"{self.greeting}: {r.coordination_command_line}\\n{self.greeting}: {r.command_line}\\n"
        instances = [InstanceResult(index=i, node_id=f"echo-{i}", host=f"echo{i}", coordination_exit_code=0,
                                    application_exit_code=0 if i == 0 else None, stdout=out if i == 0 else "")
                     for i in range(r.instances)]
        result = TaskResult(job_id=r.spec.job.id, task_id=r.spec.task.id, executor=self.name,
                            state="completed", exit_code=0, instances=instances)
        return TaskHandle(self, result.job_id, result.task_id, result)
'''


def test_the_built_in_executors_are_listed() -> None:
    code = "import json; from mpibatch.executors import names; print(json.dumps(names()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert {"local", "ssh", "azure"} <= set(json.loads(out))


def test_listing_and_a_local_run_do_not_import_the_azure_sdk() -> None:
    code = ("import sys; from mpibatch.executors import names, executor_class; import mpibatch.cli; "
            "names(); executor_class('local'); print(sorted(m for m in sys.modules if m.startswith('azure')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_unknown_executor_is_bad_input_naming_the_choices() -> None:
    with pytest.raises(SpecError) as e:
        get_executor("slurm")
    assert "slurm" in str(e.value) and "local" in str(e.value) and "azure" in str(e.value)


def test_an_option_the_executor_does_not_take_is_named_as_its_flag() -> None:
    with pytest.raises(SpecError) as e:
        get_executor("local", hosts=["10.0.0.4"], insecure_accept_unknown_host_keys=True)
    assert "--hosts" in str(e.value) and "--insecure-accept-unknown-host-keys" in str(e.value)
    assert "local" in str(e.value)


def test_cli_refuses_ssh_options_for_the_local_executor(tmp_path: Path) -> None:
    res = CliRunner().invoke(main, ["run", str(HELLO), "--hosts", "10.0.0.4,10.0.0.5", "--runs-dir",
                                    str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "--hosts" in res.output and "does not apply to the local executor" in res.output
    assert not any(tmp_path.iterdir())  # nothing ran


@pytest.fixture
def echo_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "echo_executor.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "echo_executor"


def test_register_a_throwaway_executor_and_run_the_cli_with_it(echo_module: str) -> None:
    register("echo", f"{echo_module}:EchoExecutor")
    assert "echo" in names()
    res = CliRunner().invoke(main, ["run", str(HELLO), "--executor", "echo", "-o", "json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["executor"] == "echo" and data["succeeded"] is True
    assert len(data["instances"]) == 3  # the spec's instances, through the rendered task
    stdout = data["instances"][0]["stdout"]
    assert "coordinate.sh" in stdout and "AZ_BATCH_HOST_LIST" in stdout  # the rendered lines, as Batch gets them


def test_the_handle_api_is_the_same_for_a_new_executor(echo_module: str) -> None:
    register("echo", f"{echo_module}:EchoExecutor")
    seen: list[tuple[str, str]] = []
    ex = get_executor("echo", greeting="hi", progress=lambda phase, detail: seen.append((phase, detail)))
    assert isinstance(ex, Executor)
    from mpibatch import load_spec

    handle = ex.submit(load_spec(HELLO))
    assert isinstance(handle, TaskHandle) and handle.done
    assert handle.state == "completed"
    assert handle.result().exit_code == 0
    assert handle.stdout().startswith("hi: ")
    assert handle.stderr(1) == ""
    with pytest.raises(SpecError):
        handle.stdout(7)
    assert seen == [("running", "3 instances, nowhere")]
    # Tasks it did not just run: the ABC's default says so clearly.
    with pytest.raises(SpecError) as e:
        ex.attach("job", "task").status()
    assert "echo executor cannot status" in str(e.value)


def test_an_installed_plugin_is_found_through_its_entry_point(tmp_path: Path) -> None:
    site = tmp_path / "site"
    (site / "echo_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "echo_plugin.py").write_text(PLUGIN)
    (site / "echo_plugin-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-plugin\n"
                                                                   "Version: 1.0\n")
    (site / "echo_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[mpibatch.executors]\necho = echo_plugin:EchoExecutor\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    proc = subprocess.run([sys.executable, "-m", "mpibatch.cli", "run", str(HELLO), "--executor", "echo"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "task hello/hello-mpi on echo: completed, exit code 0" in proc.stdout
    assert "echo: " in proc.stdout and "mpiexec" in proc.stdout
    listed = subprocess.run([sys.executable, "-m", "mpibatch.cli", "run", "--help"], capture_output=True,
                            text=True, env=env, timeout=60).stdout
    assert "echo" in listed


def test_rendered_accepts_a_spec_or_a_rendering() -> None:
    from mpibatch import load_spec
    from mpibatch.render import render

    spec = load_spec(HELLO)
    r = render(spec)
    assert rendered(r) is r
    assert rendered(spec).command_line == r.command_line
    assert executor_class("local").__name__ == "LocalExecutor"
