"""Issue 12's faults on the local executor (items 5, 6, 7, 12), each as a test that failed before the
fix; plus issue 12's done-when for these: many runs, two at a time, leave nothing behind.
Real MPICH ranks from the PyPI runtime in every test; `mpibatch run` is a separate process where a
user would run it as one."""
from __future__ import annotations

import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mpibatch.executors.local import LocalExecutor
from mpibatch.spec import parse_spec
from tests.faults.helpers import descendants, pid_namespaces, shm_entries, start_cli, wait_for_line, wait_gone
from tests.infra.fixtures import VENVS, mpi_env

pytestmark = pytest.mark.mpi

# Ranks that touch MPICH's shared memory (two ranks per node) and then idle.
SHM_PY = """
import sys, time
from mpi4py import MPI
c = MPI.COMM_WORLD
total = c.allreduce(c.rank)
if c.rank == 0:
    print("SUM", total, flush=True)
time.sleep(float(sys.argv[1]) if len(sys.argv) > 1 else 0)
sys.exit(int(sys.argv[2]) if len(sys.argv) > 2 else 0)
"""


def write_spec(tmp: Path, *, sleep: float = 0, instances: int = 3, wall: str = "60s", extra: str = "") -> Path:
    (tmp / "shm.py").write_text(SHM_PY)
    spec = tmp / "spec.yaml"
    spec.write_text(
        "job: {id: faults}\n"
        f"task:\n  id: t\n  instances: {instances}\n  mpi: {{flavor: mpich, processes_per_node: 2}}\n"
        f"  command: [python3, shm.py, '{sleep}']\n  common_files: [shm.py]\n  max_wall_clock: {wall}\n{extra}")
    return spec


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """MPICH's venv first on PATH; a private TMPDIR, so that what a run leaves in it is visible."""
    t = tmp / "tmpdir"
    t.mkdir(exist_ok=True)
    return {**mpi_env("mpich"), "TMPDIR": str(t), **extra}


def test_item5_retries_with_three_instances_do_not_fail_on_their_own(tmp_path: Path) -> None:
    """Issue 12 item 5: "Retries with 3 instances fail on their own ... after a failed attempt the
    next coordination starts before the subtasks' node holders exist again"."""
    (tmp_path / "shm.py").write_text(SHM_PY)
    spec = parse_spec({"job": {"id": "j"}, "task": {
        "id": "t", "instances": 3, "max_retries": 3, "mpi": {"flavor": "mpich", "processes_per_node": 1},
        "common_files": ["shm.py"],
        # The ranks run on every node, then fail: every attempt must get that far.
        "command": ["python3", "shm.py", "0", "9"]}}, tmp_path)
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs")
    r = ex.submit(spec).result()
    assert r.attempts == 4
    assert r.failure.phase == "running", r.failure  # never "coordination": every node was there each time
    assert r.exit_code == 9 and [i.coordination_exit_code for i in r.instances] == [0, 0, 0]
    assert "SUM 3" in r.primary.stdout


def test_item6_sigkill_of_mpibatch_run_leaves_no_process(tmp_path: Path) -> None:
    """Issue 12 item 6: "SIGKILL (or the OOM killer) of `mpibatch run` leaves the whole run alive: the
    namespace init, node holders looping `sleep 3600`, mpiexec, proxies, ranks, `/tmp/mpibatch-nodes-*`"."""
    env = cli_env(tmp_path)
    p = start_cli(["run", str(write_spec(tmp_path, sleep=120, wall="5m")), "--runs-dir", str(tmp_path / "runs")],
                  env, tmp_path)
    try:
        wait_for_line(p, "running:")
        time.sleep(1.0)  # ranks up on every node
        run_pids = descendants(p.pid)
        namespaces = pid_namespaces(run_pids)
        assert namespaces and len(run_pids) > 10, run_pids  # init, holders, mpiexec, proxies, ranks
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        left = wait_gone(namespaces, run_pids, within_s=5)
        assert not left, f"processes of the killed run still alive: {left}"
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    # The dead run's node directories: the next run removes them (their processes are gone).
    stale = list(Path(env["TMPDIR"]).glob("mpibatch-nodes-*"))
    assert stale, "the killed run should have left its node directory for the next run to sweep"
    p2 = start_cli(["run", str(write_spec(tmp_path, instances=1)), "--runs-dir", str(tmp_path / "runs2")],
                   env, tmp_path)
    out, err = p2.communicate(timeout=120)
    assert p2.returncode == 0, err
    assert not list(Path(env["TMPDIR"]).iterdir()), "the next run did not remove what the killed one left"


