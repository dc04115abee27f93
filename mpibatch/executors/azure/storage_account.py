"""The storage account: which one, and its credentials, from the environment; and the one way the client side
builds an azure-storage-blob service client (storage.py's Storage uses it, and so does fileconventions.py).

Credentials come from the environment only - never from the spec, never printed or logged:

* ``AZURE_STORAGE_CONNECTION_STRING``, or
* ``AZURE_STORAGE_ACCOUNT`` + ``AZURE_STORAGE_KEY`` (+ ``AZURE_STORAGE_BLOB_ENDPOINT``, e.g. Azurite's
  ``http://127.0.0.1:10000/devstoreaccount1``), or
* ``AZURE_STORAGE_ACCOUNT`` alone: ``DefaultAzureCredential`` (azure-identity), and SAS URLs are user
  delegation SAS (the identity needs "Storage Blob Data Contributor" on the account).
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ...errors import InfraError, SpecError
from ...redaction import redact


def blob_service(*, connection_string: str = "", account_url: str = "", credential: Any = None, **kwargs: Any) -> Any:
    """The one way the client side builds an azure-storage-blob service client: from a connection string, or
    an account URL and a credential (key or azure-identity), with mpibatch's retries and timeouts unless the
    caller gives its own. (Blob transfers themselves go through launchers/blobio.py and blobdownload.py.)"""
    from azure.storage.blob import BlobServiceClient, ExponentialRetry

    settings: dict[str, Any] = {
        # Throttling and transient faults are retried with backoff by the SDK, then reported.
        "retry_policy": ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=3, random_jitter_range=1),
        "connection_timeout": 10, "read_timeout": 120,
        "max_single_put_size": 64 * 1024 * 1024,  # one Put Blob: the service stores its Content-MD5
        **kwargs,
    }
    if connection_string:
        return BlobServiceClient.from_connection_string(connection_string, **settings)
    return BlobServiceClient(account_url, credential=credential, **settings)


@dataclass(frozen=True)
class StorageAccount:
    """A service client for the account, its name, its key (None with azure-identity: SAS URLs are then user
    delegation SAS) and its blob endpoint (None: the service's own URL)."""

    service: Any  # azure.storage.blob.BlobServiceClient
    name: str
    key: str | None = field(default=None, repr=False)
    endpoint: str | None = None


def storage_account_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> StorageAccount:
    """The account the environment names; SpecError when there is none or its settings cannot be used (the key
    and connection string never appear in the message). `kwargs` go to :func:`blob_service`."""
    env = os.environ if env is None else env
    conn = env.get("AZURE_STORAGE_CONNECTION_STRING", "").strip()
    account = env.get("AZURE_STORAGE_ACCOUNT", "").strip()
    key = env.get("AZURE_STORAGE_KEY", "").strip()
    endpoint = env.get("AZURE_STORAGE_BLOB_ENDPOINT", "").strip()
    try:
        if conn:
            service = blob_service(connection_string=conn, **kwargs)
            account_key = getattr(getattr(service, "credential", None), "account_key", None)
            if not account_key:
                raise SpecError("AZURE_STORAGE_CONNECTION_STRING", "has no AccountKey, and mpibatch signs the "
                                "tasks' SAS URLs with the account key",
                                "use the connection string with AccountKey, or AZURE_STORAGE_ACCOUNT with "
                                "DefaultAzureCredential (user delegation SAS)")
            return StorageAccount(service, service.account_name or "", account_key)
        if not account:
            raise SpecError("AZURE_STORAGE_CONNECTION_STRING", "no storage account configured",
                            "export AZURE_STORAGE_CONNECTION_STRING, or AZURE_STORAGE_ACCOUNT "
                            "(+ AZURE_STORAGE_KEY, or sign in for DefaultAzureCredential)")
        if not re.fullmatch(r"[a-z0-9]{3,24}", account) and not endpoint:
            raise SpecError("AZURE_STORAGE_ACCOUNT", f"{account!r} is not a storage account name",
                            "use the account's name: 3-24 lower-case letters and digits")
        url = endpoint or f"https://{account}.blob.core.windows.net"
        if key:
            from azure.core.credentials import AzureNamedKeyCredential

            service = blob_service(account_url=url, credential=AzureNamedKeyCredential(account, key), **kwargs)
            return StorageAccount(service, account, key, url)
        from azure.identity import DefaultAzureCredential

        service = blob_service(account_url=url, credential=DefaultAzureCredential(), **kwargs)
        return StorageAccount(service, account, None, url)
    except (SpecError, InfraError):
        raise
    except ValueError as e:  # malformed connection string or key
        raise SpecError("AZURE_STORAGE_CONNECTION_STRING" if conn else "AZURE_STORAGE_KEY",
                        f"cannot be used: {redact(str(e), key, conn)}",
                        "copy it again from the portal (Access keys)") from None
