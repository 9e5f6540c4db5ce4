"""The nftables dataplane against the real kernel, inside network namespaces made for each test.

The Dataplane code runs in a forked child that entered the test's namespace
(libnftables and iptables act on the caller's namespace); the checks read the
kernel back with ``ip netns exec NAME nft -j ...`` / ``iptables -S``. Nothing
here touches the host's own ruleset.
"""

from __future__ import annotations

import ctypes
import json
import os
import pickle
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import pytest

from kube_netpol.dataplane import (
    Dataplane, DataplaneConfig, QueueBackendUnavailable, cleanup, detect_queue_backend, memory_epoch,
)
from kube_netpol.dataplane.conntrack import Flow, flush_flows, list_flows
from kube_netpol.dataplane.kernel_release import fixes_bug_1766
from kube_netpol.dataplane.netlink import NETLINK_NETFILTER
from kube_netpol.dataplane.nft import NftClient
from kube_netpol.dataplane.queue_backend import kernel_supports
from kube_netpol.dataplane.ruleset import (
    MEMORY_SIZE,
    PREROUTING_CHAIN,
    PRIORITY_NATIVE,
    PRIORITY_PREROUTING_NATIVE,
    PRIORITY_PREROUTING_XT,
    PRIORITY_XT,
    REMEMBER_CHAIN,
    RulesetSpec,
    create_commands,
    rule_comments,
)
from kube_netpol.dataplane.xtables import queue_rule_args
from kube_netpol.tools.lab.names import owned_name

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        os.geteuid() != 0 or not all(shutil.which(t) for t in ("ip", "nft", "iptables", "ip6tables", "conntrack")),
        reason="needs root, iproute2, nft, iptables, ip6tables and conntrack",
    ),
]

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


# --- running code in a namespace ----------------------------------------------------


def _enter_netns(name: str) -> None:
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {name}: {os.strerror(err)}")
    finally:
        os.close(fd)


def in_netns(name: str, fn: Callable[..., Any], *args: Any, timeout: float = 60) -> Any:
    """Run ``fn(*args)`` in a forked child inside netns ``name``; return its result or re-raise its failure."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never returns into pytest
        os.close(r)
        try:
            _enter_netns(name)
            payload = pickle.dumps(("ok", fn(*args)))
        except BaseException:
            payload = pickle.dumps(("error", traceback.format_exc()))
        with os.fdopen(w, "wb") as out:
            out.write(payload)
        os._exit(0)
    os.close(w)
    chunks = []
    try:
        with os.fdopen(r, "rb") as inp:
            while True:
                ready, _, _ = select.select([inp], [], [], timeout)
                if not ready:
                    os.kill(pid, signal.SIGKILL)
                    raise TimeoutError(f"{fn.__name__} in netns {name} took over {timeout}s")
                chunk = inp.read1(65536)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:
        os.waitpid(pid, 0)
    status, value = pickle.loads(b"".join(chunks))
    if status == "error":
        raise AssertionError(f"in netns {name}:\n{value}")
    return value


def spawn_in_netns(name: str, fn: Callable[[], None]) -> int:
    """Start ``fn`` in a child inside netns ``name``; returns once fn signalled readiness (its return)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            _enter_netns(name)
            fn()
            os.write(w, b"r")
            signal.pause()
        finally:
            os._exit(1)
    os.close(w)
    ready, _, _ = select.select([r], [], [], 10)
    ok = bool(ready) and os.read(r, 1) == b"r"
    os.close(r)
    if not ok:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise RuntimeError(f"child in netns {name} did not get ready")
    return pid


def sh(*args: str, netns: str | None = None, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", netns] if netns else []) + list(args)
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"{cmd} failed: {result.stderr}")
    return result.stdout


def unique(prefix: str) -> str:
    """A table name of this test's own (tables live in the test's namespaces)."""
    return f"{prefix}-{os.getpid() % 100000}-{secrets.token_hex(3)}"


# --- reading the kernel back ----------------------------------------------------------


@dataclass
class Listed:
    sets: dict[str, dict]
    chains: dict[str, dict]
    rules: list[dict]

    def elements(self, set_name: str) -> set[str]:
        return set(self.sets[set_name].get("elem", []))

    @property
    def comments(self) -> list[str]:
        """The comments of the postrouting chain's rules."""
        return self.comments_in("postrouting")

    def comments_in(self, chain: str) -> list[str]:
        return [r.get("comment", "") for r in self.rules if r["chain"] == chain]


def list_table(netns: str, table: str) -> Listed | None:
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-j", "list", "table", "inet", table],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if result.returncode != 0:
        assert "No such file or directory" in result.stderr, result.stderr
        return None
    items = json.loads(result.stdout)["nftables"]
    return Listed(
        sets={i["set"]["name"]: i["set"] for i in items if "set" in i},
        chains={i["chain"]["name"]: i["chain"] for i in items if "chain" in i},
        rules=[i["rule"] for i in items if "rule" in i],
    )


def tables(netns: str) -> list[tuple[str, str]]:
    items = json.loads(sh("nft", "-j", "list", "tables", netns=netns))["nftables"]
    return [(i["table"]["family"], i["table"]["name"]) for i in items if "table" in i]


def xt_rules(netns: str, binary: str = "iptables", *, counters: bool = False, chain: str = "POSTROUTING") -> list[str]:
    out = sh(binary, "-w", "5", "-t", "mangle", "-S", chain, *(["-v"] if counters else []), netns=netns)
    return [line for line in out.splitlines() if line.startswith(f"-A {chain} ")]


