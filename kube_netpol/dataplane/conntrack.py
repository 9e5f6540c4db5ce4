"""Conntrack entries for strict mode: list them to re-judge, delete the ones now denied.

Accepted connections live in conntrack (our chain accepts established
traffic without asking userspace), so when policies change, strict mode lists
the entries, re-judges them and deletes the denied ones; their next packet is
then new and queued again.

An entry is judged with the addresses its first packet had when our chain
judged it: after DNAT (a Service address was translated to the endpoint the
packet went to, which the reply tuple's source tells), before SNAT (the
original tuple's source is the pod, even when masquerading hid it on the
wire). ``Entry.as_judged`` gives them; ``select_denied`` uses it.

It speaks ctnetlink (the kernel's conntrack netlink interface) over one
socket: one dump, then the deletions batched, many requests per send. The
codec (``dump_request``, ``delete_request``, ``decode``) is pure, bytes in and
out; ``Conntrack`` is the thin socket around it. A deletion echoes the
entry's original tuple, zone and id attributes exactly as the dump gave them,
so it removes that entry and nothing else, whatever its protocol.

Why not the ``conntrack`` tool or pyroute2 (measured here, see
docs/performance.md): a ``conntrack -D`` process per entry costs about 6.5 ms;
pyroute2 0.9.7 takes about 45 µs to decode a dumped entry (five times the
tool's listing) and about 200 µs to encode and acknowledge a deletion. This
codec: about 6 µs per dumped entry (5 µs for one skipped as over) and
3–4 µs per deletion, besides the kernel's own walk of its table.
"""

from __future__ import annotations

import errno as errnos
import os
import socket
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Final, NamedTuple

from kube_netpol.dataplane.netlink import ATTR as _ATTR
from kube_netpol.dataplane.netlink import HEADER as _HEADER
from kube_netpol.dataplane.netlink import NETLINK_NETFILTER as NETLINK_NETFILTER
from kube_netpol.dataplane.netlink import NFGEN as _NFGEN
from kube_netpol.dataplane.netlink import NLA_TYPE_MASK as _NLA_TYPE_MASK
from kube_netpol.dataplane.netlink import NLM_F_ACK as _NLM_F_ACK
from kube_netpol.dataplane.netlink import NLM_F_DUMP as _NLM_F_DUMP
from kube_netpol.dataplane.netlink import NLM_F_REQUEST as _NLM_F_REQUEST
from kube_netpol.dataplane.netlink import NLMSG_DONE as _NLMSG_DONE
from kube_netpol.dataplane.netlink import NLMSG_ERROR as _NLMSG_ERROR


# Netlink (linux/netlink.h) and nfnetlink/ctnetlink (linux/netfilter/nfnetlink*.h) numbers.
_SOL_NETLINK: Final = 270
_NETLINK_CAP_ACK: Final = 10  # acks and errors without the request echoed back
_CT_NEW: Final = 0x100  # (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW: what a dump's entries are
_CT_GET: Final = 0x101
_CT_DELETE: Final = 0x102
_CTA_TUPLE_ORIG: Final = 1
_CTA_TUPLE_REPLY: Final = 2
_CTA_STATUS: Final = 3
_CTA_PROTOINFO: Final = 4
_CTA_ID: Final = 12
_CTA_ZONE: Final = 18
_CTA_TUPLE_IP: Final = 1
_IP_SRC: Final = (1, 3)  # CTA_IP_V4_SRC, CTA_IP_V6_SRC
_IP_DST: Final = (2, 4)  # CTA_IP_V4_DST, CTA_IP_V6_DST
_CTA_TUPLE_PROTO: Final = 2
_CTA_PROTO_NUM: Final = 1
_CTA_PROTO_SRC_PORT: Final = 2
_CTA_PROTO_DST_PORT: Final = 3
_CTA_PROTOINFO_TCP: Final = 1
_CTA_PROTOINFO_TCP_STATE: Final = 1  # the kernel puts it first
_CTA_PROTOINFO_TCP_FLAGS: Final = (4, 5)  # CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, _REPLY: {u8 flags, u8 mask}
_IP_CT_TCP_FLAG_CLOSE_INIT: Final = 0x04  # this direction sent the first FIN
_IPS_DYING: Final = 1 << 9
#: TCP_CONNTRACK_TIME_WAIT, TCP_CONNTRACK_CLOSE. Such an entry is over when a FIN was seen: a new
#: SYN on its tuple makes the kernel drop it and track the SYN as new, so it is judged again (other
#: packets reach endpoints that no longer have the connection). After a RST alone, a SYN from the
#: side that did not reset may be taken as part of the old entry (nf_conntrack_proto_tcp.c), so
#: such an entry counts as live. SCTP's CLOSED state has no such guarantee either.
_TCP_CLOSED_STATES: Final = frozenset({7, 8})
_AF: Final = {4: socket.AF_INET, 6: socket.AF_INET6}
_VERSION: Final = {socket.AF_INET: 4, socket.AF_INET6: 6}

