"""The generated nftables JSON and the Dataplane's transactions, without a kernel."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from typing import Any

import pytest

from kube_netpol.dataplane import Dataplane, DataplaneConfig, DataplaneError, NftablesError, cleanup
from kube_netpol.dataplane import queue_backend
from kube_netpol.dataplane.queue_backend import QueueBackendUnavailable, resolve_queue_backend
from kube_netpol.dataplane.ruleset import (
    CHAIN,
    NATIVE_QUEUE_PROBE,
    PREROUTING_CHAIN,
    PRIORITY_NATIVE,
    PRIORITY_PREROUTING_NATIVE,
    PRIORITY_PREROUTING_XT,
    PRIORITY_XT,
    RulesetSpec,
    chain_names,
    chain_object,
    chains,
    counter_object,
    counters,
    meter_set_object,
    meter_sets,
    create_commands,
    delete_table_commands,
    diff_elements,
    ElementDelta,
    installed_divert_all,
    normalize_addresses,
    parse_table,
    probe_commands,
    reconcile_commands,
    rule_comments,
    rule_objects,
    sync_commands,
    xt_chains,
)
from kube_netpol.dataplane.xtables import Xtables, parse_rules, queue_rule_args

QUEUE_BYPASS = {"queue": {"num": 7, "flags": ["bypass"]}}
QUEUE_CLOSED = {"queue": {"num": 7}}
MARK_XT = {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 0x200000]}}}
ACCEPT = {"accept": None}


def spec(**kw: Any) -> RulesetSpec:
    """A spec for table t1; the netfilter bug 1766 workaround and the new-flow limit are off unless asked
    for (each is tested on its own)."""
    return RulesetSpec(**{"table": "t1", "queue_num": 7, "netfilter_bug_1766_fix": False, "new_flow_limit": 0, **kw})


def exprs(s: RulesetSpec) -> list[list[dict]]:
    return [o["rule"]["expr"] for o in rule_objects(s)]


def names(s: RulesetSpec) -> list[str]:
    return [c.split()[0] for c in rule_comments(s)]


def all_statements(s: RulesetSpec) -> str:
    return json.dumps(create_commands(s))


# --- rules ---------------------------------------------------------------------


def test_native_fail_open_rules_in_order() -> None:
    s = spec(backend="nft", fail_open=True)
    assert names(s) == [
        "icmpv6-nd",
        "root-uid",
        "established",
        "managed-v4-saddr",
        "managed-v4-daddr",
        "managed-v6-saddr",
        "managed-v6-daddr",
    ]
    e = exprs(s)
    assert e[0] == [
        {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 58}},
        {"match": {"op": "==", "left": {"payload": {"protocol": "icmpv6", "field": "type"}}, "right": {"range": [133, 137]}}},
        ACCEPT,
    ]
    assert e[1] == [{"match": {"op": "==", "left": {"meta": {"key": "skuid"}}, "right": 0}}, ACCEPT]
    assert e[2] == [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, ACCEPT]
    assert e[3] == [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@managed-v4"}}, QUEUE_BYPASS]
    assert e[4] == [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "@managed-v4"}}, QUEUE_BYPASS]
    assert e[5] == [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "saddr"}}, "right": "@managed-v6"}}, QUEUE_BYPASS]
    assert e[6] == [{"match": {"op": "==", "left": {"payload": {"protocol": "ip6", "field": "daddr"}}, "right": "@managed-v6"}}, QUEUE_BYPASS]


def test_native_fail_closed_queues_without_bypass() -> None:
    e = exprs(spec(backend="nft", fail_open=False))
    assert [x[-1] for x in e[3:]] == [QUEUE_CLOSED] * 4
    assert "bypass" not in json.dumps(e)


def test_xt_backend_marks_instead_of_queueing() -> None:
    s = spec(backend="xt", fail_open=True)
    e = exprs(s)
    assert [x[1:] for x in e[3:]] == [[MARK_XT, ACCEPT]] * 4
    assert '"queue"' not in all_statements(s)  # this kernel would reject the whole transaction
    custom = exprs(spec(backend="xt", mark=0x1000))
    assert custom[3][1]["mangle"]["value"] == {"|": [{"meta": {"key": "mark"}}, 0x1000]}


def test_skuid_rule_optional() -> None:
    assert "root-uid" not in names(spec(accept_root=False))
    assert '"skuid"' not in all_statements(spec(accept_root=False))
    assert names(spec(accept_root=False))[:2] == ["icmpv6-nd", "established"]


@pytest.mark.parametrize("backend,divert", [("nft", QUEUE_BYPASS), ("xt", MARK_XT)])
def test_divert_all_diverts_everything_after_established(backend: str, divert: dict) -> None:
    s = spec(backend=backend, divert_all=True)
    assert names(s) == ["icmpv6-nd", "root-uid", "established", "divert-all"]
    assert exprs(s)[-1][0] == divert  # no match before the divert statement
    assert "@managed" not in json.dumps(rule_objects(s))


def test_chain_priority_per_backend_and_table_layout() -> None:
    for backend, prio in (("nft", PRIORITY_NATIVE), ("xt", PRIORITY_XT)):
        cmds = create_commands(spec(backend=backend))
        assert cmds[0] == {"add": {"table": {"family": "inet", "name": "t1"}}}
        assert cmds[1] == {"add": {"set": {"family": "inet", "table": "t1", "name": "managed-v4", "type": "ipv4_addr"}}}
        assert cmds[2] == {"add": {"set": {"family": "inet", "table": "t1", "name": "managed-v6", "type": "ipv6_addr"}}}
        assert cmds[3] == {
            "add": {
                "chain": {
                    "family": "inet", "table": "t1", "name": CHAIN,
                    "type": "filter", "hook": "postrouting", "prio": prio, "policy": "accept",
                }
            }
        }  # fmt: skip
        assert all("rule" in c["add"] for c in cmds[4:]) and len(cmds) == 4 + 7
    assert PRIORITY_NATIVE == 95 and PRIORITY_XT == -160  # srcnat - 5; before iptables mangle (-150)


def test_rule_comments_fingerprint_the_expression() -> None:
    assert rule_comments(spec()) == rule_comments(spec())
    a, b = rule_comments(spec(queue_num=7)), rule_comments(spec(queue_num=8))
    assert a[:3] == b[:3] and all(x != y for x, y in zip(a[3:], b[3:]))
    assert rule_comments(spec(fail_open=False))[3] != a[3]
    assert rule_comments(spec(backend="xt"))[3] != a[3]


def test_spec_validation() -> None:
    for bad in ({"table": "a b"}, {"table": 'x";'}, {"queue_num": 70000}, {"mark": 0}, {"mark": 0xFFFFFFFF}, {"backend": "q"}):
        with pytest.raises(ValueError):
            RulesetSpec(**bad)  # type: ignore[arg-type]


def test_helper_commands() -> None:
    assert delete_table_commands("t1") == [
        {"add": {"table": {"family": "inet", "name": "t1"}}},
        {"delete": {"table": {"family": "inet", "name": "t1"}}},
    ]
    probe = probe_commands("p", NATIVE_QUEUE_PROBE)
    assert probe[0]["add"]["table"]["name"] == "p" and probe[-1] == {"delete": {"table": {"family": "inet", "name": "p"}}}
    assert probe[2]["add"]["rule"]["expr"] == [NATIVE_QUEUE_PROBE]
    assert "hook" not in probe[1]["add"]["chain"]  # the probe never sees traffic


# --- elements -----------------------------------------------------------------


def test_normalize_addresses() -> None:
    assert normalize_addresses(["10.0.0.1", b"\x0a\x00\x00\x02"], 4) == {"10.0.0.1", "10.0.0.2"}
    assert normalize_addresses(["FD00:0::0001"], 6) == {"fd00::1"}
    with pytest.raises(ValueError):
        normalize_addresses(["fd00::1"], 4)
    with pytest.raises(ValueError):
        normalize_addresses(["10.0.0.300"], 4)


def test_normalize_addresses_reads_the_agents_ipv4_bytes_as_ipaddress_does() -> None:
    """Four bytes take a faster way (inet_ntop); the text is the same as ipaddress's."""
    import ipaddress
    import random

    rng = random.Random(7)
    samples = [bytes(4), b"\xff" * 4, b"\x0a\x00\x00\x01", *(rng.randbytes(4) for _ in range(500))]
    assert normalize_addresses(samples, 4) == {str(ipaddress.ip_address(b)) for b in samples}
    with pytest.raises(ValueError):
        normalize_addresses([bytes(4)], 6)  # four bytes are no IPv6 address
    with pytest.raises(ValueError):
        normalize_addresses([bytes(16)], 4)


