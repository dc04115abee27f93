"""Turn ping-pong samples into an answer: did the job get InfiniBand (RDMA), or fall back to TCP?

Pure functions: no network, disk or clock. :func:`verdict` judges one two-rank run; :func:`pair_matrix` and
:func:`slowest_node` judge a pool from all-pairs runs (human text: :mod:`mpibatch.bench.report`).

Where the ranks ran comes first. Host names alone cannot say it: emulated nodes (the local executor, network
namespaces, ``mpibatch emulate``) have host names of their own but are one kernel on one machine, where the MPI
library takes a same-host path (shared memory or loopback) whatever the names say. So each rank also reports
its kernel's boot id (``/proc/sys/kernel/random/boot_id``, one per booted kernel and the same in every
namespace): two ranks with one boot id are one machine, and no fabric is judged for them.

Thresholds (one-way latency of a small message, :func:`classify_fabric`), anchored on
docs/mpi-launch-rules.md#latency-anchors
(Azure HPC docs, osu_latency / IMB PingPong between two nodes): HC 1.05 us, HB 1.27 us, HBv2 1.6-2.0 us,
HBv3 ~1.2 us, A8/A9/H16r ~2.2 us; "under ~3 us means RDMA is in use; over ~10 us means the job fell back to TCP".

* ``< 0.8 us`` - **shared memory**. No network adapter on Azure reaches that: the fastest anchor (HC,
  1.05 us) is above it, while shared memory measured here 0.14-0.15 us (IMB, Intel MPI), 0.15-0.3 us (C,
  Open MPI / Intel MPI, docs/rehearsal-machine.md#latency-here) and 0.70 us (mpi4py on Intel MPI: Python adds ~0.5 us).
* ``< 3 us`` - **RDMA**: every published anchor (1.05-2.2 us) is below it, with headroom for a slower run.
  Shared memory can land here too (the MPICH wheel's shared memory measured 1.0-1.3 us here), which is why
  :func:`verdict` first looks at where the ranks ran: on one machine it names no fabric at all.
* ``> 10 us`` - **TCP** (Azure's Ethernet, even with accelerated networking, is well above RDMA).
* in between - **unclear**. On this machine, TCP between network namespaces over a veth pair measured
  8-16 us (docs/rehearsal-machine.md#latency-here: Intel MPI 8 us, MPICH 9-14 us, Open MPI 16 us) and 5-7 us
  in the captured
  fixtures (IMB/Intel MPI 5.2 us, osu_latency/MPICH 6.3 us, mpi4py/MPICH 6.8 us); TCP over loopback 4.8 us.
  So a kernel TCP path with no wire can sit in this gap: we say "unclear" rather than guess.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mpibatch.bench.parse import PROGRAM_MPI4PY, Sample

__all__ = [
    "FABRIC_ONE_MACHINE",
    "FABRIC_RDMA",
    "FABRIC_SHM",
    "FABRIC_TCP",
    "FABRIC_UNCLEAR",
    "RDMA_MAX_US",
    "SHM_MAX_US",
    "SLOW_FACTOR",
    "SMALL_MESSAGE_MAX_BYTES",
    "TCP_MIN_US",
    "Verdict",
    "ONE_MACHINE_VERDICT",
    "classify_fabric",
    "pair_matrix",
    "same_machine",
    "slowest_node",
    "verdict",
]

FABRIC_SHM = "shared memory"
FABRIC_RDMA = "RDMA"
FABRIC_TCP = "TCP"
FABRIC_UNCLEAR = "unclear"
FABRIC_ONE_MACHINE = "one machine"  # both ranks on one kernel: no fabric was measured
ONE_MACHINE_VERDICT = ("one machine (emulated nodes): the numbers are shared memory / loopback, not a network "
                       "fabric; run on a pool to judge the fabric")

SHM_MAX_US = 0.8  # below the fastest Azure RDMA anchor (HC, 1.05 us): no NIC gets here
# docs/mpi-launch-rules.md#latency-anchors: "under about 3 us means RDMA is in use"
RDMA_MAX_US = 3.0  # above every RDMA anchor (1.05-2.2 us)
TCP_MIN_US = 10.0  # docs/mpi-launch-rules.md: "over about 10 us ... fell back to TCP"
SMALL_MESSAGE_MAX_BYTES = 8  # "small message" latency: the best of the sizes 0..8 bytes
SLOW_FACTOR = 1.5  # a node/run this many times the reference is flagged
_SLOW_MIN_EXCESS_US = 0.5  # ...and only if also this much slower: 0.3 vs 0.2 us is noise, not a bad node

_FIX_INTEL = "check I_MPI_FABRICS / FI_PROVIDER (Intel MPI)"
_FIX_OPENMPI = "UCX_NET_DEVICES / --mca pml ucx (Open MPI)"


def classify_fabric(latency_us_small: float) -> str:
    """``"shared memory"``, ``"RDMA"``, ``"TCP"`` or ``"unclear"`` for a small-message one-way latency in us.

    Thresholds and their sources: module docstring. Latency alone cannot tell a slow shared-memory path from
    RDMA; :func:`verdict` uses the ranks' boot ids (else host names) for that.
    """
    value = float(latency_us_small)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"latency must be a finite, non-negative number of microseconds, got {latency_us_small!r}")
    if value < SHM_MAX_US:
        return FABRIC_SHM
    if value < RDMA_MAX_US:
        return FABRIC_RDMA
    if value > TCP_MIN_US:
        return FABRIC_TCP
    return FABRIC_UNCLEAR


@dataclass(frozen=True)
class Verdict:
    """What one ping-pong run says about the fabric between rank 0 and rank 1.

    ``different_hosts`` says whether the two ranks ran on different machines: by their kernels' boot ids when
    both are known (``same_machine`` True / False), else by their host names (``same_machine`` None).
    ``names_differ`` compares the host names alone. ``small_latency_us`` is the lowest one-way latency among
    sizes <= 8 bytes (the smallest size measured if none is that small). ``anchor_us`` is the published latency
    for the VM size's family, ``ratio`` is ``small_latency_us / anchor_us`` (None on one machine: no fabric to
    compare). ``warnings`` are sentences for the user, most important first.
    """

    different_hosts: bool
    fabric: str
    small_latency_us: float
    anchor_us: float | None
    ratio: float | None
    warnings: list[str] = field(default_factory=list)
    expected: str | None = None  # "RDMA" / "TCP" when known from vm_size or fabric_expected
    program: str | None = None
    same_machine: bool | None = None  # by boot id; None when a rank's boot id is unknown
    names_differ: bool = False

    def as_dict(self) -> dict:
        return {
            "different_hosts": self.different_hosts,
            "names_differ": self.names_differ,
            "same_machine": self.same_machine,
            "fabric": self.fabric,
            "expected": self.expected,
            "small_latency_us": self.small_latency_us,
            "anchor_us": self.anchor_us,
            "ratio": self.ratio,
            "program": self.program,
            "warnings": list(self.warnings),
        }


# Accepted spellings of fabric_expected: our fabric names and rdma.classify()'s classes.
_EXPECTED = {
    "rdma": FABRIC_RDMA,
    "infiniband": FABRIC_RDMA,
    "ib": FABRIC_RDMA,
    "sriov": FABRIC_RDMA,
    "networkdirect": FABRIC_RDMA,
    "tcp": FABRIC_TCP,
    "ethernet": FABRIC_TCP,
    "none": FABRIC_TCP,
    "shared memory": FABRIC_SHM,
    "shm": FABRIC_SHM,
}


def _normalize_expected(fabric_expected: str) -> str:
    key = str(fabric_expected).strip().lower()
    if key not in _EXPECTED:
        raise ValueError(
            f"fabric_expected {fabric_expected!r} is not one of: RDMA, TCP, shared memory "
            "(or an rdma.classify() class: sriov, networkdirect, none)"
        )
    return _EXPECTED[key]


def _small_latency(samples: Sequence[Sample]) -> tuple[float, int]:
    small = [s for s in samples if s.size <= SMALL_MESSAGE_MAX_BYTES and math.isfinite(s.latency_us)]
    if small:
        best = min(small, key=lambda s: s.latency_us)
    else:
        smallest_size = min(s.size for s in samples)
        best = min((s for s in samples if s.size == smallest_size), key=lambda s: s.latency_us)
    return best.latency_us, best.size


def _host_key(name: str) -> str:
    return name.strip().lower()


def _boot_key(boot_id: str | None) -> str | None:
    key = (boot_id or "").strip().lower()
    return None if key in ("", "-") else key


def same_machine(boot_ids: Sequence[str | None] | None) -> bool | None:
    """Whether ranks 0 and 1 ran on one machine, by their kernels' boot ids; None when either is unknown
    (``None``, empty or ``-``: a node without ``/proc/sys/kernel/random/boot_id``)."""
    if not boot_ids or len(boot_ids) < 2:
        return None
    first, second = _boot_key(boot_ids[0]), _boot_key(boot_ids[1])
    if first is None or second is None:
        return None
    return first == second


@dataclass
class _Placement:
    """Where the two ranks ran, and what that does to the fabric read from the latency band."""

    names_differ: bool
    same_machine: bool | None
    fabric: str
    warnings: list[str]

    @property
    def different_hosts(self) -> bool:
        return self.names_differ if self.same_machine is None else not self.same_machine


def _placement(hosts: Sequence[str], boot_ids: Sequence[str | None] | None, fabric: str) -> _Placement:
    """Judge where ranks 0 and 1 ran: one boot id is one machine whatever the host names; without boot ids,
    the host names decide (as they did before boot ids were reported)."""
    if len(hosts) < 2:
        return _Placement(False, None, fabric, [
            "the ranks' host names are unknown (need one per rank, got "
            f"{len(hosts)}): cannot tell whether this measured the network or shared memory"])
    first, second = hosts[0], hosts[1]
    names_differ = _host_key(first) != _host_key(second)
    machine = same_machine(boot_ids)
    if machine is True:
        where = (f"{first} and {second} are one machine (one kernel boot id): emulated nodes"
                 if names_differ else f"the two ranks ran on the same host ({first})")
        return _Placement(names_differ, True, FABRIC_ONE_MACHINE, [
            f"{where}; this measured shared memory / loopback, not the network"])
    warnings: list[str] = []
    if boot_ids is not None and machine is None:
        unknown = [h for h, b in zip((first, second), list(boot_ids) + [None, None]) if _boot_key(b) is None]
        warnings.append(f"the kernel boot id of {', '.join(unknown)} is not available: whether the ranks share "
                        "a machine is judged by host names only")
    if machine is False and not names_differ:
        warnings.append(f"both machines are named {first} (their kernel boot ids differ): this measured the network")
    elif machine is None and not names_differ:
        warnings.append(f"the two ranks ran on the same host ({first}): this measures shared memory, not the network")
        if fabric in (FABRIC_SHM, FABRIC_RDMA):
            fabric = FABRIC_SHM  # within one host the fast path is shared memory, whatever the band says
    return _Placement(names_differ, machine, fabric, warnings)


def _expectation(vm_size: str | None, fabric_expected: str | None) -> tuple[str | None, float | None]:
    """(expected fabric, published anchor in us) from the VM size, the expectation overridden if given."""
    anchor_us: float | None = None
    expected: str | None = None
    if vm_size is not None:
        from mpibatch import rdma  # lazily: rdma is only needed when a VM size is given

        expected = FABRIC_TCP if rdma.classify(vm_size) == rdma.NONE else FABRIC_RDMA
        anchor_us = rdma.anchor_latency_us(vm_size)
    if fabric_expected is not None:
        expected = _normalize_expected(fabric_expected)
    return expected, anchor_us


def _expectation_warnings(expected: str | None, fabric: str, small_us: float, ratio: float | None,
                          anchor_us: float | None, vm_size: str | None, program: str | None) -> list[str]:
    """What differs from the expected fabric between two machines."""
    size_text = f"VM size {vm_size}" if vm_size else "this pool"
    if expected == FABRIC_TCP and fabric == FABRIC_RDMA:
        return [f"{small_us:.2f} us looks like RDMA, but {size_text} has no InfiniBand: is the VM size right?"]
    if expected != FABRIC_RDMA:
        return []
    if fabric == FABRIC_TCP:
        return [f"{size_text} should use RDMA, but {small_us:.2f} us looks like TCP: {_FIX_INTEL} or {_FIX_OPENMPI}"]
    if fabric == FABRIC_UNCLEAR:
        return [f"{size_text} should use RDMA, but {small_us:.2f} us is between RDMA (< {RDMA_MAX_US:g} us) and "
                f"TCP (> {TCP_MIN_US:g} us); it may be TCP: {_FIX_INTEL} or {_FIX_OPENMPI}"]
    if fabric == FABRIC_RDMA and ratio is not None and ratio > SLOW_FACTOR:
        hint = (" (mpi4py adds roughly 0.5 us of Python per message; the anchors are C benchmarks)"
                if program == PROGRAM_MPI4PY else "")
        return [f"{small_us:.2f} us is {ratio:.1f}x the {anchor_us:g} us published for {size_text}{hint}: "
                "check process placement (ranks pinned next to the InfiniBand adapter's NUMA node) and that "
                "the nodes are not busy"]
    return []


def verdict(
    samples: Iterable[Sample],
    *,
    hosts: Sequence[str],
    boot_ids: Sequence[str | None] | None = None,
    vm_size: str | None = None,
    fabric_expected: str | None = None,
) -> Verdict:
    """Judge a two-rank ping-pong run.

    ``hosts`` are the host (processor) names the ranks reported, in rank order, and ``boot_ids`` their kernels'
    boot ids (None, or ``None`` / ``-`` for a rank whose node has none); the ping-pong runs between ranks 0 and
    1, so those two are compared. One boot id means one machine whatever the names: the fabric is then
    :data:`FABRIC_ONE_MACHINE`, never RDMA or TCP. Without boot ids the host names decide (case-insensitively).
    ``vm_size`` gives the expected fabric (via :func:`mpibatch.rdma.classify`) and the latency anchor
    (:func:`mpibatch.rdma.anchor_latency_us`); ``fabric_expected`` (``"RDMA"``, ``"TCP"``, or ``"sriov"`` /
    ``"networkdirect"`` / ``"none"``) overrides the expectation drawn from ``vm_size``.
    """
    samples = list(samples)
    if not samples:
        raise ValueError("no benchmark samples to judge (the benchmark printed no result rows?)")
    warnings: list[str] = []
    programs = sorted({s.program for s in samples})
    program = programs[0] if len(programs) == 1 else None

    small_us, small_size = _small_latency(samples)
    if small_size > SMALL_MESSAGE_MAX_BYTES:
        warnings.append(
            f"no message of {SMALL_MESSAGE_MAX_BYTES} bytes or less was measured: judging by the smallest "
            f"size, {small_size} bytes, which overstates the latency"
        )
    where = _placement(list(hosts), boot_ids, classify_fabric(small_us))
    warnings += where.warnings
    fabric, different_hosts = where.fabric, where.different_hosts
    if different_hosts and fabric == FABRIC_SHM:
        warnings.append(
            f"{small_us:.2f} us between different hosts is faster than any network "
            f"(Azure RDMA anchors are 1.05-2.2 us): are the host names ({hosts[0]}, {hosts[1]}) right?"
        )
    expected, anchor_us = _expectation(vm_size, fabric_expected)
    ratio = small_us / anchor_us if anchor_us and where.same_machine is not True else None
    if different_hosts:
        warnings += _expectation_warnings(expected, fabric, small_us, ratio, anchor_us, vm_size, program)
    return Verdict(
        different_hosts=different_hosts,
        fabric=fabric,
        small_latency_us=small_us,
        anchor_us=anchor_us,
        ratio=ratio,
        warnings=warnings,
        expected=expected,
        program=program,
        same_machine=where.same_machine,
        names_differ=where.names_differ,
    )


# ---------------------------------------------------------------------------------------------------------
# Pool: all pairs
# ---------------------------------------------------------------------------------------------------------
def pair_matrix(results: dict[tuple[int, int], float], n: int) -> list[list[float | None]]:
    """Symmetric ``n x n`` matrix of pair latencies (us) from ``{(i, j): latency}``.

    None on the diagonal and for unmeasured pairs. A pair given in both directions gets the mean of the two
    (a ping-pong is symmetric: both are measurements of the same link).
    """
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive number of nodes, got {n!r}")
    sums: dict[tuple[int, int], list[float]] = {}
    for (i, j), value in results.items():
        if not (0 <= i < n and 0 <= j < n):
            raise ValueError(f"pair ({i}, {j}) is outside 0..{n - 1}")
        if i == j:
            raise ValueError(f"pair ({i}, {j}) pairs a node with itself")
        v = float(value)
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"pair ({i}, {j}) has latency {value!r}: expected a finite, non-negative number")
        sums.setdefault((min(i, j), max(i, j)), []).append(v)
    matrix: list[list[float | None]] = [[None] * n for _ in range(n)]
    for (i, j), values in sums.items():
        matrix[i][j] = matrix[j][i] = sum(values) / len(values)
    return matrix


def slowest_node(
    matrix: Sequence[Sequence[float | None]],
    *,
    factor: float = SLOW_FACTOR,
    min_excess_us: float = _SLOW_MIN_EXCESS_US,
) -> tuple[int, float] | None:
    """The one node that makes its links slow, as ``(index, its median pair latency in us)``, or None.

    Rule: a node's score is the median latency of all its measured pairs (a median, so one bad partner does
    not condemn a good node). The node with the highest score is flagged only if its score is more than
    ``factor`` (1.5) times the median of the pairs that do *not* involve it, and at least ``min_excess_us``
    above it. Comparing with the pairs without it (rather than all pairs) matters on small pools: with 3
    nodes, 2 of the 3 pairs touch the bad node, so the median of all pairs is already bad. Needs at least 3
    nodes: with 2 there is one link and no way to say which end is at fault.
    """
    n = len(matrix)
    if any(len(row) != n for row in matrix):
        raise ValueError("the latency matrix must be square")
    if n < 3:
        return None
    pairs = {
        (i, j): float(matrix[i][j])  # type: ignore[arg-type]
        for i in range(n)
        for j in range(i + 1, n)
        if matrix[i][j] is not None
    }
    scores: dict[int, float] = {}
    for node in range(n):
        own = [v for (i, j), v in pairs.items() if node in (i, j)]
        if own:
            scores[node] = statistics.median(own)
    if not scores:
        return None
    worst = max(scores, key=lambda k: (scores[k], -k))
    others = [v for (i, j), v in pairs.items() if worst not in (i, j)]
    if not others:
        return None
    reference = statistics.median(others)
    score = scores[worst]
    if score > factor * reference and score - reference >= min_excess_us:
        return worst, score
    return None
