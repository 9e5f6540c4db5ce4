"""The scenario cluster: model expansion, addresses, and how steps change it."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from kube_netpol.tools.conformance.cluster import Cluster, automatic_address, pod_uid
from kube_netpol.tools.conformance.plan import plan_scenario
from kube_netpol.tools.conformance.scenario import ObjectRef, Scenario, ScenarioError, parse_scenario

MODEL = "model: {namespaces: [x, y, z], pods: [a, b, c], ports: [80, 81], protocols: [TCP, UDP, SCTP]}"
NOOP_EXPECT = "    expect: [{port: 80, protocol: TCP, default: allow}]\n"


def scenario(cluster: str, steps: str = "  - name: only\n" + NOOP_EXPECT) -> Scenario:
    text = "name: t\ncluster:\n" + textwrap.indent(textwrap.dedent(cluster), "  ") + "steps:\n" + steps
    return parse_scenario(yaml.safe_load(text), "t.yaml")


def initial(cluster: str) -> Cluster:
    return Cluster.from_spec(scenario(cluster).cluster)[0]


def test_model_expands_like_the_e2e_model() -> None:
    snap = initial(MODEL + "\n").snapshot()
    assert [ns.name for ns in snap.namespaces] == ["x", "y", "z"]
    assert snap.namespaces[1].labels == {"ns": "y", "kubernetes.io/metadata.name": "y"}
    assert [p.key for p in snap.pods] == ["x/a", "x/b", "x/c", "y/a", "y/b", "y/c", "z/a", "z/b", "z/c"]
    pod = snap.pod("y/b")
    assert pod is not None and pod.labels == {"pod": "b"}
    assert [(p.name, p.port, p.protocol) for p in pod.container_ports] == [
        ("serve-80-tcp", 80, "TCP"),
        ("serve-80-udp", 80, "UDP"),
        ("serve-80-sctp", 80, "SCTP"),
        ("serve-81-tcp", 81, "TCP"),
        ("serve-81-udp", 81, "UDP"),
        ("serve-81-sctp", 81, "SCTP"),
    ]


def test_automatic_addresses() -> None:
    addresses = initial(MODEL + "\n").snapshot().addresses()
    assert addresses["x/a"] == {"IPv4": "10.244.1.10"}
    assert addresses["x/b"] == {"IPv4": "10.244.1.11"}
    assert addresses["y/a"] == {"IPv4": "10.244.2.10"}
    assert addresses["z/c"] == {"IPv4": "10.244.3.12"}


def test_dual_stack_addresses_in_decimal_digits() -> None:
    snap = initial(MODEL.replace("}", ", ipFamilies: [IPv6, IPv4]}") + "\n").snapshot()
    assert snap.addresses()["x/a"] == {"IPv4": "10.244.1.10", "IPv6": "fd00:10:244:1::10"}
    assert snap.addresses()["z/c"]["IPv6"] == "fd00:10:244:3::12"
    pod = snap.pod("x/a")
    assert pod is not None
    # status.podIPs lists IPv4 first whatever the order of ipFamilies.
    assert pod.to_object()["status"]["podIPs"] == [{"ip": "10.244.1.10"}, {"ip": "fd00:10:244:1::10"}]
    assert automatic_address("IPv6", 12, 101) == "fd00:10:244:12::110"


def test_explicit_namespaces_and_pods_are_numbered_after_the_model() -> None:
    snap = initial(MODEL + textwrap.dedent("""
        namespaces:
          - {name: frontend, labels: {team: web}}
        pods:
          - {namespace: frontend, name: web-0, labels: {app: web}}
          - {namespace: x, name: d}
          - {namespace: frontend, name: web-1, ips: ["10.1.2.3"], containerPorts: [{name: http, containerPort: 8080}]}
        """)).snapshot()
    assert snap.namespaces[3].labels == {"team": "web", "kubernetes.io/metadata.name": "frontend"}
    addresses = snap.addresses()
    assert addresses["frontend/web-0"] == {"IPv4": "10.244.4.10"}
    assert addresses["x/d"] == {"IPv4": "10.244.1.13"}
    assert addresses["frontend/web-1"] == {"IPv4": "10.1.2.3"}
    # Explicit pods get exactly their labels: no `pod` label.
    assert snap.pod("x/d").labels == {}  # type: ignore[union-attr]
    assert snap.pod("frontend/web-1").port_number("http", "TCP") == 8080  # type: ignore[union-attr]
    assert snap.pod("frontend/web-1").port_number("http", "UDP") is None  # type: ignore[union-attr]
    # Table order: namespaces in declaration order, pods in declaration order within each.
    assert [p.key for p in snap.pods][2:4] == ["x/c", "x/d"]
    assert [p.key for p in snap.pods][-2:] == ["frontend/web-0", "frontend/web-1"]


def test_externals_keep_their_addresses() -> None:
    snap = initial(MODEL + "\nexternals: [{name: ext1, ips: ['192.168.200.10', '2001:db8::10']}]\n").snapshot()
    assert snap.addresses()["ext1"] == {"IPv4": "192.168.200.10", "IPv6": "2001:db8::10"}
    assert snap.endpoint_names()[-1] == "ext1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("pods: [{namespace: q, name: p}]", "pod q/p: namespace 'q' does not exist"),
        ("namespaces: [{name: x}]", "namespace 'x' is declared twice"),
        ("pods: [{namespace: x, name: a}]", "pod x/a is declared twice"),
        (
            "pods: [{namespace: y, name: p, ips: ['10.244.1.11']}]",
            "pod x/b would get 10.244.1.11, which pod y/p already has",
        ),
        ("externals: [{name: e, ips: ['10.244.3.10']}]", "pod z/a would get 10.244.3.10, which external e already has"),
    ],
)
def test_bad_clusters(extra: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        plan_scenario(scenario(MODEL + "\n" + extra + "\n"))
    assert message in info.value.message
    assert str(info.value).startswith("t.yaml: cluster.")


def test_too_many_pods_for_automatic_addresses() -> None:
    pods = ", ".join(f"p{i}" for i in range(247))
    with pytest.raises(ScenarioError, match="no automatic address"):
        plan_scenario(scenario(f"model: {{namespaces: [x], pods: [{pods}]}}\n"))


STEPS = (
    """\
  - name: relabel and add
    apply:
      - {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {team: blue}}}
      - {apiVersion: v1, kind: Pod, metadata: {name: a, namespace: x, labels: {role: db}}}
      - {apiVersion: v1, kind: Pod, metadata: {name: d, namespace: x}}
      - {apiVersion: v1, kind: Namespace, metadata: {name: w}}
      - apiVersion: v1
        kind: Pod
        metadata: {name: n, namespace: w, labels: {pod: n}}
        spec: {containers: [{name: c, ports: [{name: dns, containerPort: 53, protocol: UDP}]}]}
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: p, namespace: w}
        spec: {podSelector: {}}
