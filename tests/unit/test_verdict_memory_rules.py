"""The kernel's verdict memory: its ruleset (pure), and the marks the verdict loop hands verdicts back with."""

from __future__ import annotations

from dataclasses import replace

import pytest
from scapy.layers.inet import ICMP, IP, TCP

from kube_netpol.agent import verdict_loop as verdict_loop_module
from kube_netpol.agent.verdict_loop import VerdictLoop
from kube_netpol.api import NEXT, Decision, Verdict
from kube_netpol.dataplane.ruleset import (
    rule_comments,
    CHAIN,
    MEMORY_DROP,
    MEMORY_EPOCH_SHIFT,
    MEMORY_MARK,
    MEMORY_REMEMBER,
    MEMORY_SETS,
    NF_INET_POST_ROUTING,
    REMEMBER_CHAIN,
    RulesetSpec,
    chain_names,
    create_commands,
    mark_seconds,
    memory_class,
    memory_mark,
    parse_table,
    reconcile_commands,
    rules,
    sync_commands,
    xt_chains,
)
from kube_netpol.engine import snapshot as snapshot_module
from kube_netpol.packet import parse_packet
from unit_standins import Queued, engine_of, touch

MEMORY = RulesetSpec(table="t", backend="xt", verdict_memory=True)


def test_without_the_memory_the_table_has_none_of_it() -> None:
    spec = RulesetSpec(table="t")
    assert REMEMBER_CHAIN not in chain_names(spec)
    text = str(create_commands(spec))
    assert "remembered" not in text


@pytest.mark.parametrize("backend", ["nft", "xt"])
def test_the_memory_is_looked_up_after_established_and_before_the_divert(backend: str) -> None:
    spec = replace(MEMORY, backend=backend)
    names = [r.name for r in rules(spec, CHAIN)]
    lookups = [names.index(s.name) for s in MEMORY_SETS]
    assert names.index("established") < min(lookups)
    assert max(lookups) < min(i for i, n in enumerate(names) if n.startswith("managed-"))
    assert REMEMBER_CHAIN in chain_names(spec)
    assert xt_chains(spec) == ("POSTROUTING", "PREROUTING")  # the remember chain needs no xt rule


def test_every_remembered_verdict_is_carried_out_even_when_the_add_fails() -> None:
    remember = rules(MEMORY, REMEMBER_CHAIN)
    assert remember[0].name == "not-remembered" and remember[0].action == "not-remembered"
    adds = [r for r in remember if r.action.startswith("remember-")]
    assert len(adds) == len(MEMORY_SETS) * 4
    assert all("set" in r.matches[-1] for r in adds)  # the add is last: a full set only skips the rule
    # After the add the rule carries out the set's verdict itself: a remembered packet walks no further.
    assert all(r.action == "remember-" + r.matches[-1]["set"]["set"].split("-")[1] for r in adds)
    assert [r.action for r in remember[-2:]] == ["forget-drop", "forget-accept"]


def test_a_marked_packet_without_ports_gets_its_verdict_and_is_not_remembered() -> None:
    """``th dport`` is a port only for TCP, UDP and SCTP: the two rules after the first carry out any
    other marked packet's verdict before an add could read it; no rule of the chain holds a set of its
    own (each one made the transaction that renews the memory slower)."""
    remember = rules(MEMORY, REMEMBER_CHAIN)
    other_drop, other = remember[1], remember[2]
    assert (other_drop.action, other.action) == ("forget-drop", "forget-accept")
    protocols = [m["match"]["right"] for m in other.matches]
    assert protocols == [6, 17, 132] and all(m["match"]["op"] == "!=" for m in other.matches)
    assert other_drop.matches[:3] == other.matches and "&" in other_drop.matches[3]["match"]["left"]
    assert all(r.action != "remember-accept" and r.action != "remember-drop" for r in remember[:3])
    for rule in remember:
        assert not any(isinstance(m.get("match", {}).get("right"), dict) for m in rule.matches), rule.name


