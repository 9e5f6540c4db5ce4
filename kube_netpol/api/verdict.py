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

    ``lifetime`` says how long the answer may be reused for other packets of
    the same flow key (source and destination address, protocol, destination
    port) without asking the evaluator again, in the agent's flow table and
    in the kernel's verdict memory:

    - ``None``: until the next snapshot (the answer depends only on the flow
      key and on the cluster state the evaluator was given in ``update``);
    - ``0``: never; every new connection of the key is asked again;
    - ``> 0``: at most that many seconds (e.g. a DNS answer's TTL).

    It counts for NEXT answers too: an evaluator that said NEXT because it
    does not know an address yet bounds how long the later evaluators'
    verdict is reused. A key's verdict lives as long as the shortest lifetime
    of the answers that produced it. An evaluator loaded from outside
    kube_netpol that leaves ``lifetime`` None is reused in the agent's flow
    table but not kept in the kernel's verdict memory: it opts in there by
    setting a lifetime explicitly (docs/development.md, "The plugin contract").
    """

    verdict: Verdict
    policy: str = ""
    rule: str = ""
    reason: str = ""
    lifetime: float | None = None


#: The answer of an evaluator that has nothing to say about a packet.
NEXT = Decision(Verdict.NEXT)