def test_diff_elements() -> None:
    d = diff_elements({"a", "b"}, {"b", "c"})
    assert d == ElementDelta(add=frozenset({"c"}), remove=frozenset({"a"}))
    assert not diff_elements({"a"}, {"a"})


def test_sync_commands_only_element_deltas() -> None:
    s = spec()
    cur = {"managed-v4": frozenset({"10.0.0.1", "10.0.0.2"}), "managed-v6": frozenset({"fd00::1"})}
    want = {"managed-v4": frozenset({"10.0.0.2", "10.0.0.10", "10.0.0.3"}), "managed-v6": frozenset({"fd00::1"})}
    cmds = sync_commands(s, s, cur, want)
    ref = {"family": "inet", "table": "t1", "name": "managed-v4"}
    assert cmds == [
        {"delete": {"element": {**ref, "elem": ["10.0.0.1"]}}},
        {"add": {"element": {**ref, "elem": ["10.0.0.3", "10.0.0.10"]}}},  # numeric order
    ]
    assert sync_commands(s, s, want, want) == []


def test_sync_commands_divert_switch_flushes_and_refills_chain() -> None:
    off, on = spec(), spec(divert_all=True)
    cmds = sync_commands(off, on, {}, {})
    assert cmds[0] == {"flush": {"chain": {"family": "inet", "table": "t1", "name": CHAIN}}}
    assert [c["add"]["rule"]["comment"] for c in cmds[1:]] == rule_comments(on)
    assert not any("delete" in c for c in cmds)  # the hooked chain is never deleted
    assert sync_commands(on, off, {}, {})[1:] == [{"add": r} for r in rule_objects(off)]


# --- reconcile -------------------------------------------------------------------


def listing(s: RulesetSpec, v4: list[str] = (), v6: list[str] = ()) -> list[dict]:  # type: ignore[assignment]
    """What libnftables lists for a table built from ``s`` (the parts the parser reads)."""
    out: list[dict] = [{"table": {"family": "inet", "name": s.table, "handle": 1}}]
    for name, typ, elems in (("managed-v4", "ipv4_addr", v4), ("managed-v6", "ipv6_addr", v6)):
        st = {"family": "inet", "name": name, "table": s.table, "type": typ, "handle": 2}
        if elems:
            st["elem"] = list(elems)
        out.append({"set": st})
    for meter in meter_sets(s):
        listed = dict(meter_set_object(s, meter)["set"], flags=["timeout"])  # libnftables leaves "dynamic" out
        out.append({"set": listed})
    out += [{"counter": {**counter_object(s)["counter"], "packets": 3, "bytes": 180}} for _ in counters(s)]
    for name in chain_names(s):
        out.append({"chain": {**chain_object(s, name)["chain"], "handle": 3}})
    for name in chain_names(s):
        for r in rule_objects(s, name):
            out.append({"rule": {**r["rule"], "expr": [{"normalised": "differently"}], "handle": 9}})
    return out


def test_reconcile_from_nothing_creates_everything() -> None:
    s = spec()
    cmds, elems = reconcile_commands(s, None, {"managed-v4": frozenset({"10.0.0.1"}), "managed-v6": frozenset()})
    assert cmds[: len(create_commands(s))] == create_commands(s)
    assert cmds[len(create_commands(s)) :] == [
        {"add": {"element": {"family": "inet", "table": "t1", "name": "managed-v4", "elem": ["10.0.0.1"]}}}
    ]
    assert elems == {"managed-v4": {"10.0.0.1"}, "managed-v6": frozenset()}


def test_reconcile_up_to_date_table_sends_nothing() -> None:
    s = spec()
    state = parse_table(listing(s, ["10.0.0.1"]))
    cmds, elems = reconcile_commands(s, state, None)
    assert cmds == []
    assert elems["managed-v4"] == {"10.0.0.1"}


def test_reconcile_replaces_stale_elements_only() -> None:
    s = spec()
    state = parse_table(listing(s, ["10.0.0.1", "10.0.0.9"], ["fd00::9"]))
    want = {"managed-v4": frozenset({"10.0.0.1", "10.0.0.2"}), "managed-v6": frozenset()}
    cmds, elems = reconcile_commands(s, state, want)
    ref = {"family": "inet", "table": "t1"}
    assert cmds == [
        {"delete": {"element": {**ref, "name": "managed-v4", "elem": ["10.0.0.9"]}}},
        {"add": {"element": {**ref, "name": "managed-v4", "elem": ["10.0.0.2"]}}},
        {"delete": {"element": {**ref, "name": "managed-v6", "elem": ["fd00::9"]}}},
    ]
    assert elems == want


