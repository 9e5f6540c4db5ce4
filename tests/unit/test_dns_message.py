"""The DNS answer parser: what it learns, and that no input makes it raise anything but DnsError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_netpol.dns.message import MAX_CHAIN, DnsError, parse_answer
from kube_netpol.tools.lab.dnswire import TYPE_A, TYPE_AAAA, encode_name, query, response


def _record(owner: bytes, rtype: int, ttl: int, data: bytes) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(data)) + data


def _message(question: str, records: list[bytes], flags: int = 0x8180, qtype: int = TYPE_A) -> bytes:
    head = struct.pack("!HHHHHH", 7, flags, 1, len(records), 0, 0)
    return head + encode_name(question) + struct.pack("!HH", qtype, 1) + b"".join(records)


def test_a_and_aaaa_records_of_the_question():
    answer = parse_answer(response(query("Api.Example.com", TYPE_A, 1), ["192.168.200.20", "192.168.200.21"], 300))
    assert answer.question == "api.example.com"
    assert answer.addresses == (("api.example.com", ((bytes([192, 168, 200, 20]), 300), (bytes([192, 168, 200, 21]), 300))),)
    six = parse_answer(response(query("api.example.com", TYPE_AAAA, 2), ["fd00::20", "10.0.0.1"], 60))
    assert six.addresses[0][1] == ((bytes.fromhex("fd00" + "00" * 13 + "20"), 60),)


def test_cname_chain_teaches_every_name_with_the_least_ttl():
    records = [
        _record(encode_name("www.example.com"), 5, 30, encode_name("lb.cdn.net")),
        _record(encode_name("lb.cdn.net"), 1, 300, bytes([1, 2, 3, 4])),
        _record(encode_name("other.net"), 1, 300, bytes([9, 9, 9, 9])),  # off the chain: ignored
    ]
    answer = parse_answer(_message("www.example.com", records))
    assert answer.addresses == (
        ("www.example.com", ((bytes([1, 2, 3, 4]), 30),)),
        ("lb.cdn.net", ((bytes([1, 2, 3, 4]), 30),)),
    )


def test_cname_loop_and_long_chain_are_bounded():
    loop = [_record(encode_name("a.x"), 5, 10, encode_name("b.x")), _record(encode_name("b.x"), 5, 10, encode_name("a.x"))]
    assert parse_answer(_message("a.x", loop)).addresses == ()
    chain = [_record(encode_name(f"n{i}.x"), 5, 10, encode_name(f"n{i + 1}.x")) for i in range(MAX_CHAIN + 3)]
    chain.append(_record(encode_name(f"n{MAX_CHAIN + 3}.x"), 1, 10, bytes(4)))
    assert parse_answer(_message("n0.x", chain)).addresses == ()  # the end is beyond the bound: nothing learnt


def test_compression_pointer_to_the_question():
    message = _message("api.example.com", [_record(b"\xc0\x0c", 1, 5, bytes([10, 0, 0, 1]))])
    assert parse_answer(message).addresses[0][0] == "api.example.com"


@pytest.mark.parametrize("owner, why", [
    (b"\xc0\x40", "forward"),  # points past itself
    (b"\xc0" + bytes([12 + 17 + 4]), "itself"),  # points at its own position: a loop
    (b"\x80\x00", "label type"),
])
def test_bad_compression(owner, why):
    with pytest.raises(DnsError):
        parse_answer(_message("api.example.com", [_record(owner, 1, 5, bytes(4))]))


def test_refused_responses():
    ok = response(query("a.example.com", TYPE_A, 1), ["10.0.0.1"], 5)
    with pytest.raises(DnsError, match="not a response"):
        parse_answer(query("a.example.com", TYPE_A, 1))
    with pytest.raises(DnsError, match="response code 3"):
        parse_answer(ok[:2] + struct.pack("!H", 0x8183) + ok[4:])
    with pytest.raises(DnsError, match="questions"):
        parse_answer(ok[:4] + struct.pack("!H", 2) + ok[6:])
    for cut in range(len(ok)):  # every strict prefix is cut short somewhere: nothing is learnt from it
        with pytest.raises(DnsError):
            parse_answer(ok[:cut])


def test_ttl_with_top_bit_counts_as_zero():
    message = _message("a.example.com", [_record(b"\xc0\x0c", 1, 0x80000001, bytes(4))])
    assert parse_answer(message).addresses[0][1][0][1] == 0


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_only_raise_dns_error(data):
    try:
        parse_answer(data)
    except DnsError:
        pass


@settings(max_examples=400, deadline=None)
@given(st.integers(0, 200), st.binary(min_size=1, max_size=8), st.integers(0, 400))
def test_mutated_answers_only_raise_dns_error(position, junk, cut):
    base = _message("www.example.com", [
        _record(encode_name("www.example.com"), 5, 30, b"\x02lb\xc0\x10"),
        _record(b"\xc0\x2d", 1, 300, bytes([1, 2, 3, 4])),
    ])
    mutated = (base[:position] + junk + base[position + len(junk):])[:cut]
    try:
        answer = parse_answer(mutated)
    except DnsError:
        return
    for name, records in answer.addresses:
        assert isinstance(name, str) and len(name) <= 255
        assert all(len(address) in (4, 16) and 0 <= ttl < 2**31 for address, ttl in records)
