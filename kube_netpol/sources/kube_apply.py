"""What a list or a watch event does to ClusterState; runs on the agent's control thread.

ClusterState logs and ignores objects it refuses (InvalidObject). These
wrappers add one more guard: an object so malformed that the store trips over
it (e.g. ``spec`` a string) must cost only that object, never the rest of a
relist or the watch that delivered it.
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from kube_netpol.api.cluster import ObjectKey
from kube_netpol.sources.kube_watch_protocol import object_reference
from kube_netpol.state import ClusterState

log = logging.getLogger(__name__)


def apply_object(state: ClusterState, kind: str, obj: Mapping[str, Any]) -> None:
    try:
        state.apply(obj, kind)
    except Exception as err:  # noqa: BLE001 - see the module docstring
        log.warning("ignoring malformed %s %s: %s", kind, _describe(obj), err, extra={"kind": kind})


def delete_object(state: ClusterState, kind: str, obj: Mapping[str, Any]) -> None:
    ref = object_reference(obj)
    if ref is None:
        log.warning("ignoring a %s deletion without metadata.name", kind, extra={"kind": kind})
        return
    namespace, name = ref
    state.delete(kind, namespace, name)


def apply_page(state: ClusterState, kind: str, objects: Sequence[Mapping[str, Any]], seen: set[ObjectKey]) -> None:
    """Apply one page of a list, adding the keys it holds to ``seen`` (see ``delete_unseen``)."""
    namespaced = state.kinds[kind].namespaced
    for obj in objects:
        apply_object(state, kind, obj)
        ref = object_reference(obj) if isinstance(obj, Mapping) else None
        if ref is not None:
            seen.add((ref[0] if namespaced else "", ref[1]))


def delete_unseen(state: ClusterState, kind: str, seen: set[ObjectKey]) -> None:
    """After the last page of a list: delete the objects of ``kind`` it did not hold."""
    for key in state.keys(kind):
        if key not in seen:
            state.delete(kind, key[0], key[1])


def replace_all(state: ClusterState, kind: str, objects: Sequence[Mapping[str, Any]]) -> None:
    """Make the state's objects of ``kind`` exactly ``objects`` (after a list)."""
    try:
        state.replace(kind, objects)
        return
    except Exception:  # noqa: BLE001 - an object the store tripped over; redo it one by one
        log.warning("a %s in the list could not be applied in one pass; applying one object at a time", kind)
    namespaced = state.kinds[kind].namespaced
    seen = set()
    for obj in objects:
        apply_object(state, kind, obj)
        ref = object_reference(obj) if isinstance(obj, Mapping) else None
        if ref is not None:
            seen.add((ref[0] if namespaced else "", ref[1]))
    for key in state.keys(kind):
        if key not in seen:
            state.delete(kind, key[0], key[1])


def _describe(obj: object) -> str:
    ref = object_reference(obj) if isinstance(obj, Mapping) else None
    if ref is None:
        return "<no name>"
    return f"{ref[0]}/{ref[1]}" if ref[0] else ref[1]
