"""Time parse_packet on typical first packets of connections; prints ns per packet.

Run from the repository root: ``python bench/bench_parser.py [--number N] [--repeat R]``.
The packets are built by hand with struct (no scapy needed) and are what a
connection's first packet looks like: a TCP SYN with the usual options. The
"Packet() only" line is the floor: the cost of building the result object.
"""

from __future__ import annotations

import argparse
import socket
import struct
import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kube_netpol.api.packet import Packet  # noqa: E402
from kube_netpol.packet import parse_packet  # noqa: E402

# MSS, SACK permitted, timestamps, NOP, window scale: what Linux puts in a SYN.
_SYN_OPTIONS = bytes.fromhex("020405b40402080a0001e24000000000" "01030307")


def _tcp_syn(src_port: int, dst_port: int) -> bytes:
    data_offset = (20 + len(_SYN_OPTIONS)) // 4
    return struct.pack("!HHIIBBHHH", src_port, dst_port, 1, 0, data_offset << 4, 0x02, 64240, 0, 0) + _SYN_OPTIONS


def ipv4_tcp_syn() -> bytes:
    tcp = _tcp_syn(40000, 8080)
    header = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
        socket.inet_pton(socket.AF_INET, "10.244.1.5"), socket.inet_pton(socket.AF_INET, "10.244.2.7"),
    )
    return header + tcp


def ipv6_tcp_syn() -> bytes:
    tcp = _tcp_syn(40000, 8080)
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(tcp), 6, 64,
        socket.inet_pton(socket.AF_INET6, "fd00:10:244:1::5"), socket.inet_pton(socket.AF_INET6, "fd00:10:244:2::7"),
    )
    return header + tcp


def ipv6_hop_by_hop_dest_opts_tcp_syn() -> bytes:
    """A SYN behind two extension headers: the slower extension-header walk."""
    tcp = _tcp_syn(40000, 8080)
    hop_by_hop = bytes([60, 0, 1, 4, 0, 0, 0, 0])  # next: destination options; PadN
    dest_opts = bytes([6, 0, 1, 4, 0, 0, 0, 0])  # next: TCP; PadN
    payload = hop_by_hop + dest_opts + tcp
    header = struct.pack(
        "!IHBB16s16s", 6 << 28, len(payload), 0, 64,
        socket.inet_pton(socket.AF_INET6, "fd00:10:244:1::5"), socket.inet_pton(socket.AF_INET6, "fd00:10:244:2::7"),
    )
    return header + payload


def _ns_per_call(stmt, number: int, repeat: int) -> float:
    return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=500_000, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=7, help="timing runs; the best one counts")
    args = parser.parse_args()

    cases = {
        "IPv4 TCP SYN": ipv4_tcp_syn(),
        "IPv6 TCP SYN": ipv6_tcp_syn(),
        "IPv6 hop-by-hop+dstopts TCP SYN": ipv6_hop_by_hop_dest_opts_tcp_syn(),
    }
    print(f"Python {sys.version.split()[0]}, best of {args.repeat} x {args.number} calls")
    src, dst = bytes(4), bytes(4)
    floor = _ns_per_call(lambda: Packet(4, 6, src, dst, 40000, 8080), args.number, args.repeat)
    print(f"{'Packet() only':34s} {floor:7.0f} ns")
    for name, raw in cases.items():
        parsed = parse_packet(raw)
        assert (parsed.src_port, parsed.dst_port, parsed.protocol) == (40000, 8080, 6), parsed
        for kind, buf in (("bytes", raw), ("memoryview", memoryview(raw))):
            ns = _ns_per_call(lambda buf=buf: parse_packet(buf), args.number, args.repeat)
            print(f"{name + ' (' + kind + ')':34s} {ns:7.0f} ns  ({1e9 / ns / 1e6:.2f} M packets/s)")


if __name__ == "__main__":
    main()
