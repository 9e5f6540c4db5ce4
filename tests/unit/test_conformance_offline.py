"""The offline backend: each probe's first packet judged by the engine the agent builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from kube_netpol.api.packet import IPPROTO_SCTP, IPPROTO_UDP
from kube_netpol.cli import main
from kube_netpol.tools.conformance.offline import packet_of
from kube_netpol.tools.conformance.probes import Probe

SCENARIO = """\
name: offline-check
cluster:
  model: {namespaces: [x, y], pods: [a, b], ports: [80], protocols: [TCP]}
  externals: [{name: ext, ips: ["192.168.200.10"]}]
steps:
  - name: an invalid policy is ignored
    apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: broken, namespace: x}
        spec: {podSelector: {}, policyTypes: [Sideways]}
    expect:
      - {port: 80, protocol: TCP, default: allow, to: ["*", ext]}
  - name: x/a admits only pods labelled role=client, and may only reach the external
    apply:
      - apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: a-policy, namespace: x}
        spec:
          podSelector: {matchLabels: {pod: a}}
          policyTypes: [Ingress, Egress]
          ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {role: client}}}]}]
          egress: [{to: [{ipBlock: {cidr: 192.168.200.0/24}}]}]
    expect:
      - port: 80
        protocol: TCP
        to: ["*", ext]
        default: allow
        overrides:
          - {from: "*", to: x/a, allowed: false}
          - {from: x/a, to: "*", allowed: false}
          - {from: x/a, to: ext, allowed: true}
  - name: relabelling y/b as a client lets it in
    apply:
      - {apiVersion: v1, kind: Pod, metadata: {name: b, namespace: y, labels: {role: client}}}
    expect:
      - port: 80
        protocol: TCP
        default: allow
        overrides:
          - {from: "*", to: x/a, allowed: false}
          - {from: y/b, to: x/a, allowed: {relabel_allows}}
          - {from: x/a, to: "*", allowed: false}
"""


def write(tmp_path: Path, relabel_allows: str = "true") -> Path:
    path = tmp_path / "offline.yaml"
    path.write_text(SCENARIO.replace("{relabel_allows}", relabel_allows))
    return path


def test_packet_of_a_probe() -> None:
    probe = Probe("x/a", "y/b", "fd00:10:244:1::10", "fd00:10:244:2::11", 8080, "SCTP", "IPv6")
    packet = packet_of(probe, 3)
    assert (packet.family, packet.protocol, packet.src_port, packet.dst_port) == (6, IPPROTO_SCTP, 40003, 8080)
    assert str(packet.src_ip) == "fd00:10:244:1::10" and str(packet.dst_ip) == "fd00:10:244:2::11"
    packet = packet_of(Probe("ext", "x/a", "192.168.200.10", "10.244.1.10", 53, "UDP", "IPv4"), 20001)
    assert (packet.family, packet.protocol, packet.src_port) == (4, IPPROTO_UDP, 40001)


def test_offline_scenario_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "run", str(write(tmp_path)), "--mode", "offline"]) == 0
    out = capsys.readouterr().out
    assert "PASS offline-check: 3 steps" in out
    # The state refused the invalid policy, and the report says so.
    assert "note: step 1 'an invalid policy is ignored': NetworkPolicy x/broken refused:" in out


def test_offline_mismatch_is_explained(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conformance", "run", str(write(tmp_path, relabel_allows="false"))]) == 1
    out = capsys.readouterr().out
    assert "FAIL offline-check: 1 of" in out
    assert "y/b (10.244.2.11) -> x/a (10.244.1.10) TCP/80: expected blocked, observed allowed; egress: " in out
    assert "ingress: networkpolicy ACCEPT x/a-policy" in out
