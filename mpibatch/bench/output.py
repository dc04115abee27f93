"""What the latency task's primary prints, read back: marker lines -> :class:`LatencyResult`.

The node script (:mod:`mpibatch.bench.latency`) writes, on the primary's stdout::

    MPIBATCH-BENCH program=<name> path=<path>
    MPIBATCH-BENCH pair=i,j hosts=<address i>,<address j> begin
    MPIBATCH-BENCH rank=<r> host=<host name> boot=<kernel boot id, or ->     (once per rank)
    ... the benchmark program's own output ...
    MPIBATCH-BENCH pair=i,j end rc=<exit code>

Pure functions: text in, results out (each pair judged by :func:`mpibatch.bench.verdict.verdict`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..results import TaskResult
from .parse import (
    PROGRAM_IMB,
    PROGRAM_MPI4PY,
    PROGRAM_OSU_LATENCY,
    Sample,
    parse_imb_pingpong,
    parse_mpi4py_pingpong,
    parse_osu_latency,
)
from .verdict import Verdict, pair_matrix, slowest_node, verdict

__all__ = ["MARKER", "LatencyResult", "PairResult", "parse_task_output"]

MARKER = "MPIBATCH-BENCH"
_PARSERS = {PROGRAM_OSU_LATENCY: parse_osu_latency, PROGRAM_IMB: parse_imb_pingpong,
            PROGRAM_MPI4PY: parse_mpi4py_pingpong}

_PAIR_BEGIN = re.compile(rf"^{MARKER} pair=(\d+),(\d+) hosts=(\S*?),(\S*) begin$")
_PAIR_END = re.compile(rf"^{MARKER} pair=(\d+),(\d+) end rc=(\d+)$")
_PROGRAM = re.compile(rf"^{MARKER} program=(.+?) path=(.*)$")
# boot= is absent in the output of node scripts older than the boot id check
_RANK = re.compile(rf"{MARKER} rank=(\S+) host=(\S+)(?: boot=(\S+))?")


@dataclass
class PairResult:
    i: int
    j: int
    addresses: tuple[str, str]  # from AZ_BATCH_HOST_LIST
    rank_hosts: list[str]  # host names the ranks reported, in rank order
    exit_code: int | None
    samples: list[Sample] = field(default_factory=list)
    verdict: Verdict | None = None
    error: str | None = None
    rank_boot_ids: list[str | None] = field(default_factory=list)  # kernel boot ids, rank order (None: unknown)

    @property
    def one_machine(self) -> bool:
        return self.verdict is not None and self.verdict.same_machine is True

    def as_dict(self) -> dict[str, Any]:
        return {"pair": [self.i, self.j], "addresses": list(self.addresses), "rank_hosts": self.rank_hosts,
                "rank_boot_ids": self.rank_boot_ids, "one_machine": self.one_machine,
                "exit_code": self.exit_code, "error": self.error,
                "small_latency_us": self.verdict.small_latency_us if self.verdict else None,
                "samples": [_sample_dict(s) for s in self.samples],
                "verdict": self.verdict.as_dict() if self.verdict else None}


def _sample_dict(s: Sample) -> dict[str, Any]:
    return {"size": s.size, "latency_us": s.latency_us, "bandwidth_mbs": s.bandwidth_mbs, "program": s.program}


@dataclass
class LatencyResult:
    program: str | None
    program_path: str | None
    pairs_mode: str
    pairs: list[PairResult]
    node_names: list[str]  # index -> host name reported by its rank (address if never reported)
    matrix: list[list[float | None]]
    slowest: tuple[int, float] | None
    vm_size: str | None
    task: TaskResult | None = None
    command_line: str = ""

    @property
    def first(self) -> PairResult | None:
        return self.pairs[0] if self.pairs else None

    @property
    def samples(self) -> list[Sample]:
        return self.first.samples if self.first else []

    @property
    def verdict(self) -> Verdict | None:
        return self.first.verdict if self.first else None

    @property
    def one_machine_pairs(self) -> list[tuple[int, int]]:
        """The pairs whose ranks shared one kernel (one boot id): no fabric was measured between them."""
        return [(p.i, p.j) for p in self.pairs if p.one_machine]

    @property
    def ok(self) -> bool:
        return bool(self.pairs) and all(p.verdict is not None and p.error is None for p in self.pairs) \
            and (self.task is None or self.task.succeeded)

    @property
    def slowest_name(self) -> str | None:
        return self.node_names[self.slowest[0]] if self.slowest else None

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "program": self.program, "program_path": self.program_path, "pairs_mode": self.pairs_mode,
            "vm_size": self.vm_size, "nodes": self.node_names,
            "samples": [_sample_dict(s) for s in self.samples],
            "verdict": self.verdict.as_dict() if self.verdict else None,
            "pairs": [p.as_dict() for p in self.pairs],
            "matrix": self.matrix if self.pairs_mode == "all" else None,
            "one_machine_pairs": [list(ij) for ij in self.one_machine_pairs],
            "slowest_node": ({"index": self.slowest[0], "name": self.slowest_name, "median_latency_us": self.slowest[1]}
                             if self.slowest else None),
            "task": self.task.to_json() if self.task else None,
        }


@dataclass
class _Judge:
    """What every pair is judged with."""

    program: str | None
    sizes: tuple[int, int] | None
    vm_size: str | None
    fabric_expected: str | None


@dataclass
class _Section:
    """One pair's lines between its begin and end markers."""

    pair: PairResult
    body: list[str] = field(default_factory=list)
    rc: int | None = None
    cut_short: bool = False


