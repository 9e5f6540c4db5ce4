"""ManifestSource keeps the state equal to a folder of manifests."""

from __future__ import annotations

import ipaddress
import logging
import os
import pathlib
import textwrap

from kube_netpol.sources.manifests import ManifestSource
from kube_netpol.plugins import registry_for
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
    state = ClusterState(registry_for())
    write(tmp_path / "cluster.yaml", NAMESPACE_AND_POD)
    (tmp_path / "policies").mkdir()
    write(tmp_path / "policies" / "deny.yml", POLICY)
    source = ManifestSource(tmp_path, state)
    assert source.sync()
    assert state.pod_by_ip(packed("10.0.0.1")).labels["app"] == "web"
    assert ("x", "deny") in state.objects("NetworkPolicy")
    assert not source.sync()  # nothing changed

    write(tmp_path / "cluster.yaml", NAMESPACE_AND_POD.replace("app: web", "app: db"))
    assert source.sync()
    assert state.pod_by_ip(packed("10.0.0.1")).labels["app"] == "db"

    (tmp_path / "policies" / "deny.yml").unlink()
    assert source.sync()
    assert ("x", "deny") not in state.objects("NetworkPolicy")


def test_a_broken_file_keeps_its_previous_objects(tmp_path: pathlib.Path, caplog) -> None:
    state = ClusterState(registry_for())
    write(tmp_path / "cluster.yaml", NAMESPACE_AND_POD)
    write(tmp_path / "deny.yaml", POLICY)
    source = ManifestSource(tmp_path, state)
    source.sync()
    with caplog.at_level(logging.ERROR):
        write(tmp_path / "deny.yaml", "kind: [unclosed")
        source.sync()
    assert "deny.yaml" in caplog.text
    assert ("x", "deny") in state.objects("NetworkPolicy")


def test_lists_and_json(tmp_path: pathlib.Path) -> None:
    state = ClusterState(registry_for())
    write(tmp_path / "list.json", '{"kind": "List", "items": [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}}]}')
    ManifestSource(tmp_path, state).sync()
    assert state.namespace("y") is not None


def test_invalid_objects_are_reported_once(tmp_path: pathlib.Path, caplog) -> None:
    state = ClusterState(registry_for())
    write(tmp_path / "bad.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nstatus: {podIP: nope}\n")
    source = ManifestSource(tmp_path, state)
    with caplog.at_level(logging.WARNING):
        source.sync()
        source.sync()
    assert caplog.text.count("invalid IP address 'nope'") == 1
    assert state.invalid_objects["Pod"] == 1


SERVICE = textwrap.dedent("""\
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: x}
    spec: {ports: [{port: 80}]}
    """)


def test_objects_of_kinds_the_agent_does_not_read_never_wedge_the_folder(tmp_path: pathlib.Path) -> None:
    state = ClusterState(registry_for())
    source = ManifestSource(tmp_path, state)
    write(tmp_path / "base.yaml", NAMESPACE_AND_POD)
    write(tmp_path / "svc.yaml", SERVICE)
    assert source.sync()
    assert not state.invalid_objects
    (tmp_path / "svc.yaml").unlink()  # deleting a Service: nothing to delete in the state
    source.sync()
    write(tmp_path / "deny.yaml", POLICY)  # a deny-all written afterwards is enforced
    assert source.sync()
    assert ("x", "deny") in state.objects("NetworkPolicy")


