"""Tests for mpibatch.rdma: VM size -> sriov | networkdirect | none, family, latency anchors."""
from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpibatch.errors import SpecError
from mpibatch.rdma import (
    ANCHOR_LATENCY_RANGE_US,
    ANCHOR_LATENCY_US,
    anchor_latency_us,
    classify,
    family,
    is_rdma,
    normalize_vm_size,
    validate_vm_size,
)

# (size as Azure spells it, class, family). Sources: docs/mpi-launch-rules.md#rdma-sizes, Azure VM size docs.
SIZES = [
    # SR-IOV InfiniBand
    ("Standard_HB60rs", "sriov", "HB"),
    ("Standard_HB120rs_v2", "sriov", "HBv2"),
    ("Standard_HB120rs_v3", "sriov", "HBv3"),
    ("Standard_HB120-16rs_v3", "sriov", "HBv3"),  # constrained-core: Batch Shipyard's pattern missed these
    ("Standard_HB120-96rs_v3", "sriov", "HBv3"),
    ("Standard_HB176rs_v4", "sriov", "HBv4"),
    ("Standard_HB176-24rs_v4", "sriov", "HBv4"),
    ("Standard_HB368rs_v5", "sriov", "HBv5"),
    ("Standard_HX176rs", "sriov", "HX"),
    ("Standard_HX176-24rs", "sriov", "HX"),
    ("Standard_HC44rs", "sriov", "HC"),
    ("Standard_HC44-16rs", "sriov", "HC"),
    ("Standard_NC24rs_v3", "sriov", "NCv3"),
    ("Standard_ND40rs_v2", "sriov", "NDv2"),
    ("Standard_ND96asr_v4", "sriov", "NDv4"),
    ("Standard_ND96amsr_A100_v4", "sriov", "NDv4"),
    ("Standard_ND96isr_H100_v5", "sriov", "NDv5"),
    ("Standard_ND96isr_MI300X_v5", "sriov", "NDv5"),
    # NetworkDirect (non-SR-IOV) InfiniBand
    ("Standard_A8", "networkdirect", "A8"),
    ("Standard_A9", "networkdirect", "A9"),
    ("Standard_H16r", "networkdirect", "H"),
    ("Standard_H16mr", "networkdirect", "H"),
    ("Standard_H16r_Promo", "networkdirect", "H"),
    ("Standard_H16mr_Promo", "networkdirect", "H"),
    ("Standard_NC24r", "networkdirect", "NC"),
    ("Standard_NC24r_Promo", "networkdirect", "NC"),
    ("Standard_NC24rs_v2", "networkdirect", "NCv2"),  # azhpc-images#28: NCr and NCr_v2 are not SR-IOV
    ("Standard_ND24rs", "networkdirect", "ND"),
    # no RDMA
    ("Standard_D4s_v3", "none", "Dv3"),
    ("Standard_F72s_v2", "none", "Fv2"),
    ("Standard_E64is_v3", "none", "Ev3"),
    ("Standard_E96-24ads_v5", "none", "Ev5"),
    ("Standard_NC6", "none", "NC"),
    ("Standard_NC24", "none", "NC"),
    ("Standard_NC24s_v3", "none", "NCv3"),
    ("Standard_NC24ads_A100_v4", "none", "NCv4"),
    ("Standard_NC40ads_H100_v5", "none", "NCv5"),
    ("Standard_NCC40ads_H100_v5", "none", "NCCv5"),
    ("Standard_ND24s", "none", "ND"),
    ("Standard_NV12s_v3", "none", "NVv3"),
    ("Standard_H16", "none", "H"),
    ("Standard_H16m", "none", "H"),
    ("Standard_H8", "none", "H"),
    ("Standard_H8m", "none", "H"),
    ("Standard_A10", "none", "A10"),
    ("Standard_A11", "none", "A11"),
    ("Standard_A8_v2", "none", "Av2"),
    ("Standard_A8m_v2", "none", "Av2"),
    ("Standard_A4", "none", "A"),
    ("Standard_DC4s_v2", "none", "DCv2"),
    ("Standard_M128ms", "none", "M"),
    ("Standard_L8s_v3", "none", "Lv3"),
    ("Basic_A1", "none", "A"),
]


def _spellings(name: str) -> list[str]:
    """The same size as users type it: as documented, lower, upper, without prefix, odd prefix case."""
    prefix, _, rest = name.partition("_")
    out = [name, name.lower(), name.upper(), f"{prefix.lower()}_{rest}", f"{prefix.upper()}_{rest.lower()}"]
    if prefix == "Standard":
        out += [rest, rest.lower(), rest.upper()]
    return out


@pytest.mark.parametrize("name, expected, fam", SIZES)
def test_classify(name: str, expected: str, fam: str) -> None:
    for spelling in _spellings(name):
        assert classify(spelling) == expected, spelling
        assert is_rdma(spelling) == (expected != "none"), spelling


@pytest.mark.parametrize("name, expected, fam", SIZES)
def test_family(name: str, expected: str, fam: str) -> None:
    for spelling in _spellings(name):
        assert family(spelling) == fam, spelling


