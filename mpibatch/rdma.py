"""Azure VM size -> RDMA class (``sriov`` | ``networkdirect`` | ``none``), family and latency anchors.

Pure functions: no network, disk or clock. The class picks the MPI fabric environment
(docs/mpi-launch-rules.md#rdma-sizes):
SR-IOV sizes take ``I_MPI_FABRICS=shm:ofi`` / UCX; the older NetworkDirect sizes take ``shm:dapl`` with the
``ofa-v2-ib0`` provider; everything else runs MPI over TCP.

Which RDMA sizes are *not* SR-IOV (sources, read with the search tools):

* Azure docs, "Azure VM sizes - HPC" (virtual-machines/sizes-hpc.md, "SR-IOV support" note): "almost all the
  newer generation, RDMA-capable or InfiniBand enabled VMs on Azure are SR-IOV enabled except for H16r, H16mr,
  and NC24r". Same list in virtual-machines/hpc "Known issues" ("InfiniBand driver installation on non-SR-IOV
  VMs").
* Azure/azhpc-images issue #28 (a maintainer): "NCr_v3 is SR-IOV enabled while NCr and NCr_v2 are not SR-IOV
  enabled" - so NC24rs_v2 is NetworkDirect, NC24rs_v3 is SR-IOV.
* microsoft/AzureML-BERT issue #34: ND24rs (NDv1) has no SR-IOV; "SR-IOV support should come to NCv2 and NDv1
  later in 2020". Both series were retired (2023) before any such change was documented, so they stay
  NetworkDirect here.
* A8/A9 are the original QDR InfiniBand sizes, NetworkDirect only (docs/mpi-launch-rules.md#intel-mpi).
"""
from __future__ import annotations

import re

from mpibatch.errors import SpecError, shown

__all__ = [
    "ANCHOR_LATENCY_RANGE_US",
    "ANCHOR_LATENCY_US",
    "NETWORKDIRECT",
    "NONE",
    "RDMA_LATENCY_CEILING_US",
    "SRIOV",
    "TCP_LATENCY_FLOOR_US",
    "anchor_latency_us",
    "classify",
    "family",
    "is_rdma",
    "normalize_vm_size",
    "validate_vm_size",
]

SRIOV = "sriov"
NETWORKDIRECT = "networkdirect"
NONE = "none"

# Patterns are applied with fullmatch(): re's '$' also matches before a trailing newline.
# docs/mpi-launch-rules.md#rdma-sizes. Batch Shipyard's patterns missed constrained-core HBv3
# (HB120-16rs_v3), HX and NDv4; this one takes them: an 'r' among the feature letters of an
# H/HB/HC/HX/NC/ND size, or A8/A9.
_RDMA = re.compile(r"^standard_(a8|a9|(h[bcx]?|nc|nd)\d+(-\d+)?[a-z]*r[a-z]*(_[a-z0-9]+)*)$")

# Lower-case, prefixed names of the RDMA sizes that only speak NetworkDirect (see the module docstring).
# A "_promo" suffix (H16r_Promo, H16mr_Promo, NC24r_Promo) is the same hardware at another price.
_NETWORKDIRECT_SIZES = frozenset(
    {
        "standard_a8",
        "standard_a9",
        "standard_h16r",
        "standard_h16mr",
        "standard_nc24r",
        "standard_nc24rs_v2",
        "standard_nd24rs",
    }
)

_SIZE = re.compile(r"^(standard|basic)_[a-z][a-z0-9_-]*$", re.IGNORECASE)
# series letters, vCPU count, optional constrained-core count, feature letters, then _tags (accelerator, version)
_PARTS = re.compile(r"^(?:standard|basic)_([a-z]+)(\d+)(?:-(\d+))?([a-z]*)((?:_[a-z0-9]+)*)$")
_VERSION = re.compile(r"^v(\d+)$")

# Small-message one-way latency between two nodes (osu_latency / IMB PingPong), Azure HPC docs
# (docs/mpi-launch-rules.md#latency-anchors).
ANCHOR_LATENCY_US: dict[str, float] = {
    "HC": 1.05,
    "HB": 1.27,
    "HBv2": 1.8,  # docs give a range, 1.6-2.0 us; the midpoint, range in ANCHOR_LATENCY_RANGE_US
    "HBv3": 1.2,  # "~1.2 us"
    "A8": 2.2,  # A8/A9/H16r "~2.2 us"; H16mr is the same FDR NetworkDirect hardware as H16r
    "A9": 2.2,
    "H": 2.2,
}
ANCHOR_LATENCY_RANGE_US: dict[str, tuple[float, float]] = {"HBv2": (1.6, 2.0)}
# Rules of thumb from the same docs: under ~3 us RDMA is in use; over ~10 us the job fell back to TCP.
RDMA_LATENCY_CEILING_US = 3.0
TCP_LATENCY_FLOOR_US = 10.0

