"""Batch's error body and the errors the emulator answers with (the Batch REST API's error codes)."""
from __future__ import annotations

import secrets
from datetime import datetime, timezone
from typing import Any

# Status codes the SDK's retry policy does not retry: "not emulated" must fail at once, never loop.
NOT_EMULATED_STATUS = 501


def now_iso() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def rfc1123() -> str:
    return datetime.now(timezone.utc).strftime("%a, %d %b %Y %H:%M:%S GMT")


def new_etag() -> str:
    return f"0x{secrets.token_hex(8).upper()}"


class BatchError(Exception):
    """An answer in Batch's error format: status, code, message and key/value details."""

    def __init__(self, status: int, code: str, message: str, values: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.values = values or {}
        self.headers = headers or {}

    def body(self, request_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"code": self.code, "message": {
            "lang": "en-US", "value": f"{self.message}\nRequestId:{request_id}\nTime:{now_iso()}"}}
        if self.values:
            out["values"] = [{"key": k, "value": v} for k, v in self.values.items()]
        return out


def not_emulated(what: str, hint: str = "") -> BatchError:
    """The one answer for everything the emulator does not do: never a silent success."""
    return BatchError(NOT_EMULATED_STATUS, "NotSupportedByEmulator",
                      f"mpibatch emulate does not emulate {what}" + (f": {hint}" if hint else "") +
                      " (see docs/emulator.md for what is emulated)", {"Feature": what})


# Retired by the service: REST reference, Certificate - Add (api-version 2024-07-01.20.0): "This operation is
# deprecated and will be removed after February, 2024. Please use the Azure KeyVault Extension instead";
# API 2025-06-01 has no certificate operations or certificateReferences (azure-batch 15.1.0's changelog).
CERTIFICATES_RETIRED = ("Batch account certificates were retired by the Azure Batch service after February 2024 "
                        "and removed from API 2025-06-01; use the Azure Key Vault VM extension")


def retired_operation(feature: str, why: str) -> BatchError:
    """An operation of a feature the service retired: refused with the reason, in every API version."""
    return BatchError(400, "FeatureRetired", f"{why}.", {"Feature": feature, "Reason": why})


def invalid_body(reason: str) -> BatchError:
    return BatchError(400, "InvalidRequestBody", "The specified Request Body is not syntactically valid.",
                      {"Reason": reason})


def invalid_value(prop: str, reason: str) -> BatchError:
    return BatchError(400, "InvalidPropertyValue", "The value provided for one of the properties in the request "
                      "body is invalid.", {"PropertyName": prop, "Reason": reason})


def missing_property(prop: str) -> BatchError:
    return BatchError(400, "MissingRequiredProperty", "A required property was not specified in the request body.",
                      {"PropertyName": prop})


def not_found(kind: str) -> BatchError:
    """404 with the service's code: PoolNotFound, JobNotFound, TaskNotFound, NodeNotFound, FileNotFound."""
    return BatchError(404, f"{kind}NotFound", f"The specified {kind.lower()} does not exist.")


def exists(kind: str) -> BatchError:
    return BatchError(409, f"{kind}Exists", f"The specified {kind.lower()} already exists.")
