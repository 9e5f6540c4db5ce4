"""The fake API server itself speaks the list and watch protocol the way the tests assume."""

from __future__ import annotations

import http.client
import json
from typing import Any, Iterator

import pytest

from kube_netpol.tools.testing import FakeApiServer

from k8s_helpers import namespace, pod

TOKEN = "test-token"


def get(server: FakeApiServer, path: str, token: str | None = TOKEN) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return response.status, body


def watch(server: FakeApiServer, path: str) -> tuple[http.client.HTTPResponse, Iterator[dict[str, Any]]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    response = conn.getresponse()

    def events() -> Iterator[dict[str, Any]]:
        while True:
            line = response.readline()
            if not line:
                return
            yield json.loads(line)

    return response, events()


def test_paginated_list_is_a_consistent_snapshot(apiserver: FakeApiServer) -> None:
    for i in range(5):
        apiserver.create(pod("a", f"p{i}", f"10.0.0.{i + 1}"))
    status, first = get(apiserver, "/api/v1/pods?limit=2")
    assert status == 200 and [i["metadata"]["name"] for i in first["items"]] == ["p0", "p1"]
    assert "kind" not in first["items"][0]  # built-in list items carry no kind
    version = first["metadata"]["resourceVersion"]
    apiserver.delete("Pod", "p3", "a")
    apiserver.create(pod("a", "p9", "10.0.0.9"))
    token = first["metadata"]["continue"]
    _, second = get(apiserver, f"/api/v1/pods?limit=2&continue={token}")
    _, third = get(apiserver, f"/api/v1/pods?limit=2&continue={second['metadata']['continue']}")
    assert [i["metadata"]["name"] for i in second["items"] + third["items"]] == ["p2", "p3", "p4"]
    assert second["metadata"]["resourceVersion"] == third["metadata"]["resourceVersion"] == version
    assert "continue" not in third["metadata"]
    apiserver.compact()
    status, expired = get(apiserver, f"/api/v1/pods?limit=2&continue={token}")
    assert status == 410 and expired["reason"] == "Expired"


def test_routes_auth_and_custom_resources(apiserver: FakeApiServer) -> None:
    apiserver.create(namespace("a"))
    apiserver.create(pod("a", "p", "10.0.0.1"))
    apiserver.create(pod("b", "q", "10.0.0.2"))
    apiserver.create({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                      "metadata": {"name": "x"}, "spec": {"priority": 1}})
    assert get(apiserver, "/api/v1/pods", token=None)[0] == 401
    assert get(apiserver, "/api/v1/pods", token="wrong")[0] == 401
    _, in_a = get(apiserver, "/api/v1/namespaces/a/pods")
    assert [i["metadata"]["name"] for i in in_a["items"]] == ["p"]
    status, one = get(apiserver, "/api/v1/namespaces/b/pods/q")
    assert status == 200 and one["metadata"]["name"] == "q"
    status, ns = get(apiserver, "/api/v1/namespaces/a")
    assert status == 200 and ns["kind"] == "Namespace"
    _, anps = get(apiserver, "/apis/policy.networking.k8s.io/v1alpha1/adminnetworkpolicies")
    assert anps["kind"] == "AdminNetworkPolicyList" and anps["items"][0]["kind"] == "AdminNetworkPolicy"
    assert get(apiserver, "/apis/example.com/v1/widgets")[0] == 404


def test_watch_replays_from_a_version_then_follows(apiserver: FakeApiServer) -> None:
    apiserver.create(pod("a", "p0", "10.0.0.1"))
    start = apiserver.resource_version
    apiserver.create(pod("a", "p1", "10.0.0.2"))
    apiserver.create(pod("b", "other-namespace", "10.0.0.3"))
    apiserver.create(namespace("a"))  # another resource: not in the pods stream
    response, events = watch(apiserver, f"/api/v1/namespaces/a/pods?watch=true&resourceVersion={start}"
                                        "&allowWatchBookmarks=true")
    assert response.status == 200 and response.getheader("Transfer-Encoding") == "chunked"
    first = next(events)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "p1")
    apiserver.wait_for_watches(["Pod"])
    apiserver.update(pod("a", "p0", "10.0.0.1", app="x"))
    apiserver.create(namespace("z"))
    version = apiserver.bookmark()
    apiserver.delete("Pod", "p1", "a")
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in (next(events) for _ in range(3))] == [
        ("MODIFIED", "p0"), ("BOOKMARK", None), ("DELETED", "p1")]
    apiserver.send_raw_watch_line("Pod", b"garbage")
    assert response.readline() == b"garbage\n"
    apiserver.drop_watches()
    with pytest.raises((http.client.IncompleteRead, ConnectionError, OSError)):
        response.read()
    assert version > start


