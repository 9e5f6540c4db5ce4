"""The allow-list plugin, found through its entry point and run by the real engine."""

from __future__ import annotations

import ipaddress

import pytest

from typing import Any, Mapping, Sequence

from kube_netpol.api import EvaluatorContext, Packet, Verdict
from kube_netpol.engine import PolicyEngine
from kube_netpol.plugins import DEFAULT_PIPELINE, PluginError, available_evaluators, build_engine
from kube_netpol_allowlist import create


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


Cluster = list[dict[str, Any]]


@pytest.fixture
def state() -> Cluster:
    state: Cluster = []
    state.append({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    state.append({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "x", "name": "a", "labels": {"app": "a"}},
        "spec": {}, "status": {"podIPs": [{"ip": "10.244.1.10"}, {"ip": "fd00:10:244:1::10"}]},
    })
    # Isolate x/a in both directions: without the plugin nothing reaches it or leaves it.
    state.append({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"namespace": "x", "name": "deny-all"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]},
    })
    return state


def engine_over(
    objects: Cluster, names: Sequence[str], settings: Mapping[str, Mapping[str, object]] | None = None
) -> PolicyEngine:
    """The engine as the agent assembles it, with ``objects`` in its state and published."""
    engine = build_engine(names, settings)
    for obj in objects:
        assert engine.state.apply(obj)  # type: ignore[attr-defined]
    engine.publish()
    return engine


def test_registered_through_the_entry_point_group() -> None:
    assert available_evaluators()["allowlist"].value == "kube_netpol_allowlist:create"


def test_engine_accepts_listed_peers_and_the_pipeline_decides_the_rest(state: Cluster) -> None:
    engine = engine_over(
        state,
        ("allowlist", *DEFAULT_PIPELINE),
        {"allowlist": {"cidrs": ["192.168.50.0/24", "fd00:99::/64"]}},
    )
    listed_in = engine.evaluate(Packet(4, 6, packed("192.168.50.7"), packed("10.244.1.10"), 40000, 80))
    assert listed_in.allowed and listed_in.ingress_by == "allowlist"
    listed_out = engine.evaluate(Packet(6, 17, packed("fd00:10:244:1::10"), packed("fd00:99::1"), 40000, 53))
    assert listed_out.allowed and listed_out.egress_by == "allowlist"
    other = engine.evaluate(Packet(4, 6, packed("192.168.51.7"), packed("10.244.1.10"), 40000, 80))
    assert not other.allowed and other.ingress_by == "networkpolicy"
    assert other.ingress.verdict is Verdict.DENY


def test_order_matters_after_the_network_policy_it_is_never_asked(state: Cluster) -> None:
    engine = engine_over(state, (*DEFAULT_PIPELINE, "allowlist"), {"allowlist": {"cidrs": ["192.168.50.0/24"]}})
    assert not engine.evaluate(Packet(4, 6, packed("192.168.50.7"), packed("10.244.1.10"), 40000, 80)).allowed


def test_bad_configuration_is_a_clear_error() -> None:
    with pytest.raises(PluginError, match="invalid CIDR 'nope'"):
        build_engine(("allowlist",), {"allowlist": {"cidrs": ["nope"]}})
    with pytest.raises(ValueError, match="must be a list"):
        create(EvaluatorContext(settings={"cidrs": "10.0.0.0/8"}))
