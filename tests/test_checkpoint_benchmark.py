"""benchmarks/checkpoint_preemption.py: how it reads attempts out of the lifecycle's progress events, places the
preemptions, and prepares the heat spec it measures (no run here: the benchmark itself runs them)."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bench():
    spec = importlib.util.spec_from_file_location("checkpoint_preemption", REPO / "benchmarks" /
                                                  "checkpoint_preemption.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    return module


def test_phases_split_every_attempt_into_coordination_and_application() -> None:
    events = [(0.0, "starting"), (0.1, "coordination"), (0.2, "coordination"), (0.5, "running"),
              (7.5, "preempted"), (7.6, "files"), (7.7, "coordination"), (8.2, "running"), (20.2, "collecting")]
    coord, app = bench().phases(events, end=21.0)
    assert [round(c, 2) for c in coord] == [0.4, 0.5] and [round(a, 2) for a in app] == [7.0, 12.0]
    # A run still in its application at the end counts up to then.
    assert bench().phases([(0.0, "coordination"), (1.0, "running")], end=4.0)[1] == [3.0]


def test_preemption_times_are_fractions_of_the_run_or_seconds() -> None:
    b = bench()
    assert b.parse_times("30%,65%", 20.0) == (6, 13)
    assert b.parse_times("8s,16s", 99.0) == (8, 16)
    assert b.parse_times("1%", 10.0) == (1,)  # never before the first second


def test_the_heat_spec_is_slowed_and_looked_at_every_second() -> None:
    spec = bench().load(REPO / "examples" / "heat-simulation" / "spec.yaml", "400 5000", "1s")
    assert spec.task.command.shell and spec.task.command.shell.endswith(" 4000 400 5000")
    assert spec.task.checkpoint is not None and spec.task.checkpoint.every == 1
