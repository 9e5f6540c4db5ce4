"""Whatever YAML a manifest file holds, reading it gives JSON-like objects or a ManifestError naming the file."""

from __future__ import annotations

import json
import pathlib
import textwrap

import pytest

from kube_netpol.sources import manifests
from kube_netpol.sources.manifests import ManifestError, ManifestSource, read_manifest_file
from kube_netpol.state import ClusterState

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: a
  namespace: x
  labels: {{app: web}}
  annotations:
{annotations}
status: {{podIPs: [{{ip: 10.0.0.1}}]}}
"""


def pod_file(tmp_path: pathlib.Path, annotations: str, name: str = "pod.yaml") -> pathlib.Path:
    path = tmp_path / name
    path.write_text(POD.format(annotations=textwrap.indent(textwrap.dedent(annotations), "    ")))
    return path


def test_an_unquoted_date_stays_the_string_written(tmp_path: pathlib.Path) -> None:
    path = pod_file(tmp_path, """\
        created: 2024-01-01
        at: 2024-01-01T10:00:00Z
        tagged: !!timestamp 2001-12-14
        """)
    [pod] = read_manifest_file(path)
    assert pod["metadata"]["annotations"] == {"created": "2024-01-01", "at": "2024-01-01T10:00:00Z",
                                              "tagged": "2001-12-14"}
    json.dumps(pod, sort_keys=True)  # what the source does with every object


def test_int_float_and_bool_keys_become_strings_as_the_api_server_makes_them(tmp_path: pathlib.Path) -> None:
    path = pod_file(tmp_path, """\
        1: one
        b: two
        yes: three
        2.5: four
        0x10: five
        """)
    [pod] = read_manifest_file(path)
    assert pod["metadata"]["annotations"] == {"1": "one", "b": "two", "true": "three", "2.5": "four", "16": "five"}
    json.dumps(pod, sort_keys=True)


@pytest.mark.parametrize(
    "annotations, reason",
    [
        ("things: !!set {a, b}", "has no JSON form"),
        ("blob: !!binary aGVsbG8=", "has no JSON form"),
        ("ordered: !!omap [{a: 1}]", "has no JSON form"),
        ("~: null key", "NoneType mapping key is not a JSON key"),
        ("? [a, b]\n: list key", "list mapping key is not a JSON key"),
        ("n: .nan", "not a JSON number"),
        ("i: -.inf", "not a JSON number"),
        ("p: !!python/object:os.system x", "could not determine a constructor"),
    ],
)
def test_what_json_cannot_hold_is_a_manifest_error_naming_the_file(
    tmp_path: pathlib.Path, annotations: str, reason: str
) -> None:
    path = pod_file(tmp_path, annotations)
    with pytest.raises(ManifestError) as err:
        read_manifest_file(path)
    assert str(path) in str(err.value) and reason in str(err.value)


@pytest.mark.parametrize("suffix, text", [
    (".yaml", "a: " + "[" * 100_000 + "]" * 100_000),
    (".yaml", "a:\n" + "".join(" " * i + "- \n" for i in range(2000))),
    (".json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}"),
    (".json", '{"a": ' + "[" * 500 + "]" * 500 + "}"),
])
def test_deep_nesting_is_a_manifest_error(tmp_path: pathlib.Path, suffix: str, text: str) -> None:
    path = tmp_path / f"deep{suffix}"
    path.write_text(text)
    with pytest.raises(ManifestError) as err:
        read_manifest_file(path)
    assert str(path) in str(err.value) and "deeper than" in str(err.value)


def test_an_alias_bomb_is_a_manifest_error(tmp_path: pathlib.Path) -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]"
              for i in range(1, 12)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ManifestError) as err:
        read_manifest_file(path)
    assert "aliases expand too far" in str(err.value)


def test_a_self_referencing_alias_is_a_manifest_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("a: &loop [*loop]\n")
    with pytest.raises(ManifestError):
        read_manifest_file(path)


def test_small_aliases_are_fine(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "alias.yaml"
    path.write_text("kind: Namespace\nmetadata: {name: x, labels: &l {team: a}, annotations: *l}\n")
    [ns] = read_manifest_file(path)
    assert ns["metadata"]["annotations"] == {"team": "a"}


def test_a_file_over_the_size_bound_is_a_manifest_error(tmp_path: pathlib.Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(manifests, "MAX_MANIFEST_BYTES", 1000)
    path = pod_file(tmp_path, "big: " + "x" * 2000)
    with pytest.raises(ManifestError) as err:
        read_manifest_file(path)
    assert "larger than 1000 bytes" in str(err.value)


def test_not_utf8_is_a_manifest_error(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"kind: Namespace\nmetadata: {name: caf\xe9}\n")
    with pytest.raises(ManifestError) as err:
        read_manifest_file(path)
    assert str(path) in str(err.value)


def test_the_source_applies_a_pod_with_a_date_and_keeps_going_after_a_bad_file(tmp_path: pathlib.Path) -> None:
    """At start-up (sync) the agent used to die on these with TypeError."""
    pod_file(tmp_path, "created: 2024-01-01\n1: one")
    (tmp_path / "ns.yaml").write_text("kind: Namespace\nmetadata: {name: x}\n")
    (tmp_path / "bad.yaml").write_text("kind: ConfigMap\nmetadata: {name: c, namespace: x}\ndata: !!set {a}\n")
    state = ClusterState()
    source = ManifestSource(tmp_path, state)
    assert source.sync()
    assert ("Pod", "x", "a") in set(source.objects())
