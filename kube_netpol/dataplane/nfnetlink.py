"""Two nf_tables netlink dumps read without libnftables: a table's rule comments and its counters.

Why not libnftables: before it lists the rules or the counters of a table
(terse or not), libnftables 1.0.6 reads every element of every set of the
table into its cache, and for a counter of every table. The verdict
memory's sets hold up to 131,072 keys: with 65,536 of them the guard's check
took 553 ms and a scrape's two counter reads 1,103 ms, against 8 and 3 ms
with the memory empty (``bench/bench_memory_control.py``,
docs/performance.md). The kernel's own dumps of rules and objects carry no
set elements; these two read them (for one table, by the kernel's filter)
and decode only the attributes the agent compares: a rule's chain and
comment, a counter's name and packets.

Each call opens its own socket in the calling thread's network namespace,
waits at most ``TIMEOUT`` seconds for each reply and reads at most
``MAX_BYTES``; anything it cannot decode raises ``NetlinkError`` (the guard
then reports the table as not in sync rather than trusting it).
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from typing import Final, Iterator

from kube_netpol.dataplane.netlink import ATTR as _ATTR
from kube_netpol.dataplane.netlink import HEADER as _HEADER
from kube_netpol.dataplane.netlink import NETLINK_NETFILTER, NLA_TYPE_MASK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR
from kube_netpol.dataplane.netlink import NFGEN as _NFGEN
from kube_netpol.dataplane.nft import NftablesError

NFNL_SUBSYS_NFTABLES: Final = 10
NFT_MSG_GETRULE: Final = 7
NFT_MSG_GETOBJ: Final = 19
NFPROTO_INET: Final = 1
NFTA_RULE_TABLE: Final = 1
NFTA_RULE_CHAIN: Final = 2
NFTA_RULE_USERDATA: Final = 7
NFTNL_UDATA_RULE_COMMENT: Final = 0
NFTA_OBJ_TABLE: Final = 1
NFTA_OBJ_NAME: Final = 2
NFTA_OBJ_TYPE: Final = 3
NFTA_OBJ_DATA: Final = 4
NFT_OBJECT_COUNTER: Final = 1
NFTA_COUNTER_PACKETS: Final = 2
#: Seconds to wait for each part of a reply.
TIMEOUT: Final = 2.0
#: Bytes of one dump this reads at most (our table has some dozens of rules and four counters).
MAX_BYTES: Final = 8 << 20

_sequence = itertools.count(1)


class NetlinkError(NftablesError):
    """The kernel refused a dump, or answered something this module cannot read (handled as
    libnftables' errors are)."""

    def __init__(self, message: str, code: int = 0) -> None:
        super().__init__(message, -1)
        self.code = code  # the errno the kernel answered (0: not an errno)


def rule_comments(table: str) -> dict[str, list[str | None]]:
    """Each chain's rule comments in rule order (chains without rules absent; nothing for a missing table:
    the kernel's filter matches no rule)."""
    out: dict[str, list[str | None]] = {}
    for attrs in _dump(NFT_MSG_GETRULE, _attr(NFTA_RULE_TABLE, _text(table))):
        chain = attrs.get(NFTA_RULE_CHAIN)
        if chain is None:
            raise NetlinkError("a rule without its chain in the kernel's dump")
        out.setdefault(_string(chain), []).append(_comment(attrs.get(NFTA_RULE_USERDATA)))
    return out


def counter_packets(table: str) -> dict[str, int]:
    """Packets of each named counter of ``table`` (nothing for a missing table)."""
    out: dict[str, int] = {}
    request = _attr(NFTA_OBJ_TABLE, _text(table)) + _attr(NFTA_OBJ_TYPE, struct.pack("!I", NFT_OBJECT_COUNTER))
    for attrs in _dump(NFT_MSG_GETOBJ, request):
        name, data = attrs.get(NFTA_OBJ_NAME), attrs.get(NFTA_OBJ_DATA)
        if name is None or data is None:
            raise NetlinkError("a counter without its name or data in the kernel's dump")
        packets = _attributes(data).get(NFTA_COUNTER_PACKETS)
        if packets is None or len(packets) != 8:
            raise NetlinkError("a counter without its packets in the kernel's dump")
        out[_string(name)] = struct.unpack("!Q", packets)[0]
    return out


def _dump(message: int, attributes: bytes) -> Iterator[dict[int, bytes]]:
    """The attributes of each message of one dump request's reply."""
    sequence = next(_sequence) & 0xFFFFFFFF
    body = _NFGEN.pack(NFPROTO_INET, 0, 0) + attributes
    request = _HEADER.pack(_HEADER.size + len(body), NFNL_SUBSYS_NFTABLES << 8 | message,
                           NLM_F_REQUEST | NLM_F_DUMP, sequence, 0) + body  # fmt: skip
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    except OSError as e:
        raise NetlinkError(f"cannot open a netfilter netlink socket: {e.strerror}", e.errno or 0) from e
    with sock:
        received = 0
        try:
            sock.settimeout(TIMEOUT)
            sock.bind((0, 0))
            sock.send(request)
        except OSError as e:
            raise NetlinkError(f"cannot ask nf_tables for a dump: {e.strerror}", e.errno or 0) from e
        while True:
            try:
                data = sock.recv(1 << 16)
            except TimeoutError as e:
                raise NetlinkError(f"no answer from nf_tables within {TIMEOUT} s") from e
            except OSError as e:
                raise NetlinkError(f"reading the nf_tables dump: {e.strerror}", e.errno or 0) from e
            received += len(data)
            if not data or received > MAX_BYTES:
                raise NetlinkError("the kernel's dump ended early or is larger than expected")
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size or offset + length > len(data):
                    raise NetlinkError("a truncated netlink message")
                payload = data[offset + _HEADER.size : offset + length]
                offset += (length + 3) & ~3
                if seq != sequence:
                    continue  # not an answer to this request
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    code = -struct.unpack_from("=i", payload)[0] if len(payload) >= 4 else 0
                    if code == 0:
                        continue  # an acknowledgement
                    raise NetlinkError(f"nf_tables dump: {os.strerror(code)}", code)
                if len(payload) < _NFGEN.size:
                    raise NetlinkError("a netlink message without its nfgenmsg")
                yield _attributes(payload[_NFGEN.size :])


def _attributes(data: bytes) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size or offset + length > len(data):
            raise NetlinkError("a truncated netlink attribute")
        out[kind & NLA_TYPE_MASK] = data[offset + _ATTR.size : offset + length]
        offset += (length + 3) & ~3
    return out


def _attr(kind: int, value: bytes) -> bytes:
    header = _ATTR.pack(_ATTR.size + len(value), kind)
    return header + value + b"\0" * (-len(value) % 4)


def _text(value: str) -> bytes:
    return value.encode() + b"\0"


def _string(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _comment(userdata: bytes | None) -> str | None:
    """The comment in a rule's user data (type-length-value items, libnftnl's layout)."""
    if not userdata:
        return None
    offset = 0
    while offset + 2 <= len(userdata):
        kind, length = userdata[offset], userdata[offset + 1]
        value = userdata[offset + 2 : offset + 2 + length]
        if len(value) != length:
            raise NetlinkError("truncated user data in a rule")
        if kind == NFTNL_UDATA_RULE_COMMENT:
            return _string(value)
        offset += 2 + length
    return None
