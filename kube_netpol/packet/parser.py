"""Parse the IP and transport headers of one queued packet into a Packet.

This runs once per queued packet, so it reads only the fields policies need,
with precompiled ``struct`` unpackers on the caller's buffer, and keeps the
common case (IPv4/IPv6 without extension headers, TCP/UDP) free of loops,
allocations beyond the Packet, and exceptions. Every way the input can be
wrong ends in MalformedPacket; the caller turns that into its fail-open or
fail-closed verdict.

The input starts at the IP header (NFQUEUE has no link layer) and may be cut
short by the queue's copy range: a cut payload is fine, a cut header is not.
A ``memoryview`` must be of bytes (``memoryview(b"...")``), as offsets are
counted in items.
"""

from __future__ import annotations

import struct
from typing import Final

from kube_netpol.api.packet import (
    IPPROTO_ICMP,
    IPPROTO_ICMPV6,
    IPPROTO_SCTP,
    IPPROTO_TCP,
    IPPROTO_UDP,
    Packet,
)

__all__ = ["MalformedPacket", "parse_packet"]


class MalformedPacket(ValueError):
    """The bytes are not a parseable IP packet (too short, inconsistent, a non-first fragment)."""


# Bound unpack_from methods of precompiled structs: no format parsing and no
# attribute lookup per packet.
# version/IHL, total length, flags/fragment offset, protocol, source, destination
_unpack_ipv4_header: Final = struct.Struct("!BxH2xHxB2x4s4s").unpack_from
# payload length, next header, source, destination (traffic class and flow label are not needed)
_unpack_ipv6_header: Final = struct.Struct("!4xHB1x16s16s").unpack_from
_unpack_ports: Final = struct.Struct("!HH").unpack_from
_unpack_type_code: Final = struct.Struct("!BB").unpack_from
_unpack_u16: Final = struct.Struct("!H").unpack_from

_IPV4_MIN_HEADER: Final = 20
_IPV6_HEADER_LEN: Final = 40
_IPV4_FRAGMENT_OFFSET_MASK: Final = 0x1FFF

# Fixed header length of the transport protocols we read ports from; the ports
# are the first 4 bytes of each. We insist on the whole fixed header, like the
# kernel's conntrack does before it tracks such a packet.
_PORT_PROTOCOL_HEADER_LEN: Final[dict[int, int]] = {IPPROTO_TCP: 20, IPPROTO_UDP: 8, IPPROTO_SCTP: 12}
# struct icmphdr / icmp6hdr are 8 bytes; the kernel wants all of it too.
_ICMP_HEADER_LEN: Final = 8

_IPV6_HOP_BY_HOP: Final = 0
_IPV6_ROUTING: Final = 43
_IPV6_FRAGMENT: Final = 44
_IPV6_AH: Final = 51
_IPV6_DEST_OPTIONS: Final = 60
_IPV6_MOBILITY: Final = 135
# Headers we step over to find the transport header. ESP (50) and "no next
# header" (59) are deliberately absent: nothing readable follows them, so the
# walk ends there and they are reported as the protocol.
_IPV6_EXTENSION_HEADERS: Final = frozenset(
    {_IPV6_HOP_BY_HOP, _IPV6_ROUTING, _IPV6_FRAGMENT, _IPV6_AH, _IPV6_DEST_OPTIONS, _IPV6_MOBILITY}
)
# Every extension header is at least 8 bytes (the fragment header exactly 8).
_IPV6_EXTENSION_MIN_LEN: Final = 8


def parse_packet(data: bytes | bytearray | memoryview) -> Packet:
    """Return the header fields of the raw IP packet ``data``.

    Raises MalformedPacket, and nothing else, for any byte string that is not
    a complete enough IPv4/IPv6 packet, including non-first fragments.
    """
    try:
        length = len(data)
        if length >= _IPV4_MIN_HEADER:
            version = data[0] >> 4
            if version == 4:
                return _parse_ipv4(data, length)
            if version == 6:
                return _parse_ipv6(data, length)
            raise MalformedPacket(f"unsupported IP version {version}")
        if length == 0:
            raise MalformedPacket("empty packet")
        raise MalformedPacket(f"packet of {length} bytes is shorter than any IP header")
    except (struct.error, IndexError) as exc:
        # Safety net only: the explicit checks below are meant to make this
        # unreachable (the tests assert they do), but a parser bug must still
        # surface as MalformedPacket so the caller's fail-open/closed applies.
        raise MalformedPacket(f"unparseable packet: {exc}") from exc


