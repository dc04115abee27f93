"""Pure parts of the Azure executor, on real azure-batch models built from REST JSON (no service).

How a Batch task and its subtasks become a TaskResult (phases, instance numbering), and how task
collections are cut (at most 100 tasks, under 1 MB).
"""
from __future__ import annotations

import json
from typing import Any

import pytest
from azure.batch import models as bm

from mpibatch.errors import SpecError
from mpibatch.executors.azure.client import Batch, BatchAccount
from mpibatch.executors.azure.submit import MAX_TASKS_PER_REQUEST, iter_chunks
from mpibatch.executors.azure.watch import map_subtasks, task_result

BATCH = Batch(client=object(), account=BatchAccount("http://127.0.0.1:1", "acct", True), env={})


def _task(execution: dict[str, Any], instances: int = 3, state: str = "completed") -> Any:
    return bm.BatchTask({"id": "t", "state": state, "multiInstanceSettings": {"numberOfInstances": instances},
                         "executionInfo": {"retryCount": 0, "requeueCount": 0, **execution},
                         "nodeInfo": {"nodeId": "node-0", "poolId": "p"}})


def _sub(sid: int, node: str, exit_code: int | None) -> Any:
    body: dict[str, Any] = {"id": sid, "state": "completed", "nodeInfo": {"nodeId": node, "poolId": "p"}}
    if exit_code is not None:
        body["exitCode"] = exit_code
    return bm.BatchSubtask(body)


def test_a_subtask_failing_before_the_application_is_a_coordination_failure() -> None:
    task = _task({"failureInfo": {"category": "usererror", "code": "CommandLaunchFailed",
                                  "message": "coordination failed"}, "result": "failure"})
    subs = [_sub(1, "node-2", 0), _sub(2, "node-1", 7)]
    node_ids = {1: "node-1", 2: "node-2"}  # what the nodes persisted (instance.json)
    index_of = map_subtasks(subs, node_ids, 3, [], "t")
    assert index_of == {2: 1, 1: 2}
    r = task_result(BATCH, "j", task, subs, index_of)
    assert r.failure is not None and r.failure.phase == "coordination" and r.failure.instance == 1
    assert r.failure.reason.startswith("the coordination command exited with code 7 on instance 1 (subtask 2, "
                                       "node node-1)")
    row = next(i for i in r.instances if i.index == r.failure.instance)
    assert row.coordination_exit_code == 7 and row.node_id == "node-1"
    assert r.state == "failed"


def test_without_persisted_nodes_subtasks_take_instances_in_id_order() -> None:
    task = _task({"failureInfo": {"category": "usererror", "code": "CommandLaunchFailed", "message": "x"}})
    r = task_result(BATCH, "j", task, [_sub(2, "node-1", 3), _sub(1, "node-2", 0)])
    assert r.failure is not None and r.failure.instance == 2 and "instance 2 (subtask 2" in r.failure.reason
    assert [(i.index, i.coordination_exit_code) for i in r.instances] == [(0, None), (1, 0), (2, 3)]


def test_the_application_failing_on_the_primary_is_running() -> None:
    r = task_result(BATCH, "j", _task({"exitCode": 2, "result": "failure"}), [_sub(1, "n1", 0), _sub(2, "n2", 0)])
    assert r.failure is not None and (r.failure.phase, r.failure.instance) == ("running", 0)
    assert r.state == "completed" and r.exit_code == 2


def test_a_resource_file_failure_is_files_and_hides_the_sas() -> None:
    task = _task({"failureInfo": {"category": "usererror", "code": "BlobNotFound",
                                  "message": "https://a.blob.core.windows.net/c/x?sv=1&sig=SECRETSIG not found"}})
    r = task_result(BATCH, "j", task, [])
    assert r.failure is not None and r.failure.phase == "files" and "SECRETSIG" not in r.failure.reason


def test_task_collections_hold_at_most_100_tasks_under_1_mb() -> None:
    items = [(f"t{i}", json.dumps({"id": f"t{i}", "pad": "x" * 12_000}).encode()) for i in range(250)]
    chunks = list(iter_chunks(items))
    assert [tid for c in chunks for tid, _ in c] == [tid for tid, _ in items]  # all, in order, once
    for c in chunks:
        body = b'{"value":[' + b",".join(e for _, e in c) + b"]}"
        assert len(c) <= MAX_TASKS_PER_REQUEST and len(body) < 1_000_000
    assert max(len(c) for c in chunks) < MAX_TASKS_PER_REQUEST  # the size cut them, not the count
    small = list(iter_chunks([(f"s{i}", b'{"id":"s"}') for i in range(250)]))
    assert [len(c) for c in small] == [100, 100, 50]


def test_a_task_over_the_request_limit_is_bad_input() -> None:
    with pytest.raises(SpecError, match="over Batch's 1 MB request limit"):
        list(iter_chunks([("big", b"x" * 1_000_000)]))


def test_fabric_auto_follows_the_pool_only_for_tasks_render_made() -> None:
    from dataclasses import replace
    from pathlib import Path

    from mpibatch.executors.azure.pools import follow_pool_size
    from mpibatch.render import render
    from mpibatch.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "examples" / "hello" / "spec.yaml")
    pool = {"id": "p", "vmSize": "Standard_HB120rs_v3", "enableInterNodeCommunication": True}
    said: list[tuple[str, str]] = []
    r = render(spec)
    assert r.fabric == "none"
    followed = follow_pool_size(r, pool, lambda phase, detail: said.append((phase, detail)))
    # the re-rendered task carries the pool's fabric: the flavour's env, and the node-side InfiniBand check
    assert followed.fabric == "sriov" and "--fabric sriov" in followed.coordination_command_line
    assert "--fabric sriov" not in r.coordination_command_line
    assert followed.environment.items() >= r.flavor.fabric_env("sriov").items()
    assert said == [("fabric", "auto: sriov, from the pool's VM size Standard_HB120rs_v3")]
    custom = replace(r, command_line="/bin/bash -c 'my own line'")  # e.g. the latency benchmark's
    assert follow_pool_size(custom, pool, lambda *a: None) is custom
    tcp = render(replace(spec, task=replace(spec.task, mpi=replace(spec.task.mpi, fabric="tcp"))))
    assert follow_pool_size(tcp, pool, lambda *a: None) is tcp
    plain = {"id": "p", "vmSize": "Standard_D4s_v3"}
    assert follow_pool_size(r, plain, lambda *a: None) is r
