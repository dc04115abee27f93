"""Account-level lists: the applications (the emulator's account has none: application packages are uploaded
through Azure Resource Manager, which it does not emulate - an empty list, and 404 for any id, as a service
account without packages answers), and the certificate operations, refused in every API version: the
service retired them. The supported images are images.py's."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import odata
from .errors import CERTIFICATES_RETIRED, not_found, retired_operation

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"
Answer = tuple[int, Any, dict[str, str]]
def routes(emu: Emulator) -> list[tuple[str, str, Callable[..., Answer]]]:
    e = emu

    def application(app_id: str) -> Answer:
        raise not_found("Application")

    def certificates(*_: Any) -> Answer:
        raise retired_operation("certificates", CERTIFICATES_RETIRED)

    one = r"/certificates\(([^/]*)\)"

    return [
        ("GET", "/applications", lambda q, b: (200, odata.page([], q, f"{e.endpoint}/applications"), {})),
        ("GET", f"/applications/{ID}", lambda q, b, a: application(a)),
        *((verb, path, certificates) for verb, path in (
            ("GET", "/certificates"), ("POST", "/certificates"), ("GET", one), ("DELETE", one),
            ("POST", one + "/canceldelete"))),
    ]
