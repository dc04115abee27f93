"""A local rehearsal with many nodes (24 x 1 rank of MPICH), as a user runs it (a whole `mpibatch run`
process): it succeeds, every instance's outputs arrive, the human summary stays a few rows and
`--output json` keeps every instance."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.fixtures import mpi_env

pytestmark = pytest.mark.mpi
NODES = 24
HELLO = Path(__file__).resolve().parents[1] / "examples" / "hello" / "hello.py"


def run_cli(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "hello.py").write_text(HELLO.read_text())
    spec = tmp_path / "spec.yaml"
    spec.write_text(f"job: {{id: scale}}\ntask:\n  id: n{NODES}\n  instances: {NODES}\n"
                    "  mpi: {flavor: mpich, processes_per_node: 1}\n  command: [python3, hello.py]\n"
                    "  common_files: [{source: hello.py, path: hello.py}]\n"
                    "  outputs: [{pattern: \"rank-*.txt\"}]\n  max_wall_clock: 3m\n")
    return subprocess.run([sys.executable, "-m", "mpibatch.cli", "run", str(spec), "--runs-dir",
                           str(tmp_path / "runs"), *extra], cwd=tmp_path, env=mpi_env("mpich"),
                          capture_output=True, text=True, timeout=240)


def test_many_nodes_succeed_with_a_compact_summary(tmp_path: Path) -> None:
    p = run_cli(tmp_path)
    assert p.returncode == 0, p.stderr[-3000:] + p.stdout[-3000:]
    assert f"sum of ranks = {NODES * (NODES - 1) // 2} (expected {NODES * (NODES - 1) // 2})" in p.stdout
    rows = [line for line in p.stdout.splitlines() if re.match(r"^\S+\s+(primary|subtask)\s", line)]
    assert len(rows) == 2, p.stdout
    assert rows[0].split() == ["0", "primary", "node-0", "127.0.1.1", "0", "0", "1"]
    assert rows[1].split() == [f"1-{NODES - 1}", "subtask", f"node-1..node-{NODES - 1}",
                               f"127.0.1.2..127.0.1.{NODES}", "0", "-", "1"]
    run_dir = tmp_path / "runs" / "scale" / f"n{NODES}"
    for i in range(NODES):  # every rank ran on its own node and its output came back
        assert (run_dir / str(i) / f"rank-{i}.txt").read_text().split()[:2] == ["rank", f"{i}/{NODES}"]


def test_many_nodes_json_keeps_every_instance(tmp_path: Path) -> None:
    p = run_cli(tmp_path, "--output", "json")
    assert p.returncode == 0, p.stderr[-3000:]
    d = json.loads(p.stdout)
    assert d["succeeded"] is True
    assert [i["index"] for i in d["instances"]] == list(range(NODES))
    assert [i["node_id"] for i in d["instances"]] == [f"node-{i}" for i in range(NODES)]
    assert all(i["coordination_exit_code"] == 0 and i["files"] == [f"rank-{i['index']}.txt"]
               for i in d["instances"])
