"""`kube-netpol advise --from-workloads`: workloads, Services and env references to policies, read
from a manifests folder through the manifests source and the advise kinds."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kube_netpol.advise.from_workloads import propose_from_workloads, service_references
from kube_netpol.advise.kinds import ServiceObject, ServicePort, advise_registry, read_service, read_workload, trim_workload
from kube_netpol.advise.model import NetworkPeer, PodPeer, Port, Proposal, Selector, Workload
from kube_netpol.advise.options import DEFAULT_INGRESS_SELECTOR, DNS_PORTS
from kube_netpol.api.errors import InvalidObject
from kube_netpol.cli import main
from kube_netpol.policy.networkpolicy import parse_network_policy
from kube_netpol.state import ClusterState
from kube_netpol.tools.explain.loaders import load_manifests

CLUSTER = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 192.168.1.10}, {type: ExternalIP, address: 203.0.113.100}, {type: Hostname, address: node-1}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop, labels: {app: web}}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web, tier: front}}
    spec:
      containers:
        - name: web
          image: web
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /ready, port: http}}
          env:
            - {name: API_URL, value: "http://api.shop.svc.cluster.local:9000/v1"}
            - {name: CACHE, value: "redis:6379"}
            - {name: DB, value: "postgres://db.shop.svc:5432/app"}
            - {name: SEARCH, value: "search.search-ns"}
            - {name: MODE, value: not-a-service}
            - {name: SECRET, valueFrom: {secretKeyRef: {name: s, key: k}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: api, namespace: shop}
spec:
  selector: {matchLabels: {app: api}}
  template:
    metadata: {labels: {app: api}}
    spec: {containers: [{name: api, image: api, ports: [{name: grpc, containerPort: 9000}]}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: redis, namespace: shop}
spec:
  selector: {matchLabels: {app: redis}}
  serviceName: redis
  template:
    metadata: {labels: {app: redis}}
    spec: {containers: [{name: redis, image: redis, ports: [{containerPort: 6379}]}]}
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db, namespace: shop}
spec:
  selector: {matchLabels: {app: db}}
  serviceName: db
  template:
    metadata: {labels: {app: db}}
    spec:
      containers:
        - name: db
          image: postgres
          ports: [{containerPort: 5432}]
          livenessProbe: {tcpSocket: {port: 5432}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {type: LoadBalancer, selector: {app: web}, ports: [{name: http, port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec: {selector: {app: api}, ports: [{port: 9000, targetPort: grpc}]}
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: shop}
spec: {selector: {app: redis}, ports: [{port: 6379}]}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {selector: {app: db}, ports: [{port: 5432, targetPort: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: external-db, namespace: shop}
spec: {type: ExternalName, externalName: db.example.com}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: search, namespace: search-ns}
spec:
  selector: {matchLabels: {app: search}}
  template:
    metadata: {labels: {app: search}}
    spec: {containers: [{name: s, image: s}]}
---
apiVersion: v1
kind: Service
metadata: {name: search, namespace: search-ns}
spec: {selector: {app: search}, ports: [{port: 9200, protocol: TCP}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: ingress-nginx-controller, namespace: ingress-nginx}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: ingress-nginx}}
  template:
    metadata: {labels: {app.kubernetes.io/name: ingress-nginx, app.kubernetes.io/component: controller}}
    spec: {containers: [{name: c, image: c}]}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: coredns, namespace: kube-system}
spec:
  selector: {matchLabels: {k8s-app: kube-dns}}
  template:
    metadata: {labels: {k8s-app: kube-dns}}
    spec: {containers: [{name: c, image: c}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-exporter, namespace: ops}
spec:
  selector: {matchLabels: {app: node-exporter}}
  template:
    metadata: {labels: {app: node-exporter}}
    spec: {hostNetwork: true, containers: [{name: c, image: c}]}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly, namespace: batch}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        metadata: {labels: {app: nightly}}
        spec: {restartPolicy: Never, containers: [{name: c, image: c, env: [{name: DB, value: db.shop}]}]}
---
apiVersion: batch/v1
kind: Job
metadata:
  name: nightly-28000000
  namespace: batch
  ownerReferences: [{apiVersion: batch/v1, kind: CronJob, name: nightly, uid: u1, controller: true}]
spec:
  selector: {matchLabels: {batch.kubernetes.io/controller-uid: c1}}
  template:
    metadata: {labels: {app: nightly, batch.kubernetes.io/controller-uid: c1, job-name: nightly-28000000}}
    spec: {restartPolicy: Never, containers: [{name: c, image: c}]}
---
apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: old-7c8d9
  namespace: shop
  ownerReferences: [{apiVersion: apps/v1, kind: Deployment, name: old, uid: u2, controller: true}]
spec:
  selector: {matchLabels: {app: old, pod-template-hash: 7c8d9}}
  template:
    metadata: {labels: {app: old, pod-template-hash: 7c8d9}}
    spec: {containers: [{name: c, image: c}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: old-7c8d9-abcde
  namespace: shop
  labels: {app: old, pod-template-hash: 7c8d9}
  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: old-7c8d9, uid: u3, controller: true}]
spec: {nodeName: node-1, containers: [{name: c, image: c}]}
status: {phase: Running, podIP: 10.0.0.7}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: shop, labels: {run: tool}}
spec: {nodeName: node-1, containers: [{name: c, image: c, ports: [{name: admin, containerPort: 7000}]}]}
status: {phase: Running, podIP: 10.0.0.8}
"""