"""
    + NOOP_EXPECT
    + """\
  - name: recreate x/b and drop w
    delete:
      - {kind: Pod, namespace: x, name: b}
      - {kind: Namespace, name: w}
    apply:
      - {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: x}}
      - {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: x}, spec: {containers: []}}
"""
    + NOOP_EXPECT
)


def test_steps_change_the_cluster_as_the_api_server_would() -> None:
    plan = plan_scenario(scenario(MODEL + "\n", STEPS))
    first, second = (step.change for step in plan.steps)
    snap = first.cluster
    # Namespace labels are replaced, but kubernetes.io/metadata.name stays.
    assert snap.namespaces[0].labels == {"team": "blue", "kubernetes.io/metadata.name": "x"}
    # Pod labels are replaced exactly; address and container ports stay.
    pod_a = snap.pod("x/a")
    assert pod_a is not None and pod_a.labels == {"role": "db"}
    assert pod_a.ips == {"IPv4": "10.244.1.10"} and len(pod_a.container_ports) == 6
    # New pods get the next free address; new namespaces are numbered after the others.
    assert snap.addresses()["x/d"] == {"IPv4": "10.244.1.13"}
    assert snap.addresses()["w/n"] == {"IPv4": "10.244.4.10"}
    assert snap.pod("x/d").container_ports == ()  # type: ignore[union-attr]
    assert snap.pod("w/n").port_number("dns", "UDP") == 53  # type: ignore[union-attr]
    # The change carries complete objects, in the step's order.
    kinds = [(o["kind"], o["metadata"]["name"]) for o in first.applies]
    assert kinds == [
        ("Namespace", "x"),
        ("Pod", "a"),
        ("Pod", "d"),
        ("Namespace", "w"),
        ("Pod", "n"),
        ("NetworkPolicy", "p"),
    ]
    assert first.applies[2]["status"]["podIPs"] == [{"ip": "10.244.1.13"}]

    # Deletes run before applies; deleting a namespace deletes its pods and NetworkPolicies first.
    assert second.deletes == (
        ObjectRef("Pod", "x", "b"),
        ObjectRef("Pod", "w", "n"),
        ObjectRef("NetworkPolicy", "w", "p"),
        ObjectRef("Namespace", "", "w"),
    )
    snap = second.cluster
    assert "w/n" not in snap.addresses() and [ns.name for ns in snap.namespaces] == ["x", "y", "z"]
    assert snap.policies == ()
    # A re-created pod gets a new address: numbers are never reused.
    assert snap.addresses()["x/b"] == {"IPv4": "10.244.1.14"}
    # Containers given: their ports replace the old ones.
    assert snap.pod("x/c").container_ports == ()  # type: ignore[union-attr]
    assert [p.key for p in snap.pods][:5] == ["x/a", "x/c", "x/d", "x/b", "y/a"]


def test_new_pods_skip_addresses_already_taken() -> None:
    steps = """\
  - apply: [{apiVersion: v1, kind: Pod, metadata: {name: new, namespace: x}}]
