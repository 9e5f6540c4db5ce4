"""The lab with real namespaces: reachability, an nftables drop in the node, teardown and crash cleanup.

Needs root. Every lab here has a unique name and is torn down by the code under test;
the checks then look at what the kernel still has.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from itertools import product
from pathlib import Path
from typing import Iterator

import pytest

from kube_netpol.tools.lab import Lab, LabClosed, Probe, cleanup_stale, stale_netns
from kube_netpol.tools.lab.netns import list_netns, pids_in_netns

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces"),
]

REPO = Path(__file__).resolve().parents[2]
PODS = {
    "x/a": ["10.244.1.10", "fd00:10:244:1::10"],
    "x/b": ["10.244.1.11", "fd00:10:244:1::11"],
    "y/a": ["10.244.2.10", "fd00:10:244:2::10"],
    "ext1": ["192.168.200.10"],
}
SERVED = [(80, "TCP"), (80, "UDP"), (81, "SCTP")]
TIMEOUT = 0.5


def all_pairs(hosts: dict[str, list[str]]) -> list[Probe]:
    """Every source to every other host's every address, on every served (port, protocol)."""
    probes = []
    for (src, src_ips), (dst, dst_ips), (port, protocol) in product(hosts.items(), hosts.items(), SERVED):
        if src == dst:
            continue
        src_versions = {":" in ip for ip in src_ips}
        probes += [Probe(src, ip, port, protocol) for ip in dst_ips if (":" in ip) in src_versions]
    return probes


def run(argv: list[str], stdin: str | None = None) -> str:
    return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=True).stdout


def nft_json(lab: Lab, commands: list[dict]) -> None:
    """Apply libnftables JSON commands inside the lab's node namespace (never the host's ruleset)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as rules:
        json.dump({"nftables": commands}, rules)
        rules.flush()
        run(lab.node_command(["nft", "-j", "-f", rules.name]))


def drop_rules(*matches: list[dict]) -> list[dict]:
    """A table in the node's forward hook with one drop rule per list of matches."""
    where = {"family": "inet", "table": "labtest"}
    chain = {**where, "name": "forward", "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}
    rules = [{"add": {"rule": {**where, "chain": "forward", "expr": [*match, {"drop": None}]}}} for match in matches]
    return [{"add": {"table": {"family": "inet", "name": "labtest"}}}, {"add": {"chain": chain}}, *rules]


def equals(left: dict, right: str) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def daddr_is(address: str) -> dict:
    return equals({"payload": {"protocol": "ip6" if ":" in address else "ip", "field": "daddr"}}, address)


def saddr_is(address: str) -> dict:
    return equals({"payload": {"protocol": "ip6" if ":" in address else "ip", "field": "saddr"}}, address)


def ct_state_is(state: str) -> dict:
    return {"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": state}}


L4PROTO_SCTP = equals({"meta": {"key": "l4proto"}}, "sctp")
CT_NEW = ct_state_is("new")


def lab_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("kube-netpol-lab-")]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        for name, ips in PODS.items():
            lab.add_host(name, ips)
        lab.serve(SERVED)
        yield lab
    assert not set(lab.netns_names) & set(list_netns())


def test_hosts_are_wired_behind_the_node(lab: Lab) -> None:
    xa = lab.host("x/a")
    assert xa.ips == ("10.244.1.10", "fd00:10:244:1::10")
    addresses = run(["ip", "-n", xa.netns, "-o", "addr", "show", "dev", "eth0"])
    assert "10.244.1.10/32" in addresses and "fd00:10:244:1::10/128" in addresses
    assert "tentative" not in addresses  # DAD is off
    assert "default via 169.254.1.1 dev eth0 onlink" in run(["ip", "-n", xa.netns, "route"])
    assert "default via fe80::1 dev eth0" in run(["ip", "-n", xa.netns, "-6", "route"])
    node_routes = run(["ip", "-n", lab.node_netns, "route"])
    assert f"10.244.1.10 dev {xa.node_ifname}" in node_routes
    node_sysctls = run(lab.node_command(["sysctl", "-n", "net.ipv4.ip_forward", "net.ipv6.conf.all.forwarding"]))
    assert node_sysctls.split() == ["1", "1"]
    host_forwarding = run(lab.host_command("x/a", ["sysctl", "-n", "net.ipv4.ip_forward"]))
    assert host_forwarding.strip() == "0"  # only the node forwards


