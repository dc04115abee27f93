"""Host lists as Azure Batch hands them to a multi-instance task, and the hostfiles MPI runtimes read.

Pure functions: no network, disk or clock. Formats (docs/batch-semantics.md#environment):

* ``AZ_BATCH_HOST_LIST`` - ``ip,ip,...``
* ``AZ_BATCH_NODE_LIST`` - ``ip;ip;...``
* ``CCP_NODES`` - ``count ip cores ip cores ...`` (what MS-MPI's mpiexec reads by default)

Also the SSH executor's hosts files (``[user@]host[:port]`` per line). Every host that leaves this module
has gone through :func:`validate_host` (mpibatch.hostnames, re-exported here), because these strings end up
in shell lines.
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from mpibatch.errors import SpecError, shown
from mpibatch.hostnames import check_hosts, host_key, is_ipv6, validate_host

__all__ = [
    "HostSpec",
    "HostfileStyle",
    "HOSTFILE_STYLES",
    "format_ccp_nodes",
    "format_host_list",
    "format_node_list",
    "hostfile",
    "is_ipv6",
    "parse_ccp_nodes",
    "parse_host_list",
    "parse_host_spec",
    "parse_hostfile",
    "parse_hosts_file",
    "parse_node_list",
    "validate_host",
]

HostfileStyle = Literal["slots", "colon", "msmpi"]
HOSTFILE_STYLES: tuple[str, ...] = ("slots", "colon", "msmpi")

# Patterns are applied with fullmatch(): re's '$' also matches before a trailing newline.
_DIGITS = re.compile(r"^[0-9]+$")
_USER = re.compile(r"^[a-z_][a-z0-9_.-]*$", re.IGNORECASE)
_MAX_USER = 32  # useradd's limit on Linux; longer names are certainly a typo


# ---------------------------------------------------------------------------------------------- separated lists

def _parse_separated(s: str, sep: str, field: str, example: str) -> list[str]:
    if not isinstance(s, str):
        raise SpecError(field, f"expected a string, got {type(s).__name__}", f"it looks like {example}")
    if s == "":
        raise SpecError(field, "the host list is empty", f"it looks like {example}")
    entries = s.split(sep)
    for i, entry in enumerate(entries):
        if entry == "":
            raise SpecError(
                f"{field}[{i}]",
                f"entry {i + 1} of {shown(s)} is empty (a leading, trailing or doubled {shown(sep)})",
                f"separate hosts with a single {shown(sep)}, e.g. {example}",
            )
    return check_hosts(entries, field)


def parse_host_list(s: str, field: str = "AZ_BATCH_HOST_LIST") -> list[str]:
    """Parse ``AZ_BATCH_HOST_LIST`` (``10.0.0.4,10.0.0.5``) into a list of validated hosts."""
    return _parse_separated(s, ",", field, "10.0.0.4,10.0.0.5")


def format_host_list(hosts: Sequence[str], field: str = "AZ_BATCH_HOST_LIST") -> str:
    """Format hosts as ``AZ_BATCH_HOST_LIST`` does: ``10.0.0.4,10.0.0.5``."""
    return ",".join(check_hosts(hosts, field))


def parse_node_list(s: str, field: str = "AZ_BATCH_NODE_LIST") -> list[str]:
    """Parse ``AZ_BATCH_NODE_LIST`` (``10.0.0.4;10.0.0.5``) into a list of validated hosts."""
    return _parse_separated(s, ";", field, "10.0.0.4;10.0.0.5")


def format_node_list(hosts: Sequence[str], field: str = "AZ_BATCH_NODE_LIST") -> str:
    """Format hosts as ``AZ_BATCH_NODE_LIST`` does: ``10.0.0.4;10.0.0.5``."""
    return ";".join(check_hosts(hosts, field))


# ---------------------------------------------------------------------------------------------- CCP_NODES

def _positive_int(token: str, field: str, what: str, fix: str) -> int:
    # int() would also take "+2", " 2" and non-ASCII digits; the format has plain decimal digits only.
    if not _DIGITS.fullmatch(token) or int(token) < 1:
        raise SpecError(field, f"{what} {shown(token)} is not a whole number of at least 1", fix)
    return int(token)


def _per_host_counts(value: int | Sequence[int], n: int, field: str, what: str) -> list[int]:
    """Expand an int (same for every host) or a list (one per host) into n positive ints."""
    values = [value] * n if isinstance(value, int) else list(value) if isinstance(value, Sequence) else None
    if values is None:
        raise SpecError(field, f"{what} must be a whole number or a list of them, got {type(value).__name__}",
                        f"e.g. {what}=4")
    if len(values) != n:
        raise SpecError(field, f"{len(values)} {what} values given for {n} hosts",
                        f"give one {what} value per host, or a single number")
    for v in values:
        # bool is an int subclass; True as "1 core" is a bug in the caller, not a count.
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise SpecError(field, f"{what} must be a whole number of at least 1, got {shown(v)}", f"e.g. {what}=4")
    return values


def parse_ccp_nodes(s: str, field: str = "CCP_NODES") -> list[tuple[str, int]]:
    """Parse ``CCP_NODES`` (``2 10.0.0.4 1 10.0.0.5 1``) into ``[(host, cores), ...]``.

    Tokens may be separated by any run of whitespace (hosts cannot contain whitespace, so this is
    unambiguous). The leading count must match the number of host/cores pairs.
    """
    example = "2 10.0.0.4 1 10.0.0.5 1"
    fix = f"the format is 'count host cores host cores ...', e.g. {shown(example)}"
    if not isinstance(s, str):
        raise SpecError(field, f"expected a string, got {type(s).__name__}", fix)
    tokens = s.split()
    if not tokens:
        raise SpecError(field, "the node list is empty", fix)
    count = _positive_int(tokens[0], field, "the node count", fix)
    rest = tokens[1:]
    if len(rest) % 2 != 0:
        raise SpecError(field, f"{shown(s)} does not end with a cores value after its last host", fix)
    pairs = len(rest) // 2
    if pairs != count:
        raise SpecError(field, f"{shown(s)} says {count} node(s) but lists {pairs}", fix)
    hosts = check_hosts(rest[0::2], field)
    cores = [_positive_int(c, f"{field}[{i}]", f"cores for {shown(hosts[i])}", fix) for i, c in enumerate(rest[1::2])]
    return list(zip(hosts, cores))


def format_ccp_nodes(hosts: Sequence[str], cores: int | Sequence[int] = 1, field: str = "CCP_NODES") -> str:
    """Format ``CCP_NODES``: ``count host cores host cores ...``. `cores` is one number or one per host."""
    checked = check_hosts(hosts, field)
    counts = _per_host_counts(cores, len(checked), field, "cores")
    parts = [str(len(checked))]
    for host, c in zip(checked, counts):
        parts += [host, str(c)]
    return " ".join(parts)


# ---------------------------------------------------------------------------------------------- hostfiles

def hostfile(hosts: Sequence[str], ppn: int | Sequence[int], style: HostfileStyle, field: str = "hosts") -> str:
    """Render an MPI hostfile, one line per host, each line ending in a newline.

    * ``"slots"`` - Open MPI: ``10.0.0.4 slots=4``
    * ``"colon"`` - MPICH (hydra) and Intel MPI machine file: ``10.0.0.4:4``
    * ``"msmpi"`` - MS-MPI machine file (``mpiexec /machinefile``): ``10.0.0.4 4``

    `ppn` (processes per node) is one number or one per host. IPv6 addresses are refused in the
    ``colon`` style: ``fd00::4:4`` cannot be read back unambiguously.
    """
    if style not in HOSTFILE_STYLES:
        raise SpecError("hostfile.style", f"unknown hostfile style {shown(style)}",
                        f"use one of {', '.join(HOSTFILE_STYLES)}")
    checked = check_hosts(hosts, field)
    counts = _per_host_counts(ppn, len(checked), field, "ppn")
    lines = []
    for i, (host, p) in enumerate(zip(checked, counts)):
        if style == "slots":
            lines.append(f"{host} slots={p}\n")
        elif style == "colon":
            if is_ipv6(host):
                raise SpecError(
                    f"{field}[{i}]",
                    f"IPv6 address {shown(host)} cannot be written as 'host:count' (MPICH / Intel MPI hostfile)",
                    "use the node's host name or IPv4 address",
                )
            lines.append(f"{host}:{p}\n")
        else:
            lines.append(f"{host} {p}\n")
    return "".join(lines)


_SLOTS_LINE = re.compile(r"^(\S+)\s+slots=(\S+)$")
_MSMPI_LINE = re.compile(r"^(\S+)\s+(\S+)$")


def parse_hostfile(text: str, style: HostfileStyle, field: str = "hostfile") -> list[tuple[str, int]]:
    """Read back a hostfile written by :func:`hostfile` (blank lines and ``#`` comments ignored).

    Only the one-host-one-count line shapes that :func:`hostfile` writes are accepted.
    """
    if style not in HOSTFILE_STYLES:
        raise SpecError("hostfile.style", f"unknown hostfile style {shown(style)}",
                        f"use one of {', '.join(HOSTFILE_STYLES)}")
    shape = {"slots": "'host slots=N'", "colon": "'host:N'", "msmpi": "'host N'"}[style]
    if not isinstance(text, str):
        raise SpecError(field, f"expected text, got {type(text).__name__}", f"write one {shape} per line")
    entries: list[tuple[str, int]] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{field}, line {lineno}"
        pair: tuple[str, str] | None
        if style in ("slots", "msmpi"):
            found = (_SLOTS_LINE if style == "slots" else _MSMPI_LINE).fullmatch(line)
            pair = (found.group(1), found.group(2)) if found else None
        else:
            host, sep, count = line.rpartition(":")
            pair = None if not sep or ":" in host else (host, count)
        if pair is None:
            raise SpecError(where, f"{shown(raw)} is not a {shape} line", f"write one {shape} per line")
        host, count = pair
        validate_host(host, where)
        key = host_key(host)
        if key in seen:
            raise SpecError(where, f"{shown(host)} is listed again (first on line {seen[key]})", "list each node once")
        seen[key] = lineno
        entries.append((host, _positive_int(count, where, "the process count", f"write one {shape} per line")))
    if not entries:
        raise SpecError(field, "the hostfile lists no hosts", f"write one {shape} per line")
    return entries


# ---------------------------------------------------------------------------------------------- SSH hosts files

@dataclass(frozen=True)
class HostSpec:
    """One SSH target: ``[user@]host[:port]``. `user` and `port` are None when not given."""

    user: str | None
    host: str
    port: int | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if self.port is not None and is_ipv6(self.host) else self.host
        text = host if self.port is None else f"{host}:{self.port}"
        return text if self.user is None else f"{self.user}@{text}"


def _parse_port(text: str, field: str, entry: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise SpecError(field, f"port {shown(text)} in {shown(entry)} is not a number from 1 to 65535",
                        "write e.g. node-1:2222")
    return int(text)


def parse_host_spec(s: str, field: str = "hosts") -> HostSpec:
    """Parse one ``[user@]host[:port]`` entry.

    IPv6 addresses are written bare (``fd00::4``) or, to add a port, in brackets (``[fd00::4]:2222``).
    User names follow the portable POSIX shape ``^[a-z_][a-z0-9_.-]*$`` (any case), at most 32 characters.
    """
    fix = "write [user@]host[:port], e.g. azureuser@10.0.0.4:22 or [fd00::4]:2222"
    if not isinstance(s, str):
        raise SpecError(field, f"expected a string, got {type(s).__name__}", fix)
    if s == "":
        raise SpecError(field, "the host entry is empty", fix)
    user: str | None = None
    rest = s
    if "@" in s:
        user, _, rest = s.partition("@")
        if "@" in rest:
            raise SpecError(field, f"{shown(s)} has more than one '@'", fix)
        if user == "":
            raise SpecError(field, f"{shown(s)} has an empty user name before '@'",
                            "drop the '@' or put a user name before it")
        if not _USER.fullmatch(user):
            raise SpecError(
                field,
                f"user name {shown(user)} in {shown(s)} is not valid (letters, digits, '_', '.', '-', "
                "not starting with a digit, '.' or '-')",
                "use the account name as it is on the node, e.g. azureuser",
            )
        if len(user) > _MAX_USER:
            raise SpecError(field, f"user name {shown(user)} is longer than {_MAX_USER} characters",
                            "use the account name as it is on the node")
    port: int | None = None
    if rest.startswith("["):
        host, close, after = rest[1:].partition("]")
        if not close:
            raise SpecError(field, f"{shown(s)} opens '[' but never closes it", fix)
        if after:
            if not after.startswith(":"):
                raise SpecError(field, f"unexpected {shown(after)} after ']' in {shown(s)}", fix)
            port = _parse_port(after[1:], field, s)
    elif rest.count(":") == 1:
        host, _, port_text = rest.partition(":")
        port = _parse_port(port_text, field, s)
    else:
        host = rest  # no ':' at all, or a bare IPv6 address (two or more ':')
    validate_host(host, field)
    return HostSpec(user=user, host=host, port=port)


def parse_hosts_file(text: str, field: str = "hosts_file") -> list[HostSpec]:
    """Parse a hosts file: one ``[user@]host[:port]`` per line; blank lines and ``#`` comments ignored.

    Errors name the 1-based line number. The same host and port twice is refused (it would place two
    instances on one node), as is a file with no hosts.
    """
    if not isinstance(text, str):
        raise SpecError(field, f"expected text, got {type(text).__name__}", "one [user@]host[:port] per line")
    specs: list[HostSpec] = []
    seen: dict[tuple[str, int | None], int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()  # '#' cannot occur in a valid entry, so a trailing comment is safe to cut
        if not line:
            continue
        where = f"{field}, line {lineno}"
        spec = parse_host_spec(line, where)
        key = (host_key(spec.host), spec.port)
        if key in seen:
            raise SpecError(where, f"{shown(spec.host)} is listed again (first on line {seen[key]})",
                            "list each node once")
        seen[key] = lineno
        specs.append(spec)
    if not specs:
        raise SpecError(field, "the hosts file lists no hosts", "write one [user@]host[:port] per line")
    return specs