_FIX = "use an Azure VM size name such as Standard_HB120rs_v3 (the 'Standard_' prefix may be left out)"


def validate_vm_size(vm_size: str, field: str = "pool.vm_size") -> str:
    """Return the size with a ``Standard_`` prefix, raising :class:`SpecError` if it is not a size name.

    A missing prefix is added (``HB120rs_v3`` -> ``Standard_HB120rs_v3``) and a present one is spelled
    ``Standard_`` / ``Basic_``; the rest is kept as given (Azure compares sizes case-insensitively).
    """
    if not isinstance(vm_size, str):
        raise SpecError(field, f"expected a VM size name, got {type(vm_size).__name__} {shown(vm_size)}", _FIX)
    if vm_size == "":
        raise SpecError(field, "the VM size is empty", _FIX)
    lowered = vm_size.lower()
    if lowered.startswith("standard_"):
        canonical = "Standard_" + vm_size[len("standard_"):]
    elif lowered.startswith("basic_"):
        canonical = "Basic_" + vm_size[len("basic_"):]
    else:
        canonical = "Standard_" + vm_size
    if not _SIZE.fullmatch(canonical):
        raise SpecError(
            field,
            f"{shown(vm_size)} is not an Azure VM size name "
            "(letters, digits, '_' and '-' after 'Standard_', starting with a letter)",
            _FIX,
        )
    return canonical


def normalize_vm_size(vm_size: str, field: str = "pool.vm_size") -> str:
    """Lower-case ``standard_...`` form used for matching (``HB120rs_v3`` -> ``standard_hb120rs_v3``)."""
    return validate_vm_size(vm_size, field).lower()


def classify(vm_size: str, field: str = "pool.vm_size") -> str:
    """``"sriov"``, ``"networkdirect"`` or ``"none"`` for a VM size (any case, prefix optional)."""
    name = normalize_vm_size(vm_size, field)
    if not _RDMA.fullmatch(name):
        return NONE
    base = name[: -len("_promo")] if name.endswith("_promo") else name
    return NETWORKDIRECT if base in _NETWORKDIRECT_SIZES else SRIOV


def is_rdma(vm_size: str, field: str = "pool.vm_size") -> bool:
    """True if the size has an InfiniBand (RDMA) interface of either kind."""
    return classify(vm_size, field) != NONE


def family(vm_size: str, field: str = "pool.vm_size") -> str:
    """The size's series with its version, as Azure names series: ``HB120-16rs_v3`` -> ``"HBv3"``.

    Series letters upper-cased, then ``v<N>`` if the name ends in ``_v<N>``; feature letters, core counts and
    accelerator tags are dropped (``ND96amsr_A100_v4`` -> ``"NDv4"``, ``H16mr`` -> ``"H"``, ``HX176rs`` ->
    ``"HX"``). A8-A11 keep their number (``"A8"``): they are a series of their own, unlike A0-A7.
    """
    name = normalize_vm_size(vm_size, field)
    m = _PARTS.fullmatch(name)
    if m is None:
        raise SpecError(field, f"cannot read a VM series from {shown(vm_size)}", _FIX)
    series, cores, _constrained, _features, tags = m.groups()
    versions = [v.group(1) for v in (_VERSION.fullmatch(t) for t in tags.split("_")[1:]) if v]
    version = versions[-1] if versions else None
    if series == "a" and version is None and 8 <= int(cores) <= 11:
        return f"A{int(cores)}"
    return series.upper() + (f"v{version}" if version else "")


def anchor_latency_us(vm_size: str, field: str = "pool.vm_size") -> float | None:
    """Published two-node small-message latency for the size's family, or None.

    None for sizes without RDMA (their latency is the Ethernet's, not a documented anchor) and for RDMA
    families without a published number (HX, HBv4, NC, ND...).
    """
    if classify(vm_size, field) == NONE:
        return None
    return ANCHOR_LATENCY_US.get(family(vm_size, field))
