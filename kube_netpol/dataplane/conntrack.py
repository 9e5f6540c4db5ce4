"""Conntrack entries for strict mode: list them to re-judge, delete the ones now denied.

Accepted connections live in conntrack (our chain accepts established
traffic without asking userspace), so when policies change, strict mode lists
the flows, re-judges them and deletes the denied ones; their next packet is
then new and queued again. Uses the ``conntrack`` tool with argument lists.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterable
from typing import Final, NamedTuple

from kube_netpol.api.packet import IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP

_TIMEOUT_S: Final = 30
_FAMILY_NAMES: Final = {4: "ipv4", 6: "ipv6"}
_FAMILIES: Final = {v: k for k, v in _FAMILY_NAMES.items()}
_PROTOCOL_NAMES: Final = {
    IPPROTO_TCP: "tcp",
    IPPROTO_UDP: "udp",
    IPPROTO_SCTP: "sctp",
    IPPROTO_ICMP: "icmp",
    IPPROTO_ICMPV6: "icmpv6",
}
_PORT_PROTOCOLS: Final = frozenset({IPPROTO_TCP, IPPROTO_UDP, IPPROTO_SCTP})
_COUNT_RE: Final = re.compile(r"(\d+) flow entries have been (?:deleted|shown)")

Runner = Callable[[list[str]], subprocess.CompletedProcess[str]]


class Flow(NamedTuple):
    """The original-direction tuple of one conntrack entry (ports 0 when the protocol has none)."""

    family: int  # 4 or 6
    protocol: int  # IP protocol number
    src: str
    dst: str
    sport: int = 0
    dport: int = 0


class ConntrackError(RuntimeError):
    """The conntrack tool failed; the message has its stderr."""


def parse_line(line: str) -> Flow | None:
    """Parse one line of ``conntrack -L [-o extended]``; None for lines that are not entries.

    ``ipv4 2 tcp 6 431999 ESTABLISHED src=A dst=B sport=P dport=Q src=B ...``: the
    first src/dst/sport/dport are the original direction, the second set the reply.
    """
    tokens = line.split()
    if len(tokens) < 3:
        return None
    family = _FAMILIES.get(tokens[0])
    proto_at = 3 if family else 1  # extended output starts with the family name and number
    try:
        protocol = int(tokens[proto_at])
    except (IndexError, ValueError):
        return None
    fields: dict[str, str] = {}
    for token in tokens[proto_at + 1 :]:
        key, sep, value = token.partition("=")
        if not sep:
            continue
        if key in fields:
            if key == "src":
                break  # reply direction starts
            continue
        fields[key] = value
    if "src" not in fields or "dst" not in fields:
        return None
    if family is None:
        family = 6 if ":" in fields["src"] else 4
    return Flow(
        family,
        protocol,
        fields["src"],
        fields["dst"],
        int(fields.get("sport", 0)) if protocol in _PORT_PROTOCOLS else 0,
        int(fields.get("dport", 0)) if protocol in _PORT_PROTOCOLS else 0,
    )


def delete_args(flow: Flow, binary: str = "conntrack") -> list[str]:
    """``conntrack -D`` arguments matching ``flow`` (all flows between the pair for portless protocols)."""
    args = [
        binary, "-D",
        "-f", _FAMILY_NAMES[flow.family],
        "-p", _PROTOCOL_NAMES.get(flow.protocol, str(flow.protocol)),
        "-s", flow.src,
        "-d", flow.dst,
    ]  # fmt: skip
    if flow.protocol in _PORT_PROTOCOLS:
        args += ["--sport", str(flow.sport), "--dport", str(flow.dport)]
    return args


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=_TIMEOUT_S)


def list_flows(runner: Runner = _run, binary: str = "conntrack") -> list[Flow]:
    """Every conntrack entry of this network namespace, both families."""
    result = runner([binary, "-L", "-o", "extended"])
    if result.returncode != 0:
        raise ConntrackError(f"conntrack -L: {result.stderr.strip()}")
    return [f for f in map(parse_line, result.stdout.splitlines()) if f is not None]


def flush_flows(flows: Iterable[Flow], runner: Runner = _run, binary: str = "conntrack") -> int:
    """Delete the entries of ``flows``; returns how many entries the kernel deleted.

    A flow that has gone already is not an error (conntrack exits 1 with
    "0 flow entries have been deleted").
    """
    deleted = 0
    for flow in flows:
        result = runner(delete_args(flow, binary))
        count = _COUNT_RE.search(result.stderr)
        if count is None or (result.returncode != 0 and count.group(1) != "0"):
            raise ConntrackError(f"conntrack -D {flow}: {result.stderr.strip()}")
        deleted += int(count.group(1))
    return deleted
