"""What an evaluator answers for one direction of one packet."""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Verdict(enum.IntEnum):
    """ACCEPT and DENY are final for a direction; NEXT asks the next evaluator."""

    NEXT = 0
    ACCEPT = 1
    DENY = 2


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict plus what produced it, for logs and `kube-netpol explain`.

    Evaluators build their Decisions when policies change and return the same
    objects for every packet, so the hot path allocates nothing.
    ``policy`` names the object as users write it (``namespace/name`` for
    namespaced kinds, ``name`` for cluster-scoped ones); ``rule`` names the rule
    (its ``name`` for admin policies, ``ingress[0]``-style for NetworkPolicy).
    """

    verdict: Verdict
    policy: str = ""
    rule: str = ""
    reason: str = ""


#: The answer of an evaluator that has nothing to say about a packet.
NEXT = Decision(Verdict.NEXT)
