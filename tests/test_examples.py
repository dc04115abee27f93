"""Every example under examples/ runs as its README says: for real on the local executor (emulated
nodes, root) or the SSH test cluster where it can run here; rendered, pool-checked and shellchecked
where it needs Azure or Windows."""
from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpibatch.cli import main as cli
from mpibatch.render import render
from mpibatch.spec import load_spec
from tests.infra.fixtures import VENVS, mpi_env, require
from tests.infra.preempt import run_preempted

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"



def run_local(spec_path: Path, flavor: str, runs_dir: Path, **env_extra: str):
    from mpibatch.executors.local import LocalExecutor

    env = {**mpi_env(flavor), **env_extra}
    result = LocalExecutor(base_env=env, runs_dir=runs_dir).submit(load_spec(spec_path)).result()
    assert result.succeeded, (result.failure, [(i.index, i.stdout, i.stderr) for i in result.instances])
    return result


def cli_ok(*args: str) -> str:
    res = CliRunner().invoke(cli, list(args))
    assert res.exit_code == 0, f"mpibatch {' '.join(args)} -> {res.exit_code}\n{res.output}"
    return res.output


def check_pool_clean(spec_path: Path) -> dict:
    out = json.loads(cli_ok("check-pool", str(spec_path), "-o", "json"))
    assert out["clean"], out
    assert not [p for p in out["problems"] if p["severity"] == "error"], out
    return out


def render_json(spec_path: Path) -> dict:
    return json.loads(cli_ok("render", str(spec_path), "-o", "json"))


def bash_script(command_line: str) -> str:
    """The script inside a rendered `/bin/bash -c '<script>'` line."""
    parts = shlex.split(command_line)
    assert parts[:2] == ["/bin/bash", "-c"] and len(parts) == 3, command_line
    return parts[2]


def shellcheck(script: str, tmp_path: Path, name: str, severity: str = "style") -> None:
    require([] if shutil.which("shellcheck") else ["shellcheck (apt-get install shellcheck)"], "shellcheck")
    f = tmp_path / f"{name}.sh"
    f.write_text("#!/bin/bash\n" + script + "\n")
    res = subprocess.run(["shellcheck", "-s", "bash", "-S", severity, str(f)], capture_output=True, text=True)
    assert res.returncode == 0, f"shellcheck {name}:\n{script}\n{res.stdout}{res.stderr}"


def shellcheck_rendered(spec_path: Path, tmp_path: Path) -> None:
    """Every Linux command line of the rendered task: application, coordination, preparation, release."""
    r = render(load_spec(spec_path))
    assert r.os == "linux"
    # A shell-line command is single-quoted on purpose (each rank's bash expands it): SC2016 is info.
    app_level = "warning" if r.spec.task.command.shell is not None else "style"
    shellcheck(bash_script(r.command_line), tmp_path, "application", severity=app_level)
    shellcheck(bash_script(r.coordination_command_line), tmp_path, "coordination")
    for name, line in (("preparation", r.preparation_command_line), ("release", r.release_command_line)):
        if line:
            shellcheck(bash_script(line), tmp_path, name)


def readme_mentions(example: str, *texts: str) -> None:
    readme = (EXAMPLES / example / "README.md").read_text()
    for t in texts:
        assert t in readme, f"examples/{example}/README.md should show {t!r}"


# --------------------------------------------------------------------------------------------- 1. hello

@pytest.mark.mpi
def test_hello_runs_6_ranks_on_3_nodes(tmp_path: Path) -> None:
    readme_mentions("hello", "mpibatch run examples/hello/spec.yaml", "sum of ranks = 15 (expected 15)")
    result = run_local(EXAMPLES / "hello" / "spec.yaml", "mpich", tmp_path)
    out = result.primary.stdout
    assert "sum of ranks = 15 (expected 15)" in out
    for rank in range(6):
        assert f"rank {rank}/6 host node-{rank // 2} " in out, out
    assert [sorted(i.files) for i in result.instances] == [
        ["hello-summary.txt", "rank-0.txt", "rank-1.txt"], ["rank-2.txt", "rank-3.txt"], ["rank-4.txt", "rank-5.txt"]]


