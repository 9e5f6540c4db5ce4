"""Tests of kube_netpol.packet.parse_packet against packets crafted with scapy.

scapy is the independent reference here: packets are built with it and the
expected fields are read back from scapy's own dissection of the same bytes.
"""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP, IPOption_NOP, IPOption_Router_Alert, IPOption_RR
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    ICMPv6EchoReply,
    ICMPv6EchoRequest,
    ICMPv6PacketTooBig,
    ICMPv6TimeExceeded,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
    MIP6MH_BRR,
    _MobilityHeader,
)
from scapy.layers.ipsec import AH, ESP
from scapy.layers.sctp import SCTP
from scapy.packet import Packet as ScapyPacket
from scapy.packet import Raw

import kube_netpol.packet.parser as parser_module
from kube_netpol.api.packet import Packet
from kube_netpol.packet import MalformedPacket, parse_packet

SRC4, DST4 = "10.244.1.5", "10.244.2.7"
SRC6, DST6 = "fd00:10:244:1::5", "fd00:10:244:2::7"
SAFETY_NET_PREFIX = "unparseable packet"


def packed(address: str) -> bytes:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    return socket.inet_pton(family, address)


def parse_everywhere(raw: bytes) -> Packet:
    """Parse bytes, bytearray and memoryview of ``raw``; they must agree."""
    result = parse_packet(raw)
    assert parse_packet(bytearray(raw)) == result
    assert parse_packet(memoryview(raw)) == result
    return result


def assert_malformed(raw: bytes, message_part: str) -> None:
    for buffer in (raw, bytearray(raw), memoryview(raw)):
        with pytest.raises(MalformedPacket) as info:
            parse_packet(buffer)
        assert message_part in str(info.value)
        assert not str(info.value).startswith(SAFETY_NET_PREFIX)


def ah(next_header: int) -> AH:
    # scapy fills neither AH's next header nor its length; 12-byte ICV -> 24 bytes -> (24 / 4) - 2 = 4.
    return AH(nh=next_header, payloadlen=4, spi=0x1234, seq=1, icv=b"\x01" * 12)


# --- the reference: read the expected fields from scapy's dissection ---------------------------

_IPV6_EXTENSION_CLASSES = (
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    _MobilityHeader,
)
FRAGMENT = "non-first fragment"


def _dissect_after_ah(next_header: int, rest: bytes) -> ScapyPacket:
    # scapy leaves what follows AH as Raw; dissect it behind a stand-in IPv6 header.
    return IPv6(bytes(IPv6(nh=next_header, plen=len(rest)) / Raw(rest))).payload


def scapy_fields(raw: bytes) -> Packet | str:
    """The Packet scapy's dissection of ``raw`` implies, or FRAGMENT."""
    if raw[0] >> 4 == 4:
        ip = IP(raw)
        if ip.frag:
            return FRAGMENT
        family, protocol, layer, icmp_protocol = 4, ip.proto, ip.payload, 1
    else:
        ip = IPv6(raw)
        family, protocol, layer, icmp_protocol = 6, ip.nh, ip.payload, 58
        while isinstance(layer, _IPV6_EXTENSION_CLASSES + (AH,)):
            if isinstance(layer, IPv6ExtHdrFragment) and layer.offset:
                return FRAGMENT
            protocol = layer.nh
            layer = _dissect_after_ah(protocol, bytes(layer.payload)) if isinstance(layer, AH) else layer.payload
    src, dst = packed(ip.src), packed(ip.dst)
    if protocol in (6, 17, 132):
        assert isinstance(layer, (TCP, UDP, SCTP)), layer
        return Packet(family, protocol, src, dst, layer.sport, layer.dport)
    if protocol == icmp_protocol:
        return Packet(family, protocol, src, dst, 0, 0, layer.type, layer.code)
    return Packet(family, protocol, src, dst)


# --- IPv4 ---------------------------------------------------------------------------------------


def test_ipv4_tcp_syn_fields() -> None:
    raw = bytes(IP(src=SRC4, dst=DST4) / TCP(sport=40000, dport=8080, flags="S"))
    packet = parse_everywhere(raw)
    assert packet.family == 4
    assert packet.protocol == 6
    assert packet.src == packed(SRC4) and type(packet.src) is bytes
    assert packet.dst == packed(DST4) and type(packet.dst) is bytes
    assert (packet.src_port, packet.dst_port) == (40000, 8080)
    assert (packet.icmp_type, packet.icmp_code) == (-1, -1)


