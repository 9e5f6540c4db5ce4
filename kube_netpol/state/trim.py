"""Reduce Pod, Namespace and Node objects to the fields the state reads, right as they arrive.

In a big cluster most of a pod's JSON (managedFields, annotations, container
specs, conditions) is irrelevant to network policy; dropping it at once bounds
what a list page costs while it is parsed. Malformed parts pass unchanged so
that the state refuses the object with its usual reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kube_netpol.api.kinds import pick, trim_envelope

_POD_SPEC_FIELDS = ("nodeName", "hostNetwork")
_POD_STATUS_FIELDS = ("podIPs", "podIP", "phase")
_PORT_FIELDS = ("name", "containerPort", "protocol")
_OWNER_FIELDS = ("kind", "name", "controller")


def _trim_part(obj: Mapping[str, Any], part: str, fields: tuple[str, ...]) -> dict[str, Any]:
    """``{part: obj[part] reduced to fields}``, or the part unchanged if it is not an object."""
    if part not in obj:
        return {}
    value = obj[part]
    return {part: pick(value, fields) if isinstance(value, Mapping) else value}


def _trim_container(container: Any) -> Any:
    if not isinstance(container, Mapping):
        return container
    ports = container.get("ports")
    if ports is None:
        return {}
    if not isinstance(ports, list):
        return {"ports": ports}
    return {"ports": [pick(port, _PORT_FIELDS) if isinstance(port, Mapping) else port for port in ports]}


def trim_owner_references(obj: Mapping[str, Any], out: dict[str, Any]) -> None:
    """Keep of ``metadata.ownerReferences`` only the controller's kind and name (what ``controller_owner`` reads)."""
    meta = obj.get("metadata")
    references = meta.get("ownerReferences") if isinstance(meta, Mapping) else None
    if not isinstance(references, list) or not isinstance(out.get("metadata"), dict):
        return
    for reference in references:
        if isinstance(reference, Mapping) and reference.get("controller") is True:
            out["metadata"]["ownerReferences"] = [pick(reference, _OWNER_FIELDS)]
            return


def trim_pod(obj: Any, annotations: frozenset[str] = frozenset()) -> Any:
    """metadata (with the ``annotations`` named, and the controller's ownerReference),
    spec.nodeName/hostNetwork/containers[].ports, status.podIPs/podIP/phase."""
    if not isinstance(obj, Mapping):
        return obj
    out = trim_envelope(obj, annotations)
    trim_owner_references(obj, out)
    if "spec" in obj:
        spec = obj["spec"]
        if isinstance(spec, Mapping):
            trimmed_spec = pick(spec, _POD_SPEC_FIELDS)
            if "containers" in spec:
                containers = spec["containers"]
                trimmed_spec["containers"] = (
                    [_trim_container(c) for c in containers] if isinstance(containers, list) else containers
                )
            out["spec"] = trimmed_spec
        else:
            out["spec"] = spec
    out.update(_trim_part(obj, "status", _POD_STATUS_FIELDS))
    return out


def trim_namespace(obj: Any) -> Any:
    """Only the metadata: policies select namespaces by their labels."""
    return trim_envelope(obj) if isinstance(obj, Mapping) else obj


def trim_node(obj: Any) -> Any:
    """The metadata and status.addresses (node peers match node addresses)."""
    if not isinstance(obj, Mapping):
        return obj
    out = trim_envelope(obj)
    out.update(_trim_part(obj, "status", ("addresses",)))
    return out
