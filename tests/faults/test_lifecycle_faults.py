"""Faults while a rehearsal runs (issue 12, items 8 and 11 and the lifecycle lines of "Messages"), on the real
local executor with real processes: a trickling HTTP server on 127.0.0.1 the test starts, job release tasks
that hang or fail, Ctrl-C at the moments the issue names. Every test also checks that nothing of the run is
left (processes in its PID namespace, its node directories)."""
from __future__ import annotations

import http.server
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mpibatch.executors.local import LocalExecutor
from mpibatch.spec import parse_spec
from tests.infra.fixtures import mpi_env
from tests.infra.httpserve import serving
from tests.infra.signals import default_sigint
from tests.test_local_executor import no_process_left

pytestmark = pytest.mark.mpi
WAIT_S = 90  # bound on any one run here; every run is expected to end well before it


def spec(tmp_path: Path, job: dict | None = None, **task: object):  # noqa: ANN201 - Spec
    t = {"id": "t1", "instances": 2, "mpi": "mpich", "command": ["/bin/true"], **task}
    return parse_spec({"job": {"id": "j1", **(job or {})}, "task": t}, tmp_path)


def executor(tmp_path: Path, **kw: object) -> LocalExecutor:
    return LocalExecutor(base_env=mpi_env("mpich"), runs_dir=tmp_path / "runs", **kw)


def cli(tmp_path: Path, text: str) -> subprocess.Popen[str]:
    """`mpibatch run` in a subprocess, its temporary directories under tmp_path/tmp."""
    (tmp_path / "spec.yaml").write_text(text)
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env = dict(mpi_env("mpich"), TMPDIR=str(tmp_path / "tmp"))
    return subprocess.Popen([sys.executable, "-m", "mpibatch.cli", "run", str(tmp_path / "spec.yaml"),
                             "--runs-dir", str(tmp_path / "runs")], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=default_sigint)


def read_until(p: subprocess.Popen[str], marker: str) -> str:
    """stderr lines until one holds `marker` (bounded in time); what was read."""
    seen = ""
    deadline = time.monotonic() + WAIT_S
    assert p.stderr is not None
    while marker not in seen:
        assert time.monotonic() < deadline, f"no {marker!r} within {WAIT_S}s: {seen}"
        ready, _, _ = select.select([p.stderr], [], [], 0.5)
        if ready:
            line = p.stderr.readline()
            assert line, f"the run ended before {marker!r}: {seen}"
            seen += line
    return seen


def finish(p: subprocess.Popen[str], tmp_path: Path) -> tuple[str, str]:
    try:
        out, err = p.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"the run had not ended {WAIT_S}s later: {err[-2000:]}")
    assert os.listdir(tmp_path / "tmp") == [], "temporary directories left behind"
    return out, err


