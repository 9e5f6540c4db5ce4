"""`kube-netpol advise --from-decisions`: grouping by owner, label choice, each kind of peer, named
ports, DNS, determinism, and --verify catching what a proposal breaks."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from advise_helpers import Recorder, namespace, observe_everything, pod
from kube_netpol.advise.flows import parse_record, read_records
from kube_netpol.advise.from_flows import propose_from_flows
from kube_netpol.advise.model import NetworkPeer, PodPeer, Port, Selector, Workload
from kube_netpol.advise.options import DEFAULT_OPTIONS, AdviseOptions, WorkloadFilter
from kube_netpol.advise.owners import Owners
from kube_netpol.advise.render import network_policy
from kube_netpol.cli import main
from kube_netpol.policy.networkpolicy import parse_network_policy
from kube_netpol.tools.advise.verify import verify

WEB = Workload("Deployment", "shop", "web")
DB = Workload("StatefulSet", "shop", "db")
AGENT = Workload("DaemonSet", "ops", "agent")
REPORT = Workload("CronJob", "ops", "report")
MIGRATE = Workload("Job", "ops", "migrate")
DEBUG = Workload("Pod", "shop", "debug")
DNS = PodPeer(("kube-system",), Selector.of_labels({"k8s-app": "kube-dns"}))


def cluster() -> list[dict[str, Any]]:
    web = {"app": "web", "tier": "front"}
    return [
        namespace("shop"), namespace("ops"), namespace("kube-system"),
        pod("shop/web-5d8f7c9b4-aaaaa", "10.0.0.10", {**web, "pod-template-hash": "5d8f7c9b4", "app.kubernetes.io/version": "1.2"},
            "ReplicaSet/web-5d8f7c9b4", [("http", 8080, "TCP")]),
        pod("shop/web-5d8f7c9b4-bbbbb", "10.0.0.11", {**web, "pod-template-hash": "5d8f7c9b4", "app.kubernetes.io/version": "1.2"},
            "ReplicaSet/web-5d8f7c9b4", [("http", 8080, "TCP")]),
        # A pod of the next revision, mid-rollout: another ReplicaSet of the same Deployment.
        pod("shop/web-6c9d8e7f1-ccccc", "10.0.0.12", {**web, "pod-template-hash": "6c9d8e7f1", "app.kubernetes.io/version": "1.3"},
            "ReplicaSet/web-6c9d8e7f1", [("http", 8080, "TCP")]),
        pod("shop/db-0", "10.0.0.20", {"app": "db", "statefulset.kubernetes.io/pod-name": "db-0",
                                       "apps.kubernetes.io/pod-index": "0", "controller-revision-hash": "db-7f9c"},
            "StatefulSet/db", [("pg", 5432, "TCP")]),
        pod("ops/agent-x7k2p", ["10.0.1.30", "fd00::30"], {"app": "agent", "controller-revision-hash": "66b",
                                                           "pod-template-generation": "3"}, "DaemonSet/agent"),
        pod("ops/report-28000000-abcde", "10.0.1.40", {"app": "report", "job-name": "report-28000000",
                                                       "batch.kubernetes.io/job-name": "report-28000000",
                                                       "controller-uid": "c1", "batch.kubernetes.io/controller-uid": "c1"},
            "Job/report-28000000"),
        pod("ops/migrate-q8z4d", "10.0.1.41", {"job-name": "migrate", "batch.kubernetes.io/job-name": "migrate",
                                               "controller-uid": "c2", "batch.kubernetes.io/controller-uid": "c2"},
            "Job/migrate"),
        pod("shop/debug", "10.0.0.50", {"run": "debug"}),
        pod("shop/nolabels", "10.0.0.51"),
        pod("kube-system/coredns-abc12-zzzzz", "10.0.2.53", {"k8s-app": "kube-dns", "pod-template-hash": "abc12"},
            "ReplicaSet/coredns-abc12", [("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")]),
        *observe_everything(["shop", "ops", "kube-system"]),
    ]  # fmt: skip


@pytest.fixture
def recorder() -> Recorder:
    r = Recorder(cluster())
    for web in ("shop/web-5d8f7c9b4-aaaaa", "shop/web-5d8f7c9b4-bbbbb", "shop/web-6c9d8e7f1-ccccc"):
        r.connect(web, "shop/db-0", 5432)
        r.connect(web, "kube-system/coredns-abc12-zzzzz", 53, "UDP")
    r.connect("shop/web-5d8f7c9b4-aaaaa", "kube-system/coredns-abc12-zzzzz", 53, "TCP")
    r.connect("192.0.2.10", "shop/web-5d8f7c9b4-aaaaa", 8080)
    r.connect("shop/db-0", "203.0.113.5", 443)
    r.connect("ops/agent-x7k2p", "203.0.113.5", 443)
    r.connect("ops/agent-x7k2p", "203.0.113.9", 443)
    r.connect("fd00::30", "2001:db8::5", 443)
    r.connect("ops/report-28000000-abcde", "shop/db-0", 5432)
    r.connect("ops/migrate-q8z4d", "shop/db-0", 5432)
    r.connect("shop/debug", "shop/web-6c9d8e7f1-ccccc", 8080)
    r.connect("shop/debug", "shop/db-0", 9187)  # a port the receiver does not name
    r.connect("shop/nolabels", "shop/web-5d8f7c9b4-aaaaa", 8080)
    r.ping("shop/debug", "shop/db-0")
    return r


def flows_of(recorder: Recorder) -> list[Any]:
    return read_records(recorder.lines()).flows


def proposals(recorder: Recorder, options: AdviseOptions = DEFAULT_OPTIONS) -> dict[Workload, Any]:
    return {p.workload: p for p in propose_from_flows(flows_of(recorder), options).proposals}


def peer(namespace: str, **labels: str) -> PodPeer:
    return PodPeer((namespace,), Selector.of_labels(labels))


# --------------------------------------------------------------------------- grouping and labels


def test_pods_are_grouped_by_owner(recorder: Recorder) -> None:
    advice = propose_from_flows(flows_of(recorder))
    assert [p.workload for p in advice.proposals] == sorted([WEB, DB, AGENT, REPORT, MIGRATE, DEBUG])
    by = {p.workload: p for p in advice.proposals}
    assert "3 pod(s) observed" in by[WEB].notes  # two ReplicaSets, one Deployment
    assert any("pod-template-hash" in note for note in by[WEB].notes)
    assert any("CronJob naming convention" in note for note in by[REPORT].notes)
    # The DNS pods run in a system namespace; the pod without labels cannot be selected alone.
    assert any(note.startswith("Deployment kube-system/coredns: no policy") for note in advice.notes)
    assert any(note.startswith("Pod shop/nolabels: no label selects") for note in advice.notes)


def test_owner_objects_beat_naming_conventions() -> None:
    # A ReplicaSet named without the hash suffix: the convention cannot tell, its object can.
    owners = Owners({("ReplicaSet", "shop", "frontend-v2"): "Deployment/frontend",
                     ("Job", "ops", "report-28000000"): ""})
    assert owners.resolve("shop", "p", "ReplicaSet/frontend-v2", {"pod-template-hash": "x"}).workload == \
        Workload("Deployment", "shop", "frontend")
    # A Job that looks like a CronJob's but whose object says it has no controller stays a Job.
    assert owners.resolve("ops", "p", "Job/report-28000000", {}).workload == Workload("Job", "ops", "report-28000000")
    convention = Owners()
    assert convention.resolve("shop", "p", "ReplicaSet/frontend-v2", {"pod-template-hash": "x"}).workload == \
        Workload("ReplicaSet", "shop", "frontend-v2")
    assert convention.resolve("shop", "p", "Rollout/canary", {}).workload == Workload("Rollout", "shop", "canary")
    assert convention.resolve("shop", "p", "", {}).workload == Workload("Pod", "shop", "p")


def test_selectors_use_only_stable_labels(recorder: Recorder) -> None:
    by = proposals(recorder)
    assert by[WEB].selector == Selector.of_labels({"app": "web", "tier": "front"})  # no hash, no version
    assert by[DB].selector == Selector.of_labels({"app": "db"})  # no pod name, index or revision
    assert by[AGENT].selector == Selector.of_labels({"app": "agent"})
    assert by[REPORT].selector == Selector.of_labels({"app": "report"})  # no job name: it changes every run
    assert by[MIGRATE].selector == Selector.of_labels({"batch.kubernetes.io/job-name": "migrate"})
    assert by[DEBUG].selector == Selector.of_labels({"run": "debug"})


def test_a_declared_selector_wins_over_the_labels_pods_share(recorder: Recorder) -> None:
    declared = {WEB: Selector.of_labels({"app": "web"})}
    advice = propose_from_flows(flows_of(recorder), declared=declared)
    web = next(p for p in advice.proposals if p.workload == WEB)
    assert web.selector == Selector.of_labels({"app": "web"}) and "selected by the workload's spec.selector" in web.notes


# --------------------------------------------------------------------------------- peers and ports


def test_each_kind_of_peer(recorder: Recorder) -> None:
    by = proposals(recorder)
    web_peer = peer("shop", app="web", tier="front")
    assert (web_peer, Port("TCP", "pg")) in by[DB].ingress
    assert (peer("ops", app="report"), Port("TCP", "pg")) in by[DB].ingress  # another namespace, by its name label
    assert (peer("shop", app="db"), Port("TCP", "pg")) in by[WEB].egress
    assert (NetworkPeer("192.0.2.10/32"), Port("TCP", "http")) in by[WEB].ingress
    assert by[AGENT].egress == {(NetworkPeer("203.0.113.5/32"), Port("TCP", 443)),
                                (NetworkPeer("203.0.113.9/32"), Port("TCP", 443)),
                                (NetworkPeer("2001:db8::5/128"), Port("TCP", 443)),
                                (DNS, Port("UDP", 53)), (DNS, Port("TCP", 53))}
    # Direction: the receiver gets no egress back to its clients.
    assert not {p for p, _ in by[DB].egress} & {web_peer, peer("ops", app="report")}
    rule = network_policy(by[DB])["spec"]["ingress"]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
            "podSelector": {"matchLabels": {"app": "report"}}} in [p for r in rule for p in r["from"]]


def test_named_ports_when_the_receiver_declares_them(recorder: Recorder) -> None:
    by = proposals(recorder)
    assert (peer("shop", run="debug"), Port("TCP", "pg")) not in by[DB].ingress
    assert (peer("shop", run="debug"), Port("TCP", 9187)) in by[DB].ingress  # unnamed: a number
    assert (NetworkPeer("203.0.113.5/32"), Port("TCP", 443)) in by[DB].egress  # not a pod: a number
    assert (peer("shop", app="web", tier="front"), Port("TCP", "http")) in by[DEBUG].egress


def test_dns_egress_is_always_kept_and_observed_dns_goes_to_the_dns_peer(recorder: Recorder) -> None:
    by = proposals(recorder)
    for proposal in by.values():
        assert {(DNS, Port("UDP", 53)), (DNS, Port("TCP", 53))} <= proposal.egress, proposal.workload
    # The observed DNS flows named the coredns pods: they are the DNS peer, not a workload peer.
    assert not [p for p, _ in by[WEB].egress if isinstance(p, PodPeer) and p.namespaces == ("kube-system",) and p != DNS]


def test_aggregation_widens_and_merges_addresses(recorder: Recorder) -> None:
    agent = proposals(recorder, AdviseOptions(aggregate_v4=24, aggregate_v6=48))[AGENT]
    networks = sorted(str(p) for p, _ in agent.egress if isinstance(p, NetworkPeer))
    assert networks == ["2001:db8::/48", "203.0.113.0/24"]
    # Without aggregation adjacent addresses still merge, exactly.
    rules = propose_from_flows(
        flows_of(_two_neighbours()), AdviseOptions()).proposals[0].egress_rules()
    assert [str(p) for r in rules for p in r.peers if isinstance(p, NetworkPeer)] == ["198.51.100.4/31"]


def _two_neighbours() -> Recorder:
    r = Recorder([namespace("a"), pod("a/p", "10.1.0.1", {"app": "p"}), *observe_everything(["a"])])
    r.connect("a/p", "198.51.100.4", 443)
    r.connect("a/p", "198.51.100.5", 443)
    return r


def test_filters_choose_subjects_not_peers(recorder: Recorder) -> None:
    only_ops = proposals(recorder, AdviseOptions(filter=WorkloadFilter(frozenset({"ops"}))))
    assert set(only_ops) == {AGENT, REPORT, MIGRATE}
    assert (peer("shop", app="db"), Port("TCP", "pg")) in only_ops[REPORT].egress
    one = proposals(recorder, AdviseOptions(filter=WorkloadFilter(names=(WorkloadFilter.parse_workload("shop/statefulset/db"),))))
    assert set(one) == {DB}
    dns = proposals(recorder, AdviseOptions(filter=WorkloadFilter(names=(WorkloadFilter.parse_workload("deployment/coredns"),))))
    assert set(dns) == {Workload("Deployment", "kube-system", "coredns")}  # named: a system namespace's too


def test_what_never_happened_and_icmp_are_left_out() -> None:
    r = Recorder([namespace("a"), pod("a/p", "10.1.0.1", {"app": "p"}), pod("a/q", "10.1.0.2", {"app": "q"}),
                  *observe_everything(["a"])], audit=False)
    r.connect("a/p", "a/q", 80)  # denied in enforcing mode: it never happened
    r.ping("a/p", "a/q")
    read = read_records(r.lines())
    assert read.denied == 1
    advice = propose_from_flows(read.flows)
    assert advice.proposals == []  # the ping passed (audit=True for pings) but ICMP cannot be written
    assert any("ICMP" in note for note in advice.notes)


def test_only_decision_records_are_read() -> None:
    lines = ['{"time": "t", "level": "warning", "logger": "kube_netpol.decisions", "msg": "suppressed 5 decision records"}',
             '{"time": "t", "level": "info", "logger": "kube_netpol.agent", "msg": "ready"}',
             "2024-05-01 10:00:00 INFO ready", "", "{not json"]
    result = read_records(lines)
    assert (result.records, result.skipped) == (0, 4)
    assert parse_record('{"logger": "kube_netpol.decisions", "verdict": "allow", "src_ip": "x"}') is None


# ---------------------------------------------------------------------------- output and --verify


def run_advise(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["advise", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_output_is_deterministic_and_valid(recorder: Recorder, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = recorder.lines()
    one = tmp_path / "one.jsonl"
    one.write_text("\n".join(lines) + "\n")
    shuffled = lines[:]
    random.Random(7).shuffle(shuffled)
    # Another node's file: the same connections in another order, plus log lines between them.
    node_a, node_b = tmp_path / "node-a.jsonl", tmp_path / "node-b.jsonl"
    node_a.write_text("\n".join(shuffled[: len(shuffled) // 2]) + "\nI 10:00 kube_netpol.agent ready\n")
    node_b.write_text("\n".join(shuffled[len(shuffled) // 2:] + lines[:3]) + "\n")
    code1, first, _ = run_advise(capsys, "--from-decisions", str(one))
    code2, second, err = run_advise(capsys, "--from-decisions", str(node_a), str(node_b))
    assert code1 == code2 == 0
    assert first == second  # same flows, same bytes
    assert "1 other line(s) skipped" in err
    documents = list(yaml.safe_load_all(first))
    assert [d["metadata"]["name"] for d in documents] == [
        "cronjob-report", "daemonset-agent", "job-migrate", "deployment-web", "pod-debug", "statefulset-db"]
    assert [d["metadata"]["namespace"] for d in documents] == ["ops"] * 3 + ["shop"] * 3
    for document in documents:
        parse_network_policy(document)  # the agent's own parser: as strict as the API server
        assert document["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_verify_keeps_every_observed_flow_allowed(recorder: Recorder) -> None:
    flows = flows_of(recorder)
    advice = propose_from_flows(flows, AdviseOptions(filter=WorkloadFilter(frozenset({"shop", "ops"}))))
    result = verify(flows, [network_policy(p) for p in advice.proposals])
    denied = {(f.src.pod, f.dst.pod) for f, _ in result.denied}
    # Only the flow of the pod that no label selects breaks, and verify says so.
    assert denied == {(("shop", "nolabels"), ("shop", "web-5d8f7c9b4-aaaaa"))}
    assert result.portless == 1  # the ping
    assert len(result.allowed) == result.replayed - 1


def test_verify_catches_a_broken_proposal(recorder: Recorder) -> None:
    flows = flows_of(recorder)
    policies = {p["metadata"]["name"]: p for p in
                (network_policy(p) for p in propose_from_flows(flows).proposals)}
    broken = copy.deepcopy(policies)
    db = broken["statefulset-db"]["spec"]
    db["ingress"] = [rule for rule in db["ingress"]
                     if {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ops"}},
                         "podSelector": {"matchLabels": {"app": "report"}}} not in rule["from"]]
    result = verify(flows, list(broken.values()))
    assert not result.ok
    (flow, judgement), = [(f, j) for f, j in result.denied if f.src.pod == ("ops", "report-28000000-abcde")]
    assert flow.dst.pod == ("shop", "db-0") and judgement.ingress.policy == "shop/statefulset-db"


def test_the_command_exits_1_when_verify_finds_a_broken_flow(recorder: Recorder, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    records = tmp_path / "decisions.jsonl"
    records.write_text("\n".join(recorder.lines()) + "\n")
    code, out, err = run_advise(capsys, "--from-decisions", str(records), "--verify")
    assert code == 1, err
    assert "would now be denied" in err
    assert "shop/nolabels (10.0.0.51) -> shop/web-5d8f7c9b4-aaaaa (10.0.0.10) TCP/8080 (http)" in err
    assert out.startswith("# CronJob ops/report")  # the proposal is still written
    # Without the unselectable pod's flow, everything stays allowed.
    kept = [line for line in recorder.lines() if json.loads(line)["src"] != "shop/nolabels"]
    records.write_text("\n".join(kept) + "\n")
    code, _, err = run_advise(capsys, "--from-decisions", str(records), "--verify")
    assert code == 0 and "verify: all" in err, err


def test_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_advise(capsys, "--from-workloads")[0] == 2
    assert run_advise(capsys, "--from-decisions", str(tmp_path / "missing.jsonl"))[0] == 2
    assert run_advise(capsys, "--from-workloads", "--manifests", str(tmp_path), "--verify")[0] == 2
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, _, err = run_advise(capsys, "--from-decisions", str(empty), "--format", "clusternetworkpolicy", "--verify")
    # No policy proposed: nothing the pipeline cannot read, so verify runs (and has nothing to replay).
    assert code == 0, err


def test_records_of_an_older_agent_take_labels_and_owners_from_a_source(recorder: Recorder) -> None:
    new_fields = ("src_owner", "src_labels", "dst_owner", "dst_labels", "dst_port_name")
    old = [json.dumps({k: v for k, v in record.items() if k not in new_fields}) for record in recorder.records]
    flows = read_records(old).flows
    advice = propose_from_flows(flows)
    assert advice.proposals == [] and any("carry no labels or owner" in note for note in advice.notes)

    def lookup(key: tuple[str, str]) -> tuple[dict[str, str], str] | None:
        pod = recorder.state.pod(key)
        return (dict(pod.labels), pod.owner) if pod is not None else None

    from_source = {p.workload: p for p in propose_from_flows(flows, lookup=lookup).proposals}
    assert set(from_source) == {WEB, DB, AGENT, REPORT, MIGRATE, DEBUG}
    # Without the receivers' port names, ports are numbers.
    assert (peer("shop", app="web", tier="front"), Port("TCP", 5432)) in from_source[DB].ingress
