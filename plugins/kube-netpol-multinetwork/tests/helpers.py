"""Objects and an engine for the plugin's tests (the engine as the agent assembles it)."""

from __future__ import annotations

import ipaddress
import json
from typing import Any, Iterable

from kube_netpol.api import Packet
from kube_netpol.plugins import build_engine

PIPELINE = ("adminnetworkpolicy", "networkpolicy", "baselineadminnetworkpolicy", "multinetwork")


def engine(objects: Iterable[dict[str, Any]] = (), settings: dict[str, Any] | None = None):  # type: ignore[no-untyped-def]
    built = build_engine(PIPELINE, {"multinetwork": settings or {}})
    for obj in objects:
        assert built.state.apply(obj), obj
    built.publish()
    return built


def namespace(name: str, **labels: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name, **labels}}}


def nad(name: str, plugin_type: str = "macvlan", ns: str = "default", conflist: bool = False) -> dict[str, Any]:
    config = {"cniVersion": "0.4.0", "type": plugin_type} if not conflist else {
        "cniVersion": "0.4.0", "name": name, "plugins": [{"type": plugin_type}, {"type": "tuning"}]}
    return {"apiVersion": "k8s.cni.cncf.io/v1", "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": name, "namespace": ns}, "spec": {"config": json.dumps(config)}}


def pod(ns: str, name: str, ip: str, labels: dict[str, str] | None = None,
        networks: dict[str, str] | None = None) -> dict[str, Any]:
    """``networks``: network key -> the pod's address on it (interfaces net1, net2... in order)."""
    status = [{"name": "cluster-network", "interface": "eth0", "ips": [ip], "default": True}]
    for i, (network, address) in enumerate((networks or {}).items(), start=1):
        status.append({"name": network, "interface": f"net{i}", "ips": [address]})
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns, "labels": labels or {"pod": name},
                         "annotations": {"k8s.v1.cni.cncf.io/network-status": json.dumps(status)}},
            "spec": {"containers": [{"name": "c", "image": "x"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


def mnp(ns: str, name: str, spec: dict[str, Any], policy_for: str | None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": ns}
    if policy_for is not None:
        meta["annotations"] = {"k8s.v1.cni.cncf.io/policy-for": policy_for}
    return {"apiVersion": "k8s.cni.cncf.io/v1beta1", "kind": "MultiNetworkPolicy", "metadata": meta, "spec": spec}


def np(ns: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": ns}, "spec": spec}


def packet(src: str, dst: str, port: int = 80, protocol: str = "TCP") -> Packet:
    assert ipaddress.ip_address(src).version == ipaddress.ip_address(dst).version
    return Packet.from_strings(src, dst, protocol, port, 40000)


def allowed(built, network: str, src: str, dst: str, port: int = 80, protocol: str = "TCP") -> bool:  # type: ignore[no-untyped-def]
    """On a secondary network (``network`` "" for the cluster network)."""
    p = packet(src, dst, port, protocol)
    judgement = built.snapshot.judge_on(network, p) if network else built.snapshot.judge(p)
    return bool(judgement.allowed)
