"""Fabric verdicts, pool pair matrices and the human tables of `mpibatch bench latency`."""
from __future__ import annotations

from pathlib import Path

import pytest

from mpibatch.bench.parse import PROGRAM_MPI4PY, PROGRAM_OSU_LATENCY, Sample, detect_and_parse
from mpibatch.bench.report import format_matrix, format_table
from mpibatch.bench.verdict import (
    FABRIC_ONE_MACHINE,
    FABRIC_RDMA,
    FABRIC_SHM,
    FABRIC_TCP,
    FABRIC_UNCLEAR,
    classify_fabric,
    pair_matrix,
    same_machine,
    slowest_node,
    verdict,
)

DATA = Path(__file__).parent / "data" / "bench"


def run(latency_small: float, program: str = PROGRAM_OSU_LATENCY) -> list[Sample]:
    """A plausible run whose best small-message latency is `latency_small`."""
    return [
        Sample(1, latency_small + 0.01, None, program),
        Sample(8, latency_small, None, program),
        Sample(1024, latency_small * 1.5, None, program),
        Sample(1 << 20, latency_small * 100, None, program),
    ]


@pytest.mark.parametrize(
    "latency, fabric",
    [
        (0.0, FABRIC_SHM),
        (0.15, FABRIC_SHM),  # IMB, Intel MPI shared memory (captured)
        (0.70, FABRIC_SHM),  # mpi4py, Intel MPI shared memory (captured)
        (0.79, FABRIC_SHM),
        (0.8, FABRIC_RDMA),
        (1.05, FABRIC_RDMA),  # HC anchor
        (1.27, FABRIC_RDMA),  # HB anchor
        (2.2, FABRIC_RDMA),  # A8/A9/H16r anchor
        (2.99, FABRIC_RDMA),
        (3.0, FABRIC_UNCLEAR),
        (5.2, FABRIC_UNCLEAR),  # IMB over TCP between namespaces here
        (10.0, FABRIC_UNCLEAR),
        (10.01, FABRIC_TCP),
        (16.0, FABRIC_TCP),  # Open MPI over veth (docs/rehearsal-machine.md#latency-here)
        (45.0, FABRIC_TCP),
    ],
)
def test_classify_fabric_thresholds(latency, fabric):
    assert classify_fabric(latency) == fabric


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_classify_fabric_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        classify_fabric(bad)


def test_small_latency_is_min_over_sizes_up_to_8_bytes():
    samples = [
        Sample(0, 1.4, None, "p"),
        Sample(4, 1.2, None, "p"),
        Sample(8, 1.3, None, "p"),
        Sample(16, 1.0, None, "p"),  # smaller, but not a "small message"
    ]
    v = verdict(samples, hosts=["a", "b"], vm_size=None, fabric_expected=None)
    assert v.small_latency_us == 1.2
    assert v.fabric == FABRIC_RDMA
    assert v.anchor_us is None and v.ratio is None and v.warnings == []


def test_no_small_sizes_uses_the_smallest_and_warns():
    v = verdict([Sample(64, 2.0, None, "p"), Sample(32, 2.5, None, "p")], hosts=["a", "b"])
    assert v.small_latency_us == 2.5
    assert any("32 bytes" in w for w in v.warnings)


def test_same_host_warns_and_says_shared_memory():
    v = verdict(run(1.3), hosts=["node-a", "NODE-A"], vm_size=None, fabric_expected=None)
    assert v.different_hosts is False
    assert v.fabric == FABRIC_SHM  # 1.3 us on one host is MPICH shared memory, not RDMA
    assert v.warnings[0] == "the two ranks ran on the same host (node-a): this measures shared memory, not the network"


def test_same_host_tcp_stays_tcp():
    v = verdict(run(12.0), hosts=["h", "h"])
    assert v.fabric == FABRIC_TCP and not v.different_hosts
    assert "same host" in v.warnings[0]


def test_unknown_hosts_warns():
    v = verdict(run(1.3), hosts=[])
    assert v.different_hosts is False
    assert "unknown" in v.warnings[0]


def test_only_ranks_0_and_1_count():
    v = verdict(run(1.3), hosts=["a", "b", "b", "a"])
    assert v.different_hosts


