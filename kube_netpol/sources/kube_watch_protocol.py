"""The watch stream's wire format, without I/O: JSON lines in, events out.

A watch response is a stream of JSON objects, one per line:
``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK"|"ERROR", "object": {...}}``.
ERROR events carry a ``Status`` object; code 410 means the resourceVersion we
watched from is gone and the collection has to be listed again.

A watch-list (``sendInitialEvents=true``, Kubernetes' WatchList, KEP-3157)
starts with the collection's current objects as ADDED events (changes made
meanwhile may follow as MODIFIED or DELETED) and marks the end of that initial
state with a BOOKMARK whose ``metadata.annotations`` holds
``k8s.io/initial-events-end: "true"``; the same watch then goes on as usual.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Iterable, Iterator

EVENT_TYPES = frozenset({"ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR"})
GONE = 410
#: The annotation of the BOOKMARK that ends a watch-list's initial state.
INITIAL_EVENTS_END = "k8s.io/initial-events-end"


class BadEvent(ValueError):
    """A watch line that is not a well-formed event; the caller logs and skips it."""


@dataclass(frozen=True, slots=True)
class WatchEvent:
    type: str
    object: Mapping[str, Any]


def split_lines(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Complete lines from a stream of byte chunks (an event may span chunks, a chunk may hold many)."""
    pending: list[bytes] = []
    for chunk in chunks:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            pending.append(chunk[start:end])
            line = b"".join(pending)
            pending.clear()
            if line.strip():
                yield line
            start = end + 1
        if start < len(chunk):
            pending.append(chunk[start:])
    # A stream that ended cleanly after an unterminated line: try it anyway.
    tail = b"".join(pending)
    if tail.strip():
        yield tail


def parse_event(line: bytes) -> WatchEvent:
    try:
        data = json.loads(line)
    except ValueError as err:
        raise BadEvent(f"not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise BadEvent("not a JSON object")
    event_type = data.get("type")
    obj = data.get("object")
    if event_type not in EVENT_TYPES:
        raise BadEvent(f"unknown event type {event_type!r}")
    if not isinstance(obj, dict):
        raise BadEvent(f"{event_type} event without an object")
    return WatchEvent(event_type, obj)


def resource_version_of(obj: Mapping[str, Any]) -> str | None:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    version = meta.get("resourceVersion")
    return version if isinstance(version, str) and version else None


def is_initial_events_end(obj: Mapping[str, Any]) -> bool:
    """Is this BOOKMARK's object the end of a watch-list's initial state?"""
    meta = obj.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, Mapping) else None
    return isinstance(annotations, Mapping) and annotations.get(INITIAL_EVENTS_END) == "true"


def status_code(status: Mapping[str, Any]) -> int | None:
    code = status.get("code")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def status_text(status: Mapping[str, Any]) -> str:
    """``410 Expired: too old resource version`` from a Status object, for log lines."""
    parts = [str(part) for part in (status.get("code"), status.get("reason")) if part]
    message = status.get("message")
    text = " ".join(parts) or "error"
    return f"{text}: {message}" if message else text


def object_reference(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(namespace, name) of an object, or None if its metadata has no name."""
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return None
    name = meta.get("name")
    namespace = meta.get("namespace") or ""
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return namespace, name