def test_any_failure_reading_a_file_costs_that_file_only(tmp_path: pathlib.Path, monkeypatch, caplog) -> None:
    from kube_netpol.sources import manifests

    state = ClusterState(registry_for())
    source = ManifestSource(tmp_path, state)
    write(tmp_path / "base.yaml", NAMESPACE_AND_POD)
    write(tmp_path / "deny.yaml", POLICY)
    source.sync()
    real = manifests.read_manifest_file

    def exploding(path: pathlib.Path):  # type: ignore[no-untyped-def]
        if path.name == "deny.yaml":
            raise RecursionError("maximum recursion depth exceeded")
        return real(path)

    monkeypatch.setattr(manifests, "read_manifest_file", exploding)
    write(tmp_path / "deny.yaml", POLICY + "# touched\n")
    write(tmp_path / "more.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: y}\n")
    with caplog.at_level(logging.ERROR):
        source.sync()
    assert ("x", "deny") in state.objects("NetworkPolicy")  # its last good objects stay in force
    assert state.namespace("y") is not None  # the other files still apply
    assert "deny.yaml: RecursionError" in caplog.text
    assert list(source.unreadable) == [tmp_path / "deny.yaml"]


def test_duplicates_across_files_resolve_by_path_order_and_are_reported(tmp_path: pathlib.Path, caplog) -> None:
    state = ClusterState(registry_for())
    source = ManifestSource(tmp_path, state)
    write(tmp_path / "a.yaml", NAMESPACE_AND_POD)
    write(tmp_path / "b.yaml", NAMESPACE_AND_POD.replace("app: web", "app: db"))
    with caplog.at_level(logging.WARNING):
        source.sync()
    assert state.pod_by_ip(packed("10.0.0.1")).labels["app"] == "web"  # a.yaml comes first
    assert "Pod x/a is in 2 files" in caplog.text and "using the one in" in caplog.text
    caplog.clear()
    write(tmp_path / "c.yaml", POLICY)  # an unrelated change: the duplicate is not reported again
    with caplog.at_level(logging.WARNING):
        source.sync()
    assert "is in 2 files" not in caplog.text
    (tmp_path / "a.yaml").unlink()
    source.sync()
    assert state.pod_by_ip(packed("10.0.0.1")).labels["app"] == "db"


def test_a_missing_folder_is_reported_once_then_every_interval(tmp_path: pathlib.Path, monkeypatch, caplog) -> None:
    from kube_netpol.sources import manifests

    now = [1000.0]
    monkeypatch.setattr(manifests.time, "monotonic", lambda: now[0])
    source = manifests.ManifestFolderSource(str(tmp_path / "missing"), ClusterState(registry_for()))
    with caplog.at_level(logging.ERROR):
        for _ in range(100):  # five seconds of polls
            source.poll()
            now[0] += 0.05
        assert caplog.text.count("not a folder") == 1
        now[0] += manifests.FOLDER_ERROR_INTERVAL
        source.poll()
        assert caplog.text.count("not a folder") == 2
    assert not source.ready()
    (tmp_path / "missing").mkdir()
    with caplog.at_level(logging.INFO):
        source.poll()
    assert source.ready() and "readable again" in caplog.text


def test_a_yaml_error_is_one_log_line_with_its_place(tmp_path: pathlib.Path, caplog) -> None:
    write(tmp_path / "bad.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: [x\n")
    with caplog.at_level(logging.ERROR):
        ManifestSource(tmp_path, ClusterState(registry_for())).sync()
    (record,) = [r for r in caplog.records if "bad.yaml" in r.getMessage()]
    message = record.getMessage()
    assert "\n" not in message
    assert "line 4, column 1: expected ',' or ']', but got '<stream end>' (while parsing a flow sequence)" in message


def test_a_refused_update_says_the_last_valid_version_stays(tmp_path: pathlib.Path, caplog) -> None:
    state = ClusterState(registry_for())
    source = ManifestSource(tmp_path, state)
    write(tmp_path / "base.yaml", NAMESPACE_AND_POD)
    write(tmp_path / "deny.yaml", POLICY)
    source.sync()
    write(tmp_path / "deny.yaml", POLICY.replace("policyTypes: [Ingress]", "policyTypes: [Sideways]"))
    with caplog.at_level(logging.WARNING):
        source.sync()
    assert "refusing NetworkPolicy x/deny" in caplog.text and "the last valid version stays in force" in caplog.text
    assert ("x", "deny") in state.objects("NetworkPolicy")
