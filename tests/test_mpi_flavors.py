"""MPI flavours: launcher argv and env for every flavour x fabric x processes per node (docs/mpi-launch-rules.md).

The tables below are written from docs/mpi-launch-rules.md, not from the code: Intel MPI and MPICH take
`-hosts h1,h2 -n N*P -ppn P`, Open MPI `--host h1:P,h2:P -np N*P --map-by ppr:P:node` plus `-x NAME` per
variable, MS-MPI `-c P -wdir %AZ_BATCH_TASK_SHARED_DIR%` behind smpd. The user's environment always wins.
"""
from __future__ import annotations

import itertools
import shlex
import subprocess

import pytest

from mpibatch.errors import SpecError
from mpibatch.mpi import FLAVORS, get_flavor
from mpibatch.render import render, resolve_fabric
from mpibatch.shell import Raw, sh_join
from mpibatch.spec import parse_spec

HOSTS = ["10.0.0.4", "10.0.0.5", "10.0.0.6"]
RANK_DIR = Raw('"$AZ_BATCH_NODE_SHARED_DIR/mpibatch/j1/t1"')

# fabric -> env, per flavour
FABRIC_ENV = {
    "intelmpi": {
        "sriov": {"I_MPI_FABRICS": "shm:ofi", "FI_PROVIDER": "mlx"},
        "networkdirect": {"I_MPI_FABRICS": "shm:dapl", "I_MPI_DAPL_PROVIDER": "ofa-v2-ib0",
                          "I_MPI_DYNAMIC_CONNECTION": "0"},
        "tcp": {"I_MPI_FABRICS": "shm:ofi", "FI_PROVIDER": "tcp"},
        "none": {},
    },
    "openmpi": {
        "sriov": {"OMPI_MCA_pml": "ucx"},
        "networkdirect": {},  # no NetworkDirect support: check-pool reports it
        "tcp": {"OMPI_MCA_pml": "ob1", "OMPI_MCA_btl": "tcp,sm,self"},
        "none": {},
    },
    "mpich": {
        "sriov": {},
        "networkdirect": {},
        "tcp": {"UCX_TLS": "tcp,self"},
        "none": {},
    },
    "msmpi": {
        "sriov": {},
        "networkdirect": {},  # MS-MPI finds NetworkDirect by itself
        "tcp": {"MPICH_DISABLE_ND": "1"},
        "none": {},
    },
}

# (fabric as the spec gives it, pool.vm_size or None) -> resolved fabric
FABRIC_CASES = [
    ("auto", "Standard_HB120rs_v3", "sriov"),
    ("auto", "HB120-16rs_v3", "sriov"),
    ("auto", "Standard_ND96asr_v4", "sriov"),
    ("auto", "standard_h16r", "networkdirect"),
    ("auto", "Standard_A9", "networkdirect"),
    ("auto", "Standard_D4s_v3", "none"),
    ("auto", "Standard_F16s_v2", "none"),
    ("auto", None, "none"),
    ("tcp", "Standard_HB120rs_v3", "tcp"),
    ("tcp", None, "tcp"),
    ("sriov", None, "sriov"),
    ("networkdirect", None, "networkdirect"),
]
PPNS = [1, 2, 8]


def expected_argv(flavor: str, hosts, ppn: int, env_names) -> list:
    n = len(HOSTS) * ppn
    if flavor == "intelmpi":
        return ["mpirun", "-hosts", ",".join(hosts), "-n", str(n), "-ppn", str(ppn), "-wdir", RANK_DIR]
    if flavor == "mpich":
        return ["mpiexec", "-hosts", ",".join(hosts), "-n", str(n), "-ppn", str(ppn), "-wdir", RANK_DIR]
    if flavor == "openmpi":
        argv = ["mpirun", "--host", ",".join(f"{h}:{ppn}" for h in hosts), "-np", str(n),
                "--map-by", f"ppr:{ppn}:node", "--wdir", RANK_DIR]
        for name in sorted(env_names):
            argv += ["-x", name]
        return argv
    assert flavor == "msmpi"
    pairs = [w for h in hosts for w in (h, str(ppn))]
    return ['""%MSMPI_BIN%\\mpiexec.exe""', "-hosts", str(len(hosts)), *pairs, "-c", str(ppn), "-wdir",
            "%AZ_BATCH_TASK_SHARED_DIR%"]


CASES = [(fl, fab, size, res, ppn) for fl in sorted(FLAVORS) for (fab, size, res) in FABRIC_CASES for ppn in PPNS]


