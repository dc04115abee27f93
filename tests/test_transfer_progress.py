"""The transfer progress bar: bytes, files, rate and time left on a terminal (a real pseudo-terminal on
stderr, the real `mpibatch outputs get` against Azurite); nothing of it when stderr is not a terminal or
with ``--output json``."""
from __future__ import annotations

import fcntl
import io
import json
import os
import re
import struct
import subprocess
import termios
import threading
from pathlib import Path

import pytest

from mpibatch.cli.transfer_progress import TerminalTransfers, transfer_progress, wanted
from mpibatch.fileconventions import TaskOutputStorage, prepare_output_storage
from tests.infra.batch_emulator import BatchEmulator
from tests.infra.fixtures import Azurite, azurite  # noqa: F401
from tests.test_azure_executor import MPIBATCH, assert_no_secrets, cli_env, hello_spec, secrets_of, standin  # noqa: F401

BIG = 24 * 1024 * 1024 + 123  # several ranges, an odd tail
FILES_DONE = re.compile(r"(\d+)/(\d+) files")


class FakeTty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_bar_counts_bytes_and_files_from_several_threads() -> None:
    out = FakeTty()
    bar = TerminalTransfers("outputs", out)
    bar.moved(5)  # nothing planned yet: no bar, nothing drawn
    assert out.getvalue() == ""
    bar.planned(8, 8 * 1024 * 1024)

    def one() -> None:
        for _ in range(16):
            bar.moved(64 * 1024)
        bar.file_done()

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    bar.close()
    text = out.getvalue()
    assert "8/8 files" in text and "8.39MB/8.39MB" in text and "100%" in text, text


def test_no_bar_without_a_terminal_or_with_json() -> None:
    assert wanted("text", FakeTty()) and not wanted("json", FakeTty()) and not wanted("text", io.StringIO())
    with transfer_progress("x", "json") as bar:
        assert bar is None


def _storage_with_outputs(service: Azurite, tmp_path: Path, job_id: str) -> tuple[str, dict[str, int]]:
    prepare_output_storage(job_id, connection_string=service.connection_string)
    task = TaskOutputStorage(job_id, "t1", connection_string=service.connection_string)
    sizes = {"big.bin": BIG, "a.txt": 10, "sub/b.txt": 3000}
    for name, size in sizes.items():
        local = tmp_path / "src" / name
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(os.urandom(size))
        task.save("TaskOutput", local, destination=name)
    return "t1", sizes


def _run_with_tty_stderr(args: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run the CLI with stderr on a fresh pseudo-terminal (120 columns), stdout on a pipe."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the last writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        p = subprocess.Popen([str(MPIBATCH), *args], env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=slave)
        os.close(slave)
        try:
            out, _ = p.communicate(timeout=180)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
            raise
        reader.join(30)
    finally:
        os.close(master)
    return p.returncode, out.decode(), b"".join(chunks).decode(errors="replace")


def _env(service: Azurite) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    env["AZURE_STORAGE_CONNECTION_STRING"] = service.connection_string
    return env


@pytest.mark.azure
def test_outputs_get_shows_bytes_files_rate_on_a_terminal(azurite: Azurite, tmp_path: Path) -> None:  # noqa: F811
    job_id = f"progress-{os.getpid()}-tty"
    task_id, sizes = _storage_with_outputs(azurite, tmp_path, job_id)
    rc, out, err = _run_with_tty_stderr(["outputs", "get", job_id, task_id, "--to", str(tmp_path / "got")],
                                        _env(azurite))
    assert rc == 0, err
    assert_no_secrets(out + err, azurite.key)
    assert "3 downloaded" in out
    assert "outputs" in err and "100%" in err, err
    assert ("3/3 files") in err and "25.2MB/25.2MB" in err, err  # bytes moved / total
    assert re.search(r"B/s", err), err  # the rate
    done = [tuple(map(int, m)) for m in FILES_DONE.findall(err)]
    assert done and all(t == 3 for _, t in done) and [d for d, _ in done] == sorted(d for d, _ in done)
    for name, size in sizes.items():
        assert (tmp_path / "got" / "$TaskOutput" / name).stat().st_size == size


@pytest.mark.azure
def test_no_bar_when_stderr_is_not_a_terminal_or_with_json(azurite: Azurite, tmp_path: Path) -> None:  # noqa: F811
    job_id = f"progress-{os.getpid()}-pipe"
    task_id, _ = _storage_with_outputs(azurite, tmp_path, job_id)
    env = _env(azurite)
    piped = subprocess.run([str(MPIBATCH), "outputs", "get", job_id, task_id, "--to", str(tmp_path / "piped")],
                           env=env, capture_output=True, text=True, timeout=180)
    assert piped.returncode == 0, piped.stderr
    assert "files" not in piped.stderr and "\r" not in piped.stderr and "%" not in piped.stderr, piped.stderr

    rc, out, err = _run_with_tty_stderr(["outputs", "get", job_id, task_id, "--to", str(tmp_path / "json"),
                                         "-o", "json"], env)
    assert rc == 0, err
    assert json.loads(out)["failed"] == []  # stdout is exactly one JSON document
    assert err == "", err  # a terminal, but JSON asked for: nothing of the bar


@pytest.mark.azure
def test_submit_shows_input_uploads_and_collection_on_a_terminal(standin: BatchEmulator, azurite: Azurite,  # noqa: F811
                                                                 tmp_path: Path) -> None:
    spec, job_id, task_id = hello_spec(tmp_path, common_files=[{"source": "hello.py", "path": "hello.py"},
                                                               {"source": "data.bin", "path": "data.bin"}])
    (spec.parent / "data.bin").write_bytes(os.urandom(3_000_000))
    rc, out, err = _run_with_tty_stderr(["submit", str(spec), "--runs-dir", str(tmp_path / "runs")],
                                        cli_env(standin, azurite))
    assert_no_secrets(out + err, *secrets_of(standin, azurite))
    assert rc == 0, err
    inputs = [line for line in re.split(r"[\r\n]", err) if line.startswith("inputs:")]
    total = re.search(r"/([0-9.]+)MB", inputs[-1]) if inputs else None  # data.bin's 3 MB, hello.py, launchers
    assert inputs and "100%" in inputs[-1] and total and 3.0 <= float(total.group(1)) < 3.3, err
    files = FILES_DONE.search(inputs[-1])
    assert files and files.group(1) == files.group(2) and int(files.group(2)) >= 2, err
    collected = [line for line in re.split(r"[\r\n]", err) if line.startswith("collect:")]
    assert collected and "100%" in collected[-1], err
    files = FILES_DONE.search(collected[-1])
    assert files and files.group(1) == files.group(2) and int(files.group(2)) >= 6, err  # rank-*.txt of 6 ranks
    assert "mpibatch: task" in err  # status lines still reach the terminal, above the bar
