"""The local executor with real MPI ranks: each flavour from its PyPI runtime, and the Batch
lifecycle's failure modes. Every test checks that no process of the run is left."""
from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mpibatch.executors.local import LocalExecutor
from mpibatch.executors.userns import process_running
from mpibatch.spec import parse_spec
from tests.faults.helpers import wait_for_line
from tests.infra.emulator import processes_mentioning
from tests.infra.fixtures import VENVS, mpi_env
from tests.infra.httpserve import serving
from tests.infra.signals import default_sigint

pytestmark = pytest.mark.mpi
REPO = Path(__file__).resolve().parent.parent

HELLO_PY = """
from mpi4py import MPI
c = MPI.COMM_WORLD
total = c.allreduce(c.rank)
names = c.gather(MPI.Get_processor_name(), root=0)
if c.rank == 0:
    print("SUM", total, "SIZE", c.size)
    print("HOSTS", ",".join(sorted(set(names))))
"""

HELLO_C = r"""
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
    int rank, size, sum;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    if (rank == 0) printf("SUM %d SIZE %d\n", sum, size);
    MPI_Finalize();
    return 0;
}
"""


def make_spec(tmp_path: Path, *, flavor: str = "mpich", instances: int = 3, ppn: int = 2,
              command: object = ("python3", "hello.py"), **task: object) -> object:
    (tmp_path / "hello.py").write_text(HELLO_PY)
    t = {"id": "t1", "instances": instances, "mpi": {"flavor": flavor, "processes_per_node": ppn},
         "command": list(command) if isinstance(command, tuple) else command,
         "common_files": [{"source": "hello.py", "path": "hello.py"}], **task}
    return parse_spec({"job": {"id": "j1"}, "task": t}, tmp_path)


def still_running(pid: str) -> bool:
    """Not a zombie, and not already exiting (an exiting process has released its memory: no command line).
    A namespace's last processes are reaped by this machine's PID 1, which may take its time."""
    try:
        return process_running(int(pid)) and Path(f"/proc/{pid}/cmdline").read_bytes() != b""
    except OSError:
        return False


def no_process_left(ex: LocalExecutor) -> None:
    namespaces = ex.transport.pid_namespaces if ex.transport else set()
    assert namespaces, "the run recorded no PID namespace"
    deadline = time.monotonic() + 5
    while True:
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.readlink(f"/proc/{pid}/ns/pid") in namespaces and still_running(pid):
                    left.append(pid)
            except OSError:
                continue
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not left, f"processes left after the task: {left}"
    assert not ex.transport.workdir.exists(), "emulated node directories were not removed"


def run(tmp_path: Path, spec: object, flavor: str = "mpich", **kw: object):
    ex = LocalExecutor(base_env=mpi_env(flavor), runs_dir=tmp_path / "runs", **kw)
    result = ex.submit(spec).result()
    no_process_left(ex)
    return result


@pytest.mark.parametrize("flavor", ["mpich", "openmpi", "intelmpi"])
def test_mpi4py_ranks_across_three_nodes(tmp_path: Path, flavor: str) -> None:
    r = run(tmp_path, make_spec(tmp_path, flavor=flavor), flavor)
    assert r.succeeded, r.failure
    assert "SUM 15 SIZE 6" in r.primary.stdout
    assert "HOSTS node-0,node-1,node-2" in r.primary.stdout  # each node its own hostname
    assert [i.coordination_exit_code for i in r.instances] == [0, 0, 0]
    assert r.primary.application_exit_code == 0


@pytest.mark.parametrize("flavor,cc_venv", [("mpich", "mpich"), ("openmpi", "openmpi"),
                                            ("intelmpi", "mpich")])  # Intel MPI runs MPICH-ABI binaries
def test_c_program_built_with_mpicc(tmp_path: Path, flavor: str, cc_venv: str) -> None:
    (tmp_path / "hello.c").write_text(HELLO_C)
    env = mpi_env(cc_venv)
    subprocess.run(["mpicc", "-o", str(tmp_path / "hello_c"), str(tmp_path / "hello.c")], env=env, check=True)
    spec = make_spec(tmp_path, flavor=flavor, command=("./hello_c",),
                     environment={"LD_LIBRARY_PATH": str(VENVS / flavor / "lib")})
    spec = parse_spec({"job": {"id": "j1"}, "task": {
        "id": "c1", "instances": 3, "mpi": {"flavor": flavor, "processes_per_node": 2}, "command": ["./hello_c"],
        "common_files": [{"source": "hello_c", "path": "hello_c"}],
        "environment": {"LD_LIBRARY_PATH": str(VENVS / flavor / "lib")}}}, tmp_path)
    r = run(tmp_path, spec, flavor)
    assert r.succeeded, (r.failure, r.primary.stderr)
    assert "SUM 15 SIZE 6" in r.primary.stdout


