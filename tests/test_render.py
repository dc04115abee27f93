"""render + payload: the task exactly as Batch receives it, loaded back into the real SDK models, and the
rendered Linux command lines *executed* with stand-in launchers that record the argv they were given.

The stand-ins (`mpirun`, `mpiexec`) are tiny Python scripts put first on PATH; the command line runs under
/bin/bash -c exactly as a Batch node runs it, with the node's environment variables
(docs/batch-semantics.md#environment) and the task's environment settings taken from the rendered JSON.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from azure.batch import models as bm
from mpibatch.launchers import protocol

from mpibatch import conventions
from mpibatch.payload import batch_job, batch_task, payload_json
from mpibatch.render import LAUNCHER_DIR, NODE_FILES, PERSIST_URL_VAR, launcher_source, render
from mpibatch.spec import parse_spec

HOSTS = "10.0.0.4,10.0.0.5,10.0.0.6"
SHELLCHECK = shutil.which("shellcheck")
LINUX_FLAVORS = ["intelmpi", "openmpi", "mpich"]


def make_spec(flavor="openmpi", instances=3, ppn=2, command=None, pool=None, **task):
    data = {"job": {"id": "cfd-run-1"},
            "task": {"id": "motorbike", "instances": instances, "command": command or ["app", "-parallel"],
                     "mpi": {"flavor": flavor, "processes_per_node": ppn, **task.pop("mpi", {})}, **task}}
    if pool:
        data["pool"] = pool
    return parse_spec(data)


FULL = dict(
    flavor="intelmpi", instances=4, ppn=8,
    pool={"id": "hbpool", "vm_size": "Standard_HB120rs_v3", "nodes": 4, "image": "ubuntu-hpc"},
    coordination="echo ready > coord.txt",
    common_files=[{"source": "./case.tar.gz", "path": "case.tar.gz"},
                  {"source": "https://example.org/mesh/m.dat", "path": "mesh/m.dat"}],
    files=[{"source": "https://example.org/x.dat", "path": "input/x.dat"}],
    environment={"OMP_NUM_THREADS": "1", "FI_PROVIDER": "verbs"},
    outputs=[{"pattern": "results/**", "kind": "TaskOutput"}, {"pattern": "log/*.txt", "kind": "TaskLog"}],
    max_wall_clock="2h", max_retries=2, retention="7d",
)


# ---------------------------------------------------------------------------------------------- the payload

def test_task_json_round_trips_through_the_sdk_model():
    payload = payload_json(render(make_spec(**FULL)))
    task = payload["task"]
    model = bm.BatchTaskCreateOptions(task)
    assert model.as_dict() == task
    assert model.id == "motorbike" and model.multi_instance_settings.number_of_instances == 4
    job = bm.BatchJobCreateOptions(payload["job"])
    assert job.as_dict() == payload["job"] and job.pool_info.pool_id == "hbpool"
    json.dumps(payload)  # plain JSON


@pytest.mark.parametrize("flavor", ["intelmpi", "openmpi", "mpich", "msmpi"])
def test_every_flavour_round_trips(flavor):
    task = payload_json(render(make_spec(flavor=flavor)))["task"]
    assert bm.BatchTaskCreateOptions(task).as_dict() == task


def test_multi_instance_settings():
    r = render(make_spec(**FULL))
    task = payload_json(r)["task"]
    mis = task["multiInstanceSettings"]
    assert mis["numberOfInstances"] == 4
    assert mis["coordinationCommandLine"] == r.coordination_command_line
    assert [f["filePath"] for f in mis["commonResourceFiles"]] == [
        *(f"{LAUNCHER_DIR}/{n}" for n in NODE_FILES), "case.tar.gz", "mesh/m.dat"]
    assert set(NODE_FILES) >= {"coordinate.sh", "persist.py", "track.py", "outputnames.py", "blobio.py"}
    urls = [f["httpUrl"] for f in mis["commonResourceFiles"]]
    assert urls[-1] == "https://example.org/mesh/m.dat"
    assert all(u.startswith("<upload at submit") for u in urls[:5])  # local: uploaded only at submit
    assert task["resourceFiles"] == [{"httpUrl": "https://example.org/x.dat", "filePath": "input/x.dat"}]
    assert task["commandLine"] == r.command_line and task["commandLine"].startswith("/bin/bash -c ")
    assert task["requiredSlots"] == 1


def test_linux_runs_as_the_pool_admin_auto_user_and_windows_does_not():
    linux = payload_json(render(make_spec(**{**FULL, "common_files": []})))
    assert linux["task"]["userIdentity"] == {"autoUser": {"scope": "pool", "elevationLevel": "admin"}}
    windows = payload_json(render(make_spec(flavor="msmpi")))
    assert "userIdentity" not in windows["task"]
    assert windows["task"]["commandLine"].startswith("cmd /c ")
    # no Linux launchers on Windows, no persist step
    mis = windows["task"]["multiInstanceSettings"]
    assert not mis.get("commonResourceFiles")
    assert PERSIST_URL_VAR not in {e["name"] for e in windows["task"].get("environmentSettings", [])}


def test_output_files_use_file_conventions_names():
    task = payload_json(render(make_spec(**FULL)))["task"]
    outs = [(o["filePattern"], o["destination"]["container"]["path"], o["uploadOptions"]["uploadCondition"])
            for o in task["outputFiles"]]
    assert outs == [
        ("../std*.txt", "motorbike/$TaskLog/0", "taskcompletion"),
        ("results/**", "motorbike/$TaskOutput/0", "taskcompletion"),
        ("log/*.txt", "motorbike/$TaskLog/0", "taskcompletion"),
    ]
    # the blob a file ends up in is the .NET library's name plus the instance folder
    assert conventions.instance_output_blob("motorbike", "TaskLog", 0, "../stdout.txt") == \
        "motorbike/$TaskLog/0/stdout.txt"


def test_output_container_and_persist_url_are_filled_in_at_submit():
    r = render(make_spec(**FULL))
    task = batch_task(r, container_url="https://acct.blob.core.windows.net/job-cfd-run-1?sig=w",
                      persist_url="https://acct.blob.core.windows.net/job-cfd-run-1?sig=p",
                      url_for=lambda ref: f"https://acct.blob.core.windows.net/job-cfd-run-1/in/{ref.path}").as_dict()
    assert {o["destination"]["container"]["containerUrl"] for o in task["outputFiles"]} == \
        {"https://acct.blob.core.windows.net/job-cfd-run-1?sig=w"}
    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert env[PERSIST_URL_VAR].endswith("sig=p")
    assert task["multiInstanceSettings"]["commonResourceFiles"][len(NODE_FILES)]["httpUrl"].endswith("/in/case.tar.gz")


_ISO = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+)S)?)?$")


def _iso_seconds(text: str) -> int:
    m = _ISO.match(text)
    assert m and text not in ("P", "PT"), text
    d, h, mi, s = (int(g or 0) for g in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


@pytest.mark.parametrize("wall, retention, want_wall, want_ret", [
    ("2h", "7d", 7200, 604800),
    ("90s", "PT36H", 90, 129600),
    ("1h30m", "1d2h3m4s", 5400, 93784),
])
def test_constraints_are_iso8601(wall, retention, want_wall, want_ret):
    task = payload_json(render(make_spec(max_wall_clock=wall, retention=retention, max_retries=3)))["task"]
    c = task["constraints"]
    assert _iso_seconds(c["maxWallClockTime"]) == want_wall
    assert _iso_seconds(c["retentionTime"]) == want_ret
    assert c["maxTaskRetryCount"] == 3


def test_no_constraints_given():
    c = payload_json(render(make_spec()))["task"]["constraints"]
    assert c == {"maxTaskRetryCount": 0}


def test_environment_settings_user_beats_fabric():
    task = payload_json(render(make_spec(**FULL)))["task"]
    env = {e["name"]: e["value"] for e in task["environmentSettings"]}
    assert env["FI_PROVIDER"] == "verbs"  # the user's, not the sriov default mlx
    assert env["I_MPI_FABRICS"] == "shm:ofi"  # the default the user did not touch
    assert env["OMP_NUM_THREADS"] == "1"
    names = [e["name"] for e in task["environmentSettings"]]
    assert len(names) == len(set(names))


def test_job_preparation_and_release():
    spec = parse_spec({"job": {"id": "j", "pool": "p", "preparation": {"command": ["tar", "xf", "a b.tgz"],
                                                                        "files": ["https://example.org/a.tgz"]},
                               "release": "rm -rf scratch"},
                       "task": {"id": "t", "mpi": "mpich", "command": ["app"]}})
    job = batch_job(render(spec)).as_dict()
    prep, rel = job["jobPreparationTask"], job["jobReleaseTask"]
    assert prep["commandLine"] == "/bin/bash -c 'tar xf '\"'\"'a b.tgz'\"'\"''"
    assert prep["waitForSuccess"] is True
    assert prep["resourceFiles"] == [{"httpUrl": "https://example.org/a.tgz", "filePath": "a.tgz"}]
    assert rel["commandLine"] == "/bin/bash -c 'rm -rf scratch'"
    assert prep["userIdentity"]["autoUser"]["scope"] == "pool"


# ---------------------------------------------------------------------------------------------- executing lines

STANDIN = """#!{python}
import json, os, sys
names = [n for n in os.environ.get("STANDIN_ENV", "").split(",") if n]
with open(os.environ["STANDIN_LOG"], "a") as f:
    f.write(json.dumps({{"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "cwd": os.getcwd(),
                        "env": {{n: os.environ.get(n) for n in names}}}}) + "\\n")
