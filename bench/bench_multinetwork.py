#!/usr/bin/env python3
"""Secondary networks: first-packet cost vs the cluster network, and time until a new attached pod is enforced.

The real agent (with the multinetwork plugin) runs in the lab through the
conformance dataplane backend: pods x/a, x/b on the cluster network and on
one macvlan-typed network (a bridge segment bypassing the node namespace).

- first packet: ``--connections`` sequential TCP connects (connect + close)
  x/b -> x/a:80, timed in x/b's namespace, in four settings: cluster network
  and secondary network, each with no policy (nothing queued) and with a
  policy admitting x/b into x/a (every connection's SYN queued and judged:
  in the node namespace for the cluster network, in x/a's namespace for the
  secondary one). The difference to "no policy" is the cost of being judged.
- new attached pod: a step creates pod x/c attached to the network while a
  policy selects every pod of x; measured from the backend writing the
  manifests until x/c's chain is in its namespace (polled every 2 ms), and
  until the agent's /statusz says the revision is enforced.

Usage: python bench/bench_multinetwork.py [--connections N] [--rounds R]
Root; about 30 s. The machine is shared: run it more than once and report the load.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import textwrap
import threading
import time
import tempfile
from pathlib import Path

from kube_netpol.dataplane.netns import run_in_netns
from kube_netpol.dataplane.secondary import SecondaryRules
from kube_netpol.tools.conformance.dataplane import DataplaneBackend
from kube_netpol.tools.conformance.plan import plan_scenario
from kube_netpol.tools.conformance.scenario import load_scenario

POLICY = """\
      - apiVersion: {api}
        kind: {kind}
        metadata: {{name: admit-b, namespace: x{annotations}}}
        spec:
          podSelector: {{}}
          ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]
"""
ANNOTATIONS = ", annotations: {k8s.v1.cni.cncf.io/policy-for: default/macvlan1}"


def scenario(rounds: int) -> str:
    np = POLICY.format(api="networking.k8s.io/v1", kind="NetworkPolicy", annotations="")
    mnp = POLICY.format(api="k8s.cni.cncf.io/v1beta1", kind="MultiNetworkPolicy", annotations=ANNOTATIONS)
    steps = ["  - name: policies\n    apply:\n" + np + mnp]
    for i in range(rounds):
        steps.append(f"""  - name: new pod {i}
    apply:
      - apiVersion: v1
        kind: Pod
        metadata: {{name: c{i}, namespace: x, annotations: {{k8s.v1.cni.cncf.io/networks: default/macvlan1}}}}
""")
    return textwrap.dedent("""\
        name: bench-multinetwork
        cluster:
          model: {namespaces: [x], pods: [a, b], ports: [80], protocols: [TCP], networks: [default/macvlan1]}
          networks:
            - {name: macvlan1, type: macvlan}
        steps:
        """) + "".join(steps)


def connect_times(netns: str, src: str, dst: str, count: int) -> list[float]:
    def work() -> list[float]:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            with socket.create_connection((dst, 80), timeout=2, source_address=(src, 0)):
                pass
            times.append((time.perf_counter() - started) * 1e6)
        return times

    return run_in_netns(netns, work, timeout=120)


def summary(name: str, times: list[float]) -> str:
    q = statistics.quantiles(times, n=10)
    return f"{name:38s} median {statistics.median(times):7.0f} µs  p90 {q[8]:7.0f} µs  (n={len(times)})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="bench-multinetwork-"))
    path = folder / "scenario.yaml"
    path.write_text(scenario(args.rounds))
    plan = plan_scenario(load_scenario(path))
    backend = DataplaneBackend(plan.setup)
    rules = SecondaryRules()
    try:
        backend.lab.serve([(80, "TCP")])  # the scenario has no probes: serve what is measured
        backend.apply(plan.setup_change)
        b = "/run/netns/" + backend.lab.host("x/b").netns
        pairs = {"cluster": ("10.244.1.11", "10.244.1.10"), "secondary": ("10.101.1.11", "10.101.1.10")}
        print(f"load: {os.getloadavg()}")
        for network, (src, dst) in pairs.items():
            print(summary(f"{network} network, no policy", connect_times(b, src, dst, args.connections)))
        backend.apply(plan.steps[0].change)
        for network, (src, dst) in pairs.items():
            print(summary(f"{network} network, judged (queued)", connect_times(b, src, dst, args.connections)))
        in_place, enforced = [], []
        for i, step in enumerate(plan.steps[1:]):
            done = threading.Event()
            started = time.perf_counter()
            seen: list[float] = []

            def watch(index: int = i, done: threading.Event = done, seen: list[float] = seen,
                      started: float = started) -> None:
                while not done.is_set():
                    host = backend.lab.hosts.get(f"x/c{index}")
                    if host is not None and rules.present("/run/netns/" + host.netns):
                        seen.append((time.perf_counter() - started) * 1000)
                        return
                    time.sleep(0.002)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            backend.apply(step.change)
            enforced.append((time.perf_counter() - started) * 1000)
            watcher.join(5)
            done.set()
            in_place.extend(seen)
        print(f"new attached pod: chain in its namespace median {statistics.median(in_place):.0f} ms "
              f"(min {min(in_place):.0f}, max {max(in_place):.0f}); enforced on /statusz median "
              f"{statistics.median(enforced):.0f} ms (n={len(enforced)})")
        print(f"load: {os.getloadavg()}")
    finally:
        backend.close()


if __name__ == "__main__":
    main()
