"""The real agent fed by the Kubernetes API: policies and labels changed through the API are enforced, and undone.

The fake API server listens inside the lab's node namespace and the agent
runs there with ``--kubeconfig``; every change is made through the server and
waited for through /statusz (the enforced revision reaching the change's
resourceVersion), never with sleeps.
"""

from __future__ import annotations

import json
import pathlib
import queue
import socket
import time
import urllib.request
from typing import Callable

import pytest

pytest.importorskip("kubernetes")

from e2e_agentlab import allow_ingress_from_pod, deny_ingress, requires_root  # noqa: E402
from e2e_kubelab import KubeLab, kube_agent_lab  # noqa: E402

from kube_netpol.sources.kubernetes import KubernetesSource, api_client_from_config, revision_versions  # noqa: E402
from kube_netpol.plugins import registry_for  # noqa: E402
from kube_netpol.state import ClusterState  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402

PODS = {
    "x/a": ["10.244.1.10"],
    "x/b": ["10.244.1.11"],
    "y/a": ["10.244.2.10"],
    "y/b": ["10.244.2.11"],
}
#: Every ordered pair of pods: each change is checked against all of them.
PAIRS = [(src, dst) for src in PODS for dst in PODS if src != dst]


def verdicts(env: KubeLab) -> dict[tuple[str, str], bool]:
    return dict(zip(PAIRS, env.probe_many(PAIRS)))


def expect(allowed: Callable[[str, str], bool]) -> dict[tuple[str, str], bool]:
    return {(src, dst): allowed(src, dst) for src, dst in PAIRS}


@requires_root[0]
@requires_root[1]
def test_policies_and_labels_changed_through_the_api_are_enforced_and_undone() -> None:
    with kube_agent_lab(PODS) as env:
        assert verdicts(env) == expect(lambda src, dst: True), "no policy: everything flows"

        # A deny-all-ingress policy created in x: nothing reaches x's pods, the rest still flows.
        created = env.create(deny_ingress("x"))
        status = env.wait_enforced(created)
        assert revision_versions(status["enforced_revision"])["NetworkPolicy"] == created["metadata"]["resourceVersion"]
        assert verdicts(env) == expect(lambda src, dst: not dst.startswith("x/"))

        # Deleted: enforcement goes away.
        env.wait_enforced(env.delete("NetworkPolicy", "deny-ingress", "x"))
        assert verdicts(env) == expect(lambda src, dst: True)

        # x/a admits only its namespace's pods labelled pod=b: the verdicts follow the pods' labels.
        env.wait_enforced(env.create(allow_ingress_from_pod("x", "a", "b")))
        only_x_b = expect(lambda src, dst: dst != "x/a" or src == "x/b")
        assert verdicts(env) == only_x_b

        env.wait_enforced(env.relabel_pod("x/b", {"pod": "b-renamed"}))
        assert verdicts(env) == expect(lambda src, dst: dst != "x/a")

        env.wait_enforced(env.relabel_pod("y/a", {"pod": "b"}))  # the label, but in another namespace
        assert verdicts(env) == expect(lambda src, dst: dst != "x/a")

        env.wait_enforced(env.relabel_pod("x/b", {"pod": "b"}))
        assert verdicts(env) == only_x_b

        # The policy updated in place (MODIFIED) to admit namespace y too.
        policy = env.server.get("NetworkPolicy", "allow-from-peer", "x")
        assert policy is not None
        policy["spec"]["ingress"][0]["from"].append({"namespaceSelector": {"matchLabels": {"ns": "y"}}})
        env.wait_enforced(env.update(policy))
        assert verdicts(env) == expect(lambda src, dst: dst != "x/a" or src in ("x/b", "y/a", "y/b"))

        # And deleted: x/a is open again.
        env.wait_enforced(env.delete("NetworkPolicy", "allow-from-peer", "x"))
        assert verdicts(env) == expect(lambda src, dst: True)


def test_the_source_revision_moves_only_when_the_control_thread_applies_a_change(tmp_path: pathlib.Path) -> None:
    """No root: revision() is the applied resourceVersion per kind, not what the watch threads merely received."""
    work: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()

    def run_queued_work_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            while not work.empty():
                work.get()()
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)

    with FakeApiServer() as server:
        server.create({"kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}})
        source = KubernetesSource(ClusterState(registry_for(("networkpolicy",))), api_client_from_config(str(server.write_kubeconfig(tmp_path / "kc"))))
        assert source.revision() == ""
        source.start(work.put)
        try:
            listed_at = str(server.resource_version)
            run_queued_work_until(source.ready)
            assert revision_versions(source.revision()) == {"Namespace": listed_at, "Pod": listed_at,
                                                            "NetworkPolicy": listed_at}
            server.wait_for_watches(["Namespace", "Pod", "NetworkPolicy"])

            before = source.revision()
            created = server.create(deny_ingress("x"))
            version = created["metadata"]["resourceVersion"]
            deadline = time.monotonic() + 5
            while work.empty():
                assert time.monotonic() < deadline, "the watch did not deliver the event"
                time.sleep(0.005)
            assert source.revision() == before, "received but not applied yet"
            assert server.sent_at(version) is not None

            run_queued_work_until(lambda: revision_versions(source.revision())["NetworkPolicy"] == version)
            assert ("x", "deny-ingress") in source.state.objects("NetworkPolicy")
            assert revision_versions(source.revision()) == {"Namespace": listed_at, "Pod": listed_at,
                                                            "NetworkPolicy": version}

            deleted = server.delete("NetworkPolicy", "deny-ingress", "x")
            run_queued_work_until(
                lambda: revision_versions(source.revision())["NetworkPolicy"] == deleted["metadata"]["resourceVersion"]
            )
            assert ("x", "deny-ingress") not in source.state.objects("NetworkPolicy")
        finally:
            source.stop()


def test_the_fake_server_listens_on_the_factorys_socket_again_after_going_down() -> None:
    """No root: what lets the server listen inside the node namespace (the factory's socket), restart included."""
    made: list[socket.socket] = []

    def factory() -> socket.socket:
        made.append(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
        return made[-1]

    with FakeApiServer(socket_factory=factory) as server:
        server.create({"kind": "Namespace", "metadata": {"name": "x"}})
        port = server.port
        assert len(made) == 1 and made[0].getsockname() == ("127.0.0.1", port)
        with urllib.request.urlopen(f"{server.url}/api/v1/namespaces", timeout=5) as answer:
            assert [item["metadata"]["name"] for item in json.load(answer)["items"]] == ["x"]
        server.go_down()
        assert made[0].fileno() == -1, "closed with the server"
        server.come_up()
        assert len(made) == 2 and server.port == port and made[1].getsockname() == ("127.0.0.1", port)
