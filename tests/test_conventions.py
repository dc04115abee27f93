"""Tests for mpibatch.conventions: Batch File Conventions names, byte-exact with the .NET library."""
from __future__ import annotations

import hashlib
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpibatch.conventions import (
    JOB_KINDS,
    KINDS,
    TASK_KINDS,
    instance_output_blob,
    instance_output_prefix,
    job_container_name,
    job_output_blob,
    job_output_prefix,
    normalize_relative_path,
    task_output_blob,
    task_output_prefix,
    validate_job_id,
    validate_kind,
    validate_task_id,
)
from mpibatch.errors import SpecError


def sha1_of_lower(job_id: str) -> str:
    return hashlib.sha1(job_id.lower().encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------------------ container names


def test_readme_examples() -> None:
    # Microsoft.Azure.Batch.Conventions.Files README
    assert job_container_name("MyTerrificJob") == "job-myterrificjob"
    assert (job_container_name("my-_EVEN_MORE_-terrific-job")
            == "job-my-even-more-te-68b05a7d8aa6aa65b9a6892c667a6c406a16ad65")
    assert sha1_of_lower("my-_EVEN_MORE_-terrific-job") == "68b05a7d8aa6aa65b9a6892c667a6c406a16ad65"
    # the hash is of the lower-cased id, not of the id as given
    assert hashlib.sha1(b"my-_EVEN_MORE_-terrific-job").hexdigest() != "68b05a7d8aa6aa65b9a6892c667a6c406a16ad65"


# Expected values copied from the .NET library's own unit tests (ContainerNameUtilsTests.cs).
DOTNET_CASES = [
    ("job-15", "job-job-15"),
    ("MyTerrificJob", "job-myterrificjob"),
    ("J", "job-j"),
    ("j", "job-j"),
    ("my_job-bob", "job-my-job-bob-e04620bc2add214df74e158ba60d24273a0e0927"),
    ("-my_job-sam--", "job-my-job-sam-47f54d840815af2592a12213db05f8a8277a098d"),
    ("my-_EVEN_MORE_-terrific-job", "job-my-even-more-te-68b05a7d8aa6aa65b9a6892c667a6c406a16ad65"),
    ("---", "job-job-58b63e273b964039d6ef432a415df3f177c818e5"),
    ("-_-", "job-job-6fe16b401f95cfcf3aba78023b0a14ef782813e1"),
    ("-", "job-job-3bc15c8aae3e4124dd409035f32ea2fd6835efc9"),
    ("_", "job-job-53a0acfad59379b3e050338bf9f23cfc172ee787"),
    ("myverylongjobnameallinonewordreallystartingtogetreallysillynow",
     "job-myverylongjobna-a8700e4947d0c8c621e53b24246aa0349d830e41"),
]


@pytest.mark.parametrize("job_id, expected", DOTNET_CASES)
def test_dotnet_unit_test_cases(job_id: str, expected: str) -> None:
    assert job_container_name(job_id) == expected
    if len(expected) > 44:  # hashed form: our own hashlib agrees with .NET's SHA-1
        assert expected.endswith("-" + sha1_of_lower(job_id))


# Cases worked out by hand from the naming rules of the .NET ContainerNameUtils; the hash computed here, independently.
HAND_CASES = [
    # (job id, expected prefix before "-<sha1>", or None when the name is not hashed)
    ("a" * 59, None),  # "job-" + 59 = 63 characters: still fits
    ("A" * 59, None),
    ("a" * 60, "a" * 15),  # one too long
    ("abc" * 21 + "d", "abcabcabcabcabc"),  # 64 characters
    ("Job-", "job"),  # lower-cases to something ending in '-'
    ("RUN-2024-", "run-2024"),
    ("a--b", "a-b"),  # '--' inside
    ("a---_--b", "a-b"),
    ("A_B", "a-b"),  # '_' is not allowed in container names
    ("_leading", "leading"),
    ("-leading", "leading"),
    ("MySchedule:job-1", "myschedule-job"),  # ':' (job-schedule jobs); cut to 15 leaves a trailing '-' that is trimmed
    ("abcdefghijklmn_opq", "abcdefghijklmn"),  # cut at 15 lands on a '-', trimmed again
    ("abcdefghijklmno_pq", "abcdefghijklmno"),  # cut at 15 lands just before the '-'
    ("abcdefghijklmnopq_", "abcdefghijklmnop"[:15]),
    ("x_", "x"),
    ("__--__", "job"),  # nothing left after folding and trimming
]


@pytest.mark.parametrize("job_id, stem", HAND_CASES)
def test_hand_worked_cases(job_id: str, stem: str | None) -> None:
    name = job_container_name(job_id)
    if stem is None:
        assert name == "job-" + job_id.lower()
    else:
        assert name == f"job-{stem}-{sha1_of_lower(job_id)}"


def test_case_insensitive() -> None:
    assert job_container_name("MyJob_1") == job_container_name("myjob_1") == job_container_name("MYJOB_1")


_CONTAINER = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")  # Azure rules: 3-63, no '--', no edge '-'
job_ids = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True)


