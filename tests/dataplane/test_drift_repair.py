"""Someone changes the agent's kernel state; ``Dataplane.check`` says what, ``repair`` brings it back.

Each test runs a Dataplane in a forked child inside a network namespace of its
own (see test_nftables_dataplane), tampers with what it made the way an
operator or another agent could (nft, iptables), and reads the kernel back.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from test_nftables_dataplane import in_netns, list_table, netns, pytestmark, sh, table, xt_rule, xt_rules  # noqa: F401

from kube_netpol.dataplane import Dataplane, DataplaneConfig
from kube_netpol.dataplane.ruleset import RulesetSpec, rule_comments

V4 = ["10.1.0.1", "10.1.0.2", "10.1.0.3"]
V6 = ["fd00::1"]


def run(*argv: str) -> None:
    """A command in the child's namespace (the child already entered it)."""
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"{argv}: {result.stderr}"


def rule_handle(table: str, chain: str, name: str) -> str:
    import json

    out = subprocess.run(["nft", "-j", "list", "chain", "inet", table, chain], capture_output=True, text=True,
                         check=True).stdout
    rules = [o["rule"] for o in json.loads(out)["nftables"] if "rule" in o]
    return str(next(r["handle"] for r in rules if r.get("comment", "").split()[0] == name))


def xt_args(table: str) -> list[str]:
    from kube_netpol.dataplane.xtables import queue_rule_args

    return queue_rule_args(mark=0x200000, queue_num=100, bypass=False, comment=table)


TAMPERING: dict[str, tuple[Callable[[str], None], set[str]]] = {
    "table deleted": (lambda t: run("nft", "delete", "table", "inet", t), {"table"}),
    "chain deleted": (
        lambda t: (run("nft", "flush", "chain", "inet", t, "postrouting"),
                   run("nft", "delete", "chain", "inet", t, "postrouting")),
        {"chain"},
    ),
    "chain policy changed": (lambda t: run("nft", "add", "chain", "inet", t, "postrouting",
                                           "{ type filter hook postrouting priority -160 ; policy drop ; }"), {"chain"}),
    "accept inserted first": (lambda t: run("nft", "insert", "rule", "inet", t, "postrouting", "accept"), {"rule"}),
    "divert rule deleted": (
        lambda t: run("nft", "delete", "rule", "inet", t, "postrouting", "handle",
                      rule_handle(t, "postrouting", "managed-v4-daddr")),
        {"rule"},
    ),
    "limiter flushed": (lambda t: run("nft", "flush", "chain", "inet", t, "divert"), {"rule"}),
    "set element deleted": (lambda t: run("nft", "delete", "element", "inet", t, "managed-v4", "{ 10.1.0.2 }"),
                            {"element"}),
    "set element added": (lambda t: run("nft", "add", "element", "inet", t, "managed-v4", "{ 10.9.9.9 }"),
                          {"element"}),
    "set flushed": (lambda t: run("nft", "flush", "set", "inet", t, "managed-v6"), {"element"}),
    "foreign chain added": (lambda t: run("nft", "add", "chain", "inet", t, "intruder"), {"foreign"}),
    "xt rule deleted": (lambda t: run("iptables", "-w", "5", "-t", "mangle", "-D", "POSTROUTING", *xt_args(t)),
                        {"xt_rule"}),
    "xt rule of IPv6 prerouting deleted": (
        lambda t: run("ip6tables", "-w", "5", "-t", "mangle", "-D", "PREROUTING", *xt_args(t)), {"xt_rule"}),
    "xt rule changed": (
        lambda t: (run("iptables", "-w", "5", "-t", "mangle", "-D", "POSTROUTING", *xt_args(t)),
                   run("iptables", "-w", "5", "-t", "mangle", "-I", "POSTROUTING", "1",
                       *[a if a != "100" else "101" for a in xt_args(t)])),
        {"xt_rule"},
    ),
}


def _tamper_check_repair(table: str, tamper: str) -> dict[str, Any]:
    dp = Dataplane(DataplaneConfig(table=table, queue_backend="xt", fail_open=False))
    dp.start(V4, V6)
    before = dp.check()
    TAMPERING[tamper][0](table)
    found = dp.check()
    in_sync_after_check = dp.in_sync
    repaired = dp.repair()
    return {
        "before": bool(before), "found": set(found.kinds()), "described": found.describe(),
        "in_sync_after_check": in_sync_after_check, "repaired": set(repaired.kinds()),
        "in_sync": dp.in_sync, "after": dp.check().describe(),
    }


