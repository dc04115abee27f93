"""mpibatch.poolcheck: every rule, from spec pool sections and from REST pool JSON (tests/data/pools) made
into facts by mpibatch.poolfacts."""
from __future__ import annotations

import copy
import json
from dataclasses import replace
from pathlib import Path

import pytest

from mpibatch import poolcheck
from mpibatch.errors import SpecError
from mpibatch.poolcheck import SPOT_DOCS, Problem, check
from mpibatch.poolfacts import PoolFacts, pool_from_rest, pool_from_spec
from mpibatch.spec import IMAGE_ALIASES, parse_spec

POOLS = Path(__file__).parent / "data" / "pools"


def rest(name: str) -> dict:
    return json.loads((POOLS / name).read_text())


def spec(flavor: str = "intelmpi", instances: int = 4, fabric: str = "auto", pool: dict | None = None,
         job_pool: str | None = None, ppn: int = 2):
    data = {"job": {"id": "j1"}, "task": {"id": "t1", "instances": instances, "command": ["app"],
                                          "mpi": {"flavor": flavor, "fabric": fabric, "processes_per_node": ppn}}}
    if job_pool:
        data["job"]["pool"] = job_pool
    if pool is not None:
        data["pool"] = pool
    return parse_spec(data)


GOOD_POOL = {"id": "hbpool", "vm_size": "Standard_HB120rs_v3", "nodes": 4, "image": "ubuntu-hpc"}


def pool_spec(**over) -> dict:
    return {**GOOD_POOL, **over}


def only(problems: list[Problem], field: str) -> Problem:
    hits = [p for p in problems if p.field == field]
    assert len(hits) == 1, f"expected one problem on {field}, got {problems}"
    return hits[0]


def fields(problems: list[Problem]) -> set[tuple[str, str]]:
    return {(p.field, p.severity) for p in problems}


# ---------------------------------------------------------------------------------------------- clean pools

def test_good_spec_pool_is_clean():
    s = spec(pool=pool_spec())
    assert check(s, pool_from_spec(s.pool)) == []


def test_good_rest_pool_is_clean():
    s = spec(pool=pool_spec(), job_pool="hbpool")
    facts = pool_from_rest(rest("hbv3_ubuntu_hpc.json"))
    assert facts.source == "rest" and facts.nodes == 4 and facts.os == "linux" and facts.is_hpc_image
    assert check(s, facts) == []
    assert "hbpool" in poolcheck.summary(s, facts) and "sriov" in poolcheck.summary(s, facts)


def test_windows_msmpi_pool_is_clean():
    s = spec(flavor="msmpi", instances=2, pool={"id": "winpool", "vm_size": "Standard_HC44rs", "nodes": 2,
                                                "image": "windows"})
    assert check(s, pool_from_rest(rest("hc_windows.json"))) == []
    assert check(s, pool_from_spec(s.pool)) == []


# ---------------------------------------------------------------------------------------------- pool_from_rest

def test_pool_from_rest_reads_every_field():
    f = pool_from_rest(rest("d4_general_purpose.json"))
    assert (f.id, f.vm_size, f.dedicated_nodes, f.low_priority_nodes) == ("generalpool", "Standard_D4S_V3", 2, 2)
    assert f.inter_node_communication is False  # omitted: the REST default is false
    assert f.task_slots_per_node == 4
    assert f.image.publisher == "canonical" and f.node_agent == "batch.node.ubuntu 22.04"
    assert (f.state, f.allocation_state) == ("active", "steady")


def test_pool_from_rest_old_api_max_tasks_per_node():
    assert pool_from_rest(rest("h16r_centos_hpc.json")).task_slots_per_node == 1
    data = rest("h16r_centos_hpc.json") | {"maxTasksPerNode": 2}
    assert pool_from_rest(data).task_slots_per_node == 2


