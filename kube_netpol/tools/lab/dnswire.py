"""DNS messages as bytes, for the lab's probes and the offline harness (never the agent's path).

``query`` is what a stub resolver sends; ``response`` what a server answers
to it (uncompressed names, one RRset). The agent's own parser
(kube_netpol.dns.message) reads them like any server's answer.
"""

from __future__ import annotations

import ipaddress
import struct

TYPE_A = 1
TYPE_AAAA = 28


def encode_name(name: str) -> bytes:
    out = b""
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii")
        if not 0 < len(raw) < 64:
            raise ValueError(f"bad label {label!r} in {name!r}")
        out += bytes([len(raw)]) + raw
    return out + b"\x00"


def query(name: str, qtype: int, ident: int) -> bytes:
    """A recursive standard query for ``name``/``qtype``."""
    return struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack("!HH", qtype, 1)


def response(message: bytes, addresses: list[str], ttl: int) -> bytes:
    """The answer to the query ``message``: its question, and one record per address of the asked type."""
    ident, _, _, _, _, _ = struct.unpack_from("!HHHHHH", message)
    question = message[12:]
    end = question.index(b"\x00") + 1 + 4
    question = question[:end]
    qtype = struct.unpack_from("!H", question, end - 4)[0]
    records = b""
    count = 0
    for text in addresses:
        ip = ipaddress.ip_address(text)
        if (ip.version == 4) != (qtype == TYPE_A):
            continue
        records += b"\xc0\x0c" + struct.pack("!HHIH", qtype, 1, ttl, len(ip.packed)) + ip.packed
        count += 1
    return struct.pack("!HHHHHH", ident, 0x8180, 1, count, 0, 0) + question + records


def udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 or IPv6 UDP datagram carrying ``payload`` (checksums left 0: the agent does not read them)."""
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    if s.version == 4:
        header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0x4000, 64, 17, 0, s.packed, d.packed)
        return header + udp
    return struct.pack("!IHBB16s16s", 6 << 28, len(udp), 17, 64, s.packed, d.packed) + udp
