"""Decision records: fields, audit marking, the rate limit and the bounded queue."""

from __future__ import annotations

import io
import ipaddress
import json
import threading
import time

import pytest

from kube_netpol.api import Decision, Packet, PodRecord, Verdict
from kube_netpol.engine import END_OF_PIPELINE, Judgement, PolicyEngine
from kube_netpol.observability.decisions import DecisionLogger, TokenBucket, decision_record
from kube_netpol.plugins import build_engine
from kube_netpol.state import ClusterState
from unit_standins import Queued, pod_record

ALLOW_NP = Decision(Verdict.ACCEPT, "y/allow-x", "ingress[0]", "allowed by y/allow-x ingress[0]")
DENY_NP = Decision(Verdict.DENY, "y/deny-all", "", "isolated for ingress by policy y/deny-all; no rule admits the packet")
DENY_ANP = Decision(Verdict.DENY, "block-egress", "no-db", "Deny")
X_A = "10.244.1.10"
Y_B = "10.244.2.11"


def packet(src: str = X_A, dst: str = Y_B, port: int = 80, protocol: str = "TCP") -> Packet:
    return Packet.from_strings(src, dst, protocol, port, src_port=40001)


def denied_by_ingress() -> Judgement:
    return Judgement(Verdict.DENY, END_OF_PIPELINE, "", DENY_NP, "networkpolicy")


def cluster() -> ClusterState:
    return cluster_engine().state  # type: ignore[return-value]


def cluster_engine() -> PolicyEngine:
    """The default pipeline's engine over namespaces x and y with pods x/a and y/b (published)."""
    engine = build_engine()
    state = engine.state
    for ns in ("x", "y"):
        state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})
    for ns, name, ip in (("x", "a", X_A), ("y", "b", Y_B)):
        state.apply({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": ns, "name": name},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
        })
    engine.publish()
    return engine


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_record_names_pods_and_the_deciding_policies() -> None:
    stream = io.StringIO()
    logger = DecisionLogger(stream, provider=cluster(), wall_clock=lambda: 1_700_000_000.25)
    logger.observe(packet(), denied_by_ingress(), False, 12_345)
    assert logger.drain() == 1
    (record,) = lines(stream)
    assert record == {
        "time": "2023-11-14T22:13:20.250Z",
        "level": "info",
        "logger": "kube_netpol.decisions",
        "msg": "connection denied",
        "src": "x/a", "src_ip": X_A, "dst": "y/b", "dst_ip": Y_B,
        "family": "IPv4", "protocol": "TCP", "src_port": 40001, "dst_port": 80,
        "verdict": "deny", "audit": False, "process_time_us": 12.3,
        "egress": {"evaluator": None, "verdict": "allow", "policy": "", "rule": "",
                   "reason": "no evaluator decided; the end of the pipeline accepts"},
        "ingress": {"evaluator": "networkpolicy", "verdict": "deny", "policy": "y/deny-all", "rule": "",
                    "reason": DENY_NP.reason},
        # What advise groups and selects by: the pods own no controller and have no labels.
        "src_owner": None, "src_labels": {}, "dst_owner": None, "dst_labels": {},
    }


def test_record_carries_owners_labels_and_the_receivers_port_name() -> None:
    engine = build_engine()
    state = engine.state
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x"}})
    state.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "y"}})
    state.apply({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": "x", "name": "a-5d8f7c9b4-q2x7z", "labels": {"app": "a", "pod-template-hash": "5d8f7c9b4"},
                     "ownerReferences": [{"apiVersion": "v1", "kind": "Node", "name": "n1"},
                                         {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "a-5d8f7c9b4",
                                          "uid": "u1", "controller": True, "blockOwnerDeletion": True}]},
        "spec": {"containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": X_A},
    })
    state.apply({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"namespace": "y", "name": "b", "labels": {"app": "b"}},
        "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 80},
                                                        {"name": "alias", "containerPort": 80},
                                                        {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}]},
        "status": {"phase": "Running", "podIP": Y_B},
    })
    engine.publish()
    record = decision_record(0.0, packet(), denied_by_ingress(), False, 1000, state)
    assert record["src_owner"] == "ReplicaSet/a-5d8f7c9b4"
    assert record["src_labels"] == {"app": "a", "pod-template-hash": "5d8f7c9b4"}
    assert (record["dst_owner"], record["dst_labels"]) == (None, {"app": "b"})
    assert record["dst_port_name"] == "http"  # the first name the receiver declares for TCP/80
    udp = decision_record(0.0, packet(port=53, protocol="UDP"), denied_by_ingress(), False, 1000, state)
    assert udp["dst_port_name"] == "dns"
    unnamed = decision_record(0.0, packet(port=81), denied_by_ingress(), False, 1000, state)
    assert "dst_port_name" not in unnamed
    # An end that is not a pod has none of these fields.
    external = decision_record(0.0, packet(X_A, "192.0.2.7", 80), denied_by_ingress(), False, 1000, state)
    assert "src_labels" in external and not {"dst_owner", "dst_labels", "dst_port_name"} & set(external)