def xt_rule(
    comment: str, *, queue_num: int, bypass: bool, mark: int = 0x200000, chain: str = "POSTROUTING"
) -> str:
    return f"-A {chain} " + " ".join(queue_rule_args(mark=mark, queue_num=queue_num, bypass=bypass, comment=comment))


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def netns() -> Iterator[str]:
    name = owned_name("kn-dp")  # says which process made it: scripts/leak_check.py reads it
    sh("ip", "netns", "add", name)
    try:
        sh("ip", "link", "set", "lo", "up", netns=name)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


@pytest.fixture
def table() -> str:
    return unique("kntest")


def _native_queue_in(netns: str) -> bool:
    """Independent oracle: ask the nft CLI to check (``-c``) a rule with a queue statement."""
    probe = "add table inet kn_oracle\nadd chain inet kn_oracle c\nadd rule inet kn_oracle c queue num 0\n"
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-c", "-f", "-"], input=probe, capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        assert "No such file or directory" in result.stderr, result.stderr
    return result.returncode == 0


def backends(netns: str) -> list[str]:
    return ["nft", "xt"] if _native_queue_in(netns) else ["xt"]


# --- detection --------------------------------------------------------------------------


def test_detection_matches_kernel_and_leaves_nothing(netns: str) -> None:
    native = _native_queue_in(netns)
    assert in_netns(netns, lambda: detect_queue_backend()) == ("nft" if native else "xt")
    # The probe transaction's add+delete really commits when the statement exists.
    assert in_netns(netns, lambda: kernel_supports(NftClient(), {"counter": None})) is True
    assert tables(netns) == []

    def explicit_nft() -> str:
        try:
            return Dataplane(DataplaneConfig(queue_backend="nft")).start()
        except QueueBackendUnavailable as e:
            return f"unavailable: {e}"

    outcome = in_netns(netns, explicit_nft)
    if native:
        assert outcome == "nft"
    else:
        assert outcome.startswith("unavailable:") and "no nftables queue expression" in outcome
        assert tables(netns) == []


# --- table lifecycle ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["nft", "xt"])
def test_start_builds_table_sets_chain_and_rules(netns: str, table: str, backend: str) -> None:
    if backend not in backends(netns):
        pytest.skip("this kernel has no native nftables queue expression (the generated JSON is unit-tested; "
                    "the real-kernel tier runs this)")
    config = DataplaneConfig(table=table, queue_num=7, fail_open=False, queue_backend=backend)  # type: ignore[arg-type]

    def start() -> str:
        return Dataplane(config).start(["10.1.0.1", "10.1.0.2"], ["fd00::1"])

    assert in_netns(netns, start) == backend
    listed = list_table(netns, table)
    assert listed is not None
    assert {n: s["type"] for n, s in listed.sets.items()} == {
        "managed-v4": "ipv4_addr", "managed-v6": "ipv6_addr",
        "new-flows-v4": "ipv4_addr", "new-flows-v6": "ipv6_addr",  # the per-source limit (on by default)
    }  # fmt: skip
    assert listed.elements("managed-v4") == {"10.1.0.1", "10.1.0.2"} and listed.elements("managed-v6") == {"fd00::1"}
    chain = listed.chains["postrouting"]
    assert (chain["type"], chain["hook"], chain["policy"]) == ("filter", "postrouting", "accept")
    assert chain["prio"] == (PRIORITY_NATIVE if backend == "nft" else PRIORITY_XT)
    spec = RulesetSpec(table=table, backend=backend, queue_num=7, fail_open=False)  # type: ignore[arg-type]
    assert listed.comments == rule_comments(spec)
    # The netfilter bug 1766 workaround (on by default): new DNS requests are judged on prerouting.
    pre = listed.chains[PREROUTING_CHAIN]
    assert (pre["type"], pre["hook"], pre["policy"]) == ("filter", "prerouting", "accept")
    assert pre["prio"] == (PRIORITY_PREROUTING_NATIVE if backend == "nft" else PRIORITY_PREROUTING_XT)
    assert listed.comments_in(PREROUTING_CHAIN) == rule_comments(spec, PREROUTING_CHAIN)
    for limiter in ("divert", "divert-dns"):
        assert "hook" not in listed.chains[limiter] and listed.comments_in(limiter) == rule_comments(spec, limiter)
    statements = json.dumps([r["expr"] for r in listed.rules])
    if backend == "xt":
        assert '"mangle"' in statements and '"queue"' not in statements
        for chain in ("POSTROUTING", "PREROUTING"):
            want = [xt_rule(table, queue_num=7, bypass=False, chain=chain)]
            assert xt_rules(netns, chain=chain) == want and xt_rules(netns, "ip6tables", chain=chain) == want
    else:
        assert '"queue"' in statements
        for binary in ("iptables", "ip6tables"):
            assert xt_rules(netns, binary) == [] and xt_rules(netns, binary, chain="PREROUTING") == []


