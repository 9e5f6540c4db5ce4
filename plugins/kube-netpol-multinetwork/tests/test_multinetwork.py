"""Each rule of MultiNetworkPolicy semantics (issue 14, item 2), through the engine as the agent assembles it."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from helpers import allowed, engine, mnp, nad, namespace, np, pod  # noqa: E402

from kube_netpol.api import InvalidObject  # noqa: E402
from kube_netpol.plugins import DEFAULT_PIPELINE, build_engine, registry_for  # noqa: E402
from kube_netpol_multinetwork import create, network_plugins_setting, parse_policy_for  # noqa: E402
from kube_netpol_multinetwork.kinds import parse_multi_network_policy, parse_network_attachment  # noqa: E402
from kube_netpol_multinetwork.status import StatusError, parse_network_status  # noqa: E402
from kube_netpol.api import EvaluatorContext  # noqa: E402

NET1, NET2 = "default/net1", "default/net2"
XA1, XB1, YA1 = "10.101.1.10", "10.101.1.11", "10.101.2.10"
XA2, YA2 = "10.102.1.10", "10.102.2.10"
XA, XB, YA, XC = "10.244.1.10", "10.244.1.11", "10.244.2.10", "10.244.1.12"
DENY_ALL_INGRESS = {"podSelector": {}, "policyTypes": ["Ingress"]}


def cluster(*extra, net1_type="macvlan", settings=None):  # type: ignore[no-untyped-def]
    return engine([
        namespace("default"), namespace("x", ns="x"), namespace("y", ns="y"),
        nad("net1", net1_type), nad("net2"),
        pod("x", "a", XA, networks={NET1: XA1, NET2: XA2}),
        pod("x", "b", XB, networks={NET1: XB1}),
        pod("y", "a", YA, networks={NET1: YA1, NET2: YA2}),
        pod("x", "c", XC),
        *extra,
    ], settings)


# ------------------------------------------------------------------ policy-for


def test_policy_for_is_comma_separated_stripped_and_namespaced() -> None:
    assert parse_policy_for(" net1 , other/net2,net1,, ", "x") == ("x/net1", "other/net2")
    assert parse_policy_for("", "x") == ()
    with pytest.raises(InvalidObject, match="neither"):
        parse_policy_for("a/b/c", "x")
    parsed = parse_multi_network_policy(mnp("x", "p", DENY_ALL_INGRESS, "default/net1,net3"))
    assert parsed.networks == ("default/net1", "x/net3")


def test_a_bare_network_name_is_in_the_policys_namespace() -> None:
    # "net1" in namespace x is x/net1, which has no definition: default/net1 stays open.
    built = cluster(mnp("x", "deny", DENY_ALL_INGRESS, "net1"))
    assert allowed(built, NET1, YA1, XA1)
    built = cluster(mnp("default", "deny", DENY_ALL_INGRESS, "net1"))
    assert allowed(built, NET1, YA1, XA1)  # selects pods of namespace default only; none attached
    built = cluster(mnp("x", "deny", DENY_ALL_INGRESS, "default/net1"))
    assert not allowed(built, NET1, YA1, XA1)


def test_a_policy_without_policy_for_is_ignored_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        built = cluster(mnp("x", "deny", DENY_ALL_INGRESS, None))
    assert allowed(built, NET1, YA1, XA1) and allowed(built, NET2, YA2, XA2)
    assert any("x/deny has no k8s.v1.cni.cncf.io/policy-for" in r.getMessage() for r in caplog.records)


# ------------------------------------------------------ where a policy applies


def test_a_policy_applies_only_on_the_networks_it_lists() -> None:
    built = cluster(mnp("x", "deny", DENY_ALL_INGRESS, NET1))
    assert not allowed(built, NET1, YA1, XA1)
    assert allowed(built, NET2, YA2, XA2)


def test_multinetworkpolicy_never_applies_to_the_cluster_network() -> None:
    built = cluster(mnp("x", "deny", DENY_ALL_INGRESS, NET1))
    assert allowed(built, "", YA, XA)


def test_networkpolicy_never_applies_to_a_secondary_network() -> None:
    built = cluster(np("x", "deny", DENY_ALL_INGRESS))
    assert not allowed(built, "", YA, XA)
    assert allowed(built, NET1, YA1, XA1)


def test_networkpolicy_and_multinetworkpolicy_on_the_same_pods() -> None:
    allow_y = {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}
    built = cluster(np("x", "deny", DENY_ALL_INGRESS), mnp("x", "from-y", allow_y, NET1))
    assert not allowed(built, "", YA, XA)  # the NetworkPolicy, on the cluster network
    assert allowed(built, NET1, YA1, XA1)  # the MultiNetworkPolicy admits y on net1
    assert not allowed(built, NET1, XB1, XA1)


# ------------------------------------------------------------- network types


def test_only_listed_plugin_types_count() -> None:
    built = cluster(mnp("x", "deny", DENY_ALL_INGRESS, NET1), net1_type="bridge")
    assert allowed(built, NET1, YA1, XA1)  # bridge is not in the default list
    built = cluster(mnp("x", "deny", DENY_ALL_INGRESS, NET1), net1_type="bridge",
                    settings={"network-plugins": "macvlan, bridge"})
    assert not allowed(built, NET1, YA1, XA1)


def test_the_default_plugin_types_and_the_setting() -> None:
    assert create(EvaluatorContext()).network_plugins == {"macvlan", "ipvlan", "sriov"}
    assert network_plugins_setting(["bridge", " macvlan "]) == ("bridge", "macvlan")
    with pytest.raises(ValueError, match="names no CNI plugin type"):
        network_plugins_setting(" , ")
    with pytest.raises(ValueError, match="unknown setting"):
        create(EvaluatorContext(settings={"plugins": "x"}))


def test_a_conflists_type_is_its_first_plugins() -> None:
    assert parse_network_attachment(nad("n", "ipvlan", conflist=True)).plugin_type == "ipvlan"
    assert parse_network_attachment({"metadata": {"name": "n", "namespace": "d"}, "spec": {}}).plugin_type == ""
    with pytest.raises(InvalidObject, match="not JSON"):
        parse_network_attachment({"metadata": {"name": "n", "namespace": "d"}, "spec": {"config": "{"}})


def test_a_network_without_a_definition_enforces_nothing_until_it_appears() -> None:
    built = engine([namespace("default"), namespace("x", ns="x"), namespace("y", ns="y"),
                    pod("x", "a", XA, networks={NET1: XA1}), pod("y", "a", YA, networks={NET1: YA1}),
                    mnp("x", "deny", DENY_ALL_INGRESS, NET1)])
    assert allowed(built, NET1, YA1, XA1)
    built.state.apply(nad("net1"))
    built.publish()
    assert not allowed(built, NET1, YA1, XA1)
    built.state.apply(nad("net1", "bridge"))  # its type changes to one not counted
    built.publish()
    assert allowed(built, NET1, YA1, XA1)


# ------------------------------------------------------------------- peers


def test_pod_peers_resolve_to_their_addresses_on_the_same_network() -> None:
    allow_y = {"podSelector": {}, "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}
    built = cluster(mnp("x", "from-y", allow_y, NET1))
    assert allowed(built, NET1, YA1, XA1)
    assert not allowed(built, NET1, YA2, XA1)  # y/a's net2 address is not y/a on net1
    assert not allowed(built, NET1, YA, XA1)  # nor its cluster address


def test_a_pod_not_attached_to_the_network_is_not_a_pod_there() -> None:
    allow_c = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "c"}}}]}]}
    built = cluster(mnp("x", "from-c", allow_c, NET1))
    assert not allowed(built, NET1, XC, XA1)


def test_a_pod_selector_without_namespace_selector_is_the_policys_namespace() -> None:
    # multi-networkpolicy-iptables matches every namespace here; the API says the policy's own.
    allow_a = {"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}
    built = cluster(mnp("x", "from-b", allow_a, NET1), pod("y", "b", "10.244.2.11", networks={NET1: "10.101.2.11"}))
    assert allowed(built, NET1, XB1, XA1)
    assert not allowed(built, NET1, "10.101.2.11", XA1)


def test_match_expressions_ip_block_except_ports_and_end_port() -> None:
    spec = {"podSelector": {"matchExpressions": [{"key": "pod", "operator": "In", "values": ["a"]}]},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.101.0.0/16", "except": ["10.101.2.0/24"]}}],
                         "ports": [{"protocol": "TCP", "port": 80, "endPort": 82}]}]}
    built = cluster(mnp("x", "p", spec, NET1))
    assert allowed(built, NET1, XB1, XA1, 81)
    assert not allowed(built, NET1, XB1, XA1, 83)
    assert not allowed(built, NET1, YA1, XA1, 80)  # excepted: denied as unmatched, not a hard drop elsewhere
    assert allowed(built, NET1, XA1, XB1, 80)  # x/b is not selected


def test_named_ports_resolve_on_the_receiving_pod() -> None:
    target = pod("x", "d", "10.244.1.13", networks={NET1: "10.101.1.13"})
    target["spec"]["containers"][0]["ports"] = [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    spec = {"podSelector": {"matchLabels": {"pod": "d"}}, "ingress": [{"ports": [{"port": "http"}]}]}
    built = cluster(target, mnp("x", "p", spec, NET1))
    assert allowed(built, NET1, XB1, "10.101.1.13", 8080)
    assert not allowed(built, NET1, XB1, "10.101.1.13", 80)


def test_policy_types_defaults_as_networkpolicy() -> None:
    egress_only_rules = {"podSelector": {"matchLabels": {"pod": "a"}},
                         "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}]}
    built = cluster(mnp("x", "p", egress_only_rules, NET1))
    assert not allowed(built, NET1, XB1, XA1)  # Ingress isolated (the default), no ingress rule
    assert allowed(built, NET1, XA1, YA1)
    assert not allowed(built, NET1, XA1, XB1)  # Egress too: egress rules present


def test_ipv6_on_a_secondary_network() -> None:
    built = engine([namespace("default"), namespace("x", ns="x"), nad("net1"),
                    pod("x", "a", XA, networks={NET1: "fd00:101:1::10"}),
                    pod("x", "b", XB, networks={NET1: "fd00:101:1::11"}),
                    mnp("x", "p", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}, NET1)])
    assert not allowed(built, NET1, "fd00:101:1::11", "fd00:101:1::10")
    assert allowed(built, NET1, "fd00:101:1::10", "fd00:101:1::11")


# -------------------------------------------------------------- incremental


def test_new_pods_and_relabels_update_existing_policies() -> None:
    # The upstream implementation does not update existing pods' rules when pods arrive; we must.
    allow_b = {"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]}
    built = cluster(mnp("x", "p", allow_b, NET1))
    assert not allowed(built, NET1, "10.101.1.20", XA1)
    built.state.apply(pod("x", "new", "10.244.1.20", {"role": "client"}, {NET1: "10.101.1.20"}))
    built.publish()
    assert allowed(built, NET1, "10.101.1.20", XA1)
    built.state.apply(pod("x", "new", "10.244.1.20", {"role": "other"}, {NET1: "10.101.1.20"}))
    built.publish()
    assert not allowed(built, NET1, "10.101.1.20", XA1)
    built.state.delete("MultiNetworkPolicy", "x", "p")
    built.publish()
    assert allowed(built, NET1, "10.101.1.20", XA1)


def test_diverted_interfaces_are_the_selected_pods_on_counted_networks() -> None:
    built = cluster(mnp("x", "p", {"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"]}, NET1))
    assert built.snapshot.network_attachments() == {("x", "a"): (("net1", NET1),)}
    built.state.apply(pod("x", "b", XB, {"pod": "a"}, {NET1: XB1}))  # relabelled into the selection
    built.publish()
    assert built.snapshot.network_attachments() == {("x", "a"): (("net1", NET1),), ("x", "b"): (("net1", NET1),)}
    built.state.delete("MultiNetworkPolicy", "x", "p")
    built.publish()
    assert built.snapshot.network_attachments() == {}


# -------------------------------------------------------------- bad input


def test_a_bad_network_status_is_a_pod_without_attachments(caplog: pytest.LogCaptureFixture) -> None:
    broken = pod("x", "z", "10.244.1.30", networks={NET1: "10.101.1.30"})
    broken["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"] = "[{"
    allow_all_from_x = {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}
    with caplog.at_level(logging.WARNING):
        built = cluster(broken, mnp("x", "p", allow_all_from_x, NET1))
    assert not allowed(built, NET1, "10.101.1.30", XA1)
    assert any("cannot read its k8s.v1.cni.cncf.io/network-status" in r.getMessage() for r in caplog.records)
    with pytest.raises(StatusError):
        parse_network_status('[{"name": 3}]', "x")


def test_an_invalid_spec_is_refused_like_a_networkpolicys() -> None:
    built = cluster()
    assert not built.state.apply(mnp("x", "bad", {"podSelector": {}, "policyTypes": ["Sideways"]}, NET1))


# --------------------------------------------------------- without the plugin


def test_the_agent_without_the_plugin_ignores_these_kinds() -> None:
    registry = registry_for(DEFAULT_PIPELINE)
    assert "MultiNetworkPolicy" not in registry and "NetworkAttachmentDefinition" not in registry
    built = build_engine(DEFAULT_PIPELINE)
    assert not built.state.apply(mnp("x", "deny", DENY_ALL_INGRESS, NET1))
    assert not built.state.apply(nad("net1"))
    with_plugin = registry_for((*DEFAULT_PIPELINE, "multinetwork"))
    assert with_plugin["MultiNetworkPolicy"].path == "/apis/k8s.cni.cncf.io/v1beta1/multi-networkpolicies"
    assert with_plugin["NetworkAttachmentDefinition"].path == "/apis/k8s.cni.cncf.io/v1/network-attachment-definitions"
