"""Parsers of ping-pong output, on real captured outputs (tests/data/bench/README.md says how each was made)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

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

DATA = Path(__file__).parent / "data" / "bench"
POW2_0_22 = [0] + [1 << i for i in range(23)]
POW2_1_22 = [1 << i for i in range(23)]


def read(name: str) -> str:
    return (DATA / name).read_text(encoding="utf-8")


def assert_plausible(samples: list[Sample], program: str, small_range: tuple[float, float]) -> None:
    """Sizes strictly increasing, latencies positive and broadly rising, bandwidth in a sane range."""
    assert samples, "no samples"
    assert all(s.program == program for s in samples)
    sizes = [s.size for s in samples]
    assert sizes == sorted(set(sizes))
    assert all(s.latency_us > 0 and math.isfinite(s.latency_us) for s in samples)
    small = min(s.latency_us for s in samples if s.size <= 8)
    assert small_range[0] <= small <= small_range[1], small
    # monotonic-ish: the largest message is far slower than the smallest, and no size is faster than half
    # the smallest-size latency (noise allowed, nonsense not)
    assert samples[-1].latency_us > 10 * samples[0].latency_us
    assert all(s.latency_us >= 0.5 * small for s in samples)
    for s in samples:
        if s.bandwidth_mbs is not None:
            assert 0 < s.bandwidth_mbs < 200_000  # 200 GB/s: above any link or memory copy here


# ------------------------------------------------------------------------------------------------- IMB
def test_imb_default_shared_memory():
    samples = parse_imb_pingpong(read("imb_pingpong.txt"))
    assert [s.size for s in samples] == POW2_0_22
    assert_plausible(samples, PROGRAM_IMB, (0.1, 0.5))
    assert samples[0] == Sample(size=0, latency_us=0.15, bandwidth_mbs=None, program=PROGRAM_IMB)
    assert samples[1].latency_us == 0.15 and samples[1].bandwidth_mbs == pytest.approx(6.76)
    last = samples[-1]
    assert (last.size, last.latency_us) == (4194304, 164.40)
    # IMB's Mbytes/sec is 10^6 bytes/s in this version: size / t agrees with the printed column
    assert last.bandwidth_mbs == pytest.approx(25512.51)
    assert last.size / last.latency_us == pytest.approx(last.bandwidth_mbs, rel=1e-3)


def test_imb_msglog_takes_the_pingpong_section_only():
    text = read("imb_pingpong_msglog.txt")
    assert "Benchmarking PingPing" in text
    samples = parse_imb_pingpong(text)
    assert [s.size for s in samples] == [0] + [1 << i for i in range(3, 11)]
    assert [s.latency_us for s in samples][:3] == [0.14, 0.15, 0.15]  # PingPing's are 0.18, 0.19, 0.19
    assert samples[-1].bandwidth_mbs == pytest.approx(4171.79)


@pytest.mark.parametrize(
    "name, small_range",
    [("imb_pingpong_tcp_netns.txt", (3.0, 20.0)), ("imb_pingpong_tcp_loopback.txt", (3.0, 20.0))],
)
def test_imb_tcp(name, small_range):
    samples = parse_imb_pingpong(read(name))
    assert [s.size for s in samples] == POW2_0_22
    assert_plausible(samples, PROGRAM_IMB, small_range)


def test_imb_mib_bandwidth_is_converted():
    """An IMB that printed 2^20-byte megabytes is detected from size / t and converted to 10^6."""
    text = read("imb_pingpong.txt")
    # rewrite the Mbytes/sec column as MiB/s (what a 2^20 IMB would print)
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[0].isdigit():
            mib = float(fields[3]) / 1.048576
            line = f"{fields[0]:>13} {fields[1]:>12} {fields[2]:>12} {mib:>12.2f}"
        out.append(line)
    samples = parse_imb_pingpong("\n".join(out))
    assert samples[-1].bandwidth_mbs == pytest.approx(25512.51, rel=1e-4)


def test_imb_tagged_and_crlf():
    text = read("imb_pingpong.txt")
    tagged = "\r\n".join("[0] " + line for line in text.splitlines())
    assert parse_imb_pingpong(tagged) == parse_imb_pingpong(text)


def test_imb_multi_columns():
    text = """\
