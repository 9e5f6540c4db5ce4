"""`kube-netpol policy-controller` against the fake API server over real HTTP with the official client,
under the least RBAC it declares: workloads created, changed and deleted lead to exactly the right
policy writes; NetworkPolicies it does not own are never touched; dry run writes nothing."""

from __future__ import annotations

import logging
import pathlib
import time
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import pytest

from kube_netpol.advise.controller import ControllerLimits, PolicyController
from kube_netpol.advise.owned import MANAGED_BY_LABEL, MANAGER, OWNED_POLICIES, required_rules
from kube_netpol.advise.writer import KubernetesWriter
from kube_netpol.advise.kinds import advise_registry
from kube_netpol.advise.options import AdviseOptions
from kube_netpol.sources.kubernetes import api_client_from_config, resource_request
from kube_netpol.tools.testing import FakeApiServer

from k8s_helpers import FAST, node, pod

TOKEN = "controller-token"
NP = "NetworkPolicy"
QUICK = ControllerLimits(quiet=0.05, max_delay=0.5, writes_per_second=200, burst=50, connect_timeout=1.0,
                         write_timeout=2.0, failure_backoff=0.1)


def deployment(name: str, namespace: str = "shop", labels: dict[str, str] | None = None,
               env: dict[str, str] | None = None, port: int = 8080) -> dict[str, Any]:
    labels = labels or {"app": name}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
        "spec": {"selector": {"matchLabels": labels}, "template": {
            "metadata": {"labels": labels},
            "spec": {"containers": [{"name": name, "image": name, "ports": [{"name": "http", "containerPort": port}],
                                     "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}]}}},
    }  # fmt: skip


def service(name: str, selector: dict[str, str], target: int | str, namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": target}]}}


def foreign_policy(name: str, namespace: str = "shop") -> dict[str, Any]:
    return {"apiVersion": "networking.k8s.io/v1", "kind": NP, "metadata": {"name": name, "namespace": namespace},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}}


def peers(policy: dict[str, Any], direction: str, port: int | str) -> list[dict[str, Any]]:
    """The peers of a policy's rules in ``direction`` that name ``port`` (TCP)."""
    field = "from" if direction == "ingress" else "to"
    return [peer for rule in policy["spec"].get(direction, [])
            if {"protocol": "TCP", "port": port} in rule.get("ports", []) for peer in rule[field]]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def controller_on(server: FakeApiServer, tmp_path: pathlib.Path, dry_run: bool) -> Iterator[PolicyController]:
    api_client = api_client_from_config(str(server.write_kubeconfig(tmp_path / "kubeconfig")))
    controller = PolicyController(lambda spec: resource_request(api_client, spec), KubernetesWriter(api_client, QUICK.connect_timeout, QUICK.write_timeout),
                                  AdviseOptions(), dry_run=dry_run, settings=FAST, limits=QUICK)
    controller.start()
    try:
        wait_until(controller.ready, "the first reconcile")
        yield controller
    finally:
        controller.stop()
        api_client.close()


def served_kinds() -> Any:
    return advise_registry((OWNED_POLICIES,))


def ours(server: FakeApiServer) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in server.objects(NP)
            if (p["metadata"].get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGER}


def settled(controller: PolicyController) -> bool:
    """Reconciled since the last change it saw, and nothing left to do."""
    return bool(wait_until(lambda: controller.idle, "the controller to settle"))


def test_workloads_coming_changing_and_going(tmp_path: pathlib.Path) -> None:
    with FakeApiServer(token=TOKEN, kinds=served_kinds(), rules=required_rules(dry_run=False)) as server:
        server.create(node("node-1", "192.168.1.10"))
        server.create(deployment("web", env={"API": "http://api.shop.svc.cluster.local"}))
        server.create(deployment("api"))
        server.create(service("api", {"app": "api"}, "http"))
        # Not the controller's: an unrelated policy, and one holding the name it would give Deployment legacy.
        server.create(foreign_policy("allow-monitoring"))
        server.create(foreign_policy("deployment-legacy"))
        server.create(deployment("legacy"))
        foreign_versions = {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in server.objects(NP)}
        with controller_on(server, tmp_path, dry_run=False) as controller:
            policies = wait_until(lambda: (lambda o: o if {"deployment-web", "deployment-api"} <= set(o) else None)(ours(server)),
                                  "the first policies")
            web, api = policies["deployment-web"], policies["deployment-api"]
            api_pods = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}},
                        "podSelector": {"matchLabels": {"app": "api"}}}
            web_pods = {**api_pods, "podSelector": {"matchLabels": {"app": "web"}}}
            assert api_pods in peers(web, "egress", "http") and web_pods in peers(api, "ingress", "http")
            assert web_pods not in peers(api, "egress", "http")  # one direction only
            assert controller.status.conflicts == {("shop", "deployment-legacy"): controller.status.conflicts[("shop", "deployment-legacy")]}
            assert settled(controller)

            writes = len(server.write_requests())
            # A change of labels: the policy follows the new selector.
            server.update(deployment("api", labels={"app": "api", "tier": "backend"}))
            wait_until(lambda: ours(server)["deployment-api"]["spec"]["podSelector"] ==
                       {"matchLabels": {"app": "api", "tier": "backend"}}, "the relabelled policy")
            # A change of env: web no longer names the api Service, so neither direction stays.
            server.update(deployment("web"))
            wait_until(lambda: api_pods not in [p for r in ours(server)["deployment-web"]["spec"].get("egress", [])
                                                for p in r["to"]], "web's egress without api")
            wait_until(lambda: web_pods not in [p for r in ours(server)["deployment-api"]["spec"].get("ingress", [])
                                                for p in r["from"]], "api's ingress without web")
            # A change of the Service's target port reaches the clients' policies.
            server.update(deployment("web", env={"API": "api"}))
            server.update(service("api", {"app": "api"}, 9090))
            wait_until(lambda: api_pods in peers(ours(server)["deployment-web"], "egress", 9090)
                       and web_pods in peers(ours(server)["deployment-api"], "ingress", 9090), "the new target port")
            # A workload that goes takes its policy along.
            server.delete("Deployment", "api", "shop")
            wait_until(lambda: "deployment-api" not in ours(server), "the deleted workload's policy gone")
            assert settled(controller)
            made = [(r.method, r.path.rsplit("/", 1)[-1]) for r in server.write_requests()[writes:]]
            assert {method for method, _ in made} == {"PUT", "DELETE"}  # nothing created: every policy existed
            assert {name for _, name in made} == {"deployment-web", "deployment-api"}
            assert made[-1] == ("DELETE", "deployment-api") and [m for m, _ in made].count("DELETE") == 1
            # Settled means settled: what it wrote is what it wants, so no write follows (no update loop).
            time.sleep(0.5)
            assert len(server.write_requests()) == writes + len(made)
            assert controller.status.failures == 0

            # Others untouched: the foreign policies are as they were; the only write naming one was the
            # refused create of the name it holds.
            assert {p["metadata"]["name"]: p["metadata"]["resourceVersion"] for p in server.objects(NP)
                    if p["metadata"]["name"] in foreign_versions} == {
                name: version for name, version in foreign_versions.items()}
            touching = [r for r in server.write_requests() if r.method != "POST"
                        and r.path.rsplit("/", 1)[-1] in foreign_versions]
            assert touching == []
            posted = [r.path for r in server.write_requests() if r.method == "POST"]
            assert all(path == "/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies" for path in posted)


def test_a_policy_whose_label_is_removed_is_no_longer_its_own(tmp_path: pathlib.Path) -> None:
    with FakeApiServer(token=TOKEN, kinds=served_kinds(), rules=required_rules(dry_run=False)) as server:
        server.create(deployment("web"))
        with controller_on(server, tmp_path, dry_run=False) as controller:
            wait_until(lambda: "deployment-web" in ours(server), "the policy")
            adopted = server.get(NP, "deployment-web", "shop")
            adopted["metadata"]["labels"] = {"team": "mine-now"}
            adopted["spec"]["policyTypes"] = ["Ingress"]
            server.update(adopted)
            wait_until(lambda: ("shop", "deployment-web") in controller.status.conflicts, "the conflict")
            server.update(deployment("web", labels={"app": "web", "v": "2"}))  # the controller wants a change
            assert settled(controller)
            kept = server.get(NP, "deployment-web", "shop")
            assert kept["metadata"]["labels"] == {"team": "mine-now"} and kept["spec"]["policyTypes"] == ["Ingress"]
            assert [r.method for r in server.write_requests()].count("PUT") == 0


def test_dry_run_writes_nothing_and_needs_no_write_access(tmp_path: pathlib.Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="kube_netpol.advise.controller")
    with FakeApiServer(token=TOKEN, kinds=served_kinds(), rules=required_rules(dry_run=True)) as server:
        server.create(deployment("web"))
        server.create(pod("shop", "debug", "10.0.0.9", run="debug"))  # a bare pod: a workload of its own
        server.create(foreign_policy("allow-monitoring"))
        with controller_on(server, tmp_path, dry_run=True) as controller:
            assert settled(controller)
            assert controller.status.dry_run == {"create": 2, "update": 0, "delete": 0}
            server.update(deployment("web", labels={"app": "web", "v": "2"}))
            wait_until(lambda: controller.status.dry_run["create"] == 3, "the changed policy reported again")
            assert settled(controller)
            assert controller.status.dry_run["create"] == 3  # each distinct change logged once
            assert controller.status_document()["pending"] == [
                "create NetworkPolicy shop/deployment-web", "create NetworkPolicy shop/pod-debug"]
        assert server.write_requests() == []
        assert ours(server) == {}
        logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dry run:")]
        assert logged.count("dry run: would create NetworkPolicy shop/deployment-web") == 2


def test_required_rules_are_list_watch_and_the_three_writes() -> None:
    read = required_rules(dry_run=True)
    assert {verb for _, _, verb in read} == {"list", "watch"}
    assert {(group, resource) for group, resource, _ in read} == {
        ("", "pods"), ("", "nodes"), ("", "services"), ("apps", "deployments"), ("apps", "replicasets"),
        ("apps", "statefulsets"), ("apps", "daemonsets"), ("batch", "jobs"), ("batch", "cronjobs"),
        ("networking.k8s.io", "networkpolicies")}
    assert required_rules(dry_run=False) - read == {("networking.k8s.io", "networkpolicies", verb)
                                                    for verb in ("create", "update", "delete")}
