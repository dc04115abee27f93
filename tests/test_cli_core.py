"""`mpibatch render`, `check-pool`, `hostfile` through click's CliRunner, and once through the installed
console script in a real subprocess."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from azure.batch import models as bm
from click.testing import CliRunner

from mpibatch.cli import main

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "hello" / "spec.yaml"
POOLS = Path(__file__).parent / "data" / "pools"

RDMA_SPEC = """\
job:
  id: cfd-run-1
  pool: hbpool
pool:
  id: hbpool
  vm_size: Standard_HB120rs_v3
  nodes: 4
  image: ubuntu-hpc
task:
  id: motorbike
  instances: 4
  mpi: {flavor: intelmpi, processes_per_node: 8}
  command: [simpleFoam, -parallel]
  coordination: "echo ready"
  common_files: [{source: ./case.tar.gz, path: case.tar.gz}]
  files: [{source: "https://example.org/x.dat?sv=2024&sig=SECRETSIG", path: input/x.dat}]
  environment: {OMP_NUM_THREADS: "1", FI_PROVIDER: verbs}
  outputs: [{pattern: "results/**", kind: TaskOutput}]
  max_wall_clock: 2h
  retention: 7d
"""


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


# ---------------------------------------------------------------------------------------------- render

def test_render_json_is_the_batch_payload():
    res = invoke("render", str(HELLO), "--output", "json")
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert set(payload) == {"job", "task"}
    task = payload["task"]
    assert bm.BatchTaskCreateOptions(task).as_dict() == task
    assert task["id"] == "hello-mpi" and task["multiInstanceSettings"]["numberOfInstances"] == 3
    assert payload["job"]["id"] == "hello"


def test_render_table_explains_the_pieces(tmp_path):
    res = invoke("render", write(tmp_path, RDMA_SPEC))
    assert res.exit_code == 0, res.output
    out = res.stdout
    for needle in [
        "linux", "Intel MPI (intelmpi)",
        "sriov (auto: Standard_HB120rs_v3 is an InfiniBand sriov size)",
        "4 node(s) x 8 rank(s) per node = 32 MPI ranks",
        "mpirun -hosts \"$AZ_BATCH_HOST_LIST\" -n 32 -ppn 8",  # the application line, as bash reads it
        "coordinate.sh", "echo ready",  # coordination, with the user's step
        "case.tar.gz", "uploaded at submit", "job-cfd-run-1",  # local sources become job-container uploads
        "input/x.dat",
        "motorbike/$TaskOutput/0/", "motorbike/$TaskLog/0/", "../std*.txt",
        "2h (PT2H)", "7d (P7D)",
        "pool-scoped admin auto-user",
    ]:
        assert needle in out, needle
    # environment: origin of every value, the user's beating the fabric default
    fi = next(line for line in out.splitlines() if line.strip().startswith("FI_PROVIDER"))
    assert "verbs" in fi and "user" in fi and "'mlx'" in fi
    fabrics = next(line for line in out.splitlines() if line.strip().startswith("I_MPI_FABRICS"))
    assert "shm:ofi" in fabrics and "fabric default" in fabrics
    omp = next(line for line in out.splitlines() if line.strip().startswith("OMP_NUM_THREADS"))
    assert "user (task.environment)" in omp
    # a SAS signature in a user's URL is a credential: never printed by the table
    assert "SECRETSIG" not in out and "sig=<redacted>" in out


def test_render_table_aligns_columns(tmp_path):
    out = invoke("render", write(tmp_path, RDMA_SPEC)).stdout.splitlines()
    start = out.index(next(line for line in out if line.startswith("environment")))
    rows = []
    for line in out[start + 1:]:
        if not line.strip():
            break
        rows.append(line)
    # the value column starts at the same place on every row
    starts = {len(r) - len(r[2:].split("  ", 1)[1].lstrip()) for r in rows}
    assert len(starts) == 1, rows


def test_render_table_windows(tmp_path):
    spec = "job: {id: j}\ntask: {id: t, instances: 2, mpi: msmpi, command: [app.exe]}\n"
    out = invoke("render", write(tmp_path, spec)).stdout
    assert "windows" in out and "MS-MPI" in out
    assert "smpd.exe" in out and "%AZ_BATCH_TASK_SHARED_DIR%" in out
    assert "not collected on Windows" in out
    assert "auto-user" not in out


def test_render_bad_spec_exits_2_with_every_message(tmp_path):
    bad = "job: {id: 'bad id'}\ntask: {id: t, instances: 0, mpi: {flavor: lam}, command: [a], max_wall_clock: 2x}\n"
    res = invoke("render", write(tmp_path, bad))
    assert res.exit_code == 2
    err = res.stderr
    assert "4 problems" in err
    for field in ("job.id", "task.instances", "task.mpi.flavor", "task.max_wall_clock"):
        assert f"- {field}:" in err, field
    assert "nothing was submitted, run or changed" in err
    assert res.stdout == ""


@pytest.mark.parametrize("text, words", [
    (None, ["no such file"]),
    ("job: [\n", ["not valid YAML", "line"]),
    ("", ["is empty"]),
])
def test_render_unreadable_specs_exit_2(tmp_path, text, words):
    path = tmp_path / "spec.yaml"
    if text is not None:
        path.write_text(text)
    res = invoke("render", str(path))
    assert res.exit_code == 2
    for w in words:
        assert w in res.stderr


# ---------------------------------------------------------------------------------------------- check-pool

def test_check_pool_clean_from_the_spec(tmp_path):
    res = invoke("check-pool", write(tmp_path, RDMA_SPEC))
    assert res.exit_code == 0, res.output
    [line] = res.stdout.splitlines()
    assert line.startswith("clean: pool hbpool") and "4 dedicated" in line and "motorbike" in line


def test_check_pool_clean_from_rest_json(tmp_path):
    res = invoke("check-pool", write(tmp_path, RDMA_SPEC), "--pool-json", str(POOLS / "hbv3_ubuntu_hpc.json"))
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("clean: pool hbpool")


def test_check_pool_problems_exit_2(tmp_path):
    spec = RDMA_SPEC.replace("pool: hbpool", "pool: generalpool").replace("  id: hbpool", "  id: generalpool")
    spec = spec.replace("nodes: 4", "nodes: 2\n  inter_node_communication: false\n  task_slots_per_node: 4")
    spec = spec.replace("instances: 4", "instances: 2")
    res = invoke("check-pool", write(tmp_path, spec))
    assert res.exit_code == 2
    out = res.stdout
    assert "2 problem(s)" in out
    assert "error    pool.inter_node_communication:" in out
    assert "error    pool.task_slots_per_node:" in out
    assert out.count("fix:") == 2
    assert "nothing was submitted" in out


def test_check_pool_rest_json_lists_errors_and_warnings(tmp_path):
    spec = RDMA_SPEC.replace("pool: hbpool", "pool: generalpool").split("pool:\n  id: hbpool")[0]
    spec += "task:" + RDMA_SPEC.split("task:", 1)[1].replace("  instances: 4", "  instances: 6") \
        .replace("mpi: {flavor: intelmpi, processes_per_node: 8}", "mpi: {flavor: openmpi, fabric: sriov}")
    res = invoke("check-pool", write(tmp_path, spec), "--pool-json", str(POOLS / "d4_general_purpose.json"))
    assert res.exit_code == 2, res.output
    out = res.stdout
    for needle in ("pool.enableInterNodeCommunication", "pool.taskSlotsPerNode", "task.instances",
                   "task.mpi.fabric", "warning  pool.targetLowPriorityNodes", "warning  task.checkpoint"):
        assert needle in out, needle
    assert "4 problem(s) (and 2 warning(s))" in out
    # errors before warnings
    kinds = [line.split()[0] for line in out.splitlines()
             if line.startswith("  ") and not line.strip().startswith("fix:")]
    assert kinds == ["error"] * 4 + ["warning"] * 2


def test_check_pool_warnings_alone_exit_0(tmp_path):
    spec = RDMA_SPEC.replace("nodes: 4", "nodes: 2\n  spot_nodes: 2")
    res = invoke("check-pool", write(tmp_path, spec))
    assert res.exit_code == 0, res.output
    assert res.stdout.startswith("clean:") and "2 warning(s)" in res.stdout
    assert "warning  pool.spot_nodes" in res.stdout and "https://learn.microsoft.com/azure/batch/batch-spot-vms" \
        in res.stdout
    assert "warning  task.checkpoint" in res.stdout


def test_check_pool_json_output(tmp_path):
    res = invoke("check-pool", write(tmp_path, RDMA_SPEC), "--pool-json",
                 str(POOLS / "hbv3_plain_ubuntu_resizing.json"), "-o", "json")
    assert res.exit_code == 2
    data = json.loads(res.stdout)
    assert data["clean"] is False
    fields = {(p["field"], p["severity"]) for p in data["problems"]}
    assert ("job.pool", "error") in fields  # hbpool vs hbplain
    assert ("pool.virtualMachineConfiguration.imageReference", "error") in fields
    assert all(p["fix"] for p in data["problems"])


def test_check_pool_picks_job_pool_from_a_pool_list(tmp_path):
    res = invoke("check-pool", write(tmp_path, RDMA_SPEC), "--pool-json", str(POOLS / "pool_list.json"))
    assert res.exit_code == 0, res.output
    other = RDMA_SPEC.replace("pool: hbpool", "pool: nosuchpool").replace("  id: hbpool", "  id: nosuchpool")
    res = invoke("check-pool", write(tmp_path, other, "other.yaml"), "--pool-json", str(POOLS / "pool_list.json"))
    assert res.exit_code == 2 and "generalpool, hbpool" in res.stderr


def test_check_pool_reads_stdin(tmp_path):
    res = invoke("check-pool", write(tmp_path, RDMA_SPEC), "--pool-json", "-",
                 input=(POOLS / "hbv3_ubuntu_hpc.json").read_text())
    assert res.exit_code == 0, res.output


def test_check_pool_without_a_pool_exits_2_saying_what_to_add():
    res = invoke("check-pool", str(HELLO))
    assert res.exit_code == 2
    assert "no pool section" in res.stderr and "add a pool section" in res.stderr and "--pool-json" in res.stderr


@pytest.mark.parametrize("content, words", [
    (None, ["no such file"]),
    ("{not json", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["none is job.pool"]),
    ('{"id": "hbpool", "vmSize": "Standard HB"}', ["pool.vmSize"]),
])
def test_check_pool_bad_pool_json_exits_2(tmp_path, content, words):
    pool = tmp_path / "pool.json"
    if content is not None:
        pool.write_text(content)
    res = invoke("check-pool", write(tmp_path, RDMA_SPEC), "--pool-json", str(pool))
    assert res.exit_code == 2
    for w in words:
        assert w in res.stderr, res.stderr


def test_check_pool_spec_errors_come_first(tmp_path):
    res = invoke("check-pool", write(tmp_path, RDMA_SPEC.replace("instances: 4", "instances: 5")))
    assert res.exit_code == 2 and "task.instances" in res.stderr and "5 instances" in res.stderr


# ---------------------------------------------------------------------------------------------- hostfile

@pytest.mark.parametrize("flavor, ppn, want", [
    ("openmpi", 4, "10.0.0.4 slots=4\n10.0.0.5 slots=4\n"),
    ("intelmpi", 4, "10.0.0.4:4\n10.0.0.5:4\n"),
    ("mpich", 2, "10.0.0.4:2\n10.0.0.5:2\n"),
    ("msmpi", 3, "2 10.0.0.4 3 10.0.0.5 3\n"),
    ("openmpi", None, "10.0.0.4 slots=1\n10.0.0.5 slots=1\n"),
])
def test_hostfile_per_flavour(flavor, ppn, want):
    args = ["hostfile", "--flavor", flavor, "--hosts", "10.0.0.4,10.0.0.5"]
    if ppn:
        args += ["--ppn", str(ppn)]
    res = invoke(*args)
    assert res.exit_code == 0, res.output
    assert res.stdout == want


def test_hostfile_accepts_node_list_and_names():
    res = invoke("hostfile", "--flavor", "mpich", "--hosts", "node-1.cluster;node-2.cluster")
    assert res.stdout == "node-1.cluster:1\nnode-2.cluster:1\n"


@pytest.mark.parametrize("hosts", ["10.0.0.1,$(id)", "10.0.0.1;rm -rf /", "10.0.0.1,,10.0.0.2", "-oProxyCommand=x",
                                   "10.0.0.1,10.0.0.1", "", "a b"])
def test_hostfile_hostile_list_exits_2(hosts):
    res = invoke("hostfile", "--flavor", "openmpi", "--hosts", hosts)
    assert res.exit_code == 2, res.output
    assert res.stdout == ""
    assert "--hosts" in res.stderr and "nothing was submitted, run or changed" in res.stderr


def test_hostfile_ipv6_in_colon_style_exits_2():
    res = invoke("hostfile", "--flavor", "intelmpi", "--hosts", "fd00::4,fd00::5")
    assert res.exit_code == 2 and "IPv6" in res.stderr
    assert invoke("hostfile", "--flavor", "openmpi", "--hosts", "fd00::4").stdout == "fd00::4 slots=1\n"


def test_hostfile_unknown_flavour_and_bad_ppn():
    res = invoke("hostfile", "--flavor", "lam", "--hosts", "10.0.0.4")
    assert res.exit_code == 2 and "intelmpi, msmpi, openmpi, mpich" in res.stderr
    res = invoke("hostfile", "--flavor", "mpich", "--hosts", "10.0.0.4", "--ppn", "0")
    assert res.exit_code == 2


# ---------------------------------------------------------------------------------------------- console script

def test_installed_console_script_runs():
    exe = shutil.which("mpibatch", path=str(Path(sys.executable).parent))
    assert exe, "the mpibatch console script is not installed next to this Python"
    proc = subprocess.run([exe, "render", str(HELLO), "--output", "json"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["task"]["id"] == "hello-mpi"
    proc = subprocess.run([exe, "hostfile", "--flavor", "openmpi", "--hosts", "10.0.0.1,$(id)"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "$(id)" in proc.stderr and proc.stdout == ""