def test_batch_environment_and_layout(tmp_path: Path) -> None:
    script = ('echo "$AZ_BATCH_HOST_LIST|$AZ_BATCH_NODE_LIST|$CCP_NODES|$AZ_BATCH_MASTER_NODE|'
              '$AZ_BATCH_IS_CURRENT_NODE_MASTER|$AZ_BATCH_NODE_ID" > env.txt; '
              'touch "$AZ_BATCH_TASK_SHARED_DIR/from-$AZ_BATCH_NODE_ID"; ls "$AZ_BATCH_TASK_SHARED_DIR" > shared.txt; '
              'test -f ../stdout.txt && test -d "$AZ_BATCH_NODE_ROOT_DIR/startup"')
    spec = make_spec(tmp_path, ppn=1, coordination=script,
                     outputs=[{"pattern": "env.txt"}, {"pattern": "shared.txt"}])
    r = run(tmp_path, spec)
    assert r.succeeded, r.failure
    out = Path(r.output_dir)
    hosts = "127.0.1.1,127.0.1.2,127.0.1.3"
    for i in range(3):
        line = (out / str(i) / "env.txt").read_text().strip()
        assert line == (f"{hosts}|{hosts.replace(',', ';')}|3 127.0.1.1 1 127.0.1.2 1 127.0.1.3 1|127.0.1.1:6000|"
                        f"{'true' if i == 0 else 'false'}|node-{i}")
        # the task shared dir is per node, as on Batch: a node sees only its own file
        shared = (out / str(i) / "shared.txt").read_text().split()
        assert f"from-node-{i}" in shared and not any(f"from-node-{j}" in shared for j in range(3) if j != i)
        assert (out / str(i) / "stdout.txt").exists()


def test_double_star_collects_no_mpibatch_file(tmp_path: Path) -> None:
    """Issue 19 item 8: `**` brings back the user's files, not the node's .mpibatch-* files (its id,
    environment and rank wrapper) nor a durable writer's temporary."""
    spec = make_spec(tmp_path, instances=2, ppn=1, coordination="echo mine > mine.txt; : > .mpibatch-0a1b2c3d.part",
                     outputs=[{"pattern": "**"}])
    r = run(tmp_path, spec)
    assert r.succeeded, r.failure
    for inst in r.instances:
        assert "mine.txt" in inst.files, inst.files
        assert not [f for f in inst.files if f.rsplit("/", 1)[-1].startswith(".mpibatch-")], inst.files
        assert not list(Path(inst.output_dir).rglob(".mpibatch-*"))


def test_second_run_does_not_overwrite_first(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, instances=2, ppn=1)
    a = run(tmp_path, spec)
    b = run(tmp_path, spec)
    assert a.succeeded and b.succeeded
    assert a.output_dir != b.output_dir and Path(a.output_dir, "0", "stdout.txt").exists()


def test_coordination_failure_on_a_subtask_stops_the_task(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, coordination='[ "$AZ_BATCH_NODE_ID" != node-2 ] || { echo broken >&2; exit 7; }',
                     command="touch app-ran")
    r = run(tmp_path, spec)
    assert not r.succeeded and r.state == "failed" and r.exit_code is None
    assert r.failure.phase == "coordination" and r.failure.instance == 2
    assert "exited with code 7 on instance 2" in r.failure.reason and "broken" in r.failure.reason
    assert r.primary.application_exit_code is None  # the application never started


def test_primary_crash_gives_its_exit_code(tmp_path: Path) -> None:
    r = run(tmp_path, make_spec(tmp_path, instances=2, ppn=1, command="exit 3"))
    assert r.exit_code == 3 and not r.succeeded
    assert r.failure.phase == "running" and "code 3" in r.failure.reason


def test_subtask_rank_crash_fails_the_task(tmp_path: Path) -> None:
    (tmp_path / "crash.py").write_text(
        "from mpi4py import MPI\n"
        "if open('.mpibatch-node').read().strip().endswith('node-2'):\n    MPI.COMM_WORLD.Abort(9)\n"
        "MPI.COMM_WORLD.Barrier()\n")
    spec = parse_spec({"job": {"id": "j1"}, "task": {
        "id": "t1", "instances": 3, "mpi": {"flavor": "mpich"}, "command": ["python3", "crash.py"],
        "common_files": [{"source": "crash.py"}], "max_wall_clock": "30s"}}, tmp_path)
    r = run(tmp_path, spec)
    assert not r.succeeded and r.exit_code not in (0, None) and r.failure.phase == "running"


