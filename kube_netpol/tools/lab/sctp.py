"""SCTP INIT packets for probes: built and recognised with struct (no SCTP stack needed).

The probe's marker is the INIT chunk's Initiate Tag. The checksum is CRC32c
(RFC 9260 appendix A); conntrack validates it, so it must be right.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

CHUNK_INIT: Final = 1
_COMMON_HEADER = struct.Struct("!HHII")  # src port, dst port, verification tag, checksum
_INIT_CHUNK = struct.Struct("!BBHIIHHI")  # type, flags, length, initiate tag, a_rwnd, out, in, initial TSN
_CRC32C_POLY_REVERSED: Final = 0x82F63B78


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC32C_POLY_REVERSED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE: Final = _crc32c_table()


def crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def build_init(src_port: int, dst_port: int, initiate_tag: int, initial_tsn: int) -> bytes:
    """An SCTP packet (common header + INIT chunk, no IP header) with a correct checksum."""
    if initiate_tag == 0:
        raise ValueError("an INIT's initiate tag must not be 0")
    chunk = _INIT_CHUNK.pack(CHUNK_INIT, 0, _INIT_CHUNK.size, initiate_tag, 65535, 10, 10, initial_tsn)
    # An INIT carries verification tag 0; the checksum is computed with the checksum field zeroed.
    unsummed = _COMMON_HEADER.pack(src_port, dst_port, 0, 0) + chunk
    # The checksum is stored in network order of the CRC's little-endian form (RFC 9260 appendix A).
    checksum = int.from_bytes(crc32c(unsummed).to_bytes(4, "little"), "big")
    return _COMMON_HEADER.pack(src_port, dst_port, 0, checksum) + chunk


@dataclass(frozen=True)
class SctpInit:
    src_port: int
    dst_port: int
    initiate_tag: int


def parse_init(segment: bytes) -> SctpInit | None:
    """The INIT in an SCTP packet (no IP header), or None if it is not a well-formed INIT."""
    if len(segment) < _COMMON_HEADER.size + _INIT_CHUNK.size:
        return None
    src_port, dst_port, vtag, checksum = _COMMON_HEADER.unpack_from(segment)
    chunk_type, _flags, _length, initiate_tag, *_ = _INIT_CHUNK.unpack_from(segment, _COMMON_HEADER.size)
    if chunk_type != CHUNK_INIT or vtag != 0:
        return None
    zeroed = segment[:8] + b"\0\0\0\0" + segment[12:]
    if checksum != int.from_bytes(crc32c(zeroed).to_bytes(4, "little"), "big"):
        return None
    return SctpInit(src_port, dst_port, initiate_tag)


def strip_ipv4_header(datagram: bytes) -> bytes:
    """The payload of an IPv4 datagram as a raw IPv4 socket returns it (header included)."""
    if not datagram:
        return b""
    return datagram[(datagram[0] & 0x0F) * 4 :]
