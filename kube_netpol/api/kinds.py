"""Kinds of Kubernetes objects, described once: where the API serves them and how the agent reads them.

Every part of the agent that deals with objects by kind (the cluster state,
the Kubernetes and manifests sources, `explain`, the fake API server of the
tests) reads these records and nothing else. An evaluator declares the kinds
it reads in its ``kinds``; a plugin package declares its own (a CRD) the same
way and has it listed, watched, trimmed and handed to its evaluator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Mapping
from typing import Any, Callable

#: Parses one object (a JSON-like mapping) into what evaluators read; raises InvalidObject.
Parse = Callable[[Mapping[str, Any]], object]
#: Reduces one object, right as it arrives, to the fields ``parse`` reads (memory per object).
Trim = Callable[[Mapping[str, Any]], Mapping[str, Any]]

_METADATA_FIELDS = ("name", "namespace", "labels", "resourceVersion")
_ENVELOPE_FIELDS = ("apiVersion", "kind")


def pick(obj: Mapping[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    return {name: obj[name] for name in fields if name in obj}


def trim_envelope(obj: Mapping[str, Any], annotations: frozenset[str] = frozenset()) -> dict[str, Any]:
    """apiVersion, kind, name, namespace, labels, resourceVersion and the ``annotations`` named.

    Trimming never repairs a malformed object: a part of the wrong shape
    passes unchanged, so that parsing refuses the object with its usual reason.
    """
    out = pick(obj, _ENVELOPE_FIELDS)
    if "metadata" in obj:
        meta = obj["metadata"]
        if isinstance(meta, Mapping):
            kept = pick(meta, _METADATA_FIELDS)
            found = meta.get("annotations")
            if annotations and isinstance(found, Mapping):
                kept["annotations"] = {k: v for k, v in found.items() if k in annotations}
            meta = kept
        out["metadata"] = meta
    return out


def trim_to_spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    """The envelope plus ``spec``: what policy kinds are parsed from (no annotations)."""
    if not isinstance(obj, Mapping):
        return obj
    out = trim_envelope(obj)
    if "spec" in obj:
        out["spec"] = obj["spec"]
    return out


@dataclass(frozen=True)
class KindSpec:
    """One kind of object.

    ``group`` is "" for the core API. ``custom``: served through a
    CustomResourceDefinition, so a cluster may not serve it at all; the agent
    then counts it as having no objects (and keeps asking). ``order``: kinds
    with a lower order are applied first when many objects arrive at once
    (namespaces and nodes before the pods that refer to them).
    """

    kind: str
    group: str
    version: str
    plural: str
    namespaced: bool
    parse: Parse = field(compare=False)
    trim: Trim = field(default=trim_to_spec, compare=False)
    custom: bool = True
    order: int = 10

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def path(self) -> str:
        """The cluster-wide collection path, e.g. ``/apis/networking.k8s.io/v1/networkpolicies``."""
        prefix = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        return f"{prefix}/{self.plural}"


def _read_by_the_state(obj: Mapping[str, Any]) -> object:
    raise TypeError("Node objects are read into NodeRecords by the cluster state")


#: Declare this in an evaluator's ``kinds`` to have Node objects listed and watched
#: (NodeRecords in the view, node labels in PodRecords). Pods and namespaces always are.
NODE_KIND = KindSpec("Node", "", "v1", "nodes", False, _read_by_the_state, custom=False, order=1)
