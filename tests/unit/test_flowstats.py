"""The verdict loop's flow table: keys, fast path, retirement and totals."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt
from scapy.layers.sctp import SCTP

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api import Decision, NEXT, Verdict
from kube_netpol.engine import END_OF_PIPELINE, Judgement, Snapshot
from kube_netpol.engine import flows as flowstats
from kube_netpol.engine.flows import FlowHistory, Totals, flow_key, packet_flow_key, parsed_key, table_key
from kube_netpol.packet import parse_packet
from unit_standins import Queued, engine_of, touch


@pytest.mark.parametrize(
    "packet",
    [
        IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S"),
        IP(src="10.0.0.1", dst="10.0.0.2", flags="DF") / UDP(sport=40000, dport=53),
        IP(src="10.0.0.1", dst="10.0.0.2", flags="MF") / UDP(sport=40000, dport=53),  # a first fragment
        IP(src="10.0.0.1", dst="10.0.0.2") / SCTP(sport=40000, dport=9),
        IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=40000, dport=443, flags="S"),
        IPv6(src="fd00::1", dst="fd00::2", tc=0x20) / UDP(sport=40000, dport=53),
    ],
)
def test_raw_keys_of_common_first_packets_read_the_parsed_key(packet) -> None:
    raw = bytes(packet)
    parsed = parse_packet(raw)
    assert parsed_key(flow_key(raw)) == packet_flow_key(parsed)
    assert table_key(flow_key(raw), parsed) == flow_key(raw)  # kept under the raw key


@pytest.mark.parametrize(
    "packet",
    [
        IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / TCP(dport=80),  # options
        IP(src="10.0.0.1", dst="10.0.0.2", frag=10) / TCP(dport=80),  # not a first fragment
        IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(id=7, seq=9),  # the raw key reads ICMP's id as a port
        IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / TCP(dport=80),  # the port is further on
    ],
)
def test_other_packets_are_kept_under_their_parsed_key(packet) -> None:
    raw = bytes(packet)
    try:
        parsed = parse_packet(raw)
    except Exception:  # a later fragment: never judged, so never in the table
        assert parsed_key(flow_key(raw)) is None
        return
    assert parsed_key(flow_key(raw)) != packet_flow_key(parsed)
    assert table_key(flow_key(raw), parsed) == packet_flow_key(parsed)


def test_raw_keys_of_short_packets() -> None:
    assert flow_key(b"") is None and flow_key(b"\x45" * 10) is None and flow_key(b"\x60" * 30) is None


def test_packets_the_raw_key_misreads_are_parsed_every_time_and_share_an_entry() -> None:
    evaluator = Counting()
    engine = engine_of(evaluator)
    loop = VerdictLoop(engine, 100, fail_open=True)
    with_options = bytes(IP(src="10.0.0.1", dst="10.0.0.2", options=b"\x01\x01\x01\x00") / TCP(sport=1, dport=81))
    plain = syn(40000, 81)
    for payload in (with_options, with_options, plain, plain):
        queued = Queued(payload)
        loop.handle(queued)
        assert queued.verdicts == ["drop"]
    # The packets with options share their parsed-key entry; the plain ones have their raw-key entry,
    # judged once (the miss path looks a raw key up once, not also under the parsed key).
    assert evaluator.asked == 2
    flows = engine.snapshot.flows
    assert sorted(len(key) for key in flows) == [3, 5]  # a parsed-key entry and a raw-key entry
    by_length = {len(key): flow for key, flow in flows.items()}
    # Both packets with options were parsed (the second found the parsed-key entry); the second plain SYN was a hit.
    assert (by_length[3].judged, by_length[3].hits) == (2, 0) and (by_length[5].judged, by_length[5].hits) == (1, 1)
    assert engine.history.totals(flows).packets == {(6, 4, False): 4}


def test_a_cut_packet_gets_at_most_its_flow_keys_verdict() -> None:
    evaluator = Counting()
    loop = VerdictLoop(engine_of(evaluator), 100, fail_open=True)
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

    def evaluate_egress(self, packet, src, dst):
        return NEXT

    def evaluate_ingress(self, packet, src, dst):
        self.asked += 1
        return self.deny if packet.dst_port == 81 else NEXT


def snapshot_of(max_flows: int = 65536) -> tuple[Snapshot, FlowHistory]:
    """A snapshot with no stages and its flow history."""
    history = FlowHistory(max_flows=max_flows)
    return Snapshot(1, "", (), (), lambda ip: None, history), history


def syn(sport: int, dport: int) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=dport, flags="S"))


ACCEPT_ALL = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", END_OF_PIPELINE, "")


def add_flows(snapshot: Snapshot, ports: range) -> None:
    """An accepted TCP entry per port, each with one judged packet of 1.5 µs."""
    for port in ports:
        snapshot.add_flow((b"\x00" * 8, 6, port), ACCEPT_ALL, True, 6, 4).record(1500)


def test_repeated_flow_keys_skip_the_engine_until_verdicts_change() -> None:
    evaluator = Counting()
    engine = engine_of(evaluator)
    loop = VerdictLoop(engine, 100, fail_open=False)
    for sport in range(40000, 40010):  # ten new connections to one service
        queued = Queued(syn(sport, 81))
        loop.handle(queued)
        assert queued.verdicts == ["drop"]
    assert evaluator.asked == 1
    (flow,) = engine.snapshot.flows.values()
    assert (flow.judged, flow.hits) == (1, 9)  # the flow table answered after the first
    # A change publishes a new snapshot with a new table: the next packet is judged again.
    evaluator.deny = Decision(Verdict.ACCEPT, "x/allow", "ingress[0]")
    touch(engine)
    queued = Queued(syn(40011, 81))
    loop.handle(queued)
    assert queued.verdicts == ["accept"] and evaluator.asked == 2
    totals = engine.history.totals(engine.snapshot.flows)
    assert totals.packets == {(6, 4, False): 10, (6, 4, True): 1}
    assert totals.decisions[("ingress", "counting", "x/deny", "deny")] == 10
    assert totals.decisions[("ingress", "counting", "x/allow", "allow")] == 1
    assert sum(sum(b) for b in totals.buckets.values()) == 11


def test_audit_mode_accepts_and_counts_would_be_denials() -> None:
    engine = engine_of(Counting())
    loop = VerdictLoop(engine, 100, fail_open=False, audit=True)
    for sport in range(40000, 40003):
        queued = Queued(syn(sport, 81))
        loop.handle(queued)
        assert queued.verdicts == ["accept"]
    totals = engine.history.totals(engine.snapshot.flows)
    assert totals.packets == {(6, 4, True): 3} and totals.would_deny == {(6, 4): 3}


def test_full_tables_are_retired_and_nothing_is_lost(monkeypatch) -> None:
    monkeypatch.setattr(flowstats, "FOLD_AFTER_SECONDS", 0.0)
    snapshot, history = snapshot_of(max_flows=4)
    judgement = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", END_OF_PIPELINE, "")
    for port in range(1, 11):
        flow = snapshot.add_flow((b"\x00" * 8, 6, port), judgement, True, 6, 4)
        flow.record(1500)
    assert len(snapshot.flows) <= 4
    assert history.tables_filled == 2  # 4 + 4 + 2: what the agent flushes the kernel's verdict memory on
    first = history.totals(snapshot.flows)
    assert first.packets == {(6, 4, True): 10}
    assert first.buckets[(6, 4)][1] == 10  # 1.5 µs rounds up into the le=10 bucket
    time.sleep(0.01)
    again = history.totals(snapshot.flows)  # retired tables folded exactly once
    assert again.packets == {(6, 4, True): 10} and again.total_ns == {(6, 4): 15000}


def test_a_scrape_holding_a_table_folded_since_counts_it_once(monkeypatch) -> None:
    """A scrape reads the current table, the table fills and is retired and folded before the scrape sums it."""
    monkeypatch.setattr(flowstats, "FOLD_AFTER_SECONDS", 0.0)
    snapshot, history = snapshot_of(max_flows=4)
    add_flows(snapshot, range(1, 5))
    stale = snapshot.flows  # what the scrape read as current
    add_flows(snapshot, range(5, 6))  # full: retired
    history.fold_retired()
    # Its four packets once (not again as current); the newer table is not in its view, the next scrape's
    assert history.totals(stale).packets == {(6, 4, True): 4}
    assert history.totals(snapshot.flows).packets == {(6, 4, True): 5}


def test_a_table_retired_twice_counts_once() -> None:
    """A full table replaced by the packet thread while the control thread retires its snapshot."""
    snapshot, history = snapshot_of()
    add_flows(snapshot, range(1, 4))
    table = snapshot.flows
    history.retire(table)
    history.retire(table)
    assert history.totals({}).packets == {(6, 4, True): 3}


def test_a_table_that_fills_while_its_snapshot_is_retired_is_retired_too() -> None:
    """The packet thread replaces a full table just as the control thread retires its snapshot."""
    snapshot, history = snapshot_of(max_flows=4)
    add_flows(snapshot, range(1, 5))
    retire = history.retire

    def control_thread_interleaves(table):  # type: ignore[no-untyped-def]
        # The control thread publishes between the packet thread's check and its new table.
        history.retire = retire  # type: ignore[method-assign]
        snapshot.retired = True
        retire(snapshot.flows)
        retire(table)

    history.retire = control_thread_interleaves  # type: ignore[method-assign]
    add_flows(snapshot, range(5, 7))  # the first fills the table; both land in the new one
    assert len(snapshot.flows) == 2
    assert history.totals({}).packets == {(6, 4, True): 6}  # a scrape of the next snapshot's table


def test_a_scrape_between_two_snapshots_sees_the_old_ones_counts() -> None:
    """Publishing retires the old snapshot's table before the new snapshot is visible."""
    engine = engine_of(Counting())
    loop = VerdictLoop(engine, 100, fail_open=True)
    for i in range(5):
        loop.handle(Queued(syn(40000 + i, 80)))
    history = engine.history
    retire = history.retire
    seen: list[int] = []

    def scrape_then_retire(table):  # type: ignore[no-untyped-def]
        # A scrape the moment before the old table is retired, and the moment after.
        seen.append(sum(history.totals(engine.snapshot.flows).packets.values()))
        retire(table)
        seen.append(sum(history.totals(engine.snapshot.flows).packets.values()))

    history.retire = scrape_then_retire  # type: ignore[method-assign]
    touch(engine)
    seen.append(sum(history.totals(engine.snapshot.flows).packets.values()))  # and once the new one is current
    assert seen == [5, 5, 5]