_ERROR: Final = struct.Struct("=i")
_BE16: Final = struct.Struct(">H")
_BE32: Final = struct.Struct(">I")
_PREFIX: Final = _HEADER.size + _NFGEN.size

_TIMEOUT_S: Final = 30.0
_RECV_BUFFER: Final = 1 << 16  # the kernel's dump messages are at most 32 KiB
#: Deletions per send: their acks (tens of bytes each) must fit the socket's receive buffer.
_BATCH: Final = 128


class Flow(NamedTuple):
    """The original-direction tuple of one conntrack entry (ports 0 when the protocol has none)."""

    family: int  # 4 or 6
    protocol: int  # IP protocol number
    src: str
    dst: str
    sport: int = 0
    dport: int = 0


class Entry(NamedTuple):
    """One conntrack entry as a dump gives it: what strict mode judges, and what deletes it."""

    family: int  # 4 or 6
    protocol: int
    src: bytes  # packed, original direction
    dst: bytes
    sport: int  # 0 when the protocol has no ports
    dport: int
    live: bool  # can still carry traffic: not a TCP connection closed with FIN, nor being destroyed
    ident: bytes  # its CTA_TUPLE_ORIG, CTA_ZONE and CTA_ID attributes, as sent by the kernel
    #: The reply tuple's source address and port: where the connection really goes (its DNAT
    #: target); the original destination when nothing translated it; empty when not dumped.
    reply_src: bytes = b""
    reply_sport: int = 0

    def as_judged(self) -> Entry:
        """The entry with the destination its first packet had when our chain judged it (after DNAT)."""
        if not self.reply_src or (self.reply_src == self.dst and self.reply_sport == self.dport):
            return self
        return self._replace(dst=self.reply_src, dport=self.reply_sport)

    def flow(self) -> Flow:
        af = _AF[self.family]
        return Flow(self.family, self.protocol, socket.inet_ntop(af, self.src), socket.inet_ntop(af, self.dst),
                    self.sport, self.dport)


class Reply(NamedTuple):
    """The answer to a request: an ack or error (NLMSG_ERROR) or the end of a dump (NLMSG_DONE)."""

    seq: int
    errno: int  # 0: success
    done: bool = False


class ConntrackError(RuntimeError):
    """Listing or deleting conntrack entries failed; the message says what and why."""


# --- codec -------------------------------------------------------------------------------------


def dump_request(seq: int) -> bytes:
    """Ask for every entry of the socket's network namespace, both families."""
    return _HEADER.pack(_PREFIX, _CT_GET, _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0) + _NFGEN.pack(socket.AF_UNSPEC, 0, 0)


def delete_request(entry: Entry, seq: int) -> bytes:
    """Delete exactly ``entry`` (its tuple, zone and id), acknowledged with ``seq``."""
    return (
        _HEADER.pack(_PREFIX + len(entry.ident), _CT_DELETE, _NLM_F_REQUEST | _NLM_F_ACK, seq, 0)
        + _NFGEN.pack(_AF[entry.family], 0, 0)
        + entry.ident
    )


def decode(data: bytes | bytearray | memoryview, live_only: bool = False) -> Iterator[Entry | Reply]:
    """The messages of one datagram from the kernel, in order; other messages are skipped, and so
    are entries that cannot carry traffic with ``live_only`` (before most of their decoding)."""
    end = len(data)
    offset = 0
    while offset + _HEADER.size <= end:
        length, kind, _flags, seq, _port = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size or offset + length > end:
            raise ConntrackError(f"malformed netlink message (length {length} at offset {offset})")
        body = offset + _HEADER.size
        if kind == _CT_NEW and length >= _PREFIX:
            entry = _parse_entry(data, data[body], body + _NFGEN.size, offset + length, live_only)
            if entry is not None:
                yield entry
        elif kind in (_NLMSG_ERROR, _NLMSG_DONE):
            code = _ERROR.unpack_from(data, body)[0] if length >= _HEADER.size + _ERROR.size else 0
            yield Reply(seq, -code, kind == _NLMSG_DONE)
        offset += (length + 3) & ~3


