"""nfnetlink's decoding of the kernel's nf_tables dumps: what it reads, and a clear error for what it cannot."""

from __future__ import annotations

import struct

import pytest

from kube_netpol.dataplane import nfnetlink
from kube_netpol.dataplane.nfnetlink import NetlinkError, _attr, _attributes, _comment, _text
from kube_netpol.dataplane.nft import NftablesError


def test_attributes_round_trip_with_padding_and_flag_bits() -> None:
    data = _attr(nfnetlink.NFTA_RULE_TABLE, _text("ours")) + _attr(0x8000 | nfnetlink.NFTA_OBJ_DATA, b"\x01\x02")
    attrs = _attributes(data)
    assert attrs[nfnetlink.NFTA_RULE_TABLE] == b"ours\x00"
    assert attrs[nfnetlink.NFTA_OBJ_DATA] == b"\x01\x02"  # NLA_F_NESTED masked off


@pytest.mark.parametrize("data", [struct.pack("=HH", 40, 1) + b"short", struct.pack("=HH", 2, 1)])
def test_a_truncated_attribute_is_an_error_not_a_guess(data: bytes) -> None:
    with pytest.raises(NetlinkError, match="truncated"):
        _attributes(data)


def test_the_comment_is_read_from_the_rules_user_data() -> None:
    comment = b"established 0123abcd\x00"
    other = bytes([7, 2]) + b"xy"  # an item of another type before it
    assert _comment(other + bytes([nfnetlink.NFTNL_UDATA_RULE_COMMENT, len(comment)]) + comment) == "established 0123abcd"
    assert _comment(None) is None and _comment(other) is None
    with pytest.raises(NetlinkError, match="truncated user data"):
        _comment(bytes([0, 40]) + b"cut")


def test_its_errors_are_handled_where_libnftables_errors_are() -> None:
    assert issubclass(NetlinkError, NftablesError)