def test_pool_from_rest_counts_target_while_resizing_and_current_when_steady():
    resizing = pool_from_rest(rest("hbv3_plain_ubuntu_resizing.json"))
    assert resizing.allocation_state == "resizing" and resizing.dedicated_nodes == 4  # heading for 4
    stuck = pool_from_rest(rest("hc_quota_stuck.json"))
    assert stuck.dedicated_nodes == 2  # steady below target: a resize error, 2 is all there is
    assert stuck.resize_errors and "AccountCoreQuotaReached" in stuck.resize_errors[0]


@pytest.mark.parametrize("data, field", [
    ([], "pool"),
    ({"displayName": "x"}, "pool"),
    ({"id": "p", "vmSize": "Standard_D2s_v3", "taskSlotsPerNode": 0}, "pool.taskSlotsPerNode"),
    ({"id": "p", "vmSize": "Standard_D2s_v3", "enableInterNodeCommunication": "yes"},
     "pool.enableInterNodeCommunication"),
    ({"id": "p", "vmSize": "Standard_D2s_v3", "targetDedicatedNodes": -1}, "pool.targetDedicatedNodes"),
    ({"id": "p", "vmSize": "not a size!"}, "pool.vmSize"),
])
def test_pool_from_rest_rejects_what_is_not_a_pool(data, field):
    with pytest.raises(SpecError) as e:
        pool_from_rest(data)
    assert e.value.field == field and e.value.fix


def test_pool_from_spec_keeps_the_section():
    s = spec(pool=pool_spec(spot_nodes=1, task_slots_per_node=1))
    f = pool_from_spec(s.pool)
    assert (f.source, f.id, f.dedicated_nodes, f.low_priority_nodes, f.nodes) == ("spec", "hbpool", 4, 1, 5)
    assert f.image == IMAGE_ALIASES["ubuntu-hpc"] and f.os == "linux"


# ---------------------------------------------------------------------------------------------- each rule

