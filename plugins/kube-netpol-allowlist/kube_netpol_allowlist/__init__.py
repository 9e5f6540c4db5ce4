"""An allow-list evaluator: accept traffic whose peer address is in configured CIDRs."""

from __future__ import annotations

import ipaddress
from typing import Iterable, Sequence

from kube_netpol.api import (
    NEXT,
    Change,
    ClusterView,
    Decision,
    EvaluatorContext,
    KindSpec,
    Packet,
    PodRecord,
    Update,
    Verdict,
)

__all__ = ["AllowListEvaluator", "AllowListStage", "create"]


class AllowListStage:
    """Accepts a direction when the peer's address is listed; the list never changes."""

    def __init__(self, cidrs: Iterable[str]) -> None:
        networks = []
        for text in cidrs:
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
            except (TypeError, ValueError) as err:
                raise ValueError(f"allowlist: invalid CIDR {text!r}: {err}") from None
        # (first, last) integer ranges per address length: testing packed bytes stays cheap.
        self._ranges: dict[int, tuple[tuple[int, int], ...]] = {
            length: tuple(
                (int(n.network_address), int(n.broadcast_address))
                for n in networks
                if n.max_prefixlen == length * 8
            )
            for length in (4, 16)
        }
        self._egress = Decision(Verdict.ACCEPT, policy="allowlist", rule="destination in allow-list")
        self._ingress = Decision(Verdict.ACCEPT, policy="allowlist", rule="source in allow-list")

    def _listed(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        return any(first <= value <= last for first, last in self._ranges[len(address)])

    def evaluate_egress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        return self._egress if self._listed(packet.dst) else NEXT

    def evaluate_ingress(self, packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> Decision:
        return self._ingress if self._listed(packet.src) else NEXT


class AllowListEvaluator:
    name = "allowlist"
    kinds: tuple[KindSpec, ...] = ()  # it reads no objects
    pod_annotations: tuple[str, ...] = ()

    def __init__(self, cidrs: Iterable[str]) -> None:
        self._stage = AllowListStage(cidrs)

    def ready(self) -> bool:
        return True

    def update(self, view: ClusterView, changes: Sequence[Change[object]]) -> Update:
        # The list is fixed at start-up: the same stage, and it selects no pod (it only ever
        # accepts, so it never needs traffic diverted for its own sake).
        return Update(self._stage)


def create(context: EvaluatorContext) -> AllowListEvaluator:
    cidrs = context.settings.get("cidrs", [])
    if not isinstance(cidrs, list):
        raise ValueError("allowlist: setting 'cidrs' must be a list of CIDR strings")
    return AllowListEvaluator(cidrs)
