"""`devtools_testutils.helpers` as the azure-batch tests use it."""
from __future__ import annotations

import inspect
from typing import Any


def is_live_and_not_recording() -> bool:
    """False: requests go through `proxy_testcase.transform_request` (to the emulator), as when recording."""
    return False


def trim_kwargs_from_test_function(fn: Any, kwargs: dict[str, Any]) -> None:
    """Drop the keyword arguments `fn` cannot take (all kept when it takes **kwargs)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    for key in [k for k in kwargs if k not in params]:
        del kwargs[key]