def test_bookmarks_only_when_asked_and_timeout_ends_cleanly(apiserver: FakeApiServer) -> None:
    apiserver.create(pod("a", "p0", "10.0.0.1"))
    version = apiserver.resource_version
    response, events = watch(apiserver, f"/api/v1/pods?watch=true&resourceVersion={version}&timeoutSeconds=1")
    apiserver.wait_for_watches(["Pod"])
    apiserver.bookmark()
    apiserver.create(pod("a", "p1", "10.0.0.2"))
    assert [e["type"] for e in events] == ["ADDED"]  # no bookmark, and the stream ended by itself
    assert response.isclosed()


@pytest.mark.parametrize("gone_as", ["event", "status"])
def test_watch_from_a_compacted_version_is_gone(apiserver: FakeApiServer, gone_as: str) -> None:
    apiserver.gone_as = gone_as  # type: ignore[assignment]
    apiserver.create(pod("a", "p0", "10.0.0.1"))
    old = apiserver.resource_version
    apiserver.create(pod("a", "p1", "10.0.0.2"))
    apiserver.compact()
    response, events = watch(apiserver, f"/api/v1/pods?watch=true&resourceVersion={old}")
    if gone_as == "status":
        assert response.status == 410
    else:
        assert response.status == 200
        (error,) = list(events)
        assert error["type"] == "ERROR" and error["object"]["code"] == 410


def test_down_refuses_connections_and_up_serves_on_the_same_port(apiserver: FakeApiServer) -> None:
    apiserver.create(pod("a", "p0", "10.0.0.1"))
    port = apiserver.port
    apiserver.go_down()
    with pytest.raises(ConnectionRefusedError):
        get(apiserver, "/api/v1/pods")
    apiserver.come_up()
    assert apiserver.port == port
    status, pods = get(apiserver, "/api/v1/pods")
    assert status == 200 and len(pods["items"]) == 1


def test_kubeconfig_points_at_the_server(apiserver: FakeApiServer, tmp_path) -> None:
    import yaml

    config = yaml.safe_load(apiserver.write_kubeconfig(tmp_path / "config").read_text())
    assert config["clusters"][0]["cluster"]["server"] == apiserver.url
    assert config["users"][0]["user"] == {"token": TOKEN}


WATCH_LIST = "/api/v1/pods?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"


def test_watch_list_streams_the_state_then_its_bookmark_then_changes(apiserver: FakeApiServer) -> None:
    for name, ip in (("p1", "10.0.0.2"), ("p0", "10.0.0.1")):
        apiserver.create(pod("a", name, ip))
    apiserver.create(namespace("a"))  # another kind: moves the version, not in the stream
    version = apiserver.resource_version
    response, events = watch(apiserver, WATCH_LIST)
    assert response.status == 200
    initial = [next(events) for _ in range(3)]
    assert [(e["type"], e["object"]["metadata"].get("name")) for e in initial] == [
        ("ADDED", "p0"), ("ADDED", "p1"), ("BOOKMARK", None)]
    end = initial[2]["object"]
    assert end["kind"] == "Pod" and end["metadata"] == {
        "resourceVersion": str(version), "annotations": {"k8s.io/initial-events-end": "true"}}
    apiserver.wait_for_watches(["Pod"])
    apiserver.delete("Pod", "p1", "a")
    change = next(events)
    assert (change["type"], change["object"]["metadata"]["name"]) == ("DELETED", "p1")
    # Without bookmarks asked for there is no end marker; the events still come.
    _, plain = watch(apiserver, WATCH_LIST.replace("&allowWatchBookmarks=true", ""))
    assert [e["type"] for e in (next(plain),)] == ["ADDED"]


@pytest.mark.parametrize("query, refused_for", [
    ("watch=1&sendInitialEvents=true&allowWatchBookmarks=true", "requires setting resourceVersionMatch"),
    ("watch=1&resourceVersionMatch=NotOlderThan", "forbidden for watch unless sendInitialEvents"),
])
def test_invalid_watch_list_options_are_refused_as_kube_apiserver_does(apiserver: FakeApiServer, query: str,
                                                                       refused_for: str) -> None:
    status, body = get(apiserver, f"/api/v1/pods?{query}")
    assert status == 422 and body["reason"] == "Invalid" and refused_for in body["message"]


def test_watch_list_refused_or_ignored_on_demand(apiserver: FakeApiServer) -> None:
    apiserver.create(pod("a", "p0", "10.0.0.1"))
    apiserver.watch_list = "refuse"
    status, body = get(apiserver, WATCH_LIST)
    assert status == 422 and "unless the WatchList feature gate is enabled" in body["message"]
    apiserver.watch_list = "ignore"  # a plain watch: the objects, then only changes, never the bookmark
    apiserver.create(pod("a", "p1", "10.0.0.2"))
    response, events = watch(apiserver, WATCH_LIST)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in (next(events), next(events))] == [
        ("ADDED", "p0"), ("ADDED", "p1")]
    apiserver.wait_for_watches(["Pod"])
    apiserver.create(pod("a", "p2", "10.0.0.3"))
    assert next(events)["type"] == "ADDED"
    response.close()
