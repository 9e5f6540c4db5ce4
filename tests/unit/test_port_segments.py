"""The port-segment memo of the verdict loop (Snapshot.segments / judged): a judgement made for one port
of a segment must be the judgement of every port of it, for every policy kind the corpus has."""

from __future__ import annotations

import bisect
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api.packet import Packet
from kube_netpol.engine.flows import segment_key, unpack_raw_v4, unpack_raw_v6
from kube_netpol.engine.snapshot import Snapshot, port_segments
from kube_netpol.plugins import build_engine
from kube_netpol.tools.conformance.offline import create_backend, packet_of
from kube_netpol.tools.conformance.plan import ScenarioPlan
from kube_netpol.tools.conformance.runner import prepare
from unit_standins import Queued

ROOT = Path(__file__).resolve().parents[2]
CORPUS = [ROOT / "tests" / "conformance", ROOT.parent / "shared" / "conformance" / "examples"]


def _plans() -> list[ScenarioPlan]:
    planned, _ = prepare([path for path in CORPUS if path.exists()])
    return [plan for plan in planned if isinstance(plan, ScenarioPlan) and not plan.setup.cluster.networks]


def _same(a: object, b: object) -> bool:
    return (a.verdict, a.egress, a.egress_by, a.ingress, a.ingress_by, a.lifetime) == (  # type: ignore[attr-defined]
        b.verdict, b.egress, b.egress_by, b.ingress, b.ingress_by, b.lifetime)  # type: ignore[attr-defined]


def test_every_port_of_a_segment_is_judged_alike_across_the_corpus() -> None:
    checked = 0
    plans = _plans()
    assert len(plans) > 200  # the whole corpus, not a part of it
    for plan in plans:
        backend = create_backend(plan.setup)
        backend.apply(plan.setup_change)
        for step in plan.steps:
            backend.apply(step.change)
            snapshot = backend.engine.snapshot
            for n, probe in enumerate(p for s in step.probe_sets for p in s.probes):
                if probe.network or probe.resolve:
                    continue
                packet = packet_of(probe, n)
                bounds = snapshot.segments.get(packet.protocol)
                if bounds is None:
                    continue
                at = bisect.bisect_right(bounds, packet.dst_port)
                low = bounds[at - 1] if at else 0
                high = (bounds[at] - 1) if at < len(bounds) else 65535
                judgement = snapshot.judge(packet)
                for port in {low, high, (low + high) // 2}:
                    other = snapshot.judge(Packet(packet.family, packet.protocol, packet.src, packet.dst,
                                                  packet.src_port, port))
                    assert _same(judgement, other), (plan.scenario.name, step.name, probe, port, bounds)
                    checked += 1
    assert checked > 10_000


def _engine(*objects: dict) -> object:
    engine = build_engine()
    for ns in ("x", "y"):
        engine.state.apply({"apiVersion": "v1", "kind": "Namespace",
                            "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}})
    for ns, name, ip in (("x", "client", "10.0.0.1"), ("y", "server", "10.0.0.2")):
        engine.state.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name,
                            "labels": {"app": name}}, "status": {"podIPs": [{"ip": ip}, {"ip": f"fd00::{ip[-1]}"}]},
                            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]}})
    for obj in objects:
        engine.state.apply(obj)
    engine.publish()
    return engine


def _np(ports: list[dict]) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": "y", "name": "web"},
            "spec": {"podSelector": {"matchLabels": {"app": "server"}},
                     "ingress": [{"from": [{"namespaceSelector": {}}], "ports": ports}]}}


def test_bounds_follow_the_rules_ports_and_named_ports_turn_a_protocol_off() -> None:
    snapshot = _engine(_np([{"protocol": "TCP", "port": 80}, {"protocol": "UDP", "port": 5000, "endPort": 5010}])).snapshot
    assert snapshot.segments == {6: (80, 81), 17: (5000, 5011), 132: ()}
    named = _engine(_np([{"protocol": "TCP", "port": "http"}, {"protocol": "UDP", "port": 53}])).snapshot
    assert 6 not in named.segments and named.segments[17] == (53, 54)


def test_a_plugin_stage_without_port_bounds_turns_the_memo_off() -> None:
    class Plugin:
        def evaluate_egress(self, packet, src, dst):  # type: ignore[no-untyped-def]
            raise AssertionError("not called")

        evaluate_ingress = evaluate_egress

    assert port_segments([Plugin()]) == {}  # type: ignore[list-item]


def _syn(dport: int, v6: bool = False, sport: int = 40000) -> bytes:
    if v6:
        return bytes(IPv6(src="fd00::1", dst="fd00::2") / TCP(sport=sport, dport=dport, flags="S"))
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=sport, dport=dport, flags="S"))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_new_keys_of_a_judged_segment_skip_the_pipeline_and_get_its_verdict(v6: bool, monkeypatch) -> None:
    engine = _engine(_np([{"protocol": "TCP", "port": 80}]))
    snapshot = engine.snapshot
    judged: list[int] = []
    real = Snapshot.judge
    monkeypatch.setattr(Snapshot, "judge", lambda self, packet: judged.append(packet.dst_port) or real(self, packet))
    loop = VerdictLoop(engine, 100, fail_open=True)
    verdicts = {}
    for port in (1000, 1001, 2000, 80, 79, 81, 65535):
        queued = Queued(_syn(port, v6))
        loop.handle(queued)
        verdicts[port] = queued.verdicts
    # One judgement per segment: [81, 65535] (1000 first), [80], [0, 79]; the rest from the memo.
    assert judged == [1000, 80, 79]
    assert verdicts[80] == ["accept"] and all(verdicts[p] == ["drop"] for p in (1000, 1001, 2000, 79, 81, 65535))
    assert len(snapshot.flows) == 7  # every key is in the flow table ...
    # ... and the new keys of a segment share the entry judged for it, counted together
    entries = {id(flow): flow for flow in snapshot.flows.values()}
    assert sorted(flow.keys for flow in entries.values()) == [1, 1, 5]
    assert snapshot.flows[unpack_raw_v6(_syn(65535, v6)) if v6 else unpack_raw_v4(_syn(65535))].packets == 5
    assert loop.counters.segment_answers == 4
    totals = engine.history.totals(snapshot.flows)
    assert totals.entries == 7 and sum(totals.packets.values()) == 7


