"""The one adapter from the Azure SDK's errors (Batch and Storage alike) to mpibatch's InfraError.

Every call into the Batch or Storage SDK that fails for a reason other than "not found" / "already
exists" (which callers handle) becomes one line: who was called, what mpibatch was doing, and the
first line of what the service said, secrets masked. Imports the SDK only when an error is adapted.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ...errors import InfraError

AUTH_CODES = ("AuthenticationFailed", "InvalidAuthenticationInfo")


@dataclass(frozen=True)
class Service:
    """Who a failed call went to: ``what`` ("Batch account x", "storage account y") at ``host``;
    ``auth_hint`` says what to check when it refused the credentials; ``redact`` masks secrets."""

    what: str
    host: str
    auth_hint: str
    redact: Callable[[str], str]


def first_line(e: BaseException, redact: Callable[[str], str]) -> str:
    """The first line of what the service (or the SDK) said, without secrets."""
    err = getattr(e, "error", None)
    text = getattr(getattr(err, "message", None), "value", None) or getattr(err, "message", None)
    if not isinstance(text, str) or not text:
        text = str(getattr(e, "message", None) or e)
    return redact(text.strip().splitlines()[0] if text.strip() else "")


def throttled(status: int | None) -> str:
    return " (throttled: retried with backoff, still refused)" if status in (429, 503) else ""


def is_auth_error(e: BaseException) -> bool:
    """The service refused the credentials (as opposed to the request)."""
    from azure.core.exceptions import ClientAuthenticationError

    return isinstance(e, ClientAuthenticationError) or refused_credentials(getattr(e, "status_code", None),
                                                                           error_code(e))


def refused_credentials(status: int | None, code: str) -> bool:
    return code in AUTH_CODES or (status in (401, 403) and not code)


def error_code(e: BaseException) -> str:
    """The service's error code (Batch: ``error.code``; Storage: ``error_code``), or ''."""
    return str(getattr(getattr(e, "error", None), "code", None) or getattr(e, "error_code", None) or "")


def to_infra_error(e: BaseException, service: Service, doing: str) -> InfraError:
    """One line for a failed SDK call; `doing` says what mpibatch was doing ("creating job j1")."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError

    msg = first_line(e, service.redact)
    if isinstance(e, ServiceRequestError):
        return InfraError(f"{service.what} unreachable at {service.host} while {doing}: {msg}")
    if is_auth_error(e):
        return auth_failed(service, doing, msg)
    if isinstance(e, HttpResponseError):
        return http_failed(service, doing, e.status_code, error_code(e), msg)
    if isinstance(e, OSError):
        return InfraError(f"{service.what} at {service.host}: {doing} failed: {service.redact(str(e))}")
    return InfraError(f"{service.what}: {doing} failed: {e.__class__.__name__}: {msg}")


def auth_failed(service: Service, doing: str, msg: str) -> InfraError:
    return InfraError(f"authentication failed for {service.what} at {service.host} while {doing} "
                      f"({service.auth_hint}): {msg}")


def http_failed(service: Service, doing: str, status: int | None, code: str, msg: str) -> InfraError:
    """A refused request, from an SDK error or a raw response (status, the service's code, its message)."""
    if refused_credentials(status, code):
        return auth_failed(service, doing, msg)
    return InfraError(f"{service.what}: {doing} failed: HTTP {status} {code}{': ' if msg else ''}{msg}"
                      f"{throttled(status)}")


__all__ = ["AUTH_CODES", "Service", "auth_failed", "error_code", "first_line", "http_failed", "is_auth_error",
           "throttled", "to_infra_error"]