@pytest.mark.parametrize("flavor, fabric, vm_size, resolved, ppn", CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2] or 'nosize'}-ppn{c[4]}" for c in CASES])
def test_launch_table(flavor, fabric, vm_size, resolved, ppn):
    fl = get_flavor(flavor)
    data = {"job": {"id": "j1"}, "task": {"id": "t1", "instances": 3, "command": ["app"],
                                          "mpi": {"flavor": flavor, "fabric": fabric, "processes_per_node": ppn}}}
    if vm_size:
        data["pool"] = {"vm_size": vm_size}
    spec = parse_spec(data)
    assert resolve_fabric(spec) == resolved
    want_env = FABRIC_ENV[flavor][resolved]
    rank_dir = Raw("%AZ_BATCH_TASK_SHARED_DIR%") if flavor == "msmpi" else RANK_DIR
    launch = fl.launch(HOSTS, ppn, ["--opt", "x y"], {}, resolved, rank_dir)
    assert launch.env == want_env
    want_argv = expected_argv(flavor, HOSTS, ppn, want_env)
    if flavor == "msmpi":  # the task environment rides on -genv, right after mpiexec
        want_argv[1:1] = [w for k in sorted(want_env) for w in ("-genv", k, want_env[k])]
    assert launch.argv == [*want_argv, "--opt", "x y"]
    # the rendered task carries the same environment (as environment settings)
    assert render(spec).environment == want_env


@pytest.mark.parametrize("flavor, ppn", list(itertools.product(sorted(FLAVORS), PPNS)))
def test_user_env_beats_fabric_env(flavor, ppn):
    fl = get_flavor(flavor)
    fabric = "tcp"  # every flavour has a tcp default
    defaults = fl.fabric_env(fabric)
    name = next(iter(defaults))
    user = {name: "user-value", "OMP_NUM_THREADS": "4"}
    launch = fl.launch(HOSTS, ppn, [], user, fabric, RANK_DIR)
    assert launch.env[name] == "user-value"
    assert launch.env["OMP_NUM_THREADS"] == "4"
    for other in set(defaults) - {name}:
        assert launch.env[other] == defaults[other]  # untouched defaults stay
    if flavor == "openmpi":  # every variable is forwarded to remote ranks
        xs = [launch.argv[i + 1] for i, w in enumerate(launch.argv) if w == "-x"]
        assert xs == sorted(launch.env)


def test_intelmpi_fabric_values_keep_the_shm_prefix():
    # docs/mpi-launch-rules.md#intel-mpi: the docs once omitted 'shm:' and cost a customer dearly.
    for fabric in ("sriov", "networkdirect", "tcp"):
        assert get_flavor("intelmpi").fabric_env(fabric)["I_MPI_FABRICS"].startswith("shm:")


@pytest.mark.parametrize("flavor", sorted(FLAVORS))
def test_runtime_hosts_need_a_count(flavor):
    with pytest.raises(ValueError):
        get_flavor(flavor).launch(None, 2, [], {}, "none", RANK_DIR)


# Run-time host lists: the launch line reads AZ_BATCH_HOST_LIST on the node. Expand the host word with bash.
@pytest.mark.parametrize("flavor, ppn, want", [
    ("intelmpi", 1, "10.0.0.4,10.0.0.5,10.0.0.6"),
    ("intelmpi", 8, "10.0.0.4,10.0.0.5,10.0.0.6"),
    ("mpich", 2, "10.0.0.4,10.0.0.5,10.0.0.6"),
    ("openmpi", 1, "10.0.0.4:1,10.0.0.5:1,10.0.0.6:1"),
    ("openmpi", 2, "10.0.0.4:2,10.0.0.5:2,10.0.0.6:2"),
    ("openmpi", 8, "10.0.0.4:8,10.0.0.5:8,10.0.0.6:8"),
])
def test_runtime_host_word_expands_on_the_node(flavor, ppn, want):
    launch = get_flavor(flavor).launch(None, ppn, [], {}, "none", RANK_DIR, instances=3)
    assert "-np" in launch.argv or "-n" in launch.argv
    n_flag = "-np" if flavor == "openmpi" else "-n"
    assert launch.argv[launch.argv.index(n_flag) + 1] == str(3 * ppn)
    line = sh_join(["printf", "%s\\n", *launch.argv[1:3]])
    out = subprocess.run(["/bin/bash", "-c", line], capture_output=True, text=True, check=True,
                         env={"AZ_BATCH_HOST_LIST": ",".join(HOSTS), "PATH": "/usr/bin:/bin"}).stdout
    assert out.splitlines()[1] == want
    # a single host
    out = subprocess.run(["/bin/bash", "-c", line], capture_output=True, text=True, check=True,
                         env={"AZ_BATCH_HOST_LIST": "10.0.0.4", "PATH": "/usr/bin:/bin"}).stdout
    assert out.splitlines()[1] == want.split(",")[0]