# ------------------------------------------------------------------------------------------ item 8
@pytest.fixture
def trickling_server() -> Iterator[str]:
    """HTTP on 127.0.0.1 that promises 1000 bytes and sends one every 20 s: a socket timeout never fires."""
    stop = threading.Event()

    class Trickle(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(30):  # bounded: at most 10 minutes
                self.wfile.write(b"x")
                self.wfile.flush()
                if stop.wait(20):
                    return

        def log_message(self, *a: object) -> None:
            pass

    with serving(Trickle) as base:
        try:
            yield f"{base}/input.dat?sig=SECRET"
        finally:
            stop.set()  # before the server's shutdown, which waits for the trickling handler


def test_download_of_a_trickling_resource_file_ends_at_max_wall_clock(tmp_path: Path, trickling_server: str) -> None:
    """Issue 12 item 8: "Resource-file downloads ignore `max_wall_clock`: a server that sends one byte every 20 s
    holds a run with a 10 s wall clock forever"."""
    p = cli(tmp_path, f"job: {{id: j1}}\ntask: {{id: t1, instances: 2, mpi: mpich, command: [/bin/true], "
                      f"max_wall_clock: 3s, files: [{{source: '{trickling_server}', path: input.dat}}]}}\n")
    out, err = finish(p, tmp_path)
    assert p.returncode == 1, err
    assert "(timed out)" in out and "max_wall_clock 3s exceeded" in out and "input.dat" in out, out
    assert "SECRET" not in out + err
    assert "coordination: 0/2" not in err  # the task never got past its files


# ------------------------------------------------------------------------------------------ item 11
def test_hanging_release_task_is_capped_and_the_task_s_outcome_stands(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12 item 11: "A job release task that hangs, with no `max_wall_clock`, waits forever (Batch caps
    release at 15 minutes)". The cap is lowered for the test; the release here would sleep 30 s."""
    ex = executor(tmp_path)
    ex.release_timeout_s = 2
    with caplog.at_level(logging.WARNING, logger="mpibatch"):
        r = ex.submit(spec(tmp_path, job={"release": "sleep 30"})).result()
    assert r.succeeded and r.exit_code == 0, r.failure
    assert any("release task's limit 2s exceeded" in m for m in caplog.messages), caplog.messages
    no_process_left(ex)


def test_ctrl_c_during_release_keeps_the_completed_task_s_outcome(tmp_path: Path) -> None:
    """Issue 12 item 11: "on Ctrl-C the completed task is then reported interrupted"."""
    p = cli(tmp_path, "job: {id: j1, release: 'sleep 60'}\n"
                      "task: {id: t1, instances: 2, mpi: mpich, command: [/bin/true]}\n")
    read_until(p, "release: job release task")
    time.sleep(0.5)  # the release processes have started
    p.send_signal(signal.SIGINT)
    out, err = finish(p, tmp_path)
    assert p.returncode == 0, err
    assert "completed, exit code 0" in out and "FAILED" not in out, out
    assert "job release task interrupted" in err and "interrupted: every process" not in err, err


def test_ctrl_c_while_collecting_does_not_wait_for_every_copy(tmp_path: Path) -> None:
    """Issue 12 item 11: "Ctrl-C while collecting waits for every copy to end". Each node makes a 2 GiB sparse
    output; the run is interrupted as collection starts: it must end with the copies unfinished."""
    size = 2 << 30
    p = cli(tmp_path, f"job: {{id: j1}}\ntask: {{id: t1, instances: 2, mpi: mpich, "
                      f"command: 'truncate -s {size} big.dat', coordination: 'truncate -s {size} big.dat', "
                      "outputs: [big.dat]}\n")
    read_until(p, "collecting:")
    p.send_signal(signal.SIGINT)
    out, err = finish(p, tmp_path)
    assert p.returncode == 1, err
    assert "FAILED in collecting" in out and "interrupted" in out, (out, err)
    copies = list((tmp_path / "runs").rglob("big.dat*"))
    assert all(c.stat().st_size < size for c in copies), [(c, c.stat().st_size) for c in copies]


# ------------------------------------------------------------------------------------------ Messages
def test_preparation_failure_brings_its_logs_not_empty_instance_dirs(tmp_path: Path) -> None:
    """Issue 12, Messages: "job preparation failures leave empty instance directories"."""
    ex = executor(tmp_path)
    r = ex.submit(spec(tmp_path, job={"preparation": "echo prep-out; echo prep-err-$AZ_BATCH_NODE_ID >&2; exit 3"},
                       outputs=["*.dat"])).result()
    assert r.failure is not None and r.failure.phase == "preparation", r.failure
    out = Path(r.output_dir)
    empty = [d for d in out.rglob("*") if d.is_dir() and not any(d.iterdir())]
    assert not empty, empty
    for i in (0, 1):
        assert (out / str(i) / "jobpreparation" / "stderr.txt").read_text().strip() == f"prep-err-node-{i}"
        assert (out / str(i) / "jobpreparation" / "stdout.txt").read_text().strip() == "prep-out"
    no_process_left(ex)


def test_release_warning_carries_the_stderr_tail(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 12, Messages: "release warnings omit the stderr tail"."""
    ex = executor(tmp_path)
    with caplog.at_level(logging.WARNING, logger="mpibatch"):
        r = ex.submit(spec(tmp_path, job={"release": "echo cannot-unmount-$AZ_BATCH_NODE_ID >&2; exit 4"})).result()
    assert r.succeeded, r.failure
    warned = [m for m in caplog.messages if "job release task exited with code 4" in m]
    assert len(warned) == 2 and any("cannot-unmount-node-1" in m for m in warned), caplog.messages
    no_process_left(ex)


def test_environment_too_big_for_exec_is_one_failure_line(tmp_path: Path) -> None:
    """Issue 12, Messages: "an environment too big for `exec` (E2BIG)" - here from the environment the nodes
    start from (the spec's own environment is refused before the run, see test_input_faults.py)."""
    ex = LocalExecutor(base_env=dict(mpi_env("mpich"), HUGE="y" * 200_000), runs_dir=tmp_path / "runs")
    r = ex.submit(spec(tmp_path)).result()
    assert r.failure is not None and "E2BIG" in r.failure.reason and r.exit_code is None, r.failure
    no_process_left(ex)