def _split(text: str) -> tuple[str | None, str | None, list[_Section]]:
    """(program, its path, the pairs' sections) from the primary's stdout."""
    program = program_path = None
    sections: list[_Section] = []
    current: _Section | None = None
    for line in text.splitlines():
        stripped = line.strip()
        m = _PROGRAM.match(stripped)
        if m and current is None:
            program, program_path = m.group(1), m.group(2)
        elif m := _PAIR_BEGIN.match(stripped):
            current = _Section(PairResult(i=int(m.group(1)), j=int(m.group(2)), addresses=(m.group(3), m.group(4)),
                                          rank_hosts=[], exit_code=None))
            sections.append(current)  # a begin without an end before it leaves that pair's rc unknown
        elif (m := _PAIR_END.match(stripped)) and current is not None:
            current.rc = int(m.group(3))
            current = None
        elif current is not None:
            current.body.append(line)
    if current is not None:
        current.cut_short = True
    return program, program_path, sections


def _rank_lines(body: list[str]) -> tuple[dict[int, tuple[str, str | None]], list[str]]:
    """The ranks' (host name, boot id) by rank, and the benchmark's own lines (the rest)."""
    ranks: dict[int, tuple[str, str | None]] = {}
    kept = []
    for line in body:
        m = _RANK.search(line)
        if m is None:
            kept.append(line)
        elif m.group(1).isdigit():
            boot = m.group(3)
            ranks[int(m.group(1))] = (m.group(2), None if boot in (None, "-") else boot)
    return ranks, kept


def _judge_pair(section: _Section, judge: _Judge) -> PairResult:
    """Fill a pair's hosts, samples, verdict and error from its section."""
    pair, rc = section.pair, section.rc
    pair.exit_code = rc
    if section.cut_short:
        pair.error = "the output of this pair was cut short (no end marker)"
    ranks, kept = _rank_lines(section.body)
    pair.rank_hosts = [ranks[k][0] for k in sorted(ranks)]
    pair.rank_boot_ids = [ranks[k][1] for k in sorted(ranks)]
    parser = _PARSERS.get(judge.program or "")
    if parser is None:
        pair.error = "the node script named no benchmark program"
    else:
        try:
            samples = parser("\n".join(kept))
            if judge.sizes is not None:
                lo, hi = judge.sizes
                samples = [s for s in samples if lo <= s.size <= hi] or samples
            pair.samples = samples
            pair.verdict = verdict(samples, hosts=pair.rank_hosts, boot_ids=pair.rank_boot_ids,
                                   vm_size=judge.vm_size, fabric_expected=judge.fabric_expected)
        except ValueError as e:
            pair.error = f"could not read {judge.program} output: {e}"
    if rc not in (0, None):
        pair.error = f"the launch exited with {rc}" + (f"; {pair.error}" if pair.error else "")
    return pair


def _node_names(pairs: list[PairResult], n: int) -> list[str]:
    """Each node's name: the host name its rank reported in the first pair it was in, else its address."""
    names: list[str | None] = [None] * n
    for p in pairs:
        for idx, k in enumerate((p.i, p.j)):
            if names[k] is None:
                names[k] = p.rank_hosts[idx] if len(p.rank_hosts) > idx else (p.addresses[idx] or None)
    return [name or f"node {k}" for k, name in enumerate(names)]


def parse_task_output(text: str, *, sizes: tuple[int, int] | None = None, vm_size: str | None = None,
                      fabric_expected: str | None = None, instances: int | None = None) -> LatencyResult:
    """Split the primary's stdout at the pair markers, parse each pair's benchmark output, judge it."""
    program, program_path, sections = _split(text)
    judge = _Judge(program, sizes, vm_size, fabric_expected)
    pairs = [_judge_pair(section, judge) for section in sections]
    n = max([instances or 0] + [p.j + 1 for p in pairs] + [2])
    values = {(p.i, p.j): p.verdict.small_latency_us for p in pairs if p.verdict is not None}
    # a slow node is a fault of the fabric: pairs on one machine measured none, so they do not count
    network = {ij: v for ij, v in values.items() if not any(p.one_machine for p in pairs if (p.i, p.j) == ij)}
    return LatencyResult(program=program, program_path=program_path, pairs_mode="all" if len(pairs) > 1 else "first",
                         pairs=pairs, node_names=_node_names(pairs, n), matrix=pair_matrix(values, n),
                         slowest=slowest_node(pair_matrix(network, n)), vm_size=vm_size)