def test_msmpi_runtime_hosts_come_from_ccp_nodes():
    launch = get_flavor("msmpi").launch(None, 4, [], {}, "none", Raw("%AZ_BATCH_TASK_SHARED_DIR%"), instances=3)
    assert launch.argv == ['""%MSMPI_BIN%\\mpiexec.exe""', "-c", "4", "-wdir", "%AZ_BATCH_TASK_SHARED_DIR%"]
    assert "-hosts" not in launch.argv  # mpiexec reads CCP_NODES by default


def test_msmpi_coordination_starts_smpd_and_returns():
    argv = get_flavor("msmpi").coordination_argv()
    assert " ".join(argv) == 'start cmd /c ""%MSMPI_BIN%\\smpd.exe"" -d'
    for name in ("intelmpi", "openmpi", "mpich"):
        assert get_flavor(name).coordination_argv() is None


@pytest.mark.parametrize("flavor, style, os", [
    ("intelmpi", "colon", "linux"), ("mpich", "colon", "linux"), ("openmpi", "slots", "linux"),
    ("msmpi", "msmpi", "windows"),
])
def test_registry_metadata(flavor, style, os):
    fl = get_flavor(flavor.upper())  # names are case-insensitive
    assert (fl.name, fl.hostfile_style, fl.os) == (flavor, style, os)
    assert fl.title


def test_unknown_flavour_lists_the_known_ones():
    with pytest.raises(SpecError) as e:
        get_flavor("lam")
    assert e.value.field == "task.mpi.flavor"
    for name in ("intelmpi", "msmpi", "openmpi", "mpich"):
        assert name in e.value.fix


# ---------------------------------------------------------------------------------------------- rendered lines

@pytest.mark.parametrize("ppn", PPNS)
def test_windows_rendered_lines_follow_the_msmpi_recipe(ppn):
    spec = parse_spec({"job": {"id": "j1"}, "task": {
        "id": "t1", "instances": 2, "command": ["app.exe", "input.dat"],
        "mpi": {"flavor": "msmpi", "processes_per_node": ppn, "fabric": "tcp"},
        "environment": {"MPICH_DISABLE_ND": "0", "OMP_NUM_THREADS": "2"}}})
    r = render(spec)
    assert r.coordination_command_line == 'cmd /c start cmd /c ""%MSMPI_BIN%\\smpd.exe"" -d'
    assert r.command_line == ('cmd /c ""%MSMPI_BIN%\\mpiexec.exe"" -genv MPICH_DISABLE_ND 0 '
                              f'-genv OMP_NUM_THREADS 2 -c {ppn} -wdir %AZ_BATCH_TASK_SHARED_DIR% '
                              'app.exe input.dat')
    assert r.environment == {"MPICH_DISABLE_ND": "0", "OMP_NUM_THREADS": "2"}  # the user's 0 beat the tcp 1


@pytest.mark.parametrize("flavor", ["intelmpi", "openmpi", "mpich"])
def test_linux_rendered_launch_is_built_from_the_flavour(flavor):
    spec = parse_spec({"job": {"id": "j1"}, "task": {
        "id": "t1", "instances": 3, "command": ["app", "--flag"],
        "mpi": {"flavor": flavor, "processes_per_node": 2, "options": ["--verbose"]},
        "environment": {"A": "1"}}})
    r = render(spec)
    launch = get_flavor(flavor).launch(None, 2, ["--verbose"], {"A": "1"}, "none", RANK_DIR, instances=3)
    script = shlex.split(r.command_line)[2]
    # after the node's environment is sourced, every rank starts through its node's wrapper
    lines = script.split("\n")
    assert lines[1] == '. "$AZ_BATCH_TASK_WORKING_DIR/.mpibatch-node.env" || exit 3'
    wrapper = '"$AZ_BATCH_NODE_SHARED_DIR/mpibatch/j1/t1/.mpibatch-rank"'
    [tracker] = [line for line in lines if "/mpibatch/track.py" in line]
    [app] = [line for line in lines if wrapper in line]
    assert lines.index(tracker) + 1 == lines.index(app) and tracker.endswith("& track=$!; fi")  # on Azure only
    # Open MPI: each launch with a session-directory base of its own (docs/mpi-launch-rules.md#open-mpi)
    own = [Raw('OMPI_MCA_orte_tmpdir_base="$mpibatch_launches/app"')] if flavor == "openmpi" else []
    assert app.startswith(sh_join([*own, *launch.argv, Raw(wrapper), "app", "--flag"]) + "; rc=$?")
