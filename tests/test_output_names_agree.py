"""The node-side persist step and the client agree on every output name: persist.py runs as on a Batch
node (a copy with only its shipped neighbours, `python3 -E -s -S`: no site-packages, standard library only)
against Azurite, and what it stored is exactly what the client's File Conventions API lists and expects."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient
from hypothesis import given
from hypothesis import strategies as st
from mpibatch.launchers import script_path
from mpibatch.launchers.protocol import InstanceRecord

from mpibatch import conventions
from mpibatch.conventions import TaskOutputStorage, job_container_name, prepare_output_storage
from mpibatch.executors.azure.storage import PERSIST_PERMISSIONS
from mpibatch.render import NODE_FILES
from tests.infra.fixtures import Azurite, azurite  # noqa: F401
from tests.test_fileconventions import sas_url


def test_the_shipped_node_scripts_are_what_render_ships() -> None:
    from mpibatch.render import render
    from tests.test_render import FULL, make_spec

    paths = [f.path for f in render(make_spec(**FULL)).common_files]
    for name in NODE_FILES:  # what render() ships to every node, nothing else
        assert any(p.endswith("/" + name) for p in paths), name


@pytest.mark.azure
def test_persist_on_a_node_and_the_client_agree_on_every_name(azurite: Azurite, tmp_path: Path) -> None:
    job, task = "agree-job", "Task_7"
    prepare_output_storage(job, connection_string=azurite.connection_string)
    node = tmp_path / "node"
    launchers = node / "shared" / "launchers"
    launchers.mkdir(parents=True)
    for name in NODE_FILES:  # what render() ships to every node, nothing else
        shutil.copy(script_path(name), launchers / name)
    task_dir = node / "task"
    wd = task_dir / "wd"
    (wd / "results" / "deep").mkdir(parents=True)
    files = {"results/a.h5": b"a" * 10, "results/deep/b.csv": b"b,c\n", "results/line\nbreak.txt": b"nl",
             "results/sp ace & $x.txt": b"s", "other.log": b"log"}
    for rel, data in files.items():
        (wd / rel).write_bytes(data)
    (wd / "results" / "outside").symlink_to("/etc/hostname")  # never followed
    (task_dir / "stdout.txt").write_bytes(b"out\n")
    (task_dir / "stderr.txt").write_bytes(b"")
    env = {"PATH": os.environ["PATH"],
           "MPIBATCH_PERSIST_URL": sas_url(azurite, job_container_name(job), PERSIST_PERMISSIONS),
           "AZ_BATCH_HOST_LIST": "10.0.0.4,10.0.0.5,10.0.0.6", "AZ_BATCH_MASTER_NODE": "10.0.0.4:6000",
           "PMI_RANK": "2"}
    outputs = [("TaskOutput", "results/**"), ("TaskLog", "*.log")]
    argv = [sys.executable, "-E", "-s", "-S", str(launchers / "persist.py"), "--task", task]
    for kind, pattern in outputs:
        argv += ["--output", f"{kind}={pattern}"]
    done = subprocess.run(argv, cwd=wd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr

    # What the client expects, from the same patterns and the client's own name builders.
    expected = {conventions.instance_output_blob(task, "TaskLog", 2, f"../{n}") for n in conventions.LOG_FILES}
    expected.add(conventions.instance_info_blob(task, 2))
    for kind, pattern in outputs:
        for rel in conventions.match_outputs(str(wd), [pattern]):
            expected.add(conventions.instance_output_blob(task, kind, 2, rel))
    assert "results/line\nbreak.txt" in conventions.match_outputs(str(wd), ["results/**"])
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    stored = {b.name: b for b in service.get_container_client(job_container_name(job)).list_blobs()}
    assert set(stored) == expected

    listed = TaskOutputStorage(job, task, connection_string=azurite.connection_string, instance=2).list_outputs()
    assert {(o.kind, o.path) for o in listed} == \
        {("TaskOutput", r) for r in files if r.startswith("results/")} | {("TaskLog", "other.log")} | \
        {("TaskLog", n) for n in (*conventions.LOG_FILES, conventions.INSTANCE_INFO)}
    info_blob = TaskOutputStorage(job, task, connection_string=azurite.connection_string, instance=2) \
        .get_output("TaskLog", conventions.INSTANCE_INFO)
    info_blob.download_to(tmp_path / "instance.json")
    record = InstanceRecord.from_json((tmp_path / "instance.json").read_bytes())  # the client's reader
    assert record.index == 2 and record.final and not record.failed and record.host == "10.0.0.6"
    assert record.declared == outputs  # what collect reads instead of re-deriving it
    assert set(record.files) == expected - {conventions.instance_info_blob(task, 2)}
    info = json.loads((tmp_path / "instance.json").read_text())
    import base64
    for name, rec in info["files"].items():  # size and whole-file MD5 recorded, as storage has them
        assert rec["size"] == stored[name].size
        assert base64.b64decode(rec["md5"]) == bytes(stored[name].content_settings.content_md5)


ids = st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True)
# the kind rule (protocol.KIND_RULE): a letter, then letters and digits
kinds = st.sampled_from(conventions.KINDS) | st.from_regex(r"[A-Za-z][A-Za-z0-9]{0,11}", fullmatch=True)
segment = st.text(st.characters(blacklist_characters="/\\\x00", blacklist_categories=("Cs",)), min_size=1,
                  max_size=12).filter(lambda s: s not in (".", ".."))
paths = st.lists(segment, min_size=1, max_size=4).map("/".join)


@given(ids, kinds, st.integers(0, 10_000), paths)
def test_every_built_name_parses_back(task: str, kind: str, instance: int, path: str) -> None:
    name = conventions.instance_output_blob(task, kind, instance, path)
    assert conventions.parse_task_blob(task, name) == (kind, instance, path)
    net = conventions.task_output_blob(task, kind, path)
    assert conventions.parse_task_blob(task, net, instances=False) == (kind, None, path)
    if kind in conventions.JOB_KINDS:
        assert conventions.parse_job_blob(conventions.job_output_blob(kind, path)) == (kind, None, path)
