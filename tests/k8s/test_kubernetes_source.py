"""KubernetesSource against the in-process fake API server, through the official client over real HTTP."""

from __future__ import annotations

import time
from typing import Callable

import pytest

pytest.importorskip("kubernetes")

from kube_netpol.tools.testing import FakeApiServer  # noqa: E402
from kube_netpol.tools.testing.apiserver import query_bool  # noqa: E402

from k8s_helpers import (  # noqa: E402
    ALL_KINDS,
    FAST,
    Driver,
    admin_network_policy,
    baseline_admin_network_policy,
    namespace,
    network_policy,
    node,
    packed,
    pod,
    server_view,
    state_view,
)

MakeDriver = Callable[..., Driver]


def seed(server: FakeApiServer) -> None:
    """Two namespaces, five pods (three list pages of two), a node and one policy of each kind."""
    server.create(namespace("a", team="red"))
    server.create(namespace("b", team="blue"))
    server.create(node("node-1", "192.168.1.1", zone="z1"))
    for i in range(3):
        server.create(pod("a", f"web-{i}", f"10.0.0.{i + 1}", app="web"))
    for i in range(2):
        server.create(pod("b", f"db-{i}", f"10.0.1.{i + 1}", app="db"))
    server.create(network_policy("a", "deny"))
    server.create(admin_network_policy("anp", 10))
    server.create(baseline_admin_network_policy())


def synced(make_driver: MakeDriver, server: FakeApiServer, kinds: tuple[str, ...] = ALL_KINDS,
           settings: object = FAST) -> Driver:
    driver = make_driver(kinds, settings)
    driver.run_until(driver.source.ready, what="the initial lists")
    server.wait_for_watches(kinds)
    return driver


def matches_server(driver: Driver, server: FakeApiServer) -> Callable[[], bool]:
    return lambda: state_view(driver.source.state) == server_view(server.objects)


