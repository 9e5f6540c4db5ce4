"""The verdict callback's cost for a DNS answer (parse, learn, accept) against a new connection judged.

In process, no kernel: ``VerdictLoop.handle`` with stand-in queued packets,
as bench_verdict_loop.py does. Rows: a DNS answer with one A record, one
with 8 A records and a CNAME, a new TCP connection's first packet judged by
an engine with one ClusterNetworkPolicy allowlist (flow-table miss), and
the same connection's repeat (flow-table hit). Median of ``--repeat`` runs
of ``--count`` packets each, in microseconds per packet.

    python bench/bench_dns_observation.py [--count 20000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import statistics
import struct
import time

from scapy.layers.inet import IP, TCP

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.dataplane.ruleset import DNS_ANSWER_MARK
from kube_netpol.plugins import build_engine
from kube_netpol.tools.lab.dnswire import TYPE_A, encode_name, query, response, udp_packet

POD = "10.244.1.10"


class Queued:
    hook = 4
    __slots__ = ("payload", "mark")

    def __init__(self, payload: bytes, mark: int) -> None:
        self.payload, self.mark = payload, mark

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def accept(self) -> None:
        pass

    def drop(self) -> None:
        pass


def engine():
    engine = build_engine(("clusternetworkpolicy-admin", "networkpolicy", "clusternetworkpolicy-baseline"))
    state = engine.state
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}})
    state.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": "a"},
                 "spec": {"containers": [{"name": "c"}]}, "status": {"podIPs": [{"ip": POD}]}})
    state.apply({"apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy",
                 "metadata": {"name": "allow"}, "spec": {"tier": "Admin", "priority": 1,
                 "subject": {"namespaces": {"matchLabels": {"ns": "x"}}}, "egress": [
                     {"name": "names", "action": "Accept", "to": [{"domainNames": ["*.example.com"]}]},
                     {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]}})  # fmt: skip
    engine.publish()
    return engine


def cname_answer() -> bytes:
    base = query("www.example.com", TYPE_A, 7)
    head = struct.pack("!HHHHHH", 7, 0x8180, 1, 9, 0, 0)
    records = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 300, len(encode_name("lb.cdn.example.net"))) + encode_name("lb.cdn.example.net")
    for i in range(8):
        records += encode_name("lb.cdn.example.net") + struct.pack("!HHIH", 1, 1, 300, 4) + bytes([192, 168, 200, 20 + i])
    return head + base[12:] + records


def per_packet(loop: VerdictLoop, packets: list[Queued]) -> float:
    started = time.perf_counter_ns()
    for packet in packets:
        loop.handle(packet)
    return (time.perf_counter_ns() - started) / len(packets) / 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    one = udp_packet("10.96.0.10", POD, 53, 40000, response(query("api.example.com", TYPE_A, 1), ["192.168.200.20"], 300))
    nine = udp_packet("10.96.0.10", POD, 53, 40000, cname_answer())
    for _ in range(args.repeat):
        e = engine()
        loop = VerdictLoop(e, 100, fail_open=True, observe_dns=True)
        rows.setdefault("DNS answer, 1 A record", []).append(per_packet(loop, [Queued(one, DNS_ANSWER_MARK)] * args.count))
        rows.setdefault("DNS answer, CNAME + 8 A records", []).append(
            per_packet(loop, [Queued(nine, DNS_ANSWER_MARK)] * args.count))
        syns = [Queued(bytes(IP(src=POD, dst=str(ipaddress.ip_address("192.168.0.0") + i)) / TCP(sport=40000, dport=443,
                                                                                                 flags="S")), 0)
                for i in range(args.count)]
        rows.setdefault("new connection judged (miss), names consulted", []).append(per_packet(loop, syns))
        hit = Queued(bytes(IP(src=POD, dst="192.168.200.20") / TCP(sport=40000, dport=80, flags="S")), 0)
        rows.setdefault("repeat of a cached accept (hit)", []).append(per_packet(loop, [hit] * args.count))
    print(f"load: {os.getloadavg()[0]:.2f} (1-minute), {args.count} packets x {args.repeat} runs, median µs/packet")
    print("| packet | µs per packet |\n|---|---|")
    for name, values in rows.items():
        print(f"| {name} | {statistics.median(values):.2f} |")


if __name__ == "__main__":
    main()
