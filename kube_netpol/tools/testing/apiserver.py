"""An in-process fake Kubernetes API server for tests: list and watch, driven by the test.

It speaks enough of the API's HTTP protocol for the agent's Kubernetes source
and the official ``kubernetes`` client:

- the collection of every kind of its kind registry (by default the default
  pipeline's: ``/api/v1/{pods,namespaces,nodes}``,
  ``/apis/networking.k8s.io/v1/networkpolicies``, the network-policy-api
  kinds; a test with a plugin passes that plugin's registry), plus
  ``/namespaces/{ns}/...`` variants of namespaced ones, and GET of one object;
- lists with ``limit``/``continue`` served from a consistent snapshot, and a
  list ``resourceVersion``;
- watches (``watch=true``) from a ``resourceVersion``, as a chunked stream of
  JSON lines: ADDED, MODIFIED, DELETED, BOOKMARK (only when the watch asked
  with ``allowWatchBookmarks``) and ERROR; ``timeoutSeconds`` ends a watch
  cleanly; a watch from a compacted resourceVersion gets 410 Gone, as an
  ERROR event (what kube-apiserver does) or as an HTTP status;
- watch-lists (``sendInitialEvents=true`` with ``resourceVersionMatch=NotOlderThan``,
  KEP-3157): the current objects as ADDED events, streamed from a snapshot
  taken when the watch starts, then a BOOKMARK annotated
  ``k8s.io/initial-events-end: "true"`` (when the watch asked for bookmarks),
  then the changes since the snapshot; ``watch_list`` makes the server refuse
  them as kube-apiserver with the WatchList gate off does (422 Invalid), or
  ignore the parameters as a server that does not know them would (a plain
  watch, no bookmark);
- ``labelSelector`` on lists and watches; a watched object that starts or
  stops matching arrives as ADDED or DELETED, as kube-apiserver sends it;
- the write verbs: create (POST), update (PUT, with the optimistic
  concurrency of ``metadata.resourceVersion``), patch (PATCH, JSON merge
  patch) and delete (DELETE, with ``preconditions``), each also as
  ``dryRun=All``; they answer as kube-apiserver does (201/200, 404, 409
  AlreadyExists or Conflict, 422, 415);
- an optional bearer token, and optional RBAC: with ``rules`` (a set of
  ``(apiGroup, resource, verb)``, as a ClusterRole grants them) every other
  request is refused with 403 Forbidden.

It listens on 127.0.0.1 of the namespace its listening socket was made in:
by default this process's, or another network namespace's when
``socket_factory`` makes the socket there (a socket keeps the namespace it
was created in, and the server's threads serve it from here). The first
write of each event to a watch is timestamped (``sent_at``), so that a test
can time what a client does with it.

The test changes objects (each change bumps one global resourceVersion, as
etcd does), compacts history, sends bookmarks, raw lines and errors, drops
open watches, and takes the server down (connections refused) and up again on
the same port. Objects are stored as given: nothing is validated beyond what
a write's envelope needs (kind, name, namespace), so tests can feed malformed
objects to the client.
"""

from __future__ import annotations

import base64
import bisect
import copy
import json
import pathlib
import select
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Literal, Mapping
from urllib.parse import parse_qs, urlsplit

import yaml

from kube_netpol.advise.model import Selector
from kube_netpol.api.kinds import KindSpec
from kube_netpol.sources.kube_watch_protocol import INITIAL_EVENTS_END

Key = tuple[str, str]  # (namespace or "", name)
#: (apiGroup, resource, verb) as a ClusterRole grants it; "" is the core group.
Rule = tuple[str, str, str]
#: Largest write body taken (kube-apiserver's request limit is 3 MiB).
MAX_BODY = 3 * 1024 * 1024


@dataclass(frozen=True)
class FakeResource:
    kind: str
    plural: str
    group_version: str
    namespaced: bool
    #: Built-in types' list items carry no kind/apiVersion; custom resources' do.
    builtin: bool

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.group_version == "v1" else f"/apis/{self.group_version}"

    @property
    def path(self) -> str:
        return f"{self.prefix}/{self.plural}"

    @property
    def group(self) -> str:
        return self.group_version.rpartition("/")[0]

    @classmethod
    def of(cls, spec: KindSpec) -> FakeResource:
        return cls(spec.kind, spec.plural, spec.api_version, spec.namespaced, not spec.custom)


def default_kinds() -> tuple[KindSpec, ...]:
    """The kinds of every built-in evaluator's registry (ClusterNetworkPolicy included)."""
    from kube_netpol.plugins import BUILTIN_ORDER, registry_for

    return tuple(registry_for(BUILTIN_ORDER))


