"""Watch-lists (sendInitialEvents, KEP-3157): the initial state streamed, its bookmark, the fallback to paged lists.

Against the fake API server through the official client over real HTTP, and,
for what a real server may do that the fake does not (changes before the
bookmark, a plain bookmark first, a stream that never ends), against a
scripted response.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from typing import Any, Callable, Iterator

import pytest

pytest.importorskip("kubernetes")

from kube_netpol.plugins import registry_for  # noqa: E402
from kube_netpol.sources.kube_reflector import Reflector  # noqa: E402
from kube_netpol.sources.kube_watch_protocol import INITIAL_EVENTS_END  # noqa: E402
from kube_netpol.state import ClusterState  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402
from kube_netpol.tools.testing.apiserver import query_bool  # noqa: E402

from k8s_helpers import (  # noqa: E402
    ALL_KINDS,
    STREAM,
    Driver,
    namespace,
    network_policy,
    packed,
    pod,
    server_view,
    state_view,
)
from test_kubernetes_source import matches_server, seed  # noqa: E402

MakeDriver = Callable[..., Driver]
#: The kinds whose client method takes sendInitialEvents (the CRDs' CustomObjectsApi does not).
STREAMED = ("Namespace", "Node", "Pod", "NetworkPolicy")


def streamed_ready(make_driver: MakeDriver, server: FakeApiServer, kinds: tuple[str, ...] = ALL_KINDS,
                   settings: Any = STREAM) -> Driver:
    driver = make_driver(kinds, settings)
    driver.run_until(driver.source.ready, what="the initial state")
    server.wait_for_watches(kinds)
    return driver


def test_initial_state_is_streamed_and_the_watch_goes_on(apiserver: FakeApiServer, make_driver: MakeDriver,
                                                         source_logs: pytest.LogCaptureFixture) -> None:
    seed(apiserver)
    version = str(apiserver.resource_version)
    driver = streamed_ready(make_driver, apiserver)
    state = driver.source.state
    assert state_view(state) == server_view(apiserver.objects)
    assert state.pod_by_ip(packed("10.0.0.2")).namespace_labels["team"] == "red"
    for kind in STREAMED:
        assert driver.source.streams(kind)
        assert not apiserver.list_requests(kind)  # no list at all: one watch per kind
        (request,) = apiserver.watch_requests(kind)
        assert query_bool(request.query["sendInitialEvents"]) and query_bool(request.query["allowWatchBookmarks"])
        assert request.query["resourceVersionMatch"] == "NotOlderThan" and "resourceVersion" not in request.query
        # The bookmark's resourceVersion is where the watch stands, and what the state is at.
        assert driver.source.resource_version(kind) == version
        assert driver.source.lists_completed(kind) == 1
    for kind in ("AdminNetworkPolicy", "BaselineAdminNetworkPolicy"):  # CustomObjectsApi: paged lists
        assert not driver.source.streams(kind) and apiserver.list_requests(kind)
    assert f"pods: listed 5 objects at resourceVersion {version} (watch-list)" in source_logs.text

    # Then the same watches go on: additions, updates and deletions arrive on them.
    apiserver.create(pod("a", "later", "10.0.0.40", app="web"))
    apiserver.update(pod("b", "db-0", "10.0.1.1", app="db", tier="gold"))
    apiserver.delete("Pod", "web-0", "a")
    apiserver.update(namespace("a", team="orange"))
    apiserver.create(network_policy("b", "fresh", ("Egress",)))
    driver.run_until(matches_server(driver, apiserver), what="the changes after the bookmark")
    assert state.pod(("b", "db-0")).labels["tier"] == "gold"
    assert state.pod(("a", "later")).namespace_labels["team"] == "orange"
    assert all(len(apiserver.watch_requests(kind)) == 1 for kind in STREAMED)
    assert driver.source.resource_version("Pod") == str(apiserver.resource_version - 2)  # the pods' last event


def test_the_bookmark_ends_the_sync(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    apiserver.initial_events_end_gate.clear()
    patient = dataclasses.replace(STREAM, watch_list_silence=10.0, watch_list_timeout=20.0)
    driver = make_driver(("Namespace", "Pod", "NetworkPolicy"), patient)
    state = driver.source.state
    # The pods arrive and are applied page by page (the fifth waits for its page to fill or the bookmark),
    # but without the bookmark the state may still hold objects deleted meanwhile: not ready.
    driver.run_until(lambda: len(state.keys("Pod")) == 4, what="the initial events")
    driver.run_for(0.3)
    assert not driver.source.ready() and driver.source.resource_version("Pod") is None
    apiserver.create(pod("a", "during", "10.0.0.30"))  # after the snapshot: follows the bookmark
    apiserver.initial_events_end_gate.set()
    driver.run_until(driver.source.ready, what="ready after the bookmark")
    assert {("a", "web-0"), ("a", "web-1"), ("a", "web-2"), ("b", "db-0"), ("b", "db-1")} <= set(state.keys("Pod"))
    driver.run_until(lambda: state.pod(("a", "during")) is not None, what="the change after the snapshot")
    assert all(driver.source.streams(kind) for kind in ("Namespace", "Pod", "NetworkPolicy"))


def test_a_server_that_refuses_watch_lists_is_listed_in_pages(
    make_driver: MakeDriver, apiserver: FakeApiServer, source_logs: pytest.LogCaptureFixture
) -> None:
    apiserver.watch_list = "refuse"  # kube-apiserver 1.27-1.31 with the WatchList gate off: 422
    seed(apiserver)
    driver = streamed_ready(make_driver, apiserver, ("Namespace", "Pod", "NetworkPolicy"))
    assert state_view(driver.source.state)["Pod"] == server_view(apiserver.objects)["Pod"]
    assert len(apiserver.list_requests("Pod")) == 3  # five pods in pages of two
    assert not driver.source.streams("Pod")
    refusals = [r.getMessage() for r in source_logs.records if "does not stream the initial state" in r.getMessage()]
    assert len(refusals) == 3
    assert any(m.startswith("pods:") and "HTTP 422" in m and "WatchList feature gate" in m for m in refusals)
    # Once refused, a relist (after 410) lists in pages at once: the server is not asked again.
    apiserver.compact(expire_open_watches=True)
    driver.run_until(lambda: driver.source.lists_completed("Pod") == 2, what="the relist")
    assert len(apiserver.list_requests("Pod")) == 6
    assert len([r for r in apiserver.watch_requests("Pod") if "sendInitialEvents" in r.query]) == 1


def test_a_server_that_ignores_watch_lists_is_listed_in_pages_after_the_silence(
    make_driver: MakeDriver, apiserver: FakeApiServer, source_logs: pytest.LogCaptureFixture
) -> None:
    apiserver.watch_list = "ignore"  # a plain watch: the objects as ADDED, then silence, never the bookmark
    seed(apiserver)
    started = time.monotonic()
    driver = make_driver(("Namespace", "Pod"), STREAM)
    driver.run_until(driver.source.ready, timeout=6, what="ready through the fallback")
    # Not before the silence the settings allow (1 s), nor much after it.
    assert STREAM.watch_list_silence <= time.monotonic() - started < STREAM.watch_list_timeout
    assert apiserver.list_requests("Pod") and not driver.source.streams("Pod")
    assert any("pods: the API server does not stream the initial state (nothing for 1 s" in r.getMessage()
               for r in source_logs.records)
    apiserver.wait_for_watches(["Pod"])
    apiserver.delete("Pod", "web-1", "a")
    driver.run_until(lambda: driver.source.state.pod(("a", "web-1")) is None, what="a deletion after the fallback")


def test_410_gone_streams_the_state_again(apiserver: FakeApiServer, make_driver: MakeDriver,
                                          source_logs: pytest.LogCaptureFixture) -> None:
    seed(apiserver)
    kinds = ("Namespace", "Node", "Pod", "NetworkPolicy")
    driver = streamed_ready(make_driver, apiserver, kinds)
    apiserver.go_down()
    # Changes the watches never see, then compaction: resuming from the old versions is impossible.
    apiserver.create(pod("a", "added", "10.0.0.77", app="added"))
    apiserver.delete("Pod", "web-1", "a")
    apiserver.delete("NetworkPolicy", "deny", "a")
    apiserver.update(namespace("a", team="orange"))
    apiserver.compact()
    apiserver.come_up()
    driver.run_until(lambda: all(driver.source.lists_completed(k) == 2 for k in kinds), what="every relist")
    view, expected = state_view(driver.source.state), server_view(apiserver.objects)
    assert {kind: view[kind] for kind in kinds} == {kind: expected[kind] for kind in kinds}
    assert driver.source.state.pod(("a", "web-1")) is None  # deleted while away: gone after the new bookmark
    for kind in kinds:
        assert not apiserver.list_requests(kind)
        assert [query_bool(r.query.get("sendInitialEvents")) for r in apiserver.watch_requests(kind)
                if "resourceVersion" not in r.query] == [True, True]
    assert any(r.getMessage().startswith("pods: relisted") and "(watch-list) (after 410 Gone)" in r.getMessage()
               for r in source_logs.records)


def test_malformed_objects_and_lines_in_the_stream_are_refused(
    apiserver: FakeApiServer, make_driver: MakeDriver, source_logs: pytest.LogCaptureFixture
) -> None:
    apiserver.create(namespace("a"))
    apiserver.create(pod("a", "good", "10.0.0.1"))
    apiserver.create(pod("a", "bad-ip", "not-an-address"))
    weird = pod("a", "weird-spec", "10.0.0.3")
    weird["spec"] = "not an object"
    apiserver.create(weird)
    bad_policy = network_policy("a", "bad")
    bad_policy["spec"]["policyTypes"] = "Ingress"
    apiserver.create(bad_policy)
    apiserver.create(network_policy("a", "good"))
    driver = streamed_ready(make_driver, apiserver, ("Namespace", "Pod", "NetworkPolicy"))
    state = driver.source.state
    assert set(state.keys("Pod")) == {("a", "good"), ("a", "weird-spec")}
    assert not state.pod(("a", "weird-spec")).valid and state.pod(("a", "good")).valid
    assert set(state.objects("NetworkPolicy")) == {("a", "good")}
    messages = [r.getMessage() for r in source_logs.records]
    assert any("a/bad-ip" in m and "invalid" in m for m in messages)
    assert any("a/bad" in m and "policyTypes" in m for m in messages)
    # On the same watch afterwards: a line that is not JSON is skipped, the next event applies.
    apiserver.send_raw_watch_line("Pod", b'{"type": "ADDED", "object": {"metadata": ')
    apiserver.create(pod("a", "good-2", "10.0.0.5"))
    driver.run_until(lambda: state.pod(("a", "good-2")) is not None, what="the good pod after the bad line")
    assert any("pods: skipping a watch event: not valid JSON" in r.getMessage() for r in source_logs.records)
    assert len(apiserver.watch_requests("Pod")) == 1


def test_paged_lists_when_asked(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    driver = streamed_ready(make_driver, apiserver, ("Namespace", "Pod"), dataclasses.replace(STREAM, watch_list=False))
    assert not driver.source.streams("Pod") and len(apiserver.list_requests("Pod")) == 3
    assert not any("sendInitialEvents" in r.query for r in apiserver.watch_requests("Pod"))


# ----------------------------------------------------------- a scripted server


class ScriptedResponse:
    """A watch response whose lines come from a generator; ``shutdown`` breaks a pending read, as urllib3's does."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self.broken = threading.Event()

    def stream(self, _amount: int, decode_content: bool = True) -> Iterator[bytes]:
        for line in self._lines:
            if self.broken.is_set():
                raise ConnectionError("shut down")
            yield line + b"\n"
        while not self.broken.wait(0.01):  # a stream that stays open after its lines
            pass
        raise ConnectionError("shut down")

    def shutdown(self) -> None:
        self.broken.set()

    def close(self) -> None:
        self.broken.set()