def _raw(data: bytes | bytearray | memoryview, start: int, end: int) -> bytes:
    """An attribute's bytes with its padding, as a request must carry it."""
    raw = bytes(data[start:end])
    return raw + b"\0" * (-len(raw) % 4)


def _tcp_over(data: bytes | bytearray | memoryview, start: int, end: int) -> bool:
    """Whether CTA_PROTOINFO's value data[start:end] is that of a TCP connection that is over (see
    _TCP_CLOSED_STATES): {CTA_PROTOINFO_TCP {state, window scales, flags original, flags reply}}."""
    unpack = _ATTR.unpack_from
    length, kind = unpack(data, start)
    if kind & _NLA_TYPE_MASK != _CTA_PROTOINFO_TCP or length < 9 or start + length > end:
        return False
    field_length, field = unpack(data, start + 4)
    if field & _NLA_TYPE_MASK != _CTA_PROTOINFO_TCP_STATE or data[start + 8] not in _TCP_CLOSED_STATES:
        return False
    at, tcp_end = start + 4, start + length
    while at + 4 <= tcp_end:
        field_length, field = unpack(data, at)
        if field_length < 4 or at + field_length > tcp_end:
            break
        if field & _NLA_TYPE_MASK in _CTA_PROTOINFO_TCP_FLAGS and field_length >= 5:
            if data[at + 4] & _IP_CT_TCP_FLAG_CLOSE_INIT:
                return True
        at += (field_length + 3) & ~3
    return False


# Decoding is most of a strict-mode pass, hence plain loops over the attributes rather than
# generators: about 6 µs an entry with its reply tuple's source (measured: 4.8 µs with the original
# tuple alone, 7.3 µs with the reply tuple walked like it), 5 µs one skipped as over.
def _parse_entry(
    data: bytes | bytearray | memoryview, family: int, start: int, end: int, live_only: bool
) -> Entry | None:
    version = _VERSION.get(family)  # type: ignore[call-overload]
    if version is None:
        return None
    unpack = _ATTR.unpack_from
    orig_at = orig_end = reply_at = reply_end = status = 0
    dead = False
    ident = []
    at = start
    while at + 4 <= end:
        length, kind = unpack(data, at)
        if length < 4 or at + length > end:
            break
        kind &= _NLA_TYPE_MASK
        if kind == _CTA_TUPLE_ORIG:
            orig_at, orig_end = at, at + length
        elif kind == _CTA_TUPLE_REPLY:
            reply_at, reply_end = at, at + length
        elif kind == _CTA_STATUS and length >= 8:
            status = _BE32.unpack_from(data, at + 4)[0]
        elif kind == _CTA_PROTOINFO and length >= 13:
            dead = _tcp_over(data, at + 4, at + length)
        elif kind == _CTA_ID or kind == _CTA_ZONE:
            ident.append(_raw(data, at, at + length))
        at += (length + 3) & ~3
    if not orig_at:
        return None
    live = not dead and not status & _IPS_DYING
    if live_only and not live:
        return None
    src, dst, protocol, sport, dport = _parse_tuple(data, orig_at, orig_end)
    if len(src) != len(dst) or len(src) != (4 if version == 4 else 16):
        return None
    reply_src, reply_sport = b"", 0
    if reply_at:
        reply_src, reply_sport = _reply_source(data, reply_at, reply_end)
        if len(reply_src) != len(src):
            reply_src, reply_sport = b"", 0
    return Entry(version, protocol, src, dst, sport, dport, live, b"".join([_raw(data, orig_at, orig_end), *ident]),
                 reply_src, reply_sport)


