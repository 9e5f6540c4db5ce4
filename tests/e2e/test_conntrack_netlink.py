"""Strict mode's ctnetlink client against the real kernel: every protocol and family strict mode sees.

Entries are made with ``conntrack -I`` in a network namespace of the test's
own, so no traffic is needed for SCTP (no SCTP sockets on this kernel) or
zones; the client then dumps and deletes them over netlink.
"""

from __future__ import annotations

import concurrent.futures
import os
import subprocess
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from e2e_agentlab import requires_root

from kube_netpol.dataplane.conntrack import Conntrack, Entry, Flow, list_flows, select_denied
from kube_netpol.tools.lab.names import owned_name
from kube_netpol.tools.lab.netns import add_netns, delete_netns, entered, open_netns

pytestmark = requires_root

T = TypeVar("T")

# (conntrack -I arguments, the flow, whether it can still carry traffic). The tool marks TCP entries it
# makes in TIME_WAIT and CLOSE as closed with a FIN (CLOSE_INIT), so both count as over.
ENTRIES = [
    ("-s 10.0.0.1 -d 10.0.0.2 -p tcp --sport 40000 --dport 80 --state ESTABLISHED -u SEEN_REPLY,ASSURED",
     Flow(4, 6, "10.0.0.1", "10.0.0.2", 40000, 80), True),
    ("-s 10.0.0.1 -d 10.0.0.2 -p tcp --sport 40001 --dport 80 --state SYN_SENT",
     Flow(4, 6, "10.0.0.1", "10.0.0.2", 40001, 80), True),
    ("-s 10.0.0.1 -d 10.0.0.2 -p tcp --sport 40002 --dport 80 --state TIME_WAIT -u SEEN_REPLY,ASSURED",
     Flow(4, 6, "10.0.0.1", "10.0.0.2", 40002, 80), False),
    ("-s 10.0.0.1 -d 10.0.0.2 -p tcp --sport 40003 --dport 80 --state CLOSE -u SEEN_REPLY",
     Flow(4, 6, "10.0.0.1", "10.0.0.2", 40003, 80), False),
    ("-s fd00::1 -d fd00::2 -p tcp --sport 40000 --dport 443 --state ESTABLISHED -u SEEN_REPLY",
     Flow(6, 6, "fd00::1", "fd00::2", 40000, 443), True),
    ("-s 10.0.0.1 -d 10.0.0.2 -p udp --sport 5353 --dport 53",
     Flow(4, 17, "10.0.0.1", "10.0.0.2", 5353, 53), True),
    ("-s 10.0.0.1 -d 10.0.0.2 -p udp --sport 5353 --dport 53 --zone 7",  # the same tuple in another zone
     Flow(4, 17, "10.0.0.1", "10.0.0.2", 5353, 53), True),
    ("-s fd00::1 -d fd00::2 -p udp --sport 5353 --dport 53",
     Flow(6, 17, "fd00::1", "fd00::2", 5353, 53), True),
    ("-s 10.0.0.1 -d 10.0.0.2 -p icmp --icmp-type 8 --icmp-code 0 --icmp-id 9",
     Flow(4, 1, "10.0.0.1", "10.0.0.2"), True),
    ("-s fd00::1 -d fd00::2 -p icmpv6 --icmpv6-type 128 --icmpv6-code 0 --icmpv6-id 9",
     Flow(6, 58, "fd00::1", "fd00::2"), True),
    ("-s 10.0.0.1 -d 10.0.0.2 -p sctp --sport 5000 --dport 80 --state ESTABLISHED --orig-vtag 1 --reply-vtag 2",
     Flow(4, 132, "10.0.0.1", "10.0.0.2", 5000, 80), True),
    ("-s 10.0.0.1 -d 10.0.0.2 -p sctp --sport 5001 --dport 80 --state CLOSED --orig-vtag 1 --reply-vtag 2",
     Flow(4, 132, "10.0.0.1", "10.0.0.2", 5001, 80), True),  # an INIT may reuse a CLOSED entry: judged
    ("-s fd00::1 -d fd00::2 -p sctp --sport 5000 --dport 80 --state ESTABLISHED --orig-vtag 1 --reply-vtag 2",
     Flow(6, 132, "fd00::1", "fd00::2", 5000, 80), True),
]


@pytest.fixture
def netns() -> Iterator[str]:
    name = owned_name("knct")
    add_netns(name)
    try:
        yield name
    finally:
        delete_netns([name])


def in_netns(name: str, fn: Callable[[], T]) -> T:
    """``fn()`` on a thread inside ``name`` (a netlink socket lives in the namespace it was made in)."""
    fd = open_netns(name)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as worker:
            def run() -> T:
                with entered(fd):
                    return fn()
            return worker.submit(run).result(timeout=60)
    finally:
        os.close(fd)


def insert(netns: str, args: str, count: int = 1) -> None:
    for _ in range(count):
        result = subprocess.run(["ip", "netns", "exec", netns, "conntrack", "-I", *args.split(), "-t", "300"],
                                capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr


def test_dump_and_delete_every_protocol_and_family(netns: str) -> None:
    for args, _, _ in ENTRIES:
        insert(netns, args)

    def dump() -> list[Entry]:
        with Conntrack() as ct:
            return ct.dump()

    entries = in_netns(netns, dump)
    assert sorted((e.flow(), e.live) for e in entries) == sorted((flow, live) for _, flow, live in ENTRIES)

    def cut_live() -> tuple[int, int]:
        with Conntrack() as ct:
            live = select_denied(ct.dump(), lambda ip: True, lambda entry: False)
            return ct.delete(live), ct.delete(live)  # the second time they are gone: not an error

    assert in_netns(netns, cut_live) == (sum(live for *_, live in ENTRIES), 0)
    assert sorted(in_netns(netns, list_flows)) == sorted(flow for _, flow, live in ENTRIES if not live)


def test_delete_more_entries_than_one_batch(netns: str) -> None:
    for port in range(300):
        insert(netns, f"-s 10.0.0.1 -d 10.0.0.2 -p tcp --sport {20000 + port} --dport 80 --state ESTABLISHED")

    def cut_all() -> int:
        with Conntrack() as ct:
            return ct.delete(ct.dump())

    assert in_netns(netns, cut_all) == 300
    assert in_netns(netns, list_flows) == []


def test_without_cap_net_admin_the_error_says_so(netns: str) -> None:
    def as_nobody() -> str:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: drop root (and with it CAP_NET_ADMIN), then try
            os.close(read)
            try:
                os.setgid(65534)
                os.setuid(65534)
                list_flows()
                message = "listed"
            except BaseException as e:  # noqa: BLE001 - report whatever it was to the parent
                message = f"{type(e).__name__}: {e}"
            os.write(write, message.encode())
            os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as answer:
            message = answer.read().decode()
        os.waitpid(pid, 0)
        return message

    message = in_netns(netns, as_nobody)
    assert message.startswith("ConntrackError: listing conntrack entries: EPERM"), message
    assert "CAP_NET_ADMIN" in message
