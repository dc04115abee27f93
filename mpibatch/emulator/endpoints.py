"""A node's `endpointConfiguration` and `ipv6Address` from its pool's networkConfiguration: one inbound
endpoint per inbound NAT pool and IP family (`<name>.<node index>`, frontend port = range start + index;
with `IPv6` in `publicIPAddressConfiguration.ipFamilies` a second one on the node's IPv6 address, as the
service lists one per public IP), addresses on this machine's loopback (nothing listens there for the node:
they say where the service would map it). Pure."""
from __future__ import annotations

from typing import Any


def node_network(pool: dict[str, Any], index: int) -> dict[str, Any]:
    net = pool.get("networkConfiguration") or {}
    nat = (net.get("endpointConfiguration") or {}).get("inboundNATPools") or []
    families = [f.lower() for f in ((net.get("publicIPAddressConfiguration") or {}).get("ipFamilies") or [])]
    out: dict[str, Any] = {}
    addresses = ["127.0.0.1"]
    if "ipv6" in families:
        out["ipv6Address"] = f"::ffff:127.0.2.{index % 250 + 1}"  # the node's IPv4 loopback address, mapped
        addresses.append(out["ipv6Address"])
    if nat:
        out["endpointConfiguration"] = {"inboundEndpoints": [{
            "name": f"{p.get('name')}.{index}", "protocol": p.get("protocol") or "tcp",
            "publicIPAddress": address, "publicFQDN": f"{pool['id'].lower()}.mpibatch-emulate.localhost",
            "frontendPort": int(p.get("frontendPortRangeStart") or 0) + index,
            "backendPort": int(p.get("backendPort") or 0)} for p in nat for address in addresses]}
    return out
