"""The parsed headers of one packet, as the engine and evaluators see them."""

from __future__ import annotations

import ipaddress
from typing import Final

IPPROTO_ICMP: Final = 1
IPPROTO_TCP: Final = 6
IPPROTO_UDP: Final = 17
IPPROTO_ICMPV6: Final = 58
IPPROTO_SCTP: Final = 132

#: Kubernetes protocol names of the transport protocols policies can name.
PROTOCOL_BY_NAME: Final[dict[str, int]] = {"TCP": IPPROTO_TCP, "UDP": IPPROTO_UDP, "SCTP": IPPROTO_SCTP}
#: The protocols whose destination ports policies can name.
PORT_PROTOCOLS: Final = tuple(PROTOCOL_BY_NAME.values())
#: "IPv4"/"IPv6" by ``Packet.family``.
FAMILY_NAMES: Final[dict[int, str]] = {4: "IPv4", 6: "IPv6"}
PROTOCOL_NAMES: Final[dict[int, str]] = {
    IPPROTO_TCP: "TCP",
    IPPROTO_UDP: "UDP",
    IPPROTO_SCTP: "SCTP",
    IPPROTO_ICMP: "ICMP",
    IPPROTO_ICMPV6: "ICMPv6",
}


class Packet:
    """Header fields of one packet.

    Addresses are the packed bytes (4 for IPv4, 16 for IPv6) so that lookups
    by address are plain dict hits. Ports are 0 for protocols without ports;
    ``icmp_type``/``icmp_code`` are -1 unless the packet is ICMP or ICMPv6.
    A plain slotted class rather than a dataclass: one is built per queued
    packet and this constructor is the cheapest Python offers.
    """

    __slots__ = ("family", "protocol", "src", "dst", "src_port", "dst_port", "icmp_type", "icmp_code")

    def __init__(
        self,
        family: int,
        protocol: int,
        src: bytes,
        dst: bytes,
        src_port: int = 0,
        dst_port: int = 0,
        icmp_type: int = -1,
        icmp_code: int = -1,
    ) -> None:
        self.family = family  # 4 or 6
        self.protocol = protocol  # IP protocol number
        self.src = src
        self.dst = dst
        self.src_port = src_port
        self.dst_port = dst_port
        self.icmp_type = icmp_type
        self.icmp_code = icmp_code

    @classmethod
    def from_strings(
        cls, src: str, dst: str, protocol: int | str, dst_port: int = 0, src_port: int = 0
    ) -> "Packet":
        """Build a packet from text addresses (tools and tests; not the hot path)."""
        s = ipaddress.ip_address(src)
        d = ipaddress.ip_address(dst)
        if s.version != d.version:
            raise ValueError(f"address families differ: {src} and {dst}")
        proto = PROTOCOL_BY_NAME[protocol.upper()] if isinstance(protocol, str) else protocol
        return cls(s.version, proto, s.packed, d.packed, src_port, dst_port)

    @property
    def src_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.src)

    @property
    def dst_ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        return ipaddress.ip_address(self.dst)

    @property
    def protocol_name(self) -> str:
        return PROTOCOL_NAMES.get(self.protocol, str(self.protocol))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self) -> str:
        return (
            f"Packet(IPv{self.family} {self.protocol_name} {self.src_ip}:{self.src_port}"
            f" -> {self.dst_ip}:{self.dst_port})"
        )