@pytest.mark.parametrize("tamper", list(TAMPERING))
def test_each_kind_of_tampering_is_found_and_repaired(netns: str, table: str, tamper: str) -> None:
    result = in_netns(netns, _tamper_check_repair, table, tamper)
    assert result["before"] is False  # right after start nothing differs
    assert result["found"] == TAMPERING[tamper][1], result["described"]
    assert result["in_sync_after_check"] is False
    assert result["repaired"] == result["found"]
    assert result["in_sync"] is True and result["after"] == "no drift"
    # And the kernel holds exactly the ruleset again, read back independently.
    spec = RulesetSpec(table=table, backend="xt", fail_open=False)
    listed = list_table(netns, table)
    assert listed is not None
    assert listed.elements("managed-v4") == set(V4) and listed.elements("managed-v6") == set(V6)
    for chain in ("postrouting", "prerouting", "divert", "divert-dns"):
        assert listed.comments_in(chain) == rule_comments(spec, chain)
    assert set(listed.chains) == {"postrouting", "prerouting", "divert", "divert-dns"}
    assert listed.chains["postrouting"]["policy"] == "accept"
    for binary in ("iptables", "ip6tables"):
        for chain in ("POSTROUTING", "PREROUTING"):
            assert xt_rules(netns, binary, chain=chain) == [xt_rule(table, queue_num=100, bypass=False, chain=chain)]


def _describe_missing_elements(table: str) -> str:
    dp = Dataplane(DataplaneConfig(table=table, queue_backend="xt"))
    dp.start(V4, V6)
    run("nft", "flush", "set", "inet", table, "managed-v4")
    return dp.check().describe()


def test_the_drift_says_how_many_addresses_are_missing(netns: str, table: str) -> None:
    assert in_netns(netns, _describe_missing_elements, table) == "3 managed addresses missing from the sets"


def _guard_repairs(table: str, use_monitor: bool) -> dict[str, Any]:
    import threading

    from kube_netpol.dataplane.guard import DataplaneGuard
    from kube_netpol.dataplane.monitor import NftablesMonitor

    dp = Dataplane(DataplaneConfig(table=table, queue_backend="xt"))
    dp.start(V4, V6)
    repaired = threading.Event()
    found: list[set[str]] = []

    def on_repair(drift: Any) -> None:
        found.append(set(drift.kinds()))
        repaired.set()

    # With the monitor, the timer is an hour: only the nftables event can trigger the repair.
    guard = DataplaneGuard(dp, interval=3600 if use_monitor else 0.2, min_gap=0.1,
                           on_repair=on_repair, monitor=NftablesMonitor if use_monitor else None)
    guard.start()
    try:
        run("nft", "delete", "table", "inet", table)
        assert repaired.wait(30), "no repair"
        repaired.clear()
        run("iptables", "-w", "5", "-t", "mangle", "-F", "POSTROUTING")
        assert repaired.wait(30), "no repair"
    finally:
        guard.stop()
    return {"found": found, "counts": guard.repair_counts(), "after": dp.check().describe()}


@pytest.mark.parametrize("use_monitor", [True, False], ids=["nftables-event", "timer"])
def test_the_guard_repairs_on_its_own(netns: str, table: str, use_monitor: bool) -> None:
    result = in_netns(netns, _guard_repairs, table, use_monitor)
    assert result["found"] == [{"table"}, {"xt_rule"}]
    assert result["counts"] == {"table": 1, "xt_rule": 1}
    assert result["after"] == "no drift"
    assert xt_rules(netns, chain="POSTROUTING") == [xt_rule(table, queue_num=100, bypass=True)]


def test_the_guard_defaults_repair_within_seconds() -> None:
    from kube_netpol.dataplane import guard

    assert guard.DEFAULT_MIN_GAP + guard.DEFAULT_SETTLE <= 2.0  # after an nf_tables change
    assert guard.DEFAULT_INTERVAL <= 10.0  # after anything else


def test_the_guard_is_quiet_about_a_stopped_dataplane() -> None:
    from kube_netpol.dataplane.guard import DataplaneGuard

    guard = DataplaneGuard(Dataplane(DataplaneConfig(table="never-started")), monitor=None)
    assert guard.run_once() is None and guard.failures == 0


def _stop_while_waiting() -> bool:
    import threading

    from kube_netpol.dataplane.guard import DataplaneGuard

    guard = DataplaneGuard(Dataplane(DataplaneConfig(table="never-started")), interval=3600)
    guard.start()  # its monitor waits for an nf_tables change, or an hour
    thread = guard._thread  # noqa: SLF001
    threading.Event().wait(0.1)
    guard.stop(timeout=2)  # an agent stopping must not wait out the interval (its stop has a grace of seconds)
    return thread is not None and not thread.is_alive()


def test_stopping_the_guard_interrupts_its_wait(netns: str) -> None:
    assert in_netns(netns, _stop_while_waiting)
