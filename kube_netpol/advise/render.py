"""Proposals as Kubernetes objects: NetworkPolicies, or Baseline-tier ClusterNetworkPolicies, and
the YAML `kubectl apply -f` takes.

The objects are built in a fixed field order and dumped without sorting, so
the same proposals always give the same bytes.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterable, Mapping

import yaml

from kube_netpol.advise.model import NetworkPeer, Peer, PodPeer, Port, Proposal, Rule, Workload

#: Annotation naming the workload a policy was proposed for.
WORKLOAD_ANNOTATION = "kube-netpol.io/workload"
NETWORK_POLICY_API = "networking.k8s.io/v1"
CLUSTER_NETWORK_POLICY_API = "policy.networking.k8s.io/v1alpha2"
#: ClusterNetworkPolicy (v1alpha2) bounds: rules per direction, peers and protocols per rule.
CNP_MAX_RULES = 25
CNP_MAX_ITEMS = 25
_MAX_NAME = 253
_EVERY_ADDRESS = ("0.0.0.0/0", "::/0")


def policy_name(workload: Workload, cluster_scoped: bool = False) -> str:
    """``<kind>-<name>`` (``<namespace>-<kind>-<name>`` for a cluster-scoped policy), cut to the API's
    253 characters with a hash of the whole when longer."""
    parts = ([workload.namespace] if cluster_scoped else []) + [workload.kind.lower(), workload.name]
    name = "-".join(parts)
    if len(name) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{name[: _MAX_NAME - 11].rstrip('-.')}-{digest}"


def _metadata(name: str, namespace: str | None, workload: Workload, labels: Mapping[str, str],
              annotations: Mapping[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(sorted(labels.items()))
    meta["annotations"] = dict(sorted({**annotations, WORKLOAD_ANNOTATION: f"{workload.kind}/{workload.name}"}.items()))
    return meta


# ------------------------------------------------------------------------------ NetworkPolicy


def _np_peer(peer: Peer) -> dict[str, Any]:
    if isinstance(peer, NetworkPeer):
        return {"ipBlock": {"cidr": peer.cidr}}
    return {"namespaceSelector": peer.namespace_selector(), "podSelector": peer.pods.to_json()}


def _np_port(port: Port) -> dict[str, Any]:
    return {"protocol": port.protocol, "port": port.port}


def _np_rules(rules: list[Rule], peers_field: str) -> list[dict[str, Any]]:
    out = []
    for rule in rules:
        entry: dict[str, Any] = {peers_field: [_np_peer(p) for p in rule.peers]}
        if rule.ports:
            entry["ports"] = [_np_port(p) for p in rule.ports]
        out.append(entry)
    return out


def network_policy(proposal: Proposal, labels: Mapping[str, str] = {}, annotations: Mapping[str, str] = {}) -> dict[str, Any]:
    """The NetworkPolicy of one proposal: its pods isolated both ways, admitting exactly its grants."""
    workload = proposal.workload
    spec: dict[str, Any] = {
        "podSelector": proposal.selector.to_json(),
        "policyTypes": ["Ingress", "Egress"],
        "ingress": _np_rules(proposal.ingress_rules(), "from"),
        "egress": _np_rules(proposal.egress_rules(), "to"),
    }
    return {
        "apiVersion": NETWORK_POLICY_API,
        "kind": "NetworkPolicy",
        "metadata": _metadata(policy_name(workload), workload.namespace, workload, labels, annotations),
        "spec": spec,
    }


# ----------------------------------------------------------------------- ClusterNetworkPolicy


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)] or [[]]


def _cnp_pods(peer: PodPeer) -> dict[str, Any]:
    return {"pods": {"namespaceSelector": peer.namespace_selector(), "podSelector": peer.pods.to_json()}}


def _cnp_protocol(port: Port) -> dict[str, Any]:
    if isinstance(port.port, str):
        # Experimental in v1alpha2 and protocol-less: the pod's port of that name, whatever its protocol.
        return {"destinationNamedPort": port.port}
    return {port.protocol.lower(): {"destinationPort": {"number": port.port}}}


def _cnp_rules(rules: list[Rule], direction: str, notes: list[str]) -> list[dict[str, Any]]:
    peers_field = "from" if direction == "ingress" else "to"
    out: list[dict[str, Any]] = []
    for rule in rules:
        peers: list[dict[str, Any]] = []
        networks = [p.cidr for p in rule.peers if isinstance(p, NetworkPeer)]
        for peer in rule.peers:
            if isinstance(peer, PodPeer):
                peers.append(_cnp_pods(peer))
        if networks and direction == "ingress":
            notes.append(f"ingress from {', '.join(networks)} left out: v1alpha2 ingress peers are pods and "
                         "namespaces only (those addresses are not denied either)")
        elif networks:
            peers.extend({"networks": chunk} for chunk in _chunks(networks, CNP_MAX_ITEMS))
        if not peers:
            continue
        protocols = [_cnp_protocol(p) for p in rule.ports]
        for peer_chunk in _chunks(peers, CNP_MAX_ITEMS):
            for protocol_chunk in _chunks(protocols, CNP_MAX_ITEMS):
                entry: dict[str, Any] = {"name": f"accept-{len(out)}", "action": "Accept", peers_field: peer_chunk}
                if protocol_chunk:
                    entry["protocols"] = protocol_chunk
                out.append(entry)
    # Everything else is denied: pods for ingress (its only peers), every address for egress.
    last: list[dict[str, Any]] = [{"namespaces": {}}] if direction == "ingress" else [{"networks": list(_EVERY_ADDRESS)}]
    out.append({"name": "deny-the-rest", "action": "Deny", peers_field: last})
    return out


class TooManyRules(ValueError):
    """A proposal needs more rules than one ClusterNetworkPolicy holds."""


def cluster_network_policy(proposal: Proposal, priority: int, labels: Mapping[str, str] = {},
                           annotations: Mapping[str, str] = {}) -> tuple[dict[str, Any], list[str]]:
    """A Baseline-tier ClusterNetworkPolicy (v1alpha2) for one proposal, and what it could not say.

    Its Accept rules are the proposal's grants, then a Deny rule: the pods stay
    least-privilege until a NetworkPolicy (which the Baseline tier yields to)
    says otherwise. Raises TooManyRules beyond 24 grant rules per direction.
    """
    workload = proposal.workload
    notes: list[str] = []
    ingress = _cnp_rules(proposal.ingress_rules(), "ingress", notes)
    egress = _cnp_rules(proposal.egress_rules(), "egress", notes)
    for direction, rules in (("ingress", ingress), ("egress", egress)):
        if len(rules) > CNP_MAX_RULES:
            raise TooManyRules(f"{workload}: {len(rules)} {direction} rules, more than a ClusterNetworkPolicy's "
                               f"{CNP_MAX_RULES}")
    subject = _cnp_pods(PodPeer((workload.namespace,), proposal.selector))
    policy = {
        "apiVersion": CLUSTER_NETWORK_POLICY_API,
        "kind": "ClusterNetworkPolicy",
        "metadata": _metadata(policy_name(workload, cluster_scoped=True), None, workload, labels, annotations),
        "spec": {"tier": "Baseline", "priority": priority, "subject": subject, "ingress": ingress, "egress": egress},
    }
    return policy, notes


# ------------------------------------------------------------------------------------- YAML


class _Dumper(yaml.SafeDumper):
    """Block style, lists indented under their key as kubectl writes them."""

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
        return super().increase_indent(flow, False)


def to_yaml(documents: Iterable[tuple[dict[str, Any], list[str]]]) -> str:
    """Objects as one multi-document YAML stream, each after its notes as ``#`` comments."""
    parts = []
    for obj, comments in documents:
        head = "".join(f"# {line}\n" for comment in comments for line in comment.splitlines())
        body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True, width=120)
        parts.append(head + body)
    return "---\n".join(parts)
