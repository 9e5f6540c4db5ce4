#!/usr/bin/env python3
"""Scale: the real agent against a big cluster's API (memory, initial sync, churn, apply latency).

The real agent (``python -m kube_netpol run --kubeconfig FILE``) runs in a
lab's node namespace, fed by the fake API server
(kube_netpol.tools.testing.FakeApiServer) listening inside that namespace, as
in bench/bench_apply_latency.py. The API holds, per configuration:

- ``pods`` pods shaped like a real cluster's (about 2.7 KB of compact JSON each, 2.9 KB as the fake server writes it:
  managedFields, annotations, ownerReferences, ten env vars, resources,
  conditions, container statuses), ten per
  ReplicaSet (its pods share their labels), in ``pods / 1000`` namespaces
  (at least 10), 100 per node: the agent's node runs 100 of them (plus the
  lab's two real pods, bench/client and bench/target), the others run on
  nodes the agent only hears of;
- one NetworkPolicy per 100 pods, each selecting one ReplicaSet's pods and
  admitting another's on TCP/8080.

Measured, per configuration, on the agent's process (``/proc/PID``):

- ready: wall time from starting the process until /statusz says ready and
  enforcing everything the server holds (polled every 50 ms), and the
  process's CPU time (user + system, all threads) at that moment;
- RSS 3 s after ready (and the peak, VmHWM); growth per pod is the RSS
  difference between configurations divided by their pod difference;
- churn: ``--churn-rate`` pod creations and as many deletions per second
  (1 in 100 on the agent's node) for ``--churn-seconds``; the share of one
  core the agent used meanwhile (CPU seconds / wall seconds), and that it
  kept up (it enforces the last change within 10 s after);
- RSS at the end (after the churn, with the latency phase's policies);
- apply latency: the policies are first topped up to ``--latency-policies``
  (created while the agent runs: watch events), then ``--rounds`` rounds of
  four changes of one policy flipping bench/client -> bench/target:80
  (create denying, update admitting, update denying, delete); per change,
  from the moment the fake server wrote the event to the watch until
  /statusz reports it enforced (``enforced_revision``, set after the
  dataplane sync and the strict-mode pass): the figure for new connections.
  The probe-based figures of bench_apply_latency.py are not repeated here.

The fake server runs in this process, so its work (serialising lists and
events) is not the agent's CPU, but it shares the machine's cores: wall times
depend on it, the CPU figures do not. Run as root; everything lives in lab
namespaces and is removed at the end::

    python bench/bench_scale.py [--pods 1000,10000,100000] [--latency-policies 10000] [--watch-list false]

``--watch-list false`` runs the agent with paged lists instead of streaming
the initial state (the fake server serves both).

Not a test: copy the table into docs/performance.md (with ``uptime``).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout without installing
sys.path.insert(0, str(REPO / "tests" / "e2e"))  # the Kubernetes lab helpers the end-to-end tests use

from bench_apply_latency import (  # noqa: E402
    CLIENT,
    LAB_PODS,
    ROUND,
    TARGET,
    StatusPoller,
    make_change,
    percentile,
    sent_at,
    untrack_loopback,
)
from e2e_agentlab import NODE, namespace_object, pod_object  # noqa: E402
from e2e_kubelab import KubeAgentProcess, KubeLab, socket_factory_in  # noqa: E402

from kube_netpol.tools.conformance.dataplane_leaks import root_leaks  # noqa: E402
from kube_netpol.tools.lab import Lab  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402

PODS_PER_REPLICASET = 10
PODS_PER_NODE = 100
PODS_PER_POLICY = 100
FIRST_POD_IP = int(ipaddress.IPv4Address("10.128.0.1"))
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


# --------------------------------------------------------------------------- the cluster

def managed_fields() -> list[dict[str, Any]]:
    """What kube-controller-manager and the kubelet write into every pod's managedFields (abridged)."""
    return [
        {"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "v1",
         "time": "2026-11-30T10:00:00Z", "fieldsType": "FieldsV1",
         "fieldsV1": {"f:metadata": {"f:generateName": {}, "f:labels": {".": {}, "f:app": {}, "f:pod-template-hash": {}},
                                     "f:ownerReferences": {".": {}}},
                      "f:spec": {"f:containers": {'k:{"name":"app"}': {".": {}, "f:env": {}, "f:image": {},
                                                                       "f:ports": {}, "f:resources": {}}}}}},
        {"manager": "kubelet", "operation": "Update", "apiVersion": "v1", "time": "2026-11-30T10:00:05Z",
         "fieldsType": "FieldsV1", "subresource": "status",
         "fieldsV1": {"f:status": {"f:conditions": {}, "f:containerStatuses": {}, "f:podIP": {}, "f:podIPs": {}}}},
    ]