def test_lost_subtask_node_fails_the_task(tmp_path: Path) -> None:
    spec = make_spec(tmp_path, instances=3, ppn=1, command="sleep 30", max_wall_clock="60s")
    ex = LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs",
                       progress=lambda phase, d: phase == "running" and threading.Timer(
                           0.3, lambda: ex.transport.kill_node(1)).start())
    t0 = time.monotonic()
    r = ex.submit(spec).result()
    assert time.monotonic() - t0 < 20
    assert not r.succeeded and r.failure.instance == 1 and "lost" in r.failure.reason
    no_process_left(ex)


def test_timeout_ends_every_process(tmp_path: Path) -> None:
    t0 = time.monotonic()
    r = run(tmp_path, make_spec(tmp_path, instances=2, ppn=1, command="sleep 60", max_wall_clock="2s"))
    assert time.monotonic() - t0 < 15
    assert r.timed_out and r.failure.phase == "timeout" and "max_wall_clock 2s" in r.failure.reason


def test_retry_reruns_the_lifecycle(tmp_path: Path) -> None:
    # The node shared dir outlives attempts: the first attempt leaves a mark and fails.
    cmd = ('m="$AZ_BATCH_NODE_SHARED_DIR/attempted"; if [ -f "$m" ]; then echo second; else touch "$m"; exit 4; fi')
    r = run(tmp_path, make_spec(tmp_path, instances=2, ppn=1, command=["/bin/bash", "-c", cmd], max_retries=2))
    assert r.succeeded and r.attempts == 2, r.failure


def test_missing_resource_url_fails_before_coordination(tmp_path: Path) -> None:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *a: object) -> None:
            pass

    with serving(Quiet) as base:
        url = f"{base}/nope/input.dat?sig=SECRET"
        spec = make_spec(tmp_path, instances=2, ppn=1, files=[{"source": url, "path": "input/x.dat"}],
                         coordination="touch coordinated")
        r = run(tmp_path, spec)
    assert r.failure.phase == "files" and "input/x.dat" in r.failure.reason and "404" in r.failure.reason
    assert "SECRET" not in r.failure.reason  # query strings (SAS tokens) never reach messages
    assert all(i.coordination_exit_code is None for i in r.instances)


def test_missing_local_source_is_bad_input(tmp_path: Path) -> None:
    from mpibatch.errors import SpecError

    spec = make_spec(tmp_path, files=[{"source": "absent.dat"}])
    with pytest.raises(SpecError, match=r"task.files\[0\].source"):
        LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs").submit(spec).result()


def test_job_preparation_and_release_run_on_every_node(tmp_path: Path) -> None:
    spec = parse_spec({"job": {"id": "j1", "preparation": "echo prepared > \"$AZ_BATCH_NODE_SHARED_DIR/prep\"",
                               "release": "true"},
                       "task": {"id": "t1", "instances": 3, "mpi": "mpich",
                                "command": ["/bin/bash", "-c", 'cat "$AZ_BATCH_NODE_SHARED_DIR/prep" > seen.txt'],
                                "coordination": 'test -f "$AZ_BATCH_NODE_SHARED_DIR/prep"',
                                "outputs": ["seen.txt"]}}, tmp_path)
    r = run(tmp_path, spec)
    assert r.succeeded, r.failure
    assert Path(r.output_dir, "0", "seen.txt").read_text().strip() == "prepared"


def test_cli_sigint_mid_run_ends_everything(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("job: {id: j1}\ntask: {id: t1, instances: 3, mpi: mpich, command: 'sleep 60'}\n")
    # The run's own temporary directory: every process of the run names it (its nodes' TMPDIR is below), so
    # the check sees this run only, whatever else runs on the machine.
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    env = dict(mpi_env("mpich"), TMPDIR=str(tmp))
    p = subprocess.Popen([sys.executable, "-m", "mpibatch.cli", "run", str(spec_file), "--runs-dir",
                          str(tmp_path / "runs")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, preexec_fn=default_sigint)
    try:
        wait_for_line(p, "running:")
        time.sleep(1.0)  # the ranks up on every node (MPICH starts them in well under a second)
        assert p.poll() is None
        run = processes_mentioning(str(tmp))
        assert len(run) >= 6, run  # the run's init, node inits, mpiexec, proxies, ranks: seen, so checkable
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(10)
    assert p.returncode == 1, err
    assert "interrupted" in (out + err)
    deadline = time.monotonic() + 5
    while (survivors := processes_mentioning(str(tmp))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not survivors, [(q, Path(f"/proc/{q}/cmdline").read_bytes()) for q in survivors]
