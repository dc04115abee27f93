"""The data-plane API versions the emulator answers, and each version's request and response shapes.

The shapes are generated (scripts/gen_batch_shapes.py) from the models Microsoft generates from the published
REST specifications, one table per version in shapes/. A request is read with its version's models (an
unknown property or a wrong JSON type is 400 InvalidRequestBody, a missing required one
MissingRequiredProperty) and stored under today's names; an answer is cut to the models of the version asked
for: properties that version did not have are left out, renamed ones carry their old name.

The version of the request being served is per thread (`begin`, called once the api-version is checked), so
the views and validators need no extra argument; without a request (the emulator's own calls) it is the newest."""
from __future__ import annotations

import contextvars
import json
from functools import cache
from pathlib import Path
from typing import Any

from .errors import BatchError, invalid_body, missing_property
from .stats import stats_of

SHAPES = Path(__file__).resolve().parent / "shapes"
# Same property under a new name (old wire name -> new): the store keeps the new one. Found by diffing the
# tables (scripts/gen_batch_shapes.py's output) between versions; the other differences are additions and
# removals, or a change of structure the emulator does not translate (see docs/emulator.md).
RENAMED = {"maxTasksPerNode": "taskSlotsPerNode"}
TYPE_NAMES = {"string": "a string", "duration": "an ISO 8601 duration string", "datetime": "a date-time string",
              "int": "an integer", "number": "a number", "bool": "a boolean", "map": "an object"}


@cache
def known() -> tuple[str, ...]:
    """Every accepted api-version, oldest first."""
    index = json.loads((SHAPES / "index.json").read_text())
    return tuple(v["version"] for v in index["versions"])


@cache
def table(version: str) -> dict[str, Any]:
    t: dict[str, Any] = json.loads((SHAPES / f"{version}.json").read_text())
    return t


_request: contextvars.ContextVar[tuple[str, bool]] = contextvars.ContextVar("batch_request", default=("", False))


def current() -> str:
    return _request.get()[0] or known()[-1]


def expand_stats() -> bool:
    return _request.get()[1]


def begin(query: dict[str, list[str]]) -> str:
    """Check the request's api-version and make it (and whether stats are asked for) the thread's current one."""
    version = (query.get("api-version") or [""])[0]
    if not version:
        raise BatchError(400, "MissingRequiredQueryParameter", "A query parameter that's mandatory for "
                         "this request is not specified.", {"QueryParameterName": "api-version"})
    if version not in known():
        raise BatchError(400, "UnsupportedRequestVersion", "The specified request version is not supported.",
                         {"QueryParameterName": "api-version", "QueryParameterValue": version[:40],
                          "Reason": f"mpibatch emulate takes the data-plane versions {known()[0]} to "
                                    f"{known()[-1]}: {', '.join(known())}"})
    expand = (query.get("$expand") or [""])[0]  # its value is checked with the other OData options (odata.py)
    _request.set((version, expand.strip().lower() == "stats"))
    return version


def _fields(model: str, version: str) -> dict[str, list[Any]]:
    fields: dict[str, list[Any]] = table(version)["models"].get(model, {})
    return fields


# ----------------------------------------------------------------------------------------------- requests
def read(body: Any, role: str, entity: str, version: str | None = None) -> dict[str, Any]:
    """A request body (role: 'pool.add', 'job.add', 'task.add', 'pool.resize', 'job.terminate') checked
    against the version's model and returned with today's property names."""
    version = version or current()
    if not isinstance(body, dict):
        raise invalid_body(f"the body must be a JSON object describing the {entity}")
    if role not in table(version)["roots"]:  # an operation newer than the version: its first version's model
        version = next(v for v in known() if role in table(v)["roots"])
    return _read_obj(body, table(version)["roots"][role], "", entity, version)


def _read_obj(value: Any, model: str, where: str, entity: str, version: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise invalid_body(f"property '{where}' must be an object")
    fields, out = _fields(model, version), dict[str, Any]()
    for k, v in value.items():
        if k not in fields:
            raise invalid_body(f"the property '{k}' does not exist on the {entity} in API version {version}"
                               + (f" (in '{where}')" if where else ""))
        path = f"{where}.{k}" if where else k
        out[RENAMED.get(k) or str(k)] = None if v is None else _read(v, fields[k][0], path, entity, version)
    for k, (_kind, required, read_only) in fields.items():  # a read-only property is never asked of a request
        if required and not read_only and value.get(k) in (None, ""):
            raise missing_property(f"{where}.{k}" if where else k)
    return out


def _read(value: Any, kind: str, where: str, entity: str, version: str) -> Any:
    if kind.startswith("["):
        if not isinstance(value, list):
            raise invalid_body(f"property '{where}' must be an array")
        return [_read(v, kind[1:-1], f"{where}[{i}]", entity, version) for i, v in enumerate(value)]
    if kind.startswith("@"):
        return _read_obj(value, kind[1:], where, entity, version)
    ok = {"string": str, "duration": str, "datetime": str, "map": dict}.get(kind)
    if ok is not None and not isinstance(value, ok):
        raise invalid_body(f"property '{where}' must be {TYPE_NAMES[kind]}, not {type(value).__name__}")
    if kind in ("int", "number", "bool") and not _number_ok(value, kind):
        raise invalid_body(f"property '{where}' must be {TYPE_NAMES[kind]}, not {type(value).__name__}")
    return value


def _number_ok(value: Any, kind: str) -> bool:
    if kind == "bool":
        return isinstance(value, bool)
    allowed = (int,) if kind == "int" else (int, float)
    return isinstance(value, allowed) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------- responses
def answer(resource: dict[str, Any], role: str, version: str | None = None) -> dict[str, Any]:
    """A stored pool / job / task / node / subtask / preparation-and-release status (public fields) in the
    shape of the version asked for."""
    version = version or current()
    model = table(version)["roots"][role]
    if expand_stats() and "stats" in _fields(model, version):
        stats_model = _fields(model, version)["stats"][0][1:]
        resource = {**resource, "stats": stats_of(resource, stats_model, table(version)["models"])}
    return _shape_obj(resource, model, version)


def _shape_obj(value: dict[str, Any], model: str, version: str) -> dict[str, Any]:
    out = {}
    for k, (kind, _req, _ro) in _fields(model, version).items():
        src = k if k in value else RENAMED.get(k)
        if src is not None and src in value and value[src] is not None:
            out[k] = _shape(value[src], kind, version)
    return out


def _shape(value: Any, kind: str, version: str) -> Any:
    if kind.startswith("[") and isinstance(value, list):
        return [_shape(v, kind[1:-1], version) for v in value]
    if kind.startswith("@") and isinstance(value, dict):
        return _shape_obj(value, kind[1:], version)
    return value


def task_counts(result: dict[str, Any], version: str | None = None) -> dict[str, Any]:
    """A job's task counts ({"taskCounts", "taskSlotCounts"}) as the version answers them: versions before
    task slots answered the task counts alone."""
    version = version or current()
    model = table(version)["roots"]["job.taskcounts"]
    if "taskCounts" not in _fields(model, version):
        return _shape_obj(result["taskCounts"], model, version)
    return _shape_obj(result, model, version)


def differences(old: str, new: str, role: str) -> tuple[list[str], list[str]]:
    """(added, removed) top-level wire names of a role's model from one version to another (for docs/tests)."""
    a = set(_fields(table(old)["roots"][role], old))
    b = set(_fields(table(new)["roots"][role], new))
    return sorted(b - a), sorted(a - b)