def test_initial_sync_of_every_kind(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    driver = make_driver(ALL_KINDS)
    # The lists are applied on the control thread, so nothing is ready before it has run.
    assert not driver.source.ready()
    driver.run_until(driver.source.ready, what="the initial lists")
    state = driver.source.state

    assert state_view(state) == server_view(apiserver.objects)
    assert len(state.keys("Pod")) == 5
    web = state.pod_by_ip(packed("10.0.0.2"))
    assert web is not None and web.labels["app"] == "web"
    assert web.namespace_labels["team"] == "red"
    assert web.node_labels["zone"] == "z1"
    assert web.container_ports == (("http", 8080, "TCP"),)
    assert state.node("node-1").ips == (packed("192.168.1.1"),)
    assert state.objects("AdminNetworkPolicy")[("", "anp")].priority == 10
    # The pods came in pages of two, from one consistent list.
    pages = apiserver.list_requests("Pod")
    assert len(pages) == 3
    assert [r.query.get("limit") for r in pages] == ["2", "2", "2"]
    assert "continue" not in pages[0].query and all("continue" in r.query for r in pages[1:])
    # Every watch starts at its list's resourceVersion and asks for bookmarks.
    for kind in ALL_KINDS:
        apiserver.wait_for_watches([kind])
        watch = apiserver.watch_requests(kind)[0]
        assert watch.query["resourceVersion"] == str(apiserver.resource_version)
        assert query_bool(watch.query["allowWatchBookmarks"])
        assert driver.source.resource_version(kind) == str(apiserver.resource_version)
    assert driver.source.ready()


def test_only_the_configured_kinds_are_watched(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    driver = synced(make_driver, apiserver, ("Namespace", "Pod", "NetworkPolicy"))
    assert not apiserver.list_requests("AdminNetworkPolicy") and not apiserver.list_requests("Node")
    assert not driver.source.state.objects("AdminNetworkPolicy")
    assert len(driver.source.state.keys("Pod")) == 5


def test_add_update_delete_of_every_kind_reach_the_state(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    driver = synced(make_driver, apiserver)
    state = driver.source.state

    # Add one of each (a second BANP cannot exist, so it is updated then deleted instead).
    apiserver.create(namespace("c", team="green"))
    apiserver.create(node("node-2", "192.168.1.2", zone="z2"))
    apiserver.create(pod("c", "new", "10.0.2.1", node="node-2", app="new"))
    apiserver.create(network_policy("c", "np2"))
    apiserver.create(admin_network_policy("anp2", 20))
    driver.run_until(matches_server(driver, apiserver), what="the additions")
    new = state.pod_by_ip(packed("10.0.2.1"))
    assert new is not None and new.namespace_labels["team"] == "green" and new.node_labels["zone"] == "z2"

    # Update each.
    apiserver.update(namespace("c", team="yellow"))
    apiserver.update(node("node-2", "192.168.1.3", zone="z3"))
    apiserver.update(pod("c", "new", "10.0.2.9", node="node-2", app="newer"))
    apiserver.update(network_policy("c", "np2", ("Ingress", "Egress")))
    apiserver.update(admin_network_policy("anp2", 30))
    apiserver.update(baseline_admin_network_policy(("deny", "deny-more")))
    driver.run_until(matches_server(driver, apiserver), what="the updates")
    assert state.pod_by_ip(packed("10.0.2.1")) is None
    moved = state.pod_by_ip(packed("10.0.2.9"))
    assert moved is not None and moved.labels["app"] == "newer"
    assert moved.namespace_labels["team"] == "yellow" and moved.node_labels["zone"] == "z3"

    # Delete each.
    apiserver.delete("Pod", "new", "c")
    apiserver.delete("NetworkPolicy", "np2", "c")
    apiserver.delete("AdminNetworkPolicy", "anp2")
    apiserver.delete("BaselineAdminNetworkPolicy", "default")
    apiserver.delete("Node", "node-2")
    apiserver.delete("Namespace", "c")
    driver.run_until(matches_server(driver, apiserver), what="the deletions")
    assert state.namespace("c") is None and state.node("node-2") is None
    assert not state.objects("BaselineAdminNetworkPolicy")
    # All of it came through the watches: one list per kind.
    assert all(driver.source.lists_completed(kind) == 1 for kind in ALL_KINDS)


def test_dropped_watch_resumes_from_its_resource_version_without_relist(
    apiserver: FakeApiServer, make_driver: MakeDriver, source_logs: pytest.LogCaptureFixture
) -> None:
    seed(apiserver)
    # A backoff long enough that the changes below happen while the watches are gone.
    settings = FAST.__class__(**{**FAST.__dict__, "backoff_initial": 0.3})
    driver = synced(make_driver, apiserver, settings=settings)
    lists_before = {kind: len(apiserver.list_requests(kind)) for kind in ALL_KINDS}
    last_version = str(apiserver.resource_version)

    assert apiserver.drop_watches() == len(ALL_KINDS)
    apiserver.create(pod("a", "while-away", "10.0.0.99", app="web"))
    apiserver.update(pod("b", "db-0", "10.0.1.1", app="db", tier="gold"))
    apiserver.delete("Pod", "web-0", "a")
    apiserver.update(network_policy("a", "deny", ("Egress",)))
    apiserver.update(namespace("b", team="purple"))
    driver.run_until(matches_server(driver, apiserver), what="the missed events")

    assert {kind: len(apiserver.list_requests(kind)) for kind in ALL_KINDS} == lists_before
    resumed = apiserver.watch_requests("Pod")[-1]
    assert resumed.query["resourceVersion"] == last_version
    reconnects = [r for r in source_logs.records if "pods: watch failed" in r.getMessage()]
    assert len(reconnects) == 1
    assert f"reconnecting from resourceVersion {last_version}" in reconnects[0].getMessage()


def test_watch_that_ends_normally_is_resumed(apiserver: FakeApiServer, make_driver: MakeDriver,
                                             source_logs: pytest.LogCaptureFixture) -> None:
    seed(apiserver)
    settings = FAST.__class__(**{**FAST.__dict__, "watch_timeout": 0.4})  # timeoutSeconds=1 at least
    driver = synced(make_driver, apiserver, ("Namespace", "Pod", "NetworkPolicy"), settings)
    driver.run_until(lambda: len(apiserver.watch_requests("Pod")) >= 2, timeout=4, what="the second watch")
    apiserver.create(pod("a", "later", "10.0.0.50"))
    driver.run_until(lambda: driver.source.state.pod(("a", "later")) is not None, what="the new pod")
    assert len(apiserver.list_requests("Pod")) == 3  # the initial three pages only
    assert any("pods: watch closed by the server; reconnecting" in r.getMessage() for r in source_logs.records)


@pytest.mark.parametrize("gone_as", ["event", "status"])
def test_410_gone_relists_and_the_state_equals_the_server(
    apiserver: FakeApiServer, make_driver: MakeDriver, source_logs: pytest.LogCaptureFixture, gone_as: str
) -> None:
    apiserver.gone_as = gone_as  # type: ignore[assignment]
    seed(apiserver)
    driver = synced(make_driver, apiserver)
    apiserver.go_down()
    # Changes the watches never see, then compaction: resuming from the old versions is impossible.
    apiserver.create(pod("a", "added", "10.0.0.77", app="added"))
    apiserver.update(pod("b", "db-1", "10.0.1.20", app="db", moved="yes"))
    apiserver.delete("Pod", "web-1", "a")
    apiserver.delete("NetworkPolicy", "deny", "a")
    apiserver.create(network_policy("b", "fresh", ("Egress",)))
    apiserver.update(admin_network_policy("anp", 99))
    apiserver.delete("BaselineAdminNetworkPolicy", "default")
    apiserver.update(namespace("a", team="orange"))
    apiserver.create(node("node-9", "192.168.1.9"))
    apiserver.compact()
    apiserver.come_up()

    driver.run_until(matches_server(driver, apiserver), what="the relist")
    driver.run_until(lambda: all(driver.source.lists_completed(k) == 2 for k in ALL_KINDS), what="every relist")
    state = driver.source.state
    assert state.pod_by_ip(packed("10.0.0.2")) is None  # web-1, deleted meanwhile
    assert state.pod_by_ip(packed("10.0.0.1")).namespace_labels["team"] == "orange"
    assert {r.getMessage().split(":")[0] for r in source_logs.records if "relisted" in r.getMessage()} == {
        "namespaces", "nodes", "pods", "networkpolicies", "adminnetworkpolicies", "baselineadminnetworkpolicies"
    }
    assert any("pods: resourceVersion" in r.getMessage() and "410" in r.getMessage() for r in source_logs.records)


def test_410_error_event_on_an_open_watch_relists(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    driver = synced(make_driver, apiserver, ("Namespace", "Pod", "NetworkPolicy"))
    apiserver.compact(expire_open_watches=True)
    driver.run_until(lambda: driver.source.lists_completed("Pod") == 2, what="the pods relist")
    apiserver.create(pod("b", "after", "10.0.1.50"))
    driver.run_until(lambda: driver.source.state.pod(("b", "after")) is not None, what="a pod after the relist")


def test_other_error_events_reconnect_from_the_same_version(apiserver: FakeApiServer, make_driver: MakeDriver,
                                                            source_logs: pytest.LogCaptureFixture) -> None:
    seed(apiserver)
    driver = synced(make_driver, apiserver, ("Namespace", "Pod", "NetworkPolicy"))
    version = driver.source.resource_version("Pod")
    apiserver.send_watch_error("Pod", 500, "InternalError", "etcd hiccup")
    driver.run_until(lambda: len(apiserver.watch_requests("Pod")) == 2, what="the reconnect")
    assert apiserver.watch_requests("Pod")[-1].query["resourceVersion"] == version
    assert driver.source.lists_completed("Pod") == 1
    assert any("pods: watch failed" in r.getMessage() and "etcd hiccup" in r.getMessage()
               for r in source_logs.records)


def test_malformed_objects_are_logged_and_ignored_while_others_apply(
    apiserver: FakeApiServer, make_driver: MakeDriver, source_logs: pytest.LogCaptureFixture
) -> None:
    apiserver.create(namespace("a"))
    apiserver.create(pod("a", "good", "10.0.0.1"))
    apiserver.create(pod("a", "bad-ip", "not-an-address"))
    weird = pod("a", "weird-spec", "10.0.0.3")
    weird["spec"] = "not an object"
    apiserver.create(weird)
    bad_policy = network_policy("a", "bad")
    bad_policy["spec"]["policyTypes"] = "Ingress"  # must be a list
    apiserver.create(bad_policy)
    apiserver.create(network_policy("a", "good"))
    driver = make_driver(("Namespace", "Pod", "NetworkPolicy"))
    driver.run_until(driver.source.ready, what="the initial lists")
    apiserver.wait_for_watches(["Pod"])
    state = driver.source.state
    # A refused pod with a usable address stays, with no labels, so that isolation still applies to it.
    assert set(state.keys("Pod")) == {("a", "good"), ("a", "weird-spec")}
    assert not state.pod(("a", "weird-spec")).valid and state.pod(("a", "good")).valid
    assert set(state.objects("NetworkPolicy")) == {("a", "good")}
    messages = [r.getMessage() for r in source_logs.records]
    assert any("a/bad-ip" in m and "invalid" in m for m in messages)
    assert any("a/weird-spec" in m for m in messages)
    assert any("a/bad" in m and "policyTypes" in m for m in messages)

    # Through the watch: an event that is not JSON, an invalid object, then a good one.
    apiserver.send_raw_watch_line("Pod", b'{"type": "ADDED", "object": {"metadata": ')
    bad_labels = pod("a", "bad-labels", "10.0.0.4")
    bad_labels["metadata"]["labels"] = {"app": 7}
    apiserver.create(bad_labels)
    apiserver.create(pod("a", "good-2", "10.0.0.5"))
    driver.run_until(lambda: state.pod(("a", "good-2")) is not None, what="the good pod after the bad ones")
    assert state.pod(("a", "bad-labels")).labels == {}  # kept, but with no labels
    messages = [r.getMessage() for r in source_logs.records]
    assert any("pods: skipping a watch event: not valid JSON" in m for m in messages)
    assert any("a/bad-labels" in m for m in messages)
    assert len(apiserver.watch_requests("Pod")) == 1  # none of it broke the watch


def test_api_server_down_at_start(apiserver: FakeApiServer, make_driver: MakeDriver,
                                  source_logs: pytest.LogCaptureFixture) -> None:
    seed(apiserver)
    apiserver.go_down()
    driver = make_driver(ALL_KINDS)
    driver.run_for(0.4)
    assert not driver.source.ready()
    assert not driver.source.state.keys("Pod")
    failures = [r for r in source_logs.records if "pods: list failed" in r.getMessage()]
    assert len(failures) >= 2  # it keeps retrying, one line per attempt
    assert "retrying in" in failures[0].getMessage()
    apiserver.come_up()
    driver.run_until(driver.source.ready, what="ready once the server is up")
    assert state_view(driver.source.state) == server_view(apiserver.objects)


def test_backoff_is_capped_and_grows(apiserver: FakeApiServer, make_driver: MakeDriver,
                                     source_logs: pytest.LogCaptureFixture) -> None:
    apiserver.go_down()
    settings = FAST.__class__(**{**FAST.__dict__, "backoff_initial": 0.01, "backoff_max": 0.08})
    driver = make_driver(("Pod",), settings)
    driver.run_for(0.6)
    delays = [float(r.getMessage().rsplit("retrying in ", 1)[1].split()[0])
              for r in source_logs.records if "pods: list failed" in r.getMessage()]
    assert len(delays) >= 4
    assert delays[0] <= 0.01 and max(delays) <= 0.08 and max(delays) >= 0.06
    driver.source.stop()


def test_api_server_gone_after_sync_keeps_the_state(apiserver: FakeApiServer, make_driver: MakeDriver,
                                                    source_logs: pytest.LogCaptureFixture) -> None:
    seed(apiserver)
    driver = synced(make_driver, apiserver)
    before = state_view(driver.source.state)
    apiserver.go_down()
    driver.run_for(0.5)
    assert state_view(driver.source.state) == before
    assert driver.source.ready()
    assert any("pods: watch failed" in r.getMessage() for r in source_logs.records)
    # Back again, not compacted: the watches resume, no relist.
    apiserver.come_up()
    apiserver.create(pod("b", "back", "10.0.1.9"))
    driver.run_until(matches_server(driver, apiserver), what="the pod created after the outage")
    assert all(driver.source.lists_completed(kind) == 1 for kind in ALL_KINDS)


def test_bookmarks_advance_the_resource_version(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    kinds = ("Namespace", "Pod", "NetworkPolicy")
    driver = synced(make_driver, apiserver, kinds)
    # Changes to other resources move the global resourceVersion past the pods' one.
    for i in range(3):
        apiserver.create(node(f"other-{i}", f"192.168.2.{i}"))
    assert driver.source.resource_version("Pod") != str(apiserver.resource_version)
    version = apiserver.bookmark()
    driver.run_until(lambda: all(driver.source.resource_version(k) == str(version) for k in kinds),
                     what="the bookmarks")
    # Without the bookmark the pods watch would resume from before the compaction and need a relist.
    apiserver.compact()
    apiserver.drop_watches()
    driver.run_until(lambda: len(apiserver.watch_requests("Pod")) == 2, what="the reconnect")
    apiserver.create(pod("a", "after-bookmark", "10.0.0.60"))
    driver.run_until(lambda: driver.source.state.pod(("a", "after-bookmark")) is not None, what="the new pod")
    assert apiserver.watch_requests("Pod")[-1].query["resourceVersion"] == str(version)
    assert all(driver.source.lists_completed(k) == 1 for k in kinds)


def test_stop_ends_the_watch_threads_promptly(apiserver: FakeApiServer, make_driver: MakeDriver) -> None:
    seed(apiserver)
    driver = synced(make_driver, apiserver)
    started = time.monotonic()
    driver.source.stop(timeout=2)
    assert time.monotonic() - started < 1.0
    deadline = time.monotonic() + 2
    while apiserver.open_watches() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert apiserver.open_watches() == 0


def test_wrong_token_is_refused_and_never_ready(apiserver: FakeApiServer, tmp_path,
                                                source_logs: pytest.LogCaptureFixture) -> None:
    from kube_netpol.plugins import registry_for
    from kube_netpol.sources.kubernetes import KubernetesSource, api_client_from_config
    from kube_netpol.state import ClusterState

    seed(apiserver)
    config = apiserver.write_kubeconfig(tmp_path / "wrong", token="wrong")
    source = KubernetesSource(ClusterState(registry_for()), api_client_from_config(str(config)), ("Pod",), FAST)
    driver = Driver(source)
    driver.start()
    try:
        driver.run_for(0.2)
        assert not source.ready()
        assert any("pods: list failed (HTTP 401" in r.getMessage() for r in source_logs.records)
    finally:
        source.stop()


def test_a_missing_crd_does_not_block_the_other_kinds(apiserver: FakeApiServer, make_driver: MakeDriver, source_logs) -> None:
    apiserver.unserved = {"AdminNetworkPolicy"}
    apiserver.create(namespace("x"))
    driver = make_driver(("Namespace", "Pod", "NetworkPolicy", "AdminNetworkPolicy"))
    # Ready without ANPs: NetworkPolicy enforcement must not wait for a CRD that is not installed.
    driver.run_until(driver.source.ready, what="ready without the ANP CRD")
    assert driver.source.state.namespace("x") is not None
    assert "adminnetworkpolicies: not served by the API server" in source_logs.text
    # Once the CRD is installed, the kind is listed and watched like the others.
    apiserver.create(admin_network_policy("anp", 10))
    apiserver.unserved = set()
    driver.run_until(lambda: ("", "anp") in driver.source.state.objects("AdminNetworkPolicy"),
                     what="the ANP after the CRD appeared")