def test_addresses_from_memoryview_are_hashable_bytes() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=1, dport=53))
    packet = parse_packet(memoryview(raw))
    assert type(packet.src) is bytes and type(packet.dst) is bytes
    assert {packed(SRC6): "a", packed(DST6): "b"}[packet.dst] == "b"


def test_ipv4_udp() -> None:
    packet = parse_everywhere(bytes(IP(src=SRC4, dst=DST4) / UDP(sport=5353, dport=53) / b"query"))
    assert (packet.family, packet.protocol, packet.src_port, packet.dst_port) == (4, 17, 5353, 53)
    assert (packet.icmp_type, packet.icmp_code) == (-1, -1)


def test_ipv4_sctp_ports_come_from_the_common_header() -> None:
    packet = parse_everywhere(bytes(IP(src=SRC4, dst=DST4) / SCTP(sport=3868, dport=9899, tag=0xDEADBEEF)))
    assert (packet.protocol, packet.src_port, packet.dst_port) == (132, 3868, 9899)


def test_ipv4_icmp_type_and_code_without_ports() -> None:
    packet = parse_everywhere(bytes(IP(src=SRC4, dst=DST4) / ICMP(type=3, code=13) / IP() / UDP()))
    assert (packet.protocol, packet.icmp_type, packet.icmp_code) == (1, 3, 13)
    assert (packet.src_port, packet.dst_port) == (0, 0)


def test_ipv4_echo_request() -> None:
    packet = parse_everywhere(bytes(IP(src=SRC4, dst=DST4) / ICMP(type=8, code=0, id=7, seq=1)))
    assert (packet.icmp_type, packet.icmp_code) == (8, 0)


def test_ipv4_other_protocol_has_no_ports_or_icmp_fields() -> None:
    packet = parse_everywhere(bytes(IP(src=SRC4, dst=DST4, proto=47) / (b"\x00" * 40)))
    assert (packet.protocol, packet.src_port, packet.dst_port) == (47, 0, 0)
    assert (packet.icmp_type, packet.icmp_code) == (-1, -1)


def test_icmpv6_number_inside_ipv4_is_just_another_protocol() -> None:
    packet = parse_everywhere(bytes(IP(src=SRC4, dst=DST4, proto=58) / ICMPv6EchoRequest()))
    assert (packet.protocol, packet.icmp_type, packet.icmp_code) == (58, -1, -1)


def test_ipv4_options_are_skipped() -> None:
    options = [IPOption_NOP(), IPOption_RR(routers=["1.1.1.1", "2.2.2.2"]), IPOption_Router_Alert()]
    raw = bytes(IP(src=SRC4, dst=DST4, options=options) / TCP(sport=1234, dport=443))
    assert raw[0] & 0x0F > 5  # the options are really there
    packet = parse_everywhere(raw)
    assert (packet.src, packet.dst, packet.src_port, packet.dst_port) == (packed(SRC4), packed(DST4), 1234, 443)


def test_ipv4_maximum_header_length() -> None:
    options = [IPOption_RR(routers=["9.9.9.9"] * 9)]  # 3 + 36 bytes, padded to 40: IHL 15
    raw = bytes(IP(src=SRC4, dst=DST4, options=options) / UDP(sport=7, dport=9))
    assert raw[0] == 0x4F
    assert parse_everywhere(raw) == Packet(4, 17, packed(SRC4), packed(DST4), 7, 9)


def test_ipv4_first_fragment_is_parsed() -> None:
    raw = bytes(IP(src=SRC4, dst=DST4, flags="MF", frag=0) / UDP(sport=1000, dport=2000) / (b"x" * 100))
    assert parse_everywhere(raw) == Packet(4, 17, packed(SRC4), packed(DST4), 1000, 2000)


def test_ipv4_later_fragment_is_rejected() -> None:
    raw = bytes(IP(src=SRC4, dst=DST4, proto=6, flags="MF", frag=185) / (b"x" * 64))
    assert_malformed(raw, "IPv4 fragment at offset 1480 has no transport header")
    last = bytes(IP(src=SRC4, dst=DST4, proto=6, frag=1) / (b"x" * 64))  # no MF, offset 8
    assert_malformed(last, "IPv4 fragment at offset 8")


