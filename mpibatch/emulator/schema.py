"""What the emulator accepts in a request body: every documented property of the add-pool, add-job and
add-task bodies (REST API 2024-02-01 / 2025-06-01), with its JSON type. Unknown properties and wrong types
are refused before anything is created (400 InvalidRequestBody, as the service answers a body it cannot
read); properties it knows but does not emulate are refused with NotSupportedByEmulator. Pure."""
from __future__ import annotations

import re
from typing import Any

from .errors import BatchError, invalid_body, invalid_value, missing_property, not_emulated

ID_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
ANY = "any"  # accepted as given, not checked further

NAME_VALUE = {"name": str, "value": str}
RESOURCE_FILE = {"autoStorageContainerName": str, "storageContainerUrl": str, "httpUrl": str, "blobPrefix": str,
                 "filePath": str, "fileMode": str, "identityReference": ANY}
CONTAINER_SETTINGS = ANY
USER_IDENTITY = {"username": str, "autoUser": {"scope": str, "elevationLevel": str}}
OUTPUT_FILE = {"filePattern": str, "destination": {"container": {"path": str, "containerUrl": str,
                                                                 "identityReference": ANY, "uploadHeaders": ANY}},
               "uploadOptions": {"uploadCondition": str}}
START_TASK = {"commandLine": str, "containerSettings": CONTAINER_SETTINGS, "resourceFiles": [RESOURCE_FILE],
              "environmentSettings": [NAME_VALUE], "userIdentity": USER_IDENTITY, "maxTaskRetryCount": int,
              "waitForSuccess": bool}
CONSTRAINTS = {"maxWallClockTime": str, "retentionTime": str, "maxTaskRetryCount": int}
POOL = {"id": str, "displayName": str, "vmSize": str, "cloudServiceConfiguration": ANY,
        "virtualMachineConfiguration": ANY, "resizeTimeout": str, "resourceTags": ANY,
        "targetDedicatedNodes": int, "targetLowPriorityNodes": int, "enableAutoScale": bool,
        "autoScaleFormula": str, "autoScaleEvaluationInterval": str, "enableInterNodeCommunication": bool,
        "networkConfiguration": ANY, "startTask": START_TASK, "certificateReferences": ANY,
        "applicationPackageReferences": ANY, "applicationLicenses": ANY, "taskSlotsPerNode": int,
        "taskSchedulingPolicy": {"nodeFillType": str}, "userAccounts": ANY, "metadata": [NAME_VALUE],
        "mountConfiguration": ANY, "targetNodeCommunicationMode": str, "upgradePolicy": ANY}
JOB_PREP = {"id": str, "commandLine": str, "containerSettings": CONTAINER_SETTINGS, "resourceFiles": [RESOURCE_FILE],
            "environmentSettings": [NAME_VALUE], "constraints": CONSTRAINTS, "waitForSuccess": bool,
            "userIdentity": USER_IDENTITY, "rerunOnNodeRebootAfterSuccess": bool}
JOB_RELEASE = {"id": str, "commandLine": str, "containerSettings": CONTAINER_SETTINGS,
               "resourceFiles": [RESOURCE_FILE], "environmentSettings": [NAME_VALUE], "maxWallClockTime": str,
               "retentionTime": str, "userIdentity": USER_IDENTITY}
JOB = {"id": str, "displayName": str, "priority": int, "maxParallelTasks": int, "allowTaskPreemption": bool,
       "constraints": {"maxWallClockTime": str, "maxTaskRetryCount": int}, "jobManagerTask": ANY,
       "jobPreparationTask": JOB_PREP, "jobReleaseTask": JOB_RELEASE, "commonEnvironmentSettings": [NAME_VALUE],
       "poolInfo": {"poolId": str, "autoPoolSpecification": ANY}, "onAllTasksComplete": str,
       "onTaskFailure": str, "networkConfiguration": ANY, "metadata": [NAME_VALUE],
       "usesTaskDependencies": bool}
