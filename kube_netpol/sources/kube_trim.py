"""Reduce API objects to the fields policy evaluation reads, before they reach the state.

In a big cluster most of a pod's JSON (managedFields, annotations, container
specs, conditions) is irrelevant to network policy; dropping it right after
parsing bounds the memory the agent keeps per pod.

Trimming never repairs a malformed object: where a part has the wrong shape
(``spec`` not an object, ``containers`` not a list...) it is passed through
unchanged so that ClusterState refuses the object with its usual log line.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

_METADATA_FIELDS = ("name", "namespace", "labels", "resourceVersion")
_ENVELOPE_FIELDS = ("apiVersion", "kind")
_POD_SPEC_FIELDS = ("nodeName", "hostNetwork")
_POD_STATUS_FIELDS = ("podIPs", "podIP", "phase")
_PORT_FIELDS = ("name", "containerPort", "protocol")


def _pick(obj: Mapping[str, Any], fields: Iterable[str]) -> dict[str, Any]:
    return {field: obj[field] for field in fields if field in obj}


def _envelope(obj: Mapping[str, Any]) -> dict[str, Any]:
    out = _pick(obj, _ENVELOPE_FIELDS)
    if "metadata" in obj:
        meta = obj["metadata"]
        out["metadata"] = _pick(meta, _METADATA_FIELDS) if isinstance(meta, Mapping) else meta
    return out


def _trim_part(obj: Mapping[str, Any], part: str, fields: Iterable[str]) -> dict[str, Any]:
    """``{part: obj[part] reduced to fields}``, or the part unchanged if it is not an object."""
    if part not in obj:
        return {}
    value = obj[part]
    return {part: _pick(value, fields) if isinstance(value, Mapping) else value}


def _trim_container(container: Any) -> Any:
    if not isinstance(container, Mapping):
        return container
    ports = container.get("ports")
    if ports is None:
        return {}
    if not isinstance(ports, list):
        return {"ports": ports}
    return {"ports": [_pick(port, _PORT_FIELDS) if isinstance(port, Mapping) else port for port in ports]}


def trim_pod(obj: Any) -> Any:
    """metadata name/namespace/labels/resourceVersion, spec.nodeName/hostNetwork/containers[].ports,
    status.podIPs/podIP/phase."""
    if not isinstance(obj, Mapping):
        return obj
    out = _envelope(obj)
    if "spec" in obj:
        spec = obj["spec"]
        if isinstance(spec, Mapping):
            trimmed_spec = _pick(spec, _POD_SPEC_FIELDS)
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
    return _envelope(obj) if isinstance(obj, Mapping) else obj


def trim_node(obj: Any) -> Any:
    """The metadata and status.addresses (ANP/BANP node peers match node addresses)."""
    if not isinstance(obj, Mapping):
        return obj
    out = _envelope(obj)
    out.update(_trim_part(obj, "status", ("addresses",)))
    return out


def trim_policy(obj: Any) -> Any:
    """The metadata (without managedFields and annotations) and the whole spec."""
    if not isinstance(obj, Mapping):
        return obj
    out = _envelope(obj)
    if "spec" in obj:
        out["spec"] = obj["spec"]
    return out
