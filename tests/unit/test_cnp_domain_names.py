"""ClusterNetworkPolicy domainNames peers: what the source pod learnt from DNS, and how long a verdict lives."""

from __future__ import annotations

import ipaddress
from time import monotonic
from typing import Any

import pytest

from kube_netpol.api.evaluator import EvaluatorContext
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import Verdict
from kube_netpol.dns import DnsCache
from kube_netpol.engine import PolicyEngine
from kube_netpol.engine.flows import packet_flow_key
from kube_netpol.evaluators.clusternetworkpolicy import create_admin, create_baseline
from kube_netpol.evaluators.networkpolicy import create as np_create
from test_cnp_evaluator import ADDR, PIPELINE, check, cnp, state  # noqa: F401 - the fixture
from unit_standins import PublishingState, publishing_engine

EXT = "192.168.200.20"
EXT2 = "192.168.200.21"
EXT6 = "fd00:200::20"


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def engine_with(state: PublishingState, cache: DnsCache) -> PolicyEngine:
    context = EvaluatorContext(dns=cache)
    engine = PolicyEngine(state, [create_admin(context), np_create(context), create_baseline(context)], cache)
    state.engine = engine  # sees each change at once (unit_standins.publishing_engine, with the shared cache)
    return engine


def allowlist(*names: str, port: int | None = 443) -> dict[str, Any]:
    protocols = [{"tcp": {"destinationPort": {"number": port}}}] if port else None
    accept: dict[str, Any] = {"name": "names", "action": "Accept", "to": [{"domainNames": list(names)}]}
    if protocols:
        accept["protocols"] = protocols
    deny = {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0", "::/0"]}]}
    return cnp("allow", "Admin", 10, "x", egress=[accept, deny])


def test_an_exact_name_learnt_by_the_source_pod_accepts_for_its_ttl(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("api.example.com"))
    assert check(engine, "x/a", EXT, 443).verdict is Verdict.DENY
    cache.learn(("x", "a"), "api.example.com", [(packed(EXT), 300)])
    judgement = check(engine, "x/a", EXT, 443)
    assert judgement.verdict is Verdict.ACCEPT and judgement.egress.rule == "names"
    assert 299 < judgement.lifetime <= 300
    assert check(engine, "x/b", EXT, 443).verdict is Verdict.DENY  # another pod did not learn it
    assert check(engine, "x/a", EXT2, 443).verdict is Verdict.DENY  # another address
    assert check(engine, "x/a", EXT, 80).verdict is Verdict.DENY  # the rule's port only


def test_wildcards_cover_one_or_more_labels_never_the_bare_domain(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("*.example.com"))
    cache.learn(("x", "a"), "example.com", [(packed(EXT), 300)])
    assert check(engine, "x/a", EXT, 443).verdict is Verdict.DENY
    cache.learn(("x", "a"), "www.example.com", [(packed(EXT), 300)])
    assert check(engine, "x/a", EXT, 443).verdict is Verdict.ACCEPT
    cache.learn(("x", "b"), "a.b.example.com", [(packed(EXT2), 300)])
    assert check(engine, "x/b", EXT2, 443).verdict is Verdict.ACCEPT


def test_several_addresses_and_ipv6(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("api.example.com"))
    cache.learn(("x", "a"), "api.example.com", [(packed(EXT), 300), (packed(EXT2), 300), (packed(EXT6), 300)])
    assert check(engine, "x/a", EXT, 443).verdict is Verdict.ACCEPT
    assert check(engine, "x/a", EXT2, 443).verdict is Verdict.ACCEPT
    six = engine.evaluate(Packet.from_strings("fd00:1::10", EXT6, "TCP", 443))
    assert six.verdict is Verdict.ACCEPT


def test_an_expired_name_accepts_no_more(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("api.example.com"))
    cache.learn(("x", "a"), "api.example.com", [(packed(EXT), 300)], now=monotonic() - 301)
    assert check(engine, "x/a", EXT, 443).verdict is Verdict.DENY


def test_a_deny_after_an_unmatched_name_is_not_reused_and_a_name_learnt_next_wins(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("api.example.com"))
    packet = Packet.from_strings(ADDR["x/a"], EXT, "TCP", 443)
    snapshot = engine.snapshot
    denied = snapshot.evaluate(packet)
    assert denied.verdict is Verdict.DENY and denied.lifetime == 0
    snapshot.add_flow(packet_flow_key(packet), denied, False, packet.protocol, packet.family)  # as the verdict loop does
    cache.learn(("x", "a"), "api.example.com", [(packed(EXT), 300)])
    assert snapshot.evaluate(packet).verdict is Verdict.ACCEPT


def test_a_port_that_no_name_can_match_is_cached_as_usual(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("api.example.com"))
    assert check(engine, "x/a", EXT, 80).lifetime is None  # the names rule is for 443 only: not consulted


def test_pass_after_an_unmatched_name_hands_on_without_reuse(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    accept = {"name": "names", "action": "Accept", "to": [{"domainNames": ["api.example.com"]}]}
    state.apply(cnp("p", "Admin", 10, "x", egress=[accept, {"name": "pass", "action": "Pass", "to": [{"networks": ["0.0.0.0/0"]}]}]))
    state.apply(cnp("b", "Baseline", 10, "x", egress=[{"name": "deny", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}]))
    judgement = check(engine, "x/a", EXT, 443)
    assert judgement.verdict is Verdict.DENY and judgement.lifetime == 0 and judgement.egress.policy == "b"


def test_higher_priority_deny_wins_over_a_learnt_name(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("api.example.com"))
    state.apply(cnp("first", "Admin", 1, "x", egress=[{"name": "no-ext", "action": "Deny", "to": [{"networks": [EXT + "/32"]}]}]))
    cache.learn(("x", "a"), "api.example.com", [(packed(EXT), 300)])
    judgement = check(engine, "x/a", EXT, 443)
    assert judgement.verdict is Verdict.DENY and judgement.egress.policy == "first" and judgement.lifetime is None


def test_baseline_tier_names_apply_only_where_no_networkpolicy_selects(state: PublishingState) -> None:
    cache = DnsCache()
    engine = engine_with(state, cache)
    accept = {"name": "names", "action": "Accept", "to": [{"domainNames": ["api.example.com"]}]}
    deny = {"name": "rest", "action": "Deny", "to": [{"networks": ["0.0.0.0/0"]}]}
    state.apply(cnp("base", "Baseline", 10, "x", egress=[accept, deny]))
    cache.learn(("x", "a"), "api.example.com", [(packed(EXT), 300)])
    assert check(engine, "x/a", EXT, 443).verdict is Verdict.ACCEPT
    assert check(engine, "x/b", EXT, 443).verdict is Verdict.DENY
    state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "eg"},
                 "spec": {"podSelector": {"matchLabels": {"pod": "b"}}, "policyTypes": ["Egress"],
                          "egress": [{"to": [{"ipBlock": {"cidr": EXT + "/32"}}]}]}})
    assert check(engine, "x/b", EXT, 443).verdict is Verdict.ACCEPT  # NetworkPolicy decides x/b now