def test_a_new_snapshot_flushes_the_memory_and_moves_the_epoch_in_one_transaction() -> None:
    old, new = MEMORY, replace(MEMORY, memory_epoch=1)
    elements = {"managed-v4": frozenset({"10.0.0.1"}), "managed-v6": frozenset()}
    cmds = sync_commands(old, new, elements, elements)
    # The sets are made again (a flush would send a listener one message per key), so the two chains
    # whose rules use them are emptied first and refilled after, each once; the remember chain's rules
    # take the new epoch.
    memory = sorted(s.name for s in MEMORY_SETS)
    assert sorted(c["delete"]["set"]["name"] for c in cmds if "set" in c.get("delete", {})) == memory
    assert sorted(c["add"]["set"]["name"] for c in cmds if "set" in c.get("add", {})) == memory
    assert not [c for c in cmds if "set" in c.get("flush", {})]
    refilled = [c["flush"]["chain"]["name"] for c in cmds if "flush" in c and "chain" in c["flush"]]
    assert refilled == [CHAIN, REMEMBER_CHAIN]
    order = [next(iter(c)) + ":" + next(iter(next(iter(c.values())))) for c in cmds]
    assert order.index("add:set") > max(i for i, o in enumerate(order) if o in ("flush:chain", "delete:set"))
    assert min(i for i, o in enumerate(order) if o == "add:rule") > order.index("add:set")
    added = [c["add"]["rule"] for c in cmds if "rule" in c.get("add", {})]
    assert [r["comment"] for r in added if r["chain"] == REMEMBER_CHAIN] == rule_comments(new, REMEMBER_CHAIN)
    assert [r["comment"] for r in added if r["chain"] == CHAIN] == rule_comments(new, CHAIN)
    # Nothing else changed: the transaction holds only the memory's renewal.
    desired = {"managed-v4": frozenset({"10.0.0.2"}), "managed-v6": frozenset()}
    both = sync_commands(old, new, elements, desired)
    assert any("element" in c.get("add", {}) for c in both) and all(c in both for c in cmds)


def test_a_start_forgets_what_an_earlier_run_remembered() -> None:
    listing = [o["add"] for o in create_commands(MEMORY)]
    cmds, _ = reconcile_commands(MEMORY, parse_table(listing), None)
    assert sorted(c["flush"]["set"]["name"] for c in cmds) == sorted(s.name for s in MEMORY_SETS)


def test_the_memory_bits_cannot_overlap_the_mark() -> None:
    with pytest.raises(ValueError, match="overlaps"):
        RulesetSpec(mark=MEMORY_REMEMBER)
    with pytest.raises(ValueError, match="epoch"):
        RulesetSpec(memory_epoch=4)


@pytest.mark.parametrize(("lifetime", "expected"), [(None, 0), (3600.0, 1), (30, 1), (29.9, 2), (5, 2), (1, 3),
                                                    (0.5, None), (0, None)])
def test_a_lifetime_picks_the_longest_class_not_above_it(lifetime: float | None, expected: int | None) -> None:
    assert memory_class(lifetime) == expected


# --- the verdict loop ------------------------------------------------------------------------


class Marked(Queued):
    """A queued packet with NetfilterQueue's hook and mark."""

    def __init__(self, payload: bytes, hook: int = NF_INET_POST_ROUTING, mark: int = 0x4000) -> None:
        super().__init__(payload)
        self.hook = hook
        self.mark = mark
        self.marks: list[int] = []

    def get_mark(self) -> int:
        return self.mark

    def set_mark(self, mark: int) -> None:
        self.marks.append(mark)


