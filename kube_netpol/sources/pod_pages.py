"""Pod list pages and watch events decoded straight into the fields the state reads (msgspec), the rest unread.

A pod's JSON is mostly managedFields, env, conditions and container statuses;
``json.loads`` builds all of it only for ``trim_pod`` to drop it. msgspec
decodes into typed dicts and skips unknown fields without building them:
at 100,000 pods that is most of the initial sync's CPU (docs/performance.md).

The typed dicts declare the shapes ``read_pod`` accepts; a page with any
other shape (a malformed pod) fails to decode as a whole, and the caller falls
back to ``json.loads`` and ``trim_pod``, so that the state refuses (or
salvages) that pod with its usual reason. The result has the shape
``trim_pod`` gives, except that all string annotations are kept (``read_pod``
keeps only those an evaluator asked for).
"""

from __future__ import annotations

from typing import Any, TypedDict

try:
    import msgspec
except ImportError:  # an install without the kubernetes extra: every page takes json.loads
    msgspec = None  # type: ignore[assignment]


class _OwnerReference(TypedDict, total=False):
    kind: str
    name: str
    controller: bool


class _Metadata(TypedDict, total=False):
    name: str
    namespace: str
    labels: dict[str, str]
    annotations: dict[str, str]
    resourceVersion: str
    ownerReferences: list[_OwnerReference]


class _Port(TypedDict, total=False):
    name: str
    containerPort: int
    protocol: str


class _Container(TypedDict, total=False):
    ports: list[_Port]


class _Spec(TypedDict, total=False):
    nodeName: str
    hostNetwork: bool
    containers: list[_Container]


class _PodIP(TypedDict, total=False):
    ip: str


class _Status(TypedDict, total=False):
    phase: str
    podIP: str
    podIPs: list[_PodIP]


class _Pod(TypedDict, total=False):
    metadata: _Metadata
    spec: _Spec
    status: _Status


# "continue" is a keyword: the functional syntax. The API server sends "continue": "" on the last page.
_ListMetadataWithContinue = TypedDict("_ListMetadataWithContinue", {"resourceVersion": str, "continue": str},
                                      total=False)
_PodList = TypedDict("_PodList", {"metadata": _ListMetadataWithContinue, "items": list[_Pod]}, total=False)

_PodEvent = TypedDict("_PodEvent", {"type": str, "object": _Pod}, total=False)

_decoder = msgspec.json.Decoder(_PodList) if msgspec is not None else None
_event_decoder = msgspec.json.Decoder(_PodEvent) if msgspec is not None else None


def decode_pod_page(body: bytes) -> dict[str, Any] | None:
    """``{"metadata": ..., "items": [trimmed pods]}``, or None when the page is not of the usual shape."""
    if _decoder is None:
        return None
    try:
        return _decoder.decode(body)  # type: ignore[return-value]
    except msgspec.DecodeError:  # ValidationError included: a malformed pod somewhere in the page
        return None


def decode_pod_event(line: bytes) -> tuple[str, dict[str, Any]] | None:
    """(type, trimmed pod) of an ADDED, MODIFIED or DELETED watch line of the usual shape, else None.

    None for anything else (a BOOKMARK, an ERROR's Status, a malformed line):
    the caller parses those with ``parse_event`` as before.
    """
    if _event_decoder is None:
        return None
    try:
        event = _event_decoder.decode(line)
    except msgspec.DecodeError:
        return None
    event_type, obj = event.get("type"), event.get("object")
    if event_type not in ("ADDED", "MODIFIED", "DELETED") or obj is None:
        return None
    return event_type, obj  # type: ignore[return-value]
