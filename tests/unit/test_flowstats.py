"""The verdict loop's flow table: keys, fast path, retirement and totals."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.sctp import SCTP

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api import Decision, ManagedIPs, NEXT, Verdict
from kube_netpol.engine import END_OF_PIPELINE, Judgement, PolicyEngine
from kube_netpol.observability import flowstats
from kube_netpol.observability.flowstats import VerdictStats, flow_key, packet_flow_key
from kube_netpol.packet import parse_packet


@pytest.mark.parametrize(
    "packet",
    [
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S"),
        IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=40000, dport=53),
        IP(src="10.0.0.1", dst="10.0.0.2") / SCTP(sport=40000, dport=9),
        IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=40000, dport=443, flags="S"),
        IPv6(src="fd00::1", dst="fd00::2") / UDP(sport=40000, dport=53),
    ],
)
def test_fast_keys_equal_the_parsed_packets_keys(packet) -> None:
    raw = bytes(packet)
    assert flow_key(raw) == packet_flow_key(parse_packet(raw))


@pytest.mark.parametrize(
    "packet",
    [
        IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / TCP(dport=80),  # options: full parse
        IP(src="10.0.0.1", dst="10.0.0.2", frag=10) / TCP(dport=80),  # not a first fragment
    ],
)
def test_other_packets_take_the_full_path(packet) -> None:
    assert flow_key(bytes(packet)) is None


def test_shortcut_keys_of_other_protocols_never_meet_a_table_entry() -> None:
    # The shortcut reads ICMP's id/sequence as a port; the full path keys ICMP with
    # port 0, so such a key finds nothing and the packet is parsed and judged.
    raw = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(id=7, seq=9))
    assert flow_key(raw) != packet_flow_key(parse_packet(raw))
    raw6 = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / TCP(dport=80))
    assert flow_key(raw6) != packet_flow_key(parse_packet(raw6))


def test_a_cut_packet_gets_at_most_its_flow_keys_verdict() -> None:
    evaluator = Counting()
    loop = VerdictLoop(PolicyEngine(NoPods(), [evaluator]), 100, fail_open=True)
    whole = syn(40000, 81)
    loop.handle(Queued(whole))  # judged: denied
    cut = Queued(whole[:30])  # the same flow key, TCP header cut short
    loop.handle(cut)
    assert cut.verdicts == ["drop"]  # the flow's verdict, not the fail-open accept
    unknown = Queued(syn(40000, 82)[:30])  # a cut packet of a key nobody judged
    loop.handle(unknown)
    assert unknown.verdicts == ["accept"] and loop.counters.errors == 1  # parsed, failed, fail-open


class Counting:
    """Denies ingress to port 81, counts how often it is asked."""

    name = "counting"

    def __init__(self) -> None:
        self.asked = 0
        self.deny = Decision(Verdict.DENY, "x/deny", "ingress[0]")
        self.sync = None

    def ready(self) -> bool:
        return True

    def evaluate_egress(self, packet, src, dst):
        return NEXT

    def evaluate_ingress(self, packet, src, dst):
        self.asked += 1
        return self.deny if packet.dst_port == 81 else NEXT

    def managed_ips(self):
        return ManagedIPs()

    def set_sync_callback(self, callback) -> None:
        self.sync = callback


class NoPods:
    def pod_info_by_ip(self, ip):
        return None


class Queued:
    def __init__(self, payload: bytes) -> None:
        self.payload, self.verdicts = payload, []

    def get_payload(self) -> bytes:
        return self.payload

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


def syn(sport: int, dport: int) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=dport, flags="S"))


def test_repeated_flow_keys_skip_the_engine_until_verdicts_change() -> None:
    evaluator = Counting()
    engine = PolicyEngine(NoPods(), [evaluator])
    loop = VerdictLoop(engine, 100, fail_open=False)
    for sport in range(40000, 40010):  # ten new connections to one service
        queued = Queued(syn(sport, 81))
        loop.handle(queued)
        assert queued.verdicts == ["drop"]
    assert evaluator.asked == 1
    assert engine.cache_misses == 1 and engine.cache_hits == 0  # the flow table answered first
    # A policy change retires the table: the next packet is judged again.
    evaluator.deny = Decision(Verdict.ACCEPT, "x/allow", "ingress[0]")
    evaluator.sync()
    queued = Queued(syn(40011, 81))
    loop.handle(queued)
    assert queued.verdicts == ["accept"] and evaluator.asked == 2
    totals = loop.stats.totals()
    assert totals.packets == {(6, 4, False): 10, (6, 4, True): 1}
    assert totals.decisions[("ingress", "counting", "x/deny", "deny")] == 10
    assert totals.decisions[("ingress", "counting", "x/allow", "allow")] == 1
    assert sum(sum(b) for b in totals.buckets.values()) == 11


def test_audit_mode_accepts_and_counts_would_be_denials() -> None:
    loop = VerdictLoop(PolicyEngine(NoPods(), [Counting()]), 100, fail_open=False, audit=True)
    for sport in range(40000, 40003):
        queued = Queued(syn(sport, 81))
        loop.handle(queued)
        assert queued.verdicts == ["accept"]
    totals = loop.stats.totals()
    assert totals.packets == {(6, 4, True): 3} and totals.would_deny == {(6, 4): 3}


def test_full_tables_are_retired_and_nothing_is_lost(monkeypatch) -> None:
    monkeypatch.setattr(flowstats, "FOLD_AFTER_SECONDS", 0.0)
    stats = VerdictStats(max_flows=4)
    judgement = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", END_OF_PIPELINE, "")
    for port in range(1, 11):
        flow = stats.add((b"\x00" * 8, 6, port), judgement, True, 6, 4)
        flow.record(1500)
    assert len(stats.flows) <= 4
    first = stats.totals()
    assert first.packets == {(6, 4, True): 10}
    assert first.buckets[(6, 4)][1] == 10  # 1.5 µs rounds up into the le=10 bucket
    time.sleep(0.01)
    again = stats.totals()  # retired tables folded exactly once
    assert again.packets == {(6, 4, True): 10} and again.total_ns == {(6, 4): 15000}


def test_a_displaced_entry_keeps_its_counts() -> None:
    stats = VerdictStats()
    allow = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", END_OF_PIPELINE, "")
    key = (b"\x00" * 8, 17, 53)
    stats.add(key, allow, True, 17, 4).record(1000)
    stats.add(key, allow, True, 17, 4).record(1000)
    assert stats.totals().packets == {(17, 4, True): 2}