def test_reconcile_rewrites_rules_of_another_config_without_deleting_chain() -> None:
    old, new = spec(fail_open=True), spec(fail_open=False)
    cmds, _ = reconcile_commands(new, parse_table(listing(old, ["10.0.0.1"])), None)
    assert cmds == [{"flush": {"chain": {"family": "inet", "table": "t1", "name": CHAIN}}}] + [
        {"add": r} for r in rule_objects(new)
    ]


def test_reconcile_recreates_chain_with_wrong_priority() -> None:
    old, new = spec(backend="nft"), spec(backend="xt")
    cmds, elems = reconcile_commands(new, parse_table(listing(old, ["10.0.0.1"])), None)
    chain_ref = {"family": "inet", "table": "t1", "name": CHAIN}
    assert cmds[:2] == [{"flush": {"chain": chain_ref}}, {"delete": {"chain": chain_ref}}]
    assert cmds[2]["add"]["chain"]["prio"] == PRIORITY_XT
    assert [c["add"]["rule"]["comment"] for c in cmds[3:]] == rule_comments(new)
    assert elems["managed-v4"] == {"10.0.0.1"}  # the sets are fine and keep their elements


def test_reconcile_recreates_wrong_sets_and_drops_foreign_objects() -> None:
    s = spec()
    items = listing(s, ["10.0.0.1"], ["fd00::1"])
    items[1]["set"]["flags"] = ["interval"]
    items[1]["set"]["elem"] = [{"prefix": {"addr": "10.0.0.0", "len": 24}}]
    items.append({"set": {"family": "inet", "name": "old-set", "table": "t1", "type": "ipv4_addr"}})
    items.append({"chain": {"family": "inet", "table": "t1", "name": "old-chain", "handle": 5}})
    cmds, elems = reconcile_commands(s, parse_table(items), None)
    ref = {"family": "inet", "table": "t1"}
    assert cmds[:5] == [
        {"flush": {"chain": {**ref, "name": "old-chain"}}},
        {"flush": {"chain": {**ref, "name": CHAIN}}},  # its rules use the set that goes
        {"delete": {"chain": {**ref, "name": "old-chain"}}},
        {"delete": {"set": {**ref, "name": "managed-v4"}}},
        {"delete": {"set": {**ref, "name": "old-set"}}},
    ]
    assert cmds[5] == {"add": {"set": {**ref, "name": "managed-v4", "type": "ipv4_addr"}}}
    assert [c["add"]["rule"]["comment"] for c in cmds[6:]] == rule_comments(s)
    assert elems == {"managed-v4": frozenset(), "managed-v6": {"fd00::1"}}


def test_installed_divert_all() -> None:
    s = spec()
    assert installed_divert_all(s, parse_table(listing(replace(s, divert_all=True)))) is True
    assert installed_divert_all(s, parse_table(listing(s))) is False
    assert installed_divert_all(s, parse_table(listing(spec(queue_num=9)))) is None
    assert installed_divert_all(s, None) is None


# --- xt rule arguments -------------------------------------------------------------


def test_xt_queue_rule_args() -> None:
    assert queue_rule_args(mark=0x200000, queue_num=7, bypass=True, comment="kube-netpol") == [
        "-m", "mark", "--mark", "0x200000/0x200000",
        "-m", "comment", "--comment", "kube-netpol",
        "-j", "NFQUEUE", "--queue-num", "7", "--queue-bypass",
    ]  # fmt: skip
    assert "--queue-bypass" not in queue_rule_args(mark=1, queue_num=0, bypass=False, comment="c")


SAVE = """-P POSTROUTING ACCEPT
-A POSTROUTING -m mark --mark 0x200000/0x200000 -m comment --comment kube-netpol -j NFQUEUE --queue-num 7
-A POSTROUTING -m comment --comment "kube-netpol other" -j ACCEPT
-A POSTROUTING -m comment --comment kube-netpol-2 -j ACCEPT
-A KUBE-X -m comment --comment kube-netpol -j ACCEPT
"""


def test_xt_parse_rules_finds_exactly_our_comment() -> None:
    assert parse_rules(SAVE, "kube-netpol") == [
        ["-m", "mark", "--mark", "0x200000/0x200000", "-m", "comment", "--comment", "kube-netpol",
         "-j", "NFQUEUE", "--queue-num", "7"],
    ]  # fmt: skip


class FakeRunner:
    """Stands in for iptables and ip6tables: the mangle chains of each, as argument lists."""

    def __init__(self, rules: list[list[str]]) -> None:
        self.chains: dict[tuple[str, str], list[list[str]]] = {("iptables", "POSTROUTING"): rules}
        self.calls: list[list[str]] = []

    @property
    def rules(self) -> list[list[str]]:
        return self.chains["iptables", "POSTROUTING"]

    def nonempty(self) -> dict[tuple[str, str], list[list[str]]]:
        return {k: v for k, v in self.chains.items() if v}

    def __call__(self, args: list[str]) -> Any:
        import subprocess

        self.calls.append(args)
        assert args[1:5] == ["-w", "5", "-t", "mangle"]
        op = args[5:]
        name = op[1]
        chain = self.chains.setdefault((args[0], name), [])
        if op[0] == "-S":
            out = f"-P {name} ACCEPT\n" + "".join(f"-A {name} " + " ".join(r) + "\n" for r in chain)
            return subprocess.CompletedProcess(args, 0, out, "")
        if op[0] == "-I":
            chain.insert(int(op[2]) - 1, op[3:])
        elif op[0] == "-D":
            chain.remove(op[2:])
        return subprocess.CompletedProcess(args, 0, "", "")


def test_xt_ensure_inserts_first_then_removes_stale() -> None:
    want = queue_rule_args(mark=0x200000, queue_num=7, bypass=True, comment="kn")
    stale = queue_rule_args(mark=0x200000, queue_num=3, bypass=True, comment="kn")
    foreign = ["-j", "ACCEPT"]
    run = FakeRunner([foreign, stale])
    xt = Xtables(runner=run)
    assert xt.ensure(4, want, "kn", remove_stale=False)
    assert run.rules == [want, foreign, stale]
    assert xt.ensure(4, want, "kn")
    assert run.rules == [want, foreign]
    assert not xt.ensure(4, want, "kn")
    run.rules.append(list(want))  # a duplicate from some accident
    assert xt.ensure(4, want, "kn") and sorted(run.rules) == sorted([want, foreign])  # one copy left
    assert xt.remove_ours(4, "kn") == 1 and run.rules == [foreign]
    assert {c[0] for c in run.calls} == {"iptables"}
    Xtables(runner=run).list_ours(6, "kn")
    assert run.calls[-1][0] == "ip6tables"


