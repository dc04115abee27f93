"""What the emulator accepts in a request body. The shape (properties, JSON types, required ones) is the
request's API version's, from the tables generated from the published specifications (versions.py): unknown
properties and wrong types are refused before anything is created (400 InvalidRequestBody, as the service
answers a body it cannot read). Properties of the version that ask for something the emulator does not do
(NOT_EMULATED) are refused with NotSupportedByEmulator; any other property of the version is accepted and
stored. Pure."""
from __future__ import annotations

import re
from typing import Any

from . import errors, versions
from .errors import BatchError, invalid_body, invalid_value, missing_property, not_emulated

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Known, but what they ask for is not emulated: refused rather than silently ignored.
NOT_EMULATED = {
    "job": {"networkConfiguration": "job network configuration",
            "jobManagerTask.authenticationTokenSettings": "authentication tokens"},
    "task": {"authenticationTokenSettings":
             "authentication tokens", "affinityInfo": "task affinity",
             "resourceFiles.identityReference": "managed identities"},
}
# Retired by the service itself: refused with the reason, as a property the service no longer takes.
_CLOUD_SERVICES = ("Cloud Services pools (cloudServiceConfiguration) were retired by the Azure Batch service in "
                   "2024; use virtualMachineConfiguration")
RETIRED = {
    "pool": {"cloudServiceConfiguration": _CLOUD_SERVICES, "certificateReferences": errors.CERTIFICATES_RETIRED},
    "job": {"poolInfo.autoPoolSpecification.pool.cloudServiceConfiguration": _CLOUD_SERVICES},
    "job schedule": {"jobSpecification.poolInfo.autoPoolSpecification.pool.cloudServiceConfiguration":
                     _CLOUD_SERVICES},
}


def _lookup(body: dict[str, Any], dotted: str) -> Any:
    cur: Any = body
    for part in dotted.split("."):
        if isinstance(cur, list):
            return next((x.get(part) for x in cur if isinstance(x, dict) and x.get(part) is not None), None)
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def validate(body: Any, role: str, entity: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a request body against its model in the request's API version (role: 'pool.add', 'job.add',
    'task.add', 'pool.resize', 'job.terminate'); raise the first problem as the service would. Returns the
    body with today's property names."""
    if isinstance(body, dict):  # retired is said in every version, also those whose models no longer know it
        _refuse_retired(body, entity)
    return check_rules(versions.read(body, role, entity), entity, required)


def _refuse_retired(body: dict[str, Any], entity: str) -> None:
    for prop, why in RETIRED.get(entity, {}).items():
        if _lookup(body, prop) not in (None, False, 0, [], {}):
            raise BatchError(400, "InvalidPropertyValue", f"{why}.", {"PropertyName": prop, "Reason": why})


def check_rules(body: dict[str, Any], entity: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """The emulator's own rules past the model (a part of a body the model already read, e.g. an auto pool's
    pool): required properties, the id, what the service retired, what is not emulated."""
    for name in required:
        if _lookup(body, name) in (None, ""):
            raise missing_property(name)
    if "id" in required:
        check_id(body["id"], "id")
    _refuse_retired(body, entity)
    for prop, what in NOT_EMULATED.get(entity, {}).items():
        value = _lookup(body, prop)
        if value not in (None, False, 0, [], {}):
            raise not_emulated(what, f"remove '{prop}'")
    return body


def drop_registry_password(task: dict[str, Any]) -> None:
    """A task's containerSettings.registry.password is never used (no containers run here), so never kept:
    not stored, not answered."""
    registry = (task.get("containerSettings") or {}).get("registry")
    if isinstance(registry, dict):
        registry.pop("password", None)


def check_id(value: Any, prop: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise invalid_value(prop, "an id has 1 to 64 characters: letters, digits, hyphens and underscores")
    return value


MAX_DEPTH = 32  # Batch's bodies nest about 8 deep; deeper is refused before anything walks it


def depth(value: Any) -> int:
    """How deeply `value` nests objects and arrays (iterative: no recursion whatever the input)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            deepest = max(deepest, d)
            stack.extend((x, d + 1) for x in v if isinstance(x, (dict, list)))
    return deepest


def parse_json(raw: bytes) -> Any:
    import json

    too_deep = invalid_body(f"the body nests objects and arrays more than {MAX_DEPTH} deep")
    try:
        value = json.loads(raw or b"{}")
    except RecursionError:  # the parser's own bound, far deeper than MAX_DEPTH
        raise too_deep from None
    except ValueError as e:
        raise invalid_body(f"not valid JSON: {str(e)[:120]}") from None
    if depth(value) > MAX_DEPTH:
        raise too_deep
    return value


def enum(value: Any, prop: str, allowed: tuple[str, ...]) -> str:
    text = str(value).lower()
    if text not in [a.lower() for a in allowed]:
        raise invalid_value(prop, f"must be one of {', '.join(allowed)}")
    return next(a for a in allowed if a.lower() == text)


__all__ = ["BatchError", "check_id", "check_rules", "enum", "parse_json", "validate"]