@pytest.mark.parametrize("offset_units", [1, 2, 4096, 8191])
def test_ipv4_any_fragment_offset_bit_is_rejected(offset_units: int) -> None:
    raw = bytes(IP(src=SRC4, dst=DST4, frag=offset_units) / UDP())
    assert_malformed(raw, f"IPv4 fragment at offset {offset_units * 8} ")


@pytest.mark.parametrize("offset_units", [1, 4096, 8191])
def test_ipv6_any_fragment_offset_bit_is_rejected(offset_units: int) -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(m=1, offset=offset_units) / UDP())
    assert_malformed(raw, f"IPv6 fragment at offset {offset_units * 8} ")


def test_ipv4_dont_fragment_flag_is_not_a_fragment() -> None:
    raw = bytes(IP(src=SRC4, dst=DST4, flags="DF") / TCP(sport=1, dport=2))
    assert parse_everywhere(raw).dst_port == 2


def test_ipv4_truncated_to_copy_range_still_parses() -> None:
    raw = bytes(IP(src=SRC4, dst=DST4) / TCP(sport=50000, dport=80) / (b"A" * 1400))
    assert struct.unpack_from("!H", raw, 2)[0] == 1440  # total length still says 1440
    assert parse_everywhere(raw[:128]) == Packet(4, 6, packed(SRC4), packed(DST4), 50000, 80)


def test_ipv4_total_length_zero_means_gso_and_uses_the_buffer() -> None:
    raw = bytearray(bytes(IP(src=SRC4, dst=DST4) / TCP(sport=5, dport=6) / (b"z" * 100)))
    raw[2:4] = b"\x00\x00"
    assert parse_everywhere(bytes(raw)) == Packet(4, 6, packed(SRC4), packed(DST4), 5, 6)


def test_ipv4_trailing_bytes_after_total_length_are_ignored() -> None:
    raw = bytes(IP(src=SRC4, dst=DST4) / UDP(sport=11, dport=12)) + b"\xff" * 30
    assert parse_everywhere(raw) == Packet(4, 17, packed(SRC4), packed(DST4), 11, 12)


# --- IPv6 ---------------------------------------------------------------------------------------


def test_ipv6_tcp_fields() -> None:
    packet = parse_everywhere(bytes(IPv6(src=SRC6, dst=DST6) / TCP(sport=40000, dport=8443, flags="S")))
    assert packet.family == 6
    assert packet.protocol == 6
    assert packet.src == packed(SRC6) and len(packet.src) == 16
    assert packet.dst == packed(DST6) and len(packet.dst) == 16
    assert (packet.src_port, packet.dst_port, packet.icmp_type, packet.icmp_code) == (40000, 8443, -1, -1)


def test_ipv6_udp_and_sctp() -> None:
    udp = parse_everywhere(bytes(IPv6(src=SRC6, dst=DST6) / UDP(sport=546, dport=547)))
    assert (udp.protocol, udp.src_port, udp.dst_port) == (17, 546, 547)
    sctp = parse_everywhere(bytes(IPv6(src=SRC6, dst=DST6) / SCTP(sport=36412, dport=38412)))
    assert (sctp.protocol, sctp.src_port, sctp.dst_port) == (132, 36412, 38412)


@pytest.mark.parametrize(
    ("message", "expected_type", "expected_code"),
    [
        (ICMPv6EchoRequest(id=1, seq=2), 128, 0),
        (ICMPv6EchoReply(), 129, 0),
        (ICMPv6DestUnreach(code=4) / IPv6() / UDP(), 1, 4),
        (ICMPv6PacketTooBig(mtu=1280), 2, 0),
        (ICMPv6TimeExceeded(code=1), 3, 1),
    ],
)
def test_ipv6_icmpv6_type_and_code(message: ScapyPacket, expected_type: int, expected_code: int) -> None:
    packet = parse_everywhere(bytes(IPv6(src=SRC6, dst=DST6) / message))
    assert (packet.protocol, packet.icmp_type, packet.icmp_code) == (58, expected_type, expected_code)
    assert (packet.src_port, packet.dst_port) == (0, 0)


def test_icmp_number_inside_ipv6_is_just_another_protocol() -> None:
    packet = parse_everywhere(bytes(IPv6(src=SRC6, dst=DST6, nh=1) / ICMP(type=8)))
    assert (packet.protocol, packet.icmp_type, packet.icmp_code) == (1, -1, -1)


