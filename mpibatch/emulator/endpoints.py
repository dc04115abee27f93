"""A node's `endpointConfiguration` and `ipv6Address` from its pool's networkConfiguration: one inbound
endpoint per inbound NAT pool (`<name>.<node index>`, frontend port = range start + index), addresses on
this machine's loopback (nothing listens there for the node: they say where the service would map it)."""
from __future__ import annotations

from typing import Any


def node_network(pool: dict[str, Any], index: int) -> dict[str, Any]:
    net = pool.get("networkConfiguration") or {}
    nat = (net.get("endpointConfiguration") or {}).get("inboundNATPools") or []
    out: dict[str, Any] = {}
    if nat:
        out["endpointConfiguration"] = {"inboundEndpoints": [{
            "name": f"{p.get('name')}.{index}", "protocol": p.get("protocol") or "tcp",
            "publicIPAddress": "127.0.0.1", "publicFQDN": f"{pool['id'].lower()}.mpibatch-emulate.localhost",
            "frontendPort": int(p.get("frontendPortRangeStart") or 0) + index,
            "backendPort": int(p.get("backendPort") or 0)} for p in nat]}
    families = [f.lower() for f in ((net.get("publicIPAddressConfiguration") or {}).get("ipFamilies") or [])]
    if "ipv6" in families:
        out["ipv6Address"] = f"::ffff:127.0.2.{index % 250 + 1}"  # the node's IPv4 loopback address, mapped
    return out