# --- queue backend choice ------------------------------------------------------------


class FakeNft:
    """Records transactions; ``tables`` is what list_table answers."""

    def __init__(self, native_queue: bool = True, tables: dict[str, list[dict]] | None = None) -> None:
        self.native_queue = native_queue
        self.tables = tables or {}
        self.transactions: list[list[dict]] = []
        self.fail_next = False

    def run(self, commands: list[dict]) -> list[dict]:
        commands = copy.deepcopy(list(commands))
        if not self.native_queue and '"queue"' in json.dumps(commands):
            raise NftablesError("Error: Could not process rule: No such file or directory", -1, commands)
        if self.fail_next:
            self.fail_next = False
            raise NftablesError("Error: Could not process rule: No such file or directory", -1, commands)
        self.transactions.append(commands)
        return []

    def list_table(self, table: str, terse: bool = False) -> list[dict] | None:
        listed = self.tables.get(table)
        if listed is None or not terse:
            return copy.deepcopy(listed)
        return [{"set": {k: v for k, v in o["set"].items() if k != "elem"}} if "set" in o else o
                for o in copy.deepcopy(listed)]

    def counter_packets(self, table: str) -> dict[str, int]:
        return {o["counter"]["name"]: o["counter"].get("packets", 0) for o in self.tables.get(table) or []
                if "counter" in o}

    def list_set(self, table: str, name: str) -> dict | None:
        return next((copy.deepcopy(o["set"]) for o in self.tables.get(table) or [] if o.get("set", {}).get("name") == name),
                    None)


def test_resolve_queue_backend() -> None:
    assert resolve_queue_backend("auto", FakeNft(native_queue=True)) == "nft"  # type: ignore[arg-type]
    assert resolve_queue_backend("auto", FakeNft(native_queue=False)) == "xt"  # type: ignore[arg-type]
    assert resolve_queue_backend("xt", FakeNft(native_queue=True)) == "xt"  # type: ignore[arg-type]
    assert resolve_queue_backend("nft", FakeNft(native_queue=True)) == "nft"  # type: ignore[arg-type]
    with pytest.raises(QueueBackendUnavailable, match="no nftables queue expression"):
        resolve_queue_backend("nft", FakeNft(native_queue=False))  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        resolve_queue_backend("bogus", FakeNft())  # type: ignore[arg-type]


def test_probe_raises_other_errors() -> None:
    class Broken(FakeNft):
        def run(self, commands: list[dict]) -> list[dict]:
            raise NftablesError("Error: Operation not permitted", -1, commands)

    with pytest.raises(NftablesError, match="not permitted"):
        queue_backend.detect_queue_backend(Broken())  # type: ignore[arg-type]


# --- Dataplane transactions -------------------------------------------------------


def make_dataplane(native: bool = True, tables: dict | None = None, **cfg: Any) -> tuple[Dataplane, FakeNft, FakeRunner]:
    nft = FakeNft(native_queue=native, tables=tables)
    run = FakeRunner([])
    config = DataplaneConfig(table="t1", queue_num=7, **{"new_flow_limit": 0, **cfg})
    return Dataplane(config, nft=nft, xtables=Xtables(runner=run)), nft, run  # type: ignore[arg-type]


def test_dataplane_start_and_sync_are_single_transactions() -> None:
    dp, nft, run = make_dataplane(native=True)
    with pytest.raises(DataplaneError):
        dp.sync([], [], False)
    assert dp.start(["10.0.0.1"], []) == "nft"
    assert len(nft.transactions) == 2  # the probe, then the table
    assert nft.transactions[1][-1]["add"]["element"]["elem"] == ["10.0.0.1"]
    assert not any(c[5] == "-I" for c in run.calls)  # native backend: no xt rule added

    nft.transactions.clear()
    assert dp.sync(["10.0.0.2"], ["fd00::1"], False)
    assert len(nft.transactions) == 1
    kinds = [(next(iter(c)), next(iter(c.values()))["element"]["name"]) for c in nft.transactions[0]]
    assert kinds == [("delete", "managed-v4"), ("add", "managed-v4"), ("add", "managed-v6")]
    assert dp.managed == ({"10.0.0.2"}, {"fd00::1"})

    assert not dp.sync(["10.0.0.2"], ["fd00::1"], False)
    assert len(nft.transactions) == 1  # nothing to do, nothing sent

    assert dp.sync(["10.0.0.2"], ["fd00::1"], True)
    assert nft.transactions[-1][0] == {"flush": {"chain": {"family": "inet", "table": "t1", "name": CHAIN}}}
    assert dp.divert_all
    assert dp.sync(["10.0.0.3"], [], True) and dp.divert_all
    assert dp.sync(["10.0.0.3"], [], False) and dp.managed == ({"10.0.0.3"}, frozenset()) and not dp.divert_all


def test_dataplane_xt_backend_adds_xt_rules_for_both_families() -> None:
    dp, nft, run = make_dataplane(native=False, fail_open=False, mark=0x100000, netfilter_bug_1766_fix=False)
    assert dp.start() == "xt"
    inserted = [c for c in run.calls if c[5] == "-I"]
    assert [c[0] for c in inserted] == ["iptables", "ip6tables"]
    rule = queue_rule_args(mark=0x100000, queue_num=7, bypass=False, comment="t1")
    assert inserted[0][6:] == ["POSTROUTING", "1", *rule]
    assert run.nonempty() == {("iptables", "POSTROUTING"): [rule], ("ip6tables", "POSTROUTING"): [rule]}
    table_tx = nft.transactions[-1]
    assert table_tx[3]["add"]["chain"]["prio"] == PRIORITY_XT


def test_dataplane_sync_repairs_after_kernel_surprise() -> None:
    dp, nft, _ = make_dataplane()
    dp.start(["10.0.0.1"], [])
    nft.fail_next = True  # e.g. someone flushed the set: deleting 10.0.0.1 fails
    nft.tables["t1"] = listing(dp.spec)  # kernel: the table with empty sets
    assert dp.sync(["10.0.0.2"], [], False)
    assert nft.transactions[-1] == [
        {"add": {"element": {"family": "inet", "table": "t1", "name": "managed-v4", "elem": ["10.0.0.2"]}}}
    ]
    assert dp.managed[0] == {"10.0.0.2"}


