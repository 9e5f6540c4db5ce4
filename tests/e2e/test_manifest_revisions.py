"""The harness's manifests folder and the agent's manifests source agree on revisions (no root needed)."""

from __future__ import annotations

from pathlib import Path

from kube_netpol.sources.manifests import ManifestFolderSource, objects_revision
from kube_netpol.tools.conformance.dataplane_manifests import ManifestFolder
from kube_netpol.plugins import registry_for
from kube_netpol.state import ClusterState


def namespace(name: str, team: str) -> dict:  # type: ignore[type-arg]
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"team": team}}}


def test_the_source_reports_the_revision_the_writer_expects_after_each_write(tmp_path: Path) -> None:
    folder = ManifestFolder(str(tmp_path))
    state = ClusterState(registry_for())
    source = ManifestFolderSource(str(folder.path), state)
    source.start(lambda work: work())
    revisions = []
    # Same size, written back to back (within one mtime tick): each must still be noticed.
    for team in ("a", "b", "c", "a"):
        expected = folder.write([namespace("x", team)])
        source.poll()
        assert source.revision() == expected
        assert state.namespace("x").labels["team"] == team
        revisions.append(expected)
    assert revisions[0] == revisions[3] and len(set(revisions)) == 3
    assert not [p.name for p in folder.path.iterdir() if p.name != "cluster.json"]  # no temporary file left
    folder.remove()
    assert not folder.path.exists()


def test_the_revision_ignores_order_and_keys_objects_as_the_source_does() -> None:
    a, b = namespace("x", "a"), namespace("y", "b")
    assert objects_revision([a, b]) == objects_revision([b, a])
    assert objects_revision([a, namespace("x", "z"), b]) == objects_revision([namespace("x", "z"), b])  # later wins
    assert objects_revision([a, {"kind": "Namespace", "metadata": {}}]) == objects_revision([a])  # nameless: skipped
    assert objects_revision([a]) != objects_revision([namespace("x", "b")])