@pytest.mark.parametrize("first,then", [("xt", "nft"), ("nft", "xt")])
def test_a_restart_with_the_other_backend_leaves_only_its_rules(netns: str, table: str, first: str, then: str) -> None:
    """E.g. a node's kernel gains nft_queue, or the operator pins a backend: the earlier run's way of queueing goes."""
    if "nft" not in backends(netns):
        pytest.skip("this kernel has no native nftables queue expression (the real-kernel tier runs this)")

    def start(backend: str, v4: list[str]) -> str:
        return Dataplane(DataplaneConfig(table=table, queue_backend=backend)).start(v4, [])  # type: ignore[arg-type]

    assert in_netns(netns, start, first, ["10.1.0.1"]) == first
    assert in_netns(netns, start, then, ["10.1.0.1", "10.1.0.2"]) == then
    listed = list_table(netns, table)
    assert listed is not None and listed.elements("managed-v4") == {"10.1.0.1", "10.1.0.2"}
    spec = RulesetSpec(table=table, backend=then)  # type: ignore[arg-type]
    assert listed.comments == rule_comments(spec)
    assert listed.comments_in(PREROUTING_CHAIN) == rule_comments(spec, PREROUTING_CHAIN)
    assert listed.chains["postrouting"]["prio"] == (PRIORITY_NATIVE if then == "nft" else PRIORITY_XT)
    assert listed.chains[PREROUTING_CHAIN]["prio"] == (
        PRIORITY_PREROUTING_NATIVE if then == "nft" else PRIORITY_PREROUTING_XT
    )
    for binary in ("iptables", "ip6tables"):
        for chain in ("POSTROUTING", "PREROUTING"):
            want = [] if then == "nft" else [xt_rule(table, queue_num=100, bypass=True, chain=chain)]
            assert xt_rules(netns, binary, chain=chain) == want


def test_sync_adds_and_removes_elements_and_switches_divert_all(netns: str, table: str) -> None:
    config = DataplaneConfig(table=table, queue_backend="xt")

    def scenario() -> list[Any]:
        dp = Dataplane(config)
        dp.start([], [])
        steps = [dp.sync(["10.1.0.1", "10.1.0.2"], ["fd00::1"], False)]
        steps.append(dp.sync(["10.1.0.2", "10.1.0.3"], [], False))
        steps.append(dp.sync(["10.1.0.2", "10.1.0.3"], [], False))  # nothing to do
        return steps

    assert in_netns(netns, scenario) == [True, True, False]
    listed = list_table(netns, table)
    assert listed is not None
    assert listed.elements("managed-v4") == {"10.1.0.2", "10.1.0.3"} and listed.elements("managed-v6") == set()
    handle = listed.chains["postrouting"]["handle"]

    def divert(on: bool) -> None:
        dp = Dataplane(config)
        dp.start()  # keeps the elements and mode the kernel has
        dp.sync(["10.1.0.2", "10.1.0.3"], [], on)

    spec = RulesetSpec(table=table, backend="xt")
    in_netns(netns, divert, True)
    listed = list_table(netns, table)
    assert listed is not None and listed.comments == rule_comments(RulesetSpec(table=table, backend="xt", divert_all=True))
    assert listed.chains["postrouting"]["handle"] == handle  # flushed and refilled, not re-created
    assert listed.elements("managed-v4") == {"10.1.0.2", "10.1.0.3"}
    in_netns(netns, divert, False)
    listed = list_table(netns, table)
    assert listed is not None and listed.comments == rule_comments(spec)
    assert listed.chains["postrouting"]["handle"] == handle


def test_forget_remembered_empties_only_the_memory_and_keeps_the_table(netns: str, table: str) -> None:
    config = DataplaneConfig(table=table, queue_backend="xt", verdict_memory=True)
    key = "10.1.0.1 . 10.1.0.2 . tcp . 80"

    def scenario() -> None:
        dp = Dataplane(config)
        dp.start(["10.1.0.2"], [])
        for verdict in ("accept", "drop"):  # what the remember chain adds from the packet path
            sh("nft", "add", "element", "inet", table, f"remembered-{verdict}-v4", "{", key, "}")
        dp.forget_remembered()
        dp.stop()

    in_netns(netns, scenario)
    listed = list_table(netns, table)
    assert listed is not None, "fail-open keeps the table"
    assert listed.elements("remembered-accept-v4") == set() and listed.elements("remembered-drop-v4") == set()
    assert listed.elements("managed-v4") == {"10.1.0.2"}
    assert listed.comments == rule_comments(RulesetSpec(table=table, backend="xt", verdict_memory=True))
    in_netns(netns, lambda: cleanup(table))


def test_follow_forgets_the_memory_and_moves_its_epoch_without_touching_the_addresses(netns: str, table: str) -> None:
    config = DataplaneConfig(table=table, queue_backend="xt", verdict_memory=True)
    key = "10.1.0.1 . 10.1.0.2 . tcp . 80"

    def scenario() -> None:
        dp = Dataplane(config)
        dp.start(["10.1.0.2"], [], generation=0)
        sh("nft", "add", "element", "inet", table, "remembered-accept-v4", "{", key, "}")
        dp.follow(7)
        assert dp.in_sync and dp.spec.memory_epoch == memory_epoch(7)
        dp.stop()

    in_netns(netns, scenario)
    listed = list_table(netns, table)
    assert listed is not None
    assert listed.elements("remembered-accept-v4") == set()
    assert listed.elements("managed-v4") == {"10.1.0.2"}
    followed = RulesetSpec(table=table, backend="xt", verdict_memory=True, memory_epoch=memory_epoch(7))
    assert listed.comments == rule_comments(followed)
    assert listed.comments_in(REMEMBER_CHAIN) == rule_comments(followed, REMEMBER_CHAIN)  # remembers the new epoch
    assert rule_comments(followed, REMEMBER_CHAIN) != rule_comments(replace(followed, memory_epoch=0), REMEMBER_CHAIN)
    in_netns(netns, lambda: cleanup(table))