def test_dataplane_start_keeps_earlier_elements_and_mode_when_not_told() -> None:
    earlier = spec(backend="nft", divert_all=True, netfilter_bug_1766_fix=True)
    dp, nft, _ = make_dataplane(tables={"t1": listing(earlier, ["10.0.0.5"], ["fd00::5"])})
    dp.start()
    assert len(nft.transactions) == 1  # only the probe: nothing to repair
    assert dp.divert_all and dp.managed == ({"10.0.0.5"}, {"fd00::5"})


def test_dataplane_stop_fail_open_keeps_fail_closed_removes() -> None:
    dp, nft, run = make_dataplane(native=False, fail_open=True)
    dp.start()
    before = len(nft.transactions)
    dp.stop()
    assert len(nft.transactions) == before and not any(c[5] == "-D" for c in run.calls)
    assert not dp.started

    dp, nft, run = make_dataplane(native=False, fail_open=False)
    dp.start()
    assert len(run.nonempty()) == 4  # {iptables, ip6tables} x {POSTROUTING, PREROUTING}
    dp.stop()
    assert nft.transactions[-1] == delete_table_commands("t1")
    assert run.nonempty() == {}
    assert sum(c[5] == "-D" for c in run.calls) == 4


def test_cleanup_is_idempotent_and_tolerates_missing_binaries() -> None:
    nft = FakeNft()

    def missing(args: list[str]) -> Any:
        raise FileNotFoundError(args[0])

    cleanup("t1", nft=nft, xtables=Xtables(runner=missing))  # type: ignore[arg-type]
    cleanup("t1", nft=nft, xtables=Xtables(runner=missing))  # type: ignore[arg-type]
    assert nft.transactions == [delete_table_commands("t1")] * 2
    with pytest.raises(ValueError):
        cleanup("bad name", nft=nft)  # type: ignore[arg-type]


# --- netfilter bug 1766 workaround: DNS judged on prerouting -------------------------------

MATCH_MARKED = {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 0x200000]}, "right": 0x200000}}
UNMARK = {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 0xFFDFFFFF]}}}
PRE_HEAD = [
    [{"match": {"op": "==", "left": {"meta": {"key": "iiftype"}}, "right": "loopback"}}, ACCEPT],
    [{"match": {"op": "!=", "left": {"meta": {"key": "l4proto"}}, "right": 17}}, ACCEPT],
    [{"match": {"op": "!=", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": 53}}, ACCEPT],
    [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, ACCEPT],
]


def fix(**kw: Any) -> RulesetSpec:
    return spec(netfilter_bug_1766_fix=True, **kw)


def managed_matches() -> list[dict]:
    return [
        {"match": {"op": "==", "left": {"payload": {"protocol": p, "field": f}}, "right": "@" + s}}
        for p, s in (("ip", "managed-v4"), ("ip6", "managed-v6"))
        for f in ("saddr", "daddr")
    ]


def test_bug_1766_fix_is_the_default_and_adds_a_prerouting_chain() -> None:
    assert RulesetSpec().netfilter_bug_1766_fix and DataplaneConfig().netfilter_bug_1766_fix
    assert [c.name for c in chains(fix())] == [CHAIN, PREROUTING_CHAIN]
    assert [c.name for c in chains(spec())] == [CHAIN]
    assert xt_chains(fix(backend="xt")) == ("POSTROUTING", "PREROUTING") and xt_chains(spec()) == ("POSTROUTING",)
    with pytest.raises(ValueError):
        rule_objects(spec(), PREROUTING_CHAIN)  # no such chain without the workaround
    off = json.dumps(create_commands(spec()))
    assert '"prerouting"' not in off and '"iiftype"' not in off and "judged" not in off


def test_bug_1766_native_ruleset() -> None:
    s = fix(backend="nft", fail_open=True)
    cmds = create_commands(s)
    ref = {"family": "inet", "table": "t1"}
    assert cmds[3:5] == [
        {"add": {"chain": {**ref, "name": CHAIN, "type": "filter", "hook": "postrouting", "prio": 95, "policy": "accept"}}},
        {"add": {"chain": {**ref, "name": PREROUTING_CHAIN, "type": "filter", "hook": "prerouting", "prio": -95, "policy": "accept"}}},
    ]  # fmt: skip
    assert PRIORITY_PREROUTING_NATIVE == -95  # dstnat + 5: after Service DNAT, before routing
    rule_chains = [c["add"]["rule"]["chain"] for c in cmds[5:]]
    assert rule_chains == [CHAIN] * 8 + [PREROUTING_CHAIN] * 8
    # Postrouting: judged packets first (their bit cleared), then the usual rules, queueing unmarked.
    assert names(s) == ["judged-at-prerouting", "icmpv6-nd", "root-uid", "established",
                        "managed-v4-saddr", "managed-v4-daddr", "managed-v6-saddr", "managed-v6-daddr"]  # fmt: skip
    post = exprs(s)
    assert post[0] == [MATCH_MARKED, UNMARK, ACCEPT]
    assert post[4:] == [[m, QUEUE_BYPASS] for m in managed_matches()]
    # Prerouting: only new DNS requests of managed pods; the bit is set before the queue statement.
    pre = [o["rule"]["expr"] for o in rule_objects(s, PREROUTING_CHAIN)]
    assert [c.split()[0] for c in rule_comments(s, PREROUTING_CHAIN)] == [
        "loopback", "not-udp", "not-dns", "established",
        "managed-v4-saddr", "managed-v4-daddr", "managed-v6-saddr", "managed-v6-daddr",
    ]  # fmt: skip
    assert pre[:4] == PRE_HEAD
    assert pre[4:] == [[m, MARK_XT, {"queue": {"num": 7, "flags": ["bypass"]}}] for m in managed_matches()]
    closed = [o["rule"]["expr"] for o in rule_objects(fix(fail_open=False), PREROUTING_CHAIN)]
    assert [e[-1] for e in closed[4:]] == [QUEUE_CLOSED] * 4


def test_bug_1766_xt_ruleset() -> None:
    s = fix(backend="xt", mark=0x1000)
    cmds = create_commands(s)
    assert '"queue"' not in json.dumps(cmds)  # this kernel would reject the whole transaction
    pre_chain = cmds[4]["add"]["chain"]
    assert (pre_chain["name"], pre_chain["hook"], pre_chain["prio"]) == (PREROUTING_CHAIN, "prerouting", -160)
    assert PRIORITY_PREROUTING_XT == -160  # before iptables' mangle PREROUTING (-150) queues on the mark
    mark = {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 0x1000]}}}
    unmark = {"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"&": [{"meta": {"key": "mark"}}, 0xFFFFEFFF]}}}
    post = exprs(s)
    assert post[0] == [
        {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 0x1000]}, "right": 0x1000}}, unmark, ACCEPT
    ]
    assert post[4:] == [[m, mark, ACCEPT] for m in managed_matches()]
    pre = [o["rule"]["expr"] for o in rule_objects(s, PREROUTING_CHAIN)]
    assert pre[:4] == PRE_HEAD
    assert pre[4:] == [[m, mark, ACCEPT] for m in managed_matches()]


