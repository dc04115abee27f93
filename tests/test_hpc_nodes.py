"""Nodes that look like Azure HPC nodes: each node's own InfiniBand device reaches its ranks, an RDMA task
on a node without an active port stops in coordination, `task.mpi.setup` activates the runtime through
environment modules, and a node whose launcher belongs to another flavour is refused.

Real parts: the coordination script itself, real MPI launchers from the PyPI runtimes (.venvs/*), the
environment-modules package from apt, and the local executor's emulated nodes with a fake sysfs tree
each (--node-ib). The MPI traffic stays TCP; what is checked is what every node decided.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from mpibatch.launchers import protocol, script_path

from mpibatch.cli import main as cli
from mpibatch.executors.hpcnode import NodeIb, parse_node_ib, write_sysfs
from mpibatch.executors.local import LocalExecutor
from mpibatch.render import render
from mpibatch.spec import parse_spec
from tests.infra.fixtures import VENVS, mpi_env, require
from tests.test_local_executor import no_process_left

LINUX = ["openmpi", "intelmpi", "mpich"]
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Each rank says which node it is on and what it sees; no MPI_Init, so the fake devices are never opened.
SHOW = ('echo "RANK host=$(hostname) ucx=${UCX_NET_DEVICES:-unset} launcher=$(command -v mpirun || '
        'command -v mpiexec || echo none)"')


def _need_local() -> None:
    require([] if os.geteuid() == 0 else ["the local executor needs root here"], "local executor")


def _need_modules() -> None:
    require([] if Path("/usr/share/modules/init/bash").is_file() else
            ["environment-modules is not installed (scripts/install-test-deps.sh installs it)"], "environment modules")


def spec_of(flavor: str, *, instances: int = 2, command: object = SHOW, tmp: Path = Path("."), **mpi: object):
    env = mpi.pop("environment", None)
    task = {"id": "t", "instances": instances, "command": command,
            "mpi": {"flavor": flavor, "processes_per_node": 1, **mpi}, "max_wall_clock": "3m"}
    if env:
        task["environment"] = env
    return parse_spec({"job": {"id": "hpc"}, "task": task}, tmp)


def rank_lines(result) -> dict[str, str]:
    """host -> what its rank saw."""
    out = {}
    for line in result.instances[0].stdout.splitlines():
        if line.startswith("RANK "):
            fields = dict(f.split("=", 1) for f in line[5:].split())
            out[fields["host"]] = fields
    return out


# ------------------------------------------------------------------------------------ per-node devices (local)

@pytest.mark.parametrize("flavor", LINUX)
def test_every_rank_uses_its_own_nodes_device(tmp_path, flavor):
    _need_local()
    ex = LocalExecutor(base_env=mpi_env(flavor), runs_dir=tmp_path, node_ib="mlx5_ib0,mlx5_0")
    result = ex.submit(spec_of(flavor, fabric="sriov", tmp=tmp_path)).result()
    assert result.succeeded, (result.failure, result.instances[0].stderr)
    seen = rank_lines(result)
    assert {h: f["ucx"] for h, f in seen.items()} == {"node-0": "mlx5_ib0:1", "node-1": "mlx5_0:1"}
    no_process_left(ex)


def test_the_users_ucx_net_devices_beats_discovery(tmp_path):
    _need_local()
    ex = LocalExecutor(base_env=mpi_env("openmpi"), runs_dir=tmp_path, node_ib="mlx5_ib0,mlx5_0")
    spec = spec_of("openmpi", fabric="sriov", tmp=tmp_path, environment={"UCX_NET_DEVICES": "mlx5_9:1"})
    assert "UCX_NET_DEVICES=ucx" not in render(spec).coordination_command_line
    result = ex.submit(spec).result()
    assert result.succeeded, (result.failure, result.instances[0].stderr)
    assert {f["ucx"] for f in rank_lines(result).values()} == {"mlx5_9:1"}
    no_process_left(ex)


def test_rdma_task_on_a_node_without_an_active_port_stops_in_coordination(tmp_path):
    _need_local()
    marker = tmp_path / "app-ran"
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path, node_ib="mlx5_ib0,none,mlx5_0:down")
    spec = spec_of("mpich", instances=3, fabric="sriov", tmp=tmp_path, command=["touch", str(marker)])
    result = ex.submit(spec).result()
    assert not result.succeeded and result.failure and result.failure.phase == "coordination"
    assert "node-1" in result.failure.reason and "no active InfiniBand port" in result.failure.reason
    assert "no InfiniBand device" in result.instances[1].stderr
    assert "mlx5_0:1 DOWN InfiniBand" in result.instances[2].stderr  # what node 2 found, named
    assert result.instances[0].coordination_exit_code == 0
    assert not marker.exists(), "the application ran"
    no_process_left(ex)


def test_cli_run_with_node_ib(tmp_path):
    _need_local()
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"job": {"id": "hpc"}, "task": {
        "id": "t", "instances": 2, "command": SHOW, "mpi": {"flavor": "mpich", "fabric": "sriov"}}}))
    runner = CliRunner()
    ok = runner.invoke(cli, ["run", str(spec), "--runs-dir", str(tmp_path / "runs"), "--node-ib", "mlx5_ib0,mlx5_0"])
    assert ok.exit_code == 0, ok.output
    assert "ucx=mlx5_ib0:1" in ok.output and "ucx=mlx5_0:1" in ok.output
    bad = runner.invoke(cli, ["run", str(spec), "--runs-dir", str(tmp_path / "runs"), "--node-ib", "mlx5_ib0,none"])
    assert bad.exit_code == 1 and "node-1" in bad.output and "no active InfiniBand port" in bad.output
    wrong = runner.invoke(cli, ["run", str(spec), "--node-ib", "mlx5_ib0"])
    assert wrong.exit_code == 2 and "--node-ib" in wrong.output and "starting" not in wrong.output


# --------------------------------------------------------------------------------- task.mpi.setup (local)

@pytest.mark.parametrize("flavor", LINUX)
def test_module_setup_on_nodes_whose_path_has_no_launcher(tmp_path, flavor):
    _need_local()
    _need_modules()
    base = dict(os.environ, PATH=SYSTEM_PATH)
    ex = LocalExecutor(base_env=base, runs_dir=tmp_path, modules={"mpi/test": str(VENVS / flavor)})
    result = ex.submit(spec_of(flavor, tmp=tmp_path, setup={"module": "mpi/test"})).result()
    assert result.succeeded, (result.failure, result.instances[0].stderr)
    seen = rank_lines(result)
    assert set(seen) == {"node-0", "node-1"}
    assert all(f["launcher"].startswith(str(VENVS / flavor / "bin")) for f in seen.values()), seen
    no_process_left(ex)


def test_module_setup_runs_a_real_mpi_program(tmp_path):
    _need_local()
    _need_modules()
    (tmp_path / "hello.py").write_text("from mpi4py import MPI\nc = MPI.COMM_WORLD\ns = c.allreduce(c.rank)\n"
                                       "if c.rank == 0:\n    print('SUM', s, 'SIZE', c.size)\n")
    ex = LocalExecutor(base_env=dict(os.environ, PATH=SYSTEM_PATH), runs_dir=tmp_path,
                       modules={"mpi/test": str(VENVS / "mpich")})
    spec = parse_spec({"job": {"id": "hpc"}, "task": {
        "id": "t", "instances": 2, "command": ["python", "hello.py"], "max_wall_clock": "3m",
        "mpi": {"flavor": "mpich", "processes_per_node": 2, "setup": {"module": "mpi/test"}},
        "common_files": ["hello.py"]}}, tmp_path)
    result = ex.submit(spec).result()
    assert result.succeeded, (result.failure, result.instances[0].stderr)
    assert "SUM 6 SIZE 4" in result.instances[0].stdout  # python is the module's venv python, with mpi4py
    no_process_left(ex)


def test_unknown_module_fails_coordination_with_the_module_tools_message(tmp_path):
    _need_local()
    _need_modules()
    ex = LocalExecutor(base_env=dict(os.environ, PATH=SYSTEM_PATH), runs_dir=tmp_path,
                       modules={"mpi/test": str(VENVS / "mpich")})
    result = ex.submit(spec_of("mpich", tmp=tmp_path, setup={"module": "mpi/nope"})).result()
    assert result.failure and result.failure.phase == "coordination"
    assert "task.mpi.setup failed on this node (node-0" in result.failure.reason
    assert "Unable to locate a modulefile for 'mpi/nope'" in result.failure.reason  # environment modules' words
    no_process_left(ex)


def test_flavour_check_refuses_a_launcher_of_another_flavour(tmp_path):
    _need_local()
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path)
    result = ex.submit(spec_of("openmpi", tmp=tmp_path)).result()
    assert result.failure and result.failure.phase == "coordination"
    reason = result.failure.reason
    assert "the spec's flavour is Open MPI but mpirun on this node" in reason and "is MPICH" in reason
    assert "HYDRA build details" in reason and "task.mpi.setup" in reason
    no_process_left(ex)


# ------------------------------------------------------------------- the coordination script on its own

def _coordinate(tmp_path: Path, args: list[str], path: str, **env: str) -> subprocess.CompletedProcess:
    wd, shared = tmp_path / "wd", tmp_path / "shared"
    wd.mkdir(exist_ok=True)
    shared.mkdir(exist_ok=True)
    base = {"PATH": path, "HOME": str(tmp_path), "AZ_BATCH_TASK_WORKING_DIR": str(wd),
            "AZ_BATCH_TASK_SHARED_DIR": str(shared), "AZ_BATCH_HOST_LIST": "10.0.0.4",
            "AZ_BATCH_MASTER_NODE": "10.0.0.4:6000", "AZ_BATCH_NODE_ID": "tvm-1",
            "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true", "MPIBATCH_PEER_CHECK": "0", **env}
    return subprocess.run(["bash", script_path("coordinate.sh"), "--rank-dir", str(tmp_path / "r" / "t"),
                           *protocol.coordinate_args(), *args],
                          env=base, capture_output=True, text=True, timeout=60)


def test_source_setup_that_fails_names_the_node_and_its_stderr(tmp_path):
    script = tmp_path / "vars.sh"
    script.write_text("echo 'checking licence' >&2\necho 'vars.sh: cannot find /opt/intel' >&2\nreturn 3\n")
    proc = _coordinate(tmp_path, ["--source", str(script), "--source-arg", "release"], SYSTEM_PATH)
    assert proc.returncode == 1
    assert "task.mpi.setup failed on this node (tvm-1" in proc.stderr
    assert "vars.sh: cannot find /opt/intel" in proc.stderr and "exit 3" in proc.stderr


def test_source_setup_environment_reaches_the_ranks_wrapper(tmp_path):
    script = tmp_path / "vars.sh"
    script.write_text(f'export PATH="{VENVS / "mpich" / "bin"}:$PATH" I_MPI_X="a b\'c" RELEASE="$1"\n')
    proc = _coordinate(tmp_path, ["--source", str(script), "--source-arg", "release_mt",
                                  "--launcher", "mpiexec", "--expect", "MPICH",
                                  "--runtime", "MPICH=HYDRA build details"], SYSTEM_PATH)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([str(tmp_path / "wd" / ".mpibatch-rank"), "bash", "-c",
                          'echo "$I_MPI_X|$RELEASE|$(command -v mpiexec)"'],
                         env={"PATH": SYSTEM_PATH}, capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == f"a b'c|release_mt|{VENVS / 'mpich' / 'bin' / 'mpiexec'}"


def test_missing_launcher_on_the_primary_is_named(tmp_path):
    # A launcher name no machine has: this machine may have a system MPI (Debian's lammps brings Open MPI's mpirun).
    launcher = "mpibatch-test-no-such-mpirun"
    proc = _coordinate(tmp_path, ["--launcher", launcher, "--expect", "Intel MPI"], SYSTEM_PATH)
    assert proc.returncode == 1
    assert f"{launcher}, the Intel MPI launcher, is not on PATH on this node (tvm-1" in proc.stderr


def test_discovery_writes_the_nodes_ports_and_unsets_them_where_there_are_none(tmp_path):
    sysfs = tmp_path / "sys"
    write_sysfs(sysfs, NodeIb("mlx5_ib0"))
    (sysfs / "class" / "infiniband" / "mlx5_1" / "ports" / "1").mkdir(parents=True)  # an Ethernet (RoCE) port
    (sysfs / "class" / "infiniband" / "mlx5_1" / "ports" / "1" / "state").write_text("4: ACTIVE\n")
    (sysfs / "class" / "infiniband" / "mlx5_1" / "ports" / "1" / "link_layer").write_text("Ethernet\n")
    args = ["--fabric", "none", "--node-var", "UCX_NET_DEVICES=ucx", "--node-var", "MY_IFACE=iface"]
    assert _coordinate(tmp_path, args, SYSTEM_PATH, MPIBATCH_SYSFS=str(sysfs)).returncode == 0
    env_file = (tmp_path / "wd" / ".mpibatch-node.env").read_text()
    assert "export UCX_NET_DEVICES='mlx5_ib0:1'" in env_file and "export MY_IFACE='ib0'" in env_file
    write_sysfs(sysfs, NodeIb(None))
    assert _coordinate(tmp_path, args, SYSTEM_PATH, MPIBATCH_SYSFS=str(sysfs)).returncode == 0
    env_file = (tmp_path / "wd" / ".mpibatch-node.env").read_text()
    assert "unset UCX_NET_DEVICES" in env_file  # the primary's forwarded value never names an absent device


# ------------------------------------------------------------------------------------------------ pure parts

def test_parse_node_ib():
    assert parse_node_ib("mlx5_ib0,mlx5_0:down,none") == [NodeIb("mlx5_ib0"), NodeIb("mlx5_0", False), NodeIb(None)]
    for bad in ("", "mlx5 0", "a;b", "mlx5_0:up2"):
        with pytest.raises(Exception) as e:
            parse_node_ib(bad)
        assert getattr(e.value, "field", None) == "--node-ib"


def test_cli_rehearsal_nodes_offer_the_venvs_runtime_as_mpi_venv(tmp_path):
    _need_local()
    _need_modules()
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"job": {"id": "hpc"}, "task": {
        "id": "t", "instances": 2, "command": 'echo "RANK host=$(hostname) loaded=$LOADEDMODULES"',
        "mpi": {"flavor": "mpich", "setup": {"module": "mpi/venv"}}}}))
    res = CliRunner().invoke(cli, ["run", str(spec), "--runs-dir", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    assert "host=node-0 loaded=mpi/venv" in res.output and "host=node-1 loaded=mpi/venv" in res.output


def test_a_launcher_whose_version_hangs_is_ended_and_its_words_still_count(tmp_path):
    """`--launcher --version` gets MPIBATCH_VERSION_WAIT seconds (30 by default); one that prints, then hangs
    with its output open, is killed when they are up, and what it printed still names the runtime."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    pidfile = tmp_path / "launcher.pid"
    (bindir / "mpiexec").write_text(f"#!/bin/sh\necho 'HYDRA build details:'\necho $$ > {pidfile}\nexec sleep 600\n")
    (bindir / "mpiexec").chmod(0o755)
    start = time.monotonic()
    proc = _coordinate(tmp_path, ["--launcher", "mpiexec", "--expect", "MPICH", "--runtime",
                                  "MPICH=HYDRA build details"], f"{bindir}:{SYSTEM_PATH}", MPIBATCH_VERSION_WAIT="1")
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert "cannot tell which MPI" not in proc.stderr  # the words before the hang were read
    assert took < 20, f"coordination took {took:.1f}s with a 1 s wait"
    pid = int(pidfile.read_text())
    for _ in range(100):  # bounded: 5 s for the kill to land
        if not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError("the hanging launcher was left running")


def test_launcher_checked_on_every_node_unless_only_the_primary_is_asked(tmp_path):
    """A subtask whose launcher is another flavour's fails its coordination - on Batch, where nodes may differ; on
    emulated nodes (MPIBATCH_LAUNCHER_CHECK=primary: one machine's programs) only the primary checks."""
    args = ["--launcher", "mpiexec", "--expect", "Open MPI", "--runtime", "Open MPI=Open MPI",
            "--runtime", "MPICH=HYDRA build details"]
    path = f"{VENVS / 'mpich' / 'bin'}:{SYSTEM_PATH}"
    sub = _coordinate(tmp_path, args, path, AZ_BATCH_IS_CURRENT_NODE_MASTER="false")
    assert sub.returncode == 1 and "the spec's flavour is Open MPI but mpiexec on this node" in sub.stderr
    assert _coordinate(tmp_path, args, path, AZ_BATCH_IS_CURRENT_NODE_MASTER="false",
                       MPIBATCH_LAUNCHER_CHECK="primary").returncode == 0
    primary = _coordinate(tmp_path, args, path, MPIBATCH_LAUNCHER_CHECK="primary")
    assert primary.returncode == 1 and "the spec's flavour is Open MPI" in primary.stderr