""" + NOOP_EXPECT
    plan = plan_scenario(scenario(MODEL + "\npods: [{namespace: y, name: squatter, ips: ['10.244.1.13']}]\n", steps))
    assert plan.steps[0].change.cluster.addresses()["x/new"] == {"IPv4": "10.244.1.14"}


@pytest.mark.parametrize(
    ("step", "where", "message"),
    [
        (
            "    delete: [{kind: Pod, namespace: x, name: q}]\n",
            "steps[0].delete[0]",
            "cannot delete Pod x/q: it does not exist",
        ),
        ("    delete: [{kind: NetworkPolicy, namespace: x, name: q}]\n", "steps[0].delete[0]", "does not exist"),
        ("    delete: [{kind: Namespace, name: q}]\n", "steps[0].delete[0]", "cannot delete Namespace q"),
        (
            "    apply: [{kind: Pod, metadata: {name: p, namespace: q}}]\n",
            "steps[0].apply[0]",
            "namespace 'q' does not exist",
        ),
        (
            "    apply: [{kind: NetworkPolicy, metadata: {name: p, namespace: q}, spec: {}}]\n",
            "steps[0].apply[0]",
            "NetworkPolicy q/p: namespace 'q' does not exist",
        ),
        (
            "    apply: [{kind: Pod, metadata: {name: p, namespace: x}, status: {podIPs: [{ip: 10.244.2.10}]}}]\n",
            "steps[0].apply[0]",
            "pod x/p would get 10.244.2.10, which pod y/a already has",
        ),
    ],
)
def test_bad_steps(step: str, where: str, message: str) -> None:
    with pytest.raises(ScenarioError) as info:
        plan_scenario(scenario(MODEL + "\n", "  - name: bad\n" + step + NOOP_EXPECT))
    assert info.value.where == where
    assert message in info.value.message


def test_objects_are_complete_kubernetes_objects() -> None:
    steps = """\
  - apply:
      - apiVersion: policy.networking.k8s.io/v1alpha1
        kind: AdminNetworkPolicy
        metadata: {name: anp}
        spec: {priority: 1, subject: {namespaces: {}}, ingress: []}
