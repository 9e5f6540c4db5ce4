"""The policies the controller owns, and what it takes to make them what a proposal wants.

Ownership is a label: ``app.kubernetes.io/managed-by: kube-netpol-policy-controller``.
The controller lists and watches NetworkPolicies with that label only, and
its kind (``OWNED_POLICIES``) refuses any other, so a policy it did not make
never even enters its state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from kube_netpol.advise.from_workloads import propose_from_workloads
from kube_netpol.advise.kinds import ADVISE_KINDS, advise_registry
from kube_netpol.advise.options import AdviseOptions
from kube_netpol.advise.render import WORKLOAD_ANNOTATION, network_policy
from kube_netpol.api.errors import InvalidObject
from kube_netpol.api.kinds import KindSpec, pick
from kube_netpol.state import ClusterState
from kube_netpol.state.records import labels_of, metadata_of

MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGER = "kube-netpol-policy-controller"
OWNED_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGER}"
PolicyKey = tuple[str, str]


@dataclass(frozen=True)
class OwnedPolicy:
    """A NetworkPolicy this controller made, as the API server holds it."""

    namespace: str
    name: str
    uid: str
    resource_version: str
    #: What a reconcile compares: labels, the workload annotation, spec.
    content: Mapping[str, Any]


def comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """What decides whether a policy must be written again, normalized as the API server stores it
    (it drops empty lists: ``ingress: []`` comes back absent)."""
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    content: dict[str, Any] = _without_empty_lists({
        "labels": dict(meta.get("labels") or {}),
        "annotations": {k: v for k, v in annotations.items() if k == WORKLOAD_ANNOTATION},
        "spec": obj.get("spec") or {},
    })
    return content


def _without_empty_lists(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _without_empty_lists(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [_without_empty_lists(v) for v in value]
    return value


def read_owned_policy(obj: Mapping[str, Any]) -> OwnedPolicy:
    namespace, name = metadata_of(obj, namespaced=True)
    if labels_of(obj).get(MANAGED_BY_LABEL) != MANAGER:
        raise InvalidObject(f"not labelled {OWNED_SELECTOR}: not this controller's to touch")
    meta = obj["metadata"]
    return OwnedPolicy(namespace, name, str(meta.get("uid") or ""), str(meta.get("resourceVersion") or ""),
                       comparable(obj))


def trim_owned_policy(obj: Any) -> Any:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping):
        return obj
    meta = pick(obj["metadata"], ("name", "namespace", "labels", "uid", "resourceVersion"))
    annotations = obj["metadata"].get("annotations")
    if isinstance(annotations, Mapping) and WORKLOAD_ANNOTATION in annotations:
        meta["annotations"] = {WORKLOAD_ANNOTATION: annotations[WORKLOAD_ANNOTATION]}
    return {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta, "spec": obj.get("spec")}


#: The controller's own view of NetworkPolicies: only the ones it owns (listed with OWNED_SELECTOR).
OWNED_POLICIES = KindSpec("NetworkPolicy", "networking.k8s.io", "v1", "networkpolicies", True,
                          read_owned_policy, trim_owned_policy, custom=False, order=20)
#: Kinds read, in the order they are listed; Namespaces are not needed (policies name namespaces by name).
WATCHED_KINDS = ("Node", "Pod", *(spec.kind for spec in ADVISE_KINDS if spec.kind != "Node"), "NetworkPolicy")


def required_rules(dry_run: bool) -> set[tuple[str, str, str]]:
    """The RBAC rules (apiGroup, resource, verb) the controller needs, and no more: list and watch of
    what it reads; create, update and delete of NetworkPolicies unless it only dry-runs."""
    registry = advise_registry((OWNED_POLICIES,))
    rules = {(registry[kind].group, registry[kind].plural, verb) for kind in WATCHED_KINDS for verb in ("list", "watch")}
    if not dry_run:
        rules |= {("networking.k8s.io", "networkpolicies", verb) for verb in ("create", "update", "delete")}
    return rules


# ------------------------------------------------------------------------------------ plans


@dataclass(frozen=True)
class Action:
    verb: str  # create, update, delete
    key: PolicyKey
    #: The policy to write (None for delete).
    desired: Mapping[str, Any] | None
    #: What the API server holds now (None for create).
    owned: OwnedPolicy | None

    def __str__(self) -> str:
        return f"{self.verb} NetworkPolicy {self.key[0]}/{self.key[1]}"


def plan(desired: Mapping[PolicyKey, Mapping[str, Any]], owned: Mapping[PolicyKey, OwnedPolicy]) -> list[Action]:
    """What makes ``owned`` equal ``desired``: creates and updates in key order, then deletes."""
    actions: list[Action] = []
    for key in sorted(desired):
        have = owned.get(key)
        if have is None:
            actions.append(Action("create", key, desired[key], None))
        elif have.content != comparable(desired[key]):
            actions.append(Action("update", key, desired[key], have))
    actions.extend(Action("delete", key, None, owned[key]) for key in sorted(set(owned) - set(desired)))
    return actions


def desired_policies(state: ClusterState, options: AdviseOptions) -> dict[PolicyKey, dict[str, Any]]:
    policies = {}
    for proposal in propose_from_workloads(state, options).proposals:
        policy = network_policy(proposal, labels={MANAGED_BY_LABEL: MANAGER})
        policies[(policy["metadata"]["namespace"], policy["metadata"]["name"])] = policy
    return policies
