"""What the advise tests share: Kubernetes objects, and decision records made by the agent's own
record writer over a cluster judged by the agent's own engine (as an agent in audit mode writes them)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Iterable, Mapping, Sequence

from kube_netpol.api.packet import Packet
from kube_netpol.observability.decisions import decision_record
from kube_netpol.plugins import build_engine


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def owner_reference(owner: str) -> list[dict[str, Any]]:
    kind, name = owner.split("/")
    api = {"ReplicaSet": "apps/v1", "StatefulSet": "apps/v1", "DaemonSet": "apps/v1", "Deployment": "apps/v1",
           "Job": "batch/v1", "CronJob": "batch/v1"}.get(kind, "example.com/v1")
    return [{"apiVersion": api, "kind": kind, "name": name, "uid": f"uid-{name}", "controller": True,
             "blockOwnerDeletion": True}]


def pod(key: str, ip: str | Sequence[str], labels: Mapping[str, str] | None = None, owner: str = "",
        ports: Iterable[tuple[str, int, str]] = (), node: str = "node-1") -> dict[str, Any]:
    ns, name = key.split("/")
    ips = [ip] if isinstance(ip, str) else list(ip)
    meta: dict[str, Any] = {"namespace": ns, "name": name, "labels": dict(labels or {})}
    if owner:
        meta["ownerReferences"] = owner_reference(owner)
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"nodeName": node, "containers": [{"name": "main", "ports": [
            {"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]}]},
        "status": {"phase": "Running", "podIP": ips[0], "podIPs": [{"ip": i} for i in ips]},
    }  # fmt: skip


def observe_everything(namespaces: Iterable[str]) -> list[dict[str, Any]]:
    """A policy per namespace that selects every pod both ways: its connections are judged and recorded
    (in audit mode they all pass)."""
    return [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": "observe", "namespace": ns},
             "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}} for ns in namespaces]


class Recorder:
    """Decision records of connections in a cluster, as an agent in audit mode writes them."""

    def __init__(self, objects: Iterable[Mapping[str, Any]], audit: bool = True) -> None:
        self.engine = build_engine()
        self.state = self.engine.state
        for obj in sorted(objects, key=lambda o: 0 if o["kind"] == "Namespace" else 1):
            assert self.state.apply(obj), obj
        self.engine.publish()
        self.audit = audit
        self.records: list[dict[str, Any]] = []
        self._clock = 1_700_000_000.0

    def address(self, end: str) -> str:
        if "/" not in end:
            return end
        record = self.state.pod(tuple(end.split("/")))  # type: ignore[arg-type]
        assert record is not None, end
        return str(ipaddress.ip_address(record.ips[0]))

    def connect(self, src: str, dst: str, port: int, protocol: str = "TCP") -> dict[str, Any]:
        packet = Packet.from_strings(self.address(src), self.address(dst), protocol, port, src_port=40000)
        judgement = self.engine.evaluate(packet)
        self._clock += 1.0
        record = decision_record(self._clock, packet, judgement, self.audit or judgement.allowed, 1000, self.state)
        self.records.append(record)
        return record

    def ping(self, src: str, dst: str) -> dict[str, Any]:
        """An ICMP echo request (IPv4)."""
        src_ip, dst_ip = ipaddress.ip_address(self.address(src)), ipaddress.ip_address(self.address(dst))
        packet = Packet(4, 1, src_ip.packed, dst_ip.packed, icmp_type=8, icmp_code=0)
        self._clock += 1.0
        record = decision_record(self._clock, packet, self.engine.evaluate(packet), True, 1000, self.state)
        self.records.append(record)
        return record

    def lines(self) -> list[str]:
        return [json.dumps(r) for r in self.records]
