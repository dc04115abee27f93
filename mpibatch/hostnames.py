"""One host as it may appear in a host list, a hostfile or an SSH target: an IPv4/IPv6 address or an
RFC 1123 name, nothing a shell would treat specially. Pure functions.

Every host mpibatch puts into a shell line (``mpirun -hosts ...``) has gone through :func:`validate_host`;
a host name is the easiest place for ``;rm -rf /`` to sneak in.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence

from mpibatch.errors import SpecError, shown

__all__ = ["check_hosts", "host_key", "is_ipv6", "validate_host"]

# Patterns are applied with fullmatch(): re's '$' also matches before a trailing newline.
# RFC 1123 label: letters, digits and '-', 1-63 chars, no '-' at either end.
_LABEL = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
# IPv6 zone ids (fe80::1%eth0) are interface names; keep them to characters that are inert in a shell.
_ZONE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_HOST_FIX = "give a bare IPv4/IPv6 address such as 10.0.0.4, or a host name made of letters, digits, '-' and '.'"



def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address if `host` is a literal IPv4/IPv6 address in strict form, else None."""
    try:
        return ipaddress.IPv4Address(host)  # rejects leading zeros, short forms like "10.1"
    except ValueError:
        pass
    try:
        addr = ipaddress.IPv6Address(host)
    except ValueError:
        return None
    # ipaddress accepts any text after '%' as a zone id - including "$(id)". Not here.
    if addr.scope_id is not None and not _ZONE.fullmatch(addr.scope_id):
        return None
    return addr


def is_ipv6(host: str) -> bool:
    """True if `host` is a literal IPv6 address (these need brackets wherever ':' separates a port)."""
    return isinstance(_ip(host), ipaddress.IPv6Address)


def _bad_char(host: str) -> str | None:
    for ch in host:
        if not (ch.isascii() and (ch.isalnum() or ch in ".-:%_")):
            return ch
    return None


def validate_host(host: str, field: str = "hosts") -> str:
    """Return `host` unchanged if it is an IPv4 address, an IPv6 address or an RFC 1123 host name.

    Anything else raises :class:`SpecError`: empty strings, spaces, shell metacharacters, a leading '-'
    (it would be read as an option), labels over 63 characters, names over 253 characters, and all-numeric
    names that are not valid IPv4 addresses (``10.0.0.04``, ``12345``: resolvers read those as addresses).
    """
    if not isinstance(host, str):
        raise SpecError(field, f"expected a host name or address, got {type(host).__name__} {shown(host)}", _HOST_FIX)
    if host == "":
        raise SpecError(field, "the host is empty", _HOST_FIX)
    if _ip(host) is not None:
        return host
    bad = _bad_char(host)
    if bad is not None:
        raise SpecError(
            field,
            f"{shown(host)} is not an IP address or host name: it contains {shown(bad)}, which is not allowed "
            "(host names end up in shell command lines)",
            _HOST_FIX,
        )
    if ":" in host or "%" in host:
        raise SpecError(field, f"{shown(host)} is not a valid IPv6 address",
                        "write it as e.g. fd00::4 (no brackets, no port)")
    if host.startswith("-"):
        raise SpecError(field, f"{shown(host)} starts with '-', so a command would read it as an option", _HOST_FIX)
    if len(host) > 253:
        raise SpecError(field, f"host name is {len(host)} characters long; the limit is 253",
                        "use a shorter name or the IP address")
    labels = host.split(".")
    for label in labels:
        if label == "":
            raise SpecError(
                field,
                f"{shown(host)} has an empty label (a leading, trailing or doubled '.')",
                "remove the extra '.'",
            )
        if not _LABEL.fullmatch(label):
            if len(label) > 63:
                raise SpecError(field, f"label {shown(label[:20])}... of {shown(host)} is {len(label)} characters; "
                                "the limit is 63", _HOST_FIX)
            raise SpecError(
                field,
                f"label {shown(label)} of {shown(host)} is not a valid host name label "
                "(letters, digits and '-' only, not starting or ending with '-')",
                _HOST_FIX,
            )
    if labels[-1].isdigit():
        # "10.0.0.04" or "12345": not a valid address, and resolvers would not treat it as a name either.
        raise SpecError(
            field,
            f"{shown(host)} looks like an IPv4 address but is not a valid one",
            "write four numbers 0-255 without leading zeros, e.g. 10.0.0.4",
        )
    return host


def host_key(host: str) -> str:
    """Identity for duplicate detection: addresses in canonical form, names case-insensitively."""
    addr = _ip(host)
    return str(addr) if addr is not None else host.lower()


def check_hosts(hosts: Sequence[str], field: str) -> list[str]:
    """Validate a list of hosts: not empty, every entry valid, no duplicates. Returns a new list."""
    if isinstance(hosts, str) or not isinstance(hosts, Sequence):
        raise SpecError(field, f"expected a list of hosts, got {type(hosts).__name__}",
                        "pass a list such as ['10.0.0.4', '10.0.0.5']")
    if len(hosts) == 0:
        raise SpecError(field, "the host list is empty", "give at least one host")
    seen: dict[str, int] = {}
    out: list[str] = []
    for i, host in enumerate(hosts):
        validate_host(host, f"{field}[{i}]")
        key = host_key(host)
        if key in seen:
            raise SpecError(
                f"{field}[{i}]",
                f"host {shown(host)} is listed twice (also at position {seen[key]})",
                "list each node once; set processes per node instead of repeating a host",
            )
        seen[key] = i
        out.append(host)
    return out
