"""The ctnetlink codec, the batching socket shell and strict mode's selection and pass, without a kernel."""

from __future__ import annotations

import errno
import logging
import socket
import struct
from collections.abc import Callable
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_netpol.agent import controller
from kube_netpol.agent.config import AgentConfig
from kube_netpol.agent.controller import Agent
from kube_netpol.dataplane.conntrack import (
    Conntrack,
    ConntrackError,
    Entry,
    Flow,
    Reply,
    decode,
    delete_request,
    dump_request,
    select_denied,
)

# One dump's messages as Linux 6.18 sent them (taken from a test namespace whose entries were made with
# `conntrack -I`), each with the line `conntrack -L -o extended` printed for it.
DUMP_MESSAGES = [
    # ipv6 10 icmpv6 58 29 src=fd00::1 dst=fd00::2 type=128 code=0 id=7 [UNREPLIED] src=fd00::2 dst=fd00::1 ...
    "000100000001020001000000d95f00000a000000540001802c00018014000300fd000000000000000000000000000001"
    "14000400fd00000000000000000000000000000224000280050001003a00000006000700000700000500080080000000"
    "0500090000000000540002802c00018014000300fd00000000000000000000000000000214000400fd00000000000000"
    "000000000000000124000280050001003a00000006000700000700000500080081000000050009000000000008000300"
    "00000008080008000000000008000c00d8952dfc08000b0000000001080007000000001d1c0018800800010000000000"
    "08000200000000000800030000000000",
    # ipv4 2 tcp 6 119 TIME_WAIT src=10.0.0.1 dst=10.0.0.3 sport=60111 dport=80 ... [ASSURED]
    "f00000000001020001000000d95f0000020000003400018014000180080001000a000001080002000a0000031c000280"
    "050001000600000006000200eacf000006000300005000003400028014000180080001000a000003080002000a000001"
    "1c0002800500010006000000060002000050000006000300eacf0000080003000000000e080008000000000008000c00"
    "0d7c5fe308000b00000000010800070000000077300004802c0001800500010007000000050002000000000005000300"
    "00000000060004000e000000060005000e0000001c001880080001000000000008000200000000000800030000000000",
    # ipv6 10 tcp 6 299 ESTABLISHED src=fd00::1 dst=fd00::2 sport=5000 dport=443 ...
    "200100000001020001000000d95f00000a0000004c0001802c00018014000300fd000000000000000000000000000001"
    "14000400fd0000000000000000000000000000021c000280050001000600000006000200138800000600030001bb0000"
    "4c0002802c00018014000300fd00000000000000000000000000000214000400fd000000000000000000000000000001"
    "1c00028005000100060000000600020001bb00000600030013880000080003000000000a080008000000000008000c00"
    "a6bdb32a08000b0000000001080007000000012b300004802c0001800500010003000000050002000000000005000300"
    "00000000060004000a000000060005000a0000001c001880080001000000000008000200000000000800030000000000",
    # ipv4 2 sctp 132 299 CLOSED src=10.0.0.1 dst=10.0.0.4 sport=5001 dport=80 [UNREPLIED] ...
    "e00000000001020001000000d95f0000020000003400018014000180080001000a000001080002000a0000041c000280"
    "0500010084000000060002001389000006000300005000003400028014000180080001000a000004080002000a000001"
    "1c0002800500010084000000060002000050000006000300138900000800030000000008080008000000000008000c00"
    "ec28537008000b0000000001080007000000012b200004801c0003800500010001000000080002000100000008000300"
    "020000001c001880080001000000000008000200000000000800030000000000",
    # ipv4 2 icmp 1 29 src=10.0.0.1 dst=10.0.0.2 type=8 code=0 id=9 [UNREPLIED] ...
    "d00000000001020001000000d95f0000020000003c00018014000180080001000a000001080002000a00000224000280"
    "05000100010000000600040000090000050005000800000005000600000000003c00028014000180080001000a000002"
    "080002000a00000124000280050001000100000006000400000900000500050000000000050006000000000008000300"
    "00000008080008000000000008000c00a72e3ec308000b0000000001080007000000001d1c0018800800010000000000"
    "08000200000000000800030000000000",
    # ipv4 2 udp 17 29 src=10.0.0.1 dst=10.0.0.2 sport=5353 dport=53 [UNREPLIED] ... zone=7
    "c80000000001020001000000d95f0000020000003400018014000180080001000a000001080002000a0000021c000280"
    "05000100110000000600020014e9000006000300003500003400028014000180080001000a000002080002000a000001"
    "1c000280050001001100000006000200003500000600030014e900000600120000070000080003000000000808000800"
    "0000000008000c000a9f7d6708000b0000000001080007000000001d1c00188008000100000000000800020000000000"
    "0800030000000000",
    # ipv4 2 tcp 6 299 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=60110 dport=8080 ... [ASSURED]
    "f00000000001020001000000d95f0000020000003400018014000180080001000a000001080002000a0000021c000280"
    "050001000600000006000200eace0000060003001f9000003400028014000180080001000a000002080002000a000001"
    "1c0002800500010006000000060002001f90000006000300eace0000080003000000000e080008000000000008000c00"
    "a946a7d708000b0000000001080007000000012b300004802c0001800500010003000000050002000000000005000300"
    "00000000060004000a000000060005000a0000001c001880080001000000000008000200000000000800030000000000",
    # ipv4 2 sctp 132 299 ESTABLISHED src=10.0.0.1 dst=10.0.0.2 sport=5000 dport=80 [UNREPLIED] ...
    "e00000000001020001000000d95f0000020000003400018014000180080001000a000001080002000a0000021c000280"
    "0500010084000000060002001388000006000300005000003400028014000180080001000a000002080002000a000001"
    "1c0002800500010084000000060002000050000006000300138800000800030000000008080008000000000008000c00"
    "60a2282d08000b0000000001080007000000012b200004801c0003800500010004000000080002000100000008000300"
    "020000001c001880080001000000000008000200000000000800030000000000",
]
DUMP_DONE = "140000000300020001000000d95f000000000000"  # NLMSG_DONE, sequence 1
# The answers to deleting the IPv6 ICMP entry twice (sequences 2 and 3): an ack, then ENOENT.
ACKS = (
    "240000000200000102000000d95f00000000000070000000020105000200000000000000"
    "240000000200000103000000d95f0000feffffff70000000020105000300000000000000"
)

