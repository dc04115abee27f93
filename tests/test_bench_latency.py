"""`mpibatch bench latency` for real: local executor (emulated nodes) and the SSH test cluster.

Every test runs a real MPI ping-pong across two (or three) hosts and checks what came back: the program
picked on the node, plausible sizes and latencies, the ranks' host names, and the verdict. Both the emulated
nodes and the SSH hosts (network namespaces) are one kernel on this machine: every rank must report this
machine's boot id, and the verdict must say "one machine", never a fabric.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from mpibatch.bench.latency import (
    MARKER,
    benchmark_script,
    build_spec,
    parse_sizes,
    parse_task_output,
    render_benchmark,
    run_latency,
)
from mpibatch.bench.parse import PROGRAM_IMB, PROGRAM_MPI4PY
from mpibatch.bench.report import format_report
from mpibatch.bench.verdict import FABRIC_ONE_MACHINE, ONE_MACHINE_VERDICT
from mpibatch.errors import SpecError
from mpibatch.render import render
from tests.infra.fixtures import VENVS, mpi_env

REPO = Path(__file__).resolve().parents[1]
SIZES = (0, 1024)
ITER = 200
BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()  # this machine's kernel


def _check_plausible(res, program: str, hosts: list[str]) -> None:
    assert res.task.succeeded, (res.task.failure, res.task.instances[0].stderr)
    assert res.program == program
    assert res.ok, [p.error for p in res.pairs]
    first = res.first
    assert first.rank_hosts[:2] == hosts
    sizes = [s.size for s in res.samples]
    assert sizes == sorted(sizes) and sizes[-1] == 1024 and all(SIZES[0] <= s <= SIZES[1] for s in sizes)
    assert len(sizes) >= 10
    for s in res.samples:
        assert s.program == program
        assert 0.05 < s.latency_us < 20_000, s  # a real network path, not zeros or garbage
    # names differ, but both ranks report this kernel's boot id: one machine, no fabric judged
    assert first.rank_boot_ids == [BOOT_ID, BOOT_ID]
    v = res.verdict
    assert v.names_differ is True and v.same_machine is True and v.different_hosts is False
    assert v.fabric == FABRIC_ONE_MACHINE and v.ratio is None
    assert any("one machine" in w for w in v.warnings)
    assert v.small_latency_us == min(s.latency_us for s in res.samples if s.size <= 8)


# ----------------------------------------------------------------------------------------------- pure parts
def test_parse_sizes():
    assert parse_sizes("0:4M") == (0, 4 << 20)
    assert parse_sizes("8") == (0, 8)
    assert parse_sizes("1k:64KiB") == (1024, 65536)
    for bad in ("4M:0", "x", "0:2G"):
        with pytest.raises(SpecError):
            parse_sizes(bad)


def test_script_uses_the_flavour_launcher_with_explicit_pairs():
    for flavor, expect in (("mpich", 'mpiexec -hosts "$host_a","$host_b" -n 2 -ppn 1'),
                           ("intelmpi", 'mpirun -hosts "$host_a","$host_b" -n 2 -ppn 1'),
                           ("openmpi", 'mpirun --host "$host_a":1,"$host_b":1 -np 2')):
        spec = build_spec(flavor=flavor, instances=3, environment={"A": "1"})
        script = benchmark_script(render(spec), pairs="all", sizes=(0, 1 << 20), iterations=50)
        assert expect in script
        assert script.index("osu_latency") < script.index("IMB-MPI1") < script.index("mpi4py.bench")
        assert "-msglog 0:20" in script and "-m 0:1048576" in script and "-n 1048576" in script
        assert "for ((i = 0; i < n - 1; i++))" in script
        assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    r = render_benchmark(build_spec(flavor="mpich", instances=2), program="imb")
    inner = shlex.split(r.command_line)[2]
    assert "osu_latency" not in inner and "mpi4py" not in inner and "run_pair 0 1" in inner
    with pytest.raises(SpecError):
        build_spec(flavor="msmpi", instances=2)


def test_parse_task_output_splits_pairs_and_names_the_slow_node():
    def imb(t):
        return ("#---\n# Benchmarking PingPong\n#---\n       #bytes #repetitions      t[usec]   Mbytes/sec\n"
                f"            0         1000         {t:.2f}         0.00\n"
                f"            8         1000         {t + 0.1:.2f}         1.00\n\n")

    lat = {(0, 1): 2.0, (0, 2): 9.0, (1, 2): 9.5}
    out = [f"{MARKER} program={PROGRAM_IMB} path=/opt/IMB-MPI1"]
    names = ["a", "b", "c"]
    for (i, j), t in lat.items():
        out += [f"{MARKER} pair={i},{j} hosts=10.0.0.{i},10.0.0.{j} begin",
                f"{MARKER} rank=1 host={names[j]}", imb(t), f"{MARKER} rank=0 host={names[i]}",
                f"{MARKER} pair={i},{j} end rc=0"]
    res = parse_task_output("\n".join(out), instances=3)
    assert [p.rank_hosts for p in res.pairs] == [["a", "b"], ["a", "c"], ["b", "c"]]
    assert all(p.rank_boot_ids == [None, None] and p.verdict.same_machine is None for p in res.pairs)
    assert res.node_names == names and res.slowest_name == "c"
    assert res.matrix[0][2] == 9.0 and res.matrix[2][1] == 9.5
    assert res.ok


def _one_pair_output(latency_us: float, boots: tuple[str, str], hosts: tuple[str, str] = ("a", "b")) -> str:
    return "\n".join([
        f"{MARKER} program={PROGRAM_IMB} path=/opt/IMB-MPI1",
        f"{MARKER} pair=0,1 hosts=10.0.0.1,10.0.0.2 begin",
        f"{MARKER} rank=0 host={hosts[0]} boot={boots[0]}", f"{MARKER} rank=1 host={hosts[1]} boot={boots[1]}",
        "# Benchmarking PingPong", "       #bytes #repetitions      t[usec]   Mbytes/sec",
        f"            0         1000         {latency_us:.2f}         0.00", "",
        f"{MARKER} pair=0,1 end rc=0"])


@pytest.mark.parametrize("latency_us, vm_size, fabric", [(1.3, "Standard_HB120rs_v3", "RDMA"),
                                                         (25.0, "Standard_D4s_v5", "TCP")])
def test_two_boot_ids_are_two_machines_and_the_fabric_is_judged(latency_us, vm_size, fabric):
    res = parse_task_output(_one_pair_output(latency_us, ("11111111-aaaa", "22222222-bbbb")), vm_size=vm_size)
    assert res.first.rank_boot_ids == ["11111111-aaaa", "22222222-bbbb"]
    v = res.verdict
    assert v.same_machine is False and v.different_hosts and v.fabric == fabric and res.one_machine_pairs == []


def test_one_boot_id_is_one_machine_whatever_the_names():
    res = parse_task_output(_one_pair_output(1.3, ("11111111-aaaa", "11111111-AAAA")), vm_size="Standard_HB120rs_v3")
    v = res.verdict
    assert v.same_machine is True and not v.different_hosts and v.fabric == FABRIC_ONE_MACHINE
    assert res.one_machine_pairs == [(0, 1)] and res.to_json()["one_machine_pairs"] == [[0, 1]]
    # a node without a boot id ("-"): the check is unavailable, host names decide, and the report says so
    res = parse_task_output(_one_pair_output(25.0, ("11111111-aaaa", "-")))
    assert res.first.rank_boot_ids == ["11111111-aaaa", None]
    assert res.verdict.same_machine is None and res.verdict.fabric == "TCP"
    assert "boot id of b is not available" in res.verdict.warnings[0]


def test_rank_line_carries_the_boot_id():
    script = benchmark_script(render(build_spec(flavor="mpich", instances=2)))
    assert "boot=$(cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo -)" in script
    # the rank line as the node runs it: this machine's boot id, "-" without /proc
    rank_sh = shlex.split(script.split("/bin/bash -c ", 1)[1])[0]
    out = subprocess.run(["bash", "-c", rank_sh, "rank", "true"], env={"PMI_RANK": "0", "PATH": "/usr/bin:/bin"},
                         capture_output=True, text=True, timeout=10).stdout
    assert out.strip().endswith(f"boot={BOOT_ID}") and f"{MARKER} rank=0 host=" in out


# ----------------------------------------------------------------------------------------------- local executor
@pytest.mark.alone  # judges measured latencies
def test_local_mpi4py_mpich(tmp_path):
    from mpibatch.executors.local import LocalExecutor

    spec = build_spec(flavor="mpich", instances=2)
    res = run_latency(LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path), spec, sizes=SIZES,
                      iterations=ITER)
    _check_plausible(res, PROGRAM_MPI4PY, ["node-0", "node-1"])
    assert res.samples[0].size == 1  # mpi4py sends no 0-byte message
    assert res.program_path == str(VENVS / "mpich" / "bin" / "python3")


@pytest.mark.alone  # judges measured latencies
def test_local_imb_intelmpi(tmp_path):
    from mpibatch.executors.local import LocalExecutor

    lib = str(VENVS / "intelmpi" / "lib")
    spec = build_spec(flavor="intelmpi", instances=2, environment={"LD_LIBRARY_PATH": lib})
    res = run_latency(LocalExecutor(base_env=mpi_env("intelmpi"), runs_dir=tmp_path), spec, sizes=SIZES,
                      iterations=ITER, vm_size="Standard_HB120rs_v3", fabric_expected="tcp")
    _check_plausible(res, PROGRAM_IMB, ["node-0", "node-1"])
    assert res.samples[0].size == 0
    # the VM size's anchor is known, but one machine is no HB fabric: nothing compared, no RDMA advice
    assert res.verdict.anchor_us is not None and res.verdict.ratio is None
    assert not any("RDMA" in w or "TCP" in w for w in res.verdict.warnings)


def test_local_rdma_size_without_infiniband_fails_clearly(tmp_path):
    """An HB size means an InfiniBand fabric, and these emulated nodes have no InfiniBand port: the
    coordination step refuses to start the benchmark (exit 1 in the CLI) and names the node, rather
    than a silent TCP fallback."""
    from mpibatch.executors.local import LocalExecutor

    spec = build_spec(flavor="intelmpi", instances=2, vm_size="Standard_HB120rs_v3",
                      environment={"LD_LIBRARY_PATH": str(VENVS / "intelmpi" / "lib")})
    res = run_latency(LocalExecutor(base_env=mpi_env("intelmpi"), runs_dir=tmp_path), spec, sizes=(0, 8),
                      iterations=10)
    assert not res.ok and not res.task.succeeded
    assert res.task.failure and res.task.failure.phase == "coordination"
    assert "no active InfiniBand port" in res.task.failure.reason and "node-0" in res.task.failure.reason
    # the command never ran, so there is no exit code: the report says what failed, not "exit code None"
    report = format_report(res, flavor="intelmpi", executor="local")
    assert "exit code None" not in report and "coordination: " in report and "no active InfiniBand port" in report


@pytest.mark.alone  # judges measured latencies
def test_cli_local_json_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    env = mpi_env("mpich")
    png = tmp_path / "plots" / "lat.png"  # a directory not made yet, as mpibatch-runs/ on a first run
    p = subprocess.run([str(REPO / ".venv" / "bin" / "mpibatch"), "bench", "latency", "--sizes", "0:1K",
                        "--iterations", str(ITER), "--pairs", "all", "--nodes", "3", "--output", "json",
                        "--plot", str(png), "--runs-dir", str(tmp_path / "runs")],
                       env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    data = json.loads(p.stdout)
    assert data["program"] == PROGRAM_MPI4PY and data["ok"]
    assert data["nodes"] == ["node-0", "node-1", "node-2"]
    assert len(data["pairs"]) == 3
    assert all(data["matrix"][i][j] > 0 for i in range(3) for j in range(3) if i != j)
    assert png.stat().st_size > 1000 and (png.parent / "lat-matrix.png").stat().st_size > 1000
    # three emulated nodes are one machine: every pair is marked, no fabric is named
    assert data["one_machine_pairs"] == [[0, 1], [0, 2], [1, 2]]
    assert {p["verdict"]["fabric"] for p in data["pairs"]} == {FABRIC_ONE_MACHINE}
    assert all(p["rank_boot_ids"] == [BOOT_ID, BOOT_ID] for p in data["pairs"])


@pytest.mark.alone  # judges measured latencies
def test_cli_local_human_verdict_and_matrix_say_one_machine(tmp_path):
    p = subprocess.run([str(REPO / ".venv" / "bin" / "mpibatch"), "bench", "latency", "--sizes", "0:64",
                        "--iterations", str(ITER), "--pairs", "all", "--nodes", "3",
                        "--vm-size", "Standard_HB120rs_v3", "--fabric", "tcp", "--runs-dir", str(tmp_path)],
                       env=mpi_env("mpich"), capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    verdict_text = p.stdout.split("verdict:", 1)[1].split("latency [us]", 1)[0]
    assert (f"different hosts: NO (host names node-0, node-1; machines: one machine, kernel boot id {BOOT_ID[:8]})"
            in verdict_text)
    assert f"fabric: {ONE_MACHINE_VERDICT} (small-message latency" in verdict_text
    assert "not compared with the published anchor" in verdict_text
    assert "RDMA" not in verdict_text and "TCP" not in verdict_text
    matrix = p.stdout.split("verdict:", 1)[1].split("latency [us]", 1)[1].splitlines()
    assert all(line.count("*") == 2 for line in matrix[1:4]), matrix  # every pair of every row is marked
    assert f"* {ONE_MACHINE_VERDICT}" in p.stdout
    assert "slowest node: not judged (every pair was one machine" in p.stdout  # noise of one busy machine


def test_cli_plot_without_matplotlib_is_bad_input_before_anything_runs(tmp_path):
    """As a newcomer's venv without the plot extra: matplotlib cannot be imported (here: made unimportable
    in the real CLI process). One line naming the extra, exit 2, no task run, never "exit code None"."""
    code = ("import sys; sys.modules['matplotlib'] = None; from mpibatch.cli import main; "
            "sys.argv[0] = 'mpibatch'; main()")
    p = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-c", code, "bench", "latency", "--sizes", "0:64",
                        "--plot", str(tmp_path / "lat.png"), "--runs-dir", str(tmp_path / "runs")],
                       env=mpi_env("mpich"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr + p.stdout
    assert "pip install 'mpibatch[plot]'" in p.stderr and "exit code None" not in p.stderr + p.stdout
    assert not (tmp_path / "runs").exists() and not (tmp_path / "lat.png").exists()


def test_cli_plot_in_a_directory_that_cannot_be_made_is_bad_input(tmp_path):
    (tmp_path / "a-file").write_text("x")
    p = subprocess.run([str(REPO / ".venv" / "bin" / "mpibatch"), "bench", "latency", "--sizes", "0:64",
                        "--plot", str(tmp_path / "a-file" / "lat.png"), "--runs-dir", str(tmp_path / "runs")],
                       env=mpi_env("mpich"), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr + p.stdout
    assert f"--plot: cannot make the directory {tmp_path / 'a-file'}" in p.stderr
    assert not (tmp_path / "runs").exists()


def test_cli_bad_input_exit_2(tmp_path):
    p = subprocess.run([str(REPO / ".venv" / "bin" / "mpibatch"), "bench", "latency", "--sizes", "9:1"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--sizes" in p.stderr


# ----------------------------------------------------------------------------------------------- SSH cluster
def _ssh_executor(cluster, flavor: str, tmp_path):
    ssh = pytest.importorskip("mpibatch.executors.ssh")
    return ssh.SshExecutor(list(cluster.hosts), user="root", key=str(cluster.client_key_path),
                           known_hosts=str(cluster.known_hosts_path),
                           remote_path_prepend=(str(VENVS / flavor / "bin"),), runs_dir=tmp_path)


@pytest.mark.cluster
@pytest.mark.alone  # judges measured latencies
def test_ssh_two_hosts_mpi4py(ssh_cluster_factory, tmp_path):
    cluster = ssh_cluster_factory(2)
    spec = build_spec(flavor="mpich", instances=2)
    res = run_latency(_ssh_executor(cluster, "mpich", tmp_path), spec, sizes=SIZES, iterations=ITER)
    _check_plausible(res, PROGRAM_MPI4PY, list(cluster.names[:2]))
    assert res.first.addresses == tuple(cluster.hosts[:2])


@pytest.mark.cluster
@pytest.mark.alone  # judges measured latencies
def test_ssh_three_hosts_all_pairs_imb(ssh_cluster_factory, tmp_path):
    cluster = ssh_cluster_factory(3)
    spec = build_spec(flavor="intelmpi", instances=3,
                      environment={"LD_LIBRARY_PATH": str(VENVS / "intelmpi" / "lib")})
    res = run_latency(_ssh_executor(cluster, "intelmpi", tmp_path), spec, pairs="all", sizes=SIZES,
                      iterations=ITER)
    _check_plausible(res, PROGRAM_IMB, list(cluster.names[:2]))
    assert [(p.i, p.j) for p in res.pairs] == [(0, 1), (0, 2), (1, 2)]
    for p in res.pairs:
        assert p.rank_hosts == [cluster.names[p.i], cluster.names[p.j]]
        assert p.one_machine and p.rank_boot_ids == [BOOT_ID, BOOT_ID]
    assert res.one_machine_pairs == [(0, 1), (0, 2), (1, 2)]
    assert res.node_names == list(cluster.names)
    assert all(res.matrix[i][j] is not None and res.matrix[i][j] > 0 for i in range(3) for j in range(3) if i != j)


@pytest.mark.cluster
@pytest.mark.alone  # judges measured latencies
def test_cli_ssh_first_pair_of_three_hosts(ssh_cluster_factory, tmp_path):
    """The CLI with --executor ssh: --pairs first on 3 hosts uses the first two; human output names them."""
    cluster = ssh_cluster_factory(3)
    pytest.importorskip("mpibatch.executors.ssh")
    p = subprocess.run([str(REPO / ".venv" / "bin" / "mpibatch"), "bench", "latency", "--executor", "ssh",
                        "--hosts", ",".join(cluster.hosts), "--user", "root", "--key", str(cluster.client_key_path),
                        "--known-hosts", str(cluster.known_hosts_path),
                        "--remote-path-prepend", str(VENVS / "mpich" / "bin"), "--sizes", "0:64",
                        "--iterations", str(ITER), "--runs-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr + p.stdout
    assert f"pair 0-1: {cluster.names[0]} <-> {cluster.names[1]}" in p.stdout
    assert (f"different hosts: NO (host names {cluster.names[0]}, {cluster.names[1]}; machines: one machine, "
            f"kernel boot id {BOOT_ID[:8]})") in p.stdout
    assert f"fabric: {ONE_MACHINE_VERDICT}" in p.stdout and PROGRAM_MPI4PY in p.stdout
    assert "pair 0-2" not in p.stdout
