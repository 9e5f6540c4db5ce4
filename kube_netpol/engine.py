"""The PolicyEngine: egress pipeline for the source pod, ingress pipeline for the destination pod.

A packet passes only if both directions accept. In each direction the first
evaluator that answers ACCEPT or DENY decides; NEXT asks the next one; the end
of the pipeline accepts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from kube_netpol.api.evaluator import ManagedIPs, PodInfoProvider, PolicyEvaluator
from kube_netpol.api.packet import Packet
from kube_netpol.api.podinfo import PodInfo
from kube_netpol.api.verdict import Decision, Verdict

ACCEPT = Verdict.ACCEPT
DENY = Verdict.DENY

#: What a direction gets when every evaluator said NEXT.
END_OF_PIPELINE = Decision(Verdict.ACCEPT, reason="no evaluator decided; the end of the pipeline accepts")

#: Verdicts cached before the cache is emptied wholesale (cheaper than an LRU on the hot path).
DEFAULT_CACHE_SIZE = 65536


class Judgement:
    """The engine's answer for one packet; ``*_by`` names the deciding evaluator ("" at end of pipeline).

    A plain slotted class: one is built per uncached packet, and a frozen
    dataclass's constructor costs several times more. Treat it as immutable.
    """

    __slots__ = ("verdict", "egress", "egress_by", "ingress", "ingress_by")

    def __init__(self, verdict: Verdict, egress: Decision, egress_by: str, ingress: Decision, ingress_by: str) -> None:
        self.verdict = verdict
        self.egress = egress
        self.egress_by = egress_by
        self.ingress = ingress
        self.ingress_by = ingress_by

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ACCEPT

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Judgement):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    def __repr__(self) -> str:
        return (
            f"Judgement({self.verdict.name}, egress={self.egress_by or 'end'}:{self.egress.policy}/{self.egress.rule}, "
            f"ingress={self.ingress_by or 'end'}:{self.ingress.policy}/{self.ingress.rule})"
        )


@dataclass(frozen=True, slots=True)
class Step:
    evaluator: str
    decision: Decision


@dataclass(frozen=True, slots=True)
class Explanation:
    """Every evaluator's answer in both pipelines, for `kube-netpol explain`."""

    packet: Packet
    src: PodInfo | None
    dst: PodInfo | None
    egress_steps: tuple[Step, ...]
    ingress_steps: tuple[Step, ...]
    judgement: Judgement


class PolicyEngine:
    def __init__(
        self,
        provider: PodInfoProvider,
        evaluators: Sequence[PolicyEvaluator],
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        self._provider = provider
        self._evaluators = tuple(evaluators)
        self._cache_size = cache_size
        self._cache: dict[tuple[bytes, bytes, int, int], Judgement] = {}
        self._listeners: list[Callable[[], None]] = []
        self.cache_hits = 0
        self.cache_misses = 0
        for evaluator in self._evaluators:
            evaluator.set_sync_callback(self.invalidate)
        subscribe = getattr(provider, "subscribe", None)
        if callable(subscribe):
            # Pod changes alter what the provider answers even for evaluators that ignore pods.
            subscribe(lambda _change: self.invalidate())

    @property
    def evaluators(self) -> tuple[PolicyEvaluator, ...]:
        return self._evaluators

    def add_sync_listener(self, listener: Callable[[], None]) -> None:
        """``listener()`` runs whenever an evaluator reports a change (e.g. to resync the dataplane)."""
        self._listeners.append(listener)

    def invalidate(self) -> None:
        # Swap rather than clear: an evaluation racing with this call stores its
        # (possibly stale) result into the old dict, which nobody reads any more.
        self._cache = {}
        for listener in self._listeners:
            listener()

    def ready(self) -> bool:
        return all(evaluator.ready() for evaluator in self._evaluators)

    def managed_ips(self) -> ManagedIPs:
        ips: set[bytes] = set()
        divert_all = False
        for evaluator in self._evaluators:
            managed = evaluator.managed_ips()
            ips.update(managed.ips)
            divert_all = divert_all or managed.divert_all
        return ManagedIPs(frozenset(ips), divert_all)

    def evaluate(self, packet: Packet) -> Judgement:
        """The verdict for one packet; cached per (src, dst, protocol, destination port)."""
        cache = self._cache
        key = (packet.src, packet.dst, packet.protocol, packet.dst_port)
        judgement = cache.get(key)
        if judgement is not None:
            self.cache_hits += 1
            return judgement
        self.cache_misses += 1
        judgement = self.evaluate_uncached(packet)
        if len(cache) >= self._cache_size:
            cache.clear()
        cache[key] = judgement
        return judgement

    def evaluate_uncached(self, packet: Packet) -> Judgement:
        """Run both pipelines for one packet, bypassing the verdict cache."""
        src = self._provider.pod_info_by_ip(packet.src)
        dst = self._provider.pod_info_by_ip(packet.dst)
        egress, egress_by = END_OF_PIPELINE, ""
        for evaluator in self._evaluators:
            decision = evaluator.evaluate_egress(packet, src, dst)
            if decision.verdict:
                egress, egress_by = decision, evaluator.name
                break
        ingress, ingress_by = END_OF_PIPELINE, ""
        for evaluator in self._evaluators:
            decision = evaluator.evaluate_ingress(packet, src, dst)
            if decision.verdict:
                ingress, ingress_by = decision, evaluator.name
                break
        verdict = ACCEPT if egress.verdict is ACCEPT and ingress.verdict is ACCEPT else DENY
        return Judgement(verdict, egress, egress_by, ingress, ingress_by)

    def explain(self, packet: Packet) -> Explanation:
        """Walk both pipelines uncached, keeping every answer up to the deciding one."""
        src = self._provider.pod_info_by_ip(packet.src)
        dst = self._provider.pod_info_by_ip(packet.dst)
        egress_steps = _walk_pipeline([(e.name, e.evaluate_egress) for e in self._evaluators], packet, src, dst)
        ingress_steps = _walk_pipeline([(e.name, e.evaluate_ingress) for e in self._evaluators], packet, src, dst)
        egress, egress_by = _first_final(egress_steps)
        ingress, ingress_by = _first_final(ingress_steps)
        verdict = (
            Verdict.ACCEPT
            if egress.verdict is Verdict.ACCEPT and ingress.verdict is Verdict.ACCEPT
            else Verdict.DENY
        )
        return Explanation(
            packet, src, dst, egress_steps, ingress_steps, Judgement(verdict, egress, egress_by, ingress, ingress_by)
        )


def _walk_pipeline(
    stages: Sequence[tuple[str, Callable[[Packet, PodInfo | None, PodInfo | None], Decision]]],
    packet: Packet,
    src: PodInfo | None,
    dst: PodInfo | None,
) -> tuple[Step, ...]:
    steps: list[Step] = []
    for name, evaluate in stages:
        steps.append(Step(name, evaluate(packet, src, dst)))
        if steps[-1].decision.verdict:
            break
    return tuple(steps)


def _first_final(steps: Sequence[Step]) -> tuple[Decision, str]:
    for step in steps:
        if step.decision.verdict:
            return step.decision, step.evaluator
    return END_OF_PIPELINE, ""
