"""`mpibatch emulate` as the tests run it: a real subprocess, reached only through its REST endpoint.

`EmulatorProcess(tmp, pools=[...]).start()` waits for the `export` lines, and `.stop()` sends Ctrl-C
(SIGINT) and checks that the process ended within bounds, then that nothing it started is left: no
process whose environment names its work directory (every node process has AZ_BATCH_NODE_ROOT_DIR under
it)."""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.infra.signals import default_sigint

MPIBATCH = Path(sys.executable).parent / "mpibatch"
READY_TIMEOUT_S = 60
EXPORT = re.compile(r"^export ([A-Z_]+)=(.*)$")


def processes_mentioning(text: str) -> list[int]:
    """PIDs (not ours) whose environment or command line contains `text`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        for name in ("environ", "cmdline"):
            try:
                if text.encode() in Path(f"/proc/{entry}/{name}").read_bytes():
                    found.append(int(entry))
                    break
            except OSError:
                continue
    return found


POLL_S = 0.2


def wait_for(what: str, check: Callable[[], Any], timeout: float = 90) -> Any:
    """`check()`'s first truthy value, polled every POLL_S; an AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(POLL_S)
    raise AssertionError(f"timed out waiting for {what}")


class EmulatorProcess:
    def __init__(self, state_dir: Path, *, pools: tuple[str, ...] = (), storage: str = "auto",
                 env: dict[str, str] | None = None, account: str | None = None, key: str | None = None,
                 extra_args: tuple[str, ...] = ()) -> None:
        self.state_dir = state_dir
        self.args = [str(MPIBATCH), "emulate", "--port", "0", "--state-dir", str(state_dir), "--storage", storage]
        for p in pools:
            self.args += ["--pool", p]
        if account:
            self.args += ["--account", account]
        if key:
            self.args += ["--key", key]
        self.args += list(extra_args)
        self.env = dict(env if env is not None else os.environ)
        self.proc: subprocess.Popen[str] | None = None
        self.exports: dict[str, str] = {}
        self.log: list[str] = []
        self._reader: threading.Thread | None = None

    def start(self) -> EmulatorProcess:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=default_sigint,
                                     env=self.env, stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        threading.Thread(target=self._read_exports, daemon=True).start()
        deadline = time.monotonic() + READY_TIMEOUT_S
        # The exports come first on stdout, then "listening on" in the log: both are read by threads,
        # so a silent or dead process cannot block this wait beyond its bound.
        while time.monotonic() < deadline and self.proc.poll() is None:
            if any("listening on" in line for line in self.log) and "AZURE_BATCH_ACCESS_KEY" in self.exports:
                return self
            time.sleep(0.05)
        self.stop(check=False)
        raise RuntimeError("mpibatch emulate did not start:\n" + "\n".join(self.log))

    def _read_exports(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            m = EXPORT.match(line.strip())
            if m:
                self.exports[m.group(1)] = shlex.split(m.group(2))[0]

    def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line.rstrip("\n"))

    @property
    def endpoint(self) -> str:
        return self.exports["AZURE_BATCH_ENDPOINT"]

    @property
    def account(self) -> str:
        return self.exports["AZURE_BATCH_ACCOUNT"]

    @property
    def key(self) -> str:
        return self.exports["AZURE_BATCH_ACCESS_KEY"]

    @property
    def connection_string(self) -> str:
        return self.exports.get("AZURE_STORAGE_CONNECTION_STRING", "")

    def wait_log(self, pattern: str, timeout: float = 60) -> str:
        """The first log line matching `pattern` (bounded wait)."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.log):
                if rx.search(line):
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no log line matches {pattern!r}:\n" + "\n".join(self.log))

    def batch_client(self) -> Any:
        """An azure-batch 15.1 client of this emulator (Shared Key)."""
        from azure.batch import BatchClient
        from azure.core.credentials import AzureNamedKeyCredential

        return BatchClient(self.endpoint, AzureNamedKeyCredential(self.account, self.key))

    def stop(self, *, check: bool = True, timeout: float = 60) -> int:
        """Ctrl-C, then wait; with `check`, nothing it started may be left."""
        p = self.proc
        if p is None:
            return 0
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
                raise AssertionError("mpibatch emulate did not stop within "
                                     f"{timeout}s of Ctrl-C:\n" + "\n".join(self.log)) from None
        if self._reader is not None:
            self._reader.join(5)
        if check:
            deadline = time.monotonic() + 10
            left = processes_mentioning(str(self.state_dir))
            while left and time.monotonic() < deadline:
                time.sleep(0.1)
                left = processes_mentioning(str(self.state_dir))
            assert not left, f"processes left after the emulator stopped: {left}"
        return p.returncode
