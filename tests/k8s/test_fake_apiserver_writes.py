"""The fake API server's write verbs, label selectors and RBAC, driven by the official client over HTTP."""

from __future__ import annotations

import json
import pathlib
from typing import Any, Iterator

import pytest
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from kube_netpol.sources.kubernetes import api_client_from_config
from kube_netpol.tools.testing import FakeApiServer

from test_fake_apiserver import TOKEN, get, watch

NP = "NetworkPolicy"


def policy(name: str, namespace: str = "a", **labels: str) -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": NP,
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


@pytest.fixture
def networking(apiserver: FakeApiServer, tmp_path: pathlib.Path) -> Iterator[k8s.NetworkingV1Api]:
    api_client = api_client_from_config(str(apiserver.write_kubeconfig(tmp_path / "kubeconfig")))
    try:
        yield k8s.NetworkingV1Api(api_client)
    finally:
        api_client.close()


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.data)


def status_of(call: Any) -> tuple[int, str]:
    with pytest.raises(ApiException) as caught:
        call()
    return caught.value.status, json.loads(caught.value.body)["reason"]


def test_create_update_patch_delete(apiserver: FakeApiServer, networking: k8s.NetworkingV1Api) -> None:
    created = body(networking.create_namespaced_network_policy("a", policy("p"), _preload_content=False))
    assert created["metadata"]["resourceVersion"] == str(apiserver.resource_version) and created["metadata"]["uid"]
    assert apiserver.get(NP, "p", "a")["spec"] == policy("p")["spec"]
    assert status_of(lambda: networking.create_namespaced_network_policy("a", policy("p"))) == (409, "AlreadyExists")
    assert status_of(lambda: networking.create_namespaced_network_policy("b", policy("q", "a"))) == (400, "BadRequest")

    stale = {**policy("p"), "metadata": {**policy("p")["metadata"], "resourceVersion": "1"}}
    assert status_of(lambda: networking.replace_namespaced_network_policy("p", "a", stale)) == (409, "Conflict")
    current = apiserver.get(NP, "p", "a")
    current["spec"]["policyTypes"] = ["Ingress", "Egress"]
    replaced = body(networking.replace_namespaced_network_policy("p", "a", current, _preload_content=False))
    assert replaced["spec"]["policyTypes"] == ["Ingress", "Egress"] and replaced["metadata"]["uid"] == created["metadata"]["uid"]
    assert status_of(lambda: networking.replace_namespaced_network_policy("nope", "a", policy("nope"))) == (404, "NotFound")

    patched = body(networking.patch_namespaced_network_policy(
        "p", "a", {"metadata": {"labels": {"team": "x"}}, "spec": {"policyTypes": None}},
        _content_type="application/merge-patch+json", _preload_content=False))
    assert patched["metadata"]["labels"] == {"team": "x"} and "policyTypes" not in patched["spec"]
    assert status_of(lambda: networking.patch_namespaced_network_policy(
        "p", "a", [{"op": "remove", "path": "/spec"}], _content_type="application/json-patch+json")) == \
        (415, "UnsupportedMediaType")

    precondition = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version="1"))
    assert status_of(lambda: networking.delete_namespaced_network_policy("p", "a", body=precondition)) == (409, "Conflict")
    version = apiserver.get(NP, "p", "a")["metadata"]["resourceVersion"]
    networking.delete_namespaced_network_policy(
        "p", "a", body=k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(resource_version=version)))
    assert apiserver.get(NP, "p", "a") is None
    assert status_of(lambda: networking.delete_namespaced_network_policy("p", "a")) == (404, "NotFound")
    assert [r.method for r in apiserver.write_requests()].count("DELETE") == 3


def test_dry_run_changes_nothing(apiserver: FakeApiServer, networking: k8s.NetworkingV1Api) -> None:
    version = apiserver.resource_version
    answer = body(networking.create_namespaced_network_policy("a", policy("p"), dry_run="All", _preload_content=False))
    assert answer["metadata"]["name"] == "p"
    assert apiserver.get(NP, "p", "a") is None and apiserver.resource_version == version
    apiserver.create(policy("q"))
    networking.delete_namespaced_network_policy("q", "a", dry_run="All")
    assert apiserver.get(NP, "q", "a") is not None


def test_label_selectors_filter_lists_and_watches(apiserver: FakeApiServer) -> None:
    apiserver.create(policy("mine", owner="me"))
    apiserver.create(policy("theirs", owner="them"))
    status, listed = get(apiserver, "/apis/networking.k8s.io/v1/networkpolicies?labelSelector=owner%3Dme")
    assert status == 200 and [i["metadata"]["name"] for i in listed["items"]] == ["mine"]
    assert get(apiserver, "/apis/networking.k8s.io/v1/networkpolicies?labelSelector=a%3Db%3Dc")[0] == 400
    start = apiserver.resource_version
    response, events = watch(apiserver, "/apis/networking.k8s.io/v1/networkpolicies?watch=true"
                                        f"&labelSelector=owner%3Dme&resourceVersion={start}")
    apiserver.wait_for_watches([NP])
    apiserver.update(policy("theirs", owner="them", team="x"))  # never matched: not seen
    apiserver.update(policy("theirs", owner="me"))  # starts matching: ADDED
    apiserver.update(policy("mine", owner="someone-else"))  # stops matching: DELETED
    apiserver.update(policy("theirs", owner="me", team="y"))  # still matching: MODIFIED
    seen = [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["labels"]) for e in
            (next(events) for _ in range(3))]
    assert seen == [("ADDED", "theirs", {"owner": "me"}), ("DELETED", "mine", {"owner": "me"}),
                    ("MODIFIED", "theirs", {"owner": "me", "team": "y"})]
    response.close()


def test_rbac_refuses_what_the_rules_do_not_grant(tmp_path: pathlib.Path) -> None:
    rules = {("networking.k8s.io", "networkpolicies", verb) for verb in ("list", "watch", "create")}
    with FakeApiServer(token=TOKEN, rules=rules) as server:
        api_client = api_client_from_config(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
        try:
            networking = k8s.NetworkingV1Api(api_client)
            networking.create_namespaced_network_policy("a", policy("p"))
            assert len(networking.list_network_policy_for_all_namespaces().items) == 1
            assert status_of(lambda: networking.read_namespaced_network_policy("p", "a")) == (403, "Forbidden")
            assert status_of(lambda: networking.delete_namespaced_network_policy("p", "a")) == (403, "Forbidden")
            assert status_of(lambda: k8s.CoreV1Api(api_client).list_pod_for_all_namespaces()) == (403, "Forbidden")
            assert server.get(NP, "p", "a") is not None
        finally:
            api_client.close()
