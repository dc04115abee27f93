"""The local executor without root: where the kernel forbids user namespaces it refuses before
anything starts (exit 2, naming the setting); bad input leaves nothing behind. The refusal is
real: the CLI runs inside a user namespace whose `user.max_user_namespaces` the test set to 0."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mpibatch.executors.userns import blocking_setting
from tests.infra.fixtures import mpi_env

SPEC = "job: {id: j}\ntask:\n  id: t\n  instances: 2\n  mpi: mpich\n  command: [hostname]\n  common_files: [%s]\n"


def cli(tmp: Path, spec: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    (tmp / "spec.yaml").write_text(spec)
    (tmp / "tmpdir").mkdir(exist_ok=True)
    env = {**mpi_env("mpich"), "TMPDIR": str(tmp / "tmpdir")}
    return subprocess.run([*prefix, sys.executable, "-m", "mpibatch.cli", "run", str(tmp / "spec.yaml"),
                           "--runs-dir", str(tmp / "runs")], env=env, cwd=tmp, capture_output=True, text=True,
                          timeout=120)


def test_refuses_before_starting_where_user_namespaces_are_off(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    no_userns = ("unshare", "--user", "--map-root-user", "--", "/bin/sh", "-c",
                 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh")
    r = cli(tmp_path, SPEC % "in.txt", no_userns)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "user.max_user_namespaces = 0" in r.stderr and "--executor ssh" in r.stderr
    assert "sysctl -w user.max_user_namespaces=" in r.stderr
    assert "starting" not in r.stderr + r.stdout and "Traceback" not in r.stderr
    assert not list((tmp_path / "tmpdir").iterdir()) and not (tmp_path / "runs").exists()


def test_the_same_run_works_where_they_are_on(tmp_path: Path) -> None:
    (tmp_path / "in.txt").write_text("x")
    r = cli(tmp_path, SPEC % "in.txt")
    assert r.returncode == 0, r.stderr
    assert "node-0" in r.stdout
    assert not list((tmp_path / "tmpdir").iterdir())  # nothing left where the run kept its nodes


def test_bad_input_leaves_no_node_directory(tmp_path: Path) -> None:
    r = cli(tmp_path, SPEC % "missing.txt")
    assert r.returncode == 2, r.stderr
    assert "task.common_files[0].source" in r.stderr and "missing.txt" in r.stderr  # the user's index
    assert "starting" not in r.stderr
    assert not list((tmp_path / "tmpdir").iterdir()), "bad input left a directory behind"


def test_blocking_setting_names_each_switch() -> None:
    def reader(values: dict[str, str]):
        return lambda path: values.get(path)
    assert blocking_setting(1000, reader({})) is None
    assert blocking_setting(1000, reader({"/proc/sys/user/max_user_namespaces": "0\n"}))[0] == \
        "user.max_user_namespaces = 0"
    assert blocking_setting(0, reader({"/proc/sys/user/max_user_namespaces": "0"}))  # root too
    debian = reader({"/proc/sys/kernel/unprivileged_userns_clone": "0"})
    assert blocking_setting(1000, debian)[0] == "kernel.unprivileged_userns_clone = 0"
    assert blocking_setting(0, debian) is None  # root may still create them
    ubuntu = reader({"/proc/sys/kernel/apparmor_restrict_unprivileged_userns": "1"})
    assert "apparmor" in blocking_setting(1000, ubuntu)[0] and "AppArmor profile" in blocking_setting(1000, ubuntu)[1]


def test_command_not_found_names_the_likely_cause(tmp_path: Path) -> None:
    """Issue 11: `mpirun: command not found` (exit 127) was reported as "the application exited with
    code 127"; the reason now names the likely cause and the two ways to fix PATH."""
    (tmp_path / "in.txt").write_text("x")
    r = cli(tmp_path, (SPEC % "in.txt").replace("command: [hostname]", "command: 'no-such-program --help'"))
    assert r.returncode == 1, r.stderr
    out = r.stdout + r.stderr
    assert "exited with code 127" in out and "--remote-path-prepend" in out and "environment.PATH" in out