def test_all_pairs_reach_each_other(lab: Lab) -> None:
    probes = all_pairs(PODS)
    assert {p.protocol for p in probes} == {"TCP", "UDP", "SCTP"} and any(":" in p.dst_ip for p in probes)
    results = lab.probe_many(probes, timeout=TIMEOUT)
    assert [p for p, ok in zip(probes, results) if not ok] == []


def test_unserved_ports_do_not_answer(lab: Lab) -> None:
    probes = [Probe("x/a", "10.244.1.11", 81, "TCP"), Probe("x/a", "10.244.1.11", 81, "UDP"),
              Probe("x/a", "fd00:10:244:1::11", 80, "SCTP"), Probe("x/a", "10.244.9.9", 80, "TCP")]
    assert lab.probe_many(probes, timeout=TIMEOUT) == [False, False, False, False]


def test_a_drop_in_the_node_blocks_only_that_destination(lab: Lab) -> None:
    # Only new connections are dropped (as the agent does), so x/b's own connections get their replies.
    nft_json(lab, drop_rules([CT_NEW, daddr_is("10.244.1.11")], [CT_NEW, daddr_is("fd00:10:244:1::11")]))
    probes = all_pairs(PODS)
    started = time.monotonic()
    results = lab.probe_many(probes, timeout=TIMEOUT)
    elapsed = time.monotonic() - started
    blocked = {(p.dst_ip, p.protocol) for p, ok in zip(probes, results) if not ok}
    expected = {(ip, protocol) for ip in PODS["x/b"] for _, protocol in SERVED}
    assert blocked == expected
    assert all(ok for p, ok in zip(probes, results) if p.dst_ip not in PODS["x/b"])
    # Blocked probes run in parallel: the whole set costs about one timeout.
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + 1.0
    assert any(p.src == "x/b" for p in probes)  # x/b's own connections were among those that passed


def test_sctp_probes_are_real_sctp_with_a_valid_checksum(lab: Lab) -> None:
    # Conntrack marks SCTP with a bad CRC32c invalid; dropping invalid must not block our INITs,
    # while a drop on SCTP alone blocks SCTP and nothing else.
    nft_json(lab, drop_rules([ct_state_is("invalid")], [daddr_is("10.244.2.10"), L4PROTO_SCTP]))
    probes = [Probe("x/a", "10.244.1.11", 81, "SCTP"), Probe("x/a", "10.244.2.10", 81, "SCTP"),
              Probe("x/a", "10.244.2.10", 80, "TCP"), Probe("x/a", "10.244.2.10", 80, "UDP")]
    assert lab.probe_many(probes, timeout=TIMEOUT) == [True, False, True, True]



def test_every_probe_uses_a_new_source_port(lab: Lab) -> None:
    # Twenty probes of the same pair: twenty connections, each from its own ephemeral port.
    results = lab.probe_many([Probe("x/a", "10.244.1.11", 80, "TCP")] * 20, timeout=TIMEOUT)
    assert all(results)
    states = run(["ip", "netns", "exec", lab.host("x/a").netns, "ss", "-Htan", "dst", "10.244.1.11"])
    ports = {line.split()[3].rsplit(":", 1)[1] for line in states.splitlines()}
    assert len(ports) == 20  # TIME-WAIT entries, one per probe


def test_hosts_added_after_serve_serve_too_and_removed_hosts_vanish(lab: Lab) -> None:
    late = lab.add_host("z/late", ["10.244.3.10"])
    assert all(lab.probe_many([Probe("x/a", "10.244.3.10", port, protocol) for port, protocol in SERVED], TIMEOUT))
    lab.remove_host("z/late")
    assert late.netns not in list_netns()
    assert lab.probe("x/a", "10.244.3.10", 80, "TCP", timeout=TIMEOUT) is False
    lab.add_host("z/again", ["10.244.3.10"])  # the address is free again at once
    # A longer timeout costs nothing when it passes; 0.5 s failed once with the machine's two cores loaded.
    assert lab.probe("x/a", "10.244.3.10", 80, "TCP", timeout=3.0) is True
    with pytest.raises(ValueError):
        lab.add_host("x/c", ["10.244.1.10"])  # address taken
    with pytest.raises(ValueError):
        lab.probe("ext1", "fd00:10:244:1::10", 80, "TCP")  # ext1 has no IPv6