@given(job_ids)
@settings(max_examples=300, deadline=None)
def test_every_valid_job_id_gives_a_valid_container_name(job_id: str) -> None:
    name = job_container_name(job_id)
    assert _CONTAINER.match(name), name
    assert name.startswith("job-")
    assert job_container_name(job_id.swapcase()) == name
    lowered = job_id.lower()
    plain = len(lowered) <= 59 and re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9]))*", lowered)
    if plain:
        assert name == "job-" + lowered  # valid ids are not munged
    else:
        assert name.endswith("-" + sha1_of_lower(job_id)) and len(name) <= 4 + 15 + 1 + 40


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "a.b", "a" * 65, "ü", "a:b", "sched:job-", "sched:job-x", ":job-1",
                                 "a\n", "s:job-1\n", "$(id)"])
def test_invalid_job_ids(bad: str) -> None:
    with pytest.raises(SpecError) as err:
        job_container_name(bad)
    assert err.value.field == "job.id"
    assert "64" in str(err.value)  # the fix states the rule
    with pytest.raises(SpecError):
        validate_job_id(bad)


def test_job_id_errors_name_the_field_and_problem() -> None:
    with pytest.raises(SpecError) as err:
        job_container_name("a" * 65)
    assert "65 characters" in str(err.value)
    with pytest.raises(SpecError) as err:
        job_container_name("")
    assert "empty" in str(err.value)
    with pytest.raises(SpecError) as err:
        job_container_name(None)  # type: ignore[arg-type]
    assert "NoneType" in str(err.value)
    with pytest.raises(SpecError) as err:
        job_container_name("a b", field="spec.job.id")
    assert str(err.value).startswith("spec.job.id: 'a b'")


# ------------------------------------------------------------------------------------------------ blob names


def test_kinds() -> None:
    assert KINDS == ("TaskOutput", "TaskPreview", "TaskLog", "TaskIntermediate", "JobOutput", "JobPreview")
    assert TASK_KINDS + JOB_KINDS == KINDS


