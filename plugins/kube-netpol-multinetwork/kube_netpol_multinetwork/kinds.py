"""The two kinds the plugin reads, and what it keeps of each.

- MultiNetworkPolicy (k8s.cni.cncf.io/v1beta1): its spec is NetworkPolicy's
  and is parsed, validated and defaulted by the core's NetworkPolicy parser
  (the CRD does no defaulting, so ``policyTypes`` gets NetworkPolicy's
  defaults here); the ``k8s.v1.cni.cncf.io/policy-for`` annotation names the
  networks it applies on.
- NetworkAttachmentDefinition (k8s.cni.cncf.io/v1): its CNI plugin type, from
  ``spec.config`` (a JSON string: the config's ``type``, or the first
  plugin's in a conflist).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from kube_netpol.api import InvalidObject, KindSpec, trim_envelope
from kube_netpol.policy.networkpolicy import NetworkPolicy, parse_network_policy

GROUP = "k8s.cni.cncf.io"
POLICY_FOR = "k8s.v1.cni.cncf.io/policy-for"
#: A NetworkAttachmentDefinition's config larger than this is refused (a bound on what one object costs).
MAX_CONFIG_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class MultiNetworkPolicy:
    """A parsed MultiNetworkPolicy: its NetworkPolicy-shaped ``policy`` and the networks it names.

    ``networks`` are ``namespace/name`` keys, in the annotation's order without
    repeats; empty when the annotation is missing or names nothing (the policy
    is then ignored, and the evaluator says so in its log).
    """

    policy: NetworkPolicy
    networks: tuple[str, ...]

    @property
    def ref(self) -> str:
        return self.policy.ref


@dataclass(frozen=True, slots=True)
class NetworkAttachment:
    """A NetworkAttachmentDefinition: ``key`` is ``namespace/name``; ``plugin_type`` "" when its config names none."""

    key: str
    plugin_type: str


def parse_policy_for(text: str, namespace: str) -> tuple[str, ...]:
    """``policy-for``'s network keys: comma-separated, spaces stripped, a name without ``/`` in ``namespace``."""
    found: dict[str, None] = {}
    for item in text.split(","):
        name = item.strip()
        if not name:
            continue
        if "/" not in name:
            name = f"{namespace}/{name}"
        elif name.count("/") != 1 or name.startswith("/") or name.endswith("/"):
            raise InvalidObject(f"network {name!r} is neither 'name' nor 'namespace/name'",
                                f"metadata.annotations[{POLICY_FOR}]")
        found[name] = None
    return tuple(found)


def parse_multi_network_policy(obj: Mapping[str, Any]) -> MultiNetworkPolicy:
    policy = parse_network_policy(obj)
    annotations = obj.get("metadata", {}).get("annotations") or {}
    if not isinstance(annotations, Mapping):
        raise InvalidObject("must be an object", "metadata.annotations")
    text = annotations.get(POLICY_FOR, "")
    if not isinstance(text, str):
        raise InvalidObject("must be a string", f"metadata.annotations[{POLICY_FOR}]")
    return MultiNetworkPolicy(policy, parse_policy_for(text, policy.namespace))


def trim_multi_network_policy(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The envelope with the policy-for annotation, and the spec."""
    if not isinstance(obj, Mapping):
        return obj
    out = trim_envelope(obj, frozenset({POLICY_FOR}))
    if "spec" in obj:
        out["spec"] = obj["spec"]
    return out


def plugin_type_of(config: str) -> str:
    """The CNI plugin type of a config or conflist (JSON text); "" when it names none."""
    if len(config) > MAX_CONFIG_BYTES:
        raise InvalidObject(f"is larger than {MAX_CONFIG_BYTES} bytes", "spec.config")
    try:
        parsed = json.loads(config)
    except ValueError as err:
        raise InvalidObject(f"is not JSON: {err}", "spec.config") from None
    if not isinstance(parsed, Mapping):
        raise InvalidObject("must be a JSON object", "spec.config")
    found = parsed.get("type")
    if found is None:
        plugins = parsed.get("plugins")
        if isinstance(plugins, list) and plugins and isinstance(plugins[0], Mapping):
            found = plugins[0].get("type")
    if found is None:
        return ""
    if not isinstance(found, str):
        raise InvalidObject("the CNI plugin type must be a string", "spec.config")
    return found


def parse_network_attachment(obj: Mapping[str, Any]) -> NetworkAttachment:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    if not isinstance(meta, Mapping) or not meta.get("name") or not meta.get("namespace"):
        raise InvalidObject("name and namespace are required", "metadata")
    spec = obj.get("spec") or {}
    if not isinstance(spec, Mapping):
        raise InvalidObject("must be an object", "spec")
    config = spec.get("config", "")
    if not isinstance(config, str):
        raise InvalidObject("must be a string (JSON text)", "spec.config")
    # No config: Multus reads a file on the node named after the attachment; its type is unknown here.
    plugin_type = plugin_type_of(config) if config.strip() else ""
    return NetworkAttachment(f"{meta['namespace']}/{meta['name']}", plugin_type)


MULTI_NETWORK_POLICY = KindSpec(
    "MultiNetworkPolicy", GROUP, "v1beta1", "multi-networkpolicies", True,
    parse_multi_network_policy, trim_multi_network_policy, custom=True, order=20,
)  # fmt: skip
NETWORK_ATTACHMENT_DEFINITION = KindSpec(
    "NetworkAttachmentDefinition", GROUP, "v1", "network-attachment-definitions", True,
    parse_network_attachment, custom=True, order=5,
)  # fmt: skip