def test_without_a_dns_cache_names_match_nothing(state: PublishingState) -> None:
    engine = publishing_engine(state, [create_admin(EvaluatorContext()), np_create(EvaluatorContext())])
    state.apply(allowlist("api.example.com"))
    assert check(engine, "x/a", EXT, 443).verdict is Verdict.DENY


@pytest.mark.parametrize("pipeline", [PIPELINE])
def test_build_engine_shares_its_cache_with_the_evaluators(pipeline: tuple[str, ...]) -> None:
    from kube_netpol.plugins import build_engine

    engine = build_engine(pipeline)
    stages = [s for s in engine.snapshot.stages if hasattr(s, "dns")]
    assert stages and all(stage.dns is engine.dns for stage in stages)


class MarkedQueued:
    """A queued packet with the ruleset's mark (what NetfilterQueue gives the callback)."""

    hook = 4

    def __init__(self, payload: bytes, mark: int) -> None:
        self.payload, self.mark, self.verdicts = payload, mark, []

    def get_payload(self) -> bytes:
        return self.payload

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.mark = mark

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


def test_the_verdict_loop_learns_from_a_queued_answer_then_judges_the_connection_with_it(state: PublishingState) -> None:
    from kube_netpol.agent.verdict_loop import VerdictLoop
    from kube_netpol.dataplane.ruleset import DNS_ANSWER_MARK
    from kube_netpol.tools.lab.dnswire import TYPE_A, query, response, udp_packet

    cache = DnsCache()
    engine = engine_with(state, cache)
    state.apply(allowlist("api.example.com"))
    verdict_loop = VerdictLoop(engine, 100, fail_open=True, observe_dns=True)
    syn = Packet.from_strings(ADDR["x/a"], EXT, "TCP", 443)
    from scapy.layers.inet import IP, TCP

    first = MarkedQueued(bytes(IP(src=ADDR["x/a"], dst=EXT) / TCP(sport=40000, dport=443, flags="S")), 0)
    verdict_loop.handle(first)
    assert first.verdicts == ["drop"]
    answer = udp_packet("10.96.0.10", ADDR["x/a"], 53, 40001, response(query("api.example.com", TYPE_A, 3), [EXT], 300))
    queued = MarkedQueued(answer, DNS_ANSWER_MARK)
    verdict_loop.handle(queued)
    assert queued.verdicts == ["accept"] and verdict_loop.counters.dns_answers == 1 and verdict_loop.counters.dns_refused == 0
    assert set(cache.names(("x", "a"), packed(EXT))) == {"api.example.com"}
    again = MarkedQueued(first.payload, 0)
    verdict_loop.handle(again)
    assert again.verdicts == ["accept"] and engine.evaluate(syn).verdict is Verdict.ACCEPT
    garbage = MarkedQueued(answer[:40] + b"\xc0\xff" * 10, DNS_ANSWER_MARK)
    verdict_loop.handle(garbage)  # a broken answer teaches nothing, is let through, and the loop goes on
    assert garbage.verdicts == ["accept"] and verdict_loop.counters.dns_refused == 1
    without = VerdictLoop(engine, 100, fail_open=True)  # observation off: the bit means nothing, answers are judged
    other = MarkedQueued(answer, DNS_ANSWER_MARK)
    without.handle(other)
    assert without.counters.dns_answers == 0