def _reply_source(data: bytes | bytearray | memoryview, start: int, end: int) -> tuple[bytes, int]:
    """The reply tuple's source address and port. The kernel writes the source first in each part
    ({IP {source, ...}, PROTO {number, source port, ...}}): read there (half the cost of the general
    walk, which is the fallback for any other layout)."""
    unpack = _ATTR.unpack_from
    at = start + 4
    if at + 8 <= end:
        ip_length, part = unpack(data, at)
        field_length, field = unpack(data, at + 4)
        proto_at = at + ((ip_length + 3) & ~3)
        if part & _NLA_TYPE_MASK == _CTA_TUPLE_IP and field in _IP_SRC and proto_at + 16 <= end:
            proto_length, proto_part = unpack(data, proto_at)
            num_length, num = unpack(data, proto_at + 4)
            port_length, port = unpack(data, proto_at + 12)
            if proto_part & _NLA_TYPE_MASK == _CTA_TUPLE_PROTO and num == _CTA_PROTO_NUM and num_length == 5:
                source = bytes(data[at + 8 : at + 4 + field_length])
                if port == _CTA_PROTO_SRC_PORT and port_length == 6 and proto_at + 18 <= end:
                    return source, _BE16.unpack_from(data, proto_at + 16)[0]
                return source, 0  # a protocol without ports (ICMP: identifier, type, code)
    src, _, _, sport, _ = _parse_tuple(data, start, end)
    return src, sport


def _parse_tuple(data: bytes | bytearray | memoryview, start: int, end: int) -> tuple[bytes, bytes, int, int, int]:
    """CTA_TUPLE_ORIG/REPLY {CTA_TUPLE_IP {source, destination}, CTA_TUPLE_PROTO {number, ports or ICMP fields}}:
    (source, destination, protocol, source port, destination port)."""
    unpack = _ATTR.unpack_from
    src = dst = b""
    protocol = sport = dport = 0
    at = start + 4
    while at + 4 <= end:
        length, part = unpack(data, at)
        if length < 4 or at + length > end:
            break
        part &= _NLA_TYPE_MASK
        field_at, part_end = at + 4, at + length
        while field_at + 4 <= part_end:
            field_length, field = unpack(data, field_at)
            if field_length < 4 or field_at + field_length > part_end:
                break
            value = field_at + 4
            if part == _CTA_TUPLE_IP:
                if field in _IP_SRC:
                    src = bytes(data[value : field_at + field_length])
                elif field in _IP_DST:
                    dst = bytes(data[value : field_at + field_length])
            elif part == _CTA_TUPLE_PROTO:
                if field == _CTA_PROTO_NUM and field_length >= 5:
                    protocol = data[value]
                elif field == _CTA_PROTO_SRC_PORT and field_length >= 6:
                    sport = _BE16.unpack_from(data, value)[0]
                elif field == _CTA_PROTO_DST_PORT and field_length >= 6:
                    dport = _BE16.unpack_from(data, value)[0]
            field_at += (field_length + 3) & ~3
        at += (length + 3) & ~3
    return src, dst, protocol, sport, dport


def describe_errno(code: int) -> str:
    """``EPERM (Operation not permitted)``, with a hint where one helps."""
    text = f"{errnos.errorcode.get(code, str(code))} ({os.strerror(code)})"
    if code == errnos.EPERM:
        text += ": the agent needs CAP_NET_ADMIN in the node's network namespace"
    return text


# --- judging -----------------------------------------------------------------------------------


_UDP: Final = 17
_DNS_PORT: Final = 53


def select_denied(
    entries: Iterable[Entry],
    relevant: Callable[[bytes], bool],
    allowed: Callable[[Entry], bool],
    dns_judged_before_dnat: bool = False,
) -> list[Entry]:
    """The entries to delete: live ones with a ``relevant`` address at either end that ``allowed`` rejects.

    Both see the entry ``as_judged``: a connection to a Service address is
    judged with the endpoint it went to. ``dns_judged_before_dnat``: the xt
    backend with the netfilter bug 1766 workaround judges new DNS requests
    (UDP to port 53) in iptables' mangle PREROUTING, before DNAT, so those
    entries are judged with their original destination, as their first packet
    was. Verdicts depend on the family, protocol, addresses and destination
    port only, so each such key is judged once, however many entries share it.
    """
    verdicts: dict[tuple[int, int, bytes, bytes, int], bool] = {}
    denied = []
    for entry in entries:
        if not entry.live:
            continue
        if dns_judged_before_dnat and entry.protocol == _UDP and entry.dport == _DNS_PORT:
            seen = entry
        else:
            seen = entry.as_judged()
        if not (relevant(seen.src) or relevant(seen.dst)):
            continue
        key = (seen.family, seen.protocol, seen.src, seen.dst, seen.dport)
        verdict = verdicts.get(key)
        if verdict is None:
            verdict = verdicts[key] = allowed(seen)
        if not verdict:
            denied.append(entry)
    return denied


# --- socket ------------------------------------------------------------------------------------