#: Parts every pod has alike; the server keeps them once (FakeApiServer.load), the wire carries them per pod.
SHARED_FIELDS = managed_fields()
SHARED_ENV = [{"name": f"VAR_{n}", "value": f"value-{n}"} for n in range(10)]
SHARED_CONDITIONS = [{"type": t, "status": "True", "lastTransitionTime": "2026-11-30T10:00:05Z"}
                     for t in ("Initialized", "Ready", "ContainersReady", "PodScheduled")]


def namespaces_for(pods: int) -> int:
    return max(10, pods // 1000)


def node_for(i: int) -> str:
    """Pods 0..99 run on the agent's node, the others 100 per node elsewhere."""
    return NODE if i < PODS_PER_NODE else f"node-{i // PODS_PER_NODE}"


def replicaset(i: int, namespaces: int) -> tuple[str, str, str]:
    """(namespace, app, pod-template-hash) of pod i: 10 consecutive pods per ReplicaSet."""
    rs = i // PODS_PER_REPLICASET
    return f"ns-{rs % namespaces}", f"app-{rs}", f"{rs * 2654435761 % 16**10:010x}"


def realistic_pod(i: int, namespaces: int, node: str | None = None) -> dict[str, Any]:
    namespace, app, template = replicaset(i, namespaces)
    name = f"{app}-{template}-{i % 100000:05d}x"
    ip = str(ipaddress.IPv4Address(FIRST_POD_IP + i))
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "namespace": namespace, "generateName": f"{app}-{template}-",
            "creationTimestamp": "2026-11-30T10:00:00Z",
            "labels": {"app": app, "pod-template-hash": template, "tier": "backend",
                       "team": f"team-{i // PODS_PER_REPLICASET % 7}"},
            "annotations": {"kubectl.kubernetes.io/restartedAt": "2026-11-30T09:59:00Z",
                            "prometheus.io/scrape": "true", "prometheus.io/port": "9090"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": f"{app}-{template}",
                                 "uid": "0e3c2b1a-5d4f-4e6a-9b8c-7d6e5f4a3b2c", "controller": True,
                                 "blockOwnerDeletion": True}],
            "managedFields": SHARED_FIELDS,
        },
        "spec": {
            "containers": [{
                "name": "app", "image": f"registry.example.com/{app}:1.2.3", "imagePullPolicy": "IfNotPresent",
                "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
                "env": SHARED_ENV,
                "resources": {"requests": {"cpu": "100m"}, "limits": {"memory": "256Mi"}},
            }],
            "nodeName": node or node_for(i), "restartPolicy": "Always", "serviceAccountName": "default",
            "terminationGracePeriodSeconds": 30,
        },
        "status": {
            "phase": "Running", "conditions": SHARED_CONDITIONS, "hostIP": "192.168.0.10",
            "podIP": ip, "podIPs": [{"ip": ip}],
            "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "started": True,
                                   "image": f"registry.example.com/{app}:1.2.3",
                                   "imageID": "sha256:" + "0" * 32,
                                   "containerID": "containerd://" + f"{i:032x}",
                                   "state": {"running": {"startedAt": "2026-11-30T10:00:04Z"}}}],
        },
    }  # fmt: skip


def policy(k: int, pods: int, namespaces: int) -> dict[str, Any]:
    """Policy k selects ReplicaSet k's pods (cycling) and admits the next ReplicaSet of its namespace."""
    replicasets = max(1, pods // PODS_PER_REPLICASET)
    rs = k % replicasets
    namespace, app, _ = replicaset(rs * PODS_PER_REPLICASET, namespaces)
    _, peer, _ = replicaset(((rs + namespaces) % replicasets) * PODS_PER_REPLICASET, namespaces)
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": f"pol-{k}", "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": {"app": app}}, "policyTypes": ["Ingress"],
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}}],
                              "ports": [{"protocol": "TCP", "port": 8080}]}]},
    }  # fmt: skip