def test_a_host_with_two_addresses_of_a_family_answers_on_each(lab: Lab) -> None:
    lab.add_host("z/multi", ["10.244.3.10", "10.244.3.11", "fd00:10:244:3::10", "fd00:10:244:3::11"])
    probes = [Probe("x/a", ip, port, protocol) for ip in lab.host("z/multi").ips for port, protocol in SERVED]
    assert all(lab.probe_many(probes, TIMEOUT))
    # Probes from it leave from its first address of the family.
    nft_json(lab, drop_rules([CT_NEW, saddr_is("10.244.3.10")]))
    assert lab.probe("z/multi", "10.244.1.10", 80, "TCP", timeout=TIMEOUT) is False
    assert lab.probe("z/multi", "fd00:10:244:1::10", 80, "TCP", timeout=TIMEOUT) is True


def test_two_labs_with_the_same_addresses_do_not_interfere() -> None:
    with Lab() as first, Lab() as second:
        for one in (first, second):
            one.add_host("x/a", ["10.244.1.10"])
            one.add_host("x/b", ["10.244.1.11"])
            one.serve([(80, "TCP")])
        assert first.node_netns != second.node_netns
        nft_json(first, drop_rules([daddr_is("10.244.1.11")]))
        assert first.probe("x/a", "10.244.1.11", 80, "TCP", timeout=TIMEOUT) is False
        assert second.probe("x/a", "10.244.1.11", 80, "TCP", timeout=TIMEOUT) is True


def test_close_leaves_nothing_and_the_host_namespace_untouched() -> None:
    root_links = run(["ip", "-o", "link"])
    root_forwarding = Path("/proc/sys/net/ipv4/ip_forward").read_text()
    fds = set(os.listdir("/proc/self/fd"))
    handler = signal.getsignal(signal.SIGTERM)
    lab = Lab()
    for name, ips in PODS.items():
        lab.add_host(name, ips)
    lab.serve(SERVED)
    assert all(lab.probe_many(all_pairs(PODS)[:12], TIMEOUT))
    names = lab.netns_names
    assert len(names) == 5 and set(names) <= set(list_netns())
    assert lab_threads()
    assert signal.getsignal(signal.SIGTERM) is not handler  # ours while the lab is open
    lab.close()
    lab.close()  # idempotent
    assert not set(names) & set(list_netns())
    assert not lab_threads()
    assert set(os.listdir("/proc/self/fd")) == fds  # every socket and netns fd closed
    assert signal.getsignal(signal.SIGTERM) is handler
    assert run(["ip", "-o", "link"]) == root_links
    assert Path("/proc/sys/net/ipv4/ip_forward").read_text() == root_forwarding
    with pytest.raises(LabClosed):
        lab.add_host("x/c", ["10.244.1.12"])


def test_an_exception_inside_the_with_block_tears_down() -> None:
    with pytest.raises(ZeroDivisionError):
        with Lab() as lab:
            lab.add_host("x/a", ["10.244.1.10"])
            names = lab.netns_names
            raise ZeroDivisionError("a test failing inside the lab")
    assert not set(names) & set(list_netns())


def test_a_failing_add_host_leaves_no_namespace(monkeypatch: pytest.MonkeyPatch) -> None:
    import kube_netpol.tools.lab.lab as lab_module

    real_ip_batch = lab_module.ip_batch

    def failing_in_hosts(netns: str, commands: list[list[str]]) -> None:
        if not netns.endswith("-node"):  # after the netns and the veth exist
            raise lab_module.LabError("injected failure")
        real_ip_batch(netns, commands)

    with Lab() as lab:
        lab.add_host("x/a", ["10.244.1.10"])
        lab.serve([(80, "TCP")])
        mine = lambda: {name for name in list_netns() if lab.lab_id in name}  # noqa: E731 - other labs may run
        before = mine()
        assert len(before) == 2
        monkeypatch.setattr(lab_module, "ip_batch", failing_in_hosts)
        with pytest.raises(lab_module.LabError, match="injected"):
            lab.add_host("x/b", ["10.244.1.11"])
        monkeypatch.setattr(lab_module, "ip_batch", real_ip_batch)
        assert mine() == before and "x/b" not in lab.hosts
        # The node route and veth went with the namespace: the same host can be added again.
        lab.add_host("x/b", ["10.244.1.11"])
        assert lab.probe("x/a", "10.244.1.11", 80, "TCP", timeout=TIMEOUT) is True


