"""The real agent finds attached pods' namespaces as on a node: by the pod's UID in processes' cgroups.

The agent runs with ``--pod-netns-lookup cgroup`` (``--host-proc /proc``) in the
lab; the test plays the container runtime: for each pod it makes a cgroup
named as kubelet names a pod's (cgroup v2 systemd slice, cgroup v1 cgroupfs
path) and starts a process in it inside the pod's lab namespace. Shown:

- the agent installs the chain in the namespace of the pod's process and
  enforces there (real probes agree with the engine);
- the pod's sandbox recreated (its process now in another namespace): the
  periodic recheck moves the rules;
- a selected pod with no process: a log line, /statusz lists it, the revision
  is not reported enforced; once its process appears it is enforced, and strict
  mode cuts what was established to it meanwhile.
"""

from __future__ import annotations

import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Callable

import pytest
from e2e_agentlab import requires_root
from e2e_cgroups import RuntimePods, cgroup1_root, cgroup2_root

from kube_netpol.dataplane.netns import run_in_netns
from kube_netpol.dataplane.secondary import SecondaryRules
from kube_netpol.tools.conformance.cluster import pod_uid
from kube_netpol.tools.conformance.dataplane import DataplaneBackend
from kube_netpol.tools.conformance.plan import plan_scenario
from kube_netpol.tools.conformance.scenario import load_scenario

POLICY = """\
      - apiVersion: k8s.cni.cncf.io/v1beta1
        kind: MultiNetworkPolicy
        metadata: {{name: from-b, namespace: x, annotations: {{k8s.v1.cni.cncf.io/policy-for: default/macvlan1}}}}
        spec:
          podSelector: {{matchExpressions: [{{key: pod, operator: In, values: [{selected}]}}]}}
          ingress: [{{from: [{{podSelector: {{matchLabels: {{pod: b}}}}}}]}}]
"""
SCENARIO = f"""\
name: multinetwork-cgroup-lookup
cluster:
  model: {{namespaces: [x], pods: [a, b, c, d], ports: [80], protocols: [TCP], networks: [default/macvlan1]}}
  networks:
    - {{name: macvlan1, type: macvlan}}
steps:
  - name: x/a admits only x/b on macvlan1
    apply:
{POLICY.format(selected="a")}
    expect:
      - {{port: 80, protocol: TCP, network: default/macvlan1, default: allow,
         overrides: [{{from: x/c, to: x/a, allowed: false}}, {{from: x/d, to: x/a, allowed: false}}]}}
  - name: x/c too
    apply:
{POLICY.format(selected="a, c")}
    expect:
      - {{port: 80, protocol: TCP, network: default/macvlan1, default: allow,
         overrides: [{{from: x/c, to: x/a, allowed: false}}, {{from: x/d, to: x/a, allowed: false}},
                     {{from: x/a, to: x/c, allowed: false}}, {{from: x/d, to: x/c, allowed: false}}]}}
"""

pytestmark = [*requires_root, pytest.mark.skipif(cgroup2_root() is None or cgroup1_root() is None,
                                                 reason="needs a cgroup v2 and a cgroup v1 hierarchy")]


def _wait(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def _echo(sock: socket.socket) -> bool:
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except OSError:
        return False


def test_the_agent_finds_pods_by_uid_in_cgroups_follows_a_new_sandbox_and_waits_for_a_missing_one(
        tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent(SCENARIO))
    plan = plan_scenario(load_scenario(path))
    backend = DataplaneBackend(plan.setup, pod_netns_lookup="cgroup")
    runtime = RuntimePods()
    rules = SecondaryRules()
    decoy = f"knp-sandbox-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", decoy], check=True, capture_output=True)
    try:
        backend.apply(plan.setup_change)
        netns = {key: "/run/netns/" + backend.lab.host(key).netns for key in ("x/a", "x/b", "x/c", "x/d")}
        a_cgroup = runtime.cgroup(pod_uid("x/a"), driver="systemd", version=2)
        # x/a's first sandbox: a namespace of its own (then "recreated" in its lab namespace).
        old_sandbox = runtime.start(a_cgroup, f"/run/netns/{decoy}")
        runtime.start(runtime.cgroup(pod_uid("x/b"), driver="cgroupfs", version=1), netns["x/b"])
        runtime.start(runtime.cgroup(pod_uid("x/d"), driver="systemd", version=2, qos="burstable",
                                     runtime="crio"), netns["x/d"])

        backend.apply(plan.steps[0].change)
        assert rules.present(f"/run/netns/{decoy}") and not rules.present(netns["x/a"])

        # The sandbox is recreated: the process now lives in x/a's (lab) namespace, the old one is gone.
        runtime.start(a_cgroup, netns["x/a"])
        runtime.stop(old_sandbox)
        diverted = "pod x/a: secondary interfaces net1 (default/macvlan1) diverted"  # logged once installed
        _wait(lambda: backend.agent.log_text().count(diverted) == 2, "x/a set up again")
        assert rules.present(netns["x/a"]) and not rules.present(f"/run/netns/{decoy}")
        assert "pod x/a: its network namespace changed" in backend.agent.log_text()
        probes = plan.steps[0].probe_sets[0]
        assert backend.run(probes.probes) == list(probes.expected)

        # x/c becomes selected, but no process of it is visible yet.
        c_ip = backend.lab.host("x/c").secondary[0]
        d_ip = backend.lab.host("x/d").secondary[0]
        # Connections in x/c's namespace are tracked already (as where any rule there uses conntrack): the
        # chain installed later lets its established ones through, only strict mode cuts them.
        subprocess.run(["nsenter", f"--net={netns['x/c']}", "iptables", "-w", "-t", "filter", "-A", "INPUT",
                        "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP"], check=True, capture_output=True)
        early = run_in_netns(netns["x/d"], lambda: socket.create_connection(
            (c_ip, 80), timeout=2, source_address=(d_ip, 0)))
        assert _echo(early)
        applied: list[BaseException | None] = []
        applying = threading.Thread(target=lambda: applied.append(_apply(backend, plan.steps[1].change)))
        applying.start()
        try:
            _wait(lambda: f"pod x/c: its network namespace is not found (no process under /proc in a kubepods "
                          f"cgroup of pod UID {pod_uid('x/c')}" in backend.agent.log_text(), "the log line", 8.0)
            status = backend.agent.status()
            assert status is not None and status["secondary_networks"]["not_found"] == ["x/c"]
            assert not rules.present(netns["x/c"])
            time.sleep(1.0)
            assert applying.is_alive()  # the agent does not report the revision enforced
        finally:
            runtime.start(runtime.cgroup(pod_uid("x/c"), driver="cgroupfs", version=1, qos="guaranteed"),
                          netns["x/c"])
            applying.join(30)
        assert applied == [None]
        assert rules.present(netns["x/c"])
        # Set up late, x/c's connections from before were judged by strict mode: d -> c is denied.
        early.settimeout(1.5)
        _wait(lambda: not _echo(early), "strict mode cut x/d -> x/c", 5.0)
        early.close()
        probes = plan.steps[1].probe_sets[0]
        assert backend.run(probes.probes) == list(probes.expected)
    finally:
        try:
            backend.close()
        finally:
            runtime.close()
            subprocess.run(["ip", "netns", "delete", decoy], check=False, capture_output=True)


def _apply(backend: DataplaneBackend, change: object) -> BaseException | None:
    try:
        backend.apply(change)  # type: ignore[arg-type]
        return None
    except BaseException as err:  # noqa: BLE001 - handed to the test's thread
        return err
