#!/usr/bin/env python3
"""What agents watching every pod cost the API server: bytes and events per pod change, per node.

A simulation: the fake API server (kube_netpol.tools.testing.FakeApiServer,
on 127.0.0.1) holds ``--pods`` pods shaped like bench/bench_scale.py's
(about 2.9 KB as written); ``--watchers`` clients each hold one pod watch, as
every agent does (one per node). Then ``--lifecycles`` pods live a typical
life, each change an event every watcher receives:

  created (Pending, unscheduled) -> scheduled (nodeName) -> running (podIP,
  container statuses) -> ready (conditions) -> terminating
  (deletionTimestamp) -> deleted

Measured per watcher: events and bytes received per lifecycle, and the
server's own CPU per event written (this fake server is Python and
serialises each event once, then writes it to every watch, as kube-apiserver's
watch cache does; its CPU figure says nothing about kube-apiserver's, the
byte counts are what the wire carries). Printed: per pod change and per
node; extrapolated to 1,000 and 5,000 nodes at ``--rate`` lifecycles a
second; and, for comparison, what an aggregator would send each agent: one
compact record (namespace, name, labels, addresses, node, ports; what
kube_netpol/state keeps) per pod change that matters to policy (created with
an address, relabelled, deleted), measured on the same pods. See docs/scale.md.

    python bench/sim_watch_fanout.py [--watchers 50] [--pods 2000] [--lifecycles 200]
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from bench_scale import namespaces_for, realistic_pod  # noqa: E402

from kube_netpol.state.trim import trim_pod  # noqa: E402
from kube_netpol.tools.testing import FakeApiServer  # noqa: E402


class Watcher(threading.Thread):
    """One agent's pod watch: counts the events and bytes it receives."""

    def __init__(self, port: int, since: int) -> None:
        super().__init__(daemon=True)
        self.port, self.since = port, since
        self.events = 0
        self.bytes = 0
        self.ready = threading.Event()
        self.stop = False

    def run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        connection.request("GET", f"/api/v1/pods?watch=true&resourceVersion={self.since}&timeoutSeconds=600")
        response = connection.getresponse()
        self.ready.set()
        while not self.stop:
            line = response.readline()  # the chunked framing is undone by http.client
            if not line:
                break
            self.bytes += len(line)
            self.events += 1
        connection.close()


def lifecycle(server: FakeApiServer, i: int, namespaces: int) -> int:
    """One pod's life through the API; returns the number of writes (events)."""
    full = realistic_pod(i, namespaces)
    pending = copy.deepcopy(full)
    pending["spec"].pop("nodeName")
    pending["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False"}]}
    server.create(pending)
    scheduled = copy.deepcopy(full)
    scheduled["status"] = {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}
    server.update(scheduled)
    running = copy.deepcopy(full)
    running["status"]["conditions"] = [c for c in running["status"]["conditions"] if c["type"] != "Ready"]
    server.update(running)
    server.update(full)
    terminating = copy.deepcopy(full)
    terminating["metadata"]["deletionTimestamp"] = "2026-11-30T11:00:00Z"
    terminating["metadata"]["deletionGracePeriodSeconds"] = 30
    server.update(terminating)
    server.delete("Pod", full["metadata"]["name"], full["metadata"]["namespace"])
    return 6


def compact_record(pod: dict[str, Any]) -> bytes:
    """What an aggregator would send per relevant change: the fields the state keeps, compact JSON."""
    trimmed = trim_pod(pod)
    meta, spec, status = trimmed["metadata"], trimmed["spec"], trimmed["status"]
    ports = [[p.get("name", ""), p["containerPort"], p.get("protocol", "TCP")]
             for c in spec.get("containers", []) for p in c.get("ports", [])]
    record = [meta["namespace"], meta["name"], meta.get("labels", {}), [a["ip"] for a in status.get("podIPs", [])],
              spec.get("nodeName", ""), ports]
    return json.dumps(record, separators=(",", ":")).encode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--pods", type=int, default=2000, help="pods in the API before the lifecycles")
    parser.add_argument("--lifecycles", type=int, default=200)
    parser.add_argument("--rate", type=float, default=100.0, help="pod lifecycles per second, for the extrapolation")
    args = parser.parse_args()
    namespaces = namespaces_for(args.pods)
    with FakeApiServer() as server:
        server.load(realistic_pod(i, namespaces) for i in range(args.pods))
        since = server.resource_version
        watchers = [Watcher(server.port, since) for _ in range(args.watchers)]
        for watcher in watchers:
            watcher.start()
            watcher.ready.wait(10)
        server.wait_for_watches(["Pod"], timeout=10)
        cpu_before = time.process_time()
        writes = sum(lifecycle(server, args.pods + n, namespaces) for n in range(args.lifecycles))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(w.events < writes for w in watchers):
            time.sleep(0.05)
        cpu = time.process_time() - cpu_before  # writes, serialisation and fan-out (all of this process)
        for watcher in watchers:
            watcher.stop = True
        server.drop_watches()
    events = sum(w.events for w in watchers) / len(watchers)
    received = sum(w.bytes for w in watchers) / len(watchers)
    per_life_bytes = received / args.lifecycles
    per_life_events = events / args.lifecycles
    sample = realistic_pod(args.pods, namespaces)
    compact = len(compact_record(sample))
    aggregator_changes = 2  # created with an address (running), deleted; relabels are rarer still
    print(f"# {args.watchers} watchers, {args.pods} pods, {args.lifecycles} lifecycles of {writes // args.lifecycles} "
          f"writes; fake server CPU {cpu * 1e6 / (writes * args.watchers):.1f} µs per event delivered")
    print("| per pod lifecycle, per node | events | bytes |")
    print("|---|---:|---:|")
    print(f"| every agent watches every pod (today) | {per_life_events:.1f} | {per_life_bytes:,.0f} |")
    print(f"| aggregator: compact records of the changes policy reads | {aggregator_changes} | "
          f"{aggregator_changes * (compact + 16):,.0f} |")
    print()
    print(f"At {args.rate:.0f} pod lifecycles/s (API server egress, all agents):")
    print("| nodes | events/s | watch (today) | aggregator -> agents | aggregator's own watch |")
    print("|---:|---:|---:|---:|---:|")
    for nodes in (1000, 5000):
        today = per_life_bytes * args.rate * nodes
        aggregated = aggregator_changes * (compact + 16) * args.rate * nodes
        print(f"| {nodes:,} | {per_life_events * args.rate * nodes:,.0f} | {today / 1e6:,.1f} MB/s | "
              f"{aggregated / 1e6:,.1f} MB/s | {per_life_bytes * args.rate / 1e6:.2f} MB/s |")
    print()
    print(f"An initial list per agent: {len(json.dumps(sample)):,} bytes a pod as written; a compact record "
          f"{compact} bytes.")


if __name__ == "__main__":
    main()
