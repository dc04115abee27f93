"""A flavour is one module: a throwaway one, added through the public seam only (`register_flavor`),
renders through the CLI with its own launcher, fabric settings, rank variables and flavour check; and
`task.mpi.setup` is validated and shown by `mpibatch render`."""
from __future__ import annotations

import json
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpibatch.cli import main
from mpibatch.mpi import Flavor, names, register_flavor, unregister_flavor
from mpibatch.shell import Raw, Word


class ToyMpi(Flavor):
    """What a fifth flavour's module would hold (e.g. mpi/toympi.py)."""

    name = "toympi"
    title = "Toy MPI"
    launcher = "toyrun"
    version_signature = "Toy MPI [0-9]"
    rank_vars = ("TOY_RANK",)
    node_env = {"TOY_DEVICE": "ucx", "TOY_IFACE": "iface"}
    hpc_image_modules = {"ubuntu-hpc": "mpi/toy-1"}

    def launcher_argv(self, hosts: Sequence[str] | None, ppn: int, nprocs: int, rank_dir: Word,
                      env_names: Sequence[str]) -> list[Word]:
        host_arg: Word = ",".join(hosts) if hosts is not None else Raw('"$AZ_BATCH_HOST_LIST"')
        return ["toyrun", "--hosts", host_arg, "--np", str(nprocs), "--cwd", rank_dir]

    def fabric_env(self, fabric: str) -> dict[str, str]:
        return {"TOY_FABRIC": "rdma"} if fabric == "sriov" else {}


@pytest.fixture
def toy() -> Iterator[ToyMpi]:
    flavor = register_flavor(ToyMpi())
    try:
        yield flavor  # type: ignore[misc]
    finally:
        unregister_flavor("toympi")


def write_spec(tmp_path: Path, mpi: dict, pool: dict | None = None, **task: object) -> Path:
    data: dict = {"job": {"id": "j"}, "task": {"id": "t", "instances": 2, "command": ["app"], "mpi": mpi, **task}}
    if pool:
        data["pool"] = pool
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(data))  # JSON is YAML
    return path