sys.exit(int(os.environ.get("STANDIN_RC", "0")))
"""


class Node:
    """A fake Batch node: directories, environment variables and stand-in launchers."""

    def __init__(self, root: Path):
        self.root = root
        self.bin = root / "bin"
        self.bin.mkdir()
        for prog in ("mpirun", "mpiexec"):
            p = self.bin / prog
            p.write_text(STANDIN.format(python=sys.executable))
            p.chmod(0o755)
        self.node_shared = root / "shared"
        self.task_dir = root / "workitems" / "cfd-run-1" / "job-1" / "motorbike"
        self.wd = self.task_dir / "wd"
        self.task_shared = self.task_dir / "shared"  # not where Batch puts it, but the same on every "node"
        for d in (self.node_shared, self.wd, self.task_shared):
            d.mkdir(parents=True)
        (self.wd / ".mpibatch-node.env").write_text("")  # what the coordination step writes
        self.log = root / "standin.jsonl"

    def env(self, task: dict, **extra: str) -> dict[str, str]:
        env = {
            "PATH": f"{self.bin}:/usr/bin:/bin",
            "HOME": str(self.root),
            "AZ_BATCH_HOST_LIST": HOSTS,
            "AZ_BATCH_NODE_LIST": HOSTS.replace(",", ";"),
            "AZ_BATCH_MASTER_NODE": "10.0.0.4:6000",
            "AZ_BATCH_IS_CURRENT_NODE_MASTER": "true",
            "CCP_NODES": "3 10.0.0.4 1 10.0.0.5 1 10.0.0.6 1",
            "AZ_BATCH_NODE_SHARED_DIR": str(self.node_shared),
            "AZ_BATCH_NODE_ROOT_DIR": str(self.root),
            "AZ_BATCH_TASK_SHARED_DIR": str(self.task_shared),
            "AZ_BATCH_TASK_DIR": str(self.task_dir),
            "AZ_BATCH_TASK_WORKING_DIR": str(self.wd),
            "AZ_BATCH_JOB_ID": "cfd-run-1",
            "AZ_BATCH_TASK_ID": "motorbike",
            "AZ_BATCH_NODE_ID": "tvmps_0001",
            "AZ_BATCH_POOL_ID": "hbpool",
            "STANDIN_LOG": str(self.log),
        }
        # the task's environment settings, as Batch sets them
        env.update({e["name"]: e["value"] for e in task.get("environmentSettings", [])})
        env.update(extra)
        return env

    def run(self, command_line: str, env: dict[str, str]) -> subprocess.CompletedProcess:
        prog, flag, script = shlex.split(command_line)
        assert (prog, flag) == ("/bin/bash", "-c")
        return subprocess.run(["/bin/bash", "-c", script], cwd=self.wd, env=env, capture_output=True, text=True,
                              timeout=60)

    def calls(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture
def node(tmp_path):
    return Node(tmp_path)


def run_app(node: Node, spec, *, persist: bool = False, **extra: str):
    r = render(spec)
    task = payload_json(r)["task"]
    env = node.env(task, **extra)
    if not persist:
        env.pop(PERSIST_URL_VAR, None)
    proc = node.run(r.command_line, env)
    return proc, node.calls()


def value_after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("flavor, prog, host_flag, hosts, count_flag", [
    ("openmpi", "mpirun", "--host", "10.0.0.4:2,10.0.0.5:2,10.0.0.6:2", "-np"),
    ("intelmpi", "mpirun", "-hosts", "10.0.0.4,10.0.0.5,10.0.0.6", "-n"),
    ("mpich", "mpiexec", "-hosts", "10.0.0.4,10.0.0.5,10.0.0.6", "-n"),
])
def test_launcher_receives_the_hosts_from_the_node(node, flavor, prog, host_flag, hosts, count_flag):
    proc, calls = run_app(node, make_spec(flavor=flavor, instances=3, ppn=2))
    assert proc.returncode == 0, proc.stderr
    [call] = calls
    assert call["prog"] == prog
    argv = call["argv"]
    assert value_after(argv, host_flag) == hosts
    assert value_after(argv, count_flag) == "6"
    if flavor == "openmpi":
        assert value_after(argv, "--map-by") == "ppr:2:node"
    else:
        assert value_after(argv, "-ppn") == "2"
    wdir = value_after(argv, "--wdir" if flavor == "openmpi" else "-wdir")
    assert wdir == f"{node.node_shared}/mpibatch/cfd-run-1/motorbike"
    assert argv[-2:] == ["app", "-parallel"]


HOSTILE = ["it's", "a b", '"double"', "$(touch PWNED)", "`touch PWNED2`", "a;touch PWNED3", "*", "$HOME",
           "back\\slash", "new\nline", "--", "-x", "ünïcode", "&&", "|", ">out", "${IFS}", "'"]


@pytest.mark.parametrize("flavor", LINUX_FLAVORS)
def test_user_argv_arrives_verbatim(node, flavor):
    options = ["--opt", "v a l", "$(touch PWNED4)"]
    spec = make_spec(flavor=flavor, command=["app", *HOSTILE], mpi={"options": options})
    proc, calls = run_app(node, spec)
    assert proc.returncode == 0, proc.stderr
    [call] = calls
    argv = call["argv"]
    assert argv[-len(HOSTILE) - 1:] == ["app", *HOSTILE]
    i = argv.index("--opt")
    assert argv[i:i + 3] == options  # launcher options verbatim, just before the program
    assert not list(node.wd.glob("PWNED*")) and not list(node.root.rglob("PWNED*"))
    assert not (node.wd / "out").exists()


def test_shell_line_command_runs_under_bash(node):
    spec = make_spec(flavor="mpich", command='python3 app.py "$X" > out.txt')
    proc, [call] = run_app(node, spec)
    assert proc.returncode == 0, proc.stderr
    assert call["argv"][-3:] == ["/bin/bash", "-c", 'python3 app.py "$X" > out.txt']  # expanded on each rank


@pytest.mark.parametrize("flavor, variable, default, user_value", [
    ("intelmpi", "FI_PROVIDER", "mlx", "verbs"),
    ("intelmpi", "I_MPI_FABRICS", "shm:ofi", "shm:tcp"),
    ("openmpi", "OMPI_MCA_pml", "ucx", "ob1"),
])
def test_launcher_sees_the_users_value_over_the_fabric_default(node, flavor, variable, default, user_value):
    pool = {"vm_size": "Standard_HB120rs_v3"}
    spec = make_spec(flavor=flavor, pool=pool, environment={variable: user_value, "OMP_NUM_THREADS": "3"})
    fabric_names = sorted(render(make_spec(flavor=flavor, pool=pool)).environment)
    assert variable in fabric_names
    proc, [call] = run_app(node, spec, STANDIN_ENV=",".join([*fabric_names, "OMP_NUM_THREADS"]))
    assert proc.returncode == 0, proc.stderr
    assert call["env"][variable] == user_value
    assert call["env"]["OMP_NUM_THREADS"] == "3"
    others = {n: v for n, v in render(make_spec(flavor=flavor, pool=pool)).environment.items() if n != variable}
    for name, value in others.items():  # the defaults the user left alone are still there
        assert call["env"][name] == value
    if flavor == "openmpi":  # forwarded to the remote ranks
        xs = [call["argv"][i + 1] for i, w in enumerate(call["argv"]) if w == "-x"]
        assert variable in xs and "OMP_NUM_THREADS" in xs


def test_exit_code_is_the_applications_even_after_the_persist_step(node):
    spec = make_spec(flavor="openmpi", outputs=["results/**"])
    proc, calls = run_app(node, spec, persist=True, STANDIN_RC="7")
    assert proc.returncode == 7
    # the tracker (in the background), the application, then one persist process per node
    steps = {next((n for n in ("track.py", "persist.py") if any(a.endswith(n) for a in c["argv"])), "app"): c["argv"]
             for c in calls}
    assert len(calls) == 3 and set(steps) == {"track.py", "app", "persist.py"}
    assert value_after(steps["track.py"], "-np") == "3" and steps["track.py"][-6:] == steps["persist.py"][-6:]
    persist = steps["persist.py"]
    assert value_after(persist, "-np") == "3" and value_after(persist, "--host").endswith(":1")
    assert persist[-8:] == ["python3", f"{node.task_shared}/mpibatch/persist.py", "--task", "motorbike",
                            "--rank-vars", "OMPI_COMM_WORLD_RANK,PMIX_RANK", "--output", "TaskOutput=results/**"]
    assert "mpibatch: persisting subtask outputs failed" in proc.stderr  # the stand-in failed that too


def test_each_open_mpi_launch_gets_a_session_directory_base_of_its_own(node):
    """Open MPI 4's launchers on one node share <base>/ompi.<node>.<uid> and remove it when it looks empty:
    the checkpoint restore's, the tracker's, the program's and the persist step's launches each get their own
    base, under one directory the command removes when it ends, whatever its exit code."""
    spec = make_spec(flavor="openmpi", checkpoint={"pattern": "restart.*", "every": "1s"})
    tmp = node.root / "tmp"
    tmp.mkdir()
    store = {protocol.CHECKPOINT_STORE_VAR: str(node.root / "store"), "TMPDIR": str(tmp),
             "STANDIN_ENV": "OMPI_MCA_orte_tmpdir_base"}
    proc, calls = run_app(node, spec, **store)
    assert proc.returncode == 0, proc.stderr
    bases = [c["env"]["OMPI_MCA_orte_tmpdir_base"] for c in calls]
    assert len(calls) == 4 and len(set(bases)) == 4, bases  # restore, tracker, program, persist
    parents = {Path(b).parent for b in bases}
    assert len(parents) == 1 and parents.pop().parent == tmp, bases
    assert sorted(Path(b).name for b in bases) == ["app", "persist", "restore", "track"]
    assert list(tmp.iterdir()) == []  # removed when the command ended
    proc, _ = run_app(node, spec, **store, STANDIN_RC="7")  # the restore step fails: the command exits at once
    assert proc.returncode == 3 and list(tmp.iterdir()) == [], proc.stderr


def test_no_writable_tmpdir_is_named_before_any_launch(node):
    spec = make_spec(flavor="openmpi", checkpoint={"pattern": "restart.*", "every": "1s"})
    proc, calls = run_app(node, spec, TMPDIR=str(node.root / "missing"),
                          **{protocol.CHECKPOINT_STORE_VAR: str(node.root / "store")})
    assert proc.returncode == 3 and calls == []
    assert f"cannot make a directory in {node.root / 'missing'}" in proc.stderr and "set TMPDIR" in proc.stderr


@pytest.mark.parametrize("flavor", ["mpich", "intelmpi"])
def test_hydra_launches_need_no_session_directory_base(node, flavor):
    tmp = node.root / "tmp"
    tmp.mkdir()
    proc, calls = run_app(node, make_spec(flavor=flavor), TMPDIR=str(tmp), STANDIN_ENV="OMPI_MCA_orte_tmpdir_base")
    assert proc.returncode == 0 and [c["env"] for c in calls] == [{"OMPI_MCA_orte_tmpdir_base": None}]
    assert "mktemp" not in render(make_spec(flavor=flavor)).command_line


def test_persist_step_is_skipped_without_its_url(node):
    proc, calls = run_app(node, make_spec(flavor="intelmpi"), persist=False)
    assert proc.returncode == 0 and len(calls) == 1


def test_coordination_line_runs_the_launcher_then_the_users_step(node):
    spec = make_spec(flavor="mpich", coordination="echo coordinated > coord.txt",
                     common_files=[{"source": "https://example.org/case.tgz", "path": "case/case.tgz"}])
    r = render(spec)
    (node.task_shared / LAUNCHER_DIR).mkdir()
    shutil.copy(launcher_source("coordinate.sh"), node.task_shared / LAUNCHER_DIR / "coordinate.sh")
    (node.task_shared / "case").mkdir()
    (node.task_shared / "case" / "case.tgz").write_text("data")
    env = node.env(payload_json(r)["task"], MPIBATCH_PEER_CHECK="0")
    proc = node.run(r.coordination_command_line, env)
    assert proc.returncode == 0, proc.stderr
    rank_dir = node.node_shared / "mpibatch" / "cfd-run-1" / "motorbike"
    assert rank_dir.is_symlink() and rank_dir.resolve() == node.wd.resolve()
    assert (node.wd / "case").is_symlink() and (node.wd / "case" / "case.tgz").read_text() == "data"
    assert (node.wd / "coord.txt").read_text() == "coordinated\n"  # the user's step, in the working dir


# ---------------------------------------------------------------------------------------------- shellcheck

SHELLCHECK_SPECS = {
    "plain": {},
    "full": dict(coordination="mkdir -p out && echo \"$AZ_BATCH_NODE_ID\" > out/node.txt",
                 shared_dir="sshfs",
                 common_files=[{"source": "https://example.org/a b.tgz", "path": "in put/a b.tgz"}],
                 environment={"A": "it's", "B": "$(x)"},
                 outputs=["results/**", {"pattern": "x y/*", "kind": "TaskLog"}],
                 command=["app", *HOSTILE], mpi={"options": ["--mca", "btl", "^openib"], "fabric": "tcp"}),
    "shell-line": dict(command="python3 app.py > out.txt 2>&1 && echo done", coordination="true"),
    "ppn8": dict(ppn=8, instances=100),
    "checkpoint": dict(checkpoint={"pattern": "restart.*", "from": "all", "every": "10s"}),
}


def _shellcheck(script: str, *exclude: str) -> subprocess.CompletedProcess:
    # No silent skip: scripts/install-test-deps.sh installs it.
    assert SHELLCHECK, "shellcheck is not installed: apt-get install shellcheck (scripts/install-test-deps.sh does)"
    args = [SHELLCHECK, "-s", "bash", *(f"--exclude={e}" for e in exclude), "-"]
    return subprocess.run(args, input=script, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("flavor", LINUX_FLAVORS)
@pytest.mark.parametrize("variant", sorted(SHELLCHECK_SPECS))
def test_rendered_lines_pass_shellcheck(flavor, variant):
    r = render(make_spec(flavor=flavor, **SHELLCHECK_SPECS[variant]))
    lines = {"application": r.command_line, "coordination": r.coordination_command_line}
    # SC2016 ("expressions don't expand in single quotes") is what mpibatch wants for the user's words:
    # '$(touch PWNED)' must reach the program literally. Only the variant with such words excludes it.
    exclude = ("SC2016",) if variant == "full" else ()
    for what, line in lines.items():
        prog, flag, script = shlex.split(line)
        assert (prog, flag) == ("/bin/bash", "-c")
        proc = _shellcheck(script, *exclude)
        assert proc.returncode == 0, f"{what}:\n{script}\n{proc.stdout}"


def test_coordinate_sh_passes_shellcheck():
    proc = _shellcheck(Path(launcher_source("coordinate.sh")).read_text())
    assert proc.returncode == 0, proc.stdout


# ---------------------------------------------------------------------------------------------- found bugs, fixed

@pytest.mark.parametrize("task", [
    {"command": ["app.exe", "%PATH%"]},
    {"command": ["app.exe"], "environment": {"X": 'say "hi"'}},
])
def test_windows_unquotable_words_are_spec_errors(task):
    from mpibatch.errors import SpecError

    data = {"job": {"id": "j"}, "task": {"id": "t", "mpi": "msmpi", **task}}
    with pytest.raises(SpecError):
        render(parse_spec(data))


def test_windows_shell_line_keeps_cmd_variables():
    data = {"job": {"id": "j"}, "task": {"id": "t", "mpi": "msmpi",
                                        "command": "%AZ_BATCH_TASK_SHARED_DIR%\\app.exe > out.txt"}}
    r = render(parse_spec(data))
    assert r.command_line.endswith("%AZ_BATCH_TASK_SHARED_DIR%\\app.exe > out.txt")


def test_every_common_file_top_level_entry_is_linked_once():
    data = {"job": {"id": "j"}, "task": {"id": "t", "mpi": "mpich", "command": ["x"], "common_files": [
        {"source": "https://h/a.tgz", "path": "a.tgz"}, {"source": "https://h/b", "path": "case/b"},
        {"source": "https://h/c", "path": "case/c"}]}}
    words = shlex.split(shlex.split(render(parse_spec(data)).coordination_command_line)[2])
    links = [words[i + 1] for i, w in enumerate(words) if w == "--link"]
    assert links == ["a.tgz", "case"]
