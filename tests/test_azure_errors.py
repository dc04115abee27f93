"""The one adapter from the Azure SDK's errors to mpibatch's (mpibatch/executors/azure/errors.py): real SDK
exception classes, one line each, secrets masked, Batch and Storage worded alike."""
from __future__ import annotations

from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

from mpibatch.executors.azure.errors import Service, http_failed, to_infra_error
from mpibatch.redaction import redact

KEY = "c2VjcmV0LWtleS1ub3QtcmVhbA=="
STORAGE = Service("storage account acct", "127.0.0.1:10000", "check AZURE_STORAGE_KEY", lambda t: redact(t, KEY))
BATCH = Service("Batch account b", "b.example", "check AZURE_BATCH_ACCESS_KEY", lambda t: redact(t, KEY))


def test_unreachable_names_the_host_and_what_was_being_done() -> None:
    e = to_infra_error(ServiceRequestError(f"connection refused (key {KEY})"), STORAGE, "listing j/t")
    assert str(e).startswith("storage account acct unreachable at 127.0.0.1:10000 while listing j/t: "
                             "connection refused (key ")
    assert KEY not in str(e)


def test_refused_credentials_say_what_to_check_for_either_service() -> None:
    for service, hint in ((STORAGE, "AZURE_STORAGE_KEY"), (BATCH, "AZURE_BATCH_ACCESS_KEY")):
        e = to_infra_error(ClientAuthenticationError("Server failed to authenticate the request."), service, "x")
        assert str(e).startswith(f"authentication failed for {service.what} at {service.host} while x")
        assert hint in str(e)
    assert "authentication failed" in str(http_failed(BATCH, "adding 2 tasks", 403, "", "denied"))
    assert "authentication failed" in str(http_failed(BATCH, "adding 2 tasks", 400, "AuthenticationFailed", "no"))


def test_a_refused_request_gives_status_code_and_the_first_line() -> None:
    e = HttpResponseError(message="The specified container is being deleted.\nRequestId:1")
    e.status_code = 409
    e.error_code = "ContainerBeingDeleted"
    got = str(to_infra_error(e, STORAGE, "creating container job-x"))
    assert got == ("storage account acct: creating container job-x failed: HTTP 409 ContainerBeingDeleted: "
                   "The specified container is being deleted.")
    assert str(http_failed(BATCH, "adding 3 tasks to job j", 503, "ServerBusy", "busy")).endswith(
        "HTTP 503 ServerBusy: busy (throttled: retried with backoff, still refused)")
