"""Feeding ClusterState from Kubernetes objects in YAML/JSON files in a folder.

The folder is read whole at start and re-read whenever a file's size or
modification time changes; objects that vanished from the files are deleted
from the state. A file that cannot be parsed is reported and its previous
objects stay in force, so a half-written file never lifts a policy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

from kube_netpol.state.store import KINDS, ClusterState

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


class ManifestError(ValueError):
    """A manifest file that cannot be read; the message names the file."""


def read_manifest_file(path: pathlib.Path) -> list[Mapping[str, Any]]:
    """Every object in one file: YAML documents (or JSON), with ``kind: List`` flattened."""
    try:
        text = path.read_text()
        documents = [json.loads(text)] if path.suffix == ".json" else list(yaml.safe_load_all(text))
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ManifestError(f"{path}: {err}") from None
    objects: list[Mapping[str, Any]] = []
    for document in documents:
        if document is None:
            continue
        if not isinstance(document, Mapping):
            raise ManifestError(f"{path}: a document is not an object")
        if str(document.get("kind", "")).endswith("List") and isinstance(document.get("items"), list):
            objects.extend(document["items"])
        else:
            objects.append(document)
    return objects


def object_key(obj: Mapping[str, Any]) -> ObjectKey | None:
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if not isinstance(kind, str) or not isinstance(meta, Mapping) or not meta.get("name"):
        return None
    namespaced = KINDS[kind].namespaced if kind in KINDS else True
    return (kind, str(meta.get("namespace") or "") if namespaced else "", str(meta["name"]))


@dataclass
class _FileState:
    signature: tuple[int, int]
    objects: dict[ObjectKey, str] = field(default_factory=dict)  # key -> canonical JSON


class ManifestSource:
    """Keeps a ClusterState equal to the objects in a folder."""

    # Kinds applied first so that pods find their namespace and node.
    _ORDER = {"Namespace": 0, "Node": 1, "Pod": 2}

    def __init__(self, folder: str | os.PathLike[str], state: ClusterState) -> None:
        self.folder = pathlib.Path(folder)
        self.state = state
        self._files: dict[pathlib.Path, _FileState] = {}
        self._applied: dict[ObjectKey, str] = {}
        self.loaded = False

    def _scan(self) -> dict[pathlib.Path, tuple[int, int]]:
        found: dict[pathlib.Path, tuple[int, int]] = {}
        for root, _dirs, names in os.walk(self.folder):
            for name in names:
                if name.endswith(SUFFIXES) and not name.startswith("."):
                    path = pathlib.Path(root, name)
                    try:
                        stat = path.stat()
                    except OSError:
                        continue  # removed between listing and stat
                    found[path] = (stat.st_mtime_ns, stat.st_size)
        return found

    def sync(self) -> bool:
        """Re-read changed files and apply the difference. True if anything was applied."""
        if not self.folder.is_dir():
            raise ManifestError(f"{self.folder}: not a folder")
        current = self._scan()
        changed = False
        for path in list(self._files):
            if path not in current:
                del self._files[path]
                changed = True
        for path, signature in current.items():
            known = self._files.get(path)
            if known is not None and known.signature == signature:
                continue
            try:
                objects = read_manifest_file(path)
            except ManifestError as err:
                log.error("cannot read manifest, keeping its previous objects: %s", err)
                if known is not None:
                    known.signature = signature  # report once per version of the file
                else:
                    self._files[path] = _FileState(signature)
                continue
            entries: dict[ObjectKey, str] = {}
            for obj in objects:
                key = object_key(obj) if isinstance(obj, Mapping) else None
                if key is None:
                    log.warning("ignoring an object without kind or metadata.name in %s", path)
                    continue
                entries[key] = json.dumps(obj, sort_keys=True)
            self._files[path] = _FileState(signature, entries)
            changed = True
        if changed:
            changed = self._reconcile()
        self.loaded = True
        return changed

    def _reconcile(self) -> bool:
        desired: dict[ObjectKey, str] = {}
        for file_state in self._files.values():
            desired.update(file_state.objects)
        applied_any = False
        for key in sorted(set(self._applied) - set(desired), key=lambda k: -self._ORDER.get(k[0], 9)):
            self.state.delete(*key)
            del self._applied[key]
            applied_any = True
        for key in sorted(desired, key=lambda k: self._ORDER.get(k[0], 9)):
            if self._applied.get(key) == desired[key]:
                continue
            self.state.apply(json.loads(desired[key]))
            # Remember refused objects too: they are reported once, not on every scan.
            self._applied[key] = desired[key]
            applied_any = True
        return applied_any

    def watch(self, stop: threading.Event, interval: float = 0.1, on_change: Any = None) -> None:
        """Poll until ``stop`` is set; ``on_change()`` runs after every applied change."""
        while not stop.wait(interval):
            try:
                if self.sync() and on_change is not None:
                    on_change()
            except ManifestError as err:
                log.error("%s", err)

    def objects(self) -> Iterator[ObjectKey]:
        return iter(self._applied)

    def applied_entries(self) -> Mapping[ObjectKey, str]:
        """What was applied: (kind, namespace, name) -> canonical JSON."""
        return dict(self._applied)


def entries_revision(entries: Mapping[ObjectKey, str]) -> str:
    """A digest of a set of objects: (kind, namespace, name) -> canonical JSON (``json.dumps(sort_keys=True)``)."""
    return hashlib.sha256(json.dumps(sorted(entries.items())).encode()).hexdigest()


def objects_revision(objects: Iterable[Mapping[str, Any]]) -> str:
    """The revision the manifests source reports once it has applied exactly these objects.

    Keys and canonical JSON are made as the source makes them (objects without
    kind or name are skipped, a later object with the same key wins), so a
    writer of the folder (the lab) can wait for precisely its own content.
    """
    entries: dict[ObjectKey, str] = {}
    for obj in objects:
        key = object_key(obj) if isinstance(obj, Mapping) else None
        if key is not None:
            entries[key] = json.dumps(obj, sort_keys=True)
    return entries_revision(entries)


class ManifestFolderSource:
    """The manifests folder as an agent source: read at start, re-read on every poll."""

    def __init__(self, folder: str, state: ClusterState) -> None:
        self._source = ManifestSource(folder, state)
        self._revision = ""

    def start(self, submit: Callable[[Callable[[], None]], None]) -> None:
        self._source.sync()
        self._update_revision()

    def poll(self) -> None:
        try:
            if self._source.sync():
                self._update_revision()
        except ManifestError as err:
            log.error("%s", err)

    def revision(self) -> str:
        """A digest of the objects applied to the state (see ``objects_revision``)."""
        return self._revision

    def _update_revision(self) -> None:
        self._revision = entries_revision(self._source.applied_entries())

    def ready(self) -> bool:
        return self._source.loaded

    def stop(self) -> None:
        pass