WEB = Workload("Deployment", "shop", "web")
API = Workload("Deployment", "shop", "api")
REDIS = Workload("StatefulSet", "shop", "redis")
DB = Workload("StatefulSet", "shop", "db")
SEARCH = Workload("Deployment", "search-ns", "search")
NIGHTLY = Workload("CronJob", "batch", "nightly")
OLD = Workload("Deployment", "shop", "old")
TOOL = Workload("Pod", "shop", "tool")
DNS = PodPeer(("kube-system",), Selector.of_labels({"k8s-app": "kube-dns"}))
EVERY_PORT = None


def pods(namespace: str, **labels: str) -> PodPeer:
    return PodPeer((namespace,), Selector.of_labels(labels))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    return tmp_path


@pytest.fixture
def state(folder: Path) -> ClusterState:
    state = ClusterState(advise_registry())
    loaded = load_manifests(state, str(folder))
    assert loaded.refused == []
    return state


@pytest.fixture
def by(state: ClusterState) -> dict[Workload, Proposal]:
    return {p.workload: p for p in propose_from_workloads(state).proposals}


def test_one_proposal_per_workload_and_who_is_left_out(state: ClusterState) -> None:
    advice = propose_from_workloads(state)
    assert [p.workload for p in advice.proposals] == sorted([NIGHTLY, SEARCH, API, OLD, WEB, TOOL, DB, REDIS])
    left_out = "\n".join(advice.notes)
    assert "Deployment ingress-nginx/ingress-nginx-controller: no policy, it is an ingress controller" in left_out
    assert "Deployment kube-system/coredns: no policy, it runs in a system namespace" in left_out
    assert "DaemonSet ops/node-exporter: no policy, it runs in the host's network namespace" in left_out


def test_selectors_come_from_the_workload_less_volatile_labels(by: dict[Workload, Proposal]) -> None:
    assert by[WEB].selector == Selector.of_labels({"app": "web"})  # spec.selector, not all template labels
    assert by[NIGHTLY].selector == Selector.of_labels({"app": "nightly"})  # the jobTemplate's labels
    assert by[OLD].selector == Selector.of_labels({"app": "old"})  # the ReplicaSet's selector less its hash
    assert "from ReplicaSet old-7c8d9 (the Deployment object was not read)" in by[OLD].notes
    assert by[TOOL].selector == Selector.of_labels({"run": "tool"})  # a bare pod, by its labels


def test_same_workload_and_dns(by: dict[Workload, Proposal]) -> None:
    for workload, proposal in by.items():
        own = PodPeer((workload.namespace,), proposal.selector)
        assert (own, EVERY_PORT) in proposal.ingress and (own, EVERY_PORT) in proposal.egress
        assert {(DNS, port) for port in DNS_PORTS} <= proposal.egress


def test_services_named_in_env_values_one_direction(by: dict[Workload, Proposal]) -> None:
    web = pods("shop", app="web")
    assert (pods("shop", app="api"), Port("TCP", "grpc")) in by[WEB].egress  # NAME.NS.svc.cluster.local, named target
    assert (web, Port("TCP", "grpc")) in by[API].ingress
    assert (pods("shop", app="redis"), Port("TCP", 6379)) in by[WEB].egress  # plain NAME, targetPort = port
    assert (web, Port("TCP", 6379)) in by[REDIS].ingress
    assert (pods("shop", app="db"), Port("TCP", 5432)) in by[WEB].egress  # NAME.NS.svc
    assert (pods("search-ns", app="search"), Port("TCP", 9200)) in by[WEB].egress  # NAME.NS, another namespace
    assert (web, Port("TCP", 9200)) in by[SEARCH].ingress
    assert (pods("batch", app="nightly"), Port("TCP", 5432)) in by[DB].ingress  # a CronJob's env, across namespaces
    # Direction: the Services' pods get no egress to their clients, the clients no ingress from them.
    for server in (API, REDIS, DB, SEARCH):
        assert not [peer for peer, _ in by[server].egress if peer == web]
    assert not [peer for peer, _ in by[WEB].ingress if peer in (pods("shop", app="api"), pods("shop", app="db"))]
    # Names that are no Service, and a Service without a selector, lead nowhere.
    assert {peer for peer, _ in by[WEB].egress} == {
        pods("shop", app="web"), DNS, pods("shop", app="api"), pods("shop", app="redis"), pods("shop", app="db"),
        pods("search-ns", app="search")}