class Conntrack:
    """A ctnetlink socket in the network namespace of the thread that makes it.

    Use as a context manager; every failure raises ConntrackError. ``sock``
    replaces the netlink socket (tests).
    """

    def __init__(self, timeout: float = _TIMEOUT_S, sock: socket.socket | None = None) -> None:
        try:
            self._sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        except OSError as e:
            raise ConntrackError(f"cannot open a netfilter netlink socket: {describe_errno(e.errno or 0)}") from e
        try:
            self._sock.settimeout(timeout)
            self._sock.bind((0, 0))
            try:
                self._sock.setsockopt(_SOL_NETLINK, _NETLINK_CAP_ACK, 1)
            except OSError:
                pass  # before Linux 4.3: errors echo the request, a little more to read
        except OSError as e:
            self._sock.close()
            raise ConntrackError(f"cannot bind a netfilter netlink socket: {describe_errno(e.errno or 0)}") from e
        self._seq = 0
        self._buffer = bytearray(_RECV_BUFFER)

    def __enter__(self) -> Conntrack:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def dump(self, live_only: bool = False) -> list[Entry]:
        """Every entry of this network namespace, both families (only those that can still carry
        traffic with ``live_only``)."""
        seq = self._next_seqs(1)
        self._send(dump_request(seq), "listing conntrack entries")
        entries: list[Entry] = []
        while True:
            for message in decode(self._recv("listing conntrack entries"), live_only):
                if isinstance(message, Entry):
                    entries.append(message)
                elif message.seq == seq and (message.done or message.errno):
                    if message.errno:
                        raise ConntrackError(f"listing conntrack entries: {describe_errno(message.errno)}")
                    return entries

    def delete(self, entries: Sequence[Entry]) -> int:
        """Delete ``entries``; returns how many the kernel deleted (one gone already is not an error)."""
        deleted, failed = 0, []
        for start in range(0, len(entries), _BATCH):
            batch = entries[start : start + _BATCH]
            first = self._next_seqs(len(batch))
            pending = set(range(first, first + len(batch)))
            self._send(b"".join(delete_request(e, first + i) for i, e in enumerate(batch)),
                       "deleting conntrack entries")
            while pending:
                for message in decode(self._recv("deleting conntrack entries")):
                    if isinstance(message, Reply) and message.seq in pending:
                        pending.discard(message.seq)
                        if message.errno == 0:
                            deleted += 1
                        elif message.errno != errnos.ENOENT:
                            failed.append(message.errno)
        if failed:
            raise ConntrackError(f"deleting conntrack entries: {len(failed)} of {len(entries)} failed, "
                                 f"first with {describe_errno(failed[0])} ({deleted} deleted)")
        return deleted

    def _next_seqs(self, count: int) -> int:
        """The first of ``count`` fresh sequence numbers."""
        first = self._seq + 1
        self._seq += count
        return first

    def _send(self, data: bytes, doing: str) -> None:
        try:
            self._sock.sendall(data)
        except OSError as e:
            raise ConntrackError(f"{doing}: sending to the kernel failed: {describe_errno(e.errno or 0)}") from e

    def _recv(self, doing: str) -> memoryview:
        try:
            size = self._sock.recv_into(self._buffer, 0, socket.MSG_TRUNC)
        except TimeoutError as e:
            raise ConntrackError(f"{doing}: no answer from the kernel in {self._sock.gettimeout()} s") from e
        except OSError as e:
            # ENOBUFS: the socket's receive buffer overflowed and answers were lost.
            raise ConntrackError(f"{doing}: receiving from the kernel failed: {describe_errno(e.errno or 0)}") from e
        if size > len(self._buffer):
            raise ConntrackError(f"{doing}: a {size}-byte netlink message does not fit the receive buffer")
        return memoryview(self._buffer)[:size]


# --- conveniences ------------------------------------------------------------------------------


def list_flows() -> list[Flow]:
    """Every conntrack entry of the calling thread's network namespace, both families."""
    with Conntrack() as ct:
        return [entry.flow() for entry in ct.dump()]


def flush_flows(flows: Iterable[Flow]) -> int:
    """Delete the entries whose flow is one of ``flows`` (all between the pair for portless
    protocols); returns how many the kernel deleted. A flow that has gone already is not an error."""
    wanted = set(flows)
    if not wanted:
        return 0
    with Conntrack() as ct:
        return ct.delete([entry for entry in ct.dump() if entry.flow() in wanted])
