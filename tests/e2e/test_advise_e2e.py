"""`kube-netpol advise` end to end in the lab: workloads talk while the real agent runs in audit mode
and records every connection; advise writes policies from those records (and --verify accepts them);
an enforcing agent applies them; the same traffic still passes and what was never observed is denied."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path
from typing import Any

import yaml
from e2e_agentlab import NODE, agent_lab, requires_root

from kube_netpol.advise.flows import distinct_flows, read_records
from kube_netpol.cli import main
from kube_netpol.tools.conformance.dataplane_agent import AgentProcess
from kube_netpol.tools.lab import Probe

pytestmark = requires_root

PODS = {
    "shop/web-5d8f7c9b4-q2x7z": ["10.244.1.10"],
    "shop/web-5d8f7c9b4-h8k3m": ["10.244.1.11"],
    "shop/db-0": ["10.244.1.20"],
    "ops/report-28000000-x9v4c": ["10.244.2.10"],
}
EXTERNAL = "ext"  # a host that is not a pod
EXTERNAL_IP = "10.250.0.9"
WEB_A, WEB_B, DB, REPORT = PODS
WEB_PORT, DB_PORT = 80, 5432


def objects(policies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The lab's pods as their controllers make them (owners, controller labels, named ports), and ``policies``."""

    def pod(key: str, labels: dict[str, str], owner: tuple[str, str, str], port: tuple[str, int]) -> dict[str, Any]:
        namespace, name = key.split("/")
        api, kind, owner_name = owner
        return {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels, "ownerReferences": [
                {"apiVersion": api, "kind": kind, "name": owner_name, "uid": f"uid-{owner_name}", "controller": True}]},
            "spec": {"nodeName": NODE, "containers": [{"name": "main", "image": "agnhost", "ports": [
                {"name": port[0], "containerPort": port[1]}]}]},
            "status": {"phase": "Running", "podIP": PODS[key][0], "podIPs": [{"ip": PODS[key][0]}]},
        }  # fmt: skip

    web = {"app": "web", "pod-template-hash": "5d8f7c9b4"}
    return [
        *({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}}}
          for ns in ("ops", "shop")),
        pod(WEB_A, web, ("apps/v1", "ReplicaSet", "web-5d8f7c9b4"), ("http", WEB_PORT)),
        pod(WEB_B, web, ("apps/v1", "ReplicaSet", "web-5d8f7c9b4"), ("http", WEB_PORT)),
        pod(DB, {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0", "controller-revision-hash": "db-6c5f"},
            ("apps/v1", "StatefulSet", "db"), ("pg", DB_PORT)),
        pod(REPORT, {"app": "report", "batch.kubernetes.io/job-name": "report-28000000", "controller-uid": "c1"},
            ("batch/v1", "Job", "report-28000000"), ("metrics", 9100)),
        *policies,
    ]


#: While observing: every pod of both namespaces selected both ways, so that its connections are judged
#: and recorded (audit mode lets them all through).
OBSERVE = [{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "observe", "namespace": ns},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}} for ns in ("ops", "shop")]


def observed(log_path: Path) -> list[dict[str, Any]]:
    if not log_path.exists():
        return []
    return [json.loads(line) for line in log_path.read_text().splitlines()
            if line.startswith("{") and json.loads(line).get("msg", "").startswith("connection")]