@pytest.mark.parametrize("backend,divert", [("nft", [MARK_XT, QUEUE_BYPASS]), ("xt", [MARK_XT, ACCEPT])])
def test_bug_1766_divert_all_queues_every_new_dns_request(backend: str, divert: list) -> None:
    s = fix(backend=backend, divert_all=True)
    pre = [o["rule"]["expr"] for o in rule_objects(s, PREROUTING_CHAIN)]
    assert pre == [*PRE_HEAD, divert]
    assert rule_comments(s, PREROUTING_CHAIN)[-1].startswith("divert-all ")


def test_bug_1766_rule_comments_follow_the_mark() -> None:
    a, b = rule_comments(fix()), rule_comments(fix(mark=0x1000))
    assert a[0] != b[0] and a[1:] == b[1:]  # native: only the judged rule uses the mark on postrouting
    pa, pb = rule_comments(fix(), PREROUTING_CHAIN), rule_comments(fix(mark=0x1000), PREROUTING_CHAIN)
    assert pa[:4] == pb[:4] and all(x != y for x, y in zip(pa[4:], pb[4:]))


def test_bug_1766_sync_divert_switch_refills_both_chains() -> None:
    off, on = fix(), fix(divert_all=True)
    cmds = sync_commands(off, on, {}, {})
    ref = {"family": "inet", "table": "t1"}
    flushes = [c for c in cmds if "flush" in c]
    assert flushes == [{"flush": {"chain": {**ref, "name": CHAIN}}}, {"flush": {"chain": {**ref, "name": PREROUTING_CHAIN}}}]
    added = [c["add"]["rule"]["comment"] for c in cmds if "add" in c]
    assert added == rule_comments(on) + rule_comments(on, PREROUTING_CHAIN)
    assert not any("delete" in c for c in cmds)
    with pytest.raises(ValueError):
        sync_commands(spec(), fix(), {}, {})  # switching the workaround is a reconcile


def test_bug_1766_reconcile_turning_the_workaround_on_and_off() -> None:
    ref = {"family": "inet", "table": "t1"}
    # On: the prerouting chain is created, the postrouting chain refilled (not re-created), elements kept.
    cmds, elems = reconcile_commands(fix(), parse_table(listing(spec(), ["10.0.0.1"])), None)
    assert cmds == [
        {"flush": {"chain": {**ref, "name": CHAIN}}},
        {"add": chain_object(fix(), PREROUTING_CHAIN)},
        *[{"add": r} for r in rule_objects(fix())],
        *[{"add": r} for r in rule_objects(fix(), PREROUTING_CHAIN)],
    ]
    assert elems["managed-v4"] == {"10.0.0.1"}
    # Up to date with the workaround: nothing to send.
    assert reconcile_commands(fix(), parse_table(listing(fix(), ["10.0.0.1"])), None)[0] == []
    # Off: the prerouting chain goes (flushed first: its rules pin the sets), postrouting refilled.
    cmds, _ = reconcile_commands(spec(), parse_table(listing(fix(), ["10.0.0.1"])), None)
    assert cmds == [
        {"flush": {"chain": {**ref, "name": PREROUTING_CHAIN}}},
        {"flush": {"chain": {**ref, "name": CHAIN}}},
        {"delete": {"chain": {**ref, "name": PREROUTING_CHAIN}}},
        *[{"add": r} for r in rule_objects(spec())],
    ]


def test_bug_1766_reconcile_backend_switch_recreates_both_chains() -> None:
    old, new = fix(backend="nft"), fix(backend="xt")
    cmds, _ = reconcile_commands(new, parse_table(listing(old)), None)
    deleted = [c["delete"]["chain"]["name"] for c in cmds if "delete" in c]
    added = {c["add"]["chain"]["name"]: c["add"]["chain"]["prio"] for c in cmds if "add" in c and "chain" in c["add"]}
    assert deleted == [CHAIN, PREROUTING_CHAIN]
    assert added == {CHAIN: PRIORITY_XT, PREROUTING_CHAIN: PRIORITY_PREROUTING_XT}


def test_bug_1766_installed_divert_all_survives_switching_the_workaround() -> None:
    assert installed_divert_all(fix(), parse_table(listing(spec(divert_all=True)))) is True
    assert installed_divert_all(spec(), parse_table(listing(fix(divert_all=True)))) is True
    assert installed_divert_all(fix(), parse_table(listing(spec()))) is False


def test_bug_1766_dataplane_xt_queue_rules_in_both_mangle_chains() -> None:
    dp, nft, run = make_dataplane(native=False, fail_open=True)
    events: list[str] = []
    nft_run, xt_run = nft.run, run.__call__
    nft.run = lambda cmds: (events.append("nft"), nft_run(cmds))[1]  # type: ignore[method-assign]
    assert dp.start(["10.0.0.1"], []) == "xt"
    rule = queue_rule_args(mark=0x200000, queue_num=7, bypass=True, comment="t1")
    assert run.nonempty() == {
        ("iptables", "POSTROUTING"): [rule], ("ip6tables", "POSTROUTING"): [rule],
        ("iptables", "PREROUTING"): [rule], ("ip6tables", "PREROUTING"): [rule],
    }  # fmt: skip
    assert [c["add"]["chain"]["name"] for c in nft.transactions[-1] if "chain" in c.get("add", {})] == [
        CHAIN, PREROUTING_CHAIN,
    ]  # fmt: skip

    # A restart with the workaround off: the PREROUTING rules go, only after the table stopped marking there.
    nft.tables["t1"] = listing(dp.spec, ["10.0.0.1"])
    def logged_xt(args: list[str]) -> Any:
        events.append(" ".join(args[5:7]))  # e.g. "-D PREROUTING"
        return xt_run(args)

    config = DataplaneConfig(table="t1", queue_num=7, netfilter_bug_1766_fix=False)
    off = Dataplane(config, nft=nft, xtables=Xtables(runner=logged_xt))  # type: ignore[arg-type]
    events.clear()
    assert off.start() == "xt"
    assert run.nonempty() == {("iptables", "POSTROUTING"): [rule], ("ip6tables", "POSTROUTING"): [rule]}
    assert events.index("nft", 1) < events.index("-D PREROUTING")  # events[0] is the backend probe
    added_chains = [c["add"]["chain"]["name"] for c in nft.transactions[-1] if "chain" in c.get("add", {})]
    assert PREROUTING_CHAIN not in added_chains
    assert {"delete": {"chain": {"family": "inet", "table": "t1", "name": PREROUTING_CHAIN}}} in nft.transactions[-1]


