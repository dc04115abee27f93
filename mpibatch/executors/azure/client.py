"""The Batch account: credentials from the environment, and every SDK call with its errors mapped.

Credentials come from the environment only, never from the spec, and are never printed or logged:
``AZURE_BATCH_ENDPOINT`` with ``AZURE_BATCH_ACCOUNT`` + ``AZURE_BATCH_ACCESS_KEY`` (Shared Key), or
``DefaultAzureCredential`` (azure-identity) when there is no key.

Throttling (429, 503 with Retry-After) and transient failures are retried by the SDK's retry policy
(exponential backoff, Retry-After honoured), then reported as InfraError (exit 3). Not-found and
already-exists reach the caller, which knows what they mean there.
"""
from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from ...errors import SpecError
from ...redaction import redact
from .errors import Service, first_line, is_auth_error, throttled, to_infra_error

ENV_ENDPOINT = "AZURE_BATCH_ENDPOINT"
ENV_ACCOUNT = "AZURE_BATCH_ACCOUNT"
ENV_KEY = "AZURE_BATCH_ACCESS_KEY"
RETRY = {"retry_total": 6, "retry_backoff_factor": 0.8, "retry_backoff_max": 30, "retry_connect": 3,
         "retry_read": 3, "retry_status": 6, "connection_timeout": 15, "read_timeout": 120}
@dataclass(frozen=True)
class BatchAccount:
    endpoint: str
    name: str
    shared_key: bool

    @property
    def host(self) -> str:
        return urlparse(self.endpoint).netloc or self.endpoint


def batch_client_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> tuple[Any, BatchAccount]:
    """A BatchClient and what to call the account in messages. The key never leaves the credential."""
    from azure.batch import BatchClient

    env = os.environ if env is None else env
    endpoint = env.get(ENV_ENDPOINT, "").strip().rstrip("/")
    if not endpoint:
        raise SpecError(ENV_ENDPOINT, "is not set", "export AZURE_BATCH_ENDPOINT=https://<account>.<region>.batch."
                        "azure.com (az batch account show --query accountEndpoint)")
    if "://" not in endpoint:
        endpoint = "https://" + endpoint
    host = urlparse(endpoint).hostname or ""
    account = env.get(ENV_ACCOUNT, "").strip() or host.split(".")[0] or host
    key = env.get(ENV_KEY, "").strip()
    options = {**RETRY, **kwargs}
    if key:
        if not env.get(ENV_ACCOUNT, "").strip():
            raise SpecError(ENV_ACCOUNT, "is not set but AZURE_BATCH_ACCESS_KEY is",
                            "export AZURE_BATCH_ACCOUNT=<account name> (Shared Key signs with it)")
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise SpecError(ENV_KEY, "is not a Batch account key (not base64)",
                            "copy the primary or secondary key again: az batch account keys list") from None
        from azure.core.credentials import AzureNamedKeyCredential

        client = BatchClient(endpoint, AzureNamedKeyCredential(account, key), **options)
        return client, BatchAccount(endpoint, account, True)
    from azure.identity import DefaultAzureCredential

    if endpoint.startswith("http://"):
        options.setdefault("enforce_https", False)
    client = BatchClient(endpoint, DefaultAzureCredential(), **options)
    return client, BatchAccount(endpoint, account, False)


def state_of(value: Any) -> str:
    """An SDK enum (or string, or None) as a lower-case string."""
    return (getattr(value, "value", value) or "").lower() if value is not None else ""


class Batch:
    """One Batch account: the SDK client, built from the environment on first use, and the calls the
    executor makes, errors mapped to mpibatch's (never quoting a secret)."""

    def __init__(self, client: Any = None, *, account: BatchAccount | None = None,
                 env: Mapping[str, str] | None = None, client_kwargs: Mapping[str, Any] | None = None) -> None:
        self._env = dict(os.environ if env is None else env)
        self._client = client
        self._account = account
        self._client_kwargs = dict(client_kwargs or {})

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client, self._account = batch_client_from_env(self._env, **self._client_kwargs)
        return self._client

    @property
    def account(self) -> BatchAccount:
        if self._account is None:
            if self._client is not None:
                ep = str(getattr(getattr(self._client, "_config", None), "endpoint", "batch"))
                self._account = BatchAccount(ep, self._env.get(ENV_ACCOUNT) or urlparse(ep).netloc, True)
            else:
                _ = self.client
        assert self._account is not None
        return self._account

    @property
    def key(self) -> str | None:
        return self._env.get(ENV_KEY)

    # ------------------------------------------------------------------ errors
    def call(self, doing: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """One Batch call (the SDK retries throttling and transient faults). Not-found and
        already-exists go to the caller; everything else becomes an InfraError without secrets."""
        from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError, ResourceNotFoundError

        _ = self.client
        try:
            return fn(*args, **kwargs)
        except (ResourceNotFoundError, ResourceExistsError):
            raise
        except AzureError as e:
            if isinstance(e, HttpResponseError) and e.status_code == 404 and not is_auth_error(e):
                raise  # e.g. 404 mapped by a policy without the not-found class
            raise to_infra_error(e, self.who, doing) from None

    @property
    def who(self) -> Service:
        acct = self.account
        hint = "check AZURE_BATCH_ACCESS_KEY" if acct.shared_key else \
            "check your Azure sign-in (DefaultAzureCredential) and its role on the account"
        return Service(f"Batch account {acct.name}", acct.host, hint, self.redact)

    def message(self, e: BaseException) -> str:
        """The first line of what the service (or the SDK) said, without secrets."""
        return first_line(e, self.redact)

    def redact(self, text: str) -> str:
        return redact(text, self.key)

    def no_task(self, job_id: str, task_id: str) -> SpecError:
        return SpecError("task", f"task {job_id}/{task_id} does not exist in Batch account {self.account.name}",
                         "check the job and task ids")

    # ------------------------------------------------------------------ reads (None when not found)
    def get_job(self, job_id: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.call(f"getting job {job_id}", self.client.get_job, job_id)
        except ResourceNotFoundError:
            return None

    def get_task(self, job_id: str, task_id: str) -> Any | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.call(f"getting task {job_id}/{task_id}", self.client.get_task, job_id, task_id)
        except ResourceNotFoundError:
            return None

    def task(self, job_id: str, task_id: str) -> Any:
        """The task; bad input when there is none."""
        task = self.get_task(job_id, task_id)
        if task is None:
            raise self.no_task(job_id, task_id)
        return task

    def subtasks(self, job_id: str, task_id: str) -> list[Any]:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.call(f"listing subtasks of {job_id}/{task_id}",
                             lambda: list(self.client.list_subtasks(job_id, task_id)))
        except ResourceNotFoundError:
            return []


__all__ = ["Batch", "BatchAccount", "ENV_ACCOUNT", "ENV_ENDPOINT", "ENV_KEY", "batch_client_from_env", "state_of",
           "throttled"]
