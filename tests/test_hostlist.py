"""Tests for mpibatch.hostlist: Batch host-list formats, hostfiles, SSH hosts files."""
from __future__ import annotations

import ipaddress
import shlex

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpibatch.errors import SpecError
from mpibatch.hostlist import (
    HostSpec,
    format_ccp_nodes,
    format_host_list,
    format_node_list,
    hostfile,
    is_ipv6,
    parse_ccp_nodes,
    parse_host_list,
    parse_host_spec,
    parse_hostfile,
    parse_hosts_file,
    parse_node_list,
    validate_host,
)

# ------------------------------------------------------------------------------------------------ strategies

_label = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,12}[A-Za-z0-9])?", fullmatch=True)
dns_names = st.lists(_label, min_size=1, max_size=4).map(".".join).filter(lambda n: not n.split(".")[-1].isdigit())
ipv4 = st.ip_addresses(v=4).map(str)
ipv6 = st.ip_addresses(v=6).map(str)
hosts = st.one_of(ipv4, ipv6, dns_names)


def _key(h: str) -> str:
    # Written independently of the module: the same node spelled two ways is a duplicate.
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return h.lower()


# Small example budgets keep the whole module around a second; the strategies already cover the shapes.
FAST = settings(max_examples=40, deadline=None)

host_lists = st.lists(hosts, min_size=1, max_size=12, unique_by=_key)
host_lists_no_v6 = st.lists(st.one_of(ipv4, dns_names), min_size=1, max_size=12, unique_by=_key)

HOSTILE = [
    "a;rm -rf /",
    "$(id)",
    "a b",
    "`x`",
    "",
    "a|b",
    "a&b",
    "a>b",
    "x\ny",
    "a\tb",
    "'a'",
    '"a"',
    "a\\b",
    "*",
    "~root",
    "a,b",
    "-oProxyCommand=x",
    "fe80::1%$(id)",
    "host$HOME",
    "ü.example",
    "a/b",
]

# ------------------------------------------------------------------------------------------------ validate_host


@pytest.mark.parametrize(
    "host",
    [
        "10.0.0.4",
        "0.0.0.0",
        "255.255.255.255",
        "::1",
        "fd00::4",
        "2001:db8::8a2e:370:7334",
        "::ffff:10.0.0.4",
        "fe80::1%eth0",
        "fe80::1%veth-a.1",
        "localhost",
        "node-1",
        "NODE-1.Example.COM",
        "a",
        "1node",
        "xn--bcher-kva.example",
        "a" * 63,
        ".".join(["a" * 63] * 3 + ["b" * 61]),  # 253 characters
        "10.0.0.4a",
    ],
)
def test_validate_host_accepts(host: str) -> None:
    assert validate_host(host) is host


