"""The multi-instance lifecycle rules (docs/batch-semantics.md#lifecycle), without root, MPI or processes.

A scripted in-memory Transport stands in for the nodes: each command line is matched against a script that says
how it ends (an exit code after some polls, never, or by an interrupt), and every call the lifecycle makes is
recorded, so the tests can check the order Batch prescribes. The real-MPI tests in test_local_executor.py and
test_ssh_executor.py run the same lifecycle over real namespaces and sshd hosts.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from mpibatch.executors.lifecycle import Lifecycle, Node
from mpibatch.plan import TaskPlan
from mpibatch.spec import Output

APP, COORD, PREP, RELEASE = "app-line", "coord-line", "prep-line", "release-line"


@dataclass
class Outcome:
    """How a started command ends: `code` after `polls` polls; None = runs until killed."""
    code: int | None = 0
    polls: int = 1
    interrupt: bool = False  # raise KeyboardInterrupt when polled (Ctrl-C while waiting)
    stderr: str = ""


class FakeProc:
    def __init__(self, t: FakeTransport, node: Node, line: str, outcome: Outcome) -> None:
        self.t, self.node, self.line, self.outcome = t, node, line, outcome
        self.polls = 0
        self.killed = False

    def poll(self) -> int | None:
        if self.killed:
            return -9
        if self.outcome.interrupt:
            raise KeyboardInterrupt
        self.polls += 1
        if self.outcome.code is not None and self.polls >= self.outcome.polls:
            self.t.events.append(("exit", self.node.index, self.line, self.outcome.code))
            return self.outcome.code
        return None

    def kill(self) -> None:
        self.killed = True


@dataclass
class FakeTransport:
    script: Callable[[Node, str, int], Outcome]  # (node, command line, attempt) -> outcome
    name: str = "fake"
    events: list[tuple] = field(default_factory=list)
    procs: list[FakeProc] = field(default_factory=list)
    files: dict[tuple[int, str], str] = field(default_factory=dict)
    lost_nodes: dict[int, str] = field(default_factory=dict)
    lose_when: Callable[[FakeTransport], dict[int, str]] | None = None
    envs: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    starts: dict[str, int] = field(default_factory=dict)
    closed: bool = False

    def open(self, n: int) -> list[Node]:
        self.events.append(("open", n))
        return [Node(index=i, host=f"10.9.0.{i + 4}", node_id=f"fake-{i}", root="/fake") for i in range(n)]

    def make_dirs(self, node: Node, dirs: Sequence[str], clean: Sequence[str] = ()) -> None:
        if clean:
            self.events.append(("clean", node.index, tuple(clean)))

    def put(self, node: Node, local: Path, node_path: str) -> None:
        self.events.append(("put", node.index, node_path))

    def start(self, node: Node, command_line: str, env: dict[str, str], cwd: str, stdout: str,
              stderr: str) -> FakeProc:
        attempt = self.starts.get(command_line, 0)
        self.starts[command_line] = attempt + 1
        outcome = self.script(node, command_line, attempt if command_line == APP else 0)
        self.files[(node.index, stderr)] = outcome.stderr
        self.events.append(("start", node.index, command_line))
        self.envs.append((node.index, command_line, env))
        p = FakeProc(self, node, command_line, outcome)
        self.procs.append(p)
        return p

    def lost(self, node: Node) -> str | None:
        if self.lose_when is not None:
            self.lost_nodes.update(self.lose_when(self))
        return self.lost_nodes.get(node.index)

    def end_processes(self) -> None:
        self.events.append(("end_processes",))
        for p in self.procs:
            p.kill()

    def read_tail(self, node: Node, path: str, limit: int) -> str:
        return self.files.get((node.index, path), "")[-limit:]

    def collect(self, node: Node, node_dir: str, patterns: Sequence[str], dest: Path) -> list[str]:
        self.events.append(("collect", node.index))
        return []

    def fetch(self, node: Node, node_path: str, dest: Path) -> bool:
        return False

    def keep_files(self) -> str:
        return "nowhere (fake)"

    def close(self) -> None:
        self.closed = True


def plan(instances: int = 3, **kw: object) -> TaskPlan:
    base: dict[str, object] = dict(job_id="job", task_id="task", instances=instances, command_line=APP,
                                   coordination_command_line=COORD, environment={"USER_VAR": "1"},
                                   outputs=(Output("results/*.dat"),))
    base.update(kw)
    return TaskPlan(**base)  # type: ignore[arg-type]


def run(p: TaskPlan, t: FakeTransport, tmp_path: Path):  # noqa: ANN201 - TaskResult
    return Lifecycle(p, t, base_env={"PATH": "/usr/bin"}, runs_dir=tmp_path / "runs").run()


def ok(node: Node, line: str, attempt: int) -> Outcome:
    return Outcome(0, polls=2)


def starts(t: FakeTransport) -> list[tuple[int, str]]:
    return [(e[1], e[2]) for e in t.events if e[0] == "start"]


def test_order_coordination_everywhere_then_the_application_on_the_primary_only(tmp_path: Path) -> None:
    t = FakeTransport(ok)
    r = run(plan(3, preparation_command_line=PREP, release_command_line=RELEASE), t, tmp_path)
    assert r.succeeded and r.exit_code == 0 and r.state == "completed"
    s = starts(t)
    assert [line for _, line in s] == [PREP] * 3 + [COORD] * 3 + [APP] + [RELEASE] * 3
    assert [i for i, line in s if line == APP] == [0]
    kinds = [e[0] for e in t.events]
    # the application starts only after every coordination command exited
    last_coord_exit = max(i for i, e in enumerate(t.events) if e[0] == "exit" and e[2] == COORD)
    first_app_start = next(i for i, e in enumerate(t.events) if e[:3] == ("start", 0, APP))
    assert kinds.index("start", last_coord_exit) == first_app_start
    # collection after the application, release after collection
    first_collect = kinds.index("collect")
    assert first_collect > next(i for i, e in enumerate(t.events) if e[0] == "exit" and e[2] == APP)
    assert first_collect < next(i for i, e in enumerate(t.events) if e[0] == "start" and e[2] == RELEASE)
    assert t.closed


def test_every_node_gets_batch_variables_in_batch_formats(tmp_path: Path) -> None:
    t = FakeTransport(ok)
    run(plan(3), t, tmp_path)
    coord = {i: env for i, line, env in t.envs if line == COORD}
    hosts = "10.9.0.4,10.9.0.5,10.9.0.6"
    for i, env in coord.items():
        assert env["AZ_BATCH_HOST_LIST"] == hosts
        assert env["AZ_BATCH_NODE_LIST"] == hosts.replace(",", ";")
        assert env["AZ_BATCH_IS_CURRENT_NODE_MASTER"] == ("true" if i == 0 else "false")
        assert env["AZ_BATCH_MASTER_NODE"].startswith("10.9.0.4:")
        assert env["USER_VAR"] == "1" and env["PATH"] == "/usr/bin"
    assert coord[0]["CCP_NODES"] == "3 10.9.0.4 1 10.9.0.5 1 10.9.0.6 1"


def test_coordination_failure_on_a_subtask_never_starts_the_application(tmp_path: Path) -> None:
    def script(node: Node, line: str, attempt: int) -> Outcome:
        if line == COORD and node.index == 2:
            return Outcome(7, stderr="smpd did not start")
        return Outcome(0)

    t = FakeTransport(script)
    r = run(plan(3, release_command_line=RELEASE), t, tmp_path)
    assert not r.succeeded and r.state == "failed" and r.exit_code is None
    assert r.failure is not None and r.failure.phase == "coordination" and r.failure.instance == 2
    assert "code 7" in r.failure.reason and "smpd did not start" in r.failure.reason
    assert APP not in [line for _, line in starts(t)]
    assert r.instances[2].coordination_exit_code == 7
    # Batch still runs the job release task on the nodes
    assert [line for _, line in starts(t)].count(RELEASE) == 3


def test_the_primary_exit_code_is_the_task_s(tmp_path: Path) -> None:
    t = FakeTransport(lambda n, line, a: Outcome(3 if line == APP else 0))
    r = run(plan(2), t, tmp_path)
    assert r.state == "completed" and r.exit_code == 3 and not r.succeeded
    assert r.failure is not None and r.failure.phase == "running" and r.failure.instance == 0


def test_retry_reruns_coordination_and_the_application_from_fresh_task_dirs(tmp_path: Path) -> None:
    def script(node: Node, line: str, attempt: int) -> Outcome:
        return Outcome(1 if line == APP and attempt == 0 else 0)

    t = FakeTransport(script)
    r = run(plan(3, max_retries=2), t, tmp_path)
    assert r.succeeded and r.attempts == 2
    lines = [line for _, line in starts(t)]
    assert lines == [COORD] * 3 + [APP] + [COORD] * 3 + [APP]
    cleans = [e for e in t.events if e[0] == "clean" and any("workitems/job/job-1/task" in c for c in e[2])]
    assert len(cleans) == 6  # each attempt cleans each node's task directory


def test_retries_are_bounded_by_max_retries(tmp_path: Path) -> None:
    t = FakeTransport(lambda n, line, a: Outcome(1 if line == APP else 0))
    r = run(plan(2, max_retries=1), t, tmp_path)
    assert r.attempts == 2 and r.exit_code == 1 and not r.succeeded
    assert [line for _, line in starts(t)].count(APP) == 2


def test_wall_clock_ends_every_process_and_is_not_retried(tmp_path: Path) -> None:
    t = FakeTransport(lambda n, line, a: Outcome(None if line == APP else 0))
    r = run(plan(2, max_wall_clock=1, max_retries=3), t, tmp_path)
    assert r.timed_out and r.failure is not None and r.failure.phase == "timeout"
    assert r.attempts == 1 and r.state == "failed"
    assert all(p.killed for p in t.procs if p.line == APP)
    assert ("end_processes",) in t.events


def test_a_lost_subtask_node_fails_the_running_task_and_names_the_node(tmp_path: Path) -> None:
    def lose(t: FakeTransport) -> dict[int, str]:
        app_started = any(e[:3] == ("start", 0, APP) for e in t.events)
        return {1: "host stopped answering"} if app_started else {}

    t = FakeTransport(lambda n, line, a: Outcome(None if line == APP else 0), lose_when=lose)
    r = run(plan(3), t, tmp_path)
    assert r.failure is not None and r.failure.phase == "running" and r.failure.instance == 1
    assert "10.9.0.5" in r.failure.reason and "host stopped answering" in r.failure.reason
    assert all(p.killed for p in t.procs if p.line == APP)


def test_interrupt_ends_every_process_and_still_collects_and_releases(tmp_path: Path) -> None:
    t = FakeTransport(lambda n, line, a: Outcome(interrupt=line == APP))
    r = run(plan(2, release_command_line=RELEASE), t, tmp_path)
    assert r.failure is not None and r.failure.phase == "interrupted" and r.state == "failed"
    kinds = [e[0] for e in t.events]
    assert "end_processes" in kinds and "collect" in kinds
    assert [line for _, line in starts(t)].count(RELEASE) == 2
    assert t.closed


def test_a_failing_release_task_does_not_fail_the_task(tmp_path: Path) -> None:
    t = FakeTransport(lambda n, line, a: Outcome(5 if line == RELEASE else 0))
    r = run(plan(2, release_command_line=RELEASE), t, tmp_path)
    assert r.succeeded and r.exit_code == 0


def test_preparation_failure_stops_before_any_task_command(tmp_path: Path) -> None:
    t = FakeTransport(lambda n, line, a: Outcome(2 if line == PREP and n.index == 1 else 0, stderr="no compiler"))
    r = run(plan(2, preparation_command_line=PREP), t, tmp_path)
    assert r.failure is not None and r.failure.phase == "preparation" and r.failure.instance == 1
    assert "no compiler" in r.failure.reason
    assert COORD not in [line for _, line in starts(t)]


@pytest.mark.parametrize("instances", [1, 2, 5])
def test_one_result_per_instance_primary_first(instances: int, tmp_path: Path) -> None:
    r = run(plan(instances), FakeTransport(ok), tmp_path)
    assert [i.index for i in r.instances] == list(range(instances))
    assert [i.role for i in r.instances] == ["primary"] + ["subtask"] * (instances - 1)
    assert r.instances[0].application_exit_code == 0
    assert all(i.application_exit_code is None for i in r.instances[1:])