@pytest.mark.parametrize(
    "vm_size, latency, fabric, anchor, warn",
    [
        # RDMA size, RDMA latency near the anchor: all good
        ("Standard_HB120rs_v3", 1.3, FABRIC_RDMA, 1.2, None),
        ("Standard_HC44rs", 1.05, FABRIC_RDMA, 1.05, None),
        # RDMA size measuring TCP: the fix names both runtimes' knobs
        ("Standard_HB120rs_v3", 25.0, FABRIC_TCP, 1.2,
         "VM size Standard_HB120rs_v3 should use RDMA, but 25.00 us looks like TCP: check I_MPI_FABRICS / "
         "FI_PROVIDER (Intel MPI) or UCX_NET_DEVICES / --mca pml ucx (Open MPI)"),
        # in the gap
        ("Standard_HC44rs", 6.0, FABRIC_UNCLEAR, 1.05, "is between RDMA"),
        # RDMA, but much slower than published
        ("Standard_HC44rs", 2.5, FABRIC_RDMA, 1.05, "2.4x the 1.05 us published"),
        # NetworkDirect size
        ("Standard_H16r", 2.3, FABRIC_RDMA, 2.2, None),
        # non-RDMA size over TCP: expected, no warning, no anchor
        ("Standard_D4s_v5", 30.0, FABRIC_TCP, None, None),
        # non-RDMA size at RDMA speed between two hosts: suspicious
        ("Standard_D4s_v5", 1.5, FABRIC_RDMA, None, "has no InfiniBand"),
        # RDMA family without a published anchor (HX): judged by bands only
        ("Standard_HX176rs", 1.9, FABRIC_RDMA, None, None),
    ],
)
def test_verdict_against_vm_size(vm_size, latency, fabric, anchor, warn):
    v = verdict(run(latency), hosts=["node-0", "node-1"], vm_size=vm_size, fabric_expected=None)
    assert v.different_hosts
    assert v.fabric == fabric
    assert v.anchor_us == anchor
    if anchor is None:
        assert v.ratio is None
    else:
        assert v.ratio == pytest.approx(latency / anchor)
    if warn is None:
        assert v.warnings == []
    else:
        assert len(v.warnings) == 1 and warn in v.warnings[0]


def test_fabric_expected_without_vm_size():
    v = verdict(run(20.0), hosts=["a", "b"], vm_size=None, fabric_expected="RDMA")
    assert v.expected == FABRIC_RDMA and "this pool should use RDMA" in v.warnings[0]
    v = verdict(run(20.0), hosts=["a", "b"], fabric_expected="sriov")
    assert v.expected == FABRIC_RDMA
    v = verdict(run(20.0), hosts=["a", "b"], fabric_expected="TCP")
    assert v.expected == FABRIC_TCP and v.warnings == []
    with pytest.raises(ValueError, match="fabric_expected"):
        verdict(run(20.0), hosts=["a", "b"], fabric_expected="carrier pigeon")


def test_fabric_expected_overrides_vm_size():
    v = verdict(run(20.0), hosts=["a", "b"], vm_size="Standard_HB120rs_v3", fabric_expected="TCP")
    assert v.expected == FABRIC_TCP and v.anchor_us == 1.2 and v.warnings == []


def test_mpi4py_slow_rdma_mentions_python_overhead():
    v = verdict(run(2.0, PROGRAM_MPI4PY), hosts=["a", "b"], vm_size="Standard_HC44rs")
    assert v.program == PROGRAM_MPI4PY
    assert "mpi4py adds" in v.warnings[0]


def test_shared_memory_speed_between_different_hosts_is_suspicious():
    v = verdict(run(0.2), hosts=["a", "b"])
    assert v.fabric == FABRIC_SHM and "faster than any network" in v.warnings[0]


def test_verdict_on_captured_tcp_between_namespaces():
    samples = detect_and_parse((DATA / "osu_latency_tcp_netns.txt").read_text())
    v = verdict(samples, hosts=["node-h3a", "node-h3b"], vm_size="Standard_HB120rs_v3")
    assert v.small_latency_us == 6.26
    assert v.fabric == FABRIC_UNCLEAR
    assert "should use RDMA" in v.warnings[0]
    assert v.as_dict()["fabric"] == FABRIC_UNCLEAR


def test_verdict_on_captured_shared_memory():
    samples = detect_and_parse((DATA / "imb_pingpong.txt").read_text())
    v = verdict(samples, hosts=["node-a", "node-a"], vm_size="Standard_HB120rs_v3")
    assert v.fabric == FABRIC_SHM and v.small_latency_us == 0.15
    assert "same host" in v.warnings[0]
    assert len(v.warnings) == 1  # no "should use RDMA": it never left the host


# ---------------------------------------------------------------------------------------------- machines
BOOT_A, BOOT_B = "3f2a6c1e-0c4b-4c1e-9d53-1b1f0a2b3c4d", "9b0c77aa-5e21-4f0a-8a7e-2d9c8b7a6f5e"