DUMPED = [  # (flow, live) of each message above
    (Flow(6, 58, "fd00::1", "fd00::2"), True),
    (Flow(4, 6, "10.0.0.1", "10.0.0.3", 60111, 80), False),  # TIME_WAIT after a FIN
    (Flow(6, 6, "fd00::1", "fd00::2", 5000, 443), True),
    (Flow(4, 132, "10.0.0.1", "10.0.0.4", 5001, 80), True),  # CLOSED: an INIT may reuse it
    (Flow(4, 1, "10.0.0.1", "10.0.0.2"), True),
    (Flow(4, 17, "10.0.0.1", "10.0.0.2", 5353, 53), True),
    (Flow(4, 6, "10.0.0.1", "10.0.0.2", 60110, 8080), True),
    (Flow(4, 132, "10.0.0.1", "10.0.0.2", 5000, 80), True),
]


def _dump_datagram() -> bytes:
    return bytes.fromhex("".join(DUMP_MESSAGES) + DUMP_DONE)


def _entries() -> list[Entry]:
    return [m for m in decode(_dump_datagram()) if isinstance(m, Entry)]


def _attribute(kind: int, value: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(value), kind) + value
    return raw + b"\0" * (-len(raw) % 4)


# --- codec -------------------------------------------------------------------------------------


