"""Link classes, their default latency and bandwidth, and named hardware profiles.

The cost model needs, for the links a job's collectives cross, a latency (alpha, seconds per
message) and a bandwidth (bytes per second). The signal plane will measure them; until then
the defaults below are used. Each default names its source; the figures are per direction.

==============  ==========  =============  ================================================
link class      latency     bandwidth      source
==============  ==========  =============  ================================================
nvlink          1 us        450 GB/s/GPU   NVIDIA H100 SXM datasheet: NVLink 4, 900 GB/s
                                           bidirectional per GPU; latency: order of
                                           magnitude of NCCL's intra-node base latency
pcie            2 us        64 GB/s        PCIe 5.0 x16 (PCI-SIG: 32 GT/s x 16 lanes)
rack            3 us        50 GB/s/NIC    400 Gb/s InfiniBand NDR / RoCE NIC (ConnectX-7
                                           datasheet); one switch hop, RDMA end to end
cross_rack      5 us        25 GB/s/NIC    as rack plus two switch hops and a 2:1
                                           oversubscribed spine (an assumption; measure)
wan             1 ms        12.5 GB/s      100 Gb/s metro link between cells (assumption)
loopback        30 us       2 GB/s         gloo over TCP loopback on one CPU machine (rough
                                           figure from this project's machines; measure)
ethernet_1g     100 us      125 MB/s       1 Gbit/s Ethernet (the benchmark's veth + tbf)
ethernet_100m   100 us      12.5 MB/s      100 Mbit/s Ethernet (the benchmark's veth + tbf)
==============  ==========  =============  ================================================

A :class:`LinkModel` is what the planner reads: the link between two ranks of one node and the
node's total inter-node bandwidth (``nics`` times the per-NIC bandwidth).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum

from infermesh.train.planning.api import Backend, parse_choice

__all__ = ["DEFAULT_LINKS", "PROFILES", "Link", "LinkClass", "LinkModel", "Profile", "link_profile"]


class LinkClass(str, Enum):
    """Where two ranks sit relative to each other."""

    NVLINK = "nvlink"
    PCIE = "pcie"
    RACK = "rack"
    CROSS_RACK = "cross_rack"
    WAN = "wan"
    LOOPBACK = "loopback"
    ETHERNET_1G = "ethernet_1g"
    ETHERNET_100M = "ethernet_100m"


@dataclass(frozen=True)
class Link:
    """One link class's alpha-beta figures."""

    cls: LinkClass
    latency_s: float
    """Per-message latency (alpha)."""
    bandwidth_Bps: float
    """Bytes per second, one direction (1 / beta)."""
    source: str
    """Where the figures come from: a datasheet, an assumption or ``measured``."""


_GB = 1e9
DEFAULT_LINKS: dict[LinkClass, Link] = {
    LinkClass.NVLINK: Link(LinkClass.NVLINK, 1e-6, 450 * _GB, "H100 SXM datasheet, NVLink 4"),
    LinkClass.PCIE: Link(LinkClass.PCIE, 2e-6, 64 * _GB, "PCIe 5.0 x16"),
    LinkClass.RACK: Link(LinkClass.RACK, 3e-6, 50 * _GB, "400 Gb/s NIC (ConnectX-7)"),
    LinkClass.CROSS_RACK: Link(
        LinkClass.CROSS_RACK, 5e-6, 25 * _GB, "400 Gb/s NIC, 2:1 spine (assumption)"
    ),
    LinkClass.WAN: Link(LinkClass.WAN, 1e-3, 12.5 * _GB, "100 Gb/s metro link (assumption)"),
    LinkClass.LOOPBACK: Link(LinkClass.LOOPBACK, 30e-6, 2 * _GB, "gloo TCP loopback (rough)"),
    LinkClass.ETHERNET_1G: Link(LinkClass.ETHERNET_1G, 100e-6, 0.125 * _GB, "1 Gbit/s"),
    LinkClass.ETHERNET_100M: Link(LinkClass.ETHERNET_100M, 100e-6, 0.0125 * _GB, "100 Mbit/s"),
}