@pytest.mark.parametrize(
    "vm_size, latency, fabric, warn",
    [
        ("Standard_HB120rs_v3", 1.3, FABRIC_RDMA, None),
        ("Standard_HB120rs_v3", 20.0, FABRIC_TCP, "should use RDMA"),
        ("Standard_D4s_v5", 25.0, FABRIC_TCP, None),
        ("Standard_D4s_v5", 1.3, FABRIC_RDMA, "has no InfiniBand"),
    ],
)
def test_two_boot_ids_judge_the_fabric_as_before(vm_size, latency, fabric, warn):
    with_ids = verdict(run(latency), hosts=["node-0", "node-1"], boot_ids=[BOOT_A, BOOT_B], vm_size=vm_size)
    by_names = verdict(run(latency), hosts=["node-0", "node-1"], vm_size=vm_size)
    assert with_ids.same_machine is False and by_names.same_machine is None
    assert with_ids.different_hosts and with_ids.fabric == by_names.fabric == fabric
    assert with_ids.warnings == by_names.warnings and with_ids.ratio == by_names.ratio
    assert (warn is None) == (not with_ids.warnings) and (warn is None or warn in with_ids.warnings[0])


@pytest.mark.parametrize("latency", [0.2, 1.3, 5.0, 20.0])
@pytest.mark.parametrize("hosts", [["node-0", "node-1"], ["h", "h"]])
def test_one_boot_id_is_one_machine_never_a_fabric(latency, hosts):
    v = verdict(run(latency), hosts=hosts, boot_ids=[BOOT_A, BOOT_A.upper()], vm_size="Standard_HB120rs_v3",
                fabric_expected="RDMA")
    assert v.same_machine is True and v.different_hosts is False
    assert v.fabric == FABRIC_ONE_MACHINE and v.ratio is None and v.anchor_us == 1.2
    assert v.names_differ == (hosts[0] != hosts[1])
    assert len(v.warnings) == 1 and "RDMA" not in v.warnings[0] and "TCP" not in v.warnings[0]
    assert ("emulated nodes" in v.warnings[0]) == v.names_differ
    assert v.as_dict()["same_machine"] is True


def test_two_machines_with_one_name_are_two_machines():
    v = verdict(run(20.0), hosts=["h", "h"], boot_ids=[BOOT_A, BOOT_B])
    assert v.different_hosts and v.fabric == FABRIC_TCP and "boot ids differ" in v.warnings[0]


@pytest.mark.parametrize("boot_ids", [[BOOT_A, None], [BOOT_A, "-"], ["", BOOT_A], [BOOT_A]])
def test_unknown_boot_id_falls_back_to_names_and_says_so(boot_ids):
    v = verdict(run(1.3), hosts=["node-0", "node-1"], boot_ids=boot_ids)
    assert v.same_machine is None and same_machine(boot_ids) is None
    assert v.different_hosts and v.fabric == FABRIC_RDMA
    assert "is not available: whether the ranks share a machine is judged by host names only" in v.warnings[0]


def test_verdict_needs_samples():
    with pytest.raises(ValueError):
        verdict([], hosts=["a", "b"])


# ---------------------------------------------------------------------------------------------- pool
def test_pair_matrix_symmetric_with_none_diagonal():
    m = pair_matrix({(0, 1): 1.2, (2, 0): 1.4, (1, 2): 1.0, (2, 1): 2.0}, 3)
    assert m == [[None, 1.2, 1.4], [1.2, None, 1.5], [1.4, 1.5, None]]


def test_pair_matrix_missing_pairs_are_none():
    m = pair_matrix({(0, 1): 1.2}, 3)
    assert m[0][2] is None and m[2][1] is None and m[1][0] == 1.2


@pytest.mark.parametrize(
    "results, n",
    [({(0, 3): 1.0}, 3), ({(1, 1): 1.0}, 3), ({(0, 1): -1.0}, 2), ({(0, 1): float("nan")}, 2), ({}, 0)],
)
def test_pair_matrix_rejects_bad_input(results, n):
    with pytest.raises(ValueError):
        pair_matrix(results, n)


def _pool(n: int, bad: int | None, good: float = 1.2, slow: float = 9.5) -> list[list[float | None]]:
    results = {}
    for i in range(n):
        for j in range(i + 1, n):
            results[(i, j)] = slow if bad in (i, j) else good + 0.01 * ((i + j) % 3)
    return pair_matrix(results, n)