def test_decode_a_dump_takes_the_original_direction_and_liveness() -> None:
    messages = list(decode(_dump_datagram()))
    assert messages[-1] == Reply(seq=1, errno=0, done=True)
    entries = messages[:-1]
    assert [(e.flow(), e.live) for e in entries] == DUMPED  # type: ignore[union-attr]
    tcp6 = entries[2]
    assert isinstance(tcp6, Entry)
    assert tcp6.src == socket.inet_pton(socket.AF_INET6, "fd00::1") and len(tcp6.dst) == 16


def test_ident_is_the_tuple_zone_and_id_attributes_as_sent() -> None:
    entries = _entries()
    udp = bytes.fromhex(DUMP_MESSAGES[5])
    tuple_orig = udp[20 : 20 + 0x34]  # the first attribute after the headers
    zone = _attribute(18, b"\x00\x07")
    entry_id = _attribute(12, bytes.fromhex("0a9f7d67"))
    assert entries[5].ident == tuple_orig + zone + entry_id
    # ICMP: the tuple carries the id, type and code that a deletion needs.
    assert b"\x06\x00\x04\x00\x00\x09" in entries[4].ident


def test_dump_and_delete_requests() -> None:
    assert dump_request(7) == struct.pack("=IHHII", 20, 0x101, 0x301, 7, 0) + bytes([socket.AF_UNSPEC, 0, 0, 0])
    entry = _entries()[0]  # IPv6 ICMP
    request = delete_request(entry, 9)
    length, kind, flags, seq, port = struct.unpack_from("=IHHII", request)
    assert (length, kind, flags, seq, port) == (len(request), 0x102, 0x5, 9, 0)
    assert request[16] == socket.AF_INET6 and request[17:20] == b"\0\0\0"
    assert request[20:] == entry.ident
    assert delete_request(_entries()[6], 1)[16] == socket.AF_INET


def test_decode_acks_errors_and_noise() -> None:
    assert list(decode(bytes.fromhex(ACKS))) == [Reply(2, 0), Reply(3, errno.ENOENT)]
    other = struct.pack("=IHHII", 20, 0x500, 0, 1, 0) + b"\0" * 4  # not ctnetlink: skipped
    unknown_family = bytearray(bytes.fromhex(DUMP_MESSAGES[6]))
    unknown_family[16] = 7
    assert list(decode(other + bytes(unknown_family))) == []
    with pytest.raises(ConntrackError, match="malformed"):
        list(decode(struct.pack("=IHHII", 400, 0x100, 0, 1, 0)))


def test_decode_live_only_skips_entries_that_cannot_carry_traffic() -> None:
    live = [m.flow() for m in decode(_dump_datagram(), live_only=True) if isinstance(m, Entry)]
    assert live == [flow for flow, alive in DUMPED if alive]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(DUMP_MESSAGES) - 1), st.data())
