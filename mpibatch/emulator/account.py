"""Account-level lists: the applications (those of `--application`, apppackages.py), and the certificate
operations, refused in every API version: the service retired them. The supported images are images.py's."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import apppackages, odata
from .errors import CERTIFICATES_RETIRED, retired_operation

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"
Answer = tuple[int, Any, dict[str, str]]
def routes(emu: Emulator) -> list[tuple[str, str, Callable[..., Answer]]]:
    e = emu

    def applications(q: dict[str, list[str]]) -> Answer:
        listed = [apppackages.summary(v) for v in e.applications.values()]
        return 200, odata.page(listed, q, f"{e.endpoint}/applications"), {}

    def certificates(*_: Any) -> Answer:
        raise retired_operation("certificates", CERTIFICATES_RETIRED)

    one = r"/certificates\(([^/]*)\)"

    return [
        ("GET", "/applications", lambda q, b: applications(q)),
        ("GET", f"/applications/{ID}", lambda q, b, a: (200, apppackages.get(e.applications, a), {})),
        *((verb, path, certificates) for verb, path in (
            ("GET", "/certificates"), ("POST", "/certificates"), ("GET", one), ("DELETE", one),
            ("POST", one + "/canceldelete"))),
    ]
