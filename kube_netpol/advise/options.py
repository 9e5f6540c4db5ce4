"""What a proposal may be tuned by: which workloads get a policy, the cluster's DNS and ingress
controllers, address aggregation."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from kube_netpol.advise.model import NetworkPeer, Port, Selector, Workload

#: The common ingress controllers' ``app.kubernetes.io/name`` values.
INGRESS_CONTROLLER_NAMES = ("contour", "envoy-gateway", "haproxy-ingress", "ingress-nginx", "kong", "traefik")
DEFAULT_INGRESS_SELECTOR = Selector(match_expressions=(("app.kubernetes.io/name", "In", INGRESS_CONTROLLER_NAMES),))
DEFAULT_DNS_SELECTOR = Selector.of_labels({"k8s-app": "kube-dns"})
DNS_PORTS = (Port("UDP", 53), Port("TCP", 53))
#: Namespaces of the platform itself: their workloads are peers, never subjects, unless named.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})


@dataclass(frozen=True)
class WorkloadFilter:
    """Which workloads get a policy: those of ``namespaces`` (None: all but the system ones) and, when
    ``names`` is given, only those (each ``(namespace or None, kind or None, name)``)."""

    namespaces: frozenset[str] | None = None
    names: tuple[tuple[str | None, str | None, str], ...] = ()

    @staticmethod
    def parse_workload(text: str) -> tuple[str | None, str | None, str]:
        """``NAME``, ``KIND/NAME`` or ``NAMESPACE/KIND/NAME`` (kind case-insensitive); ValueError."""
        parts = text.split("/")
        if not all(parts) or len(parts) > 3:
            raise ValueError(f"invalid workload {text!r} (expected NAME, KIND/NAME or NAMESPACE/KIND/NAME)")
        if len(parts) == 1:
            return (None, None, parts[0])
        if len(parts) == 2:
            return (None, parts[0].lower(), parts[1])
        return (parts[0], parts[1].lower(), parts[2])

    def named(self, workload: Workload) -> bool:
        """Named explicitly by ``names``."""
        return any((ns is None or ns == workload.namespace) and (kind is None or kind == workload.kind.lower())
                   and name == workload.name for ns, kind, name in self.names)

    def left_as_system(self, workload: Workload) -> bool:
        """Left out only because it runs in a system namespace (worth saying: it may surprise)."""
        return (not self.names and self.namespaces is None and workload.namespace in SYSTEM_NAMESPACES)

    def wants(self, workload: Workload) -> bool:
        if self.names and not self.named(workload):
            return False
        if self.namespaces is not None:
            return workload.namespace in self.namespaces
        return workload.namespace not in SYSTEM_NAMESPACES or self.named(workload)


@dataclass(frozen=True)
class AdviseOptions:
    filter: WorkloadFilter = field(default_factory=WorkloadFilter)
    dns_namespace: str = "kube-system"
    dns_selector: Selector = DEFAULT_DNS_SELECTOR
    ingress_controller_selector: Selector = DEFAULT_INGRESS_SELECTOR
    cluster_domain: str = "cluster.local"
    #: Widen addresses that are not pods to their network of this prefix length (None: keep /32, /128).
    aggregate_v4: int | None = None
    aggregate_v6: int | None = None

    def network_peer(self, ip: str) -> NetworkPeer:
        address = ipaddress.ip_address(ip)
        prefix = self.aggregate_v4 if address.version == 4 else self.aggregate_v6
        if prefix is None:
            prefix = address.max_prefixlen
        return NetworkPeer(str(ipaddress.ip_network(f"{address}/{prefix}", strict=False)))


DEFAULT_OPTIONS = AdviseOptions()
