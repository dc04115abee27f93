"""Hostile and broken input (issue 12, item 9 and the "Messages" paragraph): each is refused before anything
starts, with exit 2 (3 for an infrastructure fault) and one short message - never a traceback, never a whole
rejected value echoed back. The spec cases need nothing but Python; the SSH cases talk only to servers the test
starts on 127.0.0.1; the source cases run the real local executor (root) in a subprocess."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from mpibatch.cli import main

BASE = "job: {id: j1}\ntask:\n  id: t1\n  mpi: mpich\n  command: [/bin/true]\n"
SPEC_LIMIT = 1024 * 1024  # the documented limit (docs/limits.md)
MESSAGE_LIMIT = 600  # characters: one clear line plus "nothing was submitted"


def invoke(*args: str):  # noqa: ANN201 - click Result
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def write(tmp_path: Path, text: str, name: str = "spec.yaml") -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def refused(res, *words: str) -> None:  # noqa: ANN001
    """Exit 2, a short message naming what is wrong; on stdout nothing, or with --output json the one JSON
    object of the error (as short)."""
    assert res.exit_code == 2, (res.exit_code, res.output[-2000:])
    assert len(res.stderr) < MESSAGE_LIMIT, f"{len(res.stderr)} characters: {res.stderr[:300]}..."
    assert "Traceback" not in res.stderr
    for w in words:
        assert w in res.stderr, res.stderr
    if res.stdout:
        assert len(res.stdout) < MESSAGE_LIMIT and json.loads(res.stdout)["code"] == 2, res.stdout[:300]


def alias_bomb(levels: int = 4, width: int = 9) -> str:
    """A YAML flow sequence of an anchor chain: its last item expands to width**levels strings (the issue's
    409-byte bomb has 9 levels; 4 keep the old code's failure quick)."""
    items = [f"&a0 [{', '.join(['lol'] * width)}]"]
    items += [f"&a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels + 1)]
    return f"[{', '.join(items)}]"


# ------------------------------------------------------------------------------------------ item 9: YAML cost
@pytest.mark.parametrize("field", ["instances", "environment", "job.id", "mpi.options", "max_wall_clock"])
def test_alias_bomb_in_a_field_is_refused_at_parse(tmp_path: Path, field: str) -> None:
    """Issue 12 item 9: "A 409-byte YAML alias bomb in `instances`, an environment value, `job.id`,
    `mpi.options` or `max_wall_clock` takes 97 s and 6.2 GB before a MemoryError traceback (validation messages
    `repr()` the whole rejected value)"."""
    bomb = alias_bomb()
    task = {"instances": f"  instances: {bomb}\n", "environment": f"  environment: {{A: {bomb}}}\n",
            "mpi.options": f"  mpi: {{flavor: mpich, options: {bomb}}}\n",
            "max_wall_clock": f"  max_wall_clock: {bomb}\n"}.get(field, "")
    job = f"job: {{id: {bomb}}}" if field == "job.id" else "job: {id: j1}"
    mpi = "" if field == "mpi.options" else "  mpi: mpich\n"
    text = f"{job}\ntask:\n  id: t1\n{mpi}  command: [/bin/true]\n{task}"
    refused(invoke("render", write(tmp_path, text), "-o", "json"), "YAML aliases", "line ")


def test_a_spec_over_the_size_limit_is_refused_unparsed(tmp_path: Path) -> None:
    """Issue 12 item 9: "a 50 MB spec parses for 37 s and runs. Bound what a spec can cost"."""
    filler = "# " + "x" * 98 + "\n"
    text = BASE + filler * (SPEC_LIMIT // len(filler) + 1)
    refused(invoke("render", write(tmp_path, text)), "larger than 1024 KiB")


@pytest.mark.parametrize("text, words", [
    ("job: " + "[" * 5000 + "]" * 5000 + "\n", ["nested deeper than"]),
    (BASE + "  instances: " + "9" * 5000 + "\n", ["cannot convert"]),
    (BASE + "  max_wall_clock: '" + "9" * 5000 + "s'\n", ["task.max_wall_clock", "is not a duration"]),
    (BASE + "  environment: {A: '" + "y" * 10_000 + "'}\n  instances: '" + "z" * 10_000 + "'\n",
     ["task.instances", "..."]),
])
def test_costly_values_are_refused_with_a_short_message(tmp_path: Path, text: str, words: list[str]) -> None:
    """Issue 12 item 9: "Bound what a spec can cost" - deep nesting (RecursionError), a 5000-digit number
    (ValueError), and long rejected values (echoed whole by `repr()`)."""
    refused(invoke("render", write(tmp_path, text), "-o", "json"), *words)


def test_huge_max_wall_clock_is_bad_input_not_overflow(tmp_path: Path) -> None:
    """Issue 12, Messages: "a huge `max_wall_clock` (OverflowError in `render -o json`)"."""
    refused(invoke("render", write(tmp_path, BASE + "  max_wall_clock: 99999999999999999d\n"), "-o", "json"),
            "task.max_wall_clock", "longer than 3650d")


@pytest.mark.parametrize("env, words", [
    ("{BIG: '" + "y" * 200_000 + "'}", ["task.environment.BIG", "E2BIG"]),
    ("{" + ", ".join(f"V{i}: '" + "y" * 100_000 + "'" for i in range(4)) + "}", ["task.environment:", "E2BIG"]),
])
def test_environment_too_big_for_exec_is_bad_input(tmp_path: Path, env: str, words: list[str]) -> None:
    """Issue 12, Messages: "an environment too big for `exec` (E2BIG)"."""
    refused(invoke("render", write(tmp_path, BASE + f"  environment: {env}\n")), *words)


def test_spec_that_is_a_fifo_or_a_device_is_refused_without_blocking(tmp_path: Path) -> None:
    """Issue 12, Messages (the same rule as for `--hosts-file`): "a FIFO or `/dev/zero` reported as "does not
    exist"" - a spec read must neither block on a FIFO nor read a device forever."""
    fifo = tmp_path / "spec.fifo"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        refused(invoke("render", path), "not a regular file")


# ------------------------------------------------------------------------------------------ --hosts-file
def run_ssh(*extra: str, spec: str):  # noqa: ANN201
    return invoke("run", spec, "--executor", "ssh", *extra)


def test_non_utf8_hosts_file_is_bad_input(tmp_path: Path) -> None:
    """Issue 12, Messages: "a non-UTF-8 `--hosts-file` (UnicodeDecodeError ...)"."""
    hosts = tmp_path / "hosts"
    hosts.write_bytes(b"10.0.0.4\n10.0.0.\xff5\n")
    refused(run_ssh("--hosts-file", str(hosts), spec=write(tmp_path, BASE)), "--hosts-file", "not UTF-8")


def test_hosts_file_that_is_a_fifo_or_dev_zero_is_named_for_what_it_is(tmp_path: Path) -> None:
    """Issue 12, Messages: "a non-UTF-8 `--hosts-file` (UnicodeDecodeError; a FIFO or `/dev/zero` reported as
    "does not exist")"."""
    fifo = tmp_path / "hosts.fifo"
    os.mkfifo(fifo)
    spec = write(tmp_path, BASE)
    for path in (str(fifo), "/dev/zero"):
        res = run_ssh("--hosts-file", path, spec=spec)
        refused(res, "not a regular file")
        assert "does not exist" not in res.stderr


@pytest.mark.parametrize("port", ["70000", "-1", "0"])
def test_out_of_range_port_is_bad_input(tmp_path: Path, port: str) -> None:
    """Issue 12, Messages: "`--port 70000` silently becoming 4464, `--port -1` exiting 3"."""
    res = run_ssh("--hosts", "127.0.0.1", "--port", port, spec=write(tmp_path, BASE))
    assert res.exit_code == 2, res.output
    assert "--port" in res.output and "65535" in res.output and "4464" not in res.output


# ------------------------------------------------------------------------------------------ TCP but not SSH
@pytest.fixture
def not_ssh_server() -> Iterator[int]:
    """A TCP server on 127.0.0.1 that answers like a web server, not an SSH server."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        for _ in range(600):  # bounded: at most 2 minutes
            if stop.is_set():
                return
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                try:
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                except OSError:
                    pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()
    try:
        yield srv.getsockname()[1]
    finally:
        stop.set()
        th.join(5)
        srv.close()


def test_port_that_answers_tcp_but_not_ssh_is_one_line(tmp_path: Path, not_ssh_server: int) -> None:
    """Issue 12, Messages: "a port that answers TCP but not SSH ("No existing session" and ~40 lines of paramiko
    tracebacks)" - through the CLI and through the library, whose caller has configured no logging."""
    spec = write(tmp_path, BASE.replace("task:\n", "task:\n  instances: 1\n"))
    known = tmp_path / "known_hosts"
    known.write_text("")
    script = (
        "import sys\n"
        "from mpibatch.errors import InfraError\n"
        "from mpibatch.executors import get_executor\n"
        "from mpibatch.spec import load_spec\n"
        f"ex = get_executor('ssh', hosts=['127.0.0.1:{not_ssh_server}'], known_hosts={str(known)!r})\n"
        "try:\n"
        f"    ex.submit(load_spec({spec!r}))\n"
        "except InfraError as e:\n"
        "    print(e); sys.exit(3)\n")
    lib = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    cli = subprocess.run([sys.executable, "-m", "mpibatch.cli", "run", spec, "--executor", "ssh", "--hosts",
                          f"127.0.0.1:{not_ssh_server}", "--known-hosts", str(known)],
                         capture_output=True, text=True, timeout=120)
    for p, text in ((lib, lib.stdout), (cli, cli.stderr)):
        assert p.returncode == 3, (p.returncode, p.stdout, p.stderr)
        assert "did not answer as an SSH server" in text and f":{not_ssh_server}" in text, text
        assert "No existing session" not in text
    assert "Traceback" not in lib.stderr + cli.stderr, lib.stderr + cli.stderr
    assert lib.stderr.strip() == ""


# ------------------------------------------------------------------------------------------ local sources
def local_run(tmp_path: Path, spec: str, *wrap: str) -> subprocess.CompletedProcess[str]:
    """`mpibatch run` with the local executor, its temporary directories under tmp_path/tmp."""
    from tests.infra.fixtures import mpi_env

    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = dict(mpi_env("mpich"), TMPDIR=str(tmp))
    return subprocess.run([*wrap, sys.executable, "-m", "mpibatch.cli", "run", spec, "--runs-dir",
                           str(tmp_path / "runs")], env=env, capture_output=True, text=True, timeout=120)


def nothing_left(tmp_path: Path) -> None:
    assert sorted(os.listdir(tmp_path / "tmp")) == [], "temporary directories left behind"
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*")), "outputs dir created"


@pytest.mark.parametrize("make", ["missing", "directory", "fifo"])
def test_bad_source_leaves_no_node_directory(tmp_path: Path, make: str) -> None:
    """Issue 12, Messages: "every bad source leaves an empty `/tmp/mpibatch-nodes-*`"."""
    src = tmp_path / "input.dat"
    if make == "directory":
        src.mkdir()
    elif make == "fifo":
        os.mkfifo(src)
    spec = write(tmp_path, BASE + f"  files: [{{source: {src}, path: input.dat}}]\n")
    p = local_run(tmp_path, spec)
    assert p.returncode == 2, p.stderr
    assert "task.files[0].source" in p.stderr and "Traceback" not in p.stderr
    nothing_left(tmp_path)


def test_unreadable_source_is_bad_input_before_any_node_starts(tmp_path: Path) -> None:
    """Issue 12, Messages: "Unreadable source file (PermissionError, after nodes started)". The run is started
    without the capabilities that let root read any file (as an ordinary user would run the SSH executor)."""
    src = tmp_path / "secret.dat"
    src.write_text("x")
    src.chmod(0)
    spec = write(tmp_path, BASE + f"  common_files: [{{source: {src}, path: secret.dat}}]\n")
    p = local_run(tmp_path, spec, "setpriv", "--bounding-set=-dac_override,-dac_read_search", "--")
    assert p.returncode == 2, p.stderr
    assert "task.common_files[0].source" in p.stderr and "Permission denied" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and "starting:" not in p.stderr
    nothing_left(tmp_path)