def test_close_ends_processes_left_in_the_lab() -> None:
    lab = Lab(process_grace=1.0)
    lab.add_host("x/a", ["10.244.1.10"])
    agent = subprocess.Popen(lab.node_command(["sleep", "60"]))
    in_host = subprocess.Popen(lab.host_command("x/a", ["sleep", "60"]))
    time.sleep(0.2)  # let `ip netns exec` switch namespace before exec'ing sleep
    names = lab.netns_names
    lab.close()
    assert agent.wait(5) == -signal.SIGTERM and in_host.wait(5) == -signal.SIGTERM
    assert not set(names) & set(list_netns())


# --- teardown of other processes' labs ---------------------------------------------------------

CHILD = """
import json, signal, sys, time
from kube_netpol.tools.lab import Lab
mode = sys.argv[1]
# A background job inherits SIGINT ignored; behave like a program run from a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)
if mode == "own-handler":
    def handler(signum, frame):
        print("caller handler ran", flush=True)
        sys.exit(4)
    signal.signal(signal.SIGTERM, handler)
lab = Lab(prefix=sys.argv[2])
lab.add_host("x/a", ["10.244.1.10", "fd00:10:244:1::10"])
lab.add_host("x/b", ["10.244.1.11"])
lab.serve([(80, "TCP"), (81, "SCTP")])
if mode == "with-agent":
    import subprocess
    subprocess.Popen(lab.node_command(["sleep", "60"]))  # the agent a harness would run
    time.sleep(0.2)
try:  # entered before telling the parent, which signals at once
    print(json.dumps(lab.netns_names), flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(3)
"""


def start_child(mode: str, prefix: str) -> tuple[subprocess.Popen[str], list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, mode, prefix], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    line = child.stdout.readline()
    if not line:
        child.kill()
        pytest.fail(f"child failed: {child.communicate()[1]}")
    names = json.loads(line)
    assert len(names) == 3 and set(names) <= set(list_netns())
    return child, names


@pytest.fixture
def prefix() -> Iterator[str]:
    prefix = "knlt" + os.urandom(3).hex()
    yield prefix
    cleanup_stale(prefix)  # whatever a failed test left behind


def test_sigterm_tears_down_and_still_terminates(prefix: str) -> None:
    child, names = start_child("plain", prefix)
    child.send_signal(signal.SIGTERM)
    assert child.wait(10) == -signal.SIGTERM
    assert not set(names) & set(list_netns())


def test_sigint_tears_down_and_still_raises_keyboardinterrupt(prefix: str) -> None:
    child, names = start_child("plain", prefix)
    child.send_signal(signal.SIGINT)
    assert child.wait(10) == 3
    assert child.stdout is not None and "interrupted" in child.stdout.read()
    assert not set(names) & set(list_netns())


def test_sigterm_runs_the_callers_own_handler_after_teardown(prefix: str) -> None:
    child, names = start_child("own-handler", prefix)
    child.send_signal(signal.SIGTERM)
    assert child.wait(10) == 4
    assert child.stdout is not None and "caller handler ran" in child.stdout.read()
    assert not set(names) & set(list_netns())


def test_cleanup_stale_removes_a_killed_labs_namespaces_only(prefix: str) -> None:
    with Lab(prefix=prefix) as alive:
        alive.add_host("x/a", ["10.244.1.10"])
        alive.serve([(80, "TCP")])
        child, names = start_child("with-agent", prefix)
        child.kill()  # SIGKILL: no teardown possible
        child.wait(10)
        assert set(names) <= set(list_netns())
        orphans = pids_in_netns(names)
        assert len(orphans) == 1  # the "agent" survived its parent and holds the node netns
        assert sorted(stale_netns(prefix)) == sorted(names)
        assert sorted(cleanup_stale(prefix)) == sorted(names)
        assert not set(names) & set(list_netns())
        assert not Path(f"/proc/{orphans[0]}").exists() or b"Z" in Path(f"/proc/{orphans[0]}/stat").read_bytes()
        assert set(alive.netns_names) <= set(list_netns())  # a live lab is never stale
        assert alive.probe("x/a", "10.244.1.10", 80, "TCP", timeout=TIMEOUT) is True  # and still works
