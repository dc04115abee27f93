"""PNG plots of benchmark results. matplotlib is the `plot` extra: without it these tests skip on a developer
machine, but fail in CI (env CI set), where the test extra installs it."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from mpibatch.bench.parse import detect_and_parse, merge_latency_bw, parse_osu_bw, parse_osu_latency
from mpibatch.bench.verdict import pair_matrix, slowest_node

DATA = Path(__file__).parent / "data" / "bench"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _need_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail("matplotlib is missing in CI: install the test extra (pip install 'mpibatch[test]')")
        pytest.skip("matplotlib not installed (pip install 'mpibatch[plot]')")


def _check_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > 5000  # a real figure, not an empty canvas
    # IHDR: width and height (big-endian) right after the magic and chunk header
    width = int.from_bytes(data[16:20], "big")
    height = int.from_bytes(data[20:24], "big")
    assert width >= 300 and height >= 300


def test_plot_latency_writes_png(tmp_path):
    _need_matplotlib()
    from mpibatch.bench.plot import plot_latency

    imb = detect_and_parse((DATA / "imb_pingpong_tcp_netns.txt").read_text())
    osu = merge_latency_bw(
        parse_osu_latency((DATA / "osu_latency.txt").read_text()),
        parse_osu_bw((DATA / "osu_bw.txt").read_text()),
    )
    out = tmp_path / "latency.png"
    returned = plot_latency(imb + osu, out, anchor_us=1.2, title="HB120rs_v3: two nodes")
    assert Path(returned) == out
    _check_png(out)


def test_plot_latency_without_bandwidth_and_extra_series(tmp_path):
    _need_matplotlib()
    from mpibatch.bench.plot import plot_latency

    osu = parse_osu_latency((DATA / "osu_latency_tcp_netns.txt").read_text())
    mpi4py = detect_and_parse((DATA / "mpi4py_pingpong_tcp_netns.txt").read_text())
    out = tmp_path / "lat2.png"
    plot_latency(osu, str(out), series={"mpi4py over TCP": mpi4py})
    _check_png(out)


def test_plot_latency_refuses_empty(tmp_path):
    _need_matplotlib()
    from mpibatch.bench.plot import plot_latency

    with pytest.raises(ValueError):
        plot_latency([], tmp_path / "x.png")


def test_plot_matrix_writes_png(tmp_path):
    _need_matplotlib()
    from mpibatch.bench.plot import plot_matrix

    results = {(i, j): (9.8 if 3 in (i, j) else 1.2) for i in range(5) for j in range(i + 1, 5)}
    del results[(0, 2)]  # an unmeasured pair is drawn grey
    matrix = pair_matrix(results, 5)
    bad = slowest_node(matrix)
    assert bad is not None and bad[0] == 3
    out = tmp_path / "matrix.png"
    plot_matrix(matrix, [f"node-{i}" for i in range(5)], out, highlight=bad[0])
    _check_png(out)
    with pytest.raises(ValueError):
        plot_matrix(matrix, ["only-one"], tmp_path / "bad.png")


def test_missing_matplotlib_gives_install_hint(tmp_path, monkeypatch):
    """Without matplotlib the error says which extra to install (simulated by hiding the module)."""
    from mpibatch.bench.plot import PlotDependencyError, plot_latency, plot_matrix

    for name in list(sys.modules):
        if name == "matplotlib" or name.startswith("matplotlib."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib..." raise ImportError
    samples = detect_and_parse((DATA / "osu_latency.txt").read_text())
    with pytest.raises(PlotDependencyError, match=r"pip install 'mpibatch\[plot\]'") as info:
        plot_latency(samples, tmp_path / "x.png")
    assert isinstance(info.value, ImportError) and info.value.exit_code == 2
    with pytest.raises(PlotDependencyError):
        plot_matrix([[None, 1.0], [1.0, None]], ["a", "b"], tmp_path / "y.png")
    assert not (tmp_path / "x.png").exists()


def _pixels(path: Path):
    from matplotlib.image import imread

    return imread(str(path))


def test_one_machine_plots_say_so_instead_of_fabric_bands(tmp_path):
    """A pair on one machine: the latency plot carries the note in place of the RDMA / TCP bands, and the
    matrix hatches and stars its pairs; both images differ from the same data drawn as a network."""
    _need_matplotlib()
    from mpibatch.bench.plot import plot_latency, plot_matrix
    from mpibatch.bench.verdict import ONE_MACHINE_VERDICT

    samples = detect_and_parse((DATA / "mpi4py_pingpong_tcp_netns.txt").read_text())
    plain, noted = tmp_path / "plain.png", tmp_path / "noted.png"
    plot_latency(samples, plain)
    plot_latency(samples, noted, note=ONE_MACHINE_VERDICT)
    _check_png(noted)
    a, b = _pixels(plain), _pixels(noted)
    assert a.shape == b.shape and (a != b).any()
    # the bands are green (RDMA) and red (TCP) tinted fills: thousands of such pixels without the note, none with it
    def tinted(img, c):  # pixels where channel c stands out of the other two
        others = [k for k in range(3) if k != c]
        return ((img[..., c] - img[..., others[0]] > 0.03) & (img[..., c] - img[..., others[1]] > 0.03)).sum()

    assert tinted(a, 1) > 10_000 and tinted(a, 0) > 10_000
    assert tinted(b, 1) < 500 and tinted(b, 0) < 5_000  # the note's orange frame is all the red left

    matrix = pair_matrix({(0, 1): 1.3, (0, 2): 1.4, (1, 2): 1.2}, 3)
    unmarked, marked = tmp_path / "m0.png", tmp_path / "m1.png"
    plot_matrix(matrix, ["node-0", "node-1", "node-2"], unmarked)
    plot_matrix(matrix, ["node-0", "node-1", "node-2"], marked, one_machine=[(0, 1), (2, 0), (1, 2)])
    _check_png(marked)
    assert (_pixels(unmarked) != _pixels(marked)).any()