def test_shared_entries_stay_in_their_table_and_every_packet_counts_once(monkeypatch) -> None:
    """Full tables are replaced under a flood of new keys of one segment; the memo starts again with each."""
    from kube_netpol.engine import flows as flowstats

    monkeypatch.setattr(flowstats, "FOLD_AFTER_SECONDS", 0.0)
    engine = _engine(_np([{"protocol": "TCP", "port": 80}]))
    engine.history.max_flows = 4
    snapshot = engine.snapshot
    loop = VerdictLoop(engine, 100, fail_open=True)
    tables = []
    for port in range(1000, 1010):
        for _ in range(2):  # a new key, then a hit on it
            queued = Queued(_syn(port))
            loop.handle(queued)
            assert queued.verdicts == ["drop"]
        if not tables or tables[-1] is not snapshot.flows:
            tables.append(snapshot.flows)
        assert all(flow in snapshot.flows.values() for flow in snapshot.judged.values())
    assert engine.history.tables_filled == 2 and [len(table) for table in tables] == [4, 4, 2]
    owners = [{id(flow) for flow in table.values()} for table in tables]
    assert all(not a & b for a in owners for b in owners if a is not b)  # no entry in two tables
    totals = engine.history.totals(snapshot.flows)
    assert sum(totals.packets.values()) == 20 and totals.entries == 10
    assert loop.counters.segment_answers == 7  # each table's first key is judged
    engine.history.fold_retired()
    again = engine.history.totals(snapshot.flows)
    assert sum(again.packets.values()) == 20 and again.entries == 10


def test_the_memo_is_not_used_for_fragments_or_extension_headers() -> None:
    whole = _syn(1000)
    raw = unpack_raw_v4(whole)
    segments = {6: (80, 81)}
    assert segment_key(raw, segments) == (raw[3], 6, 2)  # 1000: after both bounds
    fragment = bytes(IP(src="10.0.0.1", dst="10.0.0.2", frag=3, flags=0) / UDP(sport=1, dport=1000))
    assert segment_key(unpack_raw_v4(fragment), {17: ()}) is None
    from scapy.layers.inet6 import IPv6ExtHdrDestOpt

    with_header = bytes(IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrDestOpt() / TCP(dport=1000))
    assert segment_key(unpack_raw_v6(with_header), segments) is None  # next header is not the transport
    plain6 = _syn(1000, v6=True)
    assert segment_key(unpack_raw_v6(plain6), segments) is not None
    assert segment_key(unpack_raw_v4(whole), {17: ()}) is None  # a protocol without segments


def test_a_policy_change_starts_an_empty_memo() -> None:
    engine = _engine(_np([{"protocol": "TCP", "port": 80}]))
    loop = VerdictLoop(engine, 100, fail_open=True)
    first = Queued(_syn(1000))
    loop.handle(first)
    assert first.verdicts == ["drop"] and engine.snapshot.judged
    engine.state.apply(replace_ports(_np([{"protocol": "TCP", "port": 80}]), [{"protocol": "TCP", "port": 1000, "endPort": 2000}]))
    engine.publish()
    assert not engine.snapshot.judged
    again = Queued(_syn(1500))
    loop.handle(again)
    assert again.verdicts == ["accept"]


def replace_ports(policy: dict, ports: list[dict]) -> dict:
    policy["spec"]["ingress"][0]["ports"] = ports
    return policy


def test_segments_are_worked_out_again_only_when_the_stages_change() -> None:
    engine = _engine(_np([{"protocol": "TCP", "port": 80}]))
    first = engine.snapshot
    engine.state.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": "other"},
                        "status": {"podIPs": [{"ip": "10.0.0.9"}]}})
    engine.publish()  # only a pod changed: the same stages
    assert engine.snapshot is not first and engine.snapshot.segments is first.segments
    engine.state.apply(replace_ports(_np([]), [{"protocol": "TCP", "port": 443}]))
    engine.publish()
    assert engine.snapshot.segments == {6: (443, 444), 17: (), 132: ()}


def test_segment_answers_are_timed_like_hits_and_every_one_counts(monkeypatch) -> None:
    from kube_netpol.engine.flows import TIMING_EVERY, FlowHistory

    engine = _engine(_np([{"protocol": "TCP", "port": 80}]))
    timed: list[int] = []
    real = FlowHistory.record_timed_hit
    monkeypatch.setattr(FlowHistory, "record_timed_hit", lambda self, flow, ns: timed.append(ns) or real(self, flow, ns))
    loop = VerdictLoop(engine, 100, fail_open=True)
    for port in range(1000, 1000 + 2 * TIMING_EVERY):
        loop.handle(Queued(_syn(port)))
    # The first key is judged (and always timed); of the new keys after it, one in TIMING_EVERY is timed.
    assert loop.counters.segment_answers == 2 * TIMING_EVERY - 1
    assert len(timed) == 1
    totals = engine.history.totals(engine.snapshot.flows)
    assert sum(totals.buckets[(6, 4)]) == 2 * TIMING_EVERY == sum(totals.packets.values())
    assert totals.entries == 2 * TIMING_EVERY