def event(kind: str, name: str, version: int, ip: str = "10.0.0.1") -> bytes:
    obj = pod("a", name, ip)
    obj["metadata"]["resourceVersion"] = str(version)
    return json.dumps({"type": kind, "object": obj}).encode()


def bookmark(version: int, end: bool = True) -> bytes:
    meta: dict[str, Any] = {"resourceVersion": str(version)}
    if end:
        meta["annotations"] = {INITIAL_EVENTS_END: "true"}
    return json.dumps({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1", "metadata": meta}}).encode()


class Scripted:
    """A Reflector of pods over scripted watch-list responses (then paged lists: one empty page)."""

    def __init__(self, *scripts: Callable[[], Iterator[bytes]], settings: Any = STREAM) -> None:
        self.state = ClusterState(registry_for())
        self.state.apply(namespace("a"), "Namespace")
        self.queries: list[dict[str, Any]] = []
        self._scripts = list(scripts)
        self.driver = Driver(None)
        self.reflector = Reflector(self.state.kinds["Pod"], self.request, self.state, self.driver.submit, settings,
                                   watch_list=True)

    def request(self, **query: Any) -> Any:
        self.queries.append(query)
        if not query.get("watch"):
            return ListResponse()
        if query.get("send_initial_events") and self._scripts:
            return ScriptedResponse(self._scripts.pop(0)())
        return ScriptedResponse(iter(()))

    def run_until(self, condition: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            while not self.driver._work.empty():
                self.driver._work.get_nowait()()
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.005)


class ListResponse:
    data = json.dumps({"kind": "PodList", "metadata": {"resourceVersion": "900"}, "items": [
        pod("a", "listed", "10.0.9.9")]}).encode()

    def release_conn(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def scripted() -> Iterator[Callable[..., Scripted]]:
    made: list[Scripted] = []

    def make(*scripts: Callable[[], Iterator[bytes]], settings: Any = STREAM) -> Scripted:
        run = Scripted(*scripts, settings=settings)
        made.append(run)
        run.reflector.start()
        return run

    yield make
    for run in made:
        run.reflector.stop()
        run.reflector.join(2)


def test_changes_before_the_bookmark_apply_in_order_and_the_bookmark_deletes_the_rest(
    scripted: Callable[..., Scripted]
) -> None:
    def script() -> Iterator[bytes]:
        yield event("ADDED", "p1", 11, "10.0.0.1")
        yield event("ADDED", "p2", 12, "10.0.0.2")
        yield event("ADDED", "p3", 13, "10.0.0.3")
        yield event("MODIFIED", "p1", 14, "10.0.0.9")  # changed while the initial state streamed
        yield event("DELETED", "p2", 15, "10.0.0.2")
        yield event("ADDED", "p4", 16, "10.0.0.4")
        yield bookmark(16)

    run = Scripted(script)
    run.state.apply(pod("a", "stale", "10.0.5.5"), "Pod")  # from before: not in the stream, so deleted at the end
    run.reflector.start()
    try:
        run.run_until(lambda: run.reflector.synced, what="the bookmark")
        assert set(run.state.keys("Pod")) == {("a", "p1"), ("a", "p3"), ("a", "p4")}
        assert run.state.pod(("a", "p1")).ips == (packed("10.0.0.9"),)
        assert run.reflector.resource_version == "16" and run.reflector.applied_version == "16"
        assert run.reflector.streams and run.reflector.lists_completed == 1
    finally:
        run.reflector.stop()
        run.reflector.join(2)


def test_a_plain_bookmark_first_means_no_watch_list(scripted: Callable[..., Scripted],
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def script() -> Iterator[bytes]:
        yield event("ADDED", "p1", 11)
        yield bookmark(12, end=False)

    run = scripted(script)
    run.run_until(lambda: run.reflector.synced, what="ready through paged lists")
    assert not run.reflector.streams
    assert set(run.state.keys("Pod")) == {("a", "listed")}  # the list's state, p1 deleted as not listed
    assert any("without the k8s.io/initial-events-end annotation" in r.getMessage() for r in caplog.records)


def test_a_stream_that_never_ends_its_initial_state_times_out(scripted: Callable[..., Scripted],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    def endless() -> Iterator[bytes]:
        version = 10
        while True:  # events keep coming (no silence), never the bookmark
            version += 1
            yield event("ADDED", f"p{version}", version, f"10.0.{version // 250}.{version % 250 + 1}")
            time.sleep(0.02)

    settings = dataclasses.replace(STREAM, watch_list_silence=0.5, watch_list_timeout=1.0)
    started = time.monotonic()
    run = scripted(endless, settings=settings)
    run.run_until(lambda: run.reflector.synced, what="ready through paged lists")
    assert 1.0 <= time.monotonic() - started < 4.0
    assert not run.reflector.streams and [q.get("send_initial_events") for q in run.queries[:1]] == [True]
    assert any("no initial-events-end bookmark within 1 s" in r.getMessage() for r in caplog.records)


def test_a_watch_list_that_ends_early_is_retried_then_given_up(scripted: Callable[..., Scripted],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    def early() -> Iterator[bytes]:
        yield event("ADDED", "p1", 11)  # then the stream closes cleanly, before any bookmark

    class EndsCleanly(ScriptedResponse):
        def stream(self, _amount: int, decode_content: bool = True) -> Iterator[bytes]:
            for line in self._lines:
                yield line + b"\n"

    run = Scripted(early, early, early)
    original = run.request

    def request(**query: Any) -> Any:
        response = original(**query)
        return EndsCleanly(response._lines) if isinstance(response, ScriptedResponse) and query.get(
            "send_initial_events") else response

    run.reflector._request = request
    run.reflector.start()
    try:
        run.run_until(lambda: run.reflector.synced, what="ready through paged lists")
        assert [bool(q.get("send_initial_events")) for q in run.queries if q.get("watch")][:3] == [True] * 3
        assert any("3 watch-lists ended before their initial-events-end bookmark" in r.getMessage()
                   for r in caplog.records)
    finally:
        run.reflector.stop()
        run.reflector.join(2)
