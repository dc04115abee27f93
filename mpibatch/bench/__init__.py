"""Ping-pong latency benchmark (``mpibatch bench latency``): parse IMB / OSU / mpi4py output, judge the fabric,
plot. The pure parts (parse, verdict) import nothing beyond the standard library; plotting needs the ``plot``
extra (matplotlib) and imports it only when called."""
from __future__ import annotations

from mpibatch.bench.parse import (
    PROGRAM_IMB,
    PROGRAM_MPI4PY,
    PROGRAM_OSU_BW,
    PROGRAM_OSU_LATENCY,
    Sample,
    detect_and_parse,
    detect_program,
    merge_latency_bw,
    parse_imb_pingpong,
    parse_mpi4py_pingpong,
    parse_osu_bw,
    parse_osu_latency,
)
from mpibatch.bench.report import format_matrix, format_table
from mpibatch.bench.verdict import (
    FABRIC_ONE_MACHINE,
    FABRIC_RDMA,
    FABRIC_SHM,
    FABRIC_TCP,
    FABRIC_UNCLEAR,
    ONE_MACHINE_VERDICT,
    Verdict,
    classify_fabric,
    pair_matrix,
    same_machine,
    slowest_node,
    verdict,
)

__all__ = [
    "FABRIC_ONE_MACHINE",
    "FABRIC_RDMA",
    "FABRIC_SHM",
    "FABRIC_TCP",
    "FABRIC_UNCLEAR",
    "ONE_MACHINE_VERDICT",
    "PROGRAM_IMB",
    "PROGRAM_MPI4PY",
    "PROGRAM_OSU_BW",
    "PROGRAM_OSU_LATENCY",
    "Sample",
    "Verdict",
    "classify_fabric",
    "detect_and_parse",
    "detect_program",
    "format_matrix",
    "format_table",
    "merge_latency_bw",
    "pair_matrix",
    "parse_imb_pingpong",
    "parse_mpi4py_pingpong",
    "parse_osu_bw",
    "parse_osu_latency",
    "same_machine",
    "slowest_node",
    "verdict",
]
