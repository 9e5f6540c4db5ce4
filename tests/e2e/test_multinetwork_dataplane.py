"""Secondary networks with the real agent in the lab: rules in the pod's namespace come and go, strict mode cuts.

Runs a planned scenario through the conformance dataplane backend (the agent with
the multinetwork plugin, the lab's bridge segments) and looks inside the pods'
namespaces.
"""

from __future__ import annotations

import socket
import textwrap
from pathlib import Path

from e2e_agentlab import requires_root

from kube_netpol.agent.cleanup import cleanup_pod_namespaces
from kube_netpol.dataplane.netns import run_in_netns
from kube_netpol.dataplane.secondary import Diverted, SecondaryRules
from kube_netpol.tools.conformance.dataplane import DataplaneBackend
from kube_netpol.tools.conformance.plan import plan_scenario
from kube_netpol.tools.conformance.scenario import load_scenario

SCENARIO = """\
name: multinetwork-rules-lifecycle
cluster:
  model: {namespaces: [x], pods: [a, b], ports: [80], protocols: [TCP], networks: [default/macvlan1]}
  networks:
    - {name: macvlan1, type: macvlan}
steps:
  - name: x/a admits x/b on macvlan1
    apply:
      - apiVersion: k8s.cni.cncf.io/v1beta1
        kind: MultiNetworkPolicy
        metadata: {name: deny-a, namespace: x, annotations: {k8s.v1.cni.cncf.io/policy-for: default/macvlan1}}
        spec:
          podSelector: {matchLabels: {pod: a}}
          ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]
    expect:
      - {port: 80, protocol: TCP, network: default/macvlan1, default: allow}
  - name: deny ingress into x/a on macvlan1
    apply:
      - apiVersion: k8s.cni.cncf.io/v1beta1
        kind: MultiNetworkPolicy
        metadata: {name: deny-a, namespace: x, annotations: {k8s.v1.cni.cncf.io/policy-for: default/macvlan1}}
        spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
    expect:
      - {port: 80, protocol: TCP, network: default/macvlan1, default: allow, overrides: [{from: x/b, to: x/a, allowed: false}]}
  - name: the policy goes
    delete:
      - {kind: MultiNetworkPolicy, namespace: x, name: deny-a}
    expect:
      - {port: 80, protocol: TCP, network: default/macvlan1, default: allow}
  - name: back, then x/a goes
    apply:
      - apiVersion: k8s.cni.cncf.io/v1beta1
        kind: MultiNetworkPolicy
        metadata: {name: deny-a, namespace: x, annotations: {k8s.v1.cni.cncf.io/policy-for: default/macvlan1}}
        spec: {podSelector: {matchLabels: {pod: a}}, policyTypes: [Ingress]}
    expect:
      - {port: 80, protocol: TCP, network: default/macvlan1, default: allow, overrides: [{from: x/b, to: x/a, allowed: false}]}
"""


def _echo(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except OSError:
        return False


pytestmark = requires_root


def test_rules_follow_policies_and_strict_mode_cuts_on_a_secondary_network(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SCENARIO))
    plan = plan_scenario(load_scenario(path))
    backend = DataplaneBackend(plan.setup)
    rules = SecondaryRules()
    try:
        backend.apply(plan.setup_change)
        a_netns = "/run/netns/" + backend.lab.host("x/a").netns
        assert not rules.present(a_netns)  # no policy selects x/a yet: nothing installed
        backend.apply(plan.steps[0].change)  # x/a is selected (x/b admitted): its rules appear
        assert rules.present(a_netns)
        # An established connection x/b -> x/a over macvlan1, judged and tracked in x/a's namespace.
        client = run_in_netns("/run/netns/" + backend.lab.host("x/b").netns, lambda: socket.create_connection(
            ("10.101.1.10", 80), timeout=2, source_address=("10.101.1.11", 0)))
        assert _echo(client)

        backend.apply(plan.steps[1].change)  # deny ingress into x/a: strict mode cuts the established one
        client.settimeout(1.5)
        assert not _echo(client), "strict mode left a denied connection on the secondary network open"
        client.close()
        assert backend.run(plan.steps[1].probe_sets[0].probes) == list(plan.steps[1].probe_sets[0].expected)

        backend.apply(plan.steps[2].change)  # the policy goes: so do the rules
        assert not rules.present(a_netns)
        backend.apply(plan.steps[3].change)
        assert rules.present(a_netns)
        # A fail-closed agent that stops removes its rules (a fail-open one keeps them, bypassing) ...
        assert backend.agent.stop() == 0
        assert not rules.present(a_netns)
        # ... and `kube-netpol cleanup --pod-netns-dir` removes what a fail-open agent left.
        rules.install(a_netns, [Diverted("net1", 101)], bypass=True)
        assert cleanup_pod_namespaces(str(backend._links.directory)) == (
            "removed the secondary-network chain from 1 pod namespace(s): x_a")
        assert not rules.present(a_netns)
    finally:
        backend.close()
