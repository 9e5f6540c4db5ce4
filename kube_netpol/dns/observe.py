"""One IP packet carrying a DNS answer to a pod -> what that pod learns (``DnsCache``).

The verdict loop calls ``observe`` for the answers the ruleset queues
(UDP from port 53, replies of connections conntrack already accepted, to
managed pods); the offline conformance harness calls it with the answer the
dataplane would have delivered. Either way the packet itself is accepted by
the caller after this returns: the answer is held until the cache has it.
"""

from __future__ import annotations

import struct
from typing import Callable, Final

from kube_netpol.api.cluster import PodRecord
from kube_netpol.dns.cache import DnsCache
from kube_netpol.dns.message import DnsError, parse_answer

DNS_PORT: Final = 53
_UDP: Final = 17
_unpack_udp: Final = struct.Struct("!HHH").unpack_from


def udp_payload(packet: bytes | memoryview) -> tuple[bytes, bytes, bytes]:
    """(source address, destination address, UDP payload) of a UDP datagram from port 53; DnsError otherwise."""
    data = bytes(packet)
    if not data:
        raise DnsError("empty packet")
    version = data[0] >> 4
    if version == 4:
        header = (data[0] & 0xF) * 4
        if header < 20 or len(data) < header + 8:
            raise DnsError("IPv4 packet cut short")
        if data[9] != _UDP:
            raise DnsError("not UDP")
        if struct.unpack_from("!H", data, 6)[0] & 0x3FFF:
            raise DnsError("IPv4 fragment")
        src, dst = data[12:16], data[16:20]
    elif version == 6:
        header = 40
        if len(data) < header + 8:
            raise DnsError("IPv6 packet cut short")
        if data[6] != _UDP:
            raise DnsError("not UDP right after the IPv6 header")  # extension headers: not learnt from
        src, dst = data[8:24], data[24:40]
    else:
        raise DnsError(f"IP version {version}")
    sport, _, length = _unpack_udp(data, header)
    if sport != DNS_PORT:
        raise DnsError(f"UDP source port {sport}, not 53")
    if length < 8:
        raise DnsError("UDP length shorter than its header")
    return src, dst, data[header + 8:header + length]


def observe(cache: DnsCache, packet: bytes | memoryview, pod_by_ip: Callable[[bytes], PodRecord | None],
            now: float | None = None) -> int:
    """Learn from the DNS answer in ``packet`` for the pod it is going to; the entries learnt.

    DnsError when the packet is not a usable answer, or goes to no pod.
    """
    _, dst, message = udp_payload(packet)
    pod = pod_by_ip(dst)
    if pod is None:
        raise DnsError("answer to an address that is no pod")
    answer = parse_answer(message)
    learnt = 0
    for name, records in answer.addresses:
        learnt += cache.learn(pod.key, name, records, now)
    return learnt
