"""The `offline` mode: no kernel; every probe's first packet is judged by the PolicyEngine.

The engine is assembled exactly as the agent assembles it (``build_engine``),
and the state is fed incrementally, step by step, each step published as one
snapshot, so the evaluators' incremental indexes must follow every change,
as in the agent.
"""

from __future__ import annotations

import ipaddress
from typing import Sequence

from kube_netpol.api.packet import PROTOCOL_BY_NAME, Packet
from kube_netpol.api.verdict import Decision
from kube_netpol.engine.judgement import Judgement
from kube_netpol.tools.conformance.backend import BackendSetup
from kube_netpol.tools.conformance.cluster import StepChange
from kube_netpol.tools.conformance.probes import Probe
from kube_netpol.dns.message import DnsError
from kube_netpol.dns.observe import DNS_PORT, observe
from kube_netpol.plugins import BUILTIN_ORDER, build_engine
from kube_netpol.tools.conformance.probes import DNS_SERVER
from kube_netpol.tools.lab import dnswire
from kube_netpol.tools.lab.dnswire import TYPE_A, TYPE_AAAA

#: The evaluator (plugins/kube-netpol-multinetwork) that judges scenarios with secondary networks.
MULTINETWORK_EVALUATOR = "multinetwork"
#: Source ports of probes: 40000, 40001, ... (the engine never looks at them; a lab would).
EPHEMERAL_FIRST = 40000
EPHEMERAL_COUNT = 20000
#: The TTL of the lab DNS server's answers (SCENARIO_FORMAT.md, "externals[].dnsNames").
LAB_DNS_TTL = 300


class OfflineBackend:
    def __init__(self, evaluators: Sequence[str] = BUILTIN_ORDER) -> None:
        self.engine = build_engine(evaluators)
        self.state = self.engine.state

    def apply(self, change: StepChange) -> list[str]:
        for ref in change.deletes:
            self.state.delete(ref.kind, ref.namespace, ref.name)
        for obj in change.applies:
            self.state.apply(obj)
        self.engine.publish()
        return [f"{r.kind} {r.reference} refused: {r.reason}" for r in self.state.take_refusals()]

    def run(self, probes: Sequence[Probe]) -> list[bool]:
        results = []
        for n, probe in enumerate(probes):
            if probe.resolve:
                self._resolve(probe, n)
            results.append(self._judge(probe, n).allowed)
        return results

    def _resolve(self, probe: Probe, n: int) -> None:
        """Judge the probe's DNS query; if it passes, hand the server's answer to the agent's DNS observation."""
        server = DNS_SERVER[probe.family]
        sport = EPHEMERAL_FIRST + (n + EPHEMERAL_COUNT // 2) % EPHEMERAL_COUNT  # not the connection's port
        src, dst = ipaddress.ip_address(probe.src_ip), ipaddress.ip_address(server)
        request = Packet(src.version, PROTOCOL_BY_NAME["UDP"], src.packed, dst.packed, sport, DNS_PORT)
        if not self.engine.evaluate(request).allowed:
            return  # blocked: the name is not learnt
        qtype = TYPE_A if probe.family == "IPv4" else TYPE_AAAA
        answer = dnswire.response(dnswire.query(probe.resolve, qtype, n & 0xFFFF), list(probe.answer), LAB_DNS_TTL)
        packet = dnswire.udp_packet(server, probe.src_ip, DNS_PORT, sport, answer)
        try:
            observe(self.engine.dns, packet, self.engine.snapshot.pod_by_ip)
        except DnsError:
            pass  # an answer to a source that is not a pod (an external or node) teaches nothing, as in the agent

    def _judge(self, probe: Probe, n: int) -> Judgement:
        if probe.network:  # a secondary network: only the stages that judge networks answer
            return self.engine.snapshot.judge_on(probe.network, packet_of(probe, n))
        return self.engine.evaluate(packet_of(probe, n))

    def explain(self, probe: Probe) -> str:
        judgement = self._judge(probe, 0) if probe.network else self.engine.explain(packet_of(probe, 0)).judgement
        return (
            f"egress: {_describe(judgement.egress_by, judgement.egress)}; "
            f"ingress: {_describe(judgement.ingress_by, judgement.ingress)}"
        )

    def close(self) -> None:
        pass


def create_backend(setup: BackendSetup) -> OfflineBackend:
    return OfflineBackend(pipeline_for(setup))


def pipeline_for(setup: BackendSetup) -> tuple[str, ...]:
    """Every built-in evaluator, plus the MultiNetworkPolicy plugin for a scenario with secondary networks.

    The plugin is a separate package; without it such a scenario fails with
    the plugin's name in the error.
    """
    if setup.cluster.networks:
        return (*BUILTIN_ORDER, MULTINETWORK_EVALUATOR)
    return BUILTIN_ORDER


def packet_of(probe: Probe, n: int) -> Packet:
    """The first packet of the probe's connection."""
    src = ipaddress.ip_address(probe.src_ip)
    return Packet(
        src.version,
        PROTOCOL_BY_NAME[probe.protocol],
        src.packed,
        ipaddress.ip_address(probe.dst_ip).packed,
        EPHEMERAL_FIRST + n % EPHEMERAL_COUNT,
        probe.port,
    )


def _describe(evaluator: str, decision: Decision) -> str:
    if not evaluator:
        return "ACCEPT (no evaluator decided)"
    parts = [evaluator, decision.verdict.name]
    parts += [text for text in (decision.policy, decision.rule) if text]
    if decision.reason:
        parts.append(f"({decision.reason})")
    return " ".join(parts)
