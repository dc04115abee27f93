"""Every mistake of a spec is reported in one pass: unknown keys do not hide the problems of the keys
beside them or below them, and `run` checks local input files in the same pass (issue 22 item 5)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mpibatch.errors import SpecError, SpecErrors
from mpibatch.spec import load_spec, parse_spec

MPIBATCH = Path(sys.executable).parent / "mpibatch"

MISTAKES = """\
job: {id: j, bogus_job_key: 1, preparation: {command: "true", extra: 2}}
task:
  id: t
  bogus: 1
  mpi: {flavor: mpch, processes_per_node: 0, extra: 1}
  command: [python3, app.py]
  common_files: [{source: missing.py, path: app.py}]
  environment: {"1BAD": x, AZ_BATCH_X: y}
"""
WANT = {
    "job.bogus_job_key", "job.preparation.extra", "task.bogus", "task.mpi.extra", "task.mpi.flavor",
    "task.mpi.processes_per_node", "task.environment.1BAD", "task.environment.AZ_BATCH_X",
}


def fields(e: SpecError) -> set[str]:
    return {x.field.split(" ")[0] for x in (e.errors if isinstance(e, SpecErrors) else [e])}


def test_every_independent_mistake_in_one_pass(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(MISTAKES)
    with pytest.raises(SpecErrors) as e:
        load_spec(spec, check_files=True)
    assert fields(e.value) == WANT | {"task.common_files[0].source"}
    missing = [x for x in e.value.errors if x.field.startswith("task.common_files[0].source")]
    assert str(tmp_path / "missing.py") in missing[0].field and missing[0].problem == "no such file"


def test_render_does_not_need_the_files_but_still_reports_everything_else(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(MISTAKES)
    with pytest.raises(SpecErrors) as e:
        load_spec(spec)
    assert fields(e.value) == WANT


def test_missing_flavor_and_unknown_keys_together() -> None:
    data = {"job": {"id": "j"}, "task": {"id": "t", "command": "x", "mpi": {"ppn": 2}, "instancs": 2}}
    with pytest.raises(SpecErrors) as e:
        parse_spec(data)
    assert fields(e.value) == {"task.instancs", "task.mpi.ppn", "task.mpi.flavor"}
    assert "did you mean 'instances'" in str(e.value)


def test_run_reports_them_all_and_starts_nothing(tmp_path: Path) -> None:
    spec = tmp_path / "spec.yaml"
    spec.write_text(MISTAKES)
    p = subprocess.run([str(MPIBATCH), "run", str(spec), "--runs-dir", str(tmp_path / "runs")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert f"error: {len(WANT) + 1} problems in the input" in p.stderr, p.stderr
    for f in WANT | {"task.common_files[0].source"}:
        assert f"  - {f}" in p.stderr, f
    assert not (tmp_path / "runs").exists()
