"""The Azurite fixture (tests/infra/fixtures.py) serves real blob storage."""

from __future__ import annotations

import urllib.request
from datetime import datetime, timedelta, timezone

import pytest
from azure.storage.blob import BlobSasPermissions, BlobServiceClient, generate_blob_sas

from tests.infra.fixtures import Azurite, azurite  # noqa: F401

pytestmark = pytest.mark.azure


def test_azurite_container_and_blob_round_trip(azurite: Azurite) -> None:
    assert azurite.account == "devstoreaccount1"
    assert azurite.blob_endpoint == f"http://127.0.0.1:{azurite.port}/devstoreaccount1"
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.create_container("infra-test")
    try:
        container.upload_blob("dir/hello.txt", b"hello azurite\n")
        assert container.download_blob("dir/hello.txt").readall() == b"hello azurite\n"
        assert [b.name for b in container.list_blobs()] == ["dir/hello.txt"]
        # A SAS made with the account key works with plain urllib (how nodes fetch resource files).
        sas = generate_blob_sas(
            azurite.account, "infra-test", "dir/hello.txt", account_key=azurite.key,
            permission=BlobSasPermissions(read=True), expiry=datetime.now(timezone.utc) + timedelta(hours=1),
        )
        url = f"{azurite.blob_endpoint}/infra-test/dir/hello.txt?{sas}"
        with urllib.request.urlopen(url, timeout=10) as resp:
            assert resp.read() == b"hello azurite\n"
    finally:
        service.delete_container("infra-test")
