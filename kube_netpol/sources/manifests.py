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
import math
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import yaml

from kube_netpol.state import ClusterState

log = logging.getLogger(__name__)

SUFFIXES = (".yaml", ".yml", ".json")
ObjectKey = tuple[str, str, str]  # (kind, namespace, name)


def yaml_problem(err: yaml.MarkedYAMLError) -> str:
    """PyYAML's several-line message as one line: where, what, while doing what."""
    mark = err.problem_mark or err.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    problem = err.problem or "invalid YAML"
    context = f" (while {err.context.removeprefix('while ')})" if err.context else ""
    return f"{where}{problem}{context}"


class ManifestError(ValueError):
    """A manifest file that cannot be read; the message names the file."""


#: Biggest manifest file read (the API server takes requests of at most 3 MiB, etcd objects of 1.5 MiB).
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: Deepest nesting of mappings and lists (Kubernetes objects nest a few dozen levels at most).
MAX_MANIFEST_DEPTH = 100
#: Values a file may hold beyond one per byte of its text: only YAML aliases expand past that (alias bombs).
MAX_ALIAS_EXPANSION = 100_000


def read_manifest_file(path: pathlib.Path) -> list[Mapping[str, Any]]:
    """Every object in one file: YAML documents (or JSON), with ``kind: List`` flattened.

    The objects are what the API server would hold after converting the YAML to
    JSON, as kubectl and sigs.k8s.io/yaml do: unquoted timestamps stay strings,
    integer, float and boolean mapping keys become strings; what JSON cannot
    hold (``!!set``, ``!!binary``, ``!!omap``, null keys, NaN) is refused. Any
    failure, including too big, too deep or an alias bomb, is a ManifestError
    naming the file.
    """
    try:
        text = _read_text(path)
        if path.suffix == ".json":
            documents = [json.loads(text)]
        else:
            documents = list(yaml.load_all(text, Loader=_ManifestLoader))  # noqa: S506 - a SafeLoader
        budget = [len(text) + MAX_ALIAS_EXPANSION]
        documents = [_json_compatible(document, 0, budget, "") for document in documents]
    except ManifestError:
        raise
    except RecursionError:
        raise ManifestError(f"{path}: nesting deeper than {MAX_MANIFEST_DEPTH} levels") from None
    except yaml.MarkedYAMLError as err:
        raise ManifestError(f"{path}: {yaml_problem(err)}") from None
    except (OSError, ValueError, yaml.YAMLError) as err:
        raise ManifestError(f"{path}: {' '.join(str(err).split())}") from None
    except Exception as err:  # noqa: BLE001 - whatever the parser raises, this file is bad, not the agent
        raise ManifestError(f"{path}: cannot parse: {type(err).__name__}: {err}") from None
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


def _read_text(path: pathlib.Path) -> str:
    with path.open("rb") as handle:
        data = handle.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: larger than {MAX_MANIFEST_BYTES} bytes")
    return data.decode("utf-8-sig")  # manifests are UTF-8, as the API server requires


class _Refused(ValueError):
    """A value JSON (and so the API server) cannot hold; the message says where."""


