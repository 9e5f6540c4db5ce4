"""The verdict callback: every packet gets exactly one verdict, whatever it is."""

from __future__ import annotations

import random

import pytest
from scapy.layers.inet import IP, TCP

from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api import Decision, NEXT, Verdict
from kube_netpol.packet import MalformedPacket, parse_packet
from unit_standins import Queued, engine_of


class DenyPort:
    """Denies ingress to one destination port; raises on another to simulate a broken plugin."""

    name = "deny-port"

    def __init__(self, port: int, broken_port: int) -> None:
        self.port, self.broken_port = port, broken_port
        self.deny = Decision(Verdict.DENY, "p", "r")

    def evaluate_egress(self, packet, src, dst):
        return NEXT

    def evaluate_ingress(self, packet, src, dst):
        if packet.dst_port == self.broken_port:
            raise RuntimeError("plugin bug")
        return self.deny if packet.dst_port == self.port else NEXT


def parses(payload: bytes) -> bool:
    try:
        parse_packet(payload)
    except MalformedPacket:
        return False
    return True


def syn(dport: int) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=dport, flags="S"))


def loop(fail_open: bool, audit: bool = False, observed: list | None = None) -> VerdictLoop:
    engine = engine_of(DenyPort(81, 99))
    observer = (lambda p, j, accepted, ns, _: observed.append((p.dst_port, accepted, ns))) if observed is not None else None
    return VerdictLoop(engine, 100, fail_open=fail_open, audit=audit, observer=observer)


@pytest.mark.parametrize("fail_open", [True, False])
def test_verdicts_follow_the_engine(fail_open: bool) -> None:
    observed: list = []
    verdict_loop = loop(fail_open, observed=observed)
    allowed, denied = Queued(syn(80)), Queued(syn(81))
    verdict_loop.handle(allowed)
    verdict_loop.handle(denied)
    assert allowed.verdicts == ["accept"] and denied.verdicts == ["drop"]
    assert verdict_loop.verdicts() == (1, 1)
    assert [(port, accepted) for port, accepted, _ in observed] == [(80, True), (81, False)]
    assert all(ns > 0 for _, _, ns in observed)


@pytest.mark.parametrize("fail_open, expected", [(True, "accept"), (False, "drop")])
def test_a_flood_of_malformed_packets_gets_the_failure_verdict(fail_open: bool, expected: str) -> None:
    verdict_loop = loop(fail_open)
    rng = random.Random(7)
    good = syn(80)
    payloads = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 80))) for _ in range(2000)]
    payloads += [good[: rng.randrange(0, 40)] for _ in range(500)]
    errors: list[BaseException] = []
    verdict_loop.on_error = errors.append
    queued = [Queued(p) for p in payloads]
    for q in queued:
        verdict_loop.handle(q)
    # Every packet got exactly one verdict; the unparseable ones the failure verdict.
    assert all(len(q.verdicts) == 1 for q in queued)
    assert verdict_loop.counters.errors == len(errors) > 2000
    unparseable = [q for q in queued if not parses(q.payload)]
    assert len(unparseable) == len(errors)
    assert all(q.verdicts == [expected] for q in unparseable)
    # And the loop still judges real packets afterwards.
    after = Queued(syn(81))
    verdict_loop.handle(after)
    assert after.verdicts == ["drop"]


@pytest.mark.parametrize("fail_open, expected", [(True, "accept"), (False, "drop")])
def test_an_evaluator_exception_gets_the_failure_verdict(fail_open: bool, expected: str) -> None:
    verdict_loop = loop(fail_open)
    queued = Queued(syn(99))
    verdict_loop.handle(queued)
    assert queued.verdicts == [expected] and verdict_loop.counters.errors == 1


def test_audit_mode_accepts_what_it_would_deny() -> None:
    observed: list = []
    verdict_loop = loop(False, audit=True, observed=observed)
    queued = Queued(syn(81))
    verdict_loop.handle(queued)
    assert queued.verdicts == ["accept"]
    assert observed[0][1] is True
    assert verdict_loop.verdicts() == (1, 0)


def test_headers_beyond_the_copy_range_are_dropped_even_when_failing_open() -> None:
    from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrHopByHop, PadN

    from kube_netpol.agent.verdict_loop import COPY_RANGE

    # Two maximal option headers push TCP out of the bytes the kernel copies.
    padding = [PadN(optdata=b"\x00" * 250)] * 8
    packet = bytes(
        IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrHopByHop(options=padding) / IPv6ExtHdrDestOpt(options=padding)
        / TCP(sport=40000, dport=80, flags="S")
    )
    assert len(packet) > COPY_RANGE
    queued = Queued(packet[:COPY_RANGE])  # what the kernel copies to us
    verdict_loop = loop(fail_open=True)
    verdict_loop.handle(queued)
    assert queued.verdicts == ["drop"] and verdict_loop.counters.errors == 1
    # A short malformed packet still gets the fail-open verdict.
    short = Queued(packet[:30])
    verdict_loop.handle(short)
    assert short.verdicts == ["accept"]