def test_exposed_workloads_admit_the_ingress_controllers_and_load_balancers(by: dict[Workload, Proposal]) -> None:
    controllers = PodPeer(("ingress-nginx",), DEFAULT_INGRESS_SELECTOR)  # where the source shows them
    assert (controllers, Port("TCP", 8080)) in by[WEB].ingress
    assert (controllers, Port("TCP", "grpc")) in by[API].ingress
    assert (NetworkPeer("0.0.0.0/0"), Port("TCP", 8080)) in by[WEB].ingress  # a LoadBalancer Service
    assert not [peer for peer, _ in by[API].ingress if isinstance(peer, NetworkPeer)]  # ClusterIP only
    assert not [peer for peer, _ in by[TOOL].ingress if peer == controllers]  # no Service exposes it


def test_probes_admit_the_node_addresses(by: dict[Workload, Proposal]) -> None:
    nodes = {NetworkPeer("192.168.1.10/32"), NetworkPeer("203.0.113.100/32")}
    assert {(n, Port("TCP", "http")) for n in nodes} <= by[WEB].ingress
    assert {(n, Port("TCP", 5432)) for n in nodes} <= by[DB].ingress
    assert not [peer for peer, _ in by[API].ingress if peer in nodes]  # no probes


def test_service_references_forms() -> None:
    services = {(ns, name): ServiceObject(ns, name, "ClusterIP", Selector.of_labels({"app": name}), ())
                for ns, name in (("a", "api"), ("b", "db"), ("a", "cache"))}
    refs = service_references(["https://API.a.svc.cluster.local:8443", "db.b.svc", "cache", "db.b", "db",
                               "api.a.svc.other.domain", "10.0.0.1", "db.b.svc.cluster.local.evil.com"],
                              "a", services, "cluster.local")
    assert [(s.namespace, s.name) for s in refs] == [("a", "api"), ("b", "db"), ("a", "cache")]
    # "db" alone is namespace a's, where there is none; "api.a.svc.other.domain" is another cluster domain.
    assert service_references(["api.a.svc.other.domain"], "a", services, "other.domain")[0].name == "api"


def test_kinds_are_trimmed_and_parsed() -> None:
    deployment = yaml.safe_load(CLUSTER.split("---")[2])
    deployment["metadata"]["managedFields"] = [{"manager": "kubectl"}]
    deployment["spec"]["template"]["spec"]["containers"][0]["resources"] = {"limits": {"cpu": "1"}}
    trimmed = trim_workload(deployment)
    assert "managedFields" not in trimmed["metadata"]
    container = trimmed["spec"]["template"]["spec"]["containers"][0]
    assert set(container) == {"ports", "env", "readinessProbe"}
    assert container["env"][-1] == {"name": "SECRET"}
    assert read_workload("Deployment", trimmed) == read_workload("Deployment", deployment)
    service = read_service({"metadata": {"name": "s", "namespace": "a"},
                            "spec": {"selector": {"app": "s"}, "ports": [{"port": 53, "protocol": "UDP", "targetPort": "53"}]}})
    assert service.ports == (ServicePort("", "UDP", 53, 53),)
    with pytest.raises(InvalidObject):
        read_service({"metadata": {"name": "s", "namespace": "a"}, "spec": {"ports": [{"port": 0}]}})
    with pytest.raises(InvalidObject):
        read_workload("Deployment", {"metadata": {"name": "d", "namespace": "a"},
                                     "spec": {"selector": {"matchLabels": {"app": "x"}, "bogus": 1}}})


def test_command_writes_valid_policies_deterministically(folder: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["advise", "--from-workloads", "--manifests", str(folder)]) == 0
    first, err = capsys.readouterr()
    assert main(["advise", "--from-workloads", "--manifests", str(folder)]) == 0
    assert capsys.readouterr()[0] == first
    assert "advise: 8 NetworkPolicies for 8 workload(s)" in err
    documents: list[dict[str, Any]] = list(yaml.safe_load_all(first))
    for document in documents:
        parse_network_policy(document)
        assert document["metadata"]["annotations"]["kube-netpol.io/advised-from"] == "workloads"
    web = next(d for d in documents if d["metadata"]["name"] == "deployment-web")
    assert web["spec"]["podSelector"] == {"matchLabels": {"app": "web"}}
    # The ingress controllers' namespace is named by the label every namespace has; their pods by their name label.
    controllers = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
                   "podSelector": {"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In", "values": [
                       "contour", "envoy-gateway", "haproxy-ingress", "ingress-nginx", "kong", "traefik"]}]}}
    assert {"from": [controllers, {"ipBlock": {"cidr": "0.0.0.0/0"}}, {"ipBlock": {"cidr": "::/0"}}],
            "ports": [{"protocol": "TCP", "port": 8080}]} in web["spec"]["ingress"]
    only_search = main(["advise", "--from-workloads", "--manifests", str(folder), "--namespace", "search-ns"])
    assert only_search == 0
    assert [d["metadata"]["name"] for d in yaml.safe_load_all(capsys.readouterr()[0])] == ["deployment-search"]