def test_bug_1766_native_backend_removes_xt_rules_an_xt_run_left() -> None:
    dp, _, run = make_dataplane(native=True)
    stale = queue_rule_args(mark=0x200000, queue_num=7, bypass=True, comment="t1")
    run.chains["iptables", "PREROUTING"] = [list(stale)]
    run.chains["ip6tables", "PREROUTING"] = [list(stale), ["-j", "ACCEPT"]]
    assert dp.start() == "nft"
    assert run.nonempty() == {("ip6tables", "PREROUTING"): [["-j", "ACCEPT"]]}  # someone else's rule stays


def test_bug_1766_cleanup_removes_xt_rules_from_both_chains() -> None:
    rule = queue_rule_args(mark=0x200000, queue_num=7, bypass=True, comment="t1")
    run = FakeRunner([list(rule)])
    run.chains["ip6tables", "PREROUTING"] = [list(rule), ["-j", "ACCEPT"]]
    cleanup("t1", nft=FakeNft(), xtables=Xtables(runner=run))  # type: ignore[arg-type]
    assert run.nonempty() == {("ip6tables", "PREROUTING"): [["-j", "ACCEPT"]]}


def test_cleanup_says_what_it_removed_and_only_that() -> None:
    from kube_netpol.agent.cleanup import describe

    rule = queue_rule_args(mark=0x200000, queue_num=7, bypass=True, comment="t1")
    run = FakeRunner([list(rule)])
    run.chains["ip6tables", "PREROUTING"] = [list(rule), ["-j", "ACCEPT"]]
    nft = FakeNft(tables={"t1": [{"table": {"family": "inet", "name": "t1"}}]})
    removed = cleanup("t1", nft=nft, xtables=Xtables(runner=run))  # type: ignore[arg-type]
    assert removed.table and not removed.nothing
    assert {key: n for key, n in removed.xt_rules.items() if n} == {(4, "POSTROUTING"): 1, (6, "PREROUTING"): 1}
    assert describe("t1", removed) == (
        "removed table inet t1; removed xtables rules with comment t1: "
        "1 in iptables mangle POSTROUTING, 1 in ip6tables mangle PREROUTING")

    nft.tables.clear()  # the table is gone now, and so are our rules
    again = cleanup("t1", nft=nft, xtables=Xtables(runner=run))  # type: ignore[arg-type]
    assert again.nothing
    assert describe("t1", again) == "nothing to remove: no table inet t1 and no xtables rules with comment t1"

    only_rules = cleanup("t1", nft=nft, xtables=Xtables(runner=FakeRunner([list(rule)])))  # type: ignore[arg-type]
    assert describe("t1", only_rules) == "no table inet t1; removed xtables rules with comment t1: 1 in iptables mangle POSTROUTING"


# --- the per-source limit of new flows ahead of the queue ------------------------------------

LIMITED = [{"counter": "new-flows-limited"}, {"drop": None}]


def limiter_exprs(s: RulesetSpec, chain: str = "divert") -> list[list[dict]]:
    return [o["rule"]["expr"] for o in rule_objects(s, chain)]


def test_new_flow_limit_is_the_default_and_adds_a_regular_chain_sets_and_a_counter() -> None:
    s = RulesetSpec(table="t1", netfilter_bug_1766_fix=False)
    assert s.new_flow_limit == 2000 == DataplaneConfig().spec("nft").new_flow_limit
    cmds = create_commands(s)
    added = [next(iter(c["add"])) for c in cmds]
    assert added[:6] == ["table", "set", "set", "set", "set", "counter"]
    meter = cmds[3]["add"]["set"]
    assert (meter["name"], meter["type"], meter["flags"]) == ("new-flows-v4", "ipv4_addr", ["timeout"])
    assert cmds[5] == {"add": {"counter": {"family": "inet", "table": "t1", "name": "new-flows-limited"}}}
    regular = cmds[6]["add"]["chain"]
    assert regular == {"family": "inet", "table": "t1", "name": "divert"}  # no hook: only reached by goto
    assert chain_names(s) == ("divert", "postrouting")


@pytest.mark.parametrize("backend, divert", [("nft", [QUEUE_BYPASS]), ("xt", [MARK_XT, ACCEPT])])
def test_new_flow_limit_rules_drop_over_the_limit_then_divert(backend: str, divert: list) -> None:
    s = spec(backend=backend, new_flow_limit=250)
    v4, v6, last = limiter_exprs(s)
    assert v4 == [
        {"match": {"op": "==", "left": {"meta": {"key": "nfproto"}}, "right": "ipv4"}},
        {"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@new-flows-v4",
                 "stmt": [{"limit": {"rate": 250, "per": "second", "burst": 250, "inv": True}}]}},
        *LIMITED,
    ]
    assert v6[1]["set"]["elem"] == {"payload": {"protocol": "ip6", "field": "saddr"}}
    assert v6[1]["set"]["set"] == "@new-flows-v6"
    assert last == divert
    # Over the limit is a drop, never an accept: fail-open changes only the queue's bypass flag.
    for fail_open in (True, False):
        for expr in limiter_exprs(spec(backend=backend, new_flow_limit=250, fail_open=fail_open))[:2]:
            assert expr[-1] == {"drop": None} and {"accept": None} not in expr


def test_new_flow_limit_divert_rules_go_to_the_limiter_once() -> None:
    s = spec(new_flow_limit=250)
    e = exprs(s)
    assert [x[-1] for x in e[3:]] == [{"goto": {"target": "divert"}}] * 4
    assert exprs(replace(s, divert_all=True))[-1] == [{"goto": {"target": "divert"}}]
    assert '"queue"' not in json.dumps(rule_objects(s))  # only the limiter's chain queues


