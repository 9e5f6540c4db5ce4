"""`kube-netpol advise --kubeconfig`: the workloads, Services, pods and nodes listed from an API server
(the fake one, over HTTP, with the official client) give exactly the proposal the same objects give
from a manifests folder."""

from __future__ import annotations

import contextlib
import io
import pathlib

import pytest

from kube_netpol.advise.kinds import advise_registry
from kube_netpol.cli import main
from kube_netpol.plugins import registry_for
from kube_netpol.sources.manifests import read_manifest_file
from kube_netpol.tools.testing import FakeApiServer

EXAMPLE = pathlib.Path(__file__).resolve().parents[2] / "docs" / "examples" / "advise"
TOKEN = "advise-token"


def advise(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["advise", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def kubeconfig(tmp_path: pathlib.Path) -> pathlib.Path:
    # What advise lists, and what --verify's engine lists (its policy kinds).
    kinds = {spec.kind: spec for spec in (*advise_registry(), *registry_for())}
    server = FakeApiServer(token=TOKEN, kinds=kinds.values())
    for path in sorted((EXAMPLE / "cluster").glob("*.yaml")):
        for obj in read_manifest_file(path):
            server.create(obj)
    try:
        yield server.write_kubeconfig(tmp_path / "kubeconfig")
    finally:
        server.stop()


def test_a_live_cluster_gives_what_its_manifests_give(kubeconfig: pathlib.Path) -> None:
    code, live, err = advise("--from-workloads", "--kubeconfig", str(kubeconfig))
    assert code == 0, err
    assert "advise: workloads from the cluster at http://127.0.0.1:" in err
    code, folder, _ = advise("--from-workloads", "--manifests", str(EXAMPLE / "cluster"))
    assert code == 0 and live == folder and live.count("kind: NetworkPolicy") == 4


def test_records_with_a_live_cluster_for_owners_and_verify(kubeconfig: pathlib.Path) -> None:
    code, out, err = advise("--from-decisions", str(EXAMPLE / "decisions.jsonl"), "--kubeconfig", str(kubeconfig),
                            "--verify")
    assert code == 0, err
    assert "# Deployment shop/web: 2 pod(s) observed; ReplicaSet web-5d8f7c9b4 is owned by Deployment web" in out
    assert "verify: all 7 stay allowed" in err


def test_verify_judges_with_the_policies_in_force_in_the_cluster(kubeconfig: pathlib.Path) -> None:
    """An AdminNetworkPolicy of the cluster that denies ops -> shop breaks the report's reads: verify says so."""
    from kube_netpol.sources.kubernetes import api_client_from_config
    from kubernetes import client as k8s

    api = api_client_from_config(str(kubeconfig))
    try:
        k8s.CustomObjectsApi(api).create_cluster_custom_object("policy.networking.k8s.io", "v1alpha1", "adminnetworkpolicies", {
            "apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
            "metadata": {"name": "fence-shop"},
            "spec": {"priority": 10, "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}},
                     "ingress": [{"name": "no-ops", "action": "Deny", "from": [
                         {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}}}]}]}})
    finally:
        api.close()
    code, _, err = advise("--from-decisions", str(EXAMPLE / "decisions.jsonl"), "--kubeconfig", str(kubeconfig),
                          "--verify")
    assert code == 1, err
    assert "verify: 6 stay allowed, 1 would now be denied:" in err
    assert ("ops/report-29000000-x9v4c (10.244.2.10) -> shop/db-0 (10.244.1.20) TCP/5432 (pg): egress allowed by "
            "networkpolicy ops/cronjob-report; ingress denied by adminnetworkpolicy fence-shop (Deny)") in err
