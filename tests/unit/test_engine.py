"""The pipeline rules of the PolicyEngine and its snapshots, with scripted evaluators."""

from __future__ import annotations

import ipaddress
from typing import Any

from kube_netpol.api import NEXT, Decision, Packet, PodKey, Update, Verdict
from kube_netpol.engine import END_OF_PIPELINE, PolicyEngine
from kube_netpol.state import ClusterState

SRC = bytes([10, 0, 0, 1])
DST = bytes([10, 0, 0, 2])
OTHER_NODE = bytes([10, 0, 1, 1])


def pod(name: str, ip: bytes, node: str = "n1", **status: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": name},
            "spec": {"nodeName": node}, "status": {"podIP": str(ipaddress.ip_address(ip)), **status}}


class CountingState(ClusterState):
    """The real state, counting the packet path's lookups."""

    def __init__(self) -> None:
        super().__init__(node_name="n1")
        self.lookups = 0
        for name, ip in (("src", SRC), ("dst", DST)):
            self.apply(pod(name, ip))

    def pod_by_ip(self, ip: bytes):  # type: ignore[no-untyped-def]
        self.lookups += 1
        return super().pod_by_ip(ip)


class Scripted:
    """Answers fixed decisions, records what it was asked and which batches it got."""

    kinds: tuple = ()
    pod_annotations: tuple = ()

    def __init__(self, name: str, egress: Decision = NEXT, ingress: Decision = NEXT,
                 selects: frozenset[str] = frozenset(), divert_all: bool = False) -> None:
        self.name = name
        self.egress = egress
        self.ingress = ingress
        self.selects = selects  # pod names
        self.divert_all = divert_all
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.batches: list[list[tuple[str, tuple[str, str]]]] = []

    def ready(self) -> bool:
        return True

    def update(self, view, changes) -> Update:  # type: ignore[no-untyped-def]
        self.batches.append([(c.kind, c.key) for c in changes])
        selected: dict[PodKey, bool] = {c.key: c.key[1] in self.selects for c in changes if c.kind == "Pod"}
        return Update(Stage(self, self.egress, self.ingress), selected, self.divert_all)


class Stage:
    def __init__(self, owner: Scripted, egress: Decision, ingress: Decision) -> None:
        self.owner, self.egress, self.ingress = owner, egress, ingress

    def evaluate_egress(self, packet, src, dst):  # type: ignore[no-untyped-def]
        self.owner.calls.append(("egress", src.name if src else None, dst.name if dst else None))
        return self.egress

    def evaluate_ingress(self, packet, src, dst):  # type: ignore[no-untyped-def]
        self.owner.calls.append(("ingress", src.name if src else None, dst.name if dst else None))
        return self.ingress


ACCEPT = Decision(Verdict.ACCEPT, "p", "r")
DENY = Decision(Verdict.DENY, "q", "s")


def packet(dport: int = 80) -> Packet:
    return Packet(4, 6, SRC, DST, 40000, dport)


def engine_with(*evaluators: Scripted) -> PolicyEngine:
    return PolicyEngine(CountingState(), list(evaluators))


def test_end_of_pipeline_accepts_both_directions() -> None:
    judgement = engine_with(Scripted("a"), Scripted("b")).evaluate(packet())
    assert judgement.allowed
    assert judgement.egress is END_OF_PIPELINE and judgement.egress_by == ""
    assert judgement.ingress is END_OF_PIPELINE


def test_first_final_answer_wins_and_later_evaluators_are_not_asked() -> None:
    first = Scripted("first", egress=DENY)
    second = Scripted("second", egress=ACCEPT)
    judgement = engine_with(first, second).evaluate(packet())
    assert not judgement.allowed
    assert judgement.egress is DENY and judgement.egress_by == "first"
    assert ("egress", "src", "dst") not in second.calls


def test_next_goes_on_to_the_next_evaluator() -> None:
    judgement = engine_with(Scripted("a"), Scripted("b", ingress=DENY)).evaluate(packet())
    assert not judgement.allowed
    assert judgement.ingress_by == "b"
    assert judgement.egress is END_OF_PIPELINE


def test_both_directions_must_accept() -> None:
    assert not engine_with(Scripted("a", egress=ACCEPT, ingress=DENY)).evaluate(packet()).allowed
    assert not engine_with(Scripted("a", egress=DENY, ingress=ACCEPT)).evaluate(packet()).allowed
    assert engine_with(Scripted("a", egress=ACCEPT, ingress=ACCEPT)).evaluate(packet()).allowed


def test_pods_are_looked_up_once_per_packet_and_passed_to_both_pipelines() -> None:
    evaluator = Scripted("a")
    engine = engine_with(evaluator)
    state: CountingState = engine.state  # type: ignore[assignment]
    engine.evaluate(packet())
    assert state.lookups == 2
    assert evaluator.calls == [("egress", "src", "dst"), ("ingress", "src", "dst")]


def test_non_pods_are_none() -> None:
    evaluator = Scripted("a")
    engine = engine_with(evaluator)
    engine.state.delete("Pod", "x", "src")  # type: ignore[attr-defined]
    engine.publish()
    engine.evaluate(packet())
    assert evaluator.calls == [("egress", None, "dst"), ("ingress", None, "dst")]