#-----------------------------------------------------------------------------
# Benchmarking Multi-PingPong
# ( 2 groups of 2 processes each running simultaneous )
# Group  0:     0    1
#
# Group  1:     2    3
#
#-----------------------------------------------------------------------------
       #bytes #repetitions  t_min[usec]  t_max[usec]  t_avg[usec]   Mbytes/sec
            0         1000         1.10         1.30         1.20         0.00
            1         1000         1.15         1.35         1.25         0.80
"""
    samples = parse_imb_pingpong(text)
    assert [(s.size, s.latency_us) for s in samples] == [(0, 1.20), (1, 1.25)]


# ------------------------------------------------------------------------------------------------- OSU
def test_osu_latency_shared_memory():
    samples = parse_osu_latency(read("osu_latency.txt"))
    assert [s.size for s in samples] == POW2_1_22
    assert_plausible(samples, PROGRAM_OSU_LATENCY, (0.3, 3.0))
    assert samples[0].latency_us == 1.00 and samples[-1].latency_us == 332.55
    assert all(s.bandwidth_mbs is None for s in samples)


def test_osu_latency_tcp_netns():
    samples = parse_osu_latency(read("osu_latency_tcp_netns.txt"))
    assert [s.size for s in samples] == POW2_1_22
    assert_plausible(samples, PROGRAM_OSU_LATENCY, (3.0, 20.0))


def test_osu_latency_tail_columns_keep_the_average():
    samples = parse_osu_latency(read("osu_latency_tail.txt"))
    assert [s.size for s in samples] == [1 << i for i in range(11)]
    assert samples[0].latency_us == 1.63  # Avg, not P50 (1.17) / P90 / P99


def test_osu_latency_old_format():
    text = ("# OSU MPI Latency Test v5.6.2\n# Size          Latency (us)\n"
            "0                       1.16\n1                       1.18\n")
    samples = parse_osu_latency(text)
    assert [(s.size, s.latency_us) for s in samples] == [(0, 1.16), (1, 1.18)]


@pytest.mark.parametrize("name", ["osu_bw.txt", "osu_bw_tcp_netns.txt"])
def test_osu_bw(name):
    bw = parse_osu_bw(read(name))
    assert list(bw) == POW2_1_22
    assert all(0 < v < 200_000 for v in bw.values())
    assert bw[4194304] > 100 * bw[1]


def test_merge_latency_bw():
    lat = parse_osu_latency(read("osu_latency_tcp_netns.txt"))
    bw = parse_osu_bw(read("osu_bw_tcp_netns.txt"))
    merged = merge_latency_bw(lat, bw)
    assert [s.size for s in merged] == [s.size for s in lat]
    assert [s.latency_us for s in merged] == [s.latency_us for s in lat]
    assert merged[0].bandwidth_mbs == 0.19 and merged[-1].bandwidth_mbs == 2466.70
    partial = merge_latency_bw(lat, {1: 5.0})
    assert partial[0].bandwidth_mbs == 5.0 and partial[1].bandwidth_mbs is None


# ---------------------------------------------------------------------------------------------- mpi4py
def test_mpi4py_shared_memory_seconds_to_microseconds():
    samples = parse_mpi4py_pingpong(read("mpi4py_pingpong.txt"))
    assert [s.size for s in samples] == POW2_1_22
    assert_plausible(samples, PROGRAM_MPI4PY, (0.2, 3.0))
    # "1  1.30 | 7.7031413e-07 ± ..." : mean time is one-way seconds
    assert samples[0].latency_us == pytest.approx(0.77031413)
    assert samples[0].bandwidth_mbs == pytest.approx(1.30, abs=0.005)
    for s in samples:  # bandwidth = size / one-way time, as mpi4py prints it
        assert s.bandwidth_mbs == pytest.approx(s.size / s.latency_us)


def test_mpi4py_tcp_netns():
    samples = parse_mpi4py_pingpong(read("mpi4py_pingpong_tcp_netns.txt"))
    assert_plausible(samples, PROGRAM_MPI4PY, (3.0, 20.0))


def test_mpi4py_open_mpi_tagged_output():
    samples = parse_mpi4py_pingpong(read("mpi4py_pingpong_openmpi_tagged.txt"))
    assert [s.size for s in samples] == [1 << i for i in range(13)]
    assert samples[0].latency_us == pytest.approx(0.99600745)


def test_mpi4py_no_stats_derives_latency():
    samples = parse_mpi4py_pingpong(read("mpi4py_pingpong_nostats.txt"))
    assert [s.size for s in samples] == [1 << i for i in range(11)]
    assert samples[0].bandwidth_mbs == 0.60
    assert samples[0].latency_us == pytest.approx(1 / 0.60)
    assert samples[-1].latency_us == pytest.approx(1024 / 477.01)


def test_mpi4py_plus_minus_spellings():
    for pm in ("\u00b1", "+/-", "\u00c2\u00b1"):
        text = f"# MPI PingPong Test\n         1              1.30 | 7.7031413e-07 {pm} 8.0858e-07    10000\n"
        assert parse_mpi4py_pingpong(text)[0].latency_us == pytest.approx(0.77031413)


def test_mpi4py_no_stats_zero_bandwidth_refused():
    with pytest.raises(ValueError, match="no-stats"):
        parse_mpi4py_pingpong("# MPI PingPong Test\n# Size [B]  Bandwidth [MB/s]\n         1              0.00\n")


# ------------------------------------------------------------------------------------------- detection
@pytest.mark.parametrize(
    "name, program",
    [
        ("imb_pingpong.txt", PROGRAM_IMB),
        ("imb_pingpong_msglog.txt", PROGRAM_IMB),
        ("imb_pingpong_tcp_netns.txt", PROGRAM_IMB),
        ("imb_pingpong_tcp_loopback.txt", PROGRAM_IMB),
        ("osu_latency.txt", PROGRAM_OSU_LATENCY),
        ("osu_latency_tail.txt", PROGRAM_OSU_LATENCY),
        ("osu_latency_tcp_netns.txt", PROGRAM_OSU_LATENCY),
        ("osu_bw.txt", PROGRAM_OSU_BW),
        ("mpi4py_pingpong.txt", PROGRAM_MPI4PY),
        ("mpi4py_pingpong_tcp_netns.txt", PROGRAM_MPI4PY),
        ("mpi4py_pingpong_openmpi_tagged.txt", PROGRAM_MPI4PY),
        ("mpi4py_pingpong_nostats.txt", PROGRAM_MPI4PY),
    ],
)
def test_detect(name, program):
    text = read(name)
    assert detect_program(text) == program
    if program != PROGRAM_OSU_BW:
        samples = detect_and_parse(text)
        assert samples and all(s.program == program for s in samples)


def test_detect_with_launcher_noise_around():
    text = "launcher: starting 2 ranks on 10.0.0.4,10.0.0.5\n" + read("osu_latency.txt") + "\nexit 0\n"
    assert detect_and_parse(text) == parse_osu_latency(read("osu_latency.txt"))


def test_detect_osu_latency_and_bw_concatenated():
    text = read("osu_latency_tcp_netns.txt") + read("osu_bw_tcp_netns.txt")
    samples = detect_and_parse(text)
    assert samples[0].latency_us == 6.43 and samples[0].bandwidth_mbs == 0.19


def test_detect_osu_bw_alone_is_refused():
    with pytest.raises(ValueError, match="osu_latency"):
        detect_and_parse(read("osu_bw.txt"))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hello world\n",
        "Segmentation fault (core dumped)\n",
        "1 2\n3 4\n",
        "# Benchmarking PingPong\n# #processes = 2\n",  # IMB cut short: no header
        "# Benchmarking PingPong\n       #bytes #repetitions      t[usec]   Mbytes/sec\n",  # no rows
        "# OSU MPI Latency Test v7.4\n# Size       Avg Latency(us)\n",  # no rows
        "#    Intel(R) MPI Benchmarks 2021.11, MPI-1 part\n# Benchmarking Allreduce\n",
    ],
)
def test_garbage_raises_value_error(text):
    with pytest.raises(ValueError):
        detect_and_parse(text)


@pytest.mark.parametrize("parser", [parse_imb_pingpong, parse_osu_latency, parse_osu_bw, parse_mpi4py_pingpong])
def test_each_parser_refuses_other_programs(parser):
    with pytest.raises(ValueError, match="not "):
        parser("garbage\n")
    others = {
        parse_imb_pingpong: "osu_latency.txt",
        parse_osu_latency: "mpi4py_pingpong.txt",
        parse_osu_bw: "imb_pingpong.txt",
        parse_mpi4py_pingpong: "osu_bw.txt",
    }
    with pytest.raises(ValueError):
        parser(read(others[parser]))


def test_sample_is_frozen():
    s = Sample(size=1, latency_us=1.0, bandwidth_mbs=None, program="x")
    with pytest.raises(AttributeError):
        s.size = 2  # type: ignore[misc]
