"""Reading and validating scenario files: every mistake gets a message naming the file and the field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kube_netpol.tools.conformance.scenario import (
    ContainerPort,
    NamespaceSpec,
    ObjectRef,
    PodSpec,
    PolicySpec,
    ScenarioError,
    load_scenario,
)

VALID = """\
name: sample
tags: [networkpolicy]
cluster:
  model: {namespaces: [x, y], pods: [a, b], ports: [80], protocols: [TCP]}
steps:
  - name: first
    expect:
      - {port: 80, protocol: TCP, default: allow}
"""


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> ScenarioError:
    path = write(tmp_path, text)
    with pytest.raises(ScenarioError) as info:
        load_scenario(path)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: ")
    return info.value


def test_valid_scenario_is_read_into_typed_values(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID))
    assert scenario.name == "sample"
    assert scenario.tags == ("networkpolicy",)
    assert scenario.cluster.model is not None
    assert scenario.cluster.model.namespaces == ("x", "y")
    assert scenario.cluster.model.ip_families == ("IPv4",)
    (step,) = scenario.steps
    assert step.name == "first"
    (expect,) = step.expect
    assert (expect.port, expect.protocol, expect.family, expect.default) == (80, "TCP", "IPv4", True)
    assert expect.sources is None and expect.destinations is None and expect.table is None


def test_model_defaults_to_the_e2e_ports_and_protocols(tmp_path: Path) -> None:
    scenario = load_scenario(write(tmp_path, VALID.replace(", ports: [80], protocols: [TCP]", "")))
    assert scenario.cluster.model is not None
    assert scenario.cluster.model.ports == (80, 81)
    assert scenario.cluster.model.protocols == ("TCP", "UDP", "SCTP")


@pytest.mark.parametrize(
    ("old", "new", "where", "message"),
    [
        ("name: sample", "description: no name", "", "name is required"),
        ("name: sample", "name: Sample_1", "name", "not a valid name"),
        ("tags: [networkpolicy]", "tags: networkpolicy", "tags", "must be a list"),
        ("steps:", "stpes:", "", "unknown field 'stpes'"),
        ("ports: [80]", "ports: [0]", "cluster.model.ports[0]", "port number 1-65535"),
        ("protocols: [TCP]", "protocols: [ICMP]", "cluster.model.protocols[0]", "must be one of TCP, UDP, SCTP"),
        ("pods: [a, b]", "pods: [a, a]", "cluster.model.pods", "name 'a' appears twice"),
        ("namespaces: [x, y]", "namespaces: []", "cluster.model", "must not be empty"),
        ("protocols: [TCP]}", "protocols: [TCP], ipFamilies: [IPv5]}", "cluster.model.ipFamilies[0]", "IPv4, IPv6"),
        (
            "{port: 80, protocol: TCP, default: allow}",
            "{port: 80, protocol: TCP}",
            "steps[0].expect[0]",
            "either reachability",
        ),
        (
            "{port: 80, protocol: TCP, default: allow}",
            "{port: 80, default: allow}",
            "steps[0].expect[0]",
            "protocol is required",
        ),
        ("default: allow}", "default: maybe}", "steps[0].expect[0].default", "must be one of allow, deny"),
        ("port: 80,", "port: 70000,", "steps[0].expect[0].port", "port number"),
        ("port: 80,", "port: Serve_80,", "steps[0].expect[0].port", "not a port name"),
        ("port: 80,", "port: 80, family: ipv6,", "steps[0].expect[0].family", "IPv4, IPv6"),
        (
            "default: allow}",
            "default: allow, overrides: [{from: x/a, to: '*'}]}",
            "steps[0].expect[0].overrides[0]",
            "allowed is required",
        ),
        (
            "default: allow}",
            "default: allow, overrides: [{from: x/a, to: '*', allowed: 'no'}]}",
            "steps[0].expect[0].overrides[0].allowed",
            "true or false",
        ),
        (
            "default: allow}",
            "default: allow, overrides: [{from: 'x/a/b', to: '*', allowed: false}]}",
            "steps[0].expect[0].overrides[0].from",
            "not a pattern",
        ),
        ("default: allow}", "default: allow, from: 'x/a'}", "steps[0].expect[0].from", "must be a list"),
        (
            "  - name: first\n",
            "  - name: first\n    delete: [{kind: Service, namespace: x, name: s}]\n",
            "steps[0].delete[0].kind",
            "unsupported kind 'Service'",
        ),
        (
            "  - name: first\n",
            "  - name: first\n    delete: [{kind: NetworkPolicy, name: p}]\n",
            "steps[0].delete[0]",
            "a NetworkPolicy needs a namespace",
        ),
        (
            "  - name: first\n",
            "  - name: first\n    delete: [{kind: AdminNetworkPolicy, namespace: x, name: p}]\n",
            "steps[0].delete[0].namespace",
            "cluster-scoped",
        ),
    ],
)
def test_invalid_fields_are_named(tmp_path: Path, old: str, new: str, where: str, message: str) -> None:
    assert old in VALID
    err = error_of(tmp_path, VALID.replace(old, new, 1))
    assert err.where == where
    assert message in err.message


def test_a_scenario_needs_steps(tmp_path: Path) -> None:
    err = error_of(tmp_path, VALID[: VALID.index("steps:")] + "steps: []\n")
    assert (err.where, err.message) == ("steps", "at least one step is required")


def test_an_empty_step_is_refused(tmp_path: Path) -> None:
    err = error_of(tmp_path, VALID[: VALID.index("steps:")] + "steps:\n  - name: nothing\n")
    assert err.where == "steps[0]" and "at least one of apply, delete and expect" in err.message


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("name: [unclosed\n", "not valid YAML"),
        ("name: a\nname: b\ncluster: {}\nsteps: []\n", "duplicate key 'name'"),
        ("- just\n- a list\n", "must be a mapping, not a list"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str, message: str) -> None:
    assert message in str(error_of(tmp_path, text))


def test_a_missing_file_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read the file") as info:
        load_scenario(tmp_path / "absent.yaml")
    assert info.value.source.endswith("absent.yaml")


def test_label_values_must_be_strings(tmp_path: Path) -> None:
    text = VALID.replace("steps:", "  namespaces: [{name: q, labels: {version: 1}}]\nsteps:")
    err = error_of(tmp_path, text)
    assert err.where == "cluster.namespaces[0].labels"
    assert "label 'version' must have a string value" in err.message and "quote it" in err.message


def test_explicit_pods_and_externals(tmp_path: Path) -> None:
    text = VALID.replace(
        "steps:",
        textwrap.dedent("""\
              pods:
                - namespace: x
                  name: web-0
                  labels: {app: web}
                  ips: ["10.244.4.10", "fd00::1"]
                  containerPorts: [{name: http, containerPort: 8080}]
              externals:
                - {name: ext1, ips: ["192.168.200.10"]}
            steps:"""),
    )
    scenario = load_scenario(write(tmp_path, text))
    (pod,) = scenario.cluster.pods
    assert pod == PodSpec(
        "x", "web-0", {"app": "web"}, ("10.244.4.10", "fd00::1"), (ContainerPort("http", 8080, "TCP"),), pod.where
    )
    assert scenario.cluster.externals[0].ips == ("192.168.200.10",)


@pytest.mark.parametrize(
    ("ips", "message"),
    [
        ('["10.0.0.1", "10.0.0.2"]', "two IPv4 addresses"),
        ('["10.0.0.300"]', "is not an IP address"),
        ("[]", "at least one address"),
    ],
)
def test_external_addresses_are_checked(tmp_path: Path, ips: str, message: str) -> None:
    text = VALID.replace("steps:", f"  externals: [{{name: e, ips: {ips}}}]\nsteps:")
    err = error_of(tmp_path, text)
    assert err.where.startswith("cluster.externals[0].ips") and message in err.message


def test_apply_items_are_typed(tmp_path: Path) -> None:
    text = VALID.replace(
        "    expect:",
        """\
    apply:
      - {apiVersion: v1, kind: Namespace, metadata: {name: q, labels: {team: a}}}
      - apiVersion: v1
        kind: Pod
        metadata: {name: p, namespace: q}
        spec: {containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
      - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, labels: {pod: b}}}
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: deny, namespace: x}
        spec: {podSelector: {}, bogus: true}
    expect:""",
    )
    (step,) = load_scenario(write(tmp_path, text)).steps
    namespace, new_pod, relabel, policy = step.apply
    assert isinstance(namespace, NamespaceSpec) and namespace.labels == {"team": "a"}
    assert isinstance(new_pod, PodSpec) and new_pod.labels == {} and new_pod.ips is None
    assert new_pod.container_ports == (ContainerPort("dns", 53, "UDP"),)
    assert isinstance(relabel, PodSpec) and relabel.container_ports is None and relabel.labels == {"pod": "b"}
    # Policies are passed on as written, even when invalid: judging them is the implementation's job.
    assert isinstance(policy, PolicySpec) and policy.ref == ObjectRef("NetworkPolicy", "x", "deny")
    assert policy.obj["spec"] == {"podSelector": {}, "bogus": True}


def test_apply_needs_kind_and_name(tmp_path: Path) -> None:
    text = VALID.replace("    expect:", "    apply: [{kind: NetworkPolicy, metadata: {namespace: x}}]\n    expect:")
    err = error_of(tmp_path, text)
    assert (err.where, err.message) == ("steps[0].apply[0]", "metadata.name is required")


def test_reachability_table_is_parsed(tmp_path: Path) -> None:
    text = VALID.replace(
        "{port: 80, protocol: TCP, default: allow}",
        '{port: 80, protocol: TCP, reachability: "-  x/a x/b\\nx/a .  X\\n\\nx/b X  .\\n"}',
    )
    (expect,) = load_scenario(write(tmp_path, text)).steps[0].expect
    assert expect.table is not None
    assert expect.table.sources == ("x/a", "x/b")
    assert expect.table.destinations == ("x/a", "x/b")
    assert expect.table.cells == {
        ("x/a", "x/a"): True,
        ("x/a", "x/b"): False,
        ("x/b", "x/a"): False,
        ("x/b", "x/b"): True,
    }


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ("-  x/a x/b\\nx/a .\\n", "row 'x/a' has 1 marks for 2 columns"),
        ("-  x/a x/b\\nx/a . O\\n", "mark 'O' in row 'x/a' is neither '.' nor 'X'"),
        ("-  x/a x/a\\nx/a . .\\n", "column 'x/a' appears twice"),
        ("-  x/a\\nx/a .\\nx/a .\\n", "row 'x/a' appears twice"),
        ("-  x/a\\n", "needs a header row and at least one row"),
        ("-  x/a\\nx/* .\\n", "'x/*' is not a pod"),
    ],
)
def test_malformed_tables(tmp_path: Path, table: str, message: str) -> None:
    text = VALID.replace(
        "{port: 80, protocol: TCP, default: allow}", f'{{port: 80, protocol: TCP, reachability: "{table}"}}'
    )
    err = error_of(tmp_path, text)
    assert err.where.startswith("steps[0].expect[0].reachability")
    assert message in err.message