@pytest.mark.parametrize(
    "task_id, kind, path, expected",
    [
        ("MyTask", "TaskOutput", "out.txt", "MyTask/$TaskOutput/out.txt"),
        ("mpi-Task_7", "TaskLog", "../stdout.txt", "mpi-Task_7/$TaskLog/stdout.txt"),
        ("t1", "TaskLog", "..\\stderr.txt", "t1/$TaskLog/stderr.txt"),
        ("t1", "TaskPreview", "dir\\sub\\f.png", "t1/$TaskPreview/dir/sub/f.png"),
        ("t1", "TaskIntermediate", "../../../x.chk", "t1/$TaskIntermediate/x.chk"),
        ("t1", "TaskOutput", "./a.txt", "t1/$TaskOutput/a.txt"),
        ("t1", "TaskOutput", "./../.\\b.txt", "t1/$TaskOutput/b.txt"),
        ("t1", "TaskOutput", "a/../b.txt", "t1/$TaskOutput/a/../b.txt"),  # kept, as .NET keeps it
        ("t1", "TaskOutput", "a/./b.txt", "t1/$TaskOutput/a/./b.txt"),
        ("t1", "TaskOutput", "..foo/x", "t1/$TaskOutput/..foo/x"),  # not a '../' segment
        ("t1", "TaskOutput", "results/run 1/out é.h5", "t1/$TaskOutput/results/run 1/out é.h5"),
        ("t1", "Checkpoints", "c.bin", "t1/$Checkpoints/c.bin"),  # custom kind
        ("t1", "taskoutput", "c.bin", "t1/$taskoutput/c.bin"),  # kinds are case-sensitive: a different kind
        ("t1", "JobOutput", "c.bin", "t1/$JobOutput/c.bin"),  # a task may use any kind text, as Custom() allows
        ("a" * 64, "TaskLog", "x", "a" * 64 + "/$TaskLog/x"),
    ],
)
def test_task_output_blob(task_id: str, kind: str, path: str, expected: str) -> None:
    assert task_output_blob(task_id, kind, path) == expected
    assert expected.startswith(task_output_prefix(task_id, kind) + "/")


@pytest.mark.parametrize(
    "kind, path, expected",
    [
        ("JobOutput", "summary.csv", "$JobOutput/summary.csv"),
        ("JobPreview", "plots\\p.png", "$JobPreview/plots/p.png"),
        ("JobOutput", "../report.pdf", "$JobOutput/report.pdf"),
        ("Custom1", "x", "$Custom1/x"),
    ],
)
def test_job_output_blob(kind: str, path: str, expected: str) -> None:
    assert job_output_blob(kind, path) == expected
    assert expected.startswith(job_output_prefix(kind) + "/")


def test_prefixes() -> None:
    assert task_output_prefix("t1", "TaskLog") == "t1/$TaskLog"
    assert task_output_prefix("MixedCase", "TaskOutput") == "MixedCase/$TaskOutput"
    assert job_output_prefix("JobOutput") == "$JobOutput"
    assert instance_output_prefix("t1", "TaskLog", 0) == "t1/$TaskLog/0"


@pytest.mark.parametrize(
    "instance, path, expected",
    [
        (0, "../stdout.txt", "mpi-1/$TaskLog/0/stdout.txt"),
        (1, "../stderr.txt", "mpi-1/$TaskLog/1/stderr.txt"),
        (99, "out\\rank99.log", "mpi-1/$TaskLog/99/out/rank99.log"),
    ],
)
def test_instance_output_blob(instance: int, path: str, expected: str) -> None:
    assert instance_output_blob("mpi-1", "TaskLog", instance, path) == expected
    assert expected.startswith(instance_output_prefix("mpi-1", "TaskLog", instance) + "/")


@pytest.mark.parametrize("bad", [-1, True, False, "1", 1.0, None])
def test_instance_must_be_a_non_negative_int(bad: object) -> None:
    with pytest.raises(SpecError, match="instance"):
        instance_output_blob("t1", "TaskLog", bad, "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "path, words",
    [
        ("", ["empty"]),
        ("/etc/passwd", ["absolute"]),
        ("\\share\\x", ["absolute"]),
        ("C:\\x.txt", ["absolute"]),
        ("c:/x.txt", ["absolute"]),
        ("..", ["names no file"]),
        ("../", ["names no file"]),
        ("../..", ["names no file"]),
        ("./", ["names no file"]),
        (".", ["names no file"]),
        ("..\\..\\", ["names no file"]),
        ("dir/", ["directory"]),
        ("dir\\", ["directory"]),
        (".././/x", ["'/'"]),
    ],
)
def test_bad_paths(path: str, words: list[str]) -> None:
    for fn in (
        lambda: task_output_blob("t1", "TaskOutput", path),
        lambda: job_output_blob("JobOutput", path),
        lambda: instance_output_blob("t1", "TaskOutput", 0, path),
        lambda: normalize_relative_path(path),
    ):
        with pytest.raises(SpecError) as err:
            fn()
        assert err.value.field == "output.path"
        for w in words:
            assert w in str(err.value)