TASK = {"id": str, "displayName": str, "commandLine": str, "containerSettings": CONTAINER_SETTINGS,
        "exitConditions": ANY, "resourceFiles": [RESOURCE_FILE], "outputFiles": [OUTPUT_FILE],
        "environmentSettings": [NAME_VALUE], "affinityInfo": {"affinityId": str}, "constraints": CONSTRAINTS,
        "requiredSlots": int, "userIdentity": USER_IDENTITY,
        "multiInstanceSettings": {"numberOfInstances": int, "coordinationCommandLine": str,
                                  "commonResourceFiles": [RESOURCE_FILE]},
        "dependsOn": {"taskIds": [str], "taskIdRanges": [{"start": int, "end": int}]},
        "applicationPackageReferences": ANY, "authenticationTokenSettings": ANY}
RESIZE = {"targetDedicatedNodes": int, "targetLowPriorityNodes": int, "resizeTimeout": str,
          "nodeDeallocationOption": str}
TERMINATE_JOB = {"terminateReason": str, "force": bool}

# Known, but what they ask for is not emulated: refused rather than silently ignored.
NOT_EMULATED = {
    "pool": {"enableAutoScale": "autoscale (set targetDedicatedNodes)", "autoScaleFormula": "autoscale formulas",
             "mountConfiguration": "mounted file systems", "applicationPackageReferences": "application packages",
             "certificateReferences": "certificates", "cloudServiceConfiguration": "cloud service pools"},
    "job": {"jobManagerTask": "job manager tasks", "poolInfo.autoPoolSpecification": "auto pools",
            "networkConfiguration": "job network configuration"},
    "task": {"exitConditions": "task exit conditions", "containerSettings": "container tasks",
             "applicationPackageReferences": "application packages", "authenticationTokenSettings":
             "authentication tokens", "affinityInfo": "task affinity",
             "resourceFiles.identityReference": "managed identities"},
}
TYPE_NAMES = {str: "a string", int: "an integer", bool: "a boolean"}


def _check(value: Any, spec: Any, where: str, entity: str) -> None:
    if spec is ANY:
        return
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            raise invalid_body(f"property '{where}' must be an object")
        for k, v in value.items():
            if k not in spec:
                raise invalid_body(f"the property '{k}' does not exist on the {entity}"
                                   + (f" (in '{where}')" if where else ""))
            if v is not None:
                _check(v, spec[k], f"{where}.{k}" if where else k, entity)
        return
    if isinstance(spec, list):
        if not isinstance(value, list):
            raise invalid_body(f"property '{where}' must be an array")
        for i, item in enumerate(value):
            _check(item, spec[0], f"{where}[{i}]", entity)
        return
    ok = isinstance(value, spec) and not (spec is int and isinstance(value, bool))
    if not ok:
        raise invalid_body(f"property '{where}' must be {TYPE_NAMES[spec]}, not {type(value).__name__}")


def _lookup(body: dict[str, Any], dotted: str) -> Any:
    cur: Any = body
    for part in dotted.split("."):
        if isinstance(cur, list):
            return next((x.get(part) for x in cur if isinstance(x, dict) and x.get(part) is not None), None)
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


def validate(body: Any, spec: dict[str, Any], entity: str, required: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check a request body against `spec`; raise the first problem as the service would."""
    if not isinstance(body, dict):
        raise invalid_body(f"the body must be a JSON object describing the {entity}")
    _check(body, spec, "", entity)
    for name in required:
        if _lookup(body, name) in (None, ""):
            raise missing_property(name)
    if "id" in spec and "id" in required:
        check_id(body["id"], "id")
    for prop, what in NOT_EMULATED.get(entity, {}).items():
        value = _lookup(body, prop)
        if value not in (None, False, 0, [], {}):
            raise not_emulated(what, f"remove '{prop}'")
    return body


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


__all__ = ["BatchError", "JOB", "POOL", "RESIZE", "TASK", "TERMINATE_JOB", "check_id", "enum", "parse_json",
           "validate"]