def _json_compatible(value: Any, depth: int, budget: list[int], where: str) -> Any:
    """``value`` with mapping keys as strings, or _Refused. ``budget`` counts values left to visit."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _Refused("more values than the file's size allows: YAML aliases expand too far")
    if depth > MAX_MANIFEST_DEPTH:
        raise _Refused(f"nesting deeper than {MAX_MANIFEST_DEPTH} levels")
    if isinstance(value, dict):  # keys are strings: the loader converted them, JSON has no others
        return {key: _json_compatible(item, depth + 1, budget, f"{where}.{key}" if where else key)
                for key, item in value.items()}
    if isinstance(value, list):
        return [_json_compatible(item, depth + 1, budget, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise _Refused(f"{where}: {value} is not a JSON number")
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    raise _Refused(f"{where}: a {type(value).__name__} is not a JSON value")


def _key_text(key: Any) -> str | None:
    """A mapping key as sigs.k8s.io/yaml turns it into a JSON key; None for keys it refuses."""
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if isinstance(key, int):
        return str(key)
    if isinstance(key, float):
        return ".nan" if math.isnan(key) else ".inf" if key == math.inf else "-.inf" if key == -math.inf else repr(key)
    return None


class _ManifestLoader(yaml.SafeLoader):
    """The safe loader with nesting bounded before the recursive composer gets deep."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_MANIFEST_DEPTH:
                mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
                raise yaml.composer.ComposerError(None, None, f"nesting deeper than {MAX_MANIFEST_DEPTH} levels", mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[str, Any]:  # type: ignore[override]
        # Keys become strings as each is read: as Python values, 1 and true would be the same key.
        self.flatten_mapping(node)  # merge keys ("<<"): merged pairs first, so the mapping's own win
        mapping: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            name = _key_text(key)
            if name is None:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark,
                    f"a {type(key).__name__} mapping key is not a JSON key", key_node.start_mark,
                )
            mapping[name] = self.construct_object(value_node, deep=deep)
        return mapping


def _timestamp_as_text(loader: yaml.SafeLoader, node: yaml.Node) -> str:
    # The API server's YAML decoding keeps a timestamp in an untyped field as the string written.
    return str(loader.construct_scalar(node))  # type: ignore[arg-type]


def _not_json(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    raise yaml.constructor.ConstructorError(
        None, None, f"{node.tag} has no JSON form (the API server would refuse it)", node.start_mark
    )


_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# Implicit resolvers are a class-level table shared with SafeLoader: copy it without timestamps.
_ManifestLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _TIMESTAMP_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ManifestLoader.add_constructor(_TIMESTAMP_TAG, _timestamp_as_text)
for _tag in ("set", "binary", "omap", "pairs"):
    _ManifestLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _not_json)


def object_key(obj: Mapping[str, Any]) -> ObjectKey | None:
    """(kind, namespace as the object gives it or "", name); None without kind or name."""
    kind = obj.get("kind")
    meta = obj.get("metadata")
    if not isinstance(kind, str) or not isinstance(meta, Mapping) or not meta.get("name"):
        return None
    return (kind, str(meta.get("namespace") or ""), str(meta["name"]))


@dataclass
class _FileState:
    signature: tuple[int, int]
    objects: dict[ObjectKey, str] = field(default_factory=dict)  # key -> canonical JSON


