"""The account's auto-storage: a connection string the user gives, or (`auto`) an Azurite blob service
the emulator starts itself and stops with it. Azurite comes from npm (`npm install azurite@3.35.0`, as
scripts/install-test-deps.sh does into .cache/azurite) or any `azurite-blob` on PATH.

Azurite ends with the emulator however the emulator ends, `kill -9` included: it gets PR_SET_PDEATHSIG,
from a thread that waits for it as long as it runs (the signal follows the thread that started it)."""
from __future__ import annotations

import logging
import os
import queue
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import InfraError, SpecError
from ..executors.userns import die_with_parent

log = logging.getLogger(__name__)
# Azurite's well-known development account and key (public, in Azurite's README; not a secret).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READY_TIMEOUT_S = 30
PORT_FREE_WAIT_S = 10  # a chosen port held by the Azurite of a run that just died is free again soon
HOW_TO_GET = ("install it with `npm install --prefix .cache/azurite azurite@3.35.0` (Node 18+), put "
              "`azurite-blob` on PATH, or pass --storage CONNECTION_STRING")


def find_azurite() -> str | None:
    explicit = os.environ.get("MPIBATCH_AZURITE_BIN")
    candidates = [explicit] if explicit else []
    candidates.append(str(Path.cwd() / ".cache/azurite/node_modules/.bin/azurite-blob"))
    repo = Path(__file__).resolve().parents[2]
    candidates.append(str(repo / ".cache/azurite/node_modules/.bin/azurite-blob"))
    for c in candidates:
        if c and os.access(c, os.X_OK):
            return c
    return shutil.which("azurite-blob")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _spawn(argv: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start `argv` from a thread that then waits for it: PR_SET_PDEATHSIG ends it with this process."""
    box: queue.Queue[subprocess.Popen[bytes] | OSError] = queue.Queue()

    def keeper() -> None:
        try:
            with open(log_path, "ab") as out:
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True, preexec_fn=die_with_parent())
        except OSError as e:
            box.put(e)
            return
        box.put(p)
        p.wait()

    threading.Thread(target=keeper, name="azurite-keeper", daemon=True).start()
    got = box.get(timeout=READY_TIMEOUT_S)
    if isinstance(got, OSError):
        raise InfraError(f"Azurite did not start: {argv[0]}: {got.strerror or got}")
    return got


def _wait_free(port: int) -> bool:
    deadline = time.monotonic() + PORT_FREE_WAIT_S
    while _open(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


class Azurite:
    """An azurite-blob process on a loopback port (`port`, else a free one), with its data in `location`.
    `on_start(pid)` is told the process it started (the emulator's ledger of processes)."""

    def __init__(self, location: Path, port: int = 0, on_start: Callable[[int], None] | None = None) -> None:
        self.location = location
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.wanted_port = port
        self.on_start = on_start

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};")

    def start(self) -> Azurite:
        binary = find_azurite()
        if binary is None:
            raise SpecError("--storage", "auto needs Azurite, and no azurite-blob was found", HOW_TO_GET)
        self.location.mkdir(parents=True, exist_ok=True)
        log_path = self.location / "azurite.log"
        if self.wanted_port and not _wait_free(self.wanted_port):
            raise SpecError("--storage-port", f"127.0.0.1:{self.wanted_port} is in use by another program",
                            "stop it, or choose another port with --storage-port N (clients then need the new "
                            "connection string)")
        for _ in range(1 if self.wanted_port else 3):
            self.port = self.wanted_port or _free_port()
            self.proc = _spawn([binary, "--silent", "--location", str(self.location), "--blobHost", "127.0.0.1",
                                "--blobPort", str(self.port), "--skipApiVersionCheck", "--disableTelemetry"], log_path)
            if self.on_start is not None:
                self.on_start(self.proc.pid)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while time.monotonic() < deadline and self.proc.poll() is None and not _open(self.port):
                time.sleep(0.05)
            if self.proc.poll() is None and _open(self.port):
                return self
            self.stop()
        with open(log_path, "rb") as f:  # its last words: the log may live in a directory removed on exit
            f.seek(max(0, log_path.stat().st_size - 400))
            last = " ".join(f.read().decode(errors="replace").split())
        raise InfraError(f"Azurite did not start: {last or 'it printed nothing'} (its log: {log_path})")

    def stop(self) -> None:
        p, self.proc = self.proc, None
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