class Rule:
    """Denies ingress to port 81; every answer with ``lifetime``."""

    def __init__(self, lifetime: float | None) -> None:
        self.allow = Decision(Verdict.ACCEPT, "p", "allow", lifetime=lifetime)
        self.deny = Decision(Verdict.DENY, "p", "deny", lifetime=lifetime)
        self.next = Decision(Verdict.NEXT, lifetime=lifetime)

    def evaluate_egress(self, packet, src, dst):  # type: ignore[no-untyped-def]
        return self.next

    def evaluate_ingress(self, packet, src, dst):  # type: ignore[no-untyped-def]
        return self.deny if packet.dst_port == 81 else self.allow


def syn(dport: int) -> bytes:
    return bytes(IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=40000, dport=dport, flags="S"))


def loop(lifetime: float | None = 1000.0, audit: bool = False, memory: bool = True) -> VerdictLoop:
    return VerdictLoop(engine_of(Rule(lifetime)), 100, fail_open=True, audit=audit, verdict_memory=memory)


def verdict(verdict_loop: VerdictLoop, packet: Marked) -> tuple[list[str], list[int]]:
    verdict_loop.handle(packet)
    return packet.verdicts, packet.marks


def test_a_verdict_the_kernel_may_remember_is_handed_back_with_the_memory_bits() -> None:
    v = loop()
    epoch = (v.engine.snapshot.generation % 4) << MEMORY_EPOCH_SHIFT
    accepted = memory_mark(False, 1, 0) | epoch | 0x4000
    assert verdict(v, Marked(syn(80))) == (["accept"], [accepted])
    assert verdict(v, Marked(syn(80))) == (["accept"], [accepted])  # a flow-table hit too
    dropped = verdict(v, Marked(syn(81)))
    assert dropped[0] == ["accept"] and dropped[1][0] & MEMORY_DROP, "a drop is carried out by the remember chain"
    assert dropped[1][0] & ~MEMORY_MARK == 0x4000, "the packet's own mark bits are kept"


def test_the_epoch_follows_the_snapshot() -> None:
    v = loop()
    first = verdict(v, Marked(syn(80)))[1][0]
    touch(v.engine)
    second = verdict(v, Marked(syn(80)))[1][0]
    assert (first ^ second) & MEMORY_MARK == ((v.engine.snapshot.generation % 4) ^ ((v.engine.snapshot.generation - 1) % 4)) << MEMORY_EPOCH_SHIFT


@pytest.mark.parametrize("why", ["flag off", "prerouting", "lifetime 0", "plugin without lifetime", "icmp",
                                 "audit denial"])
def test_verdicts_the_kernel_must_not_remember_are_plain(why: str) -> None:
    v = loop(lifetime={"lifetime 0": 0, "plugin without lifetime": None}.get(why, 1000.0), audit=why == "audit denial",
             memory=why != "flag off")
    payload = syn(81 if why == "audit denial" else 80)
    if why == "icmp":
        payload = bytes(IP(src="10.0.0.1", dst="10.0.0.2") / ICMP())
    packet = Marked(payload, hook=0 if why == "prerouting" else NF_INET_POST_ROUTING)
    assert verdict(v, packet) == (["accept"], [])


def test_a_denial_not_remembered_is_a_plain_drop() -> None:
    v = loop(lifetime=0)
    assert verdict(v, Marked(syn(81))) == (["drop"], [])