def test_start_resizes_the_memory_sets_an_earlier_version_made_smaller(netns: str, table: str) -> None:
    # Before the memory was flushed with each full flow table, its sets held 65,536 keys: such a
    # table, with a key in it, is brought to MEMORY_SIZE by the next start (and forgets the key).
    spec = RulesetSpec(table=table, backend="xt", verdict_memory=True)
    commands = create_commands(spec)
    for command in commands:
        made = command.get("add", {}).get("set", {})
        if made.get("name", "").startswith("remembered-"):
            made["size"] = 65536
    result = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "-f", "-"],
                            input=json.dumps({"nftables": commands}), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    sh("nft", "add", "element", "inet", table, "remembered-accept-v4", "{", "10.1.0.1 . 10.1.0.2 . tcp . 80", "}",
       netns=netns)
    config = DataplaneConfig(table=table, queue_backend="xt", verdict_memory=True)
    in_netns(netns, lambda: Dataplane(config).start(["10.1.0.2"], []))
    listed = list_table(netns, table)
    assert listed is not None
    for name in ("remembered-accept-v4", "remembered-drop-v4", "remembered-accept-v6", "remembered-drop-v6"):
        assert listed.sets[name]["size"] == MEMORY_SIZE, name
    assert "elem" not in listed.sets["remembered-accept-v4"]
    assert listed.comments == rule_comments(spec)
    assert listed.comments_in("remember") == rule_comments(spec, "remember")
    in_netns(netns, lambda: cleanup(table))


def test_start_reconciles_what_an_earlier_run_left(netns: str, table: str) -> None:
    earlier = DataplaneConfig(table=table, queue_num=5, fail_open=True, queue_backend="xt")
    in_netns(netns, lambda: Dataplane(earlier).start(["10.1.0.1", "10.1.0.9"], ["fd00::9"]))
    handle = list_table(netns, table).chains["postrouting"]["handle"]  # type: ignore[union-attr]
    # Debris: a duplicate of our xt rule with another queue, and someone else's rule that must stay.
    sh("iptables", "-w", "5", "-t", "mangle", "-A", "POSTROUTING", "-m", "comment", "--comment", table,
       "-j", "NFQUEUE", "--queue-num", "3", netns=netns)  # fmt: skip
    sh("ip6tables", "-w", "5", "-t", "mangle", "-A", "POSTROUTING", "-j", "ACCEPT", netns=netns)
    foreign_v6 = "-A POSTROUTING -j ACCEPT"

    # Restart without telling the state: the earlier elements stay (traffic keeps being diverted).
    now = DataplaneConfig(table=table, queue_num=7, fail_open=False, queue_backend="xt")
    assert in_netns(netns, lambda: Dataplane(now).start()) == "xt"
    listed = list_table(netns, table)
    assert listed is not None and listed.elements("managed-v4") == {"10.1.0.1", "10.1.0.9"}
    assert listed.comments == rule_comments(RulesetSpec(table=table, backend="xt", queue_num=7, fail_open=False))
    assert listed.chains["postrouting"]["handle"] == handle
    want = xt_rule(table, queue_num=7, bypass=False)
    assert xt_rules(netns) == [want]
    assert xt_rules(netns, "ip6tables") == [want, foreign_v6]

    # Restart with the desired state: stale elements go, the current ones stay, new ones come.
    in_netns(netns, lambda: Dataplane(now).start(["10.1.0.1", "10.1.0.2"], ["fd00::1"]))
    listed = list_table(netns, table)
    assert listed is not None
    assert listed.elements("managed-v4") == {"10.1.0.1", "10.1.0.2"} and listed.elements("managed-v6") == {"fd00::1"}


def test_start_repairs_wrong_sets_and_foreign_chains(netns: str, table: str) -> None:
    # An earlier version's table: interval set, hooked chains at the wrong priority, an extra chain.
    earlier = f"""table inet {table} {{
  set managed-v4 {{
    type ipv4_addr
    flags interval
    elements = {{ 10.9.0.0/16 }}
  }}
  chain postrouting {{
    type filter hook postrouting priority 0; policy accept;
    ip daddr @managed-v4 counter
  }}
  chain prerouting {{
    type filter hook prerouting priority 0; policy accept;
    udp dport 53 counter
  }}
  chain old {{
    counter
  }}
}}
"""
    result = subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=earlier, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    in_netns(netns, lambda: Dataplane(DataplaneConfig(table=table, queue_backend="xt")).start(["10.1.0.1"], []))
    listed = list_table(netns, table)
    assert listed is not None
    assert set(listed.chains) == {"postrouting", PREROUTING_CHAIN, "divert", "divert-dns"}
    assert listed.chains["postrouting"]["prio"] == PRIORITY_XT
    assert listed.chains[PREROUTING_CHAIN]["prio"] == PRIORITY_PREROUTING_XT
    assert "flags" not in listed.sets["managed-v4"] and listed.elements("managed-v4") == {"10.1.0.1"}
    spec = RulesetSpec(table=table, backend="xt")
    assert listed.comments == rule_comments(spec)
    assert listed.comments_in(PREROUTING_CHAIN) == rule_comments(spec, PREROUTING_CHAIN)


def test_stop_fail_open_keeps_and_fail_closed_removes(netns: str, table: str) -> None:
    def run(fail_open: bool) -> None:
        dp = Dataplane(DataplaneConfig(table=table, fail_open=fail_open, queue_backend="xt"))
        dp.start(["10.1.0.1"], [])
        dp.stop()

    in_netns(netns, run, True)
    listed = list_table(netns, table)
    assert listed is not None and listed.elements("managed-v4") == {"10.1.0.1"}
    assert xt_rules(netns) == [xt_rule(table, queue_num=100, bypass=True)]

    in_netns(netns, run, False)
    assert list_table(netns, table) is None
    for chain in ("POSTROUTING", "PREROUTING"):
        assert xt_rules(netns, chain=chain) == [] and xt_rules(netns, "ip6tables", chain=chain) == []


