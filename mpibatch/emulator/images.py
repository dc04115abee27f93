"""The images a pool may name: `GET /supportedimages` ("Account - List Supported Images", from api-version
2019-06-01.9.0 on) and, for the versions before it, `GET /nodeagentskus` ("Account - List Node Agent SKUs",
the same facts grouped by node agent SKU). Batch answers its live list; the emulator answers this fixed one,
the common marketplace images with their node agent SKU ids. `batchSupportEndOfLife` is the end of the
distribution's (or Windows Server's) standard support; images past it stay listed so that older code that asks
for them still finds them. Nodes run on this machine whatever image a pool names (docs/emulator.md). Pure."""
from __future__ import annotations

from typing import Any

from .errors import BatchError

# (publisher, offer, sku, node agent SKU id, osType, capabilities, batchSupportEndOfLife)
_IMAGES: tuple[tuple[str, str, str, str, str, tuple[str, ...], str], ...] = (
    ("canonical", "ubuntu-24_04-lts", "server", "batch.node.ubuntu 24.04", "linux", (), "2029-04-30"),
    ("canonical", "0001-com-ubuntu-server-jammy", "22_04-lts", "batch.node.ubuntu 22.04", "linux", (), "2027-04-30"),
    ("canonical", "0001-com-ubuntu-server-focal", "20_04-lts", "batch.node.ubuntu 20.04", "linux", (), "2025-05-31"),
    ("canonical", "ubuntuserver", "18.04-lts", "batch.node.ubuntu 18.04", "linux", (), "2023-05-31"),
    ("canonical", "ubuntuserver", "16.04-lts", "batch.node.ubuntu 16.04", "linux", (), "2021-04-30"),
    ("microsoft-dsvm", "ubuntu-hpc", "2204", "batch.node.ubuntu 22.04", "linux", (), "2027-04-30"),
    ("microsoft-dsvm", "ubuntu-hpc", "2004", "batch.node.ubuntu 20.04", "linux", (), "2025-04-30"),
    ("almalinux", "almalinux-hpc", "8_7-hpc-gen2", "batch.node.el 8", "linux", (), "2029-03-01"),
    ("almalinux", "almalinux-hpc", "8_6-hpc-gen2", "batch.node.el 8", "linux", (), "2029-03-01"),
    ("openlogic", "centos-hpc", "7.7", "batch.node.centos 7", "linux", (), "2024-06-30"),
    ("openlogic", "centos-hpc", "7.4", "batch.node.centos 7", "linux", (), "2024-06-30"),
    ("openlogic", "centos", "7_9", "batch.node.centos 7", "linux", (), "2024-06-30"),
    ("microsoft-azure-batch", "ubuntu-server-container", "20-04-lts", "batch.node.ubuntu 20.04", "linux",
     ("DockerCompatible",), "2025-04-30"),
    ("microsoft-azure-batch", "ubuntu-server-container", "16-04-lts", "batch.node.ubuntu 16.04", "linux",
     ("DockerCompatible",), "2021-04-30"),
    ("microsoftwindowsserver", "windowsserver", "2022-datacenter", "batch.node.windows amd64", "windows", (),
     "2031-10-14"),
    ("microsoftwindowsserver", "windowsserver", "2019-datacenter", "batch.node.windows amd64", "windows", (),
     "2029-01-09"),
    ("microsoftwindowsserver", "windowsserver", "2016-datacenter", "batch.node.windows amd64", "windows", (),
     "2027-01-12"),
    ("microsoftwindowsserver", "windowsserver", "2019-datacenter-with-containers", "batch.node.windows amd64",
     "windows", ("DockerCompatible",), "2029-01-09"),
)
NODE_AGENT_SKUS_UNTIL = "2018-12-01"  # the last api-version with /nodeagentskus (azure-batch 6.0's 2018-12-01.8.0)


def _reference(publisher: str, offer: str, sku: str) -> dict[str, str]:
    return {"publisher": publisher, "offer": offer, "sku": sku, "version": "latest"}


def supported_images() -> list[dict[str, Any]]:
    """Every image, in the shape of `AccountListSupportedImagesResult.value` items."""
    out = []
    for publisher, offer, sku, agent, os_type, caps, eol in _IMAGES:
        item: dict[str, Any] = {"nodeAgentSKUId": agent, "imageReference": _reference(publisher, offer, sku),
                                "osType": os_type, "verificationType": "verified",
                                "batchSupportEndOfLife": f"{eol}T00:00:00Z"}
        if caps:
            item["capabilities"] = list(caps)
        out.append(item)
    return out


def node_agent_skus(api_version: str) -> list[dict[str, Any]]:
    """The same images grouped by node agent SKU (`NodeAgentSku`: id, verifiedImageReferences, osType), for the
    api-versions that had this operation; later ones are told to use /supportedimages."""
    if api_version[:10] > NODE_AGENT_SKUS_UNTIL:
        raise BatchError(400, "InvalidUri", "The requested URI does not represent any resource on the server.",
                         {"Reason": f"/nodeagentskus ended with api-version 2018-12-01.8.0; api-version "
                                    f"{api_version[:40]} lists images with GET /supportedimages"})
    skus: dict[str, dict[str, Any]] = {}
    for publisher, offer, sku, agent, os_type, _caps, _eol in _IMAGES:
        entry = skus.setdefault(agent, {"id": agent, "verifiedImageReferences": [], "osType": os_type})
        entry["verifiedImageReferences"].append(_reference(publisher, offer, sku))
    return list(skus.values())