def test_new_flow_limit_with_the_bug_1766_chain_has_its_own_marked_divert() -> None:
    s = spec(new_flow_limit=250, netfilter_bug_1766_fix=True)
    assert chain_names(s) == ("divert", "divert-dns", "postrouting", "prerouting")
    assert [x[-1] for x in exprs_of(s, "prerouting")[4:]] == [{"goto": {"target": "divert-dns"}}] * 4
    assert limiter_exprs(s, "divert-dns")[-1] == [MARK_NFT, QUEUE_BYPASS]
    assert limiter_exprs(s, "divert-dns")[:2] == limiter_exprs(s)[:2]  # one bucket per source for both


MARK_NFT = MARK_XT


def exprs_of(s: RulesetSpec, chain: str) -> list[list[dict]]:
    return [o["rule"]["expr"] for o in rule_objects(s, chain)]


def test_new_flow_limit_validation() -> None:
    with pytest.raises(ValueError, match="new flow limit"):
        spec(new_flow_limit=-1)


def test_new_flow_limit_reconcile_up_to_date_sends_nothing_and_repairs_a_missing_counter() -> None:
    s = spec(new_flow_limit=250, netfilter_bug_1766_fix=True)
    assert reconcile_commands(s, parse_table(listing(s, ["10.0.0.1"])), None)[0] == []
    broken = [o for o in listing(s) if "counter" not in o]
    cmds, _ = reconcile_commands(s, parse_table(broken), None)
    assert {"add": counter_object(s)} in cmds
    # The rules that count in it are rewritten after it exists.
    assert cmds.index({"add": counter_object(s)}) < min(i for i, c in enumerate(cmds) if "rule" in c.get("add", {}))


def test_new_flow_limit_switched_off_removes_its_chain_sets_and_rules() -> None:
    on = spec(new_flow_limit=250)
    cmds, _ = reconcile_commands(spec(), parse_table(listing(on)), None)
    assert {"delete": {"chain": {"family": "inet", "table": "t1", "name": "divert"}}} in cmds
    assert {"delete": {"set": {"family": "inet", "table": "t1", "name": "new-flows-v4"}}} in cmds
    flushes = [i for i, c in enumerate(cmds) if "flush" in c]
    deletes = [i for i, c in enumerate(cmds) if "delete" in c]
    assert max(flushes) < min(deletes)  # the goto rules go before the chain they name


def test_new_flow_limit_change_of_rate_rewrites_only_the_limiter() -> None:
    cmds, _ = reconcile_commands(spec(new_flow_limit=500), parse_table(listing(spec(new_flow_limit=250))), None)
    assert cmds[0] == {"flush": {"chain": {"family": "inet", "table": "t1", "name": "divert"}}}
    assert all(c.get("add", {}).get("rule", {}).get("chain", "divert") == "divert" for c in cmds)


def test_installed_divert_all_survives_switching_the_limit() -> None:
    assert installed_divert_all(spec(), parse_table(listing(spec(new_flow_limit=250, divert_all=True)))) is True
    assert installed_divert_all(spec(new_flow_limit=9), parse_table(listing(spec(divert_all=True)))) is True


# --- drift: what differs, for a log line and a metric ----------------------------------------------

from kube_netpol.dataplane.drift import KINDS, Drift, table_drift  # noqa: E402


def _drift_of(s: RulesetSpec, objects: list[dict], v4: frozenset = frozenset({"10.0.0.1"})) -> Drift:
    return table_drift(s, parse_table(objects), {"managed-v4": v4, "managed-v6": frozenset()})


def test_drift_none_when_the_kernel_holds_the_spec() -> None:
    s = spec(new_flow_limit=250, netfilter_bug_1766_fix=True)
    drift = _drift_of(s, listing(s, ["10.0.0.1"]))
    assert not drift and drift.kinds() == () and drift.describe() == "no drift"


def test_drift_kinds_each_tampering() -> None:
    s = spec(new_flow_limit=250)
    base = listing(s, ["10.0.0.1"])
    assert table_drift(s, None, {}).kinds() == ("table",)
    assert _drift_of(s, listing(s, [])).kinds() == ("element",)
    assert _drift_of(s, listing(s, ["10.0.0.1", "10.0.0.9"])).extra_elements == 1
    no_counter = [o for o in base if "counter" not in o]
    assert "counter" in _drift_of(s, no_counter).kinds()
    foreign = base + [{"chain": {"family": "inet", "table": "t1", "name": "intruder", "handle": 7}}]
    assert _drift_of(s, foreign).kinds() == ("foreign",)
    moved = copy.deepcopy(base)
    next(o for o in moved if o.get("chain", {}).get("name") == CHAIN)["chain"]["prio"] = 0
    assert _drift_of(s, moved).chains == (CHAIN,)
    extra_rule = base + [{"rule": {"family": "inet", "table": "t1", "chain": CHAIN, "expr": [], "handle": 99}}]
    drift = _drift_of(s, extra_rule)
    assert drift.kinds() == ("rule",) and drift.rules == (CHAIN,)
    assert drift.describe() == "rules changed in: postrouting"
    assert set(Drift(table_missing=True, xt_rules=("IPv4 mangle POSTROUTING",)).kinds()) <= set(KINDS)


def test_drift_of_a_missing_set_counts_its_addresses() -> None:
    s = spec()
    without_v4 = [o for o in listing(s, ["10.0.0.1"]) if o.get("set", {}).get("name") != "managed-v4"]
    drift = _drift_of(s, without_v4)
    assert drift.sets == ("managed-v4",) and drift.missing_elements == 1
    assert {"set", "element"} <= set(drift.kinds())


def test_in_sync_follows_check_and_repair_and_a_refused_repair() -> None:
    dp, nft, _ = make_dataplane()
    assert not dp.in_sync  # not started
    dp.start(["10.0.0.1"], [])
    assert dp.in_sync
    nft.tables["t1"] = listing(dp.spec, ["10.0.0.1"])
    assert not dp.check() and dp.in_sync
    nft.tables["t1"] = listing(dp.spec, [])  # someone flushed the set
    drift = dp.check()
    assert drift.kinds() == ("element",) and not dp.in_sync
    nft.fail_next = True  # the kernel refuses the repair
    with pytest.raises(NftablesError):
        dp.repair()
    assert not dp.in_sync
    assert dp.repair().kinds() == ("element",) and dp.in_sync
    assert nft.transactions[-1] == [
        {"add": {"element": {"family": "inet", "table": "t1", "name": "managed-v4", "elem": ["10.0.0.1"]}}}
    ]