@pytest.mark.parametrize(
    "host",
    HOSTILE
    + [
        "a..b",
        ".a",
        "a.",
        "a_b",
        "-a",
        "a-",
        "a.-b",
        "10.0.0.04",
        "999.1.1.1",
        "10.1",
        "12345",
        "1.2.3.4.5",
        "a" * 64,
        ".".join(["a" * 63] * 3 + ["b" * 62]),  # 254 characters
        "fd00::4:",
        "fd00:::4",
        "[fd00::4]",
        "fd00::4/64",
        "10.0.0.4:22",
        " 10.0.0.4",
        "10.0.0.4 ",
    ],
)
def test_validate_host_rejects(host: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_host(host, "task.hosts[0]")
    assert err.value.field == "task.hosts[0]"
    assert err.value.fix  # every refusal says how to fix it
    assert str(err.value).startswith("task.hosts[0]: ")


@pytest.mark.parametrize("value", [None, 4, b"10.0.0.4", ["10.0.0.4"]])
def test_validate_host_rejects_non_strings(value: object) -> None:
    with pytest.raises(SpecError, match="hosts"):
        validate_host(value)  # type: ignore[arg-type]


def test_hostile_messages_are_useful() -> None:
    with pytest.raises(SpecError) as err:
        validate_host("a;rm -rf /")
    msg = str(err.value)
    assert "hosts" in msg and "'a;rm -rf /'" in msg and "';'" in msg and "shell" in msg
    assert "10.0.0.4" in msg  # the fix shows what a good value looks like

    with pytest.raises(SpecError) as err:
        validate_host("$(id)")
    assert "'$'" in str(err.value)

    with pytest.raises(SpecError) as err:
        validate_host("")
    assert "empty" in str(err.value)

    with pytest.raises(SpecError) as err:
        validate_host("-oProxyCommand=x")
    assert "'='" in str(err.value)

    with pytest.raises(SpecError) as err:
        validate_host("-node")
    assert "option" in str(err.value)

    with pytest.raises(SpecError) as err:
        validate_host("10.0.0.04")
    assert "IPv4" in str(err.value)


@given(st.text(max_size=40))
@settings(max_examples=150, deadline=None)
def test_anything_accepted_is_shell_inert(text: str) -> None:
    try:
        validate_host(text)
    except SpecError:
        return
    # Whatever gets through needs no quoting in a POSIX shell and cannot be read as an option.
    assert shlex.quote(text) == text
    assert not text.startswith("-")
    assert text.isascii()


def test_is_ipv6() -> None:
    assert is_ipv6("fd00::4") and is_ipv6("::1")
    assert not is_ipv6("10.0.0.4") and not is_ipv6("node-1") and not is_ipv6("[::1]")


# ----------------------------------------------------------------------------- AZ_BATCH_HOST_LIST / NODE_LIST


def test_host_list_examples() -> None:
    assert parse_host_list("10.0.0.4,10.0.0.5") == ["10.0.0.4", "10.0.0.5"]
    assert parse_host_list("10.0.0.4") == ["10.0.0.4"]
    assert format_host_list(["10.0.0.4", "10.0.0.5"]) == "10.0.0.4,10.0.0.5"
    assert parse_node_list("10.0.0.4;10.0.0.5") == ["10.0.0.4", "10.0.0.5"]
    assert format_node_list(["10.0.0.4", "10.0.0.5"]) == "10.0.0.4;10.0.0.5"
    # order is kept: the first host is the primary's
    assert parse_host_list("10.0.0.9,10.0.0.1,node-b") == ["10.0.0.9", "10.0.0.1", "node-b"]


@given(host_lists)
@FAST
def test_host_list_round_trip(hs: list[str]) -> None:
    text = format_host_list(hs)
    assert text == ",".join(hs)
    assert parse_host_list(text) == hs


@given(host_lists)
@FAST
def test_node_list_round_trip(hs: list[str]) -> None:
    text = format_node_list(hs)
    assert text == ";".join(hs)
    assert parse_node_list(text) == hs


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["AZ_BATCH_HOST_LIST", "empty"]),
        (",", ["AZ_BATCH_HOST_LIST[0]", "empty"]),
        ("10.0.0.4,", ["AZ_BATCH_HOST_LIST[1]", "entry 2", "empty"]),
        (",10.0.0.4", ["entry 1", "empty"]),
        ("10.0.0.4,,10.0.0.5", ["entry 2", "empty"]),
        ("10.0.0.4,10.0.0.4", ["AZ_BATCH_HOST_LIST[1]", "twice", "position 0"]),
        ("node-a,NODE-A", ["twice"]),
        ("fd00::4,fd00:0::4", ["twice"]),
        ("10.0.0.4, 10.0.0.5", ["AZ_BATCH_HOST_LIST[1]", "' '"]),
        ("10.0.0.4;10.0.0.5", ["AZ_BATCH_HOST_LIST[0]", "';'"]),
        ("a;rm -rf /", ["';'"]),
        ("10.0.0.4,$(id)", ["AZ_BATCH_HOST_LIST[1]", "'$'"]),
        ("10.0.0.4\n", ["'\\n'"]),
    ],
)
def test_host_list_rejects(text: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_host_list(text)
    for w in words:
        assert w in str(err.value)


@pytest.mark.parametrize("text", ["", ";", "10.0.0.4;", "10.0.0.4;;10.0.0.5", "a;a", "10.0.0.4,10.0.0.5", "`x`"])
def test_node_list_rejects(text: str) -> None:
    with pytest.raises(SpecError, match="AZ_BATCH_NODE_LIST"):
        parse_node_list(text)


@pytest.mark.parametrize("bad", HOSTILE)
def test_hostile_entries_rejected_everywhere(bad: str) -> None:
    for fn in (format_host_list, format_node_list, format_ccp_nodes):
        with pytest.raises(SpecError):
            fn(["10.0.0.4", bad])
    for style in ("slots", "colon", "msmpi"):
        with pytest.raises(SpecError):
            hostfile(["10.0.0.4", bad], 2, style)  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        parse_host_spec(bad)


@pytest.mark.parametrize("value", [[], (), "10.0.0.4", None, ["a", "a"], ["a", "b", "A"]])
def test_format_rejects_bad_lists(value: object) -> None:
    for fn in (format_host_list, format_node_list, format_ccp_nodes):
        with pytest.raises(SpecError):
            fn(value)  # type: ignore[arg-type]


def test_custom_field_names_errors() -> None:
    with pytest.raises(SpecError) as err:
        format_host_list(["10.0.0.4", "a b"], field="task.hosts")
    assert err.value.field == "task.hosts[1]"


@given(st.text(max_size=60))
@settings(max_examples=100, deadline=None)
def test_parsers_only_raise_spec_error(text: str) -> None:
    for fn in (parse_host_list, parse_node_list, parse_ccp_nodes, parse_host_spec, parse_hosts_file):
        try:
            fn(text)
        except SpecError:
            pass


# ------------------------------------------------------------------------------------------------ CCP_NODES


def test_ccp_nodes_examples() -> None:
    assert parse_ccp_nodes("2 10.0.0.4 1 10.0.0.5 1") == [("10.0.0.4", 1), ("10.0.0.5", 1)]
    assert format_ccp_nodes(["10.0.0.4", "10.0.0.5"]) == "2 10.0.0.4 1 10.0.0.5 1"
    assert format_ccp_nodes(["10.0.0.4", "10.0.0.5"], 4) == "2 10.0.0.4 4 10.0.0.5 4"
    assert format_ccp_nodes(["10.0.0.4", "10.0.0.5"], [8, 2]) == "2 10.0.0.4 8 10.0.0.5 2"
    assert parse_ccp_nodes("1 node-1 16") == [("node-1", 16)]
    # whitespace runs are tolerated on input (hosts cannot hold whitespace, so nothing is ambiguous)
    assert parse_ccp_nodes("2  10.0.0.4\t1 10.0.0.5 1\n") == [("10.0.0.4", 1), ("10.0.0.5", 1)]


@given(host_lists, st.data())
@FAST
def test_ccp_nodes_round_trip(hs: list[str], data: st.DataObject) -> None:
    cores = data.draw(st.lists(st.integers(1, 512), min_size=len(hs), max_size=len(hs)))
    text = format_ccp_nodes(hs, cores)
    assert text.split(" ")[0] == str(len(hs))
    assert parse_ccp_nodes(text) == list(zip(hs, cores))
    same = data.draw(st.integers(1, 512))
    assert parse_ccp_nodes(format_ccp_nodes(hs, same)) == [(h, same) for h in hs]


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["empty"]),
        ("   ", ["empty"]),
        ("0", ["node count", "'0'"]),
        ("2 10.0.0.4 1", ["says 2", "lists 1"]),
        ("1 10.0.0.4 1 10.0.0.5 1", ["says 1", "lists 2"]),
        ("2 10.0.0.4 1 10.0.0.5", ["cores"]),
        ("x 10.0.0.4 1", ["node count", "'x'"]),
        ("+1 10.0.0.4 1", ["node count"]),
        ("-1 10.0.0.4 1", ["node count"]),
        ("1 10.0.0.4 0", ["CCP_NODES[0]", "cores", "'0'"]),
        ("1 10.0.0.4 x", ["cores"]),
        ("1 10.0.0.4 ١", ["cores"]),  # an Arabic-Indic digit: int() would take it
        ("2 10.0.0.4 1 10.0.0.4 1", ["twice"]),
        ("1 $(id) 1", ["'$'"]),
        ("1 a;b 1", ["';'"]),
        ("2 10.0.0.4 1 `x` 1", ["CCP_NODES[1]"]),
    ],
)
def test_ccp_nodes_rejects(text: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_ccp_nodes(text)
    msg = str(err.value)
    assert msg.startswith("CCP_NODES")
    for w in words:
        assert w in msg


@pytest.mark.parametrize("cores", [0, -1, True, [1], [1, 2, 3], [1, 0], "2", 1.5, None])
def test_format_ccp_nodes_rejects_bad_cores(cores: object) -> None:
    with pytest.raises(SpecError, match="cores"):
        format_ccp_nodes(["10.0.0.4", "10.0.0.5"], cores)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ hostfiles


def test_hostfile_styles() -> None:
    hs = ["10.0.0.4", "node-2"]
    assert hostfile(hs, 4, "slots") == "10.0.0.4 slots=4\nnode-2 slots=4\n"
    assert hostfile(hs, 4, "colon") == "10.0.0.4:4\nnode-2:4\n"
    assert hostfile(hs, 4, "msmpi") == "10.0.0.4 4\nnode-2 4\n"
    assert hostfile(hs, [2, 3], "slots") == "10.0.0.4 slots=2\nnode-2 slots=3\n"
    assert hostfile(["fd00::4"], 2, "slots") == "fd00::4 slots=2\n"
    assert hostfile(["fd00::4"], 2, "msmpi") == "fd00::4 2\n"


def test_hostfile_rejects() -> None:
    with pytest.raises(SpecError, match="style"):
        hostfile(["a"], 1, "hydra")  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="IPv6"):
        hostfile(["10.0.0.4", "fd00::4"], 1, "colon")
    with pytest.raises(SpecError, match="ppn"):
        hostfile(["a"], 0, "slots")
    with pytest.raises(SpecError, match="ppn"):
        hostfile(["a", "b"], [1], "slots")
    with pytest.raises(SpecError, match="empty"):
        hostfile([], 1, "slots")
    with pytest.raises(SpecError, match="twice"):
        hostfile(["a", "a"], 1, "msmpi")