def test_the_state_held_at_start_is_the_first_batch_and_each_later_batch_one_snapshot() -> None:
    evaluator = Scripted("a")
    engine = engine_with(evaluator)
    assert evaluator.batches == [[("Pod", ("x", "src")), ("Pod", ("x", "dst"))]]
    assert engine.generation == 1
    assert engine.publish() is None and engine.generation == 1  # nothing changed: nothing published
    state: ClusterState = engine.state  # type: ignore[assignment]
    state.apply(pod("src", SRC, phase="Running"))  # what policies read is unchanged: no change at all
    assert engine.publish() is None
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"a": "b"}}})
    first = engine.snapshot
    published = engine.publish("rev-7")
    assert published is engine.snapshot and published is not first and first.retired
    assert (engine.generation, published.generation, published.revision) == (2, 2, "rev-7")
    # One namespace change: one batch holding it and the records it rebuilt for its pods.
    assert evaluator.batches[-1] == [("Namespace", ("", "x")), ("Pod", ("x", "src")), ("Pod", ("x", "dst"))]


def test_a_stage_answers_for_its_own_snapshot() -> None:
    evaluator = Scripted("a", ingress=DENY)
    engine = engine_with(evaluator)
    old = engine.snapshot
    assert not engine.evaluate(packet()).allowed
    evaluator.ingress = ACCEPT
    assert not engine.evaluate(packet()).allowed  # the published stage does not change
    engine.state.apply(pod("other", OTHER_NODE))  # type: ignore[attr-defined]
    engine.publish()
    assert engine.evaluate(packet()).allowed
    assert not old.judge(packet()).allowed  # a packet still holding the old snapshot gets the old answer


def test_managed_addresses_are_the_local_pods_some_evaluator_selects() -> None:
    a = Scripted("a", selects=frozenset({"src"}))
    b = Scripted("b", selects=frozenset({"dst", "far"}), divert_all=True)
    engine = engine_with(a, b)
    engine.state.apply(pod("far", OTHER_NODE, node="n2"))  # type: ignore[attr-defined]
    engine.publish()
    assert set(engine.managed.addresses) == {SRC, DST}  # "far" is selected but not on this node
    assert engine.managed.divert_all
    # The pod finishes: its address leaves the set although its selection did not change.
    engine.state.apply(pod("src", SRC, phase="Succeeded"))  # type: ignore[attr-defined]
    engine.publish()
    assert set(engine.managed.addresses) == {DST}
    engine.state.delete("Pod", "x", "dst")  # type: ignore[attr-defined]
    engine.publish()
    assert set(engine.managed.addresses) == set()


def test_a_failing_evaluator_keeps_its_stage_and_makes_the_engine_not_ready() -> None:
    evaluator = Scripted("a", ingress=DENY)
    engine = engine_with(evaluator)

    def broken(view, changes):  # type: ignore[no-untyped-def]
        raise RuntimeError("plugin bug")

    evaluator.update = broken  # type: ignore[method-assign]
    engine.state.apply(pod("other", OTHER_NODE))  # type: ignore[attr-defined]
    assert engine.publish() is not None
    assert not engine.ready()
    assert not engine.evaluate(packet()).allowed  # the last stage it gave still answers


def test_explain_lists_answers_up_to_the_deciding_one() -> None:
    engine = engine_with(Scripted("a"), Scripted("b", egress=DENY), Scripted("c", egress=ACCEPT))
    explanation = engine.explain(packet())
    assert [(s.evaluator, s.decision) for s in explanation.egress_steps] == [("a", NEXT), ("b", DENY)]
    assert [s.evaluator for s in explanation.ingress_steps] == ["a", "b", "c"]
    assert explanation.judgement.egress_by == "b" and not explanation.judgement.allowed
    assert explanation.src.name == "src" and explanation.dst.name == "dst"


def test_a_refused_pod_stays_isolated_by_its_namespaces_default_deny() -> None:
    from kube_netpol.plugins import build_engine

    engine = build_engine(node_name="n1")
    state = engine.state
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    state.apply(pod("client", SRC))
    state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"namespace": "x", "name": "default-deny"},
                 "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    bad = pod("bad", DST)
    bad["metadata"]["labels"] = {"version": 1}  # an unquoted number in YAML: not a string, the pod is refused
    assert not state.apply(bad)
    engine.publish()
    judgement = engine.evaluate(packet())
    assert not judgement.allowed and judgement.ingress.policy == "x/default-deny"
    assert DST in set(engine.managed.addresses)  # and its traffic is diverted to be judged


def test_stages_that_answer_nothing_are_skipped_when_judging_but_explained() -> None:
    """A built-in stage without policies (answers_nothing) costs the miss path nothing; explain still lists it."""
    from kube_netpol.plugins import build_engine

    engine = build_engine(("adminnetworkpolicy", "networkpolicy", "baselineadminnetworkpolicy"))
    state = engine.state
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "x"}}})
    state.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": "a", "labels": {"app": "a"}},
                 "status": {"podIPs": [{"ip": "10.0.0.1"}]}})
    engine.publish()
    probe = Packet.from_strings("10.0.0.1", "10.0.0.1", "TCP", 80)
    snapshot = engine.snapshot
    assert [stage.answers_nothing for stage in snapshot.stages] == [True, True, True]
    assert snapshot._egress == () and snapshot._ingress == ()
    assert snapshot.judge(probe).allowed
    explained = snapshot.explain(probe)
    assert [step.evaluator for step in explained.egress_steps] == list(snapshot.names)
    # A NetworkPolicy denying all ingress: its stage answers again, and the verdict follows it.
    state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": "x", "name": "deny"},
                 "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    engine.publish()
    snapshot = engine.snapshot
    assert [stage.answers_nothing for stage in snapshot.stages] == [True, False, True]
    assert [name for name, _, _ in snapshot._ingress] == ["networkpolicy"]
    assert not snapshot.judge(probe).allowed