def test_addresses_that_are_not_pods_stay_addresses_and_ipv6_is_named() -> None:
    judgement = Judgement(Verdict.DENY, DENY_ANP, "adminnetworkpolicy", ALLOW_NP, "networkpolicy")
    record = decision_record(0.0, packet(X_A, "192.0.2.7", 5432), judgement, False, 1000, cluster())
    assert (record["src"], record["dst"], record["dst_ip"]) == ("x/a", "192.0.2.7", "192.0.2.7")
    assert record["egress"] == {"evaluator": "adminnetworkpolicy", "verdict": "deny", "policy": "block-egress",
                                "rule": "no-db", "reason": "Deny"}
    assert record["ingress"]["verdict"] == "allow" and record["ingress"]["rule"] == "ingress[0]"
    v6 = decision_record(0.0, packet("fd00::1", "fd00::2", 53, "UDP"), judgement, False, 1000, None)
    assert (v6["family"], v6["protocol"], v6["src"], v6["dst"]) == ("IPv6", "UDP", "fd00::1", "fd00::2")


def test_pods_are_resolved_when_the_record_is_written() -> None:
    class Directory:
        def __init__(self) -> None:
            self.pods: dict[bytes, PodRecord] = {}

        def pod_by_ip(self, ip: bytes) -> PodRecord | None:
            return self.pods.get(ip)

    directory = Directory()
    stream = io.StringIO()
    logger = DecisionLogger(stream, provider=directory)
    logger.observe(packet(), denied_by_ingress(), False, 1)
    # The pod appears after the packet was judged but before the writer runs.
    directory.pods[ipaddress.ip_address(X_A).packed] = pod_record(name="a", namespace="x")
    logger.drain()
    assert (lines(stream)[0]["src"], lines(stream)[0]["dst"]) == ("x/a", Y_B)


@pytest.mark.parametrize(
    ("verdict", "accepted", "audit", "msg"),
    [
        (Verdict.DENY, True, True, "connection would be denied (audit)"),
        (Verdict.DENY, False, False, "connection denied"),
        (Verdict.ACCEPT, True, False, "connection allowed"),
    ],
)
def test_audit_marks_denied_connections_that_were_accepted(verdict: Verdict, accepted: bool, audit: bool, msg: str) -> None:
    stream = io.StringIO()
    logger = DecisionLogger(stream)
    decision = DENY_NP if verdict is Verdict.DENY else ALLOW_NP
    logger.observe(packet(), Judgement(verdict, END_OF_PIPELINE, "", decision, "networkpolicy"), accepted, 1)
    logger.drain()
    (record,) = lines(stream)
    assert record["audit"] is audit and record["msg"] == msg
    assert record["verdict"] == ("deny" if verdict is Verdict.DENY else "allow")


def test_only_denied_keeps_denials_and_audit_records() -> None:
    stream = io.StringIO()
    logger = DecisionLogger(stream, only_denied=True)
    allowed = Judgement(Verdict.ACCEPT, END_OF_PIPELINE, "", ALLOW_NP, "networkpolicy")
    logger.observe(packet(port=1), allowed, True, 1)
    logger.observe(packet(port=2), denied_by_ingress(), False, 1)
    logger.observe(packet(port=3), denied_by_ingress(), True, 1)
    logger.drain()
    assert [(r["dst_port"], r["audit"]) for r in lines(stream)] == [(2, False), (3, True)]


