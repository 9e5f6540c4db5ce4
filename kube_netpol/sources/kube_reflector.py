"""List then watch one Kubernetes resource, on its own thread, feeding ClusterState through ``submit``.

The loop:

1. stream the collection's current state with a watch-list request
   (``sendInitialEvents=true``, KEP-3157) where the client's method takes it:
   ADDED events gathered into pages and handed on as a list's pages are, up
   to the BOOKMARK annotated ``k8s.io/initial-events-end``, which ends the
   sync; the same watch then goes on as in 2. A server that refuses it (422,
   as kube-apiserver before 1.27 or with the WatchList gate off) or that does
   not end the initial state (no such bookmark: a plain bookmark first,
   silence, or a time limit) makes this reflector list in pages from then on
   (logged once). Otherwise (or with ``WatchSettings.watch_list`` off):
   list the collection page by page (``limit``/``continue``), handing each
   page to the control thread as it arrives (the next page is read while it
   is applied, never more: a list costs the state's memory plus about two
   pages), then delete what the list did not hold, and remember the list's
   resourceVersion;
2. watch from that resourceVersion (with bookmarks), hand every event to the
   control thread and remember each event's resourceVersion;
3. when the watch ends or breaks, watch again from the last resourceVersion
   (after a capped exponential backoff if it broke); when the server says 410
   Gone, go back to 1.

The state is never cleared because the server is unreachable: the last known
objects stay in force until a list or an event changes them.

The HTTP calls go through ``request(**query)``, a function that returns an
unread urllib3-style response (``.data``, ``.stream()``, ``.close()``) or
raises an exception with a ``.status`` for HTTP errors, as the official
client's list methods do with ``_preload_content=False``.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Callable

from kube_netpol.api.cluster import ObjectKey
from kube_netpol.api.kinds import KindSpec
from kube_netpol.sources import kube_apply
from kube_netpol.sources.pod_pages import decode_pod_event, decode_pod_page
from kube_netpol.sources.kube_watch_protocol import (
    GONE,
    BadEvent,
    is_initial_events_end,
    parse_event,
    resource_version_of,
    split_lines,
    status_code,
    status_text,
)
from kube_netpol.state import ClusterState

log = logging.getLogger(__name__)

Submit = Callable[[Callable[[], None]], None]
Request = Callable[..., Any]


@dataclass(frozen=True)
class WatchSettings:
    #: Objects per list page.
    page_size: int = 500
    #: Server-side watch duration (timeoutSeconds); each watch asks for a random
    #: value between this and twice this so that agents do not reconnect in step.
    watch_timeout: float = 300.0
    connect_timeout: float = 10.0
    #: Read timeout of a list page.
    list_read_timeout: float = 60.0
    #: Longest silence on an open watch before we give up on it and watch again from the last
    #: resourceVersion. The API server sends a BOOKMARK about once a minute to watches that ask for
    #: them (its bookmarkFrequency; we always ask): 60 s plus the 15 s slack it keeps events for.
    #: A server that sends no bookmarks costs a re-watch per quiet 75 s, nothing more.
    watch_read_timeout: float = 75.0
    #: TCP keepalive on every connection to the API server (see ``dead_connection_timeout``).
    keepalive_idle: int = 15
    keepalive_interval: int = 5
    keepalive_count: int = 3
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    #: A watch that lasted this long (or delivered an event) was healthy: the backoff starts over.
    healthy_watch: float = 1.0
    #: Stream each kind's initial state with a watch-list request (sendInitialEvents) where the
    #: client's method has the parameter; False: paged lists always (``--watch-list=false``).
    watch_list: bool = True
    #: While a watch-list's initial state streams: the longest silence, and the longest time in all,
    #: before we decide that the server will not end it with its bookmark and list in pages instead.
    #: kube-apiserver sends the bookmark within about a second of the last initial event.
    watch_list_silence: float = 30.0
    watch_list_timeout: float = 120.0

    @property
    def dead_connection_timeout(self) -> int:
        """Seconds after its last sign of life that a connection whose peer vanished without a reset
        (node gone, NAT or load balancer state dropped) fails: unanswered keepalive probes, and as
        TCP_USER_TIMEOUT unacknowledged data. 30 s by default, well inside a minute."""
        return self.keepalive_idle + self.keepalive_interval * self.keepalive_count


class Backoff:
    """Capped exponential delays with jitter (so that a fleet of agents does not retry in step)."""

    def __init__(self, initial: float, maximum: float, rng: random.Random | None = None) -> None:
        self.initial = initial
        self.maximum = maximum
        self._failures = 0
        self._rng = rng or random.Random()

    def next(self) -> float:
        delay = min(self.maximum, self.initial * (2 ** min(self._failures, 30)))
        self._failures += 1
        return float(delay * self._rng.uniform(0.75, 1.0))

    def reset(self) -> None:
        self._failures = 0


class ResourceGone(Exception):
    """The resourceVersion we watch from was compacted away (410): list again."""


class WatchFailed(Exception):
    """The server sent an ERROR event other than 410."""


class WatchListUnsupported(Exception):
    """The server does not stream the initial state (refused sendInitialEvents, or never ended it)."""


#: How a server that does not know (or has switched off) sendInitialEvents refuses it: 422 Invalid
#: ListOptions ("sendInitialEvents is forbidden for watch unless the WatchList feature gate is
#: enabled"; before 1.27 "resourceVersionMatch is forbidden for watch"); 400 from odd proxies.
_WATCH_LIST_REFUSED = frozenset({400, 422})
#: Consecutive watch-lists that ended cleanly before their bookmark after which we stop trying.
_EARLY_ENDS_TOLERATED = 3


def _status_message(err: BaseException) -> str:
    """The ``message`` of the Status an HTTP error carries (the client's ApiException.body), bounded."""
    body = getattr(err, "body", None)
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    if not isinstance(body, str) or not body:
        return ""
    try:
        status = json.loads(body[:65536])
    except ValueError:
        return ""
    message = status.get("message") if isinstance(status, Mapping) else None
    return message[:300] if isinstance(message, str) else ""


class _StreamWatchdog:
    """Breaks a watch-list whose initial state stalls (no line for ``silence`` s) or lasts over ``limit`` s.

    A server that ignores sendInitialEvents answers with a plain watch: its
    events, then silence, never the bookmark we wait for.
    """

    def __init__(self, name: str, abort: Callable[[], None], silence: float, limit: float) -> None:
        self._abort = abort
        self._silence = silence
        self._limit = limit
        self._deadline = time.monotonic() + limit
        self._last = time.monotonic()
        self._done = threading.Event()
        #: Why the stream was broken ("" while it was not).
        self.reason = ""
        self._thread = threading.Thread(target=self._guard, name=f"watch-list-{name}", daemon=True)
        self._thread.start()

    def progress(self) -> None:
        self._last = time.monotonic()

    def stop(self) -> None:
        self._done.set()

    def _guard(self) -> None:
        tick = max(0.01, min(0.5, self._silence / 4))
        while not self._done.wait(tick):
            now = time.monotonic()
            if now - self._last >= self._silence:
                self.reason = f"nothing for {self._silence:g} s and no initial-events-end bookmark"
            elif now >= self._deadline:
                self.reason = f"no initial-events-end bookmark within {self._limit:g} s"
            else:
                continue
            self._abort()
            return


@dataclass
class _InitialState:
    """What a watch-list gathers until its bookmark: the keys seen (filled on the control thread), the page being filled."""

    seen: set[ObjectKey]
    page: list[Any]
    applied: threading.Event | None = None
    listed: int = 0


def describe_error(err: BaseException) -> str:
    """A short reason for a log line: ``HTTP 403 Forbidden``, ``connection refused``..."""
    status = getattr(err, "status", None)
    if isinstance(status, int):
        reason = getattr(err, "reason", None)
        return f"HTTP {status} {reason}" if reason else f"HTTP {status}"
    inner = getattr(err, "reason", None)  # urllib3.MaxRetryError wraps the real cause
    if isinstance(inner, BaseException):
        err = inner
    text = str(err) or type(err).__name__
    return f"{type(err).__name__}: {text}"[:300]


class Reflector:
    """Keeps ClusterState's objects of one kind equal to the API server's."""

    def __init__(
        self,
        resource: KindSpec,
        request: Request,
        state: ClusterState,
        submit: Submit,
        settings: WatchSettings | None = None,
        watch_list: bool = False,
    ) -> None:
        """``watch_list``: ``request`` takes ``send_initial_events`` (and ``settings.watch_list`` allows it)."""
        self.resource = resource
        self._request = request
        self._state = state
        self._submit = submit
        self._settings = settings or WatchSettings()
        self._backoff = Backoff(self._settings.backoff_initial, self._settings.backoff_max)
        self._stopping = threading.Event()
        self._synced = threading.Event()
        self._resource_version: str | None = None
        self._response: Any = None
        self._response_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._relist_reason = ""
        self._missing_reported = False
        self._watch_list = watch_list and (settings or WatchSettings()).watch_list
        self._early_ends = 0
        self.lists_completed = 0
        #: The resourceVersion of the last list or event applied to the state; set on the control thread.
        self.applied_version = ""

    # ------------------------------------------------------------------ control

    @property
    def synced(self) -> bool:
        """The first list has been applied to the state (by the control thread)."""
        return self._synced.is_set()

    @property
    def streams(self) -> bool:
        """The next (re)list is a watch-list (False: paged lists, by settings or after the server refused)."""
        return self._watch_list

    @property
    def resource_version(self) -> str | None:
        """Where the next watch starts; None while a (re)list is due."""
        return self._resource_version

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.resource.plural}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to end and break its open watch, if any; see ``join``."""
        self._stopping.set()
        with self._response_lock:
            if self._response is not None:
                _abort(self._response)

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    # --------------------------------------------------------------------- loop

    def _run(self) -> None:
        name = self.resource.plural
        while not self._stopping.is_set():
            phase = "list"
            try:
                if self._resource_version is None and self._watch_list:
                    phase = "watch-list"
                    healthy = self._watch(stream=True)
                else:
                    if self._resource_version is None:
                        self._list()
                    phase = "watch"
                    healthy = self._watch()
                if self._stopping.is_set():
                    break
                if healthy:
                    log.info("%s: watch closed by the server; reconnecting from resourceVersion %s",
                             name, self._resource_version, extra=self._log_extra())
                    continue
                delay = self._backoff.next()
                log.warning("%s: watch closed by the server at once; reconnecting from resourceVersion %s in %.2f s",
                            name, self._resource_version, delay, extra=self._log_extra())
                self._stopping.wait(delay)
            except WatchListUnsupported as refused:
                if self._stopping.is_set():
                    break
                # Making progress beats waiting for a bookmark that may never come: list now, and from now on.
                self._watch_list = False
                log.warning("%s: the API server does not stream the initial state (%s); listing in pages instead",
                            name, refused, extra=self._log_extra())
            except ResourceGone as gone:
                if self._stopping.is_set():
                    break
                log.info("%s: resourceVersion %s is too old (%s); relisting", name, self._resource_version, gone,
                         extra=self._log_extra())
                self._resource_version = None
                self._relist_reason = "410 Gone"
            except Exception as err:  # noqa: BLE001 - any failure: keep the state, back off, retry
                if self._stopping.is_set():
                    break
                delay = self._backoff.next()
                reason = describe_error(err)
                listing = phase in ("list", "watch-list")
                if getattr(err, "status", None) == 404 and self.resource.custom:
                    reason += " (is the CustomResourceDefinition installed?)"
                    if listing and not self._synced.is_set() and not self._missing_reported:
                        # Not served at all: there are no such objects. Count the initial
                        # list as in (empty) so the other kinds are enforced, and keep
                        # retrying so the kind is picked up once its CRD is installed.
                        self._missing_reported = True
                        log.error("%s: not served by the API server (is the CustomResourceDefinition "
                                  "installed?); enforcing without them and retrying", name, extra=self._log_extra())
                        self._submit_list([], None)
                if listing:
                    log.warning("%s: %s failed (%s); retrying in %.2f s", name, phase, reason, delay,
                                extra=self._log_extra())
                else:
                    log.warning("%s: watch failed (%s); reconnecting from resourceVersion %s in %.2f s",
                                name, reason, self._resource_version, delay, extra=self._log_extra())
                self._stopping.wait(delay)

    def _log_extra(self) -> dict[str, Any]:
        return {"resource": self.resource.plural, "resourceVersion": self._resource_version}

    # --------------------------------------------------------------------- list

    def _list(self) -> None:
        """One consistent list: each page applied as it arrives, then the objects it did not hold deleted."""
        settings = self._settings
        seen: set[ObjectKey] = set()  # filled on the control thread
        applied: threading.Event | None = None
        listed = 0
        continue_token: str | None = None
        version: str | None = None
        while True:
            query: dict[str, Any] = {
                "limit": settings.page_size,
                "_request_timeout": (settings.connect_timeout, settings.list_read_timeout),
            }
            if continue_token:
                # An expired continue token answers 410: the generic error path
                # backs off and starts the list over.
                query["_continue"] = continue_token
            response = self._request(**query)
            try:
                body = response.data
            except BaseException:
                response.close()
                raise
            _release(response)
            meta, items = self._read_page(body)
            del body
            version = version or meta.get("resourceVersion")
            continue_token = meta.get("continue") or None
            if applied is not None:
                self._wait_applied(applied)
            listed += len(items)
            applied = self._submit_page(items, seen)
            del items
            if not continue_token:
                break
        if not isinstance(version, str) or not version:
            raise ValueError("the list response has no resourceVersion")
        if applied is not None:
            self._wait_applied(applied)
        self._finish_list(seen, version, listed, "")

    def _finish_list(self, seen: set[ObjectKey], version: str, listed: int, how: str) -> None:
        """After the last page (or a watch-list's bookmark): delete what it did not hold, resume from ``version``."""
        self._submit_list_end(seen, version)
        self._resource_version = version
        self._backoff.reset()
        self.lists_completed += 1
        if self._relist_reason:
            log.info("%s: relisted %d objects at resourceVersion %s%s (after %s)",
                     self.resource.plural, listed, version, how, self._relist_reason, extra=self._log_extra())
        else:
            log.info("%s: listed %d objects at resourceVersion %s%s", self.resource.plural, listed, version, how,
                     extra=self._log_extra())

    def _read_page(self, body: bytes) -> tuple[Mapping[str, Any], list[Any]]:
        """(list metadata, trimmed items) of one list page."""
        if self.resource.kind == "Pod":
            decoded = decode_pod_page(body)
            if decoded is not None:  # the usual shape: already reduced to what the state reads
                return decoded.get("metadata") or {}, decoded.get("items") or []
        page = json.loads(body)
        if not isinstance(page, Mapping):
            raise ValueError("the list response is not a JSON object")
        meta = page.get("metadata") or {}
        raw_items = page.get("items") or []
        if not isinstance(meta, Mapping) or not isinstance(raw_items, list):
            raise ValueError("the list response has no metadata or items")
        trim = self.resource.trim
        return meta, [trim(item) for item in raw_items]

    def _submit_page(self, items: list[Any], seen: set[ObjectKey]) -> threading.Event:
        state, kind, applied = self._state, self.resource.kind, threading.Event()

        def apply_page() -> None:
            try:
                kube_apply.apply_page(state, kind, items, seen)
            finally:
                items.clear()  # let the page go now, not when this closure does
                applied.set()

        self._submit(apply_page)
        return applied

    def _wait_applied(self, applied: threading.Event, waiting: Callable[[], None] | None = None) -> None:
        """Until the control thread applied the previous page (a bound on what a list holds at once).

        ``waiting`` is called meanwhile: a watch-list's watchdog must not take our wait for the server's silence.
        """
        while not applied.wait(0.5):
            if waiting is not None:
                waiting()
            if self._stopping.is_set():
                raise RuntimeError("stopping")
        if waiting is not None:
            waiting()

    def _submit_list_end(self, seen: set[ObjectKey], version: str) -> None:
        state, kind, synced = self._state, self.resource.kind, self._synced

        def finish() -> None:
            kube_apply.delete_unseen(state, kind, seen)
            seen.clear()
            self._note_applied(version)
            synced.set()

        self._submit(finish)

    def _submit_list(self, items: list[Any], version: str | None) -> None:
        state, kind, synced = self._state, self.resource.kind, self._synced

        def replace() -> None:
            kube_apply.replace_all(state, kind, items)
            self._note_applied(version)
            synced.set()

        self._submit(replace)

    def _note_applied(self, version: str | None) -> None:
        # On the control thread, right after the state changed: the source's revision follows.
        if version:
            self.applied_version = version

    # -------------------------------------------------------------------- watch

    def _watch(self, stream: bool = False) -> bool:
        """Follow the watch until it ends; True if it was healthy (lasted or delivered events).

        ``stream``: a watch-list, whose initial state is applied as a list's
        pages are (see the module docstring); it raises WatchListUnsupported
        when the server will not stream it.
        """
        settings = self._settings
        timeout = max(1, int(settings.watch_timeout * random.uniform(1.0, 2.0)))
        started = time.monotonic()
        delivered = 0
        query: dict[str, Any] = {
            "watch": True,
            "allow_watch_bookmarks": True,
            "timeout_seconds": timeout,
            # A read timeout, not a deadline: any byte (an event or a BOOKMARK) starts it again.
            "_request_timeout": (settings.connect_timeout, settings.watch_read_timeout),
        }
        if stream:
            # No resourceVersion: the state as of now (a consistent read), as a list without one.
            query.update(send_initial_events=True, resource_version_match="NotOlderThan")
        else:
            query["resource_version"] = self._resource_version
        try:
            response = self._request(**query)
        except Exception as err:
            status = getattr(err, "status", None)
            # Most servers send 410 as an ERROR event; some answer the request with it.
            if status == GONE:
                raise ResourceGone(describe_error(err)) from None
            if stream and status in _WATCH_LIST_REFUSED:
                message = _status_message(err)
                raise WatchListUnsupported(describe_error(err) + (f": {message}" if message else "")) from None
            raise
        self._set_response(response)
        initial = _InitialState(set(), []) if stream else None
        watchdog = (_StreamWatchdog(self.resource.plural, lambda: _abort(response), settings.watch_list_silence,
                                    settings.watch_list_timeout) if stream else None)
        healthy = False
        try:
            try:
                for line in split_lines(response.stream(2**16, decode_content=True)):
                    if self._stopping.is_set():
                        break
                    if initial is not None and watchdog is not None:
                        watchdog.progress()
                        if self._handle_initial_line(line, initial, watchdog):
                            initial = None
                            watchdog.stop()
                            delivered += 1
                    elif self._handle_line(line):
                        delivered += 1
            except Exception:
                if initial is not None and watchdog is not None and watchdog.reason:
                    raise WatchListUnsupported(watchdog.reason) from None
                raise
            if initial is not None and watchdog is not None and not self._stopping.is_set():
                if watchdog.reason:
                    raise WatchListUnsupported(watchdog.reason)
                self._early_ends += 1
                if self._early_ends >= _EARLY_ENDS_TOLERATED:
                    raise WatchListUnsupported(f"{self._early_ends} watch-lists ended before their "
                                               "initial-events-end bookmark")
                raise WatchFailed("the watch-list ended before its initial-events-end bookmark")
        finally:
            if watchdog is not None:
                watchdog.stop()
            self._set_response(None)
            response.close()
            # Judged also when the watch broke: a long or productive watch starts the backoff over.
            healthy = bool(delivered) or (initial is None and time.monotonic() - started >= settings.healthy_watch)
            if healthy:
                self._backoff.reset()
        return healthy

    def _handle_initial_line(self, line: bytes, initial: _InitialState, watchdog: _StreamWatchdog) -> bool:
        """One line of a watch-list's initial state; True when it was the bookmark that ends it."""
        event = self._event(line)
        if event is None:
            return False
        obj = event.object
        if event.type == "BOOKMARK":
            if not is_initial_events_end(obj):
                # kube-apiserver's first bookmark to a watch-list is the annotated one: a plain one
                # means a server that took this for a plain watch and will never end the initial state.
                raise WatchListUnsupported("a BOOKMARK without the k8s.io/initial-events-end annotation came first")
            version = resource_version_of(obj)
            if version is None:
                raise WatchFailed("the initial-events-end bookmark has no resourceVersion")
            self._flush_initial(initial, watchdog)
            if initial.applied is not None:
                self._wait_applied(initial.applied, watchdog.progress)
            self._early_ends = 0
            self._finish_list(initial.seen, version, initial.listed, " (watch-list)")
            return True
        if event.type in ("ADDED", "MODIFIED"):
            # Changes made while the initial state streams may come before its bookmark: upserts like the rest.
            initial.page.append(event.object if event.fast else self.resource.trim(obj))
            initial.listed += 1
            if len(initial.page) >= self._settings.page_size:
                self._flush_initial(initial, watchdog)
        elif event.type == "DELETED":
            self._flush_initial(initial, watchdog)  # in order: the deletion after the pages before it
            self._submit_delete(obj, resource_version_of(obj))
        return False

    def _flush_initial(self, initial: _InitialState, watchdog: _StreamWatchdog) -> None:
        """Hand the page gathered so far to the control thread, once it applied the previous one."""
        if not initial.page:
            return
        if initial.applied is not None:
            self._wait_applied(initial.applied, watchdog.progress)
        page, initial.page = initial.page, []
        initial.applied = self._submit_page(page, initial.seen)

    def _decode(self, line: bytes) -> _Event | None:
        """A watch line as an event (pods: already trimmed), or None (logged) when it is not one."""
        fast = decode_pod_event(line) if self.resource.kind == "Pod" else None
        if fast is not None:
            return _Event(fast[0], fast[1], True)  # already reduced to what the state reads
        try:
            event = parse_event(line)
        except BadEvent as err:
            log.warning("%s: skipping a watch event: %s", self.resource.plural, err, extra=self._log_extra())
            return None
        return _Event(event.type, event.object, False)

    def _event(self, line: bytes) -> _Event | None:
        """``_decode``, and an ERROR event raised: ResourceGone for 410, WatchFailed otherwise."""
        event = self._decode(line)
        if event is not None and event.type == "ERROR":
            status = event.object
            if status_code(status) == GONE:
                raise ResourceGone(status_text(status))
            raise WatchFailed(f"ERROR event: {status_text(status)}")
        return event

    def _submit_delete(self, obj: Mapping[str, Any], version: str | None) -> None:
        state, kind = self._state, self.resource.kind

        def delete() -> None:
            kube_apply.delete_object(state, kind, obj)
            self._note_applied(version)

        self._submit(delete)

    def _set_response(self, response: Any) -> None:
        with self._response_lock:
            self._response = response
            if response is not None and self._stopping.is_set():
                _abort(response)

    def _handle_line(self, line: bytes) -> bool:
        """Apply one watch line; True if it was an event (bookmarks included)."""
        event = self._event(line)
        if event is None:
            return False
        obj = event.object
        version = resource_version_of(obj)
        state, kind = self._state, self.resource.kind
        if event.type in ("ADDED", "MODIFIED"):
            trimmed = obj if event.fast else self.resource.trim(obj)

            def apply() -> None:
                kube_apply.apply_object(state, kind, trimmed)
                self._note_applied(version)

            self._submit(apply)
        elif event.type == "DELETED":
            self._submit_delete(obj, version)
        if version is not None:
            self._resource_version = version
        return True


@dataclass(frozen=True, slots=True)
class _Event:
    type: str
    object: Mapping[str, Any]
    #: Decoded by msgspec into the trimmed shape already (pods of the usual shape).
    fast: bool


def _release(response: Any) -> None:
    """Give a fully read response's connection back to the pool (keep-alive)."""
    release = getattr(response, "release_conn", None)
    if release is not None:
        release()
    else:
        response.close()


def _abort(response: Any) -> None:
    """Break a response another thread may be blocked reading."""
    try:
        shutdown = getattr(response, "shutdown", None)  # urllib3 >= 2.3 unblocks a pending read
        if shutdown is not None:
            shutdown()
        else:
            response.close()
    except Exception:  # noqa: BLE001 - best effort: the thread is a daemon and the read has a timeout
        log.debug("could not abort a watch response", exc_info=True)