def render_json(path: Path) -> dict:
    res = CliRunner().invoke(main, ["render", str(path), "--output", "json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_a_throwaway_flavour_renders_through_the_cli(tmp_path, toy):
    assert "toympi" in names()
    spec = write_spec(tmp_path, {"flavor": "toympi", "processes_per_node": 3},
                      pool={"vm_size": "Standard_HB120rs_v3", "image": "ubuntu-hpc"})
    task = render_json(spec)["task"]
    app = shlex.split(task["commandLine"])[2]
    assert '\ntoyrun --hosts "$AZ_BATCH_HOST_LIST" --np 6 --cwd ' in app
    assert "--rank-vars TOY_RANK" in app
    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert env["TOY_FABRIC"] == "rdma"
    coord = shlex.split(shlex.split(task["multiInstanceSettings"]["coordinationCommandLine"])[2])
    assert coord[coord.index("--launcher") + 1] == "toyrun" and coord[coord.index("--expect") + 1] == "Toy MPI"
    assert "Toy MPI=Toy MPI [0-9]" in coord  # every registered flavour's signature is known to the check
    assert coord[coord.index("--module") + 1] == "mpi/toy-1"  # its ubuntu-hpc default
    assert {coord[i + 1] for i, w in enumerate(coord) if w == "--node-var"} == {"TOY_DEVICE=ucx", "TOY_IFACE=iface"}
    table = CliRunner().invoke(main, ["render", str(spec)], catch_exceptions=False).output
    assert "Toy MPI (toympi)" in table and "module load mpi/toy-1 (default for the ubuntu-hpc image)" in table


def test_an_unknown_flavour_lists_the_registered_ones(tmp_path, toy):
    res = CliRunner().invoke(main, ["render", str(write_spec(tmp_path, {"flavor": "lam"}))])
    assert res.exit_code == 2 and "task.mpi.flavor" in res.output and "toympi" in res.output


def test_setup_is_shown_and_sent(tmp_path):
    spec = write_spec(tmp_path, {"flavor": "intelmpi", "setup": {"source": "/opt/intel/oneapi/setvars.sh --force"}})
    table = CliRunner().invoke(main, ["render", str(spec)], catch_exceptions=False).output
    assert "MPI setup" in table and "source /opt/intel/oneapi/setvars.sh --force (task.mpi.setup)" in table
    coord = render_json(spec)["task"]["multiInstanceSettings"]["coordinationCommandLine"]
    assert "--source /opt/intel/oneapi/setvars.sh --source-arg --force" in coord


@pytest.mark.parametrize("flavor, image, module", [
    ("intelmpi", "ubuntu-hpc", "mpi/impi-2021"), ("intelmpi", "almalinux-hpc", "mpi/impi-2021"),
    ("openmpi", "ubuntu-hpc", "mpi/hpcx"), ("mpich", "ubuntu-hpc", None), ("intelmpi", "ubuntu", None)])
def test_image_defaults(tmp_path, flavor, image, module):
    coord = render_json(write_spec(tmp_path, {"flavor": flavor}, pool={"image": image}))["task"][
        "multiInstanceSettings"]["coordinationCommandLine"]
    assert (f"--module {module}" in coord) if module else ("--module" not in coord)


def test_setup_none_turns_the_image_default_off(tmp_path):
    spec = write_spec(tmp_path, {"flavor": "intelmpi", "setup": "none"}, pool={"image": "ubuntu-hpc"})
    assert "--module" not in render_json(spec)["task"]["multiInstanceSettings"]["coordinationCommandLine"]


def test_a_relative_setup_source_is_a_common_file(tmp_path):
    (tmp_path / "use-system-mpi.sh").write_text("export PATH=/usr/bin:$PATH\n")
    spec = write_spec(tmp_path, {"flavor": "openmpi", "setup": {"source": "use-system-mpi.sh"}},
                      common_files=[{"source": "use-system-mpi.sh", "path": "use-system-mpi.sh"}])
    coord = render_json(spec)["task"]["multiInstanceSettings"]["coordinationCommandLine"]
    assert "--source use-system-mpi.sh" in coord  # coordinate.sh finds it in $AZ_BATCH_TASK_SHARED_DIR


@pytest.mark.parametrize("setup, field, problem, fix", [
    ({"modules": "mpi/x"}, "task.mpi.setup.modules", "unknown key", "did you mean 'module'"),
    ({"module": "mpi/x", "source": "/a.sh"}, "task.mpi.setup", "exactly one of module or source", "{module:"),
    ({"module": "mpi/$(reboot)"}, "task.mpi.setup.module", "would need quoting", "letters, digits"),
    ({"module": "mpi x;y"}, "task.mpi.setup.module", "'x;y' would need quoting", "letters, digits"),
    ({"source": "env/vars.sh"}, "task.mpi.setup.source", "relative path", "absolute path on the node"),
    ({"source": "/opt/my vars.sh'"}, "task.mpi.setup.source", "would need quoting", "letters, digits"),
    ({"module": ""}, "task.mpi.setup.module", "is empty", "{module:"),
    (["mpi/x"], "task.mpi.setup", "expected a mapping", "{module:"),
])
def test_bad_setup_is_exit_2_at_render_with_field_and_fix(tmp_path, setup, field, problem, fix):
    res = CliRunner().invoke(main, ["render", str(write_spec(tmp_path, {"flavor": "mpich", "setup": setup}))])
    assert res.exit_code == 2, res.output
    assert field in res.output and problem in res.output and fix in res.output


def test_setup_on_windows_is_refused(tmp_path):
    res = CliRunner().invoke(main, ["render", str(write_spec(tmp_path, {"flavor": "msmpi", "setup": {"module": "x"}}))])
    assert res.exit_code == 2 and "task.mpi.setup" in res.output and "Linux" in res.output
