#!/usr/bin/env python3
"""Engine evaluation time per packet as the number of policies grows.

A cluster of 10,000 pods (100 namespaces of 100 pods). A few policies select
the pods of the measured packets; all the others select pods in the same
namespaces by labels no measured pod has. The full default pipeline runs
(AdminNetworkPolicy, NetworkPolicy, BaselineAdminNetworkPolicy), with one ANP
and the BANP selecting the measured pods and policies/10 more ANPs selecting
none. The measured call is
``Snapshot.judge`` (both pipelines, no flow table) after a warm-up, so per-pod
indexes are built; ``Snapshot.evaluate`` answered from the flow table (the one
verdict cache, which the verdict loop fills) is reported too. "build s" is the
state filled plus the first snapshot published (every evaluator taking the
whole cluster as one batch). Not a test: run it and copy the table into
docs/performance.md.

With ``--selecting N[,N...]`` the table has one row per N instead: N more
NetworkPolicies (on top of ``SELECTING_COLD`` cold ones) all select the
measured destination pods, each admitting TCP port 1000+i from any peer; they
sort before the policy that admits the measured flows, so a plain in-order scan
would try all N rules for every measured packet. The row should not grow with N.

    python bench/bench_engine.py [--policies 10,100,1000,10000] [--packets 20000]
    python bench/bench_engine.py --selecting 10,100,1000
    python bench/bench_engine.py --cnps 10,100,1000,10000

With ``--cnps N[,N...]`` the pipeline is every built-in evaluator (both
ClusterNetworkPolicy tiers around the v1alpha1 ones and NetworkPolicy), the
cluster has 10 cold ANPs and NetworkPolicies as above, plus N
ClusterNetworkPolicies, half Admin and half Baseline, each selecting pods by a
label no measured pod has, and one Admin CNP that selects the measured
destinations (it denies ns-2, as NetworkPolicy does, so the verdicts stay).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time

from kube_netpol.api.packet import Packet
from kube_netpol.engine.flows import packet_flow_key
from kube_netpol.plugins import BUILTIN_ORDER, build_engine
from kube_netpol.state import ClusterState

NAMESPACES = 100
PODS_PER_NAMESPACE = 100
#: Policies that select no measured pod, in the --selecting mode.
SELECTING_COLD = 100


def pod_ip(ns: int, pod: int) -> bytes:
    return bytes([10, 100 + ns // 250, ns % 250, pod + 1])


def build_cluster(state: ClusterState, policies: int, selecting: int = 0) -> None:
    for ns in range(NAMESPACES):
        state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{ns}", "labels": {"team": f"t{ns % 7}"}}})
        for p in range(PODS_PER_NAMESPACE):
            state.apply({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"namespace": f"ns-{ns}", "name": f"pod-{p}", "labels": {"app": f"app-{p % 10}", "pod": f"pod-{p}"}},
                "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80}]}]},
                "status": {"podIPs": [{"ip": ".".join(map(str, pod_ip(ns, p)))}]},
            })
    # The few policies that select the measured pods (ns-0 app-0 receives from ns-1 app-0).
    hot = [
        ("ns-0", "hot-ingress", {"podSelector": {"matchLabels": {"app": "app-0"}}, "policyTypes": ["Ingress"],
                                 "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-1"}},
                                                        "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["app-0", "app-1"]}]}}],
                                              "ports": [{"port": "http"}]}]}),
        ("ns-0", "hot-ingress-2", {"podSelector": {}, "policyTypes": ["Ingress"],
                                   "ingress": [{"from": [{"ipBlock": {"cidr": "192.168.0.0/16"}}]}]}),
        ("ns-1", "hot-egress", {"podSelector": {"matchLabels": {"app": "app-0"}}, "policyTypes": ["Egress"],
                                "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"team": "t0"}}}],
                                            "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}]}]}),
    ]
    for ns, name, spec in hot:
        state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"namespace": ns, "name": name}, "spec": spec})
    # Admin policies: one that selects the measured destination (Pass from ns-1, Deny from ns-2,
    # so NetworkPolicy still decides the measured flows), a BANP for every namespace that only
    # denies a namespace the flows never come from, and a tenth of the count as ANPs whose
    # subjects select no pod.
    state.apply({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                 "metadata": {"name": "hot-anp"},
                 "spec": {"priority": 5, "subject": {"pods": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}},
                                                               "podSelector": {"matchLabels": {"app": "app-0"}}}},
                          "ingress": [{"name": "pass-ns-1", "action": "Pass", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ns-1"}}}]},
                                      {"name": "deny-ns-2", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ns-2"}}}]}]}})
    state.apply({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "BaselineAdminNetworkPolicy",
                 "metadata": {"name": "default"},
                 "spec": {"subject": {"namespaces": {}},
                          "ingress": [{"name": "deny-ns-99", "action": "Deny", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ns-99"}}}]}]}})
    for i in range(policies // 10):
        state.apply({"apiVersion": "policy.networking.k8s.io/v1alpha1", "kind": "AdminNetworkPolicy",
                     "metadata": {"name": f"cold-anp-{i}"},
                     "spec": {"priority": i % 1000, "subject": {"namespaces": {"matchLabels": {"team": f"none-{i}"}}},
                              "ingress": [{"name": "deny", "action": "Deny", "from": [{"namespaces": {}}]}]}})
    for i in range(max(0, policies - len(hot))):
        state.apply({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": f"ns-{i % NAMESPACES}", "name": f"cold-{i}"},
            "spec": {"podSelector": {"matchLabels": {"app": f"cold-{i}"}}, "policyTypes": ["Ingress", "Egress"],
                     "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "pod-1"}}}], "ports": [{"port": 8080}]}],
                     "egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}]}]},
        })
    # Policies that select the measured destinations (ns-0 app-0) and admit ports no measured
    # flow uses; "by-port-" sorts before "hot-ingress", so they come first in evaluation order.
    for i in range(selecting):
        state.apply({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"namespace": "ns-0", "name": f"by-port-{i:05d}"},
            "spec": {"podSelector": {"matchLabels": {"app": "app-0"}}, "policyTypes": ["Ingress"],
                     "ingress": [{"ports": [{"protocol": "TCP", "port": 1000 + i}]}]},
        })


def add_cluster_network_policies(state: ClusterState, count: int) -> None:
    state.apply({
        "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": "hot-cnp"},
        "spec": {"tier": "Admin", "priority": 500, "subject": {"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ns-0"}}},
                 "ingress": [{"action": "Deny", "from": [{"namespaces": {"matchLabels": {"kubernetes.io/metadata.name": "ns-2"}}}]}]},
    })
    for i in range(count):
        state.apply({
            "apiVersion": "policy.networking.k8s.io/v1alpha2", "kind": "ClusterNetworkPolicy", "metadata": {"name": f"cold-cnp-{i:05d}"},
            "spec": {"tier": "Admin" if i % 2 else "Baseline", "priority": i % 1001,
                     "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": f"cold-{i}"}}}},
                     "ingress": [{"action": "Deny", "from": [{"namespaces": {}}]}],
                     "egress": [{"action": "Deny", "to": [{"networks": ["10.0.0.0/8"]}]}]},
        })


def packets() -> list[Packet]:
    """Flows from ns-1's app-0 pods to ns-0's app-0 pods (selected in both directions) and unselected pairs."""
    flows = []
    for s in range(0, PODS_PER_NAMESPACE, 10):
        for d in range(0, PODS_PER_NAMESPACE, 10):
            flows.append(Packet(4, 6, pod_ip(1, s), pod_ip(0, d), 40000 + s, 80))  # allowed
            flows.append(Packet(4, 6, pod_ip(2, s), pod_ip(0, d), 40000 + s, 80))  # denied at ingress
            flows.append(Packet(4, 6, pod_ip(3, s + 1), pod_ip(4, d + 1), 40000 + s, 80))  # nothing selects
    return flows


def measure(call, flows: list[Packet], rounds: int) -> list[int]:
    timings = []
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for _ in range(rounds):
            for packet in flows:
                start = clock()
                call(packet)
                timings.append(clock() - start)
    finally:
        gc.enable()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--policies", default="10,100,1000,10000")
    parser.add_argument("--packets", type=int, default=30000, help="measured evaluations per size")
    parser.add_argument("--selecting", default="", help="N[,N...]: rows of N policies selecting the measured pods")
    parser.add_argument("--cnps", default="", help="N[,N...]: rows of N ClusterNetworkPolicies, every built-in evaluator in the pipeline")
    args = parser.parse_args()
    if args.cnps:
        first_column = "cnps"
        sizes = [(10, int(n)) for n in args.cnps.split(",")]
    elif args.selecting:
        first_column = "selecting"
        sizes = [(SELECTING_COLD, int(n)) for n in args.selecting.split(",")]
    else:
        first_column = "policies"
        sizes = [(int(n), 0) for n in args.policies.split(",")]
    # The selecting mode adds the median of the allowed flows alone: only they reach NetworkPolicy's rules.
    extra_head, extra_rule = (" allowed uncached median µs |", "---:|") if args.selecting else ("", "")
    print(f"| {first_column} | build s | uncached median µs | uncached p99 µs |{extra_head} cached median µs | allowed/denied/unselected |")
    print(f"|---:|---:|---:|---:|{extra_rule}---:|---|")
    for count, selecting in sizes:
        started = time.perf_counter()
        if args.cnps:
            engine = build_engine(BUILTIN_ORDER, node_name="node-1")
            build_cluster(engine.state, count)  # type: ignore[arg-type]
            add_cluster_network_policies(engine.state, selecting)  # type: ignore[arg-type]
        else:
            engine = build_engine(node_name="node-1")
            build_cluster(engine.state, count, selecting)  # type: ignore[arg-type]
        snapshot = engine.publish()
        assert snapshot is not None
        build_seconds = time.perf_counter() - started
        flows = packets()
        verdicts = [snapshot.judge(p).allowed for p in flows]
        assert verdicts[0::3] == [True] * (len(flows) // 3), "ns-1 app-0 -> ns-0 app-0 must be allowed"
        assert verdicts[1::3] == [False] * (len(flows) // 3), "ns-2 -> ns-0 app-0 must be denied"
        assert all(verdicts[2::3]), "unselected pods must be allowed"
        rounds = max(1, args.packets // len(flows))
        uncached = measure(snapshot.judge, flows, rounds)
        for p in flows:  # what the verdict loop leaves in the flow table
            judgement = snapshot.judge(p)
            snapshot.add_flow(packet_flow_key(p), judgement, judgement.allowed, p.protocol, p.family)
        cached = measure(snapshot.evaluate, flows, rounds)
        q = statistics.quantiles(uncached, n=100)
        extra = f" {statistics.median(uncached[0::3]) / 1000:.2f} |" if args.selecting else ""  # flows[0::3]: allowed
        print(f"| {selecting if args.selecting or args.cnps else count} | {build_seconds:.1f} | {statistics.median(uncached) / 1000:.2f} | {q[98] / 1000:.2f} |{extra} "
              f"{statistics.median(cached) / 1000:.2f} | {len(flows) // 3}/{len(flows) // 3}/{len(flows) // 3} |", flush=True)


if __name__ == "__main__":
    main()
