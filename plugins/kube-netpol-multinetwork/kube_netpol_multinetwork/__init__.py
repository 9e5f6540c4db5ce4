"""MultiNetworkPolicy (k8s.cni.cncf.io/v1beta1) on Multus secondary networks, as a kube-netpol evaluator.

Entry point ``multinetwork`` of the ``kube_netpol.evaluators`` group. Its
settings (the ``multinetwork`` section of ``--evaluator-config``):
``network-plugins``, the CNI plugin types whose networks count (a list or a
comma-separated string; default ``macvlan,ipvlan,sriov``).
"""

from __future__ import annotations

from kube_netpol.api import EvaluatorContext

from kube_netpol_multinetwork.evaluator import DEFAULT_NETWORK_PLUGINS, MultiNetworkEvaluator, MultiNetworkStage
from kube_netpol_multinetwork.kinds import (
    MULTI_NETWORK_POLICY,
    NETWORK_ATTACHMENT_DEFINITION,
    POLICY_FOR,
    MultiNetworkPolicy,
    NetworkAttachment,
    parse_policy_for,
)
from kube_netpol_multinetwork.status import NETWORK_STATUS, Attachment, parse_network_status

__all__ = [
    "Attachment",
    "DEFAULT_NETWORK_PLUGINS",
    "MULTI_NETWORK_POLICY",
    "MultiNetworkEvaluator",
    "MultiNetworkPolicy",
    "MultiNetworkStage",
    "NETWORK_ATTACHMENT_DEFINITION",
    "NETWORK_STATUS",
    "NetworkAttachment",
    "POLICY_FOR",
    "create",
    "network_plugins_setting",
    "parse_network_status",
    "parse_policy_for",
]


def network_plugins_setting(value: object) -> tuple[str, ...]:
    """``network-plugins`` as given: a list of names or one comma-separated string."""
    if value is None:
        return DEFAULT_NETWORK_PLUGINS
    if isinstance(value, str):
        names = [part.strip() for part in value.split(",")]
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        names = [item.strip() for item in value]
    else:
        raise ValueError("multinetwork: setting 'network-plugins' must be a list of CNI plugin types "
                         "or a comma-separated string")
    found = tuple(name for name in names if name)
    if not found:
        raise ValueError("multinetwork: setting 'network-plugins' names no CNI plugin type")
    return found


def create(context: EvaluatorContext) -> MultiNetworkEvaluator:
    unknown = set(context.settings) - {"network-plugins"}
    if unknown:
        raise ValueError(f"multinetwork: unknown setting(s) {sorted(unknown)} (known: network-plugins)")
    return MultiNetworkEvaluator(network_plugins_setting(context.settings.get("network-plugins")))