def test_cleanup_removes_everything_and_is_safe_when_nothing_exists(netns: str, table: str) -> None:
    in_netns(netns, lambda: cleanup(table))  # nothing exists yet
    assert tables(netns) == []
    sh("iptables", "-w", "5", "-t", "mangle", "-A", "POSTROUTING", "-j", "ACCEPT", netns=netns)
    sh("ip6tables", "-w", "5", "-t", "mangle", "-A", "PREROUTING", "-j", "ACCEPT", netns=netns)
    in_netns(netns, lambda: Dataplane(DataplaneConfig(table=table, queue_backend="xt")).start(["10.1.0.1"], ["fd00::1"]))
    assert list_table(netns, table) is not None
    assert len(xt_rules(netns, chain="PREROUTING")) == 1 and len(xt_rules(netns, "ip6tables", chain="PREROUTING")) == 2
    in_netns(netns, lambda: cleanup(table))
    in_netns(netns, lambda: cleanup(table))
    assert (("inet", table)) not in tables(netns)
    assert xt_rules(netns) == ["-A POSTROUTING -j ACCEPT"]  # only someone else's rules are left
    assert xt_rules(netns, "ip6tables") == [] and xt_rules(netns, chain="PREROUTING") == []
    assert xt_rules(netns, "ip6tables", chain="PREROUTING") == ["-A PREROUTING -j ACCEPT"]


# --- traffic through a node namespace -----------------------------------------------------


@dataclass
class Topology:
    """client -- node -- server; the node forwards, and our table lives in the node."""

    client: str
    node: str
    server: str


SERVER_V4 = ("10.77.2.2", "10.77.2.3")
SERVER_V6 = ("fd77:2::2", "fd77:2::3")
PORT = 8080
DNS_PORT = 53


def _listen() -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", PORT))
    s.listen(128)  # the kernel completes handshakes; nothing needs to accept
    globals()["_server_socket"] = s
    # UDP echo servers on the DNS port, for the netfilter bug 1766 workaround's tests: one socket per
    # address, so each answer comes from the address the request went to.
    for address in SERVER_V4 + SERVER_V6:
        u = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((address, DNS_PORT))
        globals()[f"_dns_socket_{address}"] = u
        threading.Thread(target=_echo, args=(u,), daemon=True).start()


def _echo(u: socket.socket) -> None:
    while True:
        data, peer = u.recvfrom(2048)
        u.sendto(data, peer)


def dns_answers(address: str, requests: int, timeout: float = 1.0) -> int:
    """Send ``requests`` UDP datagrams to ``address`` port 53, each from a new socket (a new flow);
    returns how many were echoed back."""
    answered = 0
    for i in range(requests):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(b"query-%d" % i, (address, DNS_PORT))
            try:
                answered += s.recv(2048) == b"query-%d" % i
            except OSError:
                pass
    return answered


def connects(address: str, timeout: float = 1.5) -> int | None:
    """The client's local port if a TCP connection to ``address`` gets established, else None."""
    try:
        with socket.create_connection((address, PORT), timeout=timeout) as s:
            return int(s.getsockname()[1])
    except OSError:
        return None


@pytest.fixture
def topology() -> Iterator[Topology]:
    topo = Topology(owned_name("kn-c"), owned_name("kn-n"), owned_name("kn-s"))
    server_pid = None
    try:
        for ns in (topo.client, topo.node, topo.server):
            sh("ip", "netns", "add", ns)
            sh("ip", "link", "set", "lo", "up", netns=ns)
            for conf in ("all", "default"):  # no duplicate address detection: addresses usable at once
                sh("sysctl", "-qw", f"net.ipv6.conf.{conf}.accept_dad=0", netns=ns)
        sh("ip", "link", "add", "c0", "netns", topo.client, "type", "veth", "peer", "name", "n0", "netns", topo.node)
        sh("ip", "link", "add", "s0", "netns", topo.server, "type", "veth", "peer", "name", "n1", "netns", topo.node)
        for ns, dev, v4, v6 in (
            (topo.client, "c0", ["10.77.1.2/24"], ["fd77:1::2/64"]),
            (topo.node, "n0", ["10.77.1.1/24"], ["fd77:1::1/64"]),
            (topo.node, "n1", ["10.77.2.1/24"], ["fd77:2::1/64"]),
            (topo.server, "s0", [a + "/24" for a in SERVER_V4], [a + "/64" for a in SERVER_V6]),
        ):
            for a in v4:
                sh("ip", "addr", "add", a, "dev", dev, netns=ns)
            for a in v6:
                sh("ip", "-6", "addr", "add", a, "dev", dev, "nodad", netns=ns)
            sh("ip", "link", "set", dev, "up", netns=ns)
        for ns, gw4, gw6 in ((topo.client, "10.77.1.1", "fd77:1::1"), (topo.server, "10.77.2.1", "fd77:2::1")):
            sh("ip", "route", "add", "default", "via", gw4, netns=ns)
            sh("ip", "-6", "route", "add", "default", "via", gw6, netns=ns)
        sh("sysctl", "-qw", "net.ipv4.ip_forward=1", netns=topo.node)
        sh("sysctl", "-qw", "net.ipv6.conf.all.forwarding=1", netns=topo.node)
        server_pid = spawn_in_netns(topo.server, _listen)
        _wait_until_reachable(topo)
        yield topo
    finally:
        if server_pid is not None:
            os.kill(server_pid, signal.SIGKILL)
            os.waitpid(server_pid, 0)
        for ns in (topo.client, topo.node, topo.server):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _wait_until_reachable(topo: Topology) -> None:
    deadline = time.monotonic() + 15
    while not all(reachable(topo, SERVER_V4 + SERVER_V6).values()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"lab not reachable: {reachable(topo, SERVER_V4 + SERVER_V6)}")
        time.sleep(0.2)


