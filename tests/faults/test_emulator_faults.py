"""Issue 19 against `mpibatch emulate` as a server (a real subprocess, reached over its socket): what a kill -9
and a hostile client used to break. Each test injects the fault; docs/fault-matrix.md lists them.

- 3: an answer 201 is durable (kill -9 right after it, restart, it is there).
- 15: Shared Key dates outside the service's 15-minute window are refused (no replay).
- 16: lengths are checked and requests authenticated before a body is read; every refusal is readable.
- 17: 200 clients connecting at once are all served.
- 18: deep JSON, deep $filter: 400 in Batch's format; a damaged state dir stops the start with one line.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from tests.infra import rawbatch
from tests.infra.emulator import EmulatorProcess

pytestmark = pytest.mark.azure
MPIBATCH = Path(sys.executable).parent / "mpibatch"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    e = EmulatorProcess(tmp_path_factory.mktemp("edge") / "state", storage="none", pools=("p:0",)).start()
    try:
        yield e
    finally:
        e.stop()
    assert not any("Traceback" in line for line in e.log), "\n".join(e.log)


def req(e: EmulatorProcess, method: str, path: str, body: bytes = b"", **kw: Any) -> rawbatch.Answer:
    return rawbatch.request(e.endpoint, e.account, e.key, method, path, body, **kw)


def values(a: rawbatch.Answer) -> dict[str, str]:
    return {v["key"]: v["value"] for v in a.json().get("values", [])}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------------------------------------- item 15
def test_item15_a_request_outside_the_15_minute_window_is_refused(emu: EmulatorProcess) -> None:
    assert req(emu, "GET", "/pools").status == 200
    now = time.time()
    for date in (formatdate(now - 16 * 60, usegmt=True), formatdate(now + 16 * 60, usegmt=True),
                 "Mon, 01 Jan 2001 00:00:00 GMT", "yesterday", None):
        a = req(emu, "GET", "/pools", date=date)
        assert (a.status, a.code) == (403, "AuthenticationFailed"), (date, a)
        detail = values(a)["AuthenticationErrorDetail"]
        assert ("date" in detail.lower()), detail
    # inside the window (14 minutes off) the same request is served
    assert req(emu, "GET", "/pools", date=formatdate(now - 14 * 60, usegmt=True)).status == 200
    # the plain Date header counts as well when there is no ocp-date
    a = req(emu, "GET", "/pools", date=None, extra={"Date": formatdate(now, usegmt=True)})
    assert a.status == 200, a


# ---------------------------------------------------------------------------------------------- item 16
def raw_exchange(e: EmulatorProcess, data: bytes) -> rawbatch.Answer:
    with socket.create_connection(rawbatch.host_port(e.endpoint), timeout=30) as s:
        s.sendall(data)
        return rawbatch.read_answer(s)


def test_item16_bad_lengths_are_batch_errors_before_any_body_is_read(emu: EmulatorProcess) -> None:
    for length, status, code in (("-1", 400, "InvalidHeaderValue"), ("abc", 400, "InvalidHeaderValue"),
                                 ("1e3", 400, "InvalidHeaderValue")):
        head = rawbatch.head("POST", "/jobs", emu.account, emu.key, body_len=None,
                             extra={"Content-Length": length})
        a = raw_exchange(emu, head + b"{" * 4096)
        assert (a.status, a.code) == (status, code), (length, a)
        assert a.headers.get("connection") == "close"
    head = rawbatch.head("POST", "/jobs", emu.account, emu.key, body_len=None,
                         extra={"Transfer-Encoding": "chunked"})
    a = raw_exchange(emu, head + b"5\r\nhello\r\n0\r\n\r\n")
    assert (a.status, a.code) == (411, "MissingContentLengthHeader"), a
    # http.server's own refusals come in Batch's format too
    a = raw_exchange(emu, b"BREW /pools HTTP/1.1\r\nHost: x\r\n\r\n")
    assert a.status == 501 and a.json()["code"] == "UnsupportedHttpVerb", a


def test_item16_an_oversized_body_gets_a_413_the_client_can_read(emu: EmulatorProcess) -> None:
    body = b"x" * (5 * 1024 * 1024)
    head = rawbatch.head("POST", "/jobs", emu.account, emu.key, body_len=len(body))
    a = raw_exchange(emu, head + body)  # sends all of it first, as simple clients do, then reads
    assert (a.status, a.code) == (413, "RequestBodyTooLarge"), a
    # unauthenticated with a body: refused, the answer readable, the body never parsed
    head = rawbatch.head("POST", "/jobs", emu.account, "d3Jvbmc=", body_len=1024 * 1024)
    a = raw_exchange(emu, head + b"[" * (1024 * 1024))
    assert (a.status, a.code) == (403, "AuthenticationFailed"), a


def test_item16_a_client_waiting_for_100_continue_gets_the_refusal_instead(emu: EmulatorProcess) -> None:
    head = rawbatch.head("POST", "/jobs", emu.account, "d3Jvbmc=", body_len=100,
                         extra={"Expect": "100-continue"})
    with socket.create_connection(rawbatch.host_port(emu.endpoint), timeout=30) as s:
        s.sendall(head)
        s.settimeout(10)
        first = s.recv(12)
    assert first == b"HTTP/1.1 403", first  # no "100 Continue" for a request that is refused


def test_item16_a_kept_alive_connection_serves_request_after_request(emu: EmulatorProcess) -> None:
    body = json.dumps({"id": "ka", "poolInfo": {"poolId": "p"}}).encode()
    with socket.create_connection(rawbatch.host_port(emu.endpoint), timeout=30) as s:
        s.sendall(rawbatch.head("POST", "/jobs", emu.account, emu.key, body_len=len(body),
                                extra={"Expect": "100-continue"}))
        s.settimeout(10)
        got = b""
        while not got.endswith(b"\r\n\r\n") and len(got) < 100:
            got += s.recv(1)
        assert got == b"HTTP/1.1 100 Continue\r\n\r\n", got  # authenticated and bounded: go on
        s.sendall(body)
        assert rawbatch.read_answer(s).status == 201
        for _ in range(2):  # the same connection, no Expect: a plain answer each time
            s.sendall(rawbatch.head("GET", "/jobs/ka", emu.account, emu.key))
            a = rawbatch.read_answer(s)
            assert a.status == 200 and a.json()["id"] == "ka", a
    assert req(emu, "DELETE", "/jobs/ka").status == 202


def test_item16_an_endless_body_of_unknown_length_costs_bounded_memory(emu: EmulatorProcess) -> None:
    assert emu.proc is not None
    before = rss_kib(emu.proc.pid)
    head = rawbatch.head("POST", "/jobs", emu.account, emu.key, body_len=None, extra={"Content-Length": "-1"})
    sent = 0
    piece = b"A" * (1024 * 1024)
    with socket.create_connection(rawbatch.host_port(emu.endpoint), timeout=30) as s:
        s.sendall(head)
        try:
            while sent < 200 * len(piece):
                s.sendall(piece)
                sent += len(piece)
        except OSError:
            pass  # the emulator stopped reading and closed: that is the point
    grew = rss_kib(emu.proc.pid) - before
    assert sent < 200 * len(piece), "the emulator took 200 MiB of an unauthenticated body of unknown length"
    assert grew < 32 * 1024, f"the emulator grew by {grew} KiB"


# ---------------------------------------------------------------------------------------------- item 17
def test_item17_200_clients_at_once_are_all_served(emu: EmulatorProcess) -> None:
    n = 200
    start = threading.Barrier(n, timeout=60)
    results: list[Any] = [None] * n

    def client(i: int) -> None:
        try:
            start.wait()
            results[i] = req(emu, "GET", "/pools").status
        except Exception as e:  # noqa: BLE001 - recorded and asserted below
            results[i] = repr(e)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    failed = [r for r in results if r != 200]
    assert not failed, f"{len(failed)} of {n} clients failed: {failed[:5]}"


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads")


def test_item17_idle_connections_never_take_more_than_the_bounded_threads(emu: EmulatorProcess) -> None:
    from mpibatch.emulator.edge import MAX_THREADS

    assert emu.proc is not None
    base = threads(emu.proc.pid)
    idle = []
    try:
        for _ in range(MAX_THREADS + 72):  # connected, never a byte sent
            idle.append(socket.create_connection(rawbatch.host_port(emu.endpoint), timeout=10))
        time.sleep(1)
        assert threads(emu.proc.pid) <= base + MAX_THREADS, threads(emu.proc.pid)
    finally:
        for s in idle:
            s.close()
    a = req(emu, "GET", "/pools")  # the slots come back as the idle connections close
    assert a.status == 200, a


# ---------------------------------------------------------------------------------------------- item 18
def test_item18_deeply_nested_bodies_and_filters_are_400_not_500(emu: EmulatorProcess) -> None:
    for raw in (b"[" * 200_000, b'{"id": "j", "poolInfo": {"poolId": "p"}, "metadata": ' + b"[" * 50
                + b"]" * 50 + b"}"):
        a = req(emu, "POST", "/jobs", raw)
        assert (a.status, a.code) == (400, "InvalidRequestBody"), a
        assert "nest" in values(a)["Reason"]
    deep = "(" * 5000 + "id eq 'a'" + ")" * 5000
    a = req(emu, "GET", "/pools", query=f"api-version={rawbatch.API}&$filter={quote(deep)}")
    assert (a.status, a.code) == (400, "InvalidQueryParameterValue"), a
    assert len(a.body) < 2000  # the filter is not echoed whole
    # a long flat chain is fine: it is evaluated without recursion
    chain = " and ".join(["id ne 'zz'"] * 250)
    a = req(emu, "GET", "/pools", query=f"api-version={rawbatch.API}&$filter={quote(chain)}")
    assert a.status == 200 and [p["id"] for p in a.json()["value"]] == ["p"], a


def start_on(state: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AZURE_", "MPIBATCH_"))}
    return subprocess.run([str(MPIBATCH), "emulate", "--port", "0", "--storage", "none", "--state-dir", str(state)],
                          env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


GOOD_JOB = {"id": "j", "state": "active"}


@pytest.mark.parametrize("name,make", [
    ("truncated", lambda d: (d / "state.json").write_text('{"seq": 1, "jobs": {"j": {"id": "j"')),
    ("binary", lambda d: (d / "state.json").write_bytes(bytes(range(256)) * 4)),
    ("a list", lambda d: (d / "state.json").write_text("[1, 2, 3]")),
    ("a directory", lambda d: (d / "state.json").mkdir()),
    ("a job without an id", lambda d: (d / "state.json").write_text(json.dumps({"jobs": {"j": {"state": "active"}}}))),
    ("a damaged journal line", lambda d: (d / "journal.jsonl").write_text(
        '{"seq": 1, "kind": "jobs", "key": "j", "value": null}\n{"seq": 2, "ki\n{"seq": 3}\n')),
    ("a journal job without an id", lambda d: (d / "journal.jsonl").write_text(
        json.dumps({"seq": 1, "kind": "jobs", "key": "j", "value": {"state": "active"}}) + "\n")),
])
def test_item18_a_damaged_state_dir_stops_the_start_with_one_line(tmp_path: Path, name: str, make: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    make(state)
    p = start_on(state)
    assert p.returncode == 3, (name, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip() and "EMULATOR" not in line]
    assert len(lines) == 1 and str(state) in lines[0] and "Traceback" not in p.stderr, (name, p.stderr)
    assert "export" not in p.stdout


# ---------------------------------------------------------------------------------------------- item 3
def test_item3_what_was_answered_201_survives_a_kill_9(tmp_path: Path) -> None:
    state = tmp_path / "state"
    acknowledged: set[str] = set()
    for round_ in range(4):
        e = EmulatorProcess(state, storage="none", pools=("p:0",)).start()
        try:
            if round_ == 0:
                a = rawbatch.send_json(e.endpoint, e.account, e.key, "POST", "/jobs",
                                       {"id": "j", "poolInfo": {"poolId": "p"}})
                assert a.status == 201, a
            for i in range(5):
                tid = f"t{round_}-{i}"
                a = rawbatch.send_json(e.endpoint, e.account, e.key, "POST", "/jobs/j/tasks",
                                       {"id": tid, "commandLine": "/bin/true"})
                assert a.status == 201, a
                acknowledged.add(tid)
            assert e.proc is not None
            e.proc.send_signal(signal.SIGKILL)  # right after the last answer
            e.proc.wait(10)
        finally:
            e.stop(check=False)
    e = EmulatorProcess(state, storage="none", pools=("p:0",)).start()
    try:
        a = rawbatch.request(e.endpoint, e.account, e.key, "GET", "/jobs/j/tasks")
        assert a.status == 200, a
        have = {t["id"] for t in a.json()["value"]}
        assert acknowledged <= have, f"lost after kill -9: {sorted(acknowledged - have)}"
    finally:
        e.stop()


def test_item3_a_last_journal_line_cut_by_a_crash_is_ignored(tmp_path: Path) -> None:
    from mpibatch.emulator.state import Store

    store = Store(tmp_path)
    store.start_saving()
    try:
        store.jobs["j"] = {"id": "j", "state": "active"}
        store.mark(("jobs", store.jobs["j"]))
        store.flush()
    finally:
        store._stop.set()
    with open(tmp_path / "journal.jsonl", "ab") as f:
        f.write(b'{"seq": 99, "kind": "jobs", "key": "k", "value": {"id": "k", "st')  # never acknowledged
    (tmp_path / ".mpibatch-0123456789abcdef.part").write_bytes(b'{"seq": 1, "jo')  # a snapshot cut short
    again = Store(tmp_path)
    again.load()
    assert set(again.jobs) == {"j"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["journal.jsonl", "state.json"]
