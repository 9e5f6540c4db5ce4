"""The contract between the engine and evaluator plugins.

An evaluator lives on two threads:

- the control thread calls ``update(view, changes)`` with every batch of
  changes to the cluster (the first batch holds every object there is). The
  evaluator derives what it needs, incrementally, and returns an ``Update``:
  the ``Stage`` that answers packets from now on, and which pods it now
  selects or no longer selects (their addresses are diverted to the queue);
- the packet thread calls the current stage's ``evaluate_egress`` (the source
  pod's egress) and ``evaluate_ingress`` (the destination pod's ingress). It
  returns a final ACCEPT/DENY ``Decision`` or ``NEXT``.

The engine publishes the stages of all evaluators as one snapshot after each
batch. A stage must not change what it answers after it is returned: build a
new one when the policies change (memo caches inside it are fine). A verdict
may depend only on the packet's addresses, protocol and destination port, and
on the snapshot: the engine remembers it per (source, destination, protocol,
destination port) until the next snapshot. A stage may say it answers NEXT
(without a lifetime) to every packet with a true ``answers_nothing``
attribute: the engine then skips it when judging; with ``port_bounds()``
(``PortBounds``) it says which destination ports it tells apart, and the
verdict loop reuses a judgement for the other ports of a segment
(docs/development.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping, Protocol, Sequence, runtime_checkable

from kube_netpol.api.cluster import Change, ClusterView, PodKey, PodRecord
from kube_netpol.api.kinds import KindSpec
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import Decision

_NOTHING_SELECTED: Mapping[PodKey, bool] = MappingProxyType({})

#: What a stage's optional ``port_bounds()`` returns: per protocol, the destination ports at which
#: its answers may change (a rule's range [first, last] adds first and last + 1); None for a
#: protocol: any port may (named ports, resolved on each pod); a protocol left out: ports play no part.
PortBounds = dict[int, set[int] | None]


@runtime_checkable
class Stage(Protocol):
    """What the packet thread asks; ``src``/``dst`` are None when the address is not a pod."""

    def evaluate_egress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision: ...

    def evaluate_ingress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision: ...


@runtime_checkable
class NetworkStage(Stage, Protocol):
    """A stage that also judges traffic on secondary networks (interfaces besides the cluster network's).

    ``network`` names one secondary network as the evaluator knows it (for
    Multus attachments ``namespace/name``); the evaluator resolves the
    packet's addresses to pods on that network itself, as addresses there are
    not the pods' cluster addresses. Stages without these methods never judge
    a secondary network: NetworkPolicy and the admin policies apply to the
    cluster network only, and the end of the pipeline accepts.
    ``diverted()``: this node's pods whose new connections on some of their
    secondary interfaces the dataplane must divert to the queue (inside the
    pod's network namespace) for this stage to judge, each with its
    (interface, network) pairs. A stage returns the same mapping on every
    call (the dataplane compares it by identity to skip unchanged snapshots).
    """

    def evaluate_network_egress(self, network: str, packet: Packet) -> Decision: ...

    def evaluate_network_ingress(self, network: str, packet: Packet) -> Decision: ...

    def diverted(self) -> Mapping[PodKey, tuple[tuple[str, str], ...]]: ...


@dataclass(frozen=True, slots=True)
class Update:
    """An evaluator's answer to a batch of changes.

    ``selected``: whether the evaluator selects each pod the batch touched
    (True: its traffic must be diverted to the queue), so that only the pods a
    change touched are looked at. Reporting a pod again with the same answer
    is harmless; pods of other nodes may be left out (only this node's
    addresses are diverted, ``ClusterView.node_name``). ``divert_all``: the evaluator needs every new connection of every
    pod (it cannot name the pods it cares about).
    """

    stage: Stage
    selected: Mapping[PodKey, bool] = field(default_factory=lambda: _NOTHING_SELECTED)
    divert_all: bool = False


@runtime_checkable
class PolicyEvaluator(Protocol):
    """One stage of the pipeline, built by an entry point of the ``kube_netpol.evaluators`` group.

    ``kinds``: the kinds it reads besides Pod and Namespace (which every
    evaluator gets); the sources list and watch the union of the pipeline's.
    ``pod_annotations``: annotation keys it reads from pods (``PodRecord.annotations``
    holds only the keys some evaluator of the pipeline names).
    """

    name: str
    kinds: tuple[KindSpec, ...]
    pod_annotations: tuple[str, ...]

    def ready(self) -> bool: ...

    def update(self, view: ClusterView, changes: Sequence[Change[object]]) -> Update: ...


@runtime_checkable
class LearntNames(Protocol):
    """What pods learnt from the DNS answers the agent saw on their way to them (kube_netpol.dns).

    ``names(pod, address)``: the names ``pod`` resolved to ``address``, each
    with the ``time.monotonic()`` second its TTL runs out (entries already
    expired may be included: compare with the clock). Read it on the packet
    thread only; a verdict that depends on it must say so with
    ``Decision.lifetime`` (docs/development.md, "The plugin contract").
    """

    def names(self, pod: PodKey, address: bytes) -> Mapping[str, float]: ...


@dataclass(frozen=True)
class EvaluatorContext:
    """What an evaluator factory is given: its section of the evaluator configuration, and the
    agent's DNS observations (``dns``; None where nothing observes DNS answers)."""

    settings: Mapping[str, object] = field(default_factory=dict)
    dns: LearntNames | None = None


class EvaluatorFactory(Protocol):
    """An entry point in the ``kube_netpol.evaluators`` group names one of these."""

    def __call__(self, context: EvaluatorContext) -> PolicyEvaluator: ...


@runtime_checkable
class PodInfoProvider(Protocol):
    """Maps an address to the pod that owns it (None: not a pod)."""

    def pod_by_ip(self, ip: bytes) -> PodRecord | None: ...
