"""Address ranges as integer intervals, so matching a packed address is cheap."""

from __future__ import annotations

import ipaddress
import re
from typing import Iterable

from kube_netpol.api.errors import InvalidObject


def parse_cidr(text: object, path: str = "cidr") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as the API server reads a stored one: address/prefix, host bits masked off.

    kube-apiserver validates objects it already stores with ParseCIDRSloppy
    (k8s.io/utils/net: Go's parser before 1.17), so a policy written back then
    with ``010.244.2.0/24`` is still served and still means 10.244.2.0/24:
    leading zeros are decimal, never octal, in IPv4 parts and in the prefix.
    Nothing else Go refused is accepted (no netmask form, no IPv6 zone).
    """
    if not isinstance(text, str) or "/" not in text:
        raise InvalidObject(f"invalid CIDR {text!r}: expected address/prefix", path)
    address_text, _, prefix_text = text.partition("/")
    address = parse_ip_sloppy(address_text)
    if address is None:
        raise InvalidObject(f"invalid CIDR {text!r}: {address_text!r} is not an IP address", path)
    prefix = _number(prefix_text, _DECIMAL, 10)
    if prefix is None or prefix > address.max_prefixlen:
        raise InvalidObject(
            f"invalid CIDR {text!r}: the prefix must be a number from 0 to {address.max_prefixlen}", path
        )
    return ipaddress.ip_network((address, prefix), strict=False)


MAX_CEL_CIDR = 43  # the v1alpha2 CRD's maxLength for a CIDR


def parse_cidr_strict(text: object, path: str = "cidr") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as the CEL ``isCIDR`` of a CRD accepts it (Go's netip.ParsePrefix), host bits masked off.

    Unlike stored core objects (see ``parse_cidr``) a CRD validated with CEL never
    accepted leading zeros, so none are read here: no leading zero in an IPv4 part or
    in the prefix, no zone, no IPv4-mapped IPv6 address, at most 43 characters.
    """
    if not isinstance(text, str) or "/" not in text:
        raise InvalidObject(f"invalid CIDR {text!r}: expected address/prefix", path)
    if len(text) > MAX_CEL_CIDR:
        raise InvalidObject(f"invalid CIDR {text!r}: at most {MAX_CEL_CIDR} characters", path)
    address_text, _, prefix_text = text.partition("/")
    try:
        address = ipaddress.ip_address(address_text) if "%" not in address_text else None
    except ValueError:
        address = None
    if address is None:
        raise InvalidObject(f"invalid CIDR {text!r}: {address_text!r} is not an IP address", path)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        raise InvalidObject(f"invalid CIDR {text!r}: IPv4-mapped IPv6 addresses are not accepted", path)
    if not _PREFIX.match(prefix_text) or int(prefix_text) > address.max_prefixlen:
        raise InvalidObject(
            f"invalid CIDR {text!r}: the prefix must be a number from 0 to {address.max_prefixlen}", path
        )
    return ipaddress.ip_network((address, int(prefix_text)), strict=False)


_PREFIX = re.compile(r"(0|[1-9][0-9]{0,2})\Z")

# ASCII digits only: Go reads '0'-'9', where Python's int() would take any Unicode digit.
_DECIMAL = re.compile(r"[0-9]+\Z")
_HEX = re.compile(r"[0-9A-Fa-f]+\Z")


def parse_ip_sloppy(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as ParseIPSloppy reads it (leading zeros allowed, read as decimal), None if it is not one."""
    if ":" not in text:
        return _parse_ipv4_sloppy(text)
    groups = text.split(":")
    if "." in groups[-1]:
        embedded = _parse_ipv4_sloppy(groups[-1])
        if embedded is None:
            return None
        groups[-1] = str(embedded)
    for i, group in enumerate(groups[:-1] if "." in groups[-1] else groups):
        if group:
            value = _number(group, _HEX, 16)
            if value is None or value > 0xFFFF:
                return None
            groups[i] = f"{value:x}"  # ipaddress refuses groups longer than four digits
    try:
        return ipaddress.IPv6Address(":".join(groups))  # checks the group count and the one "::"
    except ValueError:
        return None


def _parse_ipv4_sloppy(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    values = [_number(part, _DECIMAL, 10) for part in parts]
    if len(values) != 4 or any(value is None or value > 255 for value in values):
        return None
    return ipaddress.IPv4Address(".".join(map(str, values)))


def _number(text: str, digits: re.Pattern[str], base: int) -> int | None:
    """``text`` as a number if it is only ``digits``; any count of leading zeros (int() limits its input length)."""
    if not digits.match(text):
        return None
    significant = text.lstrip("0") or "0"
    return int(significant, base) if len(significant) <= 8 else 1 << 32  # too big for any part


class AddressRanges:
    """A set of addresses: the union of ``include`` minus the union of ``exclude``.

    Addresses are tested as packed bytes (4 or 16); a range of one family
    never matches an address of the other.
    """

    __slots__ = ("_v4", "_v6", "_v4_except", "_v6_except", "source")

    def __init__(
        self,
        include: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network],
        exclude: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        source: str = "",
    ) -> None:
        self._v4 = _intervals(n for n in include if n.version == 4)
        self._v6 = _intervals(n for n in include if n.version == 6)
        exclude = list(exclude)
        self._v4_except = _intervals(n for n in exclude if n.version == 4)
        self._v6_except = _intervals(n for n in exclude if n.version == 6)
        self.source = source

    def contains(self, address: bytes) -> bool:
        value = int.from_bytes(address, "big")
        if len(address) == 4:
            include, exclude = self._v4, self._v4_except
        else:
            include, exclude = self._v6, self._v6_except
        for low, high in include:
            if low <= value <= high:
                break
        else:
            return False
        for low, high in exclude:
            if low <= value <= high:
                return False
        return True

    def __repr__(self) -> str:
        return f"AddressRanges({self.source})"


def _intervals(networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> tuple[tuple[int, int], ...]:
    return tuple((int(n.network_address), int(n.broadcast_address)) for n in networks)