def test_decode_survives_any_corruption(index: int, data: st.DataObject) -> None:
    message = bytearray(bytes.fromhex(DUMP_MESSAGES[index]))
    for _ in range(data.draw(st.integers(1, 8))):
        message[data.draw(st.integers(0, len(message) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(message)))
    try:
        list(decode(bytes(message[:cut])))
    except ConntrackError:
        pass  # the only failure decode may raise

@pytest.mark.parametrize(
    ("state", "flags_orig", "flags_reply", "live"),
    [
        (7, 0x0E, 0x0E, False),  # TIME_WAIT, FIN seen
        (8, 0x0A, 0x0E, False),  # CLOSE, the reply side sent the first FIN
        (8, 0x0A, 0x0A, True),  # CLOSE after a RST alone: a SYN may be taken as the old connection's
        (3, 0x0E, 0x0E, True),  # ESTABLISHED (half-closed connections still carry data)
        (4, 0x0E, 0x0A, True),  # FIN_WAIT
    ],
)
def test_tcp_entries_are_over_only_when_closed_after_a_fin(state: int, flags_orig: int, flags_reply: int,
                                                           live: bool) -> None:
    message = bytearray(bytes.fromhex(DUMP_MESSAGES[1]))  # TIME_WAIT
    protoinfo = message.index(bytes.fromhex("300004802c0001800500010007"))
    message[protoinfo + 12] = state
    message[protoinfo + 36] = flags_orig  # CTA_PROTOINFO_TCP_FLAGS_ORIGINAL's flags byte
    message[protoinfo + 44] = flags_reply
    (entry,) = decode(bytes(message))
    assert isinstance(entry, Entry) and entry.live is live



def test_entries_being_destroyed_are_not_live() -> None:
    message = bytearray(bytes.fromhex(DUMP_MESSAGES[6]))  # ESTABLISHED
    status = message.index(bytes.fromhex("080003000000000e"))  # CTA_STATUS: SEEN_REPLY, ASSURED, CONFIRMED
    message[status + 6] |= 0x02  # IPS_DYING (bit 9)
    (entry,) = decode(bytes(message))
    assert isinstance(entry, Entry) and not entry.live


# --- socket shell ------------------------------------------------------------------------------


class FakeKernel:
    """Stands in for the netlink socket: answers dumps with ``datagrams``, deletions per ``errnos``."""

    def __init__(self, datagrams: list[bytes] | None = None, errnos: Callable[[int], int] = lambda seq: 0) -> None:
        self.datagrams = datagrams or []
        self.errnos = errnos
        self.sends: list[bytes] = []
        self.pending: list[bytes] = []

    def settimeout(self, timeout: float) -> None: ...

    def gettimeout(self) -> float:
        return 1.0

    def bind(self, address: tuple[int, int]) -> None: ...

    def setsockopt(self, *args: int) -> None: ...

    def close(self) -> None: ...

    def sendall(self, data: bytes) -> None:
        self.sends.append(data)
        offset = 0
        while offset < len(data):
            length, kind, _flags, seq, _port = struct.unpack_from("=IHHII", data, offset)
            if kind == 0x101:
                self.pending += self.datagrams
            else:
                code = self.errnos(seq)
                self.pending.append(struct.pack("=IHHIIi", 36, 2, 0x100, seq, 1, -code) + data[offset : offset + 16])
            offset += length

    def recv_into(self, buffer: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if not self.pending:
            raise TimeoutError
        datagram = self.pending.pop(0)
        buffer[: len(datagram)] = datagram
        return len(datagram)


def test_dump_reads_every_datagram_until_done() -> None:
    first = bytes.fromhex("".join(DUMP_MESSAGES[:3]))
    rest = bytes.fromhex("".join(DUMP_MESSAGES[3:]))
    kernel = FakeKernel([first, rest, bytes.fromhex(DUMP_DONE)])
    with Conntrack(sock=kernel) as ct:  # type: ignore[arg-type]
        assert [(e.flow(), e.live) for e in ct.dump()] == DUMPED


def test_dump_failure_says_why() -> None:
    denied = struct.pack("=IHHIIi", 36, 2, 0, 1, 1, -errno.EPERM) + b"\0" * 16
    with pytest.raises(ConntrackError, match="EPERM.*CAP_NET_ADMIN"):
        Conntrack(sock=FakeKernel([denied])).dump()  # type: ignore[arg-type]
    with pytest.raises(ConntrackError, match="no answer"):
        Conntrack(sock=FakeKernel([])).dump()  # type: ignore[arg-type]


def test_delete_batches_requests_and_counts_acks() -> None:
    entry = _entries()[6]
    kernel = FakeKernel(errnos=lambda seq: errno.ENOENT if seq % 10 == 0 else 0)
    with Conntrack(sock=kernel) as ct:  # type: ignore[arg-type]
        assert ct.delete([entry] * 300) == 300 - 30  # gone already: not an error, not counted
    assert [len(send) // len(delete_request(entry, 1)) for send in kernel.sends] == [128, 128, 44]


def test_delete_reports_failures_after_trying_all() -> None:
    kernel = FakeKernel(errnos=lambda seq: errno.EBUSY if seq == 2 else 0)
    with pytest.raises(ConntrackError, match=r"1 of 3 failed, first with EBUSY.*\(2 deleted\)"):
        Conntrack(sock=kernel).delete(_entries()[:3])  # type: ignore[arg-type]


# --- selection ---------------------------------------------------------------------------------


def test_select_denied_skips_dead_and_unwatched_entries_and_judges_each_key_once() -> None:
    entries = _entries()
    # Many connections of one key: judged once.
    entries += [entries[6]._replace(sport=port) for port in range(1000, 1100)]
    judged: list[Flow] = []

    def allowed(entry: Entry) -> bool:
        judged.append(entry.flow())
        return entry.protocol == 17  # UDP stays allowed

    watched = {socket.inet_pton(socket.AF_INET, "10.0.0.2"), socket.inet_pton(socket.AF_INET6, "fd00::1")}
    denied = select_denied(entries, watched.__contains__, allowed)
    assert [e.flow() for e in denied] == [DUMPED[0][0], DUMPED[2][0], DUMPED[4][0], DUMPED[6][0],
                                          DUMPED[7][0]] + [DUMPED[6][0]._replace(sport=p) for p in range(1000, 1100)]
    # Not judged: TIME_WAIT and CLOSED entries (dead), nor 10.0.0.1 -> 10.0.0.3/.4 (not watched).
    assert len(judged) == len(set(judged)) == 6


# --- the agent's strict-mode pass, with the netlink socket and the verdicts faked ---------------


class FakeDataplane:
    divert_all = False
    verdict_memory = False
    backend = "nft"
    managed = (frozenset({"10.0.0.2"}), frozenset({"fd00::9"}))


def _agent(**config: object) -> Agent:
    return Agent(AgentConfig(hostname_override="node", **config), lambda state: None,  # type: ignore[arg-type]
                 dataplane=FakeDataplane())  # type: ignore[arg-type]


def test_strict_mode_pass_deletes_the_denied_live_entries_of_watched_addresses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    deleted: list[Entry] = []

    class FakeConntrack:
        def __enter__(self) -> FakeConntrack:
            return self

        def __exit__(self, *exc: object) -> None: ...

        def dump(self, live_only: bool = False) -> list[Entry]:
            return [e for e in _entries() if e.live or not live_only]

        def delete(self, entries: list[Entry]) -> int:
            deleted.extend(entries)
            return len(entries)

    monkeypatch.setattr(controller.conntrack, "Conntrack", FakeConntrack)
    agent = _agent(exempt_root_traffic=False)
    monkeypatch.setattr(agent.engine, "evaluate", lambda packet: SimpleNamespace(allowed=packet.protocol == 17))
    with caplog.at_level(logging.INFO):
        agent._enforce_strict_mode()
    # Watched: 10.0.0.2. UDP stays allowed; the IPv6 and 10.0.0.3/.4 entries are not watched.
    assert [e.flow() for e in deleted] == [DUMPED[4][0], DUMPED[6][0], DUMPED[7][0]]
    assert "strict mode: cut 3 connection(s)" in caplog.text


def test_strict_mode_pass_failures_are_logged_and_never_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse() -> None:
        raise ConntrackError("listing conntrack entries: EPERM (Operation not permitted)")

    def crash() -> None:
        raise RuntimeError("boom")

    agent = _agent()
    for failure in (refuse, crash):
        monkeypatch.setattr(controller.conntrack, "Conntrack", failure)
        agent._enforce_strict_mode()
    assert "strict mode: listing conntrack entries: EPERM" in caplog.text
    assert "strict mode: the conntrack pass failed" in caplog.text and "boom" in caplog.text



# --- NAT: strict mode judges what our chain judged (after DNAT, before SNAT) ----------------------

V4 = lambda text: socket.inet_pton(socket.AF_INET, text)  # noqa: E731


def _nat_variant(dnat: bool = False, snat: bool = False) -> bytes:
    """DUMP_MESSAGES[6] (10.0.0.1:60110 -> 10.0.0.2:8080) as if it went to Service 10.96.0.10:80 (DNAT)
    and/or was masqueraded as 10.0.0.254 (SNAT). Offsets: headers 20 bytes, then CTA_TUPLE_ORIG
    {IP {src 32:36, dst 40:44}, PROTO {num, sport 60:62, dport 68:70}}, CTA_TUPLE_REPLY from 72
    {IP {src 84:88, dst 92:96}, ...}."""
    message = bytearray(bytes.fromhex(DUMP_MESSAGES[6]))
    if dnat:
        message[40:44] = V4("10.96.0.10")
        message[68:70] = struct.pack(">H", 80)
    if snat:
        message[92:96] = V4("10.0.0.254")
    return bytes(message)


def test_the_reply_source_is_decoded_and_equals_the_destination_without_nat() -> None:
    for entry in _entries():
        assert (entry.reply_src, entry.reply_sport) == (entry.dst, entry.dport)
        assert entry.as_judged() == entry


def test_a_dnat_entry_is_judged_with_the_endpoint_it_went_to() -> None:
    [entry] = [m for m in decode(_nat_variant(dnat=True)) if isinstance(m, Entry)]
    assert (entry.dst, entry.dport) == (V4("10.96.0.10"), 80)  # the original tuple: what deletes it
    judged = entry.as_judged()
    assert (judged.src, judged.dst, judged.sport, judged.dport) == (V4("10.0.0.1"), V4("10.0.0.2"), 60110, 8080)
    assert judged.ident == entry.ident


def test_a_masqueraded_entry_is_judged_with_the_pod_as_source() -> None:
    [entry] = [m for m in decode(_nat_variant(dnat=True, snat=True)) if isinstance(m, Entry)]
    judged = entry.as_judged()
    # SNAT happens after our chain judged the packet: the source is the original one, the pod's.
    assert (judged.src, judged.dst, judged.dport) == (V4("10.0.0.1"), V4("10.0.0.2"), 8080)


def test_select_denied_cuts_a_connection_through_a_service_address() -> None:
    entries = [m for m in decode(_nat_variant(dnat=True)) if isinstance(m, Entry)]
    seen: list[tuple[bytes, int]] = []

    def allowed(entry: Entry) -> bool:
        seen.append((entry.dst, entry.dport))
        return False

    # Only the endpoint is watched (managed): the Service address is not a pod's.
    denied = select_denied(entries, {V4("10.0.0.2")}.__contains__, allowed)
    assert denied == entries  # the entry itself, original tuple and ident, is what gets deleted
    assert seen == [(V4("10.0.0.2"), 8080)]


def test_dns_judged_before_dnat_keeps_the_service_address() -> None:
    """xt backend with the bug-1766 workaround: DNS requests were judged in mangle PREROUTING, before DNAT."""
    [tcp] = [m for m in decode(_nat_variant(dnat=True)) if isinstance(m, Entry)]
    dns = tcp._replace(protocol=17, dport=53)  # a UDP request to the Service address's port 53
    seen: list[bytes] = []

    def allowed(entry: Entry) -> bool:
        seen.append(entry.dst)
        return True

    select_denied([dns], lambda _ip: True, allowed, dns_judged_before_dnat=True)
    select_denied([dns], lambda _ip: True, allowed)
    select_denied([tcp], lambda _ip: True, allowed, dns_judged_before_dnat=True)
    assert seen == [V4("10.96.0.10"), V4("10.0.0.2"), V4("10.0.0.2")]
