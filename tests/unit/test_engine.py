"""The pipeline rules of the PolicyEngine, with scripted evaluators."""

from __future__ import annotations

from kube_netpol.api import NEXT, Decision, ManagedIPs, Packet, PodInfo, Verdict
from kube_netpol.engine import END_OF_PIPELINE, PolicyEngine

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])


class Directory:
    def __init__(self) -> None:
        self.pods: dict[bytes, PodInfo] = {SRC: PodInfo(name="src"), DST: PodInfo(name="dst")}
        self.lookups = 0

    def pod_info_by_ip(self, ip: bytes) -> PodInfo | None:
        self.lookups += 1
        return self.pods.get(ip)


class Scripted:
    """Answers fixed decisions and records what it was asked."""

    def __init__(self, name: str, egress: Decision = NEXT, ingress: Decision = NEXT, managed: ManagedIPs = ManagedIPs()):
        self.name = name
        self.egress = egress
        self.ingress = ingress
        self.managed = managed
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.sync = None

    def ready(self) -> bool:
        return True

    def evaluate_egress(self, packet, src, dst):
        self.calls.append(("egress", src.name if src else None, dst.name if dst else None))
        return self.egress

    def evaluate_ingress(self, packet, src, dst):
        self.calls.append(("ingress", src.name if src else None, dst.name if dst else None))
        return self.ingress

    def managed_ips(self) -> ManagedIPs:
        return self.managed

    def set_sync_callback(self, callback) -> None:
        self.sync = callback


ACCEPT = Decision(Verdict.ACCEPT, "p", "r")
DENY = Decision(Verdict.DENY, "q", "s")


def packet(dport: int = 80) -> Packet:
    return Packet(4, 6, SRC, DST, 40000, dport)


def test_end_of_pipeline_accepts_both_directions() -> None:
    engine = PolicyEngine(Directory(), [Scripted("a"), Scripted("b")])
    judgement = engine.evaluate(packet())
    assert judgement.allowed
    assert judgement.egress is END_OF_PIPELINE and judgement.egress_by == ""
    assert judgement.ingress is END_OF_PIPELINE


def test_first_final_answer_wins_and_later_evaluators_are_not_asked() -> None:
    first = Scripted("first", egress=DENY)
    second = Scripted("second", egress=ACCEPT)
    engine = PolicyEngine(Directory(), [first, second])
    judgement = engine.evaluate(packet())
    assert not judgement.allowed
    assert judgement.egress is DENY and judgement.egress_by == "first"
    assert ("egress", "src", "dst") not in second.calls


def test_next_goes_on_to_the_next_evaluator() -> None:
    engine = PolicyEngine(Directory(), [Scripted("a"), Scripted("b", ingress=DENY)])
    judgement = engine.evaluate(packet())
    assert not judgement.allowed
    assert judgement.ingress_by == "b"
    assert judgement.egress is END_OF_PIPELINE


def test_both_directions_must_accept() -> None:
    engine = PolicyEngine(Directory(), [Scripted("a", egress=ACCEPT, ingress=DENY)])
    assert not engine.evaluate(packet()).allowed
    engine = PolicyEngine(Directory(), [Scripted("a", egress=DENY, ingress=ACCEPT)])
    assert not engine.evaluate(packet()).allowed
    engine = PolicyEngine(Directory(), [Scripted("a", egress=ACCEPT, ingress=ACCEPT)])
    assert engine.evaluate(packet()).allowed


def test_pods_are_looked_up_once_per_packet_and_passed_to_both_pipelines() -> None:
    directory = Directory()
    evaluator = Scripted("a")
    engine = PolicyEngine(directory, [evaluator])
    engine.evaluate(packet())
    assert directory.lookups == 2
    assert evaluator.calls == [("egress", "src", "dst"), ("ingress", "src", "dst")]


def test_non_pods_are_none() -> None:
    directory = Directory()
    del directory.pods[SRC]
    evaluator = Scripted("a")
    PolicyEngine(directory, [evaluator]).evaluate(packet())
    assert evaluator.calls == [("egress", None, "dst"), ("ingress", None, "dst")]


def test_verdicts_are_cached_until_an_evaluator_reports_a_change() -> None:
    evaluator = Scripted("a", ingress=DENY)
    engine = PolicyEngine(Directory(), [evaluator])
    assert not engine.evaluate(packet()).allowed
    assert not engine.evaluate(Packet(4, 6, SRC, DST, 50000, 80)).allowed  # other source port: same flow key
    assert len(evaluator.calls) == 2 and engine.cache_hits == 1
    evaluator.ingress = ACCEPT
    assert not engine.evaluate(packet()).allowed  # still cached
    evaluator.sync()
    assert engine.evaluate(packet()).allowed
    assert engine.evaluate(packet(81)).allowed
    assert engine.cache_misses == 3


def test_sync_listeners_hear_evaluator_changes() -> None:
    evaluator = Scripted("a")
    engine = PolicyEngine(Directory(), [evaluator])
    heard: list[bool] = []
    engine.add_sync_listener(lambda: heard.append(True))
    evaluator.sync()
    assert heard == [True]


def test_cache_is_bounded() -> None:
    engine = PolicyEngine(Directory(), [Scripted("a")], cache_size=10)
    for port in range(1, 100):
        engine.evaluate(packet(port))
    assert len(engine._cache) <= 10


def test_managed_ips_are_the_union() -> None:
    a = Scripted("a", managed=ManagedIPs(frozenset({SRC})))
    b = Scripted("b", managed=ManagedIPs(frozenset({DST}), divert_all=True))
    managed = PolicyEngine(Directory(), [a, b]).managed_ips()
    assert managed.ips == {SRC, DST} and managed.divert_all


def test_explain_lists_answers_up_to_the_deciding_one() -> None:
    engine = PolicyEngine(Directory(), [Scripted("a"), Scripted("b", egress=DENY), Scripted("c", egress=ACCEPT)])
    explanation = engine.explain(packet())
    assert [(s.evaluator, s.decision) for s in explanation.egress_steps] == [("a", NEXT), ("b", DENY)]
    assert [s.evaluator for s in explanation.ingress_steps] == ["a", "b", "c"]
    assert explanation.judgement.egress_by == "b" and not explanation.judgement.allowed
    assert explanation.src.name == "src" and explanation.dst.name == "dst"
