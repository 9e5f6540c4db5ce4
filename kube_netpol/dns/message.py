"""Parse a DNS response (RFC 1035) into the addresses it gives for the name asked.

Pure and bounded: every loop has a limit, compression pointers must point
backwards and are followed at most ``MAX_POINTERS`` times per name, a name is
at most 255 bytes, at most ``MAX_RECORDS`` answer records are read. Anything
else wrong ends in DnsError (a ValueError), never another exception.

What is learnt: the question's name (one question, class IN) and every name
of the CNAME chain that starts at it within the answer section, each with
the A/AAAA addresses at the end of the chain. A record's TTL is the least of
the TTLs along the chain to it (an alias that expires sooner ends the mapping
sooner). Records for names off the chain are ignored (a server cannot make
us learn a name the pod did not ask for).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

__all__ = ["DnsError", "DnsAnswer", "parse_answer", "MAX_RECORDS", "MAX_CHAIN"]

MAX_RECORDS: Final = 64  # answer records read; more are ignored
MAX_CHAIN: Final = 8  # CNAME hops followed from the question's name
MAX_POINTERS: Final = 16  # compression pointers followed within one name
MAX_NAME: Final = 255  # bytes of a name in wire format (RFC 1035 2.3.4)

TYPE_A: Final = 1
TYPE_CNAME: Final = 5
TYPE_AAAA: Final = 28
CLASS_IN: Final = 1
_HEADER: Final = struct.Struct("!HHHHHH")
_RECORD: Final = struct.Struct("!HHIH")
_QUESTION: Final = struct.Struct("!HH")


class DnsError(ValueError):
    """The bytes are not a DNS response we can learn from; the message says why."""


@dataclass(frozen=True, slots=True)
class DnsAnswer:
    """The question's name and, per name of its CNAME chain, (address bytes, TTL seconds) pairs."""

    question: str
    addresses: tuple[tuple[str, tuple[tuple[bytes, int], ...]], ...]


def _name(message: bytes, offset: int) -> tuple[str, int]:
    """The name at ``offset`` (lower case, no final dot) and the offset after it in the message."""
    labels: list[str] = []
    length = 0
    end = -1  # where the name ends in the message (after the first pointer, if any)
    pointers = 0
    limit = offset  # a pointer must point before the position it was read at
    while True:
        if offset >= len(message):
            raise DnsError("name runs past the end of the message")
        size = message[offset]
        if size & 0xC0 == 0xC0:
            if offset + 1 >= len(message):
                raise DnsError("compression pointer cut short")
            target = ((size & 0x3F) << 8) | message[offset + 1]
            if end < 0:
                end = offset + 2
            pointers += 1
            if pointers > MAX_POINTERS or target >= limit:
                raise DnsError("compression pointer loops or points forward")
            offset = limit = target
            continue
        if size & 0xC0:
            raise DnsError(f"unsupported label type {size >> 6:#x}")
        offset += 1
        if size == 0:
            break
        length += size + 1
        if length > MAX_NAME:
            raise DnsError("name longer than 255 bytes")
        label = message[offset:offset + size]
        if len(label) != size:
            raise DnsError("label runs past the end of the message")
        try:
            labels.append(label.decode("ascii").lower())
        except UnicodeDecodeError:
            raise DnsError("label is not ASCII") from None
        offset += size
    return ".".join(labels), (end if end >= 0 else offset)


def parse_answer(message: bytes | memoryview) -> DnsAnswer:
    """The names and addresses a DNS response teaches; DnsError if it is not a usable response.

    A response that is not NOERROR, not a standard query, or has not exactly
    one IN question teaches nothing (DnsError). A truncated (TC) response is
    read as far as it is complete; a record cut short ends the message with
    DnsError (nothing is learnt from a half-read message).
    """
    data = bytes(message)
    if len(data) < _HEADER.size:
        raise DnsError("shorter than a DNS header")
    _, flags, questions, answers, _, _ = _HEADER.unpack_from(data)
    if not flags & 0x8000:
        raise DnsError("not a response")
    if (flags >> 11) & 0xF != 0:
        raise DnsError("not a standard query")
    if flags & 0xF != 0:
        raise DnsError(f"response code {flags & 0xF}")
    if questions != 1:
        raise DnsError(f"{questions} questions, expected 1")
    question, offset = _name(data, _HEADER.size)
    if offset + _QUESTION.size > len(data):
        raise DnsError("question cut short")
    _, qclass = _QUESTION.unpack_from(data, offset)
    if qclass != CLASS_IN:
        raise DnsError(f"question class {qclass}, expected IN")
    offset += _QUESTION.size
    aliases: dict[str, tuple[str, int]] = {}  # owner -> (CNAME target, TTL)
    found: dict[str, list[tuple[bytes, int]]] = {}  # owner -> addresses
    for _ in range(min(answers, MAX_RECORDS)):
        owner, offset = _name(data, offset)
        if offset + _RECORD.size > len(data):
            raise DnsError("record cut short")
        rtype, rclass, ttl, size = _RECORD.unpack_from(data, offset)
        offset += _RECORD.size
        if offset + size > len(data):
            raise DnsError("record data cut short")
        start = offset
        offset += size
        if rclass != CLASS_IN:
            continue
        if ttl & 0x80000000:
            ttl = 0  # RFC 2181 section 8: a TTL with the top bit set counts as 0
        if rtype == TYPE_A and size == 4 or rtype == TYPE_AAAA and size == 16:
            found.setdefault(owner, []).append((data[start:offset], ttl))
        elif rtype == TYPE_CNAME and owner not in aliases:
            target, after = _name(data, start)
            if after != offset:
                raise DnsError("CNAME data does not match its length")
            aliases[owner] = (target, ttl)
    chain: list[tuple[str, int]] = [(question, 0xFFFFFFFF)]  # (name, least TTL of the aliases to it)
    seen = {question}
    name, bound = question, 0xFFFFFFFF
    for _ in range(MAX_CHAIN):
        step = aliases.get(name)
        if step is None or step[0] in seen:
            break
        name, bound = step[0], min(bound, step[1])
        seen.add(name)
        chain.append((name, bound))
    # Every name of the chain learns the addresses at its end, with the chain's least TTL.
    end = chain[-1][0]
    last_bound = chain[-1][1]
    records = tuple((address, min(ttl, last_bound)) for address, ttl in found.get(end, ()))
    if not records:
        return DnsAnswer(question, ())
    return DnsAnswer(question, tuple((owner, records) for owner, _ in chain))