def test_ipv6_several_extension_headers_are_skipped() -> None:
    raw = bytes(
        IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / IPv6ExtHdrRouting(addresses=["fd00::a", "fd00::b"])
        / IPv6ExtHdrFragment(m=1, offset=0, id=99)
        / IPv6ExtHdrDestOpt()
        / TCP(sport=33000, dport=22)
    )
    assert parse_everywhere(raw) == Packet(6, 6, packed(SRC6), packed(DST6), 33000, 22)


def test_ipv6_segment_routing_header_is_a_routing_header() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrSegmentRouting(addresses=["fd00::9", "fd00::8"]) / UDP(sport=3, dport=4))
    assert parse_everywhere(raw) == Packet(6, 17, packed(SRC6), packed(DST6), 3, 4)


def test_ipv6_first_fragment_is_parsed() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrFragment(m=1, offset=0) / UDP(sport=7, dport=8) / (b"y" * 64))
    assert parse_everywhere(raw) == Packet(6, 17, packed(SRC6), packed(DST6), 7, 8)


def test_ipv6_later_fragment_is_rejected() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrFragment(nh=6, m=0, offset=185) / (b"x" * 64))
    assert_malformed(raw, "IPv6 fragment at offset 1480 has no transport header")


def test_ipv6_ah_length_is_counted_in_four_byte_words() -> None:
    # 24 bytes of AH: read as 8-byte units the walk would land 16 bytes off.
    raw = bytes(IPv6(src=SRC6, dst=DST6, nh=51) / ah(next_header=6) / TCP(sport=61000, dport=5432))
    assert parse_everywhere(raw) == Packet(6, 6, packed(SRC6), packed(DST6), 61000, 5432)


def test_ipv6_ah_among_other_extension_headers() -> None:
    raw = bytes(
        IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop(nh=51)
        / ah(next_header=60)
        / IPv6ExtHdrDestOpt()
        / ICMPv6EchoRequest()
    )
    assert parse_everywhere(raw) == Packet(6, 58, packed(SRC6), packed(DST6), 0, 0, 128, 0)


def test_ipv6_esp_ends_the_walk() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrDestOpt() / ESP(spi=0x42, seq=1, data=b"\x00" * 32))
    assert parse_everywhere(raw) == Packet(6, 50, packed(SRC6), packed(DST6))


def test_ipv6_no_next_header_ends_the_walk() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6, nh=59))
    assert parse_everywhere(raw) == Packet(6, 59, packed(SRC6), packed(DST6))
    hop = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop(nh=59))
    assert parse_everywhere(hop) == Packet(6, 59, packed(SRC6), packed(DST6))


def test_ipv6_mobility_header_is_skipped() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / MIP6MH_BRR())
    assert raw[6] == 135
    assert parse_everywhere(raw) == Packet(6, 59, packed(SRC6), packed(DST6))
    # A mobility header followed by UDP (hand-built: scapy always says "no next header").
    mobility = bytes([17, 0, 0, 0, 0, 0, 0, 0])
    udp = bytes(UDP(sport=9, dport=10))
    crafted = bytes(IPv6(src=SRC6, dst=DST6, nh=135, plen=16) / Raw(mobility + udp))
    assert parse_everywhere(crafted) == Packet(6, 17, packed(SRC6), packed(DST6), 9, 10)


def test_ipv6_truncated_to_copy_range_still_parses() -> None:
    raw = bytes(
        IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / TCP(sport=40001, dport=9090) / (b"B" * 4000)
    )
    assert parse_everywhere(raw[:128]) == Packet(6, 6, packed(SRC6), packed(DST6), 40001, 9090)


def test_ipv6_payload_length_zero_uses_the_buffer() -> None:
    raw = bytearray(bytes(IPv6(src=SRC6, dst=DST6) / TCP(sport=1, dport=2) / (b"j" * 64)))
    raw[4:6] = b"\x00\x00"
    assert parse_everywhere(bytes(raw)) == Packet(6, 6, packed(SRC6), packed(DST6), 1, 2)


# --- malformed input ----------------------------------------------------------------------------


def test_empty_and_tiny_buffers() -> None:
    assert_malformed(b"", "empty packet")
    assert_malformed(b"\x45", "1 bytes is shorter than any IP header")
    assert_malformed(bytes(IP(src=SRC4, dst=DST4))[:19], "19 bytes")


