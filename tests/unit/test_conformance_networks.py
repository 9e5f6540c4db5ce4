"""The format's "Secondary networks" section: addresses, annotations, objects, probes and their errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from kube_netpol.tools.conformance.errors import ScenarioError
from kube_netpol.tools.conformance.plan import plan_scenario
from kube_netpol.tools.conformance.scenario import load_scenario

BASE = """\
name: nets
cluster:
  model: {namespaces: [x, y], pods: [a, b], ports: [80], protocols: [TCP], ipFamilies: [IPv4, IPv6],
          networks: [default/m1]}
  networks:
    - {name: m1, type: macvlan}
    - {name: m2, namespace: y, type: ipvlan}
  pods:
    - {namespace: y, name: c, networks: [m2, default/m1]}
    - {namespace: y, name: e, networks: [m2]}
steps:
  - name: s
    apply:
      - apiVersion: v1
        kind: Pod
        metadata: {name: d, namespace: x, annotations: {k8s.v1.cni.cncf.io/networks: "default/m1"}}
    expect:
      - {port: 80, protocol: TCP, network: default/m1, default: allow}
      - {port: 80, protocol: TCP, family: IPv6, network: y/m2, default: allow}
"""


def plan(tmp_path: Path, text: str = BASE):  # type: ignore[no-untyped-def]
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(text))
    return plan_scenario(load_scenario(path))


def test_addresses_interfaces_and_the_network_status_annotation(tmp_path: Path) -> None:
    planned = plan(tmp_path)
    objects = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
               for o in planned.steps[0].change.cluster.objects()}
    # "default" is not declared: the harness creates it, after x and y (number 3).
    assert ("Namespace", "", "default") in objects
    nad = objects[("NetworkAttachmentDefinition", "y", "m2")]
    assert json.loads(nad["spec"]["config"])["type"] == "ipvlan"
    c = objects[("Pod", "y", "c")]
    status = json.loads(c["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])
    assert status[0] == {"name": "cluster-network", "interface": "eth0", "default": True,
                         "ips": ["10.244.2.12", "fd00:10:244:2::12"]}
    # network 2 (y/m2) is net1, network 1 (default/m1) net2: interfaces follow the pod's order.
    assert status[1] == {"name": "y/m2", "interface": "net1", "ips": ["10.102.2.12", "fd00:102:2::12"]}
    assert status[2] == {"name": "default/m1", "interface": "net2", "ips": ["10.101.2.12", "fd00:101:2::12"]}
    d = objects[("Pod", "x", "d")]  # created by the step through the networks annotation
    assert json.loads(d["metadata"]["annotations"]["k8s.v1.cni.cncf.io/network-status"])[1]["ips"] == [
        "10.101.1.12", "fd00:101:1::12"]


def test_probes_over_a_network_are_its_attached_pods_at_their_addresses_there(tmp_path: Path) -> None:
    planned = plan(tmp_path)
    m1, m2 = planned.steps[0].probe_sets
    assert set(m1.sources) == {"x/a", "x/b", "y/a", "y/b", "y/c", "x/d"}  # not y/e
    probe = next(p for p in m1.probes if p.src == "x/a" and p.dst == "y/c")
    assert (probe.src_ip, probe.dst_ip, probe.network) == ("10.101.1.10", "10.101.2.12", "default/m1")
    assert m2.sources == ("y/c", "y/e")
    assert [(p.src_ip, p.dst_ip) for p in m2.probes] == [("fd00:102:2::12", "fd00:102:2::13"),
                                                         ("fd00:102:2::13", "fd00:102:2::12")]


@pytest.mark.parametrize("old, new, message", [
    ("networks: [m2, default/m1]", "networks: [default/m1, default/m1]", "attaches to network default/m1 twice"),
    ("networks: [m2, default/m1]", "networks: [m3]", "network y/m3 is not declared"),
    ("network: default/m1,", "network: m1,", "neither 'name' nor 'namespace/name'"),
    ("network: default/m1,", "network: default/nope,", "network default/nope is not declared"),
])
def test_errors_name_the_problem(tmp_path: Path, old: str, new: str, message: str) -> None:
    text = BASE.replace(old, new, 1)
    with pytest.raises(ScenarioError, match=message):
        plan(tmp_path, text)


def test_steps_do_not_delete_networks(tmp_path: Path) -> None:
    text = BASE.replace("    apply:\n", "    delete: [{kind: NetworkAttachmentDefinition, namespace: y, name: m2}]\n"
                        "    apply:\n", 1)
    with pytest.raises(ScenarioError, match="steps do not create or delete networks"):
        plan(tmp_path, text)
