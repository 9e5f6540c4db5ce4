"""Address ranges as integer intervals, so matching a packed address is cheap."""

from __future__ import annotations

import ipaddress
from typing import Iterable

from kube_netpol.api.errors import InvalidObject


def parse_cidr(text: object, path: str = "cidr") -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A CIDR as address/prefix; host bits are masked off, as the API server's parser does."""
    if not isinstance(text, str) or "/" not in text:
        raise InvalidObject(f"invalid CIDR {text!r}: expected address/prefix", path)
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError as err:
        raise InvalidObject(f"invalid CIDR {text!r}: {err}", path) from None


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