@pytest.mark.parametrize("version", [0, 1, 2, 3, 5, 7, 15])
def test_wrong_version_nibble(version: int) -> None:
    raw = bytearray(bytes(IP(src=SRC4, dst=DST4) / TCP()))
    raw[0] = (version << 4) | 5
    assert_malformed(bytes(raw), f"unsupported IP version {version}")


@pytest.mark.parametrize("ihl", [0, 1, 4])
def test_ipv4_ihl_below_five(ihl: int) -> None:
    raw = bytearray(bytes(IP(src=SRC4, dst=DST4) / TCP()))
    raw[0] = 0x40 | ihl
    assert_malformed(bytes(raw), f"IPv4 IHL {ihl} is below the minimum of 5")


def test_ipv4_header_length_past_the_end() -> None:
    raw = bytearray(bytes(IP(src=SRC4, dst=DST4, proto=6)))
    raw[0] = 0x46
    assert_malformed(bytes(raw), "IPv4 header length 24 exceeds packet length 20")


def test_ipv4_total_length_smaller_than_header() -> None:
    raw = bytearray(bytes(IP(src=SRC4, dst=DST4) / TCP()))
    raw[2:4] = struct.pack("!H", 19)
    assert_malformed(bytes(raw), "IPv4 total length 19 is smaller than its header length 20")


@pytest.mark.parametrize(
    ("transport", "needed"), [(TCP(), 20), (UDP(), 8), (SCTP(), 12), (ICMP(), 8)]
)
def test_ipv4_transport_header_cut(transport: ScapyPacket, needed: int) -> None:
    raw = bytes(IP(src=SRC4, dst=DST4) / transport)
    assert parse_everywhere(raw[: 20 + needed]).protocol == raw[9]
    assert_malformed(raw[: 20 + needed - 1], f"ends at {20 + needed - 1}")
    assert_malformed(raw[:20], "at offset 20")


def test_ipv4_transport_header_beyond_total_length() -> None:
    # The bytes are there but the datagram says it ends inside the UDP header.
    raw = bytearray(bytes(IP(src=SRC4, dst=DST4) / UDP(sport=1, dport=2)))
    raw[2:4] = struct.pack("!H", 24)
    assert_malformed(bytes(raw), "IPv4 protocol 17 header needs 8 bytes at offset 20, packet ends at 24")


def test_ipv6_shorter_than_its_header() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / TCP())
    assert_malformed(raw[:39], "IPv6 packet of 39 bytes is shorter than the 40-byte IPv6 header")
    assert_malformed(raw[:20], "IPv6 packet of 20 bytes")


@pytest.mark.parametrize(("transport", "needed"), [(TCP(), 20), (UDP(), 8), (SCTP(), 12), (ICMPv6EchoRequest(), 8)])
def test_ipv6_transport_header_cut(transport: ScapyPacket, needed: int) -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / transport)
    assert parse_everywhere(raw[: 40 + needed]).protocol == raw[6]
    assert_malformed(raw[: 40 + needed - 1], f"ends at {40 + needed - 1}")
    assert_malformed(raw[:40], "at offset 40")


def test_ipv6_extension_header_cut() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / TCP())
    assert_malformed(raw[:44], "IPv6 extension header 0 at offset 40 is cut off at 44 bytes")


def test_ipv6_extension_header_length_past_the_end() -> None:
    raw = bytearray(bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrDestOpt() / UDP()))
    raw[41] = 200  # claims (200 + 1) * 8 bytes
    assert_malformed(bytes(raw), "IPv6 extension header 60 of 1608 bytes runs past the packet end at 56")


