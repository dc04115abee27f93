"""Batch REST requests written byte by byte on a socket, signed with Shared Key as the SDKs sign them:
what a hostile or broken client sends (a bad length, no date, a stream that never ends) is exactly what
the test says, which no SDK lets a test do."""
from __future__ import annotations

import json
import socket
import urllib.parse
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from mpibatch.emulator import auth

API = "2025-06-01"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def code(self) -> str:
        return str(self.json()["code"])


def host_port(endpoint: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(endpoint)
    return u.hostname or "127.0.0.1", u.port or 80


def head(method: str, path: str, account: str, key: str, *, body_len: int | None = 0,
         date: str | None = "now", extra: dict[str, str] | None = None, sign: bool = True,
         query: str = f"api-version={API}") -> bytes:
    """The request line and headers of a signed request (`date=None`: no date header at all)."""
    h: dict[str, str] = {"Content-Type": "application/json; odata=minimalmetadata"}
    if body_len is not None:
        h["Content-Length"] = str(body_len)
    if date is not None:
        h["ocp-date"] = formatdate(usegmt=True) if date == "now" else date
    h.update(extra or {})
    if sign:
        text = auth.string_to_sign(method, path, query, h, account)
        h["Authorization"] = f"SharedKey {account}:{auth.sign(key, text)}"
    lines = [f"{method} {path}?{query} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in h.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_answer(sock: socket.socket, timeout: float = 30) -> Answer:
    """One HTTP answer (status, headers, a Content-Length body) from `sock`."""
    sock.settimeout(timeout)
    f = sock.makefile("rb")
    try:
        status_line = f.readline(65536).decode("latin-1")
        while status_line.startswith("HTTP/1.1 100"):  # "100 Continue" and its empty line
            f.readline(65536)
            status_line = f.readline(65536).decode("latin-1")
        if not status_line:
            raise ConnectionError("the connection closed before an answer")
        headers: dict[str, str] = {}
        for _ in range(200):
            line = f.readline(65536).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", "0")))
    finally:
        f.close()
    return Answer(int(status_line.split()[1]), headers, body)


def request(endpoint: str, account: str, key: str, method: str, path: str, body: bytes = b"",
            **kwargs: Any) -> Answer:
    """One signed request on its own connection."""
    with socket.create_connection(host_port(endpoint), timeout=30) as s:
        s.sendall(head(method, path, account, key, body_len=len(body), **kwargs) + body)
        return read_answer(s)


def send_json(endpoint: str, account: str, key: str, method: str, path: str, value: Any) -> Answer:
    return request(endpoint, account, key, method, path, json.dumps(value).encode())
