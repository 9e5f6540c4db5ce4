"""Stand-ins the unit tests share: a queued packet, a cluster without pods, pod records."""

from __future__ import annotations

from typing import Mapping

from kube_netpol.api import NEXT, PodRecord, Update
from kube_netpol.engine import PolicyEngine
from kube_netpol.state import ClusterState
from kube_netpol.state.store import port_names_of


class Queued:
    """What NetfilterQueue hands the verdict callback; records the verdicts it is given."""

    def __init__(self, payload: bytes) -> None:
        self.payload = payload
        self.verdicts: list[str] = []

    def get_payload(self) -> bytes:
        return self.payload

    def accept(self) -> None:
        self.verdicts.append("accept")

    def drop(self) -> None:
        self.verdicts.append("drop")


def pod_record(
    labels: Mapping[str, str] | None = None,
    namespace: str = "x",
    namespace_labels: Mapping[str, str] | None = None,
    ports: tuple[tuple[str, int, str], ...] = (),
    name: str = "p",
    ips: tuple[bytes, ...] = (),
    node_name: str = "",
) -> PodRecord:
    """A PodRecord as the state builds one (labels as given, port names derived from ``ports``)."""
    return PodRecord(
        namespace=namespace,
        name=name,
        labels=dict(labels or {}),
        namespace_labels=dict(namespace_labels or {}),
        node_name=node_name,
        node_labels={},
        ips=ips,
        host_network=False,
        terminal=False,
        container_ports=ports,
        port_names=port_names_of(ports),
    )


class StageEvaluator:
    """A PolicyEvaluator whose stage never changes (the stand-in evaluators of the tests are stages)."""

    kinds: tuple = ()
    pod_annotations: tuple = ()

    def __init__(self, stage: object, name: str | None = None) -> None:
        self.stage = stage
        self.name = name or getattr(stage, "name", type(stage).__name__)

    def ready(self) -> bool:
        return True

    def update(self, view: object, changes: object) -> Update:
        return Update(self.stage)  # type: ignore[arg-type]


def engine_of(*stages: object) -> PolicyEngine:
    """An engine over an empty cluster whose pipeline is ``stages``."""
    return PolicyEngine(ClusterState(), [StageEvaluator(stage) for stage in stages])


def touch(engine: PolicyEngine) -> None:
    """Change the cluster (a namespace relabelled) and publish: what any policy change does to the flow table."""
    engine.state.apply({"apiVersion": "v1", "kind": "Namespace",  # type: ignore[attr-defined]
                        "metadata": {"name": "touched", "labels": {"generation": str(engine.generation)}}})
    assert engine.publish() is not None


class PublishingState(ClusterState):
    """The real state, publishing each change at once to ``engine`` (the agent publishes each batch)."""

    engine: PolicyEngine | None = None

    def apply(self, obj, kind=None):  # type: ignore[no-untyped-def]
        accepted = super().apply(obj, kind)
        self._publish()
        return accepted

    def delete(self, kind, namespace, name):  # type: ignore[no-untyped-def]
        deleted = super().delete(kind, namespace, name)
        self._publish()
        return deleted

    def _publish(self) -> None:
        if self.engine is not None:
            self.engine.publish()


def publishing_engine(state: PublishingState, evaluators: list) -> PolicyEngine:
    """An engine over ``state`` that sees each change of it at once."""
    engine = PolicyEngine(state, evaluators)
    state.engine = engine
    return engine


class ByPort:
    """A NetworkPolicy stand-in: the ingress decision of each destination port."""

    name = "networkpolicy"

    def __init__(self, decisions: Mapping[int, object]) -> None:
        self.decisions = decisions

    def evaluate_egress(self, packet, src, dst):  # type: ignore[no-untyped-def]
        return NEXT

    def evaluate_ingress(self, packet, src, dst):  # type: ignore[no-untyped-def]
        return self.decisions[packet.dst_port]


def syn(port: int, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
    """An IPv4 TCP SYN, as a queued first packet."""
    from scapy.layers.inet import IP, TCP

    return bytes(IP(src=src, dst=dst) / TCP(sport=40000, dport=port, flags="S"))
