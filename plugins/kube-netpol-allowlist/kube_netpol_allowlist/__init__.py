"""An allow-list evaluator: accept traffic whose peer address is in configured CIDRs."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from kube_netpol.api import (
    Decision,
    EvaluatorContext,
    ManagedIPs,
    NEXT,
    Packet,
    PodInfo,
    SyncCallback,
    Verdict,
)

__all__ = ["AllowListEvaluator", "create"]


class AllowListEvaluator:
    name = "allowlist"

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
        self._decisions = {
            "egress": Decision(Verdict.ACCEPT, policy="allowlist", rule="destination in allow-list"),
            "ingress": Decision(Verdict.ACCEPT, policy="allowlist", rule="source in allow-list"),
        }

    def _listed(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        return any(first <= value <= last for first, last in self._ranges[len(address)])

    def ready(self) -> bool:
        return True

    def evaluate_egress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision:
        return self._decisions["egress"] if self._listed(packet.dst) else NEXT

    def evaluate_ingress(self, packet: Packet, src: PodInfo | None, dst: PodInfo | None) -> Decision:
        return self._decisions["ingress"] if self._listed(packet.src) else NEXT

    def managed_ips(self) -> ManagedIPs:
        # It only ever accepts, so it never needs traffic diverted for its own sake.
        return ManagedIPs()

    def set_sync_callback(self, callback: SyncCallback) -> None:
        # The list is fixed at start-up; nothing ever changes.
        pass


def create(context: EvaluatorContext) -> AllowListEvaluator:
    cidrs = context.settings.get("cidrs", [])
    if not isinstance(cidrs, list):
        raise ValueError("allowlist: setting 'cidrs' must be a list of CIDR strings")
    return AllowListEvaluator(cidrs)