""" + NOOP_EXPECT
    snap = (
        plan_scenario(scenario(MODEL.replace("}", ", ipFamilies: [IPv4, IPv6]}") + "\n", steps)).steps[0].change.cluster
    )
    objects = snap.objects(node_name="lab-node")
    assert [o["kind"] for o in objects] == ["Namespace"] * 3 + ["Pod"] * 9 + ["AdminNetworkPolicy"]
    pod = objects[3]
    assert pod["metadata"] == {"name": "a", "namespace": "x", "uid": pod_uid("x/a"), "labels": {"pod": "a"}}
    assert len({o["metadata"]["uid"] for o in objects if o["kind"] == "Pod"}) == 9  # one UID per pod
    assert pod["spec"]["nodeName"] == "lab-node"
    (container,) = pod["spec"]["containers"]
    assert {"name": "serve-81-udp", "containerPort": 81, "protocol": "UDP"} in container["ports"]
    assert pod["status"] == {
        "phase": "Running",
        "podIP": "10.244.1.10",
        "podIPs": [{"ip": "10.244.1.10"}, {"ip": "fd00:10:244:1::10"}],
    }
    assert objects[-1]["spec"] == {"priority": 1, "subject": {"namespaces": {}}, "ingress": []}
    # The objects are copies: a backend may change them freely.
    objects[-1]["spec"]["priority"] = 99
    assert snap.objects()[-1]["spec"]["priority"] == 1


def test_cluster_nodes_are_hosts_and_node_objects() -> None:
    from kube_netpol.tools.conformance.cluster import Cluster as _Cluster
    from kube_netpol.tools.conformance.scenario import parse_scenario as _parse

    scenario = _parse({
        "name": "nodes",
        "cluster": {
            "model": {"namespaces": ["x"], "pods": ["a"]},
            "nodes": [{"name": "worker-2", "labels": {"zone": "b"}, "ips": ["172.18.0.12"]}],
        },
        "steps": [{"name": "s", "expect": [{"port": 80, "protocol": "TCP", "default": "allow"}]}],
    })
    cluster, setup = _Cluster.from_spec(scenario.cluster)
    snapshot = cluster.snapshot()
    assert "worker-2" in snapshot.endpoint_names() and snapshot.addresses()["worker-2"] == {"IPv4": "172.18.0.12"}
    nodes = [obj for obj in snapshot.objects() if obj["kind"] == "Node"]
    assert nodes == [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-2", "labels": {"zone": "b"}},
                      "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.12"}]}}]
    kinds = [obj["kind"] for obj in setup.applies]
    assert kinds.index("Node") < kinds.index("Pod")


def test_a_step_relabels_a_node_and_keeps_its_addresses() -> None:
    from kube_netpol.tools.conformance.cluster import Cluster as _Cluster
    from kube_netpol.tools.conformance.errors import ScenarioError as _ScenarioError
    from kube_netpol.tools.conformance.scenario import parse_scenario as _parse

    def scenario(step: dict) -> object:
        return _parse({
            "name": "relabel",
            "cluster": {"model": {"namespaces": ["x"], "pods": ["a"]},
                        "nodes": [{"name": "worker-2", "labels": {"zone": "b"}, "ips": ["172.18.0.12"]}]},
            "steps": [step],
        })

    relabel = {"name": "s", "apply": [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-2", "labels": {"zone": "c"}}}]}
    parsed = scenario(relabel)
    cluster, _ = _Cluster.from_spec(parsed.cluster)  # type: ignore[attr-defined]
    change = cluster.apply_step(parsed.steps[0])  # type: ignore[attr-defined]
    assert change.applies == ({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-2", "labels": {"zone": "c"}},
                               "status": {"addresses": [{"type": "InternalIP", "address": "172.18.0.12"}]}},)
    unknown = {"name": "s", "apply": [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "nope"}}]}
    parsed = scenario(unknown)
    cluster, _ = _Cluster.from_spec(parsed.cluster)  # type: ignore[attr-defined]
    with pytest.raises(_ScenarioError, match="not in cluster.nodes"):
        cluster.apply_step(parsed.steps[0])  # type: ignore[attr-defined]
    with pytest.raises(_ScenarioError, match="do not delete nodes"):
        scenario({"name": "s", "delete": [{"kind": "Node", "name": "worker-2"}]})
