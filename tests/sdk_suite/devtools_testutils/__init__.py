"""A small stand-in for the parts of Azure's `devtools_testutils` (not on PyPI) that azure-batch 15.1.0's
`tests/` import, so that those files run unchanged against `mpibatch emulate`.

The mode it gives them is "live, through a proxy, nothing recorded": every request goes over HTTP to the
emulator the test's AccountPreparer started (`proxy_testcase.transform_request` sends it there, as Azure's
test proxy would forward it), `is_live` is true (so the tests' own wait loops run), and there is no
recording, playback, sanitizer or matcher: those calls are accepted and do nothing. Resource-group and
storage-account preparers only pass names on: the emulator has no management plane."""
from __future__ import annotations

import functools
import inspect
import os
from typing import Any

import pytest

from devtools_testutils.helpers import trim_kwargs_from_test_function
from devtools_testutils.proxy_testcase import recorded_by_proxy

__all__ = [
    "AzureMgmtPreparer", "AzureMgmtRecordedTestCase", "AzureRecordedTestCase", "AzureTestError",
    "CachedResourceGroupPreparer", "EnvironmentVariableLoader", "FakeResource", "ResourceGroupPreparer",
    "StorageAccountPreparer", "add_general_regex_sanitizer", "recorded_by_proxy", "remove_batch_sanitizers",
    "set_custom_default_matcher", "test_proxy", "trim_kwargs_from_test_function",
]


class AzureTestError(Exception):
    pass


class FakeResource:
    def __init__(self, name: str, id: str) -> None:  # noqa: A002 - the name devtools_testutils uses
        self.name = name
        self.id = id


class AzureRecordedTestCase:
    """The test class base: live, with the credential its AccountPreparer put on the instance."""

    @property
    def is_live(self) -> bool:
        return True

    def get_credential(self, client_class: Any, **_: Any) -> Any:
        credential = getattr(self, "batch_credential", None)
        if credential is None:
            raise AzureTestError("no account: decorate the test with an AccountPreparer first")
        return credential


class AzureMgmtRecordedTestCase(AzureRecordedTestCase):
    pass


class AzureMgmtPreparer:
    """A decorator that makes a resource before the test and removes it after it, passing it in as keyword
    arguments. Subclasses implement `create_resource(name, **kwargs) -> dict` and `remove_resource`."""

    is_live = True

    def __init__(self, name_prefix: str = "", random_name_length: int = 24, **_: Any) -> None:
        self.name_prefix = name_prefix
        self.test_class_instance: Any = None

    def create_resource(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return {}

    def remove_resource(self, name: str, **kwargs: Any) -> None:
        return None

    def resource_name(self, test_name: str) -> str:
        # Batch ids: letters, digits, '-', '_'; the name says which test made it.
        return (self.name_prefix + test_name.replace("test_", "", 1))[:40]

    def __call__(self, fn: Any) -> Any:
        if not inspect.iscoroutinefunction(fn):
            raise AzureTestError(f"{fn.__name__}: this stand-in prepares async test functions only")

        @functools.wraps(fn)
        async def prepared(test_self: Any, *args: Any, **kwargs: Any) -> Any:
            self.test_class_instance = test_self
            name = self.resource_name(fn.__name__)
            kwargs.update(self.create_resource(name, **kwargs))
            try:
                return await fn(test_self, *args, **kwargs)
            finally:
                self.remove_resource(name, **kwargs)

        return prepared


class _PassName(AzureMgmtPreparer):
    """A management-plane resource the emulator has no counterpart for: only its name is passed on."""

    def __init__(self, parameter_name: str, name_prefix: str = "", **kwargs: Any) -> None:
        super().__init__(name_prefix)
        self.parameter_name = parameter_name

    def create_resource(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return {self.parameter_name: FakeResource(name=name, id=name)}


def CachedResourceGroupPreparer(**kwargs: Any) -> AzureMgmtPreparer:  # noqa: N802 - the name it has upstream
    return _PassName("resource_group", name_prefix="rg")


ResourceGroupPreparer = CachedResourceGroupPreparer


def StorageAccountPreparer(name_prefix: str = "storage", **kwargs: Any) -> AzureMgmtPreparer:  # noqa: N802
    """Asks the AccountPreparer after it for an account with auto-storage (the emulator's Azurite)."""
    return _PassName("storage_account", name_prefix=name_prefix)


class EnvironmentVariableLoader(AzureMgmtPreparer):
    """Passes each named value: `$NAME` (upper case) when set, else the default the test gives."""

    def __init__(self, directory: str, **defaults: str) -> None:
        super().__init__()
        self.defaults = defaults

    def create_resource(self, name: str, **kwargs: Any) -> dict[str, Any]:
        return {key: os.environ.get(key.upper(), value) for key, value in self.defaults.items()}


def _accepted(*_: Any, **__: Any) -> None:
    """Recording sanitizers and matchers: there is no recording, so nothing to sanitize or match."""


set_custom_default_matcher = _accepted
remove_batch_sanitizers = _accepted
add_general_regex_sanitizer = _accepted


@pytest.fixture(scope="session")
def test_proxy() -> None:
    """Azure's fixture starts its test proxy; here the emulator of each test takes that place."""
