"""What the engine answers for one packet, and the step-by-step walk `explain` shows."""

from __future__ import annotations

from dataclasses import dataclass

from kube_netpol.api.cluster import PodRecord
from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import Decision, Verdict

#: What a direction gets when every evaluator said NEXT.
END_OF_PIPELINE = Decision(Verdict.ACCEPT, reason="no evaluator decided; the end of the pipeline accepts")


class Judgement:
    """The engine's answer for one packet; ``*_by`` names the deciding evaluator ("" at end of pipeline).

    A plain slotted class: one is built per judged packet, and a frozen
    dataclass's constructor costs several times more. Treat it as immutable.

    ``lifetime`` is the shortest ``Decision.lifetime`` of every answer the
    pipelines gave for the packet (None: until the next snapshot); ``kernel``
    is False when an answer may not be kept in the kernel's verdict memory
    (an evaluator from outside kube_netpol that gave no lifetime).
    """

    __slots__ = ("verdict", "egress", "egress_by", "ingress", "ingress_by", "lifetime", "kernel")

    def __init__(
        self, verdict: Verdict, egress: Decision, egress_by: str, ingress: Decision, ingress_by: str,
        lifetime: float | None = None, kernel: bool = True,
    ) -> None:
        self.verdict = verdict
        self.egress = egress
        self.egress_by = egress_by
        self.ingress = ingress
        self.ingress_by = ingress_by
        self.lifetime = lifetime
        self.kernel = kernel

    @property
    def allowed(self) -> bool:
        return self.verdict is Verdict.ACCEPT

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Judgement):
            return NotImplemented
        return all(getattr(self, f) == getattr(other, f) for f in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

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
    """Every evaluator's answer in both pipelines up to the deciding one, for `kube-netpol explain`."""

    packet: Packet
    src: PodRecord | None
    dst: PodRecord | None
    egress_steps: tuple[Step, ...]
    ingress_steps: tuple[Step, ...]
    judgement: Judgement