@dataclass(frozen=True)
class LinkModel:
    """The links of one job: inside a node, and each node's connection to the others."""

    name: str
    intra: Link
    """Between two ranks of one node (per rank)."""
    inter: Link
    """One NIC of a node; the node has ``nics`` of them."""
    nics: int = 1
    """NICs per node; the node's inter-node bandwidth is ``nics * inter.bandwidth_Bps``."""
    mem_Bps: float = 3.35e12
    """Device memory bandwidth (casts for fp16/bf16 compression). H100 SXM HBM3: 3.35 TB/s."""
    flops: float = 60e12
    """fp32 FLOP/s for PowerSGD's matrix products (H100 SXM: ~67 TFLOP/s non-tensor fp32)."""

    @property
    def node_Bps(self) -> float:
        """Total inter-node bandwidth of one node."""
        return self.nics * self.inter.bandwidth_Bps

    def with_measured(
        self, intra: tuple[float, float] | None = None, inter: tuple[float, float] | None = None
    ) -> LinkModel:
        """Replace defaults with measured ``(latency_s, bandwidth_Bps)`` figures."""
        out = self
        if intra is not None:
            out = replace(out, intra=Link(self.intra.cls, *intra, source="measured"))
        if inter is not None:
            out = replace(out, inter=Link(self.inter.cls, *inter, source="measured"))
        return out


def _profile(
    name: str, intra: LinkClass, inter: LinkClass, nics: int, mem_Bps: float, flops: float
) -> LinkModel:
    return LinkModel(name, DEFAULT_LINKS[intra], DEFAULT_LINKS[inter], nics, mem_Bps, flops)


class Profile(str, Enum):
    """Names of the built-in hardware profiles (``--link-profile``)."""

    H100_NVLINK_400G = "h100-nvlink-400g"
    H100_CROSS_RACK = "h100-nvlink-400g-cross-rack"
    PCIE_400G = "pcie-400g"
    CPU_LOOPBACK = "cpu-loopback"
    VETH_1G = "veth-1g"
    VETH_100M = "veth-100m"


PROFILES: dict[Profile, LinkModel] = {
    # 8 x H100 SXM per node with NVLink, 8 x 400 Gb/s NICs (one per GPU), e.g. a DGX H100.
    Profile.H100_NVLINK_400G: _profile(
        "h100-nvlink-400g", LinkClass.NVLINK, LinkClass.RACK, 8, 3.35e12, 60e12
    ),
    Profile.H100_CROSS_RACK: _profile(
        "h100-nvlink-400g-cross-rack", LinkClass.NVLINK, LinkClass.CROSS_RACK, 8, 3.35e12, 60e12
    ),
    # GPUs on PCIe without NVLink, one 400 Gb/s NIC per node.
    Profile.PCIE_400G: _profile("pcie-400g", LinkClass.PCIE, LinkClass.RACK, 1, 2e12, 30e12),
    # gloo on CPU, every "node" on one machine (tests).
    Profile.CPU_LOOPBACK: _profile(
        "cpu-loopback", LinkClass.LOOPBACK, LinkClass.LOOPBACK, 1, 10e9, 50e9
    ),
    # The benchmark: ranks of a "node" on loopback, nodes joined by a 1 Gbit/s veth pair.
    Profile.VETH_1G: _profile("veth-1g", LinkClass.LOOPBACK, LinkClass.ETHERNET_1G, 1, 10e9, 50e9),
    Profile.VETH_100M: _profile(
        "veth-100m", LinkClass.LOOPBACK, LinkClass.ETHERNET_100M, 1, 10e9, 50e9
    ),
}


PROFILE_ENV = "INFERMESH_LINK_PROFILE"
"""Names the profile of a job's links (the hook reads it from its environment, the
coordinator from the job's)."""

DEFAULT_PROFILE: dict[Backend, Profile] = {
    Backend.GLOO: Profile.CPU_LOOPBACK,
    Backend.NCCL: Profile.H100_NVLINK_400G,
}
"""The profile a job's links start from when :data:`PROFILE_ENV` names none."""


def link_profile(name: str) -> LinkModel:
    """The built-in profile ``name``; a UsageError lists the known names otherwise."""
    return PROFILES[parse_choice(Profile, name, "link profile")]
