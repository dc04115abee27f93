"""Spec validation (issue 2, item 1): every rule, with a message that names the field and says how to fix it."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest

from mpibatch.durations import parse_duration
from mpibatch.errors import SpecError, SpecErrors
from mpibatch.spec import load_spec, parse_spec

BASE = {
    "job": {"id": "cfd-run-1"},
    "task": {"id": "motorbike", "instances": 2, "mpi": {"flavor": "openmpi"}, "command": ["app"]},
}


def make(path: str | None = None, value=None, *, delete: bool = False, data: dict | None = None) -> dict:
    """BASE with one dotted path set (or deleted)."""
    d = copy.deepcopy(data or BASE)
    if path is None:
        return d
    *parents, last = path.split(".")
    node = d
    for p in parents:
        node = node.setdefault(p, {})
    if delete:
        del node[last]
    else:
        node[last] = value
    return d


def errors_of(data, base_dir: str | Path = ".") -> list[SpecError]:
    try:
        parse_spec(data, base_dir)
    except SpecErrors as e:
        return e.errors
    except SpecError as e:
        return [e]
    pytest.fail("the spec was accepted")


def one_error(data) -> SpecError:
    errs = errors_of(data)
    assert len(errs) == 1, [str(e) for e in errs]
    e = errs[0]
    assert e.fix, f"no fix in {e}"
    assert str(e).startswith(f"{e.field}: "), str(e)  # the message names the field first
    return e


def test_base_is_valid():
    s = parse_spec(make())
    assert (s.job.id, s.task.id, s.task.instances, s.task.mpi.flavor) == ("cfd-run-1", "motorbike", 2, "openmpi")


# (name, path, value, field, words in problem, words in fix)
RULES = [
    # ids: at most 64 letters, digits, '-', '_'
    ("job id too long", "job.id", "j" * 65, "job.id", ["65 characters long", "limit is 64"], ["64", "letters"]),
    ("task id too long", "task.id", "t" * 65, "task.id", ["65 characters long"], ["64"]),
    ("task id with a space", "task.id", "my task", "task.id", ["'my task'"], ["letters, digits"]),
    ("task id with a dot", "task.id", "run.1", "task.id", ["'run.1' is not a valid Batch id"], ["'-' and '_'"]),
    ("job id with a slash", "job.id", "a/b", "job.id", ["'a/b'"], ["64"]),
    ("job id empty", "job.id", "", "job.id", ["is empty"], ["64"]),
    ("pool id with a colon", "job.pool", "pool:1", "job.pool", ["'pool:1'"], ["64"]),
    # instances
    ("instances 0", "task.instances", 0, "task.instances", ["0 is out of range"], ["between 1 and 100"]),
    ("instances 101", "task.instances", 101, "task.instances", ["101"], ["between 1 and 100"]),
    ("instances not a number", "task.instances", "four", "task.instances", ["not a whole number"], [">= 1"]),
    ("instances bool", "task.instances", True, "task.instances", ["not a whole number"], [">= 1"]),
    # processes per node
    ("ppn 0", "task.mpi.processes_per_node", 0, "task.mpi.processes_per_node", ["0 is out of range"], ["number"]),
    ("ppn negative", "task.mpi.processes_per_node", -2, "task.mpi.processes_per_node", ["-2"], ["number"]),
    # flavours
    ("unknown flavour", "task.mpi.flavor", "lam", "task.mpi.flavor", ["'lam'"],
     ["intelmpi", "msmpi", "openmpi", "mpich"]),
    ("misspelt flavour", "task.mpi.flavor", "opnempi", "task.mpi.flavor", ["'opnempi'"], ["did you mean 'openmpi'"]),
    ("unknown fabric", "task.mpi.fabric", "infiniband", "task.mpi.fabric", ["'infiniband'"],
     ["auto, tcp, sriov, networkdirect"]),
    ("unknown shared dir", "task.shared_dir", "smb", "task.shared_dir", ["'smb'"], ["none, sshfs, nfs"]),
    # durations
    ("bad wall clock", "task.max_wall_clock", "2 hours", "task.max_wall_clock", ["'2 hours'"], ["90s", "PT2H"]),
    ("zero wall clock", "task.max_wall_clock", "0s", "task.max_wall_clock", ["longer than zero"], ["30m"]),
    ("bad retention", "task.retention", "P", "task.retention", ["'P'"], ["7d"]),
    ("negative retention", "task.retention", -5, "task.retention", ["longer than zero"], ["7d"]),
    ("unit order", "task.max_wall_clock", "30m2h", "task.max_wall_clock", ["'30m2h'"], ["1h30m"]),
    ("bool duration", "task.max_wall_clock", True, "task.max_wall_clock", ["not a duration"], ["2h"]),
    # unknown keys
    ("unknown task key", "task.instnaces", 3, "task.instnaces", ["unknown key"], ["did you mean 'instances'"]),
    ("unknown mpi key", "task.mpi.ppn", 3, "task.mpi.ppn", ["unknown key"], ["processes_per_node"]),
    ("unknown job key", "job.pools", "p", "job.pools", ["unknown key"], ["did you mean 'pool'"]),
    ("unknown top key", "tasks", {}, "tasks", ["unknown key"], ["did you mean 'task'"]),
    ("unknown pool key", "pool.vmsize", "x", "pool.vmsize", ["unknown key"], ["did you mean 'vm_size'"]),
    ("unrelated key lists the known", "task.colour", "red", "task.colour", ["unknown key"],
     ["known keys:", "instances", "outputs"]),
    # environment
    ("env name invalid", "task.environment", {"1BAD": "x"}, "task.environment.1BAD", ["not a valid"], ["letters"]),
    ("env sets a Batch variable", "task.environment", {"AZ_BATCH_HOST_LIST": "x"},
     "task.environment.AZ_BATCH_HOST_LIST", ["set by Batch"], ["another name"]),
    ("env without value", "task.environment", {"A": None}, "task.environment.A", ["no value"], ["give a value"]),
    # command
    ("empty argv", "task.command", [], "task.command", ["empty list"], ["[python, app.py]"]),
    ("blank shell line", "task.command", "   ", "task.command", ["is empty"], ["program"]),
    ("command a number", "task.command", 5, "task.command", ["expected a list"], ["[python, app.py]"]),
    ("missing command", "task.command", None, "task.command", ["is missing"], ["program"]),
    # outputs
    ("output kind", "task.outputs", [{"pattern": "r/**", "kind": "Task Output"}], "task.outputs[0].kind",
     ["not a File Conventions kind"], ["TaskOutput"]),
    ("output kind a typo of a standard one", "task.outputs", [{"pattern": "r/**", "kind": "TaskOuput"}],
     "task.outputs[0].kind", ["did you mean TaskOutput?"],
     ["write TaskOutput", "custom kind on purpose", "Checkpoints"]),
    ("output kind a case slip", "task.outputs", [{"pattern": "r/**", "kind": "tasklog"}],
     "task.outputs[0].kind", ["did you mean TaskLog?"], ["write TaskLog"]),
    ("output kind starting with a digit", "task.outputs", [{"pattern": "r/**", "kind": "1Results"}],
     "task.outputs[0].kind", ["not a File Conventions kind"], ["a letter, then letters and digits"]),
    ("output pattern absolute", "task.outputs", ["/var/log/*"], "task.outputs[0].pattern", ["absolute"],
     ["relative path"]),
    ("retries negative", "task.max_retries", -1, "task.max_retries", ["out of range"], ["between 0 and 100"]),
]


@pytest.mark.parametrize("name, path, value, field, words, fix_words", RULES, ids=[r[0] for r in RULES])
def test_rule(name, path, value, field, words, fix_words):
    data = make(path, value, delete=value is None)
    e = one_error(data)
    assert e.field == field, str(e)
    for w in words:
        assert w in e.problem, (w, str(e))
    for w in fix_words:
        assert w in e.fix, (w, str(e))


# ---------------------------------------------------------------------------------------------- pool cross-checks

POOL = {"id": "hbpool", "vm_size": "Standard_HB120rs_v3", "nodes": 4, "image": "ubuntu-hpc"}


@pytest.mark.parametrize("pool, instances, words", [
    ({**POOL, "nodes": 3}, 4, ["4 instances", "3 nodes"]),
    ({**POOL, "nodes": 0}, 1, ["1 instances", "0 nodes"]),
    ({**POOL, "nodes": 2, "spot_nodes": 1}, 4, ["4 instances", "3 nodes"]),
    ({**POOL, "nodes": 2, "low_priority_nodes": 1}, 4, ["4 instances", "3 nodes"]),
])
def test_instances_above_pool_nodes(pool, instances, words):
    e = one_error(make(data=make("pool", pool), path="task.instances", value=instances))
    assert e.field == "task.instances"
    for w in words:
        assert w in e.problem
    assert "never start" in e.fix


def test_instances_equal_to_pool_nodes_is_fine():
    assert parse_spec(make(data=make("pool", POOL), path="task.instances", value=4)).task.instances == 4
    # dedicated + low-priority together
    data = make(data=make("pool", {**POOL, "nodes": 2, "spot_nodes": 2}), path="task.instances", value=4)
    assert parse_spec(data).pool.spot_nodes == 2
    # low_priority_nodes, the older name, means the same; both at once is refused
    data = make(data=make("pool", {**POOL, "nodes": 2, "low_priority_nodes": 2}), path="task.instances", value=4)
    assert parse_spec(data).pool.spot_nodes == 2
    e = one_error(make(data=make("pool", {**POOL, "spot_nodes": 1, "low_priority_nodes": 1})))
    assert e.field == "pool.spot_nodes" and "older name" in e.problem and "spot_nodes only" in e.fix


def test_msmpi_on_a_linux_pool():
    data = make(data=make("pool", {**POOL, "image": "ubuntu-hpc"}), path="task.mpi.flavor", value="msmpi")
    e = one_error(data)
    assert e.field == "task.mpi.flavor" and "Windows pool" in e.problem and "windows" in e.fix


def test_openmpi_on_a_windows_pool():
    data = make(data=make("pool", {**POOL, "image": "windows"}), path="task.mpi.flavor", value="openmpi")
    e = one_error(data)
    assert e.field == "task.mpi.flavor" and "openmpi needs a Linux pool" in e.problem and "msmpi" in e.fix


def test_custom_windows_image_counts_as_windows():
    image = {"publisher": "p", "offer": "o", "sku": "s", "node_agent": "batch.node.windows amd64"}
    e = one_error(make(data=make("pool", {**POOL, "image": image}), path="task.mpi.flavor", value="intelmpi"))
    assert e.field == "task.mpi.flavor"


def test_msmpi_without_pool_is_windows():
    s = parse_spec(make("task.mpi.flavor", "msmpi"))
    assert s.os == "windows"


def test_shared_dir_on_windows():
    data = make(data=make("task.mpi.flavor", "msmpi"), path="task.shared_dir", value="nfs")
    e = one_error(data)
    assert e.field == "task.shared_dir" and "Linux" in e.problem


def test_job_pool_differs_from_pool_id():
    e = one_error(make(data=make("pool", POOL), path="job.pool", value="otherpool"))
    assert e.field == "job.pool" and "'otherpool'" in e.problem and "'hbpool'" in e.problem


def test_job_pool_defaults_to_pool_id():
    assert parse_spec(make("pool", POOL)).job.pool == "hbpool"


@pytest.mark.parametrize("field, value, words", [
    ("pool.vm_size", "HB 120", ["not an Azure VM size"]),
    ("pool.nodes", -1, ["out of range"]),
    ("pool.image", "debian", ["unknown image"]),
    ("pool.inter_node_communication", "yes", ["true/false"]),
    ("pool.task_slots_per_node", 0, ["out of range"]),
])
def test_pool_section_fields(field, value, words):
    e = one_error(make(data=make("pool", POOL), path=field, value=value))
    assert e.field == field
    for w in words:
        assert w in e.problem


# ---------------------------------------------------------------------------------------------- file paths

@pytest.mark.parametrize("path, words", [
    ("/etc/passwd", ["absolute"]),
    ("../outside", ["escapes", ".."]),
    ("a/../../outside", ["escapes"]),
    ("a\\..\\..\\x", ["escapes"]),
    ("C:\\x", ["absolute"]),
    ("C:x", ["absolute"]),
    ("c:/windows/x", ["absolute"]),
    ("\\\\server\\share\\x", ["absolute"]),
    ("\\rooted", ["absolute"]),
    ("", ["empty"]),
    (".", ["names no file"]),
    ("a\nb", ["control character"]),
])
@pytest.mark.parametrize("section", ["files", "common_files"])
def test_bad_file_paths(section, path, words):
    e = one_error(make(f"task.{section}", [{"source": "https://example.org/x", "path": path}]))
    assert e.field == f"task.{section}[0].path"
    for w in words:
        assert w in e.problem, str(e)
    assert "relative path" in e.fix


@pytest.mark.parametrize("path, clean", [
    ("input/x.dat", "input/x.dat"),
    ("./input//x.dat", "input/x.dat"),
    ("input\\x.dat", "input/x.dat"),
    ("a/./b", "a/b"),
])
def test_good_file_paths_are_normalised(path, clean):
    s = parse_spec(make("task.files", [{"source": "https://example.org/x", "path": path}]))
    assert s.task.files[0].path == clean


def test_bad_path_in_job_preparation_files():
    e = one_error(make("job.preparation", {"command": "echo", "files": [{"source": "x", "path": "/abs"}]}))
    assert e.field == "job.preparation.files[0].path"


@pytest.mark.parametrize("files, field", [
    ([{"source": "a", "path": "x/y"}, {"source": "b", "path": "x/y"}], "task.files[1].path"),
    ([{"source": "a", "path": "x/y"}, {"source": "b", "path": "X/Y"}], "task.files[1].path"),  # case-insensitive
    ([{"source": "a", "path": "x/y"}, {"source": "b", "path": "./x//y"}], "task.files[1].path"),
    ([{"source": "dir1/data.bin"}, {"source": "dir2/data.bin"}], "task.files[1].path"),  # default: the file name
])
def test_duplicate_destinations(files, field):
    e = one_error(make("task.files", files))
    assert e.field == field and "task.files[0]" in e.problem and "own path" in e.fix


def test_same_path_in_files_and_common_files_is_fine():
    # they land in different directories: working dir (primary) vs task shared dir (every node)
    data = make(data=make("task.files", [{"source": "a", "path": "x"}]), path="task.common_files",
                value=[{"source": "a", "path": "x"}])
    assert parse_spec(data).task.files[0].path == "x"


def test_unsupported_source_scheme():
    e = one_error(make("task.files", [{"source": "s3://bucket/x", "path": "x"}]))
    assert e.field == "task.files[0].source" and "http(s)" in e.fix


def test_local_sources_resolve_against_the_spec_directory(tmp_path):
    s = parse_spec(make("task.common_files", [{"source": "in/case.tar.gz", "path": "case.tar.gz"}]), tmp_path)
    assert s.task.common_files[0].source == str((tmp_path / "in" / "case.tar.gz").resolve())


# ---------------------------------------------------------------------------------------------- durations

@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("7d", 604800), ("1h30m", 5400), ("1d2h3m4s", 93784),
    ("PT2H", 7200), ("PT1H30M", 5400), ("P7D", 604800), ("P1DT12H", 129600), ("PT90S", 90), ("pt2h", 7200),
    ("2H", 7200), (" 30m ", 1800), (3600, 3600),
])
def test_good_durations(text, seconds):
    assert parse_duration(text, "task.max_wall_clock") == seconds
    assert parse_spec(make("task.max_wall_clock", text)).task.max_wall_clock == seconds


@pytest.mark.parametrize("text", ["", "2", "2 h", "h", "1.5h", "-1h", "PT", "P", "2w", "P1W", "1h-30m", [], 2.5])
def test_bad_durations(text):
    with pytest.raises(SpecError) as e:
        parse_duration(text, "task.retention")
    assert e.value.field == "task.retention" and "PT2H" in e.value.fix


# ---------------------------------------------------------------------------------------------- several at once

def test_several_errors_are_reported_together():
    data = {
        "job": {"id": "bad id", "pools": "x"},
        "task": {"id": "t" * 70, "instances": 0, "mpi": {"flavor": "lam", "processes_per_node": 0},
                 "command": [], "files": [{"source": "a", "path": "/abs"}], "max_wall_clock": "forever"},
    }
    errs = errors_of(data)
    got = {e.field for e in errs}
    # job errors stop at the unknown key; every task error is there
    assert {"job.pools", "task.id", "task.instances", "task.mpi.flavor", "task.mpi.processes_per_node",
            "task.command", "task.files[0].path", "task.max_wall_clock"} <= got, got
    assert all(e.fix for e in errs)
    with pytest.raises(SpecErrors) as info:
        parse_spec(data)
    text = str(info.value)
    assert len(text.splitlines()) == len(errs)  # one line per problem


def test_missing_sections():
    errs = errors_of({"pool": {"id": "p"}})
    assert {e.field for e in errs} == {"job", "task"}
    assert "job.id" in next(e for e in errs if e.field == "job").fix


def test_not_a_mapping():
    [e] = errors_of(["job", "task"])
    assert "mapping" in e.problem and "key: value" in e.fix


# ---------------------------------------------------------------------------------------------- load_spec

def test_load_spec_missing_file(tmp_path):
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path / "nope.yaml")
    assert "nope.yaml" in e.value.field and "no such file" in e.value.problem and e.value.fix


def test_load_spec_bad_yaml_names_the_line(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("job:\n  id: x\ntask:\n  id: t\n  command: [a, b\n  instances: 2\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "not valid YAML" in e.value.problem and "line 6" in e.value.problem, str(e.value)
    assert "YAML" in e.value.fix


def test_load_spec_tab_indentation(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("job:\n\tid: x\n")
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "line 2" in e.value.problem


@pytest.mark.parametrize("text", ["", "\n\n# only a comment\n", "---\n"])
def test_load_spec_empty_file(tmp_path, text):
    p = tmp_path / "spec.yaml"
    p.write_text(text)
    with pytest.raises(SpecError) as e:
        load_spec(p)
    assert "empty" in e.value.problem and "mpibatch init hello" in e.value.fix


def test_load_spec_directory(tmp_path):
    with pytest.raises(SpecError) as e:
        load_spec(tmp_path)
    assert "cannot be read" in e.value.problem


def test_load_spec_example_and_relative_sources():
    example = Path(__file__).resolve().parent.parent / "examples" / "hello" / "spec.yaml"
    s = load_spec(example)
    assert s.task.instances == 3 and s.task.mpi.processes_per_node == 2
    assert s.task.common_files[0].source == str(example.parent / "hello.py")
    assert s.base_dir == example.parent


def test_load_spec_reports_the_validation_errors(tmp_path):
    p = tmp_path / "spec.yaml"
    p.write_text("job: {id: j}\ntask: {id: t, mpi: openmpi, command: [a], instances: 0, max_wall_clock: 2x}\n")
    with pytest.raises(SpecErrors) as e:
        load_spec(p)
    assert {x.field for x in e.value.errors} == {"task.instances", "task.max_wall_clock"}


# ---------------------------------------------------------------------------------------------- other forms

def test_short_forms():
    s = parse_spec({"job": {"id": "j", "release": "echo bye"},
                    "task": {"id": "t", "mpi": "IntelMPI", "command": "app > out.txt",
                             "files": ["https://example.org/data/x.dat?sv=1&sig=abc"], "outputs": ["r/*.txt"]}})
    assert s.task.mpi.flavor == "intelmpi" and s.task.mpi.processes_per_node == 1 and s.task.mpi.fabric == "auto"
    assert s.task.command.shell == "app > out.txt"
    assert s.task.files[0].path == "x.dat"  # the URL's file name, query dropped
    assert s.task.outputs[0].kind == "TaskOutput"
    assert s.job.release.command.shell == "echo bye"


def test_a_custom_kind_far_from_every_standard_one_is_kept() -> None:
    s = parse_spec(make("task.outputs", [{"pattern": "ck/*.h5", "kind": "Checkpoints"}]))
    assert s.task.outputs[0].kind == "Checkpoints"


def test_environment_values_become_strings():
    s = parse_spec(make("task.environment", {"OMP_NUM_THREADS": 1, "RATIO": 0.5, "NAME": "x y"}))
    assert s.task.environment == {"OMP_NUM_THREADS": "1", "RATIO": "0.5", "NAME": "x y"}


def test_environment_bool_must_be_quoted():
    e = one_error(make("task.environment", {"DEBUG": True}))
    assert e.field == "task.environment.DEBUG" and "quote" in e.fix


def test_release_task_takes_no_files():
    e = one_error(make("job.release", {"command": "echo", "files": ["https://example.org/x"]}))
    assert e.field == "job.release.files" and "job.preparation" in e.fix


def test_common_file_paths_under_the_launcher_dir_are_refused():
    with pytest.raises(SpecError) as e:
        parse_spec(make("task.common_files", [{"source": "my.sh", "path": "mpibatch/coordinate.sh"}]))
    assert e.value.field == "task.common_files[0].path"


def test_windows_argv_word_needing_quotes_is_refused():
    data = {"job": {"id": "j"}, "pool": {"image": "windows"},
            "task": {"id": "t", "mpi": "msmpi", "command": ["C:\\Program Files\\app.exe", "-x"]}}
    with pytest.raises(SpecError) as e:
        parse_spec(data)
    assert e.value.field == "task.command[0]" and "shell-line string" in e.value.fix


@pytest.mark.parametrize("text, seconds", [("PT2H", 7200), ("P1DT1S", 86401), ("PT1M30S", 90), ("PT1.5S", 1.5),
                                           ("P", None), ("PT", None), ("2h", None)])
def test_one_iso8601_reader_for_the_spec_and_the_emulator(text: str, seconds: float | None) -> None:
    from mpibatch.durations import iso_seconds
    from mpibatch.emulator.core import seconds as emulator_seconds

    assert iso_seconds(text) == seconds and emulator_seconds(text) == seconds
    if seconds is not None and seconds >= 1:
        assert parse_duration(text, "f") == int(seconds)
