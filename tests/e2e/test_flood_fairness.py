"""One pod's flood of new flows cannot starve the other pods' connections (the per-source limit).

Two pods send denied new UDP flows as fast as they can while policies are
rewritten, and three other pods keep opening allowed TCP connections with a
1 s timeout: every one of those must succeed, and the flood must have met the
limit (its counter grew). See docs/performance.md for the figures without the
limit.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from e2e_agentlab import agent_lab, allow_ingress_from_pod, requires_root

from kube_netpol.tools.lab import Probe

pytestmark = requires_root

FLOOD_SECONDS = 4.0
FLOODERS = ("f/one", "f/two")
CLIENTS = ("c/one", "c/two", "c/three")
PODS = {
    "s/server": ["10.244.3.10"],
    "f/one": ["10.244.4.10"],
    "f/two": ["10.244.4.11"],
    "c/one": ["10.244.5.10"],
    "c/two": ["10.244.5.11"],
    "c/three": ["10.244.5.12"],
}
FLOOD = str(Path(__file__).with_name("e2e_new_flow_flood.py"))


def _server_policy(revision: int) -> dict:  # type: ignore[type-arg]
    """The server admits namespace c on TCP/80 (and, in turn, one of two unrelated ports: a rewrite)."""
    policy = allow_ingress_from_pod("s", "server", "unused", name="from-c")
    policy["spec"]["ingress"] = [
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "c"}}}],
         "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 1000 + revision % 2}]},
    ]
    return policy


@pytest.mark.parametrize("memory", [False, True], ids=["limit", "limit-and-memory"])
def test_a_flood_of_new_flows_from_two_pods_fails_no_connection_of_the_others(memory: bool) -> None:
    """Without the verdict memory the per-source limit stops the flood before the queue; with it, the
    kernel also drops the flood's remembered key, between the policy rewrites that make it forget."""
    with agent_lab(PODS, served=((80, "TCP"),), policies=[_server_policy(0)],
                   extra_args=(f"--verdict-memory={str(memory).lower()}",)) as env:
        server = env.ip("s/server")
        assert env.probe("c/one", "s/server")
        assert not env.probe("f/one", "s/server", protocol="UDP", port=80)
        stop = threading.Event()

        def rewrite_policies() -> None:
            revision = 0
            while not stop.is_set():
                revision += 1
                env.folder.write(env.objects([_server_policy(revision)]))
                stop.wait(0.02)  # about 50 rewrites per second: each one drops the verdict caches

        floods = [subprocess.Popen(env.lab.host_command(pod, [sys.executable, FLOOD, env.ip(pod), server,
                                                              str(FLOOD_SECONDS)]),
                                   stdout=subprocess.PIPE, text=True) for pod in FLOODERS]
        rewriter = threading.Thread(target=rewrite_policies, daemon=True)
        rewriter.start()
        results: list[bool] = []
        try:
            started = time.monotonic()
            while time.monotonic() - started < FLOOD_SECONDS:
                probes = [Probe(client, server, 80, "TCP") for client in CLIENTS for _ in range(10)]
                results += env.lab.probe_many(probes, timeout=1.0)
        finally:
            stop.set()
            rewriter.join()
            sent = [json.loads(flood.communicate(timeout=60)[0]) for flood in floods]
        rate = sum(s["sent"] for s in sent) / FLOOD_SECONDS
        # Each counter is absent without its feature (the limit; the memory): none counted.
        limited = env.counter_packets("new-flows-limited") or 0
        remembered = env.counter_packets("remembered-dropped") or 0
        print(f"flood: {rate:.0f} new flows/s; allowed connections: {results.count(True)} of {len(results)}; "
              f"limited: {limited:.0f}; dropped by the memory: {remembered:.0f}")
        assert results and all(results), f"{results.count(False)} of {len(results)} allowed connections failed"
        # Most of the flood never reached the queue.
        assert limited + remembered > 0.5 * sum(s["sent"] for s in sent)
        assert (remembered > 0) is memory
