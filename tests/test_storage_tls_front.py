"""Blob transfers through an HTTPS proxy (the environment's `HTTPS_PROXY`, as urllib and requests read it), and
scripts/storage_tls_front.py, the HTTPS front that lets code which can only say
`https://<account>.blob.core.windows.net` (Microsoft's Batch samples) reach the emulator's Azurite. The
emulator's output-file uploads go through `launchers/blobio.py`: before it honoured the proxy, the ffmpeg
sample's output upload failed with `FileUploadFailed ... Name or service not known`."""
from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from azure.storage.blob import BlobServiceClient, generate_container_sas
from mpibatch.launchers.blobio import ContainerClient, https_proxy_for

from tests.infra.fixtures import Azurite

FRONT = Path(__file__).resolve().parent.parent / "scripts" / "storage_tls_front.py"
BLOB_HOST = "devstoreaccount1.blob.core.windows.net"


def test_https_proxy_for_reads_the_environment_as_urllib_does() -> None:
    assert https_proxy_for("a.blob.core.windows.net", {}) is None
    env = {"HTTPS_PROXY": "http://127.0.0.1:3128", "NO_PROXY": "127.0.0.1,localhost,.internal.example"}
    assert https_proxy_for("a.blob.core.windows.net", env) == "127.0.0.1:3128"
    assert https_proxy_for("a.blob.core.windows.net:443", env) == "127.0.0.1:3128"
    assert https_proxy_for("127.0.0.1:10000", env) is None
    assert https_proxy_for("store.internal.example", env) is None
    assert https_proxy_for("x", {"https_proxy": "proxy.example:8080"}) == "proxy.example:8080"
    assert https_proxy_for("x", {"https_proxy": "http://p", "no_proxy": "*"}) is None


@pytest.fixture
def front(azurite: Azurite, tmp_path: Path) -> Iterator[tuple[int, Path]]:
    proc = subprocess.Popen([sys.executable, str(FRONT), "--azurite-port", str(azurite.port), "--dir",
                             str(tmp_path / "front")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # printed once it listens: "export HTTPS_PROXY=http://127.0.0.1:N ..."
        assert first.startswith("export HTTPS_PROXY=http://127.0.0.1:"), first + proc.stderr.read()
        port = int(first.split()[1].rsplit(":", 1)[1])
        yield port, tmp_path / "front" / "ca.pem"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_blobio_reaches_an_https_account_url_through_the_proxy(
        azurite: Azurite, front: tuple[int, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    port, ca = front
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.create_container("viaproxy")
    sas = generate_container_sas(azurite.account, "viaproxy", account_key=azurite.key, permission="rcwl",
                                 expiry=datetime.now(timezone.utc) + timedelta(hours=1))
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("SSL_CERT_FILE", str(ca))  # the front's own CA, never the system's
    src = tmp_path / "out.mp3"
    src.write_bytes(b"\x00mp3" * 5000)
    client = ContainerClient(f"https://{BLOB_HOST}/viaproxy?{sas}", retries=0)
    client.upload_file(str(src), "sub/out.mp3")
    got = service.get_blob_client("viaproxy", "sub/out.mp3").download_blob().readall()
    assert got == src.read_bytes()
    assert [b.name for b in client.list_blobs()] == ["sub/out.mp3"]


def test_the_front_refuses_every_other_host(front: tuple[int, Path]) -> None:
    port, ca = front
    assert ca.parent.stat().st_mode & 0o077 == 0  # the CA's key is its owner's alone
    for target in ("example.com:443", f"{BLOB_HOST}:80", "127.0.0.1:22"):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
            assert s.recv(100).startswith(b"HTTP/1.1 403"), target