def _parse_ipv4(data: bytes | bytearray | memoryview, length: int) -> Packet:
    version_ihl, total_length, fragment, protocol, src, dst = _unpack_ipv4_header(data)
    header_len = (version_ihl & 0x0F) << 2
    if header_len < _IPV4_MIN_HEADER:
        raise MalformedPacket(f"IPv4 IHL {header_len >> 2} is below the minimum of 5")
    if header_len > length:
        raise MalformedPacket(f"IPv4 header length {header_len} exceeds packet length {length}")
    if fragment & _IPV4_FRAGMENT_OFFSET_MASK:
        raise MalformedPacket(
            f"IPv4 fragment at offset {(fragment & _IPV4_FRAGMENT_OFFSET_MASK) << 3} has no transport header"
        )
    # Where the datagram ends: the total length, unless the copy range cut the
    # capture shorter. A total length of 0 means "see the buffer" for GSO/BIG TCP
    # packets, so it is not an error.
    end = length
    if total_length:
        if total_length < header_len:
            raise MalformedPacket(f"IPv4 total length {total_length} is smaller than its header length {header_len}")
        if total_length < length:
            end = total_length
    return _transport(data, 4, protocol, src, dst, header_len, end, IPPROTO_ICMP)


def _parse_ipv6(data: bytes | bytearray | memoryview, length: int) -> Packet:
    if length < _IPV6_HEADER_LEN:
        raise MalformedPacket(f"IPv6 packet of {length} bytes is shorter than the 40-byte IPv6 header")
    payload_length, next_header, src, dst = _unpack_ipv6_header(data)
    # A payload length of 0 is a jumbogram or a BIG TCP packet: the buffer tells.
    end = length
    if payload_length and payload_length + _IPV6_HEADER_LEN < length:
        end = payload_length + _IPV6_HEADER_LEN
    offset = _IPV6_HEADER_LEN
    if next_header in _IPV6_EXTENSION_HEADERS:
        next_header, offset = _skip_ipv6_extension_headers(data, next_header, offset, end)
    return _transport(data, 6, next_header, src, dst, offset, end, IPPROTO_ICMPV6)


def _skip_ipv6_extension_headers(
    data: bytes | bytearray | memoryview, next_header: int, offset: int, end: int
) -> tuple[int, int]:
    """Walk the extension header chain; return the upper-layer protocol and its offset.

    Terminates: every header advances ``offset`` by at least 8 bytes and the
    walk stops once ``offset`` passes ``end``.
    """
    while next_header in _IPV6_EXTENSION_HEADERS:
        if offset + _IPV6_EXTENSION_MIN_LEN > end:
            raise MalformedPacket(
                f"IPv6 extension header {next_header} at offset {offset} is cut off at {end} bytes"
            )
        header = next_header
        next_header = data[offset]
        if header == _IPV6_FRAGMENT:
            fragment_offset = _unpack_u16(data, offset + 2)[0] >> 3
            if fragment_offset:
                raise MalformedPacket(
                    f"IPv6 fragment at offset {fragment_offset << 3} has no transport header"
                )
            offset += _IPV6_EXTENSION_MIN_LEN
            continue
        if header == _IPV6_AH:
            header_len = (data[offset + 1] + 2) << 2  # AH counts 4-byte words, minus 2
        else:
            header_len = (data[offset + 1] + 1) << 3  # the others count 8-byte units, minus 1
        offset += header_len
        if offset > end:
            raise MalformedPacket(
                f"IPv6 extension header {header} of {header_len} bytes runs past the packet end at {end}"
            )
    return next_header, offset


def _transport(
    data: bytes | bytearray | memoryview,
    family: int,
    protocol: int,
    src: bytes,
    dst: bytes,
    offset: int,
    end: int,
    icmp_protocol: int,
) -> Packet:
    """Read ports or ICMP type/code at ``offset``; ``end`` is where the datagram (or capture) stops."""
    header_len = _PORT_PROTOCOL_HEADER_LEN.get(protocol)
    if header_len is not None:
        if offset + header_len > end:
            raise MalformedPacket(
                f"IPv{family} protocol {protocol} header needs {header_len} bytes at offset {offset},"
                f" packet ends at {end}"
            )
        src_port, dst_port = _unpack_ports(data, offset)
        return Packet(family, protocol, src, dst, src_port, dst_port)
    if protocol == icmp_protocol:
        if offset + _ICMP_HEADER_LEN > end:
            raise MalformedPacket(
                f"IPv{family} ICMP header needs {_ICMP_HEADER_LEN} bytes at offset {offset}, packet ends at {end}"
            )
        icmp_type, icmp_code = _unpack_type_code(data, offset)
        return Packet(family, protocol, src, dst, 0, 0, icmp_type, icmp_code)
    return Packet(family, protocol, src, dst)