def reachable(topo: Topology, addresses: tuple[str, ...]) -> dict[str, bool]:
    return {a: in_netns(topo.client, connects, a) is not None for a in addresses}


def queued_packets(netns: str, binary: str, chain: str = "POSTROUTING") -> int:
    """Packets that went through our NFQUEUE rule (``-c PKTS BYTES`` of ``-S -v``)."""
    for line in xt_rules(netns, binary, counters=True, chain=chain):
        tokens = line.split()
        if "NFQUEUE" in tokens:
            return int(tokens[tokens.index("-c") + 1])
    raise AssertionError("no NFQUEUE rule")


def test_xt_rule_queues_managed_traffic(topology: Topology) -> None:
    node, table = topology.node, unique("kntest")
    everything = SERVER_V4 + SERVER_V6

    def start(fail_open: bool, divert_all: bool = False) -> None:
        config = DataplaneConfig(table=table, queue_num=9, fail_open=fail_open, queue_backend="xt")
        Dataplane(config).start([SERVER_V4[0]], [SERVER_V6[0]], divert_all)

    # Fail-closed, no queue reader: the managed addresses are dropped, the others flow.
    in_netns(node, start, False)
    assert reachable(topology, everything) == {
        SERVER_V4[0]: False, SERVER_V4[1]: True, SERVER_V6[0]: False, SERVER_V6[1]: True,
    }  # fmt: skip
    assert queued_packets(node, "iptables") > 0 and queued_packets(node, "ip6tables") > 0

    # Divert-all: every new connection goes to the (absent) reader.
    in_netns(node, start, False, True)
    assert reachable(topology, everything) == dict.fromkeys(everything, False)

    # Fail-open: the same packets are queued, and bypass lets them through.
    in_netns(node, start, True)
    before = queued_packets(node, "iptables"), queued_packets(node, "ip6tables")
    assert before == (0, 0)  # the rule with --queue-bypass is a new rule
    assert reachable(topology, everything) == dict.fromkeys(everything, True)
    assert queued_packets(node, "iptables") > 0 and queued_packets(node, "ip6tables") > 0

    # Not managed any more: no longer queued.
    def unmanage() -> None:
        config = DataplaneConfig(table=table, queue_num=9, fail_open=False, queue_backend="xt")
        Dataplane(config).start([], [], False)

    in_netns(node, unmanage)
    assert reachable(topology, everything) == dict.fromkeys(everything, True)
    assert queued_packets(node, "iptables") == 0


def test_conntrack_list_and_flush(topology: Topology) -> None:
    node, table = topology.node, unique("kntest")
    # Our table's ct rule makes the node's conntrack track the forwarded flows.
    in_netns(node, lambda: Dataplane(DataplaneConfig(table=table, queue_backend="xt")).start([], []))
    port4 = in_netns(topology.client, connects, SERVER_V4[1])
    port6 = in_netns(topology.client, connects, SERVER_V6[1])
    assert port4 and port6
    want = [
        Flow(4, 6, "10.77.1.2", SERVER_V4[1], port4, PORT),
        Flow(6, 6, "fd77:1::2", SERVER_V6[1], port6, PORT),
    ]
    flows = in_netns(node, list_flows)
    assert all(f in flows for f in want), flows
    assert in_netns(node, flush_flows, want) == 2
    remaining = in_netns(node, list_flows)
    assert not any(f in remaining for f in want)
    assert in_netns(node, flush_flows, want) == 0  # already gone: not an error


# --- netfilter bug 1766 workaround ------------------------------------------------------------


def test_bug_1766_switch_adds_and_removes_prerouting_chain_and_xt_rules(netns: str, table: str) -> None:
    def start(fix: bool, fail_open: bool = True) -> None:
        config = DataplaneConfig(table=table, queue_backend="xt", fail_open=fail_open, netfilter_bug_1766_fix=fix)
        dp = Dataplane(config)
        dp.start(["10.1.0.1"], ["fd00::1"])
        if not fail_open:
            dp.stop()  # fail-closed stop removes everything

    def xt_everywhere() -> dict[tuple[str, str], list[str]]:
        return {(b, c): xt_rules(netns, b, chain=c) for b in ("iptables", "ip6tables") for c in ("POSTROUTING", "PREROUTING")}

    on = RulesetSpec(table=table, backend="xt")
    in_netns(netns, start, True)
    listed = list_table(netns, table)
    assert listed is not None and set(listed.chains) == {"postrouting", PREROUTING_CHAIN, "divert", "divert-dns"}
    assert listed.comments_in(PREROUTING_CHAIN) == rule_comments(on, PREROUTING_CHAIN)
    handle = listed.chains["postrouting"]["handle"]
    assert xt_everywhere() == {
        (b, c): [xt_rule(table, queue_num=100, bypass=True, chain=c)]
        for b in ("iptables", "ip6tables") for c in ("POSTROUTING", "PREROUTING")
    }  # fmt: skip

    # Off: the prerouting chain and the PREROUTING rules go; postrouting is refilled in place.
    in_netns(netns, start, False)
    listed = list_table(netns, table)
    assert listed is not None and set(listed.chains) == {"postrouting", "divert"}
    assert listed.chains["postrouting"]["handle"] == handle
    assert listed.comments == rule_comments(RulesetSpec(table=table, backend="xt", netfilter_bug_1766_fix=False))
    assert listed.elements("managed-v4") == {"10.1.0.1"} and listed.elements("managed-v6") == {"fd00::1"}
    assert xt_everywhere() == {
        (b, c): [xt_rule(table, queue_num=100, bypass=True, chain=c)] if c == "POSTROUTING" else []
        for b in ("iptables", "ip6tables") for c in ("POSTROUTING", "PREROUTING")
    }  # fmt: skip

    # On again, then a fail-closed stop: everything is removed.
    in_netns(netns, start, True)
    listed = list_table(netns, table)
    assert listed is not None and listed.comments_in(PREROUTING_CHAIN) == rule_comments(on, PREROUTING_CHAIN)
    assert all(len(rules) == 1 for rules in xt_everywhere().values())
    in_netns(netns, start, True, False)
    assert list_table(netns, table) is None
    assert all(rules == [] for rules in xt_everywhere().values())