# (name, spec kwargs, pool facts override on the good spec pool, field, severity, words in message, words in fix)
RULES = [
    ("inter-node off", {}, {"inter_node_communication": False}, "pool.inter_node_communication", "error",
     ["inter-node", "never"], ["inter_node_communication: true"]),
    ("two slots", {}, {"task_slots_per_node": 2}, "pool.task_slots_per_node", "error",
     ["2 task slots", "never"], ["task_slots_per_node: 1", "processes_per_node"]),
    ("more instances than nodes", {"instances": 4}, {"dedicated_nodes": 3}, "task.instances", "error",
     ["4 instances", "3 node"], ["lower task.instances to 3", "at least 4"]),
    ("zero nodes", {}, {"dedicated_nodes": 0}, "pool.nodes", "error", ["0 nodes"], ["at least 4"]),
    ("mixed dedicated and Spot", {}, {"dedicated_nodes": 2, "low_priority_nodes": 2},
     "pool.spot_nodes", "warning", ["mixes dedicated", "preempted", "requeued", SPOT_DOCS],
     ["task.checkpoint", "dedicated nodes only (pool.spot_nodes: 0)"]),
    ("Spot only", {}, {"dedicated_nodes": 0, "low_priority_nodes": 4},
     "pool.spot_nodes", "warning", ["Spot/low-priority", "multi-instance tasks", "inter-node communication"],
     ["dedicated"]),
    ("Spot pool, task without a checkpoint", {}, {"dedicated_nodes": 0, "low_priority_nodes": 4},
     "task.checkpoint", "warning", ["Spot/low-priority", "no checkpoint", "first step"],
     ["task.checkpoint: {pattern:", "MPIBATCH_RESTART"]),
    ("sriov on non-RDMA size", {"fabric": "sriov"}, {"vm_size": "Standard_D16s_v5"}, "task.mpi.fabric", "error",
     ["sriov", "no InfiniBand"], ["fabric: auto or tcp"]),
    ("networkdirect on non-RDMA size", {"fabric": "networkdirect"}, {"vm_size": "Standard_F8s_v2"},
     "task.mpi.fabric", "error", ["networkdirect", "no InfiniBand"], ["fabric: auto or tcp"]),
    ("networkdirect asked on an SR-IOV size", {"fabric": "networkdirect"}, {}, "task.mpi.fabric", "error",
     ["networkdirect settings", "sriov size"], ["fabric: auto"]),
    ("tcp on an RDMA size", {"fabric": "tcp"}, {}, "task.mpi.fabric", "warning", ["tcp", "10x"], ["fabric: auto"]),
    ("RDMA size, non-HPC image", {}, {"image": IMAGE_ALIASES["ubuntu"]}, "pool.image", "error",
     ["no InfiniBand drivers", "0001-com-ubuntu-server-jammy"], ["ubuntu-hpc", "almalinux-hpc"]),
    ("openmpi on NetworkDirect", {"flavor": "openmpi"}, {"vm_size": "Standard_H16r"}, "task.mpi.flavor", "error",
     ["Open MPI", "NetworkDirect", "TCP"], ["intelmpi"]),
    ("mpich on NetworkDirect", {"flavor": "mpich"}, {"vm_size": "Standard_A9"}, "task.mpi.flavor", "error",
     ["MPICH", "NetworkDirect"], ["intelmpi"]),
    ("intelmpi on NetworkDirect needs DAPL", {"flavor": "intelmpi"}, {"vm_size": "Standard_H16mr"},
     "task.mpi.flavor", "warning", ["DAPL", "2019"], ["Intel MPI 2018"]),
    ("msmpi on a Linux pool", {"flavor": "msmpi"}, {}, "task.mpi.flavor", "error",
     ["msmpi needs a Windows pool", "Linux"], ["intelmpi, openmpi or mpich"]),
    ("openmpi on a Windows pool", {"flavor": "openmpi"}, {"image": IMAGE_ALIASES["windows"],
                                                          "node_agent": "batch.node.windows amd64"},
     "task.mpi.flavor", "error", ["openmpi needs a Linux pool", "Windows"], ["msmpi"]),
    ("pool id differs from job.pool", {"job_pool": "otherpool"}, {}, "job.pool", "error",
     ["otherpool", "hbpool"], ["job.pool: hbpool"]),
]


@pytest.mark.parametrize("name, kw, over, field, severity, msg_words, fix_words", RULES, ids=[r[0] for r in RULES])
def test_each_rule(name, kw, over, field, severity, msg_words, fix_words):
    facts = replace(PoolFacts(source="spec", id="hbpool", vm_size="Standard_HB120rs_v3", dedicated_nodes=4,
                              image=IMAGE_ALIASES["ubuntu-hpc"], node_agent="batch.node.ubuntu 22.04"), **over)
    # The spec's pool section carries only the size (fabric auto follows it); with nodes, image or id there,
    # spec.py itself would refuse some of these combinations before check-pool runs.
    s = spec(**{"instances": 4, **kw}, pool={"vm_size": facts.vm_size})
    problems = check(s, facts)
    p = only(problems, field)
    assert p.severity == severity, problems
    for w in msg_words:
        assert w in p.message, (w, p.message)
    for w in fix_words:
        assert w in p.fix, (w, p.fix)
    # each rule is reported on its own: nothing else is an error
    others = [q for q in problems if q is not p and q.severity == "error"]
    assert not others, others


def test_errors_are_listed_before_warnings_and_all_reported_together():
    facts = pool_from_rest(rest("d4_general_purpose.json"))
    s = spec(flavor="openmpi", instances=6, fabric="sriov", job_pool="generalpool")
    problems = check(s, facts)
    assert fields(problems) == {
        ("pool.enableInterNodeCommunication", "error"),
        ("pool.taskSlotsPerNode", "error"),
        ("task.instances", "error"),
        ("task.mpi.fabric", "error"),
        ("pool.targetLowPriorityNodes", "warning"),
        ("task.checkpoint", "warning"),
    }
    severities = [p.severity for p in problems]
    assert severities == sorted(severities, key=lambda x: x != "error")
    # REST pools cannot just be flipped: the fix says how
    inter = only(problems, "pool.enableInterNodeCommunication")
    assert "0 nodes" in inter.fix and "enableInterNodeCommunication: true" in inter.fix
    assert "6 instances" in only(problems, "task.instances").message
    assert "2 dedicated + 2 low-priority" in only(problems, "task.instances").message