# ------------------------------------------------------------------------------------ 2. heat-simulation

HEAT = EXAMPLES / "heat-simulation"


def load_module(path: Path):
    """An example's script, imported as a module (stitch.py, solve.py)."""
    spec = importlib.util.spec_from_file_location(f"example_{path.parent.name}_{path.stem}".replace("-", "_"), path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def heat_args() -> list[str]:
    """NX NY STEPS from the spec's command, so the serial run is the same problem."""
    words = shlex.split(load_spec(HEAT / "spec.yaml").task.command.shell or "")
    assert words[0].endswith("/heat") and len(words) == 4, words
    return words[1:]


@pytest.mark.mpi
def test_heat_simulation_matches_a_serial_run(tmp_path: Path) -> None:
    readme_mentions("heat-simulation", "mpibatch run examples/heat-simulation/spec.yaml",
                    "stitch.py mpibatch-runs/heat-simulation/heat.latest \\\n"
                    "  -o mpibatch-runs/heat-simulation/heat.latest/heat.png")
    env = mpi_env("mpich")
    result = run_local(HEAT / "spec.yaml", "mpich", tmp_path / "runs")
    # Every instance ran ranks and its part files were collected, subtasks included.
    assert [sorted(i.files) for i in result.instances] == [
        ["part-0.csv", "part-1.csv"], ["part-2.csv", "part-3.csv"], ["part-4.csv", "part-5.csv"]]
    assert "on 6 ranks" in result.primary.stdout
    for rank in range(6):
        assert f"rank {rank}/6 on node-{rank // 2}:" in result.primary.stdout

    # Stitch with the example's script, as the README does.
    png = tmp_path / "heat.png"
    latest = tmp_path / "runs" / "heat-simulation" / "heat.latest"  # what the README stitches
    assert latest.resolve() == Path(result.output_dir).resolve()
    res = subprocess.run(["python3", str(HEAT / "stitch.py"), str(latest), "-o", str(png)],
                         capture_output=True, text=True, env=env)
    assert res.returncode == 0, res.stderr
    assert "stitched 6 parts into a 160x120 plate" in res.stdout
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    assert int.from_bytes(data[16:20], "big") == 480 and int.from_bytes(data[20:24], "big") == 360

    # The serial reference: the same program, built the same way, one rank, no Batch at all.
    serial = tmp_path / "serial"
    serial.mkdir()
    subprocess.run(["mpicc", "-O2", "-o", str(serial / "heat"), str(HEAT / "heat.c")], check=True, env=env)
    subprocess.run(["mpiexec", "-n", "1", str(serial / "heat"), *heat_args()], check=True, cwd=serial, env=env,
                   capture_output=True, timeout=120)
    stitch = load_module(HEAT / "stitch.py")
    parallel, reference = stitch.stitch(result.output_dir), stitch.stitch(serial)
    assert len(parallel) == len(reference) == 120 and len(parallel[0]) == 160
    worst = max(abs(a - b) for pr, rr in zip(parallel, reference) for a, b in zip(pr, rr))
    assert worst <= 1e-12, f"parallel and serial plates differ by up to {worst}"
    # Not trivially equal: heat reached the middle of the plate (the halo exchange worked).
    assert 0.05 < reference[100][80] < 0.95


@pytest.mark.mpi
def test_heat_simulation_preempted_twice_ends_with_the_same_plate(tmp_path: Path) -> None:
    """Preempted twice in rehearsal, heat restarts from its newest saved checkpoint each time; the plate it
    ends with is bit-identical to an uninterrupted run's."""
    from mpibatch.executors.local import LocalExecutor
    from mpibatch.spec import parse_spec
    from mpibatch.spec_yaml import parse_yaml

    data = parse_yaml((HEAT / "spec.yaml").read_text(), "spec.yaml")
    assert data["task"]["checkpoint"]["pattern"] == "restart.bin"
    # Slowed down to at least 20 s (5 ms of sleep a step; a checkpoint every 400 steps, 2 s or more), looked at
    # every second; each eviction comes once the attempt running saved a generation (tests/infra/preempt.py).
    data["task"]["command"] = data["task"]["command"] + " 400 5000"
    data["task"]["checkpoint"]["every"] = "1s"
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs")
    result, seen = run_preempted(ex, parse_spec(data, HEAT), 2)
    assert result.succeeded, (result.failure, [(i.stdout, i.stderr) for i in result.instances])
    assert (result.requeues, result.attempts) == (2, 1)
    assert result.restored[0] is None and result.restored[2] >= seen[1] > result.restored[1] >= seen[0]
    assert "heat: restarted from step" in result.primary.stdout
    assert "restored checkpoint generation" in result.primary.stderr

    serial = tmp_path / "serial"
    serial.mkdir()
    env = mpi_env("mpich")
    subprocess.run(["mpicc", "-O2", "-o", str(serial / "heat"), str(HEAT / "heat.c")], check=True, env=env)
    subprocess.run(["mpiexec", "-n", "1", str(serial / "heat"), *heat_args()], check=True, cwd=serial, env=env,
                   capture_output=True, timeout=120)
    stitch = load_module(HEAT / "stitch.py")
    assert stitch.stitch(result.output_dir) == stitch.stitch(serial)  # every value, to the last bit (%.17g)


def test_heat_stitch_rejects_missing_parts(tmp_path: Path) -> None:
    stitch = load_module(HEAT / "stitch.py")
    header = "# heat part rank={r} ranks=2 nx=3 ny=4 steps=1 row0={r0} rows=2 host=h\n"
    (tmp_path / "part-0.csv").write_text(header.format(r=0, r0=0) + "1,1,1\n0,0.5,0\n")
    with pytest.raises(ValueError, match="expected 2 parts"):
        stitch.stitch(tmp_path)
    (tmp_path / "part-1.csv").write_text(header.format(r=1, r0=2) + "0,0.25,0\n0,0,0\n")
    assert stitch.stitch(tmp_path)[1] == [0.0, 0.5, 0.0]
    assert stitch.main([str(tmp_path), "-o", str(tmp_path / "x.png")]) == 0


# --------------------------------------------------------------------------------- 4. latency-rdma-pool

LATENCY = EXAMPLES / "latency-rdma-pool" / "spec.yaml"


def test_latency_rdma_pool_renders_sriov_intel_mpi(tmp_path: Path) -> None:
    readme_mentions("latency-rdma-pool", "mpibatch pool create examples/latency-rdma-pool/spec.yaml",
                    "mpibatch bench latency examples/latency-rdma-pool/spec.yaml --executor azure --pairs all",
                    "~1.2 us", "Over ~10 us")
    payload = render_json(LATENCY)
    task = payload["task"]
    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert env["I_MPI_FABRICS"] == "shm:ofi" and env["FI_PROVIDER"] == "mlx"
    assert task["multiInstanceSettings"]["numberOfInstances"] >= 2
    assert '\nmpirun -hosts "$AZ_BATCH_HOST_LIST" -n 3 -ppn 1 ' in task["commandLine"]
    # the runtime comes from the image's module, not from hand-set paths
    assert "--module mpi/impi-2021" in task["multiInstanceSettings"]["coordinationCommandLine"]
    assert not {"PATH", "LD_LIBRARY_PATH", "I_MPI_ROOT"} & set(env)
    assert task["userIdentity"]["autoUser"] == {"scope": "pool", "elevationLevel": "admin"}
    spec = load_spec(LATENCY)
    assert spec.pool and spec.pool.vm_size == "Standard_HB120rs_v3" and spec.pool.nodes >= 2
    assert spec.pool.image and spec.pool.image.offer == "ubuntu-hpc"
    check = check_pool_clean(LATENCY)
    assert "sriov" in check["summary"]
    shellcheck_rendered(LATENCY, tmp_path)


def test_latency_bench_script_is_built_from_the_spec(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["bench", "latency", str(LATENCY), "--executor", "azure", "--pairs", "all",
                                   "--show-script"])
    assert res.exit_code == 0, res.output
    assert "IMB-MPI1" in res.output and "run_pair" in res.output
    # warning level: the rank wrapper is single-quoted on purpose (SC2016 is info).
    shellcheck(res.output, tmp_path, "bench", severity="warning")


# ------------------------------------------------------------------------------------ 5. msmpi-windows

MSMPI = EXAMPLES / "msmpi-windows" / "spec.yaml"


def test_msmpi_windows_renders_smpd_and_ccp_nodes() -> None:
    readme_mentions("msmpi-windows", "MSMpiSetup.exe -unattend -force", "--msmpi-installer",
                    "mpibatch check-pool examples/msmpi-windows/spec.yaml", "CCP_NODES")
    payload = render_json(MSMPI)
    task = payload["task"]
    mi = task["multiInstanceSettings"]
    assert mi["coordinationCommandLine"] == 'cmd /c start cmd /c ""%MSMPI_BIN%\\smpd.exe"" -d'
    ppn = load_spec(MSMPI).task.mpi.processes_per_node
    app = task["commandLine"]
    assert app.startswith(f'cmd /c ""%MSMPI_BIN%\\mpiexec.exe"" -c {ppn} -wdir %AZ_BATCH_TASK_SHARED_DIR% '), app
    assert "-hosts" not in app  # mpiexec reads CCP_NODES
    # cmd /c strips the first and the last quote of the line: only the mpiexec idiom may have quotes.
    assert app.count('"') == 4, app
    assert "userIdentity" not in task or not task["userIdentity"]
    assert [f["filePath"] for f in mi["commonResourceFiles"]] == ["hello.py"]
    prep = payload["job"]["jobPreparationTask"]["commandLine"]
    assert prep.startswith("cmd /c python-3.12.8-amd64.exe /quiet") and "pip install" in prep
    check = check_pool_clean(MSMPI)
    assert "windows" in check["summary"]


# ------------------------------------------------------------------------------- 3. wrap-existing-code

WRAP = EXAMPLES / "wrap-existing-code"


@pytest.mark.mpi
def test_wrap_existing_code_runs_imb_unchanged(tmp_path: Path) -> None:
    readme_mentions("wrap-existing-code", "mpibatch run examples/wrap-existing-code/spec.yaml",
                    "pool start task", "job preparation task", "common files")
    require([] if (VENVS / "intelmpi" / "bin" / "IMB-MPI1").exists()
            else ["IMB-MPI1 in .venvs/intelmpi (impi-rt==2021.18.1)"], "Intel MPI Benchmarks")
    result = run_local(WRAP / "spec.yaml", "intelmpi", tmp_path)
    stdout = Path(result.primary.stdout_path or Path(result.output_dir, "0", "stdout.txt")).read_text()
    assert "Benchmarking PingPong" in stdout and "Benchmarking Allreduce" in stdout
    assert "# #processes = 3" in stdout and "All processes entering MPI_Finalize" in stdout
    assert "IMB-MPI1 PingPong Sendrecv Allreduce" in stdout  # IMB's own "calling sequence": unchanged argv
    # Every instance's logs were collected, and the wrapper found the library path on every node.
    for inst in result.instances:
        assert Path(result.output_dir, str(inst.index), "stdout.txt").exists()
        assert "error while loading shared libraries" not in inst.stderr


def test_wrap_existing_code_wrapper_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck((WRAP / "run-imb.sh").read_text(), tmp_path, "run-imb")
    shellcheck_rendered(WRAP / "spec.yaml", tmp_path)


# ----------------------------------------------------------------------------------------- 6. shared-dir

SHARED = EXAMPLES / "shared-dir"


@pytest.mark.cluster
@pytest.mark.mpi
def test_shared_dir_case_is_read_by_every_node_over_sshfs(ssh_cluster3, tmp_path: Path) -> None:
    from mpibatch.executors.ssh import SshExecutor
    from tests.infra.fixtures import require_cluster

    require_cluster(sshfs=True)
    readme_mentions("shared-dir", "mpibatch run examples/shared-dir/spec.yaml --executor ssh",
                    "mpibatch check-pool examples/shared-dir/spec-nfs.yaml")
    mpi_env("mpich")  # skips without the runtime
    c = ssh_cluster3
    ex = SshExecutor(c.hosts, user="root", key=str(c.client_key_path), known_hosts=str(c.known_hosts_path),
                     runs_dir=tmp_path / "runs", remote_path_prepend=[str(VENVS / "mpich" / "bin")])
    result = ex.submit(load_spec(SHARED / "spec.yaml")).result()
    assert result.succeeded, (result.failure, [(i.index, i.stdout, i.stderr) for i in result.instances])
    out = result.primary.stdout
    assert "6 ranks on 3 hosts (node-0, node-1, node-2)" in out and "every rank read the same case: True" in out
    # Subtasks mounted the primary's shared dir, and their ranks' logs came back from their own nodes.
    for inst in result.instances[1:]:
        assert "(sshfs)" in inst.stderr
    assert [sorted(i.files) for i in result.instances] == [
        ["T.final", "rank-0.log", "rank-1.log"], ["rank-2.log", "rank-3.log"], ["rank-4.log", "rank-5.log"]]
    logs = [Path(result.output_dir, str(i // 2), f"rank-{i}.log").read_text() for i in range(6)]
    assert len({log.split("digest ")[1].split(")")[0] for log in logs}) == 1
    assert all(f"on node-{i // 2}:" in log for i, log in enumerate(logs))
    # The reconstructed field is the serial solution of the same case.
    final = [float(v) for v in Path(result.output_dir, "0", "T.final").read_text().split()]
    reference = load_module(SHARED / "solve.py").solve_serial(SHARED / "case")
    assert len(final) == len(reference) == 240
    assert max(abs(a - b) for a, b in zip(final, reference)) <= 1e-12
    left = c.wait_idle(timeout=10)
    assert not left, f"processes left on the hosts: {left}"


@pytest.mark.parametrize("name", ["spec.yaml", "spec-nfs.yaml"])
def test_shared_dir_specs_render_and_pass_shellcheck(name: str, tmp_path: Path) -> None:
    spec = load_spec(SHARED / name)
    assert spec.task.shared_dir == ("nfs" if "nfs" in name else "sshfs")
    r = render(spec)
    assert f"--shared-dir {spec.task.shared_dir}" in r.coordination_command_line
    shellcheck_rendered(SHARED / name, tmp_path)
    if spec.pool:
        check_pool_clean(SHARED / name)



# ------------------------------------------------------------------------------------------ all of them

ALL_SPECS = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.glob("*/spec*.yaml"))


def test_every_example_has_a_readme_and_a_spec() -> None:
    dirs = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert {"hello", "heat-simulation", "wrap-existing-code", "latency-rdma-pool", "msmpi-windows",
            "shared-dir"} <= set(dirs)
    for d in dirs:
        assert (EXAMPLES / d / "README.md").is_file(), d
        assert list((EXAMPLES / d).glob("spec*.yaml")), d


@pytest.mark.parametrize("name", ALL_SPECS)
def test_every_spec_renders_and_its_linux_lines_pass_shellcheck(name: str, tmp_path: Path) -> None:
    spec = load_spec(EXAMPLES / name)
    cli_ok("render", str(EXAMPLES / name))
    for ref in (*spec.task.common_files, *spec.task.files,
                *(spec.job.preparation.files if spec.job.preparation else ())):
        assert ref.is_url or Path(ref.source).is_file(), f"{name}: {ref.source} is missing"
    if spec.os == "linux":
        shellcheck_rendered(EXAMPLES / name, tmp_path)
