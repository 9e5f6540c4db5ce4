"""Send a flood of malformed and odd packets with scapy raw sockets; run inside a pod's namespace.

    python e2e_malformed_flood.py SRC4 DST4 SRC6 DST6 COPIES

scapy builds the bytes; raw IP sockets send them as they are (IPPROTO_RAW:
the header is ours; the kernel fills in only the IPv4 checksum and total
length) through the pod's default route to the node, like any other packet.
Prints how many packets it sent.
"""

from __future__ import annotations

import socket
import sys

from scapy.all import (  # type: ignore[import-untyped]
    ICMP,
    IP,
    TCP,
    UDP,
    IPOption_NOP,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    Raw,
    raw,
)


def ipv4_packets(src: str, dst: str) -> list[object]:
    base = IP(src=src, dst=dst)
    packets = [
        # Protocols with no ports, rare or unassigned numbers.
        *(IP(src=src, dst=dst, proto=proto) / Raw(b"kube-netpol" * 3) for proto in (0, 2, 4, 41, 47, 50, 51, 89, 103, 253, 255)),
        # Transport headers cut short: fewer bytes than TCP (20), UDP (8), SCTP (12), ICMP (8) need.
        *(IP(src=src, dst=dst, proto=proto) / Raw(b"\x00\x50\x00\x50"[:size]) for proto in (6, 17, 132, 1) for size in (0, 1, 3)),
        IP(src=src, dst=dst, proto=6) / Raw(b"\x00\x50\x00\x50" + b"\x00" * 10),
        # TCP data offset below 5 and beyond the packet.
        base / TCP(dport=80, flags="S", dataofs=2),
        base / TCP(dport=80, flags="S", dataofs=15),
        # Nonsense flag combinations.
        base / TCP(dport=80, flags="FSRPAUEC"),
        base / TCP(dport=80, flags=""),
        # IPv4 options (legal NOPs) before the transport header.
        IP(src=src, dst=dst, options=[IPOption_NOP()] * 40) / TCP(dport=80, flags="S"),
        # Fragments: a non-first fragment alone, and a first fragment whose transport header is cut.
        IP(src=src, dst=dst, proto=6, frag=185) / Raw(b"x" * 16),
        IP(src=src, dst=dst, proto=6, flags="MF") / Raw(b"\x00\x50"),
        # UDP length field lying about the payload, and ICMP of unknown types.
        base / UDP(dport=80, len=4000) / Raw(b"x"),
        base / ICMP(type=200, code=99),
    ]
    return packets


def ipv6_packets(src: str, dst: str) -> list[object]:
    base = IPv6(src=src, dst=dst)
    tcp = TCP(dport=80, flags="S")
    long_chain = IPv6ExtHdrHopByHop()
    for _ in range(6):
        long_chain = long_chain / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting()
    return [
        # Extension header chains: long, ending in "no next header", unknown, and cut short.
        base / long_chain / tcp,
        base / IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt(nh=59),
        base / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt(nh=253) / Raw(b"x" * 8),
        IPv6(src=src, dst=dst, nh=0) / Raw(b"\x06\x05"),  # hop-by-hop claiming 48 bytes, 2 present
        IPv6(src=src, dst=dst, nh=60) / Raw(b"\x06\x00" + b"\x00" * 6 + b"\x00\x50"),  # TCP cut after a header
        # A fragment header: first fragment with a cut TCP header, and a non-first fragment.
        base / IPv6ExtHdrFragment(nh=6, m=1, id=7) / Raw(b"\x00\x50\x00\x50"),
        base / IPv6ExtHdrFragment(nh=6, offset=100, id=8) / Raw(b"x" * 16),
        # Protocols without ports, and transport headers cut short.
        *(IPv6(src=src, dst=dst, nh=nh) / Raw(b"kube-netpol") for nh in (0, 41, 50, 51, 59, 135, 253)),
        *(IPv6(src=src, dst=dst, nh=nh) / Raw(b"\x00\x50\x00"[:size]) for nh in (6, 17, 132, 58) for size in (0, 3)),
        base / TCP(dport=80, flags="S", dataofs=3),
    ]


def main(argv: list[str]) -> int:
    src4, dst4, src6, dst6, copies = argv[1], argv[2], argv[3], argv[4], int(argv[5])
    batches = [
        (socket.AF_INET, dst4, [raw(p) for p in ipv4_packets(src4, dst4)]),
        (socket.AF_INET6, dst6, [raw(p) for p in ipv6_packets(src6, dst6)]),
    ]
    sent = 0
    for family, dst, packets in batches:
        with socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_RAW) as sock:
            for _ in range(copies):
                for packet in packets:
                    sock.sendto(packet, (dst, 0))
                    sent += 1
    print(sent)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