def query_bool(value: str | None) -> bool:
    """A boolean query parameter as kube-apiserver reads it (Go's strconv.ParseBool: older clients send "True")."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


@dataclass(frozen=True)
class RequestRecord:
    method: str
    path: str
    query: Mapping[str, str]

    @property
    def watch(self) -> bool:
        return query_bool(self.query.get("watch"))


@dataclass
class _Event:
    rv: int
    type: str
    plural: str
    namespace: str
    obj: dict[str, Any]
    #: The object before a MODIFIED event (a filtered watch turns it into ADDED or DELETED).
    prev: dict[str, Any] | None = None


@dataclass(eq=False)
class _Watcher:
    resource: FakeResource
    namespace: str | None  # None: all namespaces
    bookmarks: bool
    sock: socket.socket
    cursor: int  # index in the history of the next event to consider
    selector: Selector | None = None
    # (history length when queued, line, end the watch after it)
    pending: list[tuple[int, bytes, bool]] = field(default_factory=list)
    dropped: bool = False


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _line(event_type: str, obj: Mapping[str, Any]) -> bytes:
    return json.dumps({"type": event_type, "object": obj}, separators=(",", ":")).encode() + b"\n"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    fake: "FakeApiServer"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        self.server.fake._track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.fake._untrack(self.connection)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # keep test output clean

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.fake._handle_get(self)

    def _write(self) -> None:
        self.server.fake._handle_write(self)

    do_POST = do_PUT = do_PATCH = do_DELETE = _write  # noqa: N815

    # helpers used by FakeApiServer
    def send_json(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_raw_json(self, code: int, data: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def start_chunked(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.close_connection = True

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")


class FakeApiServer:
    """A Kubernetes API server on 127.0.0.1 (ephemeral port) for the resources kube-netpol watches.

    ``gone_as``: how a watch from a compacted resourceVersion is refused:
    ``"event"`` (HTTP 200 and an ERROR event with code 410, as kube-apiserver
    does) or ``"status"`` (HTTP 410).

    ``watch_list``: ``"serve"`` watch-lists, ``"refuse"`` them (422, as with
    the WatchList feature gate off), or ``"ignore"`` their parameters (a
    plain watch from "now": synthetic ADDED events, never the bookmark).

    ``socket_factory``: makes the unbound IPv4 stream socket to listen on
    (each ``start`` calls it again), e.g. one created inside a lab's node
    network namespace; the server binds it to 127.0.0.1.
    """

    def __init__(
        self,
        token: str | None = None,
        gone_as: Literal["event", "status"] = "event",
        start: bool = True,
        initial_resource_version: int = 1000,
        socket_factory: Callable[[], socket.socket] | None = None,
        kinds: Iterable[KindSpec] | None = None,
        rules: Iterable[Rule] | None = None,
        watch_list: Literal["serve", "refuse", "ignore"] = "serve",
    ) -> None:
        resources = tuple(FakeResource.of(spec) for spec in (default_kinds() if kinds is None else kinds))
        #: RBAC: what the client may do; None allows everything.
        self.rules: set[Rule] | None = set(rules) if rules is not None else None
        self._by_kind = {r.kind: r for r in resources}
        self._by_prefix = {(r.prefix, r.plural): r for r in resources}
        self._prefixes = sorted({r.prefix for r in resources}, key=len, reverse=True)
        self.token = token
        self.gone_as = gone_as
        self.watch_list = watch_list
        #: Cleared, watch-lists hold their initial-events-end bookmark (after the initial events) until it is set.
        self.initial_events_end_gate = threading.Event()
        self.initial_events_end_gate.set()
        self.socket_factory = socket_factory
        self.port = 0
        self.requests: list[RequestRecord] = []
        self._cond = threading.Condition()
        self._rv = initial_resource_version
        self._floor = 0
        self._objects: dict[str, dict[Key, dict[str, Any]]] = {r.plural: {} for r in resources}
        # Kinds answered with 404, as when their CustomResourceDefinition is not installed.
        self.unserved: set[str] = set()
        self._history: list[_Event] = []
        self._history_rvs: list[int] = []
        self._keys_cache: dict[str, tuple[int, list[Key]]] = {}
        self._sent_at: dict[int, float] = {}
        self._watchers: set[_Watcher] = set()
        self._connections: set[socket.socket] = set()
        self._lifecycle = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        if start:
            self.start()

    def resource_for_kind(self, kind: str) -> FakeResource:
        try:
            return self._by_kind[kind]
        except KeyError:
            raise ValueError(f"the fake API server does not serve {kind!r}") from None

    # ---------------------------------------------------------------- lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def is_up(self) -> bool:
        return self._httpd is not None

    def start(self) -> None:
        """Listen (again, on the same port once one was chosen) and serve."""
        with self._lifecycle:
            if self._httpd is not None:
                return
            httpd = self._make_httpd()
            httpd.fake = self
            self.port = httpd.server_address[1]
            self._httpd = httpd
            self._thread = threading.Thread(
                target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-apiserver", daemon=True
            )
            self._thread.start()

    come_up = start

    def _make_httpd(self) -> _HTTPServer:
        address = ("127.0.0.1", self.port)
        if self.socket_factory is None:
            return _HTTPServer(address, _Handler)
        httpd = _HTTPServer(address, _Handler, bind_and_activate=False)
        httpd.socket.close()  # made in this process's namespace; replaced by the factory's
        try:
            httpd.socket = self.socket_factory()
            httpd.socket.setblocking(True)
            httpd.server_bind()
            httpd.server_activate()
        except BaseException:
            httpd.server_close()
            raise
        return httpd

    def go_down(self) -> None:
        """Stop listening (new connections are refused) and cut every open connection."""
        with self._lifecycle:
            httpd, thread = self._httpd, self._thread
            self._httpd = self._thread = None
            if httpd is None:
                return
            httpd.shutdown()
            httpd.server_close()
            if thread is not None:
                thread.join(timeout=5)
        self.drop_watches()
        with self._cond:
            connections = list(self._connections)
        for sock in connections:
            _shutdown(sock)

    def stop(self) -> None:
        self.go_down()

    def __enter__(self) -> "FakeApiServer":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def write_kubeconfig(self, path: str | pathlib.Path, token: str | None = None) -> pathlib.Path:
        """A kubeconfig whose current context points at this server (with ``token``, default the server's)."""
        token = self.token if token is None else token
        user: dict[str, Any] = {"token": token} if token else {}
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
            "current-context": "fake",
        }
        path = pathlib.Path(path)
        path.write_text(yaml.safe_dump(document))
        return path

    # ------------------------------------------------------------ objects (test side)

    @property
    def resource_version(self) -> int:
        return self._rv

    def sent_at(self, resource_version: int | str) -> float | None:
        """When (``time.monotonic()``) the server began writing the event of this resourceVersion to a watch (None: not yet)."""
        return self._sent_at.get(int(resource_version))

    def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._store(obj, "ADDED")

    def update(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        return self._store(obj, "MODIFIED")

    def load(self, objects: Iterable[dict[str, Any]]) -> int:
        """Create many objects at once, taking them over (benchmarks: no copies); the last resourceVersion.

        The server keeps the objects themselves (only their top level and
        metadata are copied, to set resourceVersion and uid), so objects may
        share unchanged parts, e.g. the same managedFields list: a list or a
        watch still writes every object in full. Nothing may change them
        afterwards; updates go through ``update`` as usual.
        """
        with self._cond:
            for obj in objects:
                resource = self.resource_for_kind(obj["kind"])
                stored = dict(obj)
                stored.setdefault("apiVersion", resource.group_version)
                meta = stored["metadata"] = dict(stored.get("metadata") or {})
                key = self._key(resource, stored)
                if key in self._objects[resource.plural]:
                    raise ValueError(f"{resource.kind} {key} already exists")
                self._rv += 1
                meta["resourceVersion"] = str(self._rv)
                meta["uid"] = str(uuid.uuid4())
                self._objects[resource.plural][key] = stored
                self._record_event("ADDED", resource, key, stored)
            return self._rv

    def apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create or update."""
        resource = self.resource_for_kind(obj["kind"])
        with self._cond:
            exists = self._key(resource, obj) in self._objects[resource.plural]
        return self._store(obj, "MODIFIED" if exists else "ADDED")

    def delete(self, kind: str, name: str, namespace: str = "") -> dict[str, Any]:
        resource = self.resource_for_kind(kind)
        key = (namespace if resource.namespaced else "", name)
        with self._cond:
            obj = self._objects[resource.plural].pop(key, None)
            if obj is None:
                raise KeyError(f"no {kind} {namespace}/{name}")
            self._rv += 1
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._record_event("DELETED", resource, key, obj)
        return copy.deepcopy(obj)

    def get(self, kind: str, name: str, namespace: str = "") -> dict[str, Any] | None:
        resource = self.resource_for_kind(kind)
        with self._cond:
            obj = self._objects[resource.plural].get((namespace if resource.namespaced else "", name))
            return copy.deepcopy(obj) if obj is not None else None

    def objects(self, kind: str) -> list[dict[str, Any]]:
        resource = self.resource_for_kind(kind)
        with self._cond:
            return [copy.deepcopy(o) for _, o in sorted(self._objects[resource.plural].items())]

    def compact(self, expire_open_watches: bool = False) -> int:
        """Forget history up to now: watches from an older resourceVersion get 410 Gone.

        With ``expire_open_watches`` the open watches also get an ERROR 410
        event and end, as a watcher that fell behind a compaction does.
        """
        with self._cond:
            self._floor = self._rv
            if expire_open_watches:
                status = _status(410, "Expired", f"too old resource version (compacted at {self._floor})")
                self._queue_line(None, _line("ERROR", status), end=True)
            return self._floor

    # ------------------------------------------------------------ watches (test side)

    def bookmark(self, kind: str | None = None) -> int:
        """Send a BOOKMARK at the current resourceVersion to every watch that asked for bookmarks."""
        with self._cond:
            for watcher in self._watchers_of(kind):
                if watcher.bookmarks:
                    obj = {"kind": watcher.resource.kind, "apiVersion": watcher.resource.group_version,
                           "metadata": {"resourceVersion": str(self._rv)}}
                    watcher.pending.append((len(self._history), _line("BOOKMARK", obj), False))
            self._cond.notify_all()
            return self._rv

    def send_raw_watch_line(self, kind: str, data: bytes) -> None:
        """Send ``data`` as one line to the open watches of ``kind`` (e.g. invalid JSON)."""
        with self._cond:
            self._queue_line(kind, data.rstrip(b"\n") + b"\n", end=False)

    def send_watch_error(self, kind: str | None, code: int, reason: str, message: str = "") -> None:
        """An ERROR event (a Status) to the open watches, which then end."""
        with self._cond:
            self._queue_line(kind, _line("ERROR", _status(code, reason, message or reason)), end=True)

    def drop_watches(self, kind: str | None = None) -> int:
        """Cut the open watch connections abruptly (no end of stream); returns how many."""
        with self._cond:
            dropped = list(self._watchers_of(kind))
            for watcher in dropped:
                watcher.dropped = True
                _shutdown(watcher.sock)
            self._cond.notify_all()
        return len(dropped)

    def open_watches(self, kind: str | None = None) -> int:
        with self._cond:
            return sum(1 for _ in self._watchers_of(kind))

    def wait_for_watches(self, kinds: list[str] | tuple[str, ...], timeout: float = 3.0) -> None:
        """Block until every kind in ``kinds`` has an open watch."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not all(any(True for _ in self._watchers_of(kind)) for kind in kinds):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no open watch for some of {kinds}")
                self._cond.wait(remaining)

    # --------------------------------------------------------------- request log

    def list_requests(self, kind: str) -> list[RequestRecord]:
        path = self.resource_for_kind(kind).plural
        return [r for r in list(self.requests) if r.method == "GET" and not r.watch and r.path.endswith("/" + path)]

    def watch_requests(self, kind: str) -> list[RequestRecord]:
        path = self.resource_for_kind(kind).plural
        return [r for r in list(self.requests) if r.watch and r.path.endswith("/" + path)]

    def write_requests(self) -> list[RequestRecord]:
        """Every create, update, patch and delete asked for (refused ones and dry runs included)."""
        return [r for r in list(self.requests) if r.method != "GET"]

    # ------------------------------------------------------------------ internal

    def _key(self, resource: FakeResource, obj: Mapping[str, Any]) -> Key:
        meta = obj.get("metadata") or {}
        name = meta.get("name")
        if not name:
            raise ValueError("the fake API server needs metadata.name")
        return ((meta.get("namespace") or "") if resource.namespaced else "", name)

    def _store(self, obj: Mapping[str, Any], event_type: str) -> dict[str, Any]:
        resource = self.resource_for_kind(obj["kind"])
        stored = copy.deepcopy(dict(obj))
        stored.setdefault("apiVersion", resource.group_version)
        meta = stored.setdefault("metadata", {})
        key = self._key(resource, stored)
        with self._cond:
            existing = self._objects[resource.plural].get(key)
            if event_type == "ADDED" and existing is not None:
                raise ValueError(f"{resource.kind} {key} already exists")
            if event_type == "MODIFIED" and existing is None:
                raise KeyError(f"no {resource.kind} {key}")
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            meta["uid"] = existing["metadata"].get("uid") if existing else str(uuid.uuid4())
            self._objects[resource.plural][key] = stored
            self._record_event(event_type, resource, key, copy.deepcopy(stored), existing)
        return copy.deepcopy(stored)

    def _record_event(self, event_type: str, resource: FakeResource, key: Key, obj: dict[str, Any],
                      prev: dict[str, Any] | None = None) -> None:
        # Called with the lock held.
        self._history.append(_Event(self._rv, event_type, resource.plural, key[0], obj, prev))
        self._history_rvs.append(self._rv)
        self._cond.notify_all()

    def _watchers_of(self, kind: str | None) -> Any:
        plural = self.resource_for_kind(kind).plural if kind else None
        return (w for w in self._watchers if not w.dropped and (plural is None or w.resource.plural == plural))

    def _queue_line(self, kind: str | None, line: bytes, end: bool) -> None:
        # Called with the lock held.
        for watcher in self._watchers_of(kind):
            watcher.pending.append((len(self._history), line, end))
        self._cond.notify_all()

    def _track(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.add(sock)
        if self._httpd is None:  # accepted while going down
            _shutdown(sock)

    def _untrack(self, sock: socket.socket) -> None:
        with self._cond:
            self._connections.discard(sock)

    def _route(self, path: str) -> tuple[FakeResource, str | None, str | None] | None:
        """(resource, namespace or None for all, object name or None) for a request path."""
        for prefix in self._prefixes:
            if not path.startswith(prefix + "/"):
                continue
            parts = [p for p in path[len(prefix) + 1:].split("/") if p]
            if len(parts) >= 3 and parts[0] == "namespaces":
                resource = self._by_prefix.get((prefix, parts[2]))
                if resource is not None and resource.namespaced and len(parts) <= 4:
                    return resource, parts[1], parts[3] if len(parts) == 4 else None
            if 1 <= len(parts) <= 2:
                resource = self._by_prefix.get((prefix, parts[0]))
                if resource is not None:
                    return resource, None, parts[1] if len(parts) == 2 else None
        return None

    def _admit(self, handler: _Handler) -> tuple[FakeResource, str | None, str | None, dict[str, str]] | None:
        """Log, authenticate, route and authorize a request; None when it was answered already."""
        url = urlsplit(handler.path)
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        method = handler.command
        self.requests.append(RequestRecord(method, url.path, query))
        if self.token and handler.headers.get("Authorization") != f"Bearer {self.token}":
            handler.send_json(401, _status(401, "Unauthorized", "Unauthorized"))
            return None
        accept = handler.headers.get("Accept") or "*/*"
        if "json" not in accept and "*/*" not in accept:
            # kube-apiserver would answer in protobuf or YAML; the fake speaks JSON only.
            handler.send_json(406, _status(406, "NotAcceptable", f"only JSON is served, not {accept}"))
            return None
        route = self._route(url.path)
        if route is None:
            handler.send_json(404, _status(404, "NotFound", f"the server could not find {url.path}"))
            return None
        resource, namespace, name = route
        if resource.kind in self.unserved:
            handler.send_json(404, _status(404, "NotFound", "the server could not find the requested resource"))
            return None
        verb = _verb(method, name, query_bool(query.get("watch")))
        if verb is None:
            handler.send_json(405, _status(405, "MethodNotAllowed", f"{method} {url.path} is not supported"))
            return None
        if self.rules is not None and (resource.group, resource.plural, verb) not in self.rules:
            scope = f' in the namespace "{namespace}"' if namespace else " at the cluster scope"
            handler.send_json(403, _status(403, "Forbidden", (
                f'{resource.plural}{"." + resource.group if resource.group else ""} is forbidden: the client cannot '
                f'{verb} resource "{resource.plural}" in API group "{resource.group}"{scope}')))
            return None
        return resource, namespace, name, query

    def _handle_get(self, handler: _Handler) -> None:
        admitted = self._admit(handler)
        if admitted is None:
            return
        resource, namespace, name, query = admitted
        if name is not None:
            obj = self.get(resource.kind, name, namespace or "")
            if obj is None:
                handler.send_json(404, _status(404, "NotFound", f"{resource.plural} {name!r} not found"))
            else:
                handler.send_json(200, obj)
        elif query_bool(query.get("watch")):
            self._serve_watch(handler, resource, namespace, query)
        else:
            self._serve_list(handler, resource, namespace, query)

    # ------------------------------------------------------------------- writes

    def _handle_write(self, handler: _Handler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            handler.close_connection = True
            handler.send_json(413, _status(413, "RequestEntityTooLarge", "the request is too large"))
            return
        raw = handler.rfile.read(length) if length else b""
        admitted = self._admit(handler)
        if admitted is None:
            return
        resource, namespace, name, query = admitted
        # kube-apiserver reads a body without a Content-Type as JSON (the official client sends none on create).
        content_type = (handler.headers.get("Content-Type") or "").split(";")[0].strip()
        if not content_type and handler.command != "PATCH":
            content_type = "application/json"
        if handler.command == "PATCH" and content_type != "application/merge-patch+json":
            handler.send_json(415, _status(415, "UnsupportedMediaType", "the fake API server takes JSON merge patches "
                                                                        f"only, not {content_type!r}"))
            return
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            handler.send_json(400, _status(400, "BadRequest", "the request body is not JSON"))
            return
        if body is not None and not isinstance(body, dict):
            handler.send_json(400, _status(400, "BadRequest", "the request body is not a JSON object"))
            return
        dry_run = query.get("dryRun") == "All"
        try:
            if handler.command == "POST":
                code, answer = 201, self._create(resource, namespace, body, content_type, dry_run)
            elif handler.command == "PUT":
                code, answer = 200, self._replace(resource, namespace, name or "", body, content_type, dry_run)
            elif handler.command == "PATCH":
                code, answer = 200, self._patch(resource, namespace, name or "", body, content_type, dry_run)
            else:
                code, answer = 200, self._remove(resource, namespace, name or "", body, dry_run)
        except _WriteError as err:
            handler.send_json(err.code, _status(err.code, err.reason, err.message))
            return
        handler.send_json(code, answer)

    def _object_for_write(self, resource: FakeResource, namespace: str | None, body: dict[str, Any] | None,
                          content_type: str) -> dict[str, Any]:
        if content_type != "application/json":
            raise _WriteError(415, "UnsupportedMediaType", f"the body must be application/json, not {content_type!r}")
        if body is None:
            raise _WriteError(400, "BadRequest", "the request has no body")
        obj = copy.deepcopy(body)
        if obj.setdefault("kind", resource.kind) != resource.kind:
            raise _WriteError(400, "BadRequest", f"the body is a {obj['kind']}, not a {resource.kind}")
        if obj.setdefault("apiVersion", resource.group_version) != resource.group_version:
            raise _WriteError(400, "BadRequest", f"apiVersion {obj['apiVersion']!r}, expected {resource.group_version!r}")
        meta = obj.get("metadata")
        if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) or not meta["name"]:
            raise _WriteError(422, "Invalid", f"{resource.kind} is invalid: metadata.name: Required value")
        if resource.namespaced:
            if not namespace:
                raise _WriteError(404, "NotFound", f"{resource.plural} are namespaced: write them under /namespaces/NS")
            if meta.setdefault("namespace", namespace) != namespace:
                raise _WriteError(400, "BadRequest", "the namespace of the object does not match the namespace of the request")
        return obj

    def _create(self, resource: FakeResource, namespace: str | None, body: dict[str, Any] | None,
                content_type: str, dry_run: bool) -> dict[str, Any]:
        obj = self._object_for_write(resource, namespace, body, content_type)
        obj["metadata"].pop("resourceVersion", None)
        with self._cond:
            key = self._key(resource, obj)
            if key in self._objects[resource.plural]:
                raise _WriteError(409, "AlreadyExists", f'{resource.plural} "{key[1]}" already exists')
            if dry_run:
                return obj
            return self._store(obj, "ADDED")

    def _replace(self, resource: FakeResource, namespace: str | None, name: str, body: dict[str, Any] | None,
                 content_type: str, dry_run: bool) -> dict[str, Any]:
        obj = self._object_for_write(resource, namespace, body, content_type)
        if obj["metadata"]["name"] != name:
            raise _WriteError(400, "BadRequest", "the name of the object does not match the name on the URL")
        with self._cond:
            existing = self._objects[resource.plural].get(self._key(resource, obj))
            if existing is None:
                raise _WriteError(404, "NotFound", f'{resource.plural} "{name}" not found')
            wanted = obj["metadata"].get("resourceVersion")
            if wanted and wanted != existing["metadata"]["resourceVersion"]:
                raise _WriteError(409, "Conflict", f'Operation cannot be fulfilled on {resource.plural} "{name}": '
                                                   "the object has been modified; please apply your changes to the "
                                                   "latest version and try again")
            if dry_run:
                return obj
            return self._store(obj, "MODIFIED")

    def _patch(self, resource: FakeResource, namespace: str | None, name: str, body: dict[str, Any] | None,
               content_type: str, dry_run: bool) -> dict[str, Any]:
        with self._cond:
            existing = self.get(resource.kind, name, namespace or "")
            if existing is None:
                raise _WriteError(404, "NotFound", f'{resource.plural} "{name}" not found')
            patched = _merge_patch(existing, body or {})
            return self._replace(resource, namespace, name, patched, "application/json", dry_run)

    def _remove(self, resource: FakeResource, namespace: str | None, name: str, body: dict[str, Any] | None,
                dry_run: bool) -> dict[str, Any]:
        with self._cond:
            existing = self._objects[resource.plural].get((namespace or "" if resource.namespaced else "", name))
            if existing is None:
                raise _WriteError(404, "NotFound", f'{resource.plural} "{name}" not found')
            preconditions = (body or {}).get("preconditions") or {}
            for field_name in ("uid", "resourceVersion"):
                wanted = preconditions.get(field_name)
                if wanted and wanted != existing["metadata"].get(field_name):
                    raise _WriteError(409, "Conflict", f'Operation cannot be fulfilled on {resource.plural} "{name}": '
                                                       f"Precondition failed: {field_name}: {wanted}")
            if not dry_run:
                self.delete(resource.kind, name, namespace or "")
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                "details": {"name": name, "kind": resource.plural, "uid": existing["metadata"].get("uid")}}

    # -------------------------------------------------------------------- list

    def _list_item(self, resource: FakeResource, obj: dict[str, Any]) -> dict[str, Any]:
        if resource.builtin:
            return {k: v for k, v in obj.items() if k not in ("kind", "apiVersion")}
        return obj

    def _snapshot(self, resource: FakeResource, rv: int) -> dict[Key, dict[str, Any]]:
        # Called with the lock held: replay the history up to rv.
        if not any(event.plural == resource.plural for event in
                   self._history[bisect.bisect_right(self._history_rvs, rv):]):
            return self._objects[resource.plural]  # nothing of this kind changed since rv
        objects: dict[Key, dict[str, Any]] = {}
        for event in self._history:
            if event.rv > rv:
                break
            if event.plural != resource.plural:
                continue
            key = self._key(resource, event.obj)
            if event.type == "DELETED":
                objects.pop(key, None)
            else:
                objects[key] = event.obj
        return objects

    def _serve_list(self, handler: _Handler, resource: FakeResource, namespace: str | None,
                    query: Mapping[str, str]) -> None:
        try:
            limit = int(query.get("limit") or 0)
            token = query.get("continue") or ""
            after: Key | None = None
            if token:
                decoded = json.loads(base64.urlsafe_b64decode(token.encode()))
                snapshot_rv, after = int(decoded["rv"]), (decoded["after"][0], decoded["after"][1])
        except (ValueError, KeyError, IndexError, TypeError):
            handler.send_json(400, _status(400, "BadRequest", "invalid limit or continue parameter"))
            return
        selector = self._selector(handler, query)
        if selector is False:
            return
        with self._cond:
            if token:
                if snapshot_rv < self._floor:
                    handler.send_json(410, _status(
                        410, "Expired", "The provided continue parameter is too old to display a consistent list result."
                    ))
                    return
                objects = self._snapshot(resource, snapshot_rv)
            else:
                snapshot_rv = self._rv
                objects = self._objects[resource.plural]
            keys = self._sorted_keys(resource, snapshot_rv, objects)
            if namespace is not None or selector is not None:
                keys = [k for k in keys if (namespace is None or k[0] == namespace)
                        and (selector is None or selector.matches(_labels(objects[k])))]
            start = bisect.bisect_right(keys, after) if after is not None else 0
            page = keys[start:start + limit] if limit > 0 else keys
            more = limit > 0 and len(keys) > start + limit
            # Written out under the lock, so that no copy is needed (stored objects are replaced, never changed).
            items = json.dumps([self._list_item(resource, objects[k]) for k in page])
        meta: dict[str, Any] = {"resourceVersion": str(snapshot_rv)}
        if more:
            meta["continue"] = base64.urlsafe_b64encode(
                json.dumps({"rv": snapshot_rv, "after": list(page[-1])}).encode()
            ).decode()
        head = json.dumps({"kind": f"{resource.kind}List", "apiVersion": resource.group_version, "metadata": meta})
        handler.send_raw_json(200, f'{head[:-1]}, "items": {items}}}'.encode())

    def _sorted_keys(self, resource: FakeResource, rv: int, objects: Mapping[Key, Any]) -> list[Key]:
        # Called with the lock held. A paged list of N objects asks for them N/limit times: sort once per version.
        cached = self._keys_cache.get(resource.plural)
        if cached is not None and cached[0] == rv:
            return cached[1]
        keys = sorted(objects)
        self._keys_cache[resource.plural] = (rv, keys)
        return keys

    # ------------------------------------------------------------------- watch

    def _serve_watch(self, handler: _Handler, resource: FakeResource, namespace: str | None,
                     query: Mapping[str, str]) -> None:
        selector = self._selector(handler, query)
        if selector is False:
            return
        watch_list = self._watch_list_request(handler, query)
        if watch_list is None:
            return
        rv_text = query.get("resourceVersion", "")
        timeout = float(query.get("timeoutSeconds") or 0)
        deadline = time.monotonic() + timeout if timeout > 0 else None
        initial: list[tuple[Key, dict[str, Any]]] = []
        bookmark: bytes | None = None
        watcher: _Watcher | None = None
        with self._cond:
            if watch_list or rv_text in ("", "0"):
                # A watch-list, or no resourceVersion: synthetic ADDED events for what exists (from a snapshot:
                # stored objects are replaced, never changed), then changes. Only a watch-list says where the
                # initial state ends; with NotOlderThan any resourceVersion up to now is satisfied by now.
                if watch_list and rv_text and (not rv_text.isdigit() or int(rv_text) > self._rv):
                    handler.send_json(504, _status(504, "Timeout", f"Too large resource version: {rv_text}, "
                                                                   f"current: {self._rv}"))
                    return
                cursor = len(self._history)
                initial = [(key, obj) for key, obj in self._objects[resource.plural].items()
                           if (namespace is None or key[0] == namespace)
                           and (selector is None or selector.matches(_labels(obj)))]
                if watch_list and query_bool(query.get("allowWatchBookmarks")):
                    bookmark = _line("BOOKMARK", {
                        "kind": resource.kind, "apiVersion": resource.group_version,
                        "metadata": {"resourceVersion": str(self._rv), "annotations": {INITIAL_EVENTS_END: "true"}}})
            else:
                try:
                    since = int(rv_text)
                except ValueError:
                    since = -1
                if since < 0:
                    handler.send_json(400, _status(400, "BadRequest", f"invalid resourceVersion {rv_text!r}"))
                    return
                if since < self._floor:
                    gone = _status(410, "Expired", f"too old resource version: {since} ({self._floor})")
                    cursor = -1
                else:
                    cursor = bisect.bisect_right(self._history_rvs, since)
            if cursor >= 0:
                watcher = _Watcher(resource, namespace, query_bool(query.get("allowWatchBookmarks")),
                                   handler.connection, cursor, selector)
                self._watchers.add(watcher)
                self._cond.notify_all()
        try:
            if watcher is None:
                if self.gone_as == "status":
                    handler.send_json(410, gone)
                else:
                    handler.start_chunked()
                    handler.write_chunk(_line("ERROR", gone))
                    handler.end_chunked()
                return
            handler.start_chunked()
            self._write_initial(handler, watcher, sorted(initial, key=lambda item: item[0]))
            if bookmark is not None:
                while not self.initial_events_end_gate.wait(0.05):
                    if watcher.dropped or _client_gone(watcher.sock):
                        return
                handler.write_chunk(bookmark)
            self._follow(handler, watcher, deadline)
        except OSError:
            handler.close_connection = True  # the client went away or the test cut the connection
        finally:
            if watcher is not None:
                with self._cond:
                    self._watchers.discard(watcher)

    def _watch_list_request(self, handler: _Handler, query: Mapping[str, str]) -> bool | None:
        """Is this watch a watch-list (sendInitialEvents=true)? None when it was refused, as kube-apiserver validates it."""
        send_initial = query.get("sendInitialEvents")
        match = query.get("resourceVersionMatch")
        if self.watch_list == "ignore":
            return False
        problems = []
        if send_initial is not None:
            if self.watch_list == "refuse":
                problems.append("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless the "
                                "WatchList feature gate is enabled")
            if match != "NotOlderThan":
                problems.append("resourceVersionMatch: Forbidden: sendInitialEvents requires setting "
                                "resourceVersionMatch to NotOlderThan")
        elif match:
            problems.append("resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless "
                            "sendInitialEvents is provided")
        if problems:
            handler.send_json(422, _status(422, "Invalid", 'ListOptions.meta.k8s.io "" is invalid: '
                                                           + ", ".join(problems)))
            return None
        return query_bool(send_initial)

    @staticmethod
    def _write_initial(handler: _Handler, watcher: _Watcher, objects: list[tuple[Key, dict[str, Any]]]) -> None:
        """The initial ADDED events, serialised as they are written (chunks of about 64 KiB)."""
        pending: list[bytes] = []
        size = 0
        for _key, obj in objects:
            if watcher.dropped:
                raise OSError("the watch was cut")
            line = _line("ADDED", obj)
            pending.append(line)
            size += len(line)
            if size >= 65536:
                handler.write_chunk(b"".join(pending))
                pending.clear()
                size = 0
        if pending:
            handler.write_chunk(b"".join(pending))

    def _follow(self, handler: _Handler, watcher: _Watcher, deadline: float | None) -> None:
        while True:
            with self._cond:
                while not (watcher.dropped or watcher.pending or watcher.cursor < len(self._history)):
                    wait = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                    if wait <= 0 or _client_gone(watcher.sock):
                        break
                    self._cond.wait(wait)
                if watcher.dropped or _client_gone(watcher.sock):
                    return  # cut by the test (no end of stream) or closed by the client
                lines, end = self._collect(watcher)
            for line, rv in lines:
                if rv is not None and rv not in self._sent_at:
                    # Before the write: after it, this thread may wait for the GIL while the client already acts.
                    self._sent_at[rv] = time.monotonic()
                handler.write_chunk(line)
            if end or (deadline is not None and time.monotonic() >= deadline):
                handler.end_chunked()
                return

    def _collect(self, watcher: _Watcher) -> tuple[list[tuple[bytes, int | None]], bool]:
        # Called with the lock held: history events (with their resourceVersion) interleaved
        # with queued lines (None) in order.
        lines: list[tuple[bytes, int | None]] = []
        for position, line, end in watcher.pending:
            lines.extend(self._history_lines(watcher, position))
            lines.append((line, None))
            if end:
                watcher.pending.clear()
                return lines, True
        watcher.pending.clear()
        lines.extend(self._history_lines(watcher, len(self._history)))
        return lines, False

    def _history_lines(self, watcher: _Watcher, until: int) -> list[tuple[bytes, int | None]]:
        lines: list[tuple[bytes, int | None]] = []
        for event in self._history[watcher.cursor:until]:
            if event.plural == watcher.resource.plural and (
                watcher.namespace is None or event.namespace == watcher.namespace
            ):
                seen = _filtered(event, watcher.selector)
                if seen is not None:
                    lines.append((_line(*seen), event.rv))
        watcher.cursor = max(watcher.cursor, until)
        return lines

    def _selector(self, handler: _Handler, query: Mapping[str, str]) -> Selector | None | Literal[False]:
        """The request's labelSelector (None: none); False when it was refused with 400."""
        text = query.get("labelSelector")
        if not text:
            return None
        try:
            return Selector.parse(text)
        except ValueError as err:
            handler.send_json(400, _status(400, "BadRequest", f"unable to parse requirement: {err}"))
            return False


