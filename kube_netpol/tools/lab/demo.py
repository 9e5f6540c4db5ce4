"""`kube-netpol lab demo`: the real agent enforcing a NetworkPolicy between network namespaces.

Builds a lab of nine pods (namespaces x, y, z; pods a, b, c), starts the
agent in the node namespace reading a manifests folder, prints the TCP/80
truth table, writes a policy into the folder (deny all ingress to x except
from y), prints the table again and tears everything down. The tables are
real connections, in the format of the conformance report.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

import yaml

from kube_netpol.tools.conformance.dataplane import DataplaneBackend
from kube_netpol.tools.conformance.plan import plan_scenario
from kube_netpol.tools.conformance.report import ALLOWED_MARK, BLOCKED_MARK, render_table
from kube_netpol.tools.conformance.scenario import parse_scenario

POLICY: dict[str, Any] = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "NetworkPolicy",
    "metadata": {"name": "allow-from-y-only", "namespace": "x"},
    "spec": {
        "podSelector": {},
        "policyTypes": ["Ingress"],
        "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}],
    },
}

#: The demo as a scenario (SCENARIO_FORMAT.md), so its expectations are checked like any other.
SCENARIO: dict[str, Any] = {
    "name": "lab-demo",
    "cluster": {"model": {"namespaces": ["x", "y", "z"], "pods": ["a", "b", "c"], "ports": [80], "protocols": ["TCP"]}},
    "steps": [
        {
            "name": "no policy: every pod reaches every pod",
            "expect": [{"port": 80, "protocol": "TCP", "default": "allow"}],
        },
        {
            "name": "deny all ingress to x except from y",
            "apply": [POLICY],
            "expect": [
                {
                    "port": 80,
                    "protocol": "TCP",
                    "default": "allow",
                    "overrides": [
                        {"from": "*", "to": "x/*", "allowed": False},
                        {"from": "y/*", "to": "x/*", "allowed": True},
                    ],
                }
            ],
        },
    ],
}


def run_demo(out: TextIO = sys.stdout, probe_timeout: float = 1.0) -> int:
    """Run the demo, printing to ``out``; 0 when every table came out as expected."""
    if os.geteuid() != 0:
        print("kube-netpol lab demo: needs root (it creates network namespaces)", file=sys.stderr)
        return 2
    plan = plan_scenario(parse_scenario(SCENARIO, "kube-netpol lab demo"))
    started = time.monotonic()

    def say(text: str = "") -> None:
        print(text, file=out, flush=True)

    backend = DataplaneBackend(plan.setup, probe_timeout=probe_timeout, lab_prefix="knldemo")
    all_expected = True
    try:
        lab, agent = backend.lab, backend.agent
        say(f"lab {lab.lab_id}: node namespace {lab.node_netns}, {len(lab.hosts)} pods")
        say(f"agent (pid {agent.process.pid}) in the node namespace: kube-netpol {' '.join(agent.argv[3:])}")
        backend.apply(plan.setup_change)
        status = agent.status() or {}
        say(f"agent ready, queue backend {status.get('queue_backend', '?')}")
        for number, step in enumerate(plan.steps, start=1):
            say()
            say(f"step {number}: {step.name}")
            for obj in step.change.applies:
                say(f"adding to the agent's manifests ({backend.manifests_file}):")
                say("  " + yaml.safe_dump(obj, sort_keys=False).rstrip().replace("\n", "\n  "))
            backend.apply(step.change)
            for probe_set in step.probe_sets:
                observed = backend.run(list(probe_set.probes))
                cells = {(p.src, p.dst): seen for p, seen in zip(probe_set.probes, observed)}
                say(f"{probe_set.label} (rows: from, columns: to; {ALLOWED_MARK} connected, {BLOCKED_MARK} blocked):")
                for line in render_table(
                    probe_set.sources,
                    probe_set.destinations,
                    lambda src, dst, cells=cells: (  # type: ignore[misc]
                        "-" if (src, dst) not in cells else ALLOWED_MARK if cells[src, dst] else BLOCKED_MARK
                    ),
                    indent="  ",
                ):
                    say(line)
                wrong = [p for p, seen, want in zip(probe_set.probes, observed, probe_set.expected) if seen != want]
                all_expected = all_expected and not wrong
                say("  as expected" if not wrong else f"  {len(wrong)} connection(s) differ from the expectation")
    finally:
        backend.close()
    say()
    say(f"lab torn down; demo took {time.monotonic() - started:.1f} s")
    return 0 if all_expected else 1