def test_a_flood_returns_quickly_and_writes_only_the_budget() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    logger = DecisionLogger(stream, rate=100, capacity=10_000, report_interval=10, clock=clock)
    judgement = denied_by_ingress()
    flood = packet()
    for _ in range(100_000):
        logger.observe(flood, judgement, False, 1)
    assert logger.queue_full == 90_000  # the queue holds 10k; the rest are dropped and counted

    assert logger.drain() == 100  # the bucket starts with one second's worth
    assert logger.rate_limited == 9_900 and len(lines(stream)) == 100  # no summary before the report interval
    clock.now += 10
    assert logger.drain() == 0
    summary = lines(stream)[-1]
    assert summary["level"] == "warning" and summary["msg"] == "suppressed 99900 decision records"
    assert (summary["suppressed"], summary["rate_limited"], summary["queue_full"]) == (99_900, 9_900, 90_000)
    assert logger.suppressed == 99_900 and logger.written == 100
    clock.now += 10
    logger.drain()
    assert len(lines(stream)) == 101  # nothing new lost, so no new summary


def test_sustained_traffic_is_held_to_the_rate() -> None:
    clock = FakeClock()
    stream = io.StringIO()
    logger = DecisionLogger(stream, rate=50, burst=50, report_interval=1000, clock=clock)
    judgement = denied_by_ingress()
    for _ in range(30):  # 3 seconds: 1000 connections per 0.1 s
        for _ in range(1000):
            logger.observe(packet(), judgement, False, 1)
        clock.now += 0.1
        logger.drain()
    written = len(lines(stream))
    assert written == logger.written
    assert 50 + 50 * 2.9 <= written <= 50 + 50 * 3.0 + 1
    assert logger.written + logger.rate_limited + logger.queue_full == 30_000


def test_token_bucket_refills_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=0.0)
    assert sum(bucket.take() for _ in range(10)) == 5
    bucket.refill(0.2)
    assert sum(bucket.take() for _ in range(10)) == 2
    bucket.refill(100.0)
    assert sum(bucket.take() for _ in range(10)) == 5
    with pytest.raises(ValueError):
        TokenBucket(rate=0, burst=1, now=0.0)


def test_background_writer_under_a_flood() -> None:
    stream = io.StringIO()
    logger = DecisionLogger(stream, provider=cluster(), rate=200, capacity=5000, interval=0.02)
    logger.start()
    judgement = denied_by_ingress()
    flood = packet()
    deadline = time.monotonic() + 0.5
    sent = 0
    started = time.monotonic()
    while time.monotonic() < deadline:
        for _ in range(1000):
            logger.observe(flood, judgement, False, 1)
        sent += 1000
    logger.stop()
    elapsed = time.monotonic() - started
    records = lines(stream)
    decisions = [r for r in records if r["logger"] == "kube_netpol.decisions" and "verdict" in r]
    summaries = [r for r in records if "suppressed" in r]
    assert decisions and all(r["src"] == "x/a" and r["dst"] == "y/b" for r in decisions)
    assert len(decisions) <= 200 + 200 * elapsed + 1
    assert summaries and summaries[-1]["suppressed"] > 0  # stop() reports the losses
    assert logger.written + logger.suppressed == sent
    assert sum(s["suppressed"] for s in summaries) == logger.suppressed


def test_write_errors_never_reach_the_caller() -> None:
    class Broken(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(28, "No space left on device")

    logger = DecisionLogger(Broken())
    logger.observe(packet(), denied_by_ingress(), False, 1)
    logger.drain()
    logger.observe(packet(), denied_by_ingress(), False, 1)
    logger.drain()
    assert logger.write_errors == 2


def test_to_file_appends_and_stop_closes(tmp_path) -> None:
    path = tmp_path / "decisions.log"
    path.write_text('{"earlier": true}\n')
    logger = DecisionLogger.to_file(str(path))
    logger.observe(packet(), denied_by_ingress(), False, 1)
    logger.stop()
    assert logger.stream.closed
    content = [json.loads(line) for line in path.read_text().splitlines()]
    assert content[0] == {"earlier": True} and content[1]["verdict"] == "deny"


def test_observe_is_safe_while_the_writer_drains() -> None:
    logger = DecisionLogger(io.StringIO(), rate=1_000_000, burst=1_000_000, capacity=1_000_000, interval=0.001)
    logger.start()
    judgement = denied_by_ingress()
    done = threading.Event()

    def produce() -> None:
        for _ in range(10_000):
            logger.observe(packet(), judgement, False, 1)
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    thread.join()
    logger.stop()
    assert done.is_set() and logger.written + logger.suppressed == 10_000


# ------------------------------------------------- with the real verdict loop


def engine_denying_ingress_to_y() -> PolicyEngine:
    engine = cluster_engine()
    engine.state.apply({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",  # type: ignore[attr-defined]
                        "metadata": {"name": "deny-all", "namespace": "y"},
                        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}})
    engine.publish()
    return engine


