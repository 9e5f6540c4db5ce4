#!/usr/bin/env python3
"""In-process cost of the verdict loop's callback, and of recording metrics in it.

No kernel: queued packets are stand-ins with the NetfilterQueue packet's
methods, so the figures are the agent's own Python per packet. Reported:

- ``handle``, fast path: a repeat flow key (a new connection to a service the
  flow table has judged), the common case for first packets;
- ``handle``, full path: every packet parsed and looked up in the snapshot's
  flow table, as with a decision logger attached while it takes records
  (with one, plus its observe); and with the logger's rate limit spent, when
  its gate sends packets back to the fast path;
- ``handle``, every packet a new flow key: parsed, judged by the pipeline and
  added to the flow table (an agent that just started or just changed policy),
  with the port-segment memo off; and with it on (the agent's default), where
  new keys of a port segment judged before take its judgement unparsed;
- the metric recording on the fast path: ``handle`` against the same loop
  with its recording patched out (unrecorded_loop.py: no clock readings or
  timing records; one hit in ``TIMING_EVERY`` per flow is timed and recorded
  in full; the figures are averages over all packets).

    python bench/bench_verdict_loop.py [--packets 200000]
"""

from __future__ import annotations

import argparse
import gc
import io
import time
from typing import Any

from scapy.layers.inet import IP, TCP

from kube_netpol.agent.run import tune_garbage_collector
from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.observability.decisions import DecisionLogger
from kube_netpol.engine import PolicyEngine
from kube_netpol.plugins import build_engine


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


def cluster() -> PolicyEngine:
    engine = build_engine()
    state = engine.state
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
    engine.publish()
    return engine


def per_packet_ns(loop: VerdictLoop, packets: list[Queued], rounds: int = 5) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter_ns()
        for queued in packets:
            loop.handle(queued)
        best = min(best, (time.perf_counter_ns() - started) / len(packets))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=200_000)
    args = parser.parse_args()
    packets = [Queued(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1024 + i % 60000, dport=80, flags="S")))
               for i in range(args.packets)]

    new_keys = [Queued(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=1 + i % 65535, flags="S")))
                for i in range(min(args.packets, 65535))]

    def loop(**options: Any) -> VerdictLoop:
        return VerdictLoop(cluster(), 100, fail_open=True, **options)

    def new_key_ns(segments: bool = True) -> float:
        best = float("inf")
        for _ in range(5):
            fresh = loop()  # an empty flow table each round: every packet a new key
            if not segments:  # every new key parsed and judged by the pipeline
                fresh.engine.snapshot.segments = {}
            best = min(best, per_packet_ns(fresh, new_keys, rounds=1))
        return best

    default_gc = gc.get_threshold()
    misses_default_gc = new_key_ns(segments=False)
    tune_garbage_collector()  # as the agent runs (kube_netpol/agent/run.py); the rows below with it
    recorded = per_packet_ns(loop(), packets)
    full = per_packet_ns(loop(observer=lambda *args: None), packets)
    misses = new_key_ns(segments=False)
    segment_answers = new_key_ns()
    # No writer thread and no gate: the logger's queue fills and observe only counts,
    # as while the rate limit still has budget, every packet is parsed for a record.
    ungated = per_packet_ns(loop(observer=DecisionLogger(io.StringIO()).observe), packets)
    # With its gate, as the agent runs it: the budget (one second's worth) is spent
    # by the first packets, after which the loop answers from its flow table.
    logger = DecisionLogger(io.StringIO())
    gated = per_packet_ns(loop(observer=logger.observe, observer_gate=logger.gate), packets)
    from unrecorded_loop import patch_out_recording

    patch_out_recording()  # from here on, for the baseline only
    unrecorded = per_packet_ns(loop(), packets)
    print("| what | ns per packet |")
    print("|---|---:|")
    print(f"| handle, fast path (flow table hit) | {recorded:.0f} |")
    print(f"| the same without metric recording (baseline) | {unrecorded:.0f} |")
    print(f"| metric recording on the fast path (difference) | {recorded - unrecorded:.0f} |")
    print(f"| handle, full path (parse + flow table), no-op observer | {full:.0f} |")
    print(f"| handle, every packet a new flow key (no port-segment memo), Python's default GC thresholds {default_gc} | "
          f"{misses_default_gc:.0f} |")
    print(f"| handle, every packet a new flow key (no port-segment memo: parse + pipeline + new entry), the agent's GC thresholds "
          f"{gc.get_threshold()} | {misses:.0f} |")
    print(f"| handle, every packet a new flow key of a port segment judged before (the agent's default) | "
          f"{segment_answers:.0f} |")
    print(f"| decision logging, records being made (full path + observe) | {ungated:.0f} |")
    print(f"| decision logging, rate limit spent (gate closed: flow table hits) | {gated:.0f} |")


if __name__ == "__main__":
    main()
