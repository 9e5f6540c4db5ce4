#!/usr/bin/env python3
"""In-process cost of the verdict loop's callback, and of recording metrics in it.

No kernel: queued packets are stand-ins with the NetfilterQueue packet's
methods, so the figures are the agent's own Python per packet. Reported:

- ``handle``, fast path: a repeat flow key (a new connection to a service the
  flow table has judged), the common case for first packets;
- ``handle``, full path: every packet parsed and looked up in the engine's
  cache, as with a decision logger attached (with one, plus its observe);
- the metric recording alone: the integer updates ``handle`` makes on the
  flow's counters and the summary window, timed in isolation.

    python bench/bench_verdict_loop.py [--packets 200000]
"""

from __future__ import annotations

import argparse
import io
import time

from scapy.layers.inet import IP, TCP

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.observability.decisions import DecisionLogger
from kube_netpol.observability.flowstats import BUCKET_OF, BUCKET_TABLE_LIMIT, SUMMARY_MASK, bucket_index
from kube_netpol.plugins import build_engine
from kube_netpol.state import ClusterState


class Queued:
    __slots__ = ("payload",)

    def __init__(self, payload: bytes) -> None:
        self.payload = payload

    def get_payload(self) -> bytes:
        return self.payload

    def accept(self) -> None:
        pass

    def drop(self) -> None:
        pass


def cluster() -> ClusterState:
    state = ClusterState()
    for ns in ("x", "y"):
        state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    state.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "x", "name": "client"},
                 "status": {"podIPs": [{"ip": "10.0.0.1"}]}})
    state.apply({"apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "y", "name": "server", "labels": {"app": "web"}},
                 "status": {"podIPs": [{"ip": "10.0.0.2"}]}})
    state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                 "metadata": {"namespace": "y", "name": "web"},
                 "spec": {"podSelector": {"matchLabels": {"app": "web"}},
                          "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "x"}}}],
                                       "ports": [{"port": 80}]}]}})
    return state


def per_packet_ns(loop: VerdictLoop, packets: list[Queued], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for queued in packets:
            loop.handle(queued)
        best = min(best, (time.perf_counter_ns() - started) / len(packets))
    return best


def recording_ns(count: int) -> float:
    """The recording statements of VerdictLoop.handle, on a flow and the stats, alone."""
    loop = VerdictLoop(build_engine(cluster()), 100, fail_open=True)
    queued = Queued(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=80, flags="S")))
    loop.handle(queued)
    stats = loop.stats
    flow = next(iter(stats.flows.values()))
    elapsed = 1234
    samples = []
    for _ in range(5):
        started = time.perf_counter_ns()
        for _ in range(count):
            flow.packets += 1
            microseconds = (elapsed + 999) // 1000
            flow.buckets[BUCKET_OF[microseconds] if microseconds <= BUCKET_TABLE_LIMIT else bucket_index(microseconds)] += 1
            flow.total_ns += elapsed
            index = stats.sample_index
            stats.samples[index & SUMMARY_MASK] = elapsed
            stats.sample_index = index + 1
        samples.append((time.perf_counter_ns() - started) / count)
    return min(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    packets = [Queued(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1024 + i % 60000, dport=80, flags="S")))
               for i in range(args.packets)]
    fast = VerdictLoop(build_engine(cluster()), 100, fail_open=True)
    # Default settings and no writer thread: under a flood the queue is full and
    # observe only counts, which is the case a flood must not slow down.
    logger = DecisionLogger(io.StringIO())
    logged = VerdictLoop(build_engine(cluster()), 100, fail_open=True, observer=logger.observe)
    full = VerdictLoop(build_engine(cluster()), 100, fail_open=True, observer=lambda *args: None)
    print("| what | ns per packet |")
    print("|---|---:|")
    print(f"| handle, fast path (flow table hit) | {per_packet_ns(fast, packets):.0f} |")
    print(f"| handle, full path (parse + engine cache), no-op observer | {per_packet_ns(full, packets):.0f} |")
    print(f"| handle, full path with the decision logger's observe | {per_packet_ns(logged, packets):.0f} |")
    print(f"| metric recording alone (inside handle) | {recording_ns(args.packets):.0f} |")


if __name__ == "__main__":
    main()
