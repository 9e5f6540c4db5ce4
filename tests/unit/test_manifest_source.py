"""ManifestSource keeps the state equal to a folder of manifests."""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
import textwrap

from kube_netpol.sources.manifests import ManifestSource
from kube_netpol.state import ClusterState

NAMESPACE_AND_POD = textwrap.dedent("""\
    apiVersion: v1
    kind: Namespace
    metadata: {name: x}
    ---
    apiVersion: v1
    kind: Pod
    metadata: {name: a, namespace: x, labels: {app: web}}
    status: {podIPs: [{ip: 10.0.0.1}]}
    """)

POLICY = textwrap.dedent("""\
    apiVersion: networking.k8s.io/v1
    kind: NetworkPolicy
    metadata: {name: deny, namespace: x}
    spec: {podSelector: {}, policyTypes: [Ingress]}
    """)


def write(path: pathlib.Path, text: str) -> None:
    path.write_text(text)
    # Make sure the change is visible even within one mtime tick.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def packed(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def test_loads_adds_updates_and_deletes(tmp_path: pathlib.Path) -> None:
    state = ClusterState()
    write(tmp_path / "cluster.yaml", NAMESPACE_AND_POD)
    (tmp_path / "policies").mkdir()
    write(tmp_path / "policies" / "deny.yml", POLICY)
    source = ManifestSource(tmp_path, state)
    assert source.sync()
    assert state.pod_info_by_ip(packed("10.0.0.1")).labels["app"] == "web"
    assert ("x", "deny") in state.policy_objects("NetworkPolicy")
    assert not source.sync()  # nothing changed

    write(tmp_path / "cluster.yaml", NAMESPACE_AND_POD.replace("app: web", "app: db"))
    assert source.sync()
    assert state.pod_info_by_ip(packed("10.0.0.1")).labels["app"] == "db"

    (tmp_path / "policies" / "deny.yml").unlink()
    assert source.sync()
    assert ("x", "deny") not in state.policy_objects("NetworkPolicy")


def test_a_broken_file_keeps_its_previous_objects(tmp_path: pathlib.Path, caplog) -> None:
    state = ClusterState()
    write(tmp_path / "cluster.yaml", NAMESPACE_AND_POD)
    write(tmp_path / "deny.yaml", POLICY)
    source = ManifestSource(tmp_path, state)
    source.sync()
    with caplog.at_level(logging.ERROR):
        write(tmp_path / "deny.yaml", "kind: [unclosed")
        source.sync()
    assert "deny.yaml" in caplog.text
    assert ("x", "deny") in state.policy_objects("NetworkPolicy")


def test_lists_and_json(tmp_path: pathlib.Path) -> None:
    state = ClusterState()
    write(tmp_path / "list.json", '{"kind": "List", "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}]}')
    ManifestSource(tmp_path, state).sync()
    assert "y" in state.namespaces


def test_invalid_objects_are_reported_once(tmp_path: pathlib.Path, caplog) -> None:
    state = ClusterState()
    write(tmp_path / "bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: nope}\n")
    source = ManifestSource(tmp_path, state)
    with caplog.at_level(logging.WARNING):
        source.sync()
        source.sync()
    assert caplog.text.count("invalid IP address 'nope'") == 1
    assert state.invalid_objects["Pod"] == 1