def test_blob_name_length_limit() -> None:
    prefix_len = len("t1/$TaskOutput/")
    assert len(task_output_blob("t1", "TaskOutput", "x" * (1024 - prefix_len))) == 1024
    with pytest.raises(SpecError, match="1024"):
        task_output_blob("t1", "TaskOutput", "x" * (1025 - prefix_len))


@pytest.mark.parametrize(
    "kind, words",
    [
        ("", ["empty"]),
        ("$TaskOutput", ["drop the leading '$'", "'TaskOutput'"]),
        ("Task/Output", ["not a valid output kind", "letters and digits"]),
        ("Task Output", ["not a valid output kind"]),
        ("Task-Output", ["not a valid output kind"]),
        ("Täsk", ["not a valid output kind"]),
        ("TaskLog\n", ["not a valid output kind"]),
        (None, ["NoneType"]),
    ],
)
def test_bad_kinds(kind: str, words: list[str]) -> None:
    for fn in (
        lambda: task_output_blob("t1", kind, "x"),
        lambda: job_output_blob(kind, "x"),
        lambda: task_output_prefix("t1", kind),
        lambda: validate_kind(kind),
    ):
        with pytest.raises(SpecError) as err:
            fn()
        assert err.value.field == "output.kind"
        for w in words:
            assert w in str(err.value)


@pytest.mark.parametrize("bad", ["", "a b", "a/b", "a" * 65, "sched:job-1", "t1/..", "t1\n", None])
def test_bad_task_ids(bad: str) -> None:
    with pytest.raises(SpecError) as err:
        task_output_blob(bad, "TaskOutput", "x")
    assert err.value.field == "task.id"
    with pytest.raises(SpecError):
        validate_task_id(bad)


def test_custom_field_names() -> None:
    with pytest.raises(SpecError) as err:
        task_output_blob("t1", "TaskOutput", "/abs", path_field="task.outputs[2].path")
    assert err.value.field == "task.outputs[2].path"
    with pytest.raises(SpecError) as err:
        task_output_blob("t 1", "TaskOutput", "x", task_field="tasks[0].id")
    assert err.value.field == "tasks[0].id"


@given(
    st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True),
    st.sampled_from(KINDS),
    st.lists(st.from_regex(r"[A-Za-z0-9_. -]{1,12}", fullmatch=True).filter(lambda s: s not in (".", "..")),
             min_size=1, max_size=4),
    st.integers(0, 3),
)
@settings(max_examples=100, deadline=None)
def test_blob_layout_property(task_id: str, kind: str, segments: list[str], ups: int) -> None:
    rel = "/".join(segments)
    given_path = "../" * ups + rel.replace("/", "\\")
    assert task_output_blob(task_id, kind, given_path) == f"{task_id}/${kind}/{rel}"
    assert job_output_blob(kind, given_path) == f"${kind}/{rel}"
    assert instance_output_blob(task_id, kind, ups, given_path) == f"{task_id}/${kind}/{ups}/{rel}"


def test_double_star_never_selects_mpibatch_files(tmp_path) -> None:
    """Issue 19 item 8: the node's own files and the durable writer's temporaries are not outputs."""
    from mpibatch.launchers.outputnames import select_outputs

    from mpibatch.conventions import match_outputs

    for rel in (".mpibatch-node", ".mpibatch-node.env", ".mpibatch-rank", "sub/.mpibatch-0a1b2c3d.part",
                "result.txt", "sub/data.h5", "sub/.hidden"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("x")
    assert match_outputs(str(tmp_path), ["**"]) == ["result.txt", "sub/.hidden", "sub/data.h5"]
    assert match_outputs(str(tmp_path), [".mpibatch-node"]) == []  # even when named
    assert select_outputs(["a/.mpibatch-rank", "a/b"], ["a/*"]) == ["a/b"]  # the SSH executor's listing