def test_a_displaced_entry_keeps_its_counts() -> None:
    snapshot, history = snapshot_of()
    allow = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", END_OF_PIPELINE, "")
    key = (b"\x00" * 8, 17, 53)
    snapshot.add_flow(key, allow, True, 17, 4).record(1000)
    snapshot.add_flow(key, allow, True, 17, 4).record(1000)
    assert history.totals(snapshot.flows).packets == {(17, 4, True): 2}


def test_untimed_hits_count_with_the_timed_hit_before_them() -> None:
    allow = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", END_OF_PIPELINE, "")
    snapshot, stats = snapshot_of()
    flow = snapshot.add_flow((b"\x00" * 8, 6, 80), allow, True, 6, 4)
    flow.record(5_000)  # judged: 5 µs, le=10
    flow.hits += 3  # three untimed hits: no timed hit yet, so they count as the judged packet
    assert flow.snapshot() == (4, [0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 20_000)
    stats.record_timed_hit(flow, 300_000)  # a timed hit: 300 µs, le=500
    assert flow.snapshot() == (5, [0, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0], 320_000)
    flow.hits += 2
    flow.record(700)  # a judged packet after two untimed hits: they count as the last timed hit
    assert flow.snapshot() == (8, [1, 4, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0], 920_700)
    assert flow.packets == 8 and flow.judged == 2 and flow.hits == 6
    # A new flow's untimed hits count as the last timed hit of any flow, not as its judged packet.
    other = snapshot.add_flow((b"\x00" * 8, 6, 81), allow, True, 6, 4)
    other.record(9_000)
    other.hits += 2
    assert other.snapshot() == (3, [0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0], 609_000)


def test_the_loop_times_one_packet_in_timing_every(monkeypatch) -> None:
    from kube_netpol.agent import verdict_loop

    clock = iter(range(0, 10**9, 1_000))  # every reading 1 µs after the last
    monkeypatch.setattr(verdict_loop, "perf_counter_ns", lambda: next(clock))
    engine = engine_of(Counting())
    loop = VerdictLoop(engine, 100, fail_open=True)
    every = flowstats.TIMING_EVERY
    count = 2 * every + 3
    for sport in range(40000, 40000 + count):
        loop.handle(Queued(syn(sport, 80)))
    (flow,) = engine.snapshot.flows.values()
    assert flow.judged == 1 and flow.hits == count - 1
    # Timed: packets 0 (judged), every and 2 * every (hits, each standing for TIMING_EVERY hits).
    assert engine.history.recent_samples() == [(1_000, 1), (1_000, every), (1_000, every)]
    packets, buckets, total_ns = flow.snapshot()
    assert packets == count and sum(buckets) == count and total_ns == count * 1_000
    # A judged packet that is not due for timing is timed from the start of its parse.
    loop.handle(Queued(syn(40000, 82)))
    assert engine.history.recent_samples()[-1] == (1_000, 1)
    totals = engine.history.totals(engine.snapshot.flows)
    assert totals.packets == {(6, 4, True): count + 1} and sum(totals.buckets[(6, 4)]) == count + 1


def test_scrapes_see_every_histogram_bucket_grow_monotonically() -> None:
    import sys
    import threading

    evaluator = Counting()
    engine = engine_of(evaluator)
    loop = VerdictLoop(engine, 100, fail_open=True)
    payloads = [syn(40000 + i % 20000, 80 + i % 3) for i in range(20_000)]
    stop = threading.Event()
    seen: list[list[int]] = []

    def scrape() -> None:
        while not stop.is_set():
            buckets = engine.history.totals(engine.snapshot.flows).buckets.get((6, 4))
            if buckets:
                seen.append(list(buckets))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible to provoke races
    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for i, payload in enumerate(payloads):
            loop.handle(Queued(payload))
            if i % 2000 == 1999:
                touch(engine)  # retire the table now and then, as policy changes do
    finally:
        stop.set()
        scraper.join()
        sys.setswitchinterval(interval)
    assert len(seen) > 10
    for earlier, later in zip(seen, seen[1:]):
        assert all(b >= a for a, b in zip(earlier, later)), (earlier, later)


def test_a_grouped_fold_counts_what_entry_by_entry_sums_count() -> None:
    """add_all groups entries by their deciding decisions; every sum must equal the entry-by-entry one."""
    allow = Decision(Verdict.ACCEPT, "x/allow", "ingress[0]")
    deny = Decision(Verdict.DENY, "x/deny", "ingress[1]")
    judgements = [
        Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", allow, "networkpolicy"),
        Judgement(Verdict.DENY, END_OF_PIPELINE, "", deny, "networkpolicy"),
        Judgement(Verdict.DENY, deny, "adminnetworkpolicy", END_OF_PIPELINE, ""),
    ]
    snapshot, history = snapshot_of()
    flows = []
    for port in range(60):
        judgement = judgements[port % 3]
        accepted = judgement.allowed or port % 2 == 0  # audit-mode style accepts of denials too
        flow = snapshot.add_flow((b"\x00" * 8, 6 if port % 4 else 17, port), judgement, accepted, 6 if port % 4 else 17, 4)
        flow.record(1_000 * (1 + port))
        if port % 5 == 0:
            history.record_timed_hit(flow, 400_000)
        if port % 7 == 0:
            flow.hits += 3  # untimed hits still to credit
        flows.append(flow)
    expected = {"packets": {}, "buckets": {}, "total_ns": {}, "would_deny": {}, "decisions": {}}
    for flow in flows:  # the sums as one entry at a time gives them
        count, buckets, total_ns = flow.snapshot()
        key = (flow.protocol, flow.family)
        counted = (flow.protocol, flow.family, flow.accepted)
        expected["packets"][counted] = expected["packets"].get(counted, 0) + count
        expected["buckets"][key] = [a + b for a, b in zip(expected["buckets"].get(key, [0] * len(buckets)), buckets)]
        expected["total_ns"][key] = expected["total_ns"].get(key, 0) + total_ns
        if flow.accepted and not flow.judgement.allowed:
            expected["would_deny"][key] = expected["would_deny"].get(key, 0) + count
        for direction, decision, by in (("egress", flow.judgement.egress, flow.judgement.egress_by),
                                        ("ingress", flow.judgement.ingress, flow.judgement.ingress_by)):
            label = (direction, by or "(none)", decision.policy or "(none)",
                     "allow" if decision.verdict is Verdict.ACCEPT else "deny")
            expected["decisions"][label] = expected["decisions"].get(label, 0) + count
    for settled in (False, True):
        totals = Totals()
        totals.add_all(flows, settled=settled)
        assert totals.entries == 60
        for name, value in expected.items():
            assert getattr(totals, name) == value, (settled, name)
    one_by_one = Totals()
    for flow in flows:
        one_by_one.add(flow)
    assert one_by_one.decisions == expected["decisions"] and one_by_one.buckets == expected["buckets"]


def test_retired_tables_are_folded_without_a_scrape(monkeypatch) -> None:
    """fold_retired (the control loop calls it) empties the retired list: memory stays bounded under new keys."""
    monkeypatch.setattr(flowstats, "FOLD_AFTER_SECONDS", 0.0)
    snapshot, history = snapshot_of(max_flows=4)
    add_flows(snapshot, range(1, 15))
    assert len(history._retired) == 3
    history.fold_retired()
    assert history._retired == []
    assert history.totals(snapshot.flows).packets == {(6, 4, True): 14}  # folded once, nothing lost