# ---------------------------------------------------------------------------------------------- REST samples

def test_rest_rdma_size_with_plain_ubuntu():
    s = spec(pool=pool_spec(id="hbplain", vm_size="Standard_HB120-64rs_v3"))
    problems = check(s, pool_from_rest(rest("hbv3_plain_ubuntu_resizing.json")))
    p = only(problems, "pool.virtualMachineConfiguration.imageReference")
    assert p.severity == "error" and "microsoft-dsvm/ubuntu-hpc" in p.fix
    assert [q for q in problems if q.severity == "error"] == [p]  # resizing to 4: instances fit


def test_rest_steady_below_target_reports_the_resize_error():
    s = spec(instances=4, pool={"id": "hcpool", "vm_size": "Standard_HC44rs", "image": "almalinux-hpc"})
    problems = check(s, pool_from_rest(rest("hc_quota_stuck.json")))
    p = only(problems, "task.instances")
    assert p.severity == "error" and "AccountCoreQuotaReached" in p.message and "lower task.instances to 2" in p.fix
    # fits -> the resize error is still worth a warning
    fit = check(spec(instances=2, pool={"id": "hcpool", "vm_size": "Standard_HC44rs", "image": "almalinux-hpc"}),
                pool_from_rest(rest("hc_quota_stuck.json")))
    assert fields(fit) == {("pool.resizeErrors", "warning")}


def test_rest_networkdirect_openmpi_and_old_api():
    s = spec(flavor="openmpi", instances=2, pool={"id": "h16pool", "vm_size": "Standard_H16r"})
    problems = check(s, pool_from_rest(rest("h16r_centos_hpc.json")))
    assert fields(problems) == {("task.mpi.flavor", "error")}
    # CentOS-HPC is an HPC image: no image complaint


def test_rest_windows_pool_with_linux_flavour():
    s = spec(flavor="intelmpi", instances=2)
    problems = check(s, pool_from_rest(rest("hc_windows.json")))
    p = only(problems, "task.mpi.flavor")
    assert "batch.node.windows amd64" in p.message and "msmpi" in p.fix


def test_rest_spec_without_vm_size_on_an_rdma_pool_warns_that_no_fabric_settings_go_out():
    s = spec(instances=4, job_pool="hbpool")
    problems = check(s, pool_from_rest(rest("hbv3_ubuntu_hpc.json")))
    p = only(problems, "task.mpi.fabric")
    assert p.severity == "warning" and "no fabric" in p.message and "pool.vm_size: Standard_hb120rs_v3" in p.fix


def spot_spec(checkpoint: dict | None = None):
    data = {"job": {"id": "j1"}, "task": {"id": "t1", "instances": 2, "command": ["app"], "mpi": "openmpi"},
            "pool": {"id": "spotpool", "vm_size": "Standard_D4s_v3", "nodes": 0, "spot_nodes": 2}}
    if checkpoint is not None:
        data["task"]["checkpoint"] = checkpoint
    return parse_spec(data)


def test_a_spot_pool_states_the_documented_facts_and_a_checkpoint_silences_only_its_own_warning():
    bare = check(spot_spec(), pool_from_spec(spot_spec().pool))
    assert [(p.field, p.severity) for p in bare] == [("pool.spot_nodes", "warning"), ("task.checkpoint", "warning")]
    assert SPOT_DOCS == "https://learn.microsoft.com/azure/batch/batch-spot-vms" and SPOT_DOCS in bare[0].message
    assert "aren't well suited" in bare[0].message and "local data is lost" in bare[0].message
    saved = spot_spec({"pattern": "restart.*", "every": "1m"})
    assert saved.task.checkpoint is not None
    assert [p.field for p in check(saved, pool_from_spec(saved.pool))] == ["pool.spot_nodes"]