# --------------------------------------------------------------------------- the agent process

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def memory_kib(pid: int) -> dict[str, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values


@contextmanager
def scale_lab(pods: int, policies: int, watch_list: bool = True) -> Iterator[tuple[KubeLab, dict[str, float]]]:
    """The lab, the server loaded with the cluster, the agent started; yields it once ready, with its figures."""
    lab = Lab("knlscale", probe_timeout=0.1)
    table = f"knlscale-{lab.lab_id}"
    workdir = Path(tempfile.mkdtemp(prefix="knlscale-"))
    server: FakeApiServer | None = None
    agent: KubeAgentProcess | None = None
    try:
        server = FakeApiServer(socket_factory=socket_factory_in(lab.node_netns))
        namespaces = namespaces_for(pods)
        server.create(namespace_object("bench"))
        for key, ips in LAB_PODS.items():
            server.create(pod_object(key, ips, NODE))
        server.load(namespace_object(f"ns-{n}") for n in range(namespaces))
        server.load(realistic_pod(i, namespaces) for i in range(pods))
        server.load(policy(k, pods, namespaces) for k in range(policies))
        lab.serve([(80, "TCP")])
        for key, ips in LAB_PODS.items():
            lab.add_host(key, ips)
        kubeconfig = server.write_kubeconfig(workdir / "kubeconfig")
        started = time.monotonic()
        agent = KubeAgentProcess(lab, kubeconfig, workdir / "agent.log", node_name=NODE, table=table,
                                 extra_args=[f"--watch-list={str(watch_list).lower()}"])
        env = KubeLab(lab, server, agent, dict(LAB_PODS))
        pid = agent.process.pid
        wanted = {kind: env.last_version(kind) for kind in ("Namespace", "Pod", "NetworkPolicy")}
        agent.wait_versions(wanted, timeout=1800, poll_interval=0.05)
        figures = {"ready_s": time.monotonic() - started, "ready_cpu_s": cpu_seconds(pid)}
        time.sleep(3)
        memory = memory_kib(pid)
        figures.update(rss_mib=memory["VmRSS"] / 1024, peak_mib=memory["VmHWM"] / 1024)
        yield env, figures
    finally:
        if agent is not None:
            agent.stop()
        if server is not None:
            server.stop()
        lab.close()
        shutil.rmtree(workdir, ignore_errors=True)
        leaks = root_leaks(lab.lab_id, table)
        assert not leaks, leaks


def churn(env: KubeLab, pods: int, rate: int, seconds: float) -> dict[str, float]:
    """``rate`` creations and deletions per second; the agent's CPU share meanwhile."""
    pid = env.agent.process.pid
    namespaces = namespaces_for(pods)
    interval = 1.0 / rate
    cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
    next_at = wall_before
    n = 0
    while time.monotonic() - wall_before < seconds:
        new = pods + n  # new pods get fresh names and addresses; 1 in 100 lands on the agent's node
        env.server.create(realistic_pod(new, namespaces, NODE if n % 100 == 0 else f"node-churn-{n % 50}"))
        old = realistic_pod(PODS_PER_NODE + n, namespaces)  # pods of other nodes, oldest first
        env.server.delete("Pod", old["metadata"]["name"], old["metadata"]["namespace"])
        n += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.monotonic()))
    wall = time.monotonic() - wall_before
    cpu = cpu_seconds(pid) - cpu_before
    last = env.server.resource_version
    env.agent.wait_versions({"Pod": last}, timeout=10, poll_interval=0.05)
    return {"churn_per_s": 2 * n / wall, "churn_core_share": cpu / wall}