@pytest.mark.parametrize("style", ["slots", "colon", "msmpi"])
@given(hs=host_lists_no_v6, data=st.data())
@FAST
def test_hostfile_round_trip(style: str, hs: list[str], data: st.DataObject) -> None:
    ppn = data.draw(st.lists(st.integers(1, 256), min_size=len(hs), max_size=len(hs)))
    text = hostfile(hs, ppn, style)  # type: ignore[arg-type]
    assert text.endswith("\n") and text.count("\n") == len(hs)
    assert parse_hostfile(text, style) == list(zip(hs, ppn))  # type: ignore[arg-type]


def test_parse_hostfile_comments_and_errors() -> None:
    assert parse_hostfile("# nodes\n\na slots=2  # first\nb slots=1\n", "slots") == [("a", 2), ("b", 1)]
    with pytest.raises(SpecError) as err:
        parse_hostfile("a slots=2\nb slots=x\n", "slots")
    assert "line 2" in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_hostfile("a:2\nb 2\n", "colon")
    assert "line 2" in str(err.value)
    with pytest.raises(SpecError) as err:
        parse_hostfile("a 1\nA 1\n", "msmpi")
    assert "line 2" in str(err.value) and "line 1" in str(err.value)
    with pytest.raises(SpecError, match="no hosts"):
        parse_hostfile("# nothing\n", "msmpi")