def test_no_spot_nodes_no_spot_warning_even_without_a_checkpoint():
    s = spot_spec()
    dedicated = replace(pool_from_spec(s.pool), dedicated_nodes=2, low_priority_nodes=0)
    assert [p.field for p in check(s, dedicated)] == []


def test_a_rest_pool_with_low_priority_nodes_names_its_rest_property():
    s = spec(instances=2, pool=pool_spec(id="generalpool", nodes=2), job_pool="generalpool")
    facts = replace(pool_from_rest(rest("d4_general_purpose.json")), inter_node_communication=True,
                    task_slots_per_node=1)
    problems = check(s, facts)
    spot = only(problems, "pool.targetLowPriorityNodes")
    assert spot.severity == "warning" and "targetLowPriorityNodes: 0" in spot.fix
    assert only(problems, "task.checkpoint").severity == "warning"


def test_rest_vm_size_differs_from_spec():
    # The spec was rendered for an SR-IOV size; the pool is a plain D-series: the fabric settings are wrong.
    s = spec(instances=2, pool=pool_spec(id="generalpool", nodes=2), job_pool="generalpool")
    facts = replace(pool_from_rest(rest("d4_general_purpose.json")), inter_node_communication=True,
                    task_slots_per_node=1, low_priority_nodes=0)
    problems = check(s, facts)
    assert only(problems, "pool.vm_size").severity == "error"
    assert only(problems, "task.mpi.fabric").severity == "error"
    # same class, other spelling of the size: fine; another SR-IOV size: a warning only
    other = replace(pool_from_rest(rest("hbv3_ubuntu_hpc.json")), vm_size="Standard_HB176rs_v4")
    assert fields(check(spec(pool=pool_spec()), other)) == {("pool.vm_size", "warning")}


def test_rest_custom_image_on_rdma_size_is_a_warning():
    data = rest("hbv3_ubuntu_hpc.json")
    data["virtualMachineConfiguration"]["imageReference"] = {
        "virtualMachineImageId": "/subscriptions/x/resourceGroups/rg/providers/Microsoft.Compute/galleries/g/"
                                 "images/hpc/versions/1.0.0"}
    problems = check(spec(pool=pool_spec()), pool_from_rest(data))
    assert fields(problems) == {("pool.virtualMachineConfiguration.imageReference.virtualMachineImageId", "warning")}


def test_rest_autoscale_pool_with_no_nodes_is_a_warning():
    data = rest("hbv3_ubuntu_hpc.json") | {"enableAutoScale": True, "currentDedicatedNodes": 0,
                                           "targetDedicatedNodes": 0}
    p = only(check(spec(pool=pool_spec()), pool_from_rest(data)), "pool.targetDedicatedNodes")
    assert p.severity == "warning" and "autoscales" in p.message


def test_rest_deleting_pool():
    data = rest("hbv3_ubuntu_hpc.json") | {"state": "deleting"}
    assert only(check(spec(pool=pool_spec()), pool_from_rest(data)), "pool.state").severity == "error"


def test_pool_ids_compare_case_insensitively():
    s = spec(pool={"vm_size": "Standard_HB120rs_v3"}, job_pool="HBPool")
    assert check(s, pool_from_rest(rest("hbv3_ubuntu_hpc.json"))) == []


def test_rest_json_is_not_modified():
    data = rest("d4_general_purpose.json")
    before = copy.deepcopy(data)
    check(spec(instances=2), pool_from_rest(data))
    assert data == before


def test_problem_str_names_severity_field_and_fix():
    p = Problem("pool.task_slots_per_node", "2 task slots", "set it to 1", "error")
    assert str(p) == "error: pool.task_slots_per_node: 2 task slots (set it to 1)"