def latency(env: KubeLab, pods: int, policies: int, wanted: int, rounds: int) -> dict[str, float]:
    namespaces = namespaces_for(pods)
    if wanted > policies:
        env.server.load(policy(k, pods, namespaces) for k in range(policies, wanted))
        env.agent.wait_versions({"NetworkPolicy": env.server.resource_version}, timeout=600, poll_interval=0.05)
    untrack_loopback(env)
    assert env.probe(CLIENT, TARGET), "client -> target must flow before the first change"
    poller = StatusPoller(env)
    samples: list[float] = []
    # Strict mode runs its conntrack pass at most every 0.2 s (a burst of changes costs one pass): a change
    # right after the top-up's pass would wait out that interval. Every measured change comes 0.3 s after
    # the previous one.
    time.sleep(0.3)
    try:
        for _ in range(rounds):
            for kind, verdict in ROUND:
                change = make_change(env, kind, verdict)
                version = int(change["metadata"]["resourceVersion"])
                seen = poller.wait_seen(version, 0.001)
                samples.append(seen - sent_at(env, version))
                time.sleep(0.3)
            if env.probe(CLIENT, TARGET) is not True:  # the round ends with the policy deleted
                raise RuntimeError("client -> target is not allowed after the round")
    finally:
        poller.close()
    ms = [s * 1000 for s in samples]
    return {"latency_policies": max(wanted, policies), "apply_samples_ms": [round(v, 2) for v in ms],
            "apply_p50_ms": percentile(ms, 50),
            "apply_p99_ms": percentile(ms, 99), "apply_max_ms": max(ms), "apply_changes": len(ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", default="1000,10000,100000", help="comma-separated pod counts")
    parser.add_argument("--latency-policies", type=int, default=10000,
                        help="policies in force while apply latency is measured (topped up before)")
    parser.add_argument("--churn-rate", type=int, default=100, help="pod creations (and deletions) per second")
    parser.add_argument("--churn-seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=10, help="rounds of 4 policy changes")
    parser.add_argument("--watch-list", default="true", choices=("true", "false"),
                        help="the agent's --watch-list: stream the initial state (true) or list it in pages (false)")
    parser.add_argument("--json", help="append the figures here (one JSON object per line)")
    args = parser.parse_args()
    sys.setswitchinterval(0.0002)  # the server's watch thread takes its timestamps promptly

    results = []
    for pods in (int(p) for p in args.pods.split(",")):
        policies = max(1, pods // PODS_PER_POLICY)
        with scale_lab(pods, policies, args.watch_list == "true") as (env, figures):
            figures.update(pods=pods, policies=policies, watch_list=args.watch_list == "true")
            print(f"# {pods} pods, {policies} policies: ready {figures['ready_s']:.1f} s, "
                  f"{figures['ready_cpu_s']:.1f} CPU s, RSS {figures['rss_mib']:.0f} MiB", file=sys.stderr)
            figures.update(churn(env, pods, args.churn_rate, args.churn_seconds))
            figures.update(latency(env, pods, policies, args.latency_policies, args.rounds))
            figures["rss_end_mib"] = memory_kib(env.agent.process.pid)["VmRSS"] / 1024  # with the top-up's policies
            figures["load_average_1m"] = os.getloadavg()[0]
        results.append(figures)
        print(json.dumps(figures), file=sys.stderr)
        if args.json:
            with open(args.json, "a") as out:
                out.write(json.dumps(figures) + "\n")

    base = results[0]
    print("| pods | policies | RSS after ready MiB | peak MiB | growth/pod KB | ready s | agent CPU to ready s "
          "| churn pods/s | churn % of a core | apply p50 ms | apply p99 ms | (policies) | RSS at end MiB | load |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        growth = ("–" if r is base else
                  f"{(r['rss_mib'] - base['rss_mib']) * 1024 * 1.024 / (r['pods'] - base['pods']):.2f}")
        print(f"| {r['pods']} | {r['policies']} | {r['rss_mib']:.0f} | {r['peak_mib']:.0f} | {growth} | "
              f"{r['ready_s']:.1f} | {r['ready_cpu_s']:.1f} | {r['churn_per_s']:.0f} | "
              f"{100 * r['churn_core_share']:.1f} | {r['apply_p50_ms']:.1f} | {r['apply_p99_ms']:.1f} | "
              f"{r['latency_policies']} | {r['rss_end_mib']:.0f} | {r['load_average_1m']:.2f} |")


if __name__ == "__main__":
    main()
