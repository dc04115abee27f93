"""The edge of the emulator's HTTP server: what is checked about a request before a byte of its body is
read (its declared length), reading or discarding a body within bounds, and a server that serves many
clients at once with a bounded number of threads.

A request is bounded (this module) and authenticated (auth.py) before its body is read, so a client
without the key can make the emulator hold at most a small buffer, and every refusal is an answer in
Batch's error format that the client can read: the unread body is read and thrown away (bounded in
bytes and time) before the connection is closed, so the close never destroys the answer."""
from __future__ import annotations

import io
import logging
import re
import socket
import sys
import threading
import time
from email.message import Message
from http.server import ThreadingHTTPServer
from typing import Any

from .errors import BatchError

log = logging.getLogger(__name__)
MAX_BODY = 4 * 1024 * 1024  # the largest body the emulator reads (the service refuses more with 413)
MAX_THREADS = 128  # connections served at once; more wait in the listen backlog
LISTEN_BACKLOG = 1024  # the kernel caps it at net.core.somaxconn
IDLE_TIMEOUT_S = 30.0  # a connection silent this long is closed (a client's pool reconnects)
DISCARD_MAX = 16 * 1024 * 1024  # bytes of a refused body read and thrown away so the answer gets through
DISCARD_S = 5.0
PIECE = 64 * 1024
_LENGTH = re.compile(r"[0-9]{1,18}")


def invalid_header(name: str, value: str) -> BatchError:
    return BatchError(400, "InvalidHeaderValue", "The value for one of the HTTP headers is not in the correct "
                      "format.", {"HeaderName": name, "HeaderValue": value[:40]})


def body_length(headers: Message) -> int:
    """The body's declared length, refused in Batch's words when it cannot be trusted: no length
    (chunked) 411, not a number 400. Reads nothing."""
    if headers.get("Transfer-Encoding"):
        raise BatchError(411, "MissingContentLengthHeader", "The Content-Length header is required: mpibatch "
                         "emulate does not take chunked request bodies.", {"HeaderName": "Content-Length"})
    values = [v.strip() for v in headers.get_all("Content-Length") or []]
    if not values:
        return 0
    if len(set(values)) != 1 or not _LENGTH.fullmatch(values[0]):
        raise invalid_header("Content-Length", ", ".join(values))
    return int(values[0])


def check_size(length: int) -> None:
    if length > MAX_BODY:
        raise BatchError(413, "RequestBodyTooLarge", "The request body is too large and exceeds the maximum "
                         "permissible limit.", {"MaxLimit": str(MAX_BODY)})


def discard(rfile: io.BufferedIOBase, sock: socket.socket, limit: int, seconds: float = DISCARD_S) -> int:
    """Read and throw away up to `limit` bytes (until the client stops sending, or `seconds`): the
    client's send completes and it can read the answer already sent. Returns the bytes discarded."""
    deadline = time.monotonic() + seconds
    done = 0
    try:
        while done < limit:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(min(left, IDLE_TIMEOUT_S))
            data = rfile.read1(min(PIECE, limit - done))
            if not data:
                break
            done += len(data)
    except OSError:  # the client went away or went silent: nothing more to wait for
        pass
    return done


class BoundedServer(ThreadingHTTPServer):
    """A ThreadingHTTPServer with a deep listen backlog (200 clients connecting at once are all
    accepted) and at most MAX_THREADS requests served at once: the accept loop waits for a free slot,
    connections wait in the backlog meanwhile. Once half the slots are taken, an answered keep-alive
    connection is closed, so idle clients do not hold slots others wait for."""

    request_queue_size = LISTEN_BACKLOG
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: Any, max_threads: int = MAX_THREADS) -> None:
        self.slots = threading.BoundedSemaphore(max_threads)
        self.max_threads = max_threads
        self.active = 0
        self._count_lock = threading.Lock()
        self.closing = threading.Event()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        while not self.slots.acquire(timeout=0.2):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        with self._count_lock:
            self.active += 1
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._count_lock:
            self.active -= 1
        self.slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away mid-answer is not an error of the emulator: no traceback for it."""
        if isinstance(sys.exc_info()[1], OSError):
            log.debug("client %s went away: %s", client_address, sys.exc_info()[1])
            return
        log.exception("request from %s", client_address)

    def saturated(self) -> bool:
        return self.active * 2 >= self.max_threads