def test_ipv6_payload_length_ends_inside_extension_headers() -> None:
    raw = bytearray(bytes(IPv6(src=SRC6, dst=DST6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / TCP()))
    raw[4:6] = struct.pack("!H", 12)  # the datagram "ends" inside the destination options
    assert_malformed(bytes(raw), "cut off at 52 bytes")


def test_ah_cut() -> None:
    raw = bytes(IPv6(src=SRC6, dst=DST6, nh=51) / ah(next_header=6) / TCP())
    assert_malformed(raw[:60], "IPv6 extension header 51 of 24 bytes runs past the packet end at 60")


def test_every_truncation_before_the_transport_header_end_is_malformed() -> None:
    raw = bytes(
        IPv6(src=SRC6, dst=DST6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrRouting(addresses=["fd00::1"])
        / ah(next_header=44)
        / IPv6ExtHdrFragment(m=1)
        / TCP(sport=4, dport=5)
        / (b"p" * 50)
    )
    header_end = 40 + 8 + 24 + 24 + 8 + 20
    for cut in range(header_end):
        with pytest.raises(MalformedPacket) as info:
            parse_packet(raw[:cut])
        assert not str(info.value).startswith(SAFETY_NET_PREFIX)
    for cut in range(header_end, len(raw) + 1):
        assert parse_packet(raw[:cut]) == Packet(6, 6, packed(SRC6), packed(DST6), 4, 5)


def test_safety_net_turns_parser_bugs_into_malformed_packet(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(data: bytes, length: int) -> Packet:
        raise struct.error("unpack_from requires a buffer of at least 20 bytes")

    monkeypatch.setattr(parser_module, "_parse_ipv4", broken)
    with pytest.raises(MalformedPacket, match=SAFETY_NET_PREFIX):
        parse_packet(bytes(IP(src=SRC4, dst=DST4) / TCP()))


def test_malformed_packet_is_a_value_error() -> None:
    assert issubclass(MalformedPacket, ValueError)
    with pytest.raises(ValueError):
        parse_packet(b"\x60")


# --- properties ---------------------------------------------------------------------------------

PROPERTY_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_parses_or_is_malformed(raw: bytes | bytearray) -> Packet | None:
    try:
        packet = parse_packet(raw)
    except MalformedPacket as exc:
        assert not str(exc).startswith(SAFETY_NET_PREFIX), str(exc)
        return None
    assert packet.family in (4, 6)
    assert len(packet.src) == len(packet.dst) == (4 if packet.family == 4 else 16)
    assert 0 <= packet.src_port <= 0xFFFF and 0 <= packet.dst_port <= 0xFFFF
    assert parse_packet(memoryview(bytes(raw))) == packet
    return packet


@PROPERTY_SETTINGS
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_else(raw: bytes) -> None:
    assert_parses_or_is_malformed(raw)


@PROPERTY_SETTINGS
@given(st.sampled_from([0x45, 0x46, 0x4F, 0x40, 0x60, 0x61]), st.binary(max_size=160))
def test_random_bytes_behind_a_plausible_first_byte(first: int, rest: bytes) -> None:
    assert_parses_or_is_malformed(bytes([first]) + rest)


ipv4_addresses = st.ip_addresses(v=4).map(str)
ipv6_addresses = st.ip_addresses(v=6).map(str)
ports = st.integers(0, 0xFFFF)


@st.composite
def transports(draw: st.DrawFn, family: int) -> ScapyPacket:
    kind = draw(st.sampled_from(["tcp", "udp", "sctp", "icmp", "other"]))
    if kind == "tcp":
        return TCP(sport=draw(ports), dport=draw(ports), flags=draw(st.sampled_from(["S", "SA", "A", "R"])))
    if kind == "udp":
        return UDP(sport=draw(ports), dport=draw(ports))
    if kind == "sctp":
        return SCTP(sport=draw(ports), dport=draw(ports), tag=draw(st.integers(0, 2**32 - 1)))
    if kind == "icmp" and family == 4:
        return ICMP(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255)))
    if kind == "icmp":
        return draw(
            st.sampled_from(
                [ICMPv6EchoRequest(), ICMPv6EchoReply(), ICMPv6DestUnreach(code=draw(st.integers(0, 7))),
                 ICMPv6PacketTooBig(), ICMPv6TimeExceeded(code=draw(st.integers(0, 1)))]
            )
        )
    return Raw(draw(st.binary(min_size=0, max_size=40)))


other_protocols = st.sampled_from([2, 4, 41, 47, 50, 59, 88, 89, 103, 136, 253])


@st.composite
def ipv4_packets(draw: st.DrawFn) -> bytes:
    options = draw(
        st.lists(
            st.sampled_from(
                [IPOption_NOP(), IPOption_Router_Alert(), IPOption_RR(routers=["192.0.2.1"]),
                 IPOption_RR(routers=["192.0.2.1", "192.0.2.2", "192.0.2.3"])]
            ),
            max_size=2,  # at most 30 bytes: IPv4 options must fit in 40
        )
    )
    transport = draw(transports(4))
    ip = IP(src=draw(ipv4_addresses), dst=draw(ipv4_addresses), options=options,
            flags=draw(st.sampled_from(["", "DF", "MF"])), ttl=draw(st.integers(1, 255)))
    if isinstance(transport, Raw):
        ip.proto = draw(other_protocols)
    return bytes(ip / transport / Raw(draw(st.binary(max_size=300))))


def ipv6_extension_header(draw: st.DrawFn, next_header: int) -> ScapyPacket:
    kind = draw(st.sampled_from(["hop", "dest", "routing", "srh", "fragment", "ah"]))
    if kind == "hop":
        return IPv6ExtHdrHopByHop(nh=next_header)
    if kind == "dest":
        return IPv6ExtHdrDestOpt(nh=next_header)
    if kind == "routing":
        return IPv6ExtHdrRouting(nh=next_header, addresses=draw(st.lists(ipv6_addresses, max_size=3)))
    if kind == "srh":
        return IPv6ExtHdrSegmentRouting(nh=next_header, addresses=draw(st.lists(ipv6_addresses, min_size=1, max_size=2)))
    if kind == "fragment":
        return IPv6ExtHdrFragment(nh=next_header, m=draw(st.integers(0, 1)), offset=0, id=draw(st.integers(0, 2**32 - 1)))
    return ah(next_header)


@st.composite
def ipv6_packets(draw: st.DrawFn) -> bytes:
    transport = draw(transports(6))
    if isinstance(transport, Raw):
        protocol = draw(other_protocols)
    else:
        protocol = {TCP: 6, UDP: 17, SCTP: 132}.get(type(transport), 58)
    # Build the chain from the transport backwards so every header names the next one.
    chain: list[ScapyPacket] = []
    next_header = protocol
    for _ in range(draw(st.integers(0, 4))):
        header = ipv6_extension_header(draw, next_header)
        next_header = {IPv6ExtHdrHopByHop: 0, IPv6ExtHdrDestOpt: 60, IPv6ExtHdrRouting: 43,
                       IPv6ExtHdrSegmentRouting: 43, IPv6ExtHdrFragment: 44, AH: 51}[type(header)]
        chain.insert(0, header)
    packet = IPv6(src=draw(ipv6_addresses), dst=draw(ipv6_addresses), nh=next_header)
    for header in chain:
        packet = packet / header
    return bytes(packet / transport / Raw(draw(st.binary(max_size=300))))


valid_packets = st.one_of(ipv4_packets(), ipv6_packets())


@PROPERTY_SETTINGS
@given(valid_packets)
def test_valid_packets_match_scapy(raw: bytes) -> None:
    expected = scapy_fields(raw)
    assert expected != FRAGMENT
    assert parse_everywhere(raw) == expected


@PROPERTY_SETTINGS
@given(valid_packets)
def test_valid_packets_cut_to_the_copy_range_match_scapy_or_are_malformed(raw: bytes) -> None:
    cut = raw[:128]
    expected = scapy_fields(raw)
    try:
        packet = parse_packet(cut)
    except MalformedPacket as exc:
        # Only when the cut lands inside the headers: the full packet parses.
        assert not str(exc).startswith(SAFETY_NET_PREFIX)
        assert len(raw) > 128
        assert "header" in str(exc)
        return
    assert packet == expected


@PROPERTY_SETTINGS
@given(valid_packets, st.lists(st.tuples(st.integers(0, 199), st.integers(0, 255)), max_size=6), st.integers(0, 400))
def test_mutated_and_truncated_packets_never_raise_anything_else(
    raw: bytes, mutations: list[tuple[int, int]], length: int
) -> None:
    mutated = bytearray(raw)
    for position, value in mutations:
        if position < len(mutated):
            mutated[position] = value
    assert_parses_or_is_malformed(mutated[:length])


@PROPERTY_SETTINGS
@given(valid_packets, st.integers(0, 199))
def test_a_changed_address_byte_changes_only_the_address(raw: bytes, index: int) -> None:
    family_address_span = (12, 20) if raw[0] >> 4 == 4 else (8, 40)
    start, stop = family_address_span
    position = start + index % (stop - start)
    mutated = bytearray(raw)
    mutated[position] ^= 0xFF
    before, after = parse_packet(raw), parse_packet(bytes(mutated))
    assert after.src != before.src or after.dst != before.dst
    assert (after.protocol, after.src_port, after.dst_port) == (before.protocol, before.src_port, before.dst_port)