@pytest.mark.alone  # compares the machine's whole /dev/shm before and after
def test_item7_concurrent_runs_are_isolated_and_dev_shm_stays_clean(tmp_path: Path) -> None:
    """Issue 12 item 7: "MPICH shared-memory segments leak into the host's `/dev/shm` ... and two local
    runs at once hang each other ... both runs' ranks mapped the same `/dev/shm/mpich_shm_*`"."""
    shm_before = shm_entries()
    env = cli_env(tmp_path)
    # A timed-out run (ranks killed mid-way) and two runs at once, all with two ranks per node in shared memory.
    timed_out = start_cli(["run", str(write_spec(tmp_path, sleep=60, wall="3s")), "--runs-dir",
                           str(tmp_path / "runs-a")], env, tmp_path)
    out, err = timed_out.communicate(timeout=120)
    assert timed_out.returncode == 1 and "max_wall_clock" in out + err, err
    for trial in range(2):
        d = tmp_path / f"c{trial}"
        d.mkdir()
        procs = [start_cli(["run", str(write_spec(d, sleep=0.5)), "--runs-dir", str(d / f"runs-{k}")], env, d)
                 for k in range(2)]
        for q in procs:
            out, err = q.communicate(timeout=120)
            assert q.returncode == 0, err
            assert "SUM 15" in out
    assert shm_entries() - shm_before == set(), "a run left shared-memory segments in the host's /dev/shm"
    assert not list(Path(env["TMPDIR"]).iterdir())


def test_item12_nodes_get_no_secret_from_the_operators_environment(tmp_path: Path) -> None:
    """Issue 12 item 12: "The local executor hands every node the operator's whole environment:
    `AZURE_BATCH_ACCESS_KEY` and `AZURE_STORAGE_CONNECTION_STRING` appear in a rank's `env` and in the
    collected stdout"."""
    secrets = {"AZURE_BATCH_ACCESS_KEY": "s3cret-batch-key", "AZURE_STORAGE_CONNECTION_STRING": "s3cret-conn",
               "MY_TOKEN": "s3cret-token"}
    env = cli_env(tmp_path, **secrets)
    spec = write_spec(tmp_path, extra="  coordination: env > coord-env.txt\n"
                                      "  outputs: [coord-env.txt]\n")
    spec.write_text(spec.read_text().replace("command: [python3, shm.py, '0']",
                                             "command: 'mpiexec -n 6 env > rank-env.txt && python3 shm.py'")
                    .replace("  outputs: [coord-env.txt]", "  outputs: [coord-env.txt, rank-env.txt]"))
    p = start_cli(["run", str(spec), "--runs-dir", str(tmp_path / "runs")], env, tmp_path)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    run = tmp_path / "runs" / "faults" / "t"
    texts = {f: f.read_text() for f in run.rglob("*.txt")}
    assert any(f.name == "rank-env.txt" for f in texts) and len([f for f in texts if f.name == "coord-env.txt"]) == 3
    for f, text in texts.items():
        for value in secrets.values():
            assert value not in text, f"{value} reached a node: {f}"
    rank_env = dict(line.split("=", 1) for line in (run / "0" / "rank-env.txt").read_text().splitlines() if "=" in line)
    # The image's PATH: mpibatch's venv first (its MPI runtime), then the operator's PATH.
    assert rank_env["PATH"].split(":")[:2] == [os.path.dirname(sys.executable), str(VENVS / "mpich" / "bin")]
    assert rank_env["HOME"] == os.environ["HOME"] and rank_env.get("LANG")


@pytest.mark.alone  # compares the machine's whole /dev/shm before and after
def test_many_runs_two_at_a_time_leave_nothing(tmp_path: Path) -> None:
    """Issue 12's done-when: "Fifty local runs, two at a time, all succeed with nothing left in
    `/dev/shm`, `/tmp` or the process table" (here 8; benchmarks/concurrent_runs.py runs fifty)."""
    (tmp_path / "shm.py").write_text(SHM_PY)
    spec = parse_spec({"job": {"id": "j"}, "task": {
        "id": "t", "instances": 3, "mpi": {"flavor": "mpich", "processes_per_node": 2}, "max_wall_clock": "60s",
        "command": ["python3", "shm.py"], "common_files": ["shm.py"]}}, tmp_path)
    shm_before = shm_entries()
    tmp_before = set(os.listdir(tempfile.gettempdir()))
    kids_before = descendants(os.getpid())

    def one(k: int) -> tuple[bool, set[str]]:
        ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / f"runs-{k}")
        r = ex.submit(spec).result()
        return r.succeeded and "SUM 15" in r.primary.stdout, ex.transport.pid_namespaces

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, range(8)))
    assert all(ok for ok, _ in results), results
    namespaces = set().union(*(ns for _, ns in results))
    assert not wait_gone(namespaces, descendants(os.getpid()) - kids_before, within_s=5)
    assert shm_entries() - shm_before == set()
    new = set(os.listdir(tempfile.gettempdir())) - tmp_before
    left = {n for n in new if n.startswith(("mpibatch-", "mpich", "hydra"))}
    assert not left, left
