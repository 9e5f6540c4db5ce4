"""`kube-netpol conformance run --mode dataplane`: a scenario end to end, and offline/dataplane disagreement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_agentlab import requires_root

from kube_netpol.tools.conformance import dataplane
from kube_netpol.tools.conformance.backend import BackendSetup
from kube_netpol.tools.conformance.runner import EXIT_MISMATCH, prepare, run

pytestmark = requires_root

#: Pods added and deleted between steps, dual-stack, an external, TCP, UDP and SCTP.
SCENARIO = """
name: e2e-dataplane-lifecycle
cluster:
  model: {namespaces: [x, y], pods: [a, b], ports: [80], protocols: [TCP, UDP, SCTP], ipFamilies: [IPv4, IPv6]}
  externals:
    - {name: ext, ips: ["192.168.200.10", "fd00:200::10"]}
steps:
  - name: x/a admits only y
    apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: from-y, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]
    expect:
      - {port: 80, protocol: TCP, default: allow, overrides: [{from: "*", to: x/a, allowed: false}, {from: "y/*", to: x/a, allowed: true}]}
      - {port: 80, protocol: SCTP, family: IPv6, default: allow, overrides: [{from: "*", to: x/a, allowed: false}, {from: "y/*", to: x/a, allowed: true}]}
  - name: a new pod in y is admitted, y/b goes away
    delete:
      - {kind: Pod, namespace: y, name: b}
    apply:
      - {apiVersion: v1, kind: Pod, metadata: {name: c, namespace: y, labels: {pod: c}}}
    expect:
      - {port: 80, protocol: UDP, family: IPv6, default: allow, overrides: [{from: "*", to: x/a, allowed: false}, {from: "y/*", to: x/a, allowed: true}]}
"""


@pytest.fixture
def scenario_file(tmp_path: Path) -> Path:
    path = tmp_path / "lifecycle.yaml"
    path.write_text(SCENARIO)
    return path


def test_a_scenario_passes_in_dataplane_mode(scenario_file: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = subprocess.run(
        [sys.executable, "-m", "kube_netpol", "conformance", "run", str(scenario_file), "--mode", "dataplane",
         "--json", str(report)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(report.read_text())
    assert document["mode"] == "dataplane"
    assert document["summary"] == {"scenarios": 1, "passed": 1, "failed": 0, "probes": 48, "mismatches": 0}


def test_a_disagreement_with_the_offline_engine_fails_the_scenario(scenario_file: Path) -> None:
    """The dataplane matches the expectations, but an offline answer is wrong: still exit status 1."""

    def sabotaged(setup: BackendSetup) -> dataplane.DataplaneBackend:
        backend = dataplane.create_backend(setup)
        honest = backend.offline.run

        def offline_run(probes):  # type: ignore[no-untyped-def]
            answers = honest(probes)
            return [not answer if p.src == "ext" and p.dst == "y/a" else answer for p, answer in zip(probes, answers)]

        backend.offline.run = offline_run  # type: ignore[method-assign]
        return backend

    entries, _ = prepare([scenario_file])
    outcome = run(entries, "dataplane", sabotaged)
    (scenario,) = outcome.scenarios
    assert outcome.exit_code == EXIT_MISMATCH
    assert scenario.mismatches == 0  # the dataplane itself was right
    assert scenario.error is not None and "disagree on 3 probe(s)" in scenario.error
    assert "ext (192.168.200.10) -> y/a (10.244.2.10) TCP/80: dataplane allowed, offline blocked" in scenario.error