def test_classify_agrees_with_the_facts_pattern() -> None:
    # docs/mpi-launch-rules.md#rdma-sizes, copied verbatim: every size it matches has RDMA, nothing else does.
    pattern = re.compile(r"^standard_(a8|a9|(h[bcx]?|nc|nd)\d+(-\d+)?[a-z]*r[a-z]*(_[a-z0-9]+)*)$", re.IGNORECASE)
    for name, expected, _ in SIZES:
        assert (pattern.match(name) is not None) == (expected != "none"), name


size_names = st.from_regex(r"(Standard_|standard_|STANDARD_|)(HB|HC|HX|H|NC|ND|NV|D|E|F|A)[0-9]{1,3}(-[0-9]{1,3})?"
                           r"[a-zA-Z]{0,4}(_[A-Za-z0-9]{1,5}){0,2}", fullmatch=True)


@given(size_names)
@settings(max_examples=150, deadline=None)
def test_classification_ignores_case_and_prefix(name: str) -> None:
    bare = re.sub(r"^standard_", "", name, flags=re.IGNORECASE)
    result = classify(name)
    assert result in {"sriov", "networkdirect", "none"}
    assert classify(bare) == classify(bare.swapcase()) == classify("Standard_" + bare.upper()) == result
    assert family(name) == family(bare.lower())


@pytest.mark.parametrize(
    "given_, canonical",
    [
        ("HB120rs_v3", "Standard_HB120rs_v3"),
        ("hb120rs_v3", "Standard_hb120rs_v3"),
        ("Standard_HB120rs_v3", "Standard_HB120rs_v3"),
        ("standard_hb120rs_v3", "Standard_hb120rs_v3"),
        ("STANDARD_D4s_v3", "Standard_D4s_v3"),
        ("Basic_A1", "Basic_A1"),
        ("basic_a1", "Basic_a1"),
        ("HB120-16rs_v3", "Standard_HB120-16rs_v3"),
    ],
)
def test_validate_vm_size(given_: str, canonical: str) -> None:
    assert validate_vm_size(given_) == canonical
    assert normalize_vm_size(given_) == canonical.lower()


@pytest.mark.parametrize(
    "bad",
    ["", " ", "HB120rs v3", "Standard_", "Standard_HB;rm -rf /", "$(id)", "_HB120rs", "Standard_-x", "Standard_1x",
     "Standard_ HB120rs", "Standard_HB120rs_v3\n", "Standard.HB120rs", "Standard_HB120rs/v3", "Standard_HB120ṙs"],
)
def test_validate_vm_size_rejects(bad: str) -> None:
    with pytest.raises(SpecError) as err:
        validate_vm_size(bad)
    msg = str(err.value)
    assert err.value.field == "pool.vm_size" and msg.startswith("pool.vm_size: ")
    assert "Standard_HB120rs_v3" in msg  # the fix shows a real size
    for fn in (classify, family, anchor_latency_us, is_rdma):
        with pytest.raises(SpecError):
            fn(bad)


@pytest.mark.parametrize("bad", [None, 8, ["Standard_A8"]])
def test_validate_vm_size_rejects_non_strings(bad: object) -> None:
    with pytest.raises(SpecError, match="pool.vm_size"):
        validate_vm_size(bad)  # type: ignore[arg-type]


def test_custom_field() -> None:
    with pytest.raises(SpecError) as err:
        classify("a b", field="pools[1].vm_size")
    assert err.value.field == "pools[1].vm_size"


def test_family_of_unreadable_size() -> None:
    # A name can look like a size (validate_vm_size passes) and still carry no series/core count.
    assert validate_vm_size("Standard_Foo") == "Standard_Foo"
    assert classify("Standard_Foo") == "none"
    with pytest.raises(SpecError, match="series"):
        family("Standard_Foo")
    assert anchor_latency_us("Standard_Foo") is None


@pytest.mark.parametrize(
    "name, us",
    [
        ("Standard_HC44rs", 1.05),
        ("HC44-16rs", 1.05),
        ("Standard_HB60rs", 1.27),
        ("Standard_HB120rs_v2", 1.8),
        ("Standard_HB120rs_v3", 1.2),
        ("hb120-16rs_v3", 1.2),
        ("Standard_A8", 2.2),
        ("a9", 2.2),
        ("Standard_H16r", 2.2),
        ("Standard_H16mr", 2.2),
        # RDMA, but no published anchor
        ("Standard_HB176rs_v4", None),
        ("Standard_HX176rs", None),
        ("Standard_ND96asr_v4", None),
        ("Standard_NC24rs_v3", None),
        # no RDMA: no anchor even where the family has one
        ("Standard_H16", None),
        ("Standard_H8m", None),
        ("Standard_A8_v2", None),
        ("Standard_D4s_v3", None),
    ],
)
def test_anchor_latency(name: str, us: float | None) -> None:
    assert anchor_latency_us(name) == us


def test_anchor_table() -> None:
    assert ANCHOR_LATENCY_US == {"HC": 1.05, "HB": 1.27, "HBv2": 1.8, "HBv3": 1.2, "A8": 2.2, "A9": 2.2, "H": 2.2}
    low, high = ANCHOR_LATENCY_RANGE_US["HBv2"]
    assert (low, high) == (1.6, 2.0) and low <= ANCHOR_LATENCY_US["HBv2"] <= high
    # every anchor family is the family of some RDMA size in the table above
    rdma_families = {fam for _, cls, fam in SIZES if cls != "none"}
    assert set(ANCHOR_LATENCY_US) <= rdma_families