@pytest.mark.parametrize("n", [3, 4, 5, 8])
def test_slowest_node_finds_the_bad_one(n):
    bad = n - 2
    found = slowest_node(_pool(n, bad))
    assert found is not None
    index, latency = found
    assert index == bad and latency == pytest.approx(9.5)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_slowest_node_none_when_all_alike(n):
    assert slowest_node(_pool(n, None)) is None


def test_slowest_node_not_flagged_when_only_slightly_slower():
    # 1.4x slower: within the 1.5x rule
    assert slowest_node(_pool(5, 2, good=1.2, slow=1.68)) is None
    # 2x slower, but only 0.2 us more: noise on shared-memory scale latencies
    assert slowest_node(_pool(5, 2, good=0.2, slow=0.4)) is None


def test_slowest_node_needs_three_nodes():
    assert slowest_node(pair_matrix({(0, 1): 50.0}, 2)) is None


def test_slowest_node_one_bad_link_does_not_condemn_a_node():
    # only the 0-1 link is slow: node 0 and node 1 each have one bad pair out of four; medians stay good
    results = {(i, j): 1.2 for i in range(5) for j in range(i + 1, 5)}
    results[(0, 1)] = 20.0
    assert slowest_node(pair_matrix(results, 5)) is None


# ------------------------------------------------------------------------------------------ formatting
def test_format_table_aligned():
    samples = detect_and_parse((DATA / "imb_pingpong.txt").read_text())
    text = format_table(samples)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["bytes", "size"]
    assert len(lines) == len(samples) + 1
    assert "4 MiB" in lines[-1] and "164.40" in lines[-1] and "25512.51" in lines[-1]
    assert lines[1].split()[:5] == ["0", "0", "B", "0.15", "-"]  # 0 bytes: no bandwidth
    # right-aligned numbers: every row's latency ends where the header's does
    col_end = lines[0].index("latency [us]") + len("latency [us]")
    assert all(line[col_end - 1] != " " and line[col_end] == " " for line in lines)
    assert format_table([]) == "(no samples)"


def test_format_matrix_aligned():
    m = pair_matrix({(0, 1): 1.25, (0, 2): 9.5, (1, 2): 10.75}, 3)
    text = format_matrix(m, ["node-0", "node-1", "a-long-node-name"])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["latency", "[us]", "node-0", "node-1", "a-long-node-name"]
    assert lines[1].split() == ["node-0", "-", "1.25", "9.50"]
    assert lines[3].split() == ["a-long-node-name", "9.50", "10.75", "-"]
    assert len({len(line) for line in lines}) == 1  # all rows the same width: aligned
    unmeasured = format_matrix(pair_matrix({(0, 1): 1.0}, 3), ["a", "b", "c"])
    assert "?" in unmeasured
    with pytest.raises(ValueError):
        format_matrix(m, ["just-one"])


def test_format_matrix_marks_one_machine_pairs():
    m = pair_matrix({(0, 1): 1.25, (0, 2): 9.5, (1, 2): 10.75}, 3)
    lines = format_matrix(m, ["a", "b", "c"], one_machine=[(1, 0)]).splitlines()
    assert lines[1].split() == ["a", "-", "1.25*", "9.50"] and lines[2].split() == ["b", "1.25*", "-", "10.75"]
    assert lines[3].split() == ["c", "9.50", "10.75", "-"]
    # decimal points stay in one column, marked or not
    assert lines[1].index("1.25*") == lines[3].index("10.75") + 1
    assert lines[1].index("9.50") + 1 == lines[2].index("10.75") + 2


def test_hosts_line_names_the_hosts_and_whether_the_machines_differ():
    from mpibatch.bench.output import PairResult
    from mpibatch.bench.report import hosts_line

    def line(boots):
        pair = PairResult(0, 1, ("10.0.0.1", "10.0.0.2"), ["node-0", "node-1"], 0, rank_boot_ids=boots)
        pair.verdict = verdict(run(1.3), hosts=pair.rank_hosts, boot_ids=boots)
        return hosts_line(pair)

    assert line([BOOT_A, BOOT_A]) == ("different hosts: NO (host names node-0, node-1; machines: one machine, "
                                      "kernel boot id 3f2a6c1e)")
    assert line([BOOT_A, BOOT_B]) == ("different hosts: yes (host names node-0, node-1; machines: two machines, "
                                      "kernel boot ids 3f2a6c1e, 9b0c77aa)")
    assert line([BOOT_A, None]) == ("different hosts: yes (host names node-0, node-1; machines: not known: "
                                    "no kernel boot id from node-1)")