def test_bug_1766_dns_requests_are_judged_on_prerouting_only(topology: Topology) -> None:
    """New DNS requests of managed pods are queued once, on prerouting; everything else on postrouting."""
    node, client, table = topology.node, topology.client, unique("kntest")

    def start(fix: bool, fail_open: bool = True) -> None:
        config = DataplaneConfig(
            table=table, queue_num=9, fail_open=fail_open, queue_backend="xt", netfilter_bug_1766_fix=fix
        )
        Dataplane(config).start([SERVER_V4[0]], [SERVER_V6[0]], False)

    def counts() -> dict[str, int]:
        return {
            f"{b}/{c}": queued_packets(node, b, c)
            for b in ("iptables", "ip6tables") for c in ("PREROUTING", "POSTROUTING")
        }  # fmt: skip

    # Fail-open without a reader: bypass lets the queued packets through, the rule counters count them.
    in_netns(node, start, True)
    assert in_netns(client, dns_answers, SERVER_V4[0], 5) == 5
    assert in_netns(client, dns_answers, SERVER_V6[0], 3) == 3
    # Each new flow queued exactly once, on prerouting: postrouting let the judged packets pass
    # (without clearing the mark, the xt POSTROUTING rule would have queued them a second time).
    assert counts() == {"iptables/PREROUTING": 5, "iptables/POSTROUTING": 0,
                        "ip6tables/PREROUTING": 3, "ip6tables/POSTROUTING": 0}  # fmt: skip
    # Not DNS: queued on postrouting, as ever. Not managed: not queued at all.
    assert in_netns(client, connects, SERVER_V4[0]) is not None
    assert in_netns(client, dns_answers, SERVER_V4[1], 2) == 2
    after = counts()
    assert after["iptables/PREROUTING"] == 5 and after["iptables/POSTROUTING"] > 0

    # Fail-closed without a reader: the prerouting queue really holds DNS requests (they are dropped).
    in_netns(node, start, True, False)
    assert in_netns(client, dns_answers, SERVER_V4[0], 2, 0.5) == 0
    assert in_netns(client, dns_answers, SERVER_V4[1], 2, 0.5) == 2  # unmanaged address: untouched
    assert counts()["iptables/PREROUTING"] == 2 and counts()["iptables/POSTROUTING"] == 0

    # Workaround off: DNS is queued on postrouting like everything else, and the PREROUTING rule is gone.
    in_netns(node, start, False)
    assert in_netns(client, dns_answers, SERVER_V4[0], 4) == 4
    assert queued_packets(node, "iptables", "POSTROUTING") == 4
    assert xt_rules(node, chain="PREROUTING") == [] and xt_rules(node, "ip6tables", chain="PREROUTING") == []


#: A Service address in the node namespace, DNATed to the two servers in turn (``numgen inc``).
DNS_SERVICE = "10.77.9.53"


def _holding_reader(queue_num: int, log_path: str) -> Callable[[], None]:
    """A queue reader that logs each packet's destination and holds it 50 ms before accepting it, so that
    both datagrams of a pair sit in the queue at once, their conntrack entries unconfirmed."""
    def start() -> None:
        from netfilterqueue import NetfilterQueue

        def judge(packet: Any) -> None:
            with open(log_path, "a") as out:
                out.write(socket.inet_ntoa(packet.get_payload()[16:20]) + "\n")
            time.sleep(0.05)
            packet.accept()

        queue = NetfilterQueue()
        queue.bind(queue_num, judge)
        threading.Thread(target=queue.run, daemon=True).start()
    return start


def dns_pair_answers(address: str, pairs: int, timeout: float = 1.0) -> int:
    """Send ``pairs`` pairs of datagrams to ``address`` port 53, both of a pair at once from one socket
    (glibc's A and AAAA queries); returns how many of them were echoed back."""
    answered = 0
    for i in range(pairs):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            queries = {b"a-%d" % i, b"aaaa-%d" % i}
            for query in sorted(queries):
                s.sendto(query, (address, DNS_PORT))
            got: set[bytes] = set()
            try:
                while got != queries:
                    got.add(s.recv(2048))
            except OSError:
                pass
            answered += len(got & queries)
    return answered