def test_advise_from_audit_records_keeps_the_traffic_and_denies_the_rest(tmp_path: Path) -> None:
    decisions = tmp_path / "decisions.jsonl"
    with agent_lab({}, served=((WEB_PORT, "TCP"), (DB_PORT, "TCP")),
                   extra_args=["--audit", "--decision-log", str(decisions), "--decision-log-rate", "1000"]) as env:
        for key, ips in [*PODS.items(), (EXTERNAL, [EXTERNAL_IP])]:
            env.lab.add_host(key, ips)
        env.pods = dict(PODS)
        env.agent.wait_enforced(env.folder.write(objects(OBSERVE)))

        def ip(host: str) -> str:
            return EXTERNAL_IP if host == EXTERNAL else PODS[host][0]

        traffic = [Probe(WEB_A, ip(DB), DB_PORT, "TCP"), Probe(WEB_B, ip(DB), DB_PORT, "TCP"),
                   Probe(REPORT, ip(DB), DB_PORT, "TCP"), Probe(EXTERNAL, ip(WEB_A), WEB_PORT, "TCP"),
                   Probe(EXTERNAL, ip(WEB_B), WEB_PORT, "TCP"), Probe(REPORT, ip(EXTERNAL), WEB_PORT, "TCP")]
        never = [Probe(REPORT, ip(WEB_A), WEB_PORT, "TCP"), Probe(DB, ip(WEB_A), WEB_PORT, "TCP"),
                 Probe(EXTERNAL, ip(DB), DB_PORT, "TCP"), Probe(WEB_A, ip(EXTERNAL), WEB_PORT, "TCP")]
        # Audit mode: the observe policies deny everything, and everything passes.
        assert env.lab.probe_many(traffic) == [True] * len(traffic)
        deadline = time.monotonic() + 10
        while len({(r["src_ip"], r["dst_ip"], r["dst_port"]) for r in observed(decisions)}) < len(traffic):
            assert time.monotonic() < deadline, observed(decisions)
            time.sleep(0.1)
        records = observed(decisions)
        assert all(r["audit"] is True and r["verdict"] == "deny" for r in records)
        to_db = next(r for r in records if r["dst_ip"] == ip(DB))
        assert (to_db["dst_owner"], to_db["dst_port_name"]) == ("StatefulSet/db", "pg")

        proposal = tmp_path / "policies.yaml"
        assert main(["advise", "--from-decisions", str(decisions), "--verify", "--output", str(proposal)]) == 0
        policies = list(yaml.safe_load_all(proposal.read_text()))
        assert sorted(p["metadata"]["name"] for p in policies) == ["cronjob-report", "deployment-web", "statefulset-db"]

        # Enforce: the audit agent makes way for an enforcing one, with the proposal and without the observe policies.
        env.agent.stop()
        enforcing_log = env.folder.path.parent / f"{env.folder.path.name}-enforcing.log"
        denials = tmp_path / "denials.jsonl"
        env.agent = AgentProcess(env.lab, env.folder.path, enforcing_log, node_name=NODE, table=env.agent.table,
                                 extra_args=["--decision-log", str(denials), "--decision-log-denied-only"])
        try:
            env.agent.wait_enforced(env.folder.write(objects(policies)), timeout=20)
            assert env.lab.probe_many(traffic) == [True] * len(traffic), env.agent.log_tail()
            assert env.lab.probe_many(never) == [False] * len(never), env.agent.log_tail()
            # Denied by the proposed policies, each by the policy of the workload it concerns.
            deadline = time.monotonic() + 10
            while {(r["src_ip"], r["dst_ip"]) for r in observed(denials)} != {(ip(p.src), p.dst_ip) for p in never}:
                assert time.monotonic() < deadline, observed(denials)
                time.sleep(0.1)
            deciders = {(r["src"], r["dst"]): {r["egress"]["policy"], r["ingress"]["policy"]} - {""}
                        for r in observed(denials)}
            assert deciders == {
                (REPORT, WEB_A): {"ops/cronjob-report", "shop/deployment-web"},  # neither side allows it
                (DB, WEB_A): {"shop/statefulset-db", "shop/deployment-web"},
                (EXTERNAL_IP, DB): {"shop/statefulset-db"},
                (WEB_A, EXTERNAL_IP): {"shop/deployment-web"},
            }, deciders
        finally:
            env.agent.stop()
            enforcing_log.unlink(missing_ok=True)


def test_the_documented_example_records_come_from_the_lab(tmp_path: Path) -> None:
    """docs/advise.md's decision records are what scripts/advise_example.py records with the real agent:
    the same connections (addresses, ports, pods, labels, owners, port names), other times and source ports."""
    repo = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("advise_example", repo / "scripts" / "advise_example.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    fresh = tmp_path / "decisions.jsonl"
    assert example.record(fresh) == len(example.TRAFFIC)

    def connections(path: Path) -> list[Any]:
        return [(f.src, f.dst, f.protocol, f.dst_port, f.dst_port_name, f.passed)
                for f in distinct_flows(read_records(path.read_text().splitlines()).flows)]

    assert connections(fresh) == connections(repo / "docs" / "examples" / "advise" / "decisions.jsonl")