class _WriteError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


def _verb(method: str, name: str | None, watch: bool) -> str | None:
    """The RBAC verb of a request (None: one the fake does not serve, e.g. deletecollection)."""
    if method == "GET":
        return "get" if name is not None else ("watch" if watch else "list")
    if name is None:
        return "create" if method == "POST" else None
    return {"PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(method)


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch: objects merge key by key, null removes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


def _labels(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    meta = obj.get("metadata") if isinstance(obj, Mapping) else None
    labels = meta.get("labels") if isinstance(meta, Mapping) else None
    return labels if isinstance(labels, Mapping) else {}


def _filtered(event: _Event, selector: Selector | None) -> tuple[str, dict[str, Any]] | None:
    """What a watch with ``selector`` sees of an event, as kube-apiserver sends it: an object that starts
    matching is ADDED, one that stops matching is DELETED (its last matching state, at the event's
    resourceVersion), one that never matched is not seen."""
    if selector is None:
        return event.type, event.obj
    now = selector.matches(_labels(event.obj))
    if event.type != "MODIFIED":
        return (event.type, event.obj) if now else None
    before = event.prev is not None and selector.matches(_labels(event.prev))
    if now:
        return ("MODIFIED" if before else "ADDED"), event.obj
    if not before or event.prev is None:
        return None
    gone = copy.deepcopy(event.prev)
    gone["metadata"]["resourceVersion"] = event.obj["metadata"]["resourceVersion"]
    return "DELETED", gone


def _client_gone(sock: socket.socket) -> bool:
    """Has the client closed its end? (A watch client sends nothing after its request.)"""
    try:
        readable, _, _ = select.select([sock], [], [], 0)
        return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
    except (OSError, ValueError):
        return True


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
