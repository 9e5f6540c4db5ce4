"""The DNS observation's rules: every DNS answer to a managed pod is queued with the answer bit, both backends."""

from __future__ import annotations

import pytest

from kube_netpol.dataplane.ruleset import DNS_ANSWER_MARK, RulesetSpec, installed_divert_all, parse_table, rule_objects, rules


def _names(spec: RulesetSpec) -> list[str]:
    return [rule.name for rule in rules(spec)]


def test_answer_rules_only_with_observation_and_before_anything_that_accepts():
    assert not any(name.startswith("dns-answer") for name in _names(RulesetSpec()))
    names = _names(RulesetSpec(observe_dns=True))
    assert names[:3] == ["judged-at-prerouting", "dns-answer-v4", "dns-answer-v6"]
    assert names.index("dns-answer-v6") < names.index("root-uid") < names.index("established")
    assert "dns-answer" in _names(RulesetSpec(observe_dns=True, divert_all=True))


@pytest.mark.parametrize("backend", ["nft", "xt"])
def test_answer_rule_marks_and_queues(backend):
    spec = RulesetSpec(observe_dns=True, backend=backend)
    rule = next(o["rule"] for o in rule_objects(spec) if o["rule"]["comment"].startswith("dns-answer-v4"))
    expr = rule["expr"]
    assert {"match": {"op": "==", "left": {"ct": {"key": "direction"}}, "right": "reply"}} in expr
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "sport"}}, "right": 53}} in expr
    assert {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@managed-v4"}} in expr
    bits = next(s["mangle"]["value"]["|"][1] for s in expr if "mangle" in s)
    if backend == "nft":
        assert bits == DNS_ANSWER_MARK and expr[-1] == {"queue": {"num": spec.queue_num, "flags": ["bypass"]}}
    else:  # the iptables rule queues our mark
        assert bits == DNS_ANSWER_MARK | spec.mark and expr[-1] == {"accept": None}


def test_the_mode_is_read_back_whether_or_not_the_kernel_has_the_answer_rules():
    spec = RulesetSpec(observe_dns=True)
    listing = [{"chain": {"name": "postrouting"}}] + [
        {"rule": {"chain": "postrouting", "comment": o["rule"]["comment"]}} for o in rule_objects(RulesetSpec(divert_all=True))]
    assert installed_divert_all(spec, parse_table(listing)) is True


def test_our_mark_may_not_overlap_the_answer_bit():
    with pytest.raises(ValueError, match="DNS answer bit"):
        RulesetSpec(observe_dns=True, mark=DNS_ANSWER_MARK)
