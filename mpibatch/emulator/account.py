"""Account-level lists: the supported images (what the emulator's nodes stand in for: any Linux image
runs as this machine, so the list names the common ones and says so) and the applications (the emulator's
account has none: application packages are uploaded through Azure Resource Manager, which it does not
emulate - an empty list, and 404 for any id, as a service account without packages answers)."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import odata
from .errors import not_found

if TYPE_CHECKING:
    from .core import Emulator

ID = r"([^/]+)"
Answer = tuple[int, Any, dict[str, str]]
EMULATED = "mpibatch-emulate: runs as this machine's environment"
IMAGES = [("batch.node.ubuntu 22.04", "canonical", "0001-com-ubuntu-server-jammy", "22_04-lts"),
          ("batch.node.ubuntu 22.04", "microsoft-dsvm", "ubuntu-hpc", "2204"),
          ("batch.node.ubuntu 24.04", "canonical", "ubuntu-24_04-lts", "server"),
          ("batch.node.el 9", "almalinux", "almalinux-hpc", "9-hpc-gen2")]


def supported_images() -> list[dict[str, Any]]:
    return [{"nodeAgentSKUId": agent, "imageReference": {"publisher": pub, "offer": offer, "sku": sku,
                                                         "version": "latest"},
             "osType": "linux", "verificationType": "verified", "capabilities": [EMULATED]}
            for agent, pub, offer, sku in IMAGES]


def routes(emu: Emulator) -> list[tuple[str, str, Callable[..., Answer]]]:
    e = emu

    def application(app_id: str) -> Answer:
        raise not_found("Application")

    return [
        ("GET", "/supportedimages", lambda q, b: (200, odata.page(supported_images(), q,
                                                                   f"{e.endpoint}/supportedimages"), {})),
        ("GET", "/applications", lambda q, b: (200, odata.page([], q, f"{e.endpoint}/applications"), {})),
        ("GET", f"/applications/{ID}", lambda q, b, a: application(a)),
    ]