# ------------------------------------------------------------------------------------------------ SSH hosts files


@pytest.mark.parametrize(
    "text, spec",
    [
        ("10.0.0.4", HostSpec(None, "10.0.0.4", None)),
        ("node-1", HostSpec(None, "node-1", None)),
        ("azureuser@10.0.0.4", HostSpec("azureuser", "10.0.0.4", None)),
        ("azureuser@10.0.0.4:2222", HostSpec("azureuser", "10.0.0.4", 2222)),
        ("node-1:22", HostSpec(None, "node-1", 22)),
        ("fd00::4", HostSpec(None, "fd00::4", None)),
        ("[fd00::4]", HostSpec(None, "fd00::4", None)),
        ("[fd00::4]:2222", HostSpec(None, "fd00::4", 2222)),
        ("root@[fd00::4]:1", HostSpec("root", "fd00::4", 1)),
        ("_svc@node-1:65535", HostSpec("_svc", "node-1", 65535)),
        ("Azure.User-1@node-1", HostSpec("Azure.User-1", "node-1", None)),
        ("[node-1]:22", HostSpec(None, "node-1", 22)),
    ],
)
def test_parse_host_spec(text: str, spec: HostSpec) -> None:
    assert parse_host_spec(text) == spec


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["empty"]),
        ("@node-1", ["empty user"]),
        ("a@b@node-1", ["more than one '@'"]),
        ("1user@node-1", ["user name '1user'"]),
        ("-user@node-1", ["user name"]),
        ("us er@node-1", ["user name"]),
        ("$(id)@node-1", ["user name"]),
        ("u" * 33 + "@node-1", ["longer than 32"]),
        ("node-1:0", ["port '0'"]),
        ("node-1:65536", ["port '65536'"]),
        ("node-1:", ["port ''"]),
        ("node-1:ssh", ["port 'ssh'"]),
        ("node-1:+22", ["port"]),
        ("[fd00::4", ["never closes"]),
        ("[fd00::4]2222", ["after ']'"]),
        ("[fd00::4]:", ["port"]),
        ("[]:22", ["empty"]),
        ("user@", ["empty"]),
        ("a;b:22", ["';'"]),
        ("user@a b", ["' '"]),
        # re's '$' matches before a trailing newline; none of these may slip through
        ("root\n@node-1", ["user name"]),
        ("node-1:22\n", ["port"]),
        ("node-1\n", ["'\\n'"]),
        ("fe80::1%eth0\n", ["'\\n'"]),
    ],
)
def test_parse_host_spec_rejects(text: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_host_spec(text, "ssh.hosts[3]")
    msg = str(err.value)
    assert msg.startswith("ssh.hosts[3]: ")
    for w in words:
        assert w in msg


users = st.one_of(st.none(), st.from_regex(r"[a-z_][a-z0-9_.-]{0,15}", fullmatch=True))
ports = st.one_of(st.none(), st.integers(1, 65535))


@given(users, hosts, ports)
@FAST
def test_host_spec_round_trip(user: str | None, host: str, port: int | None) -> None:
    spec = HostSpec(user, host, port)
    assert parse_host_spec(str(spec)) == spec


def test_host_spec_str() -> None:
    assert str(HostSpec("u", "fd00::4", 22)) == "u@[fd00::4]:22"
    assert str(HostSpec(None, "fd00::4", None)) == "fd00::4"
    assert str(HostSpec(None, "node-1", 2222)) == "node-1:2222"


def test_parse_hosts_file() -> None:
    text = (
        "# cluster for the rehearsal\n"
        "\n"
        "   root@10.200.0.2:22   \n"
        "10.200.0.3  # second node\n"
        "\t[fd00::4]:2222\n"
        "#10.200.0.9\n"
        "fd00::5\r\n"
    )
    assert parse_hosts_file(text) == [
        HostSpec("root", "10.200.0.2", 22),
        HostSpec(None, "10.200.0.3", None),
        HostSpec(None, "fd00::4", 2222),
        HostSpec(None, "fd00::5", None),
    ]


@given(st.lists(st.tuples(users, hosts, ports), min_size=1, max_size=8, unique_by=lambda t: (_key(t[1]), t[2])))
@FAST
def test_hosts_file_round_trip(entries: list[tuple[str | None, str, int | None]]) -> None:
    specs = [HostSpec(*e) for e in entries]
    text = "# generated\n" + "".join(f"{s}\n\n" for s in specs)
    assert parse_hosts_file(text) == specs


@pytest.mark.parametrize(
    "text, words",
    [
        ("", ["no hosts"]),
        ("# only a comment\n\n", ["no hosts"]),
        ("10.0.0.4\n10.0.0.5\nbad host\n", ["line 3", "' '"]),
        ("10.0.0.4\n\n# c\na;rm -rf /\n", ["line 4", "';'"]),
        ("10.0.0.4\nnode:99999\n", ["line 2", "port"]),
        ("10.0.0.4\nroot@10.0.0.4\n", ["line 2", "first on line 1"]),
        ("node-a:22\nNODE-A:22\n", ["line 2", "first on line 1"]),
        ("1bad@node\n", ["line 1", "user name"]),
    ],
)
def test_parse_hosts_file_rejects(text: str, words: list[str]) -> None:
    with pytest.raises(SpecError) as err:
        parse_hosts_file(text, "ssh.hosts_file")
    msg = str(err.value)
    assert msg.startswith("ssh.hosts_file")
    for w in words:
        assert w in msg


def test_hosts_file_same_host_other_port_is_allowed() -> None:
    # one address, several sshd (one per port) - a legitimate rehearsal set-up
    assert len(parse_hosts_file("10.0.0.4:2201\n10.0.0.4:2202\n")) == 2