class ManifestSource:
    """Keeps a ClusterState equal to the objects in a folder.

    A file that cannot be read (any error: I/O, YAML, a value JSON cannot
    hold) is reported once per version of the file and its last good objects
    stay in force. Objects of kinds the pipeline does not read (Services,
    ConfigMaps...) are ignored. When one object (kind, namespace, name) is in
    several files, the file that comes first in path order wins and the
    duplicate is reported.
    """

    def __init__(self, folder: str | os.PathLike[str], state: ClusterState) -> None:
        self.folder = pathlib.Path(folder)
        self.state = state
        self._files: dict[pathlib.Path, _FileState] = {}
        self._applied: dict[ObjectKey, str] = {}
        self._duplicates: dict[ObjectKey, tuple[pathlib.Path, ...]] = {}
        #: Files whose last version could not be read, with the reason.
        self.unreadable: dict[pathlib.Path, str] = {}
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
                self.unreadable.pop(path, None)
                changed = True
        for path, signature in current.items():
            known = self._files.get(path)
            if known is not None and known.signature == signature:
                continue
            try:
                entries = self._read(path)
            except Exception as err:  # noqa: BLE001 - any failure costs this file only, never the folder
                reason = str(err) if isinstance(err, ManifestError) else f"{path}: {type(err).__name__}: {err}"
                log.error("cannot read manifest, keeping its previous objects: %s", reason)
                self.unreadable[path] = reason
                if known is not None:
                    known.signature = signature  # report once per version of the file
                else:
                    self._files[path] = _FileState(signature)
                continue
            self._files[path] = _FileState(signature, entries)
            self.unreadable.pop(path, None)
            changed = True
        if changed:
            changed = self._reconcile()
        self.loaded = True
        return changed

    def _read(self, path: pathlib.Path) -> dict[ObjectKey, str]:
        entries: dict[ObjectKey, str] = {}
        for obj in read_manifest_file(path):
            key = object_key(obj) if isinstance(obj, Mapping) else None
            if key is None:
                log.warning("ignoring an object without kind or metadata.name in %s", path)
                continue
            entries[key] = json.dumps(obj, sort_keys=True)  # a later object with the same key wins
        return entries

    def _desired(self) -> dict[ObjectKey, str]:
        """Every object of the files, the first file in path order winning a duplicate."""
        desired: dict[ObjectKey, str] = {}
        holders: dict[ObjectKey, list[pathlib.Path]] = {}
        for path in sorted(self._files):
            for key, text in self._files[path].objects.items():
                holders.setdefault(key, []).append(path)
                desired.setdefault(key, text)
        duplicates = {key: tuple(paths) for key, paths in holders.items() if len(paths) > 1}
        for key, paths in duplicates.items():
            if self._duplicates.get(key) != paths:
                log.warning("%s %s is in %d files (%s); using the one in %s, the first in path order",
                            key[0], f"{key[1]}/{key[2]}" if key[1] else key[2], len(paths),
                            ", ".join(map(str, paths)), paths[0])
        self._duplicates = duplicates
        return desired

    def _reconcile(self) -> bool:
        desired = self._desired()
        kinds = self.state.kinds
        applied_any = False
        for key in sorted(set(self._applied) - set(desired), key=lambda k: -kinds.order_of(k[0])):
            del self._applied[key]
            if key[0] in kinds:
                self.state.delete(*key)
                applied_any = True
        for key in sorted(desired, key=lambda k: kinds.order_of(k[0])):
            if self._applied.get(key) == desired[key]:
                continue
            # Remember refused objects and ignored kinds too: each is looked at once, not on every scan.
            self._applied[key] = desired[key]
            if key[0] not in kinds:
                log.debug("ignoring %s %s/%s: no evaluator of the pipeline reads this kind", *key)
                continue
            self.state.apply(json.loads(desired[key]))
            applied_any = True
        return applied_any

    def objects(self) -> Iterator[ObjectKey]:
        return iter(self._applied)

    def applied_entries(self) -> Mapping[ObjectKey, str]:
        """What was taken from the files: (kind, namespace, name) -> canonical JSON."""
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


#: A folder that stays missing or unreadable is reported at most this often (seconds).
FOLDER_ERROR_INTERVAL = 60.0


class ManifestFolderSource:
    """The manifests folder as an agent source: read at start, re-read on every poll."""

    def __init__(self, folder: str, state: ClusterState) -> None:
        self._source = ManifestSource(folder, state)
        self._revision = ""
        self._folder_error = ""
        self._folder_error_logged = 0.0

    def start(self, submit: Callable[[Callable[[], None]], None]) -> None:
        self.poll()
        self._update_revision()  # also for a folder with nothing in it yet

    def poll(self) -> None:
        try:
            if self._source.sync():
                self._update_revision()
        except ManifestError as err:
            self._report_folder_error(str(err))
            return
        if self._folder_error:
            log.info("manifests folder %s is readable again", self._source.folder)
            self._folder_error = ""

    def _report_folder_error(self, reason: str) -> None:
        """Once, then again every FOLDER_ERROR_INTERVAL while it lasts (polls run 20 times a second)."""
        now = time.monotonic()
        if reason != self._folder_error or now - self._folder_error_logged >= FOLDER_ERROR_INTERVAL:
            log.error("%s; keeping the last objects read from it (next report in %.0f s if it stays so)",
                      reason, FOLDER_ERROR_INTERVAL)
            self._folder_error = reason
            self._folder_error_logged = now

    def revision(self) -> str:
        """A digest of the objects applied to the state (see ``objects_revision``)."""
        return self._revision

    def _update_revision(self) -> None:
        self._revision = entries_revision(self._source.applied_entries())

    def ready(self) -> bool:
        return self._source.loaded

    def stop(self) -> None:
        pass