def test_a_verdict_is_judged_again_once_its_lifetime_is_over(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(verdict_loop_module, "monotonic", lambda: now[0])
    monkeypatch.setattr(snapshot_module, "monotonic", lambda: now[0])
    v = loop(lifetime=10)
    for _ in range(3):
        v.handle(Marked(syn(80)))
    assert v.engine.history.totals(v.engine.snapshot.flows).entries == 1  # judged once, then two hits
    now[0] += 11
    v.handle(Marked(syn(80)))
    assert v.engine.history.totals(v.engine.snapshot.flows).entries == 2  # judged again
    assert v.verdicts() == (4, 0)


def test_lifetime_zero_is_judged_for_every_packet() -> None:
    v = loop(lifetime=0)
    for _ in range(3):
        v.handle(Marked(syn(80)))
    assert v.engine.history.totals(v.engine.snapshot.flows).entries == 3


def test_the_shortest_lifetime_of_the_answers_wins_next_included() -> None:
    class Short:
        def evaluate_egress(self, packet, src, dst):  # type: ignore[no-untyped-def]
            return Decision(Verdict.NEXT, lifetime=2)

        def evaluate_ingress(self, packet, src, dst):  # type: ignore[no-untyped-def]
            return NEXT

    engine = engine_of(Short(), Rule(1000.0))
    judgement = engine.snapshot.judge(parse_packet(syn(80)))
    assert judgement.lifetime == 2
    # Short's ingress NEXT has no lifetime and Short is not kube_netpol's: not for the kernel.
    assert not judgement.kernel


def test_a_set_has_room_for_two_flow_tables() -> None:
    # The agent flushes the memory each time its flow table fills (agent/controller.py): a set
    # smaller than that would fill first and then take no new key until keys timed out.
    from kube_netpol.dataplane.ruleset import MEMORY_SIZE
    from kube_netpol.engine.flows import DEFAULT_MAX_FLOWS

    assert MEMORY_SIZE >= 2 * DEFAULT_MAX_FLOWS
    spec = RulesetSpec(verdict_memory=True)
    sizes = {c["add"]["set"]["size"] for c in create_commands(spec)
             if "set" in c.get("add", {}) and c["add"]["set"]["name"].startswith("remembered-")}
    assert sizes == {MEMORY_SIZE}


# --- what a decision record says of the memory ---------------------------------------------------


@pytest.mark.parametrize(("case", "remembered_s"), [
    ("a lifetime of 1000 s", 30),  # class 1: 30 s, below the timeout
    ("a lifetime of 1000 s, timeout 20", 20),  # ... and never beyond the timeout
    ("a lifetime of 3 s", 1),  # class 3 (1 s): the longest class not above 3 s
    ("prerouting", None),  # the remember chain only follows the postrouting queue
    ("memory off", None),
    ("a lifetime of 0", None),
    ("an evaluator from outside kube_netpol, no lifetime", None),
])  # fmt: skip
def test_a_decision_record_says_how_long_the_kernel_answers_the_key(case: str, remembered_s: int | None) -> None:
    """Its next connections within that time get no record: the kernel answers them."""
    import io
    import json

    from kube_netpol.observability.decisions import DecisionLogger

    lifetime = {"a lifetime of 3 s": 3.0, "a lifetime of 0": 0.0,
                "an evaluator from outside kube_netpol, no lifetime": None}.get(case, 1000.0)
    stream = io.StringIO()
    logger = DecisionLogger(stream)
    v = VerdictLoop(engine_of(Rule(lifetime)), 100, fail_open=True, verdict_memory=case != "memory off",
                    observer=logger.observe, memory_timeout=20 if "timeout 20" in case else 60)
    v.handle(Marked(syn(81), hook=0 if case == "prerouting" else NF_INET_POST_ROUTING))
    logger.drain()
    (record,) = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert record["verdict"] == "deny"
    assert record.get("remembered_s") == remembered_s


@pytest.mark.parametrize(("drop", "lifetime_class", "timeout", "seconds"), [
    (False, 0, 60, 60), (True, 0, 7, 7), (False, 1, 60, 30), (False, 1, 10, 10), (True, 2, 60, 5), (False, 3, 60, 1),
])  # fmt: skip
def test_mark_seconds_reads_the_class_back_from_the_mark(drop: bool, lifetime_class: int, timeout: int, seconds: int) -> None:
    for epoch in range(4):
        assert mark_seconds(memory_mark(drop, lifetime_class, epoch) | 0x4000, timeout) == seconds
    assert mark_seconds(0x4000, timeout) == 0