@pytest.mark.skipif(not fixes_bug_1766(os.uname().release), reason="kernel before 6.12: the workaround stays on (auto)")
def test_bug_1766_this_kernel_keeps_parallel_queries_to_a_service_without_the_workaround(topology: Topology, tmp_path: Any) -> None:
    """``--netfilter-bug-1766-fix=auto`` turns the workaround off from kernel 6.12: there, the bug's own
    case passes without it. Two datagrams of one flow to a DNS Service, DNATed to different servers, both
    held in the queue on postrouting at once: the kernel that has the fix delivers both."""
    node, client, table = topology.node, topology.client, unique("kntest")
    log = tmp_path / "destinations"
    (tmp_path / "dnat.nft").write_text("\n".join([
        f"table ip {table}-dnat {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        f"    ip daddr {DNS_SERVICE} udp dport {DNS_PORT} dnat to numgen inc mod 2 map "
        f"{{ 0 : {SERVER_V4[0]}, 1 : {SERVER_V4[1]} }}",
        "  }",
        "}",
        "",
    ]))
    sh("nft", "-f", str(tmp_path / "dnat.nft"), netns=node)
    config = DataplaneConfig(table=table, queue_num=11, fail_open=False, netfilter_bug_1766_fix=False)
    in_netns(node, lambda: Dataplane(config).start(list(SERVER_V4), [], False) and None)
    reader = spawn_in_netns(node, _holding_reader(11, str(log)))
    try:
        pairs = 10
        answered = in_netns(client, dns_pair_answers, DNS_SERVICE, pairs)
        destinations = log.read_text().split()
    finally:
        os.kill(reader, signal.SIGKILL)
        os.waitpid(reader, 0)
    # The bug's conditions held: every datagram was queued (the second of a pair did not find the first's
    # entry, which was unconfirmed), and DNAT sent the two of a pair to different servers.
    assert len(destinations) == 2 * pairs and destinations[:2] == list(SERVER_V4), destinations
    assert answered == 2 * pairs


def test_the_terse_read_matches_libnftables_listing_without_reading_set_elements(netns: str, table: str) -> None:
    """NftClient.list_table(terse=True) reads rules and counters with nf_tables dumps (nfnetlink): the same
    parsed state as libnftables' full listing, counters counting, and None for a missing table."""
    from kube_netpol.dataplane.ruleset import parse_table

    config = DataplaneConfig(table=table, queue_backend="xt", verdict_memory=True, new_flow_limit=100, observe_dns=True)

    def scenario() -> tuple[Any, Any, Any, Any, Any]:
        Dataplane(config).start(["10.1.0.2"], ["fd00::2"])
        # A rule without a comment, in a chain of ours, reads as one too; a counter that counted.
        sh("nft", "insert", "rule", "inet", table, "postrouting", "counter", "name", "remembered-accepted")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"x", ("127.0.0.1", 9))
        nft = NftClient()
        full, terse = nft.list_table(table), nft.list_table(table, terse=True)
        return full, terse, nft.counter_packets(table), nft.list_table("nope", terse=True), nft.counter_packets("nope")

    full, terse, packets, missing, no_counters = in_netns(netns, scenario)
    assert full is not None and terse is not None and missing is None and no_counters == {}
    expected, got = parse_table(full), parse_table(terse)
    assert got.chains == expected.chains and got.counters == expected.counters
    assert {n: (s.type, s.flags, s.timeout, s.size) for n, s in got.sets.items()} == {
        n: (s.type, s.flags, s.timeout, s.size) for n, s in expected.sets.items()}
    assert got.chains["postrouting"].rule_comments[0] is None
    assert packets["remembered-accepted"] >= 1  # the datagram, counted by the rule inserted above
    assert set(packets) == expected.counters
    in_netns(netns, lambda: cleanup(table))


def test_forgetting_the_memory_sends_no_message_per_key(netns: str, table: str) -> None:
    """forget_remembered makes the sets again instead of flushing them: a flush sends whoever listens to
    nftables events (the guard's monitor) one message per key, 75 ms of the agent's CPU for 65,536 keys."""
    config = DataplaneConfig(table=table, queue_backend="xt", verdict_memory=True)
    keys = 2000

    def scenario() -> tuple[int, int]:
        dp = Dataplane(config)
        dp.start(["10.1.0.2"], [])
        lines = "\n".join(f"add element inet {table} remembered-accept-v4 {{ 10.2.{i >> 8}.{i & 255} . 10.1.0.2 . tcp . 80 }}"
                          for i in range(keys))
        subprocess.run(["nft", "-f", "-"], input=lines, text=True, check=True, timeout=30)
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER) as listener:
            listener.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE: room for every message
            listener.bind((0, 1 << 6))  # NFNLGRP_NFTABLES
            dp.forget_remembered()
            listener.setblocking(False)
            messages = deleted = 0
            while True:
                try:
                    data = listener.recv(1 << 16)
                except BlockingIOError:
                    break
                offset = 0
                while offset + 16 <= len(data):
                    length, kind = struct.unpack_from("=IH", data, offset)
                    messages += 1
                    deleted += kind == (10 << 8 | 14)  # NFT_MSG_DELSETELEM
                    offset += (length + 3) & ~3
        return messages, deleted

    messages, deleted = in_netns(netns, scenario)
    assert deleted == 0 and 0 < messages < 200, (messages, deleted)
    listed = list_table(netns, table)
    assert listed is not None and listed.elements("remembered-accept-v4") == set()
    assert listed.comments == rule_comments(RulesetSpec(table=table, backend="xt", verdict_memory=True))
    in_netns(netns, lambda: cleanup(table))