@pytest.mark.parametrize("audit", [False, True])
def test_records_from_the_verdict_loop_with_real_policies(audit: bool) -> None:
    from scapy.layers.inet import IP, TCP

    from kube_netpol.agent.verdict_loop import VerdictLoop

    engine = engine_denying_ingress_to_y()
    stream = io.StringIO()
    logger = DecisionLogger(stream, provider=engine.state)
    loop = VerdictLoop(engine, 100, fail_open=True, audit=audit, observer=logger.observe)
    denied = Queued(bytes(IP(src=X_A, dst=Y_B) / TCP(sport=40001, dport=80, flags="S")))
    allowed = Queued(bytes(IP(src=Y_B, dst=X_A) / TCP(sport=40002, dport=81, flags="S")))
    loop.handle(denied)
    loop.handle(allowed)
    logger.drain()
    first, second = lines(stream)
    assert denied.verdicts == ["accept" if audit else "drop"]
    assert (first["src"], first["dst"], first["dst_port"], first["verdict"], first["audit"]) == ("x/a", "y/b", 80, "deny", audit)
    assert first["ingress"]["policy"] == "y/deny-all" and first["ingress"]["evaluator"] == "networkpolicy"
    assert (second["src"], second["verdict"], second["audit"]) == ("y/b", "allow", False)
    assert second["ingress"]["evaluator"] is None


@pytest.mark.parametrize("only_denied", [False, True])
def test_a_spent_budget_keeps_the_verdict_loop_on_its_fast_path(only_denied: bool) -> None:
    from scapy.layers.inet import IP, TCP

    from kube_netpol.agent.verdict_loop import VerdictLoop

    engine = engine_denying_ingress_to_y()
    clock = FakeClock()
    stream = io.StringIO()
    logger = DecisionLogger(stream, provider=engine.state, rate=10, burst=10, interval=0.1, clock=clock,
                            only_denied=only_denied, report_interval=1000)
    loop = VerdictLoop(engine, 100, fail_open=True, observer=logger.observe, observer_gate=logger.gate)
    denied = [Queued(bytes(IP(src=X_A, dst=Y_B) / TCP(sport=port, dport=80, flags="S"))) for port in range(1000, 2000)]
    allowed = [Queued(bytes(IP(src=Y_B, dst=X_A) / TCP(sport=port, dport=81, flags="S"))) for port in range(1000, 1100)]
    for queued in denied:
        loop.handle(queued)
    assert all(q.verdicts == ["drop"] for q in denied)
    # The burst's ten records were made; then the gate closed and the rest were table hits, not parsed.
    assert not logger.gate.open
    (flow,) = engine.snapshot.flows.values()
    assert (flow.judged, flow.hits) == (10, 990)  # ten parsed (one of them judged by the pipeline), the rest hits
    assert engine.history.totals(engine.snapshot.flows).entries == 1
    for queued in allowed:
        loop.handle(queued)
    assert all(q.verdicts == ["accept"] for q in allowed)
    assert logger.drain() == 10
    # Allowed connections are no records when only denials are logged, so not rate-limited either.
    assert logger.stats()["rate_limited"] == 990 + (0 if only_denied else 100)
    assert logger.written + logger.suppressed == 1000 + (0 if only_denied else 100)
    # The next drain's budget opens the gate again, for what the rate allows until the drain after it.
    clock.now += 0.1
    logger.drain()
    assert logger.gate.open
    # The token the last 0.1 s brought, and the one the next 0.1 s brings: two records.
    loop.handle(Queued(bytes(IP(src=X_A, dst=Y_B) / TCP(sport=3000, dport=80, flags="S"))))
    assert logger.gate.open
    loop.handle(Queued(bytes(IP(src=X_A, dst=Y_B) / TCP(sport=3001, dport=80, flags="S"))))
    assert not logger.gate.open
    clock.now += 0.1
    assert logger.drain() == 2
    assert [line["src_port"] for line in lines(stream) if "src_port" in line][-2:] == [3000, 3001]
