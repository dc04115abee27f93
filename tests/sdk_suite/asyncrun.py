"""A pytest plugin that runs `async def` tests with asyncio.run (what pytest-asyncio's auto mode does for
the azure-sdk repository), so that azure-batch's test file runs without another dependency."""
from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: Any) -> bool | None:
    fn = pyfuncitem.obj
    if not inspect.iscoroutinefunction(fn):
        return None
    args = {name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames}
    asyncio.run(fn(**args))
    return True
