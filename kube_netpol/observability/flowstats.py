"""Per-flow verdict statistics: all the bookkeeping the packet thread does.

Each verdict the verdict loop hands out is kept with its counters in a
``FlowStats``, keyed like the engine's verdict cache (addresses, protocol,
destination port). A repeat of the flow key then costs the loop one
``struct`` unpack and one dict lookup instead of parsing and judging, and
recording a packet is a few integer updates on that object. Everything else
(sums by protocol, family, verdict, policy) is computed when metrics are
scraped.

The current table is retired, not cleared, when verdicts change (the engine
invalidates) or when it is full: a retired table stays readable for scrapes and
is folded into totals once the packet thread can no longer be writing to it.
"""

from __future__ import annotations

import bisect
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Final

from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import Verdict
from kube_netpol.engine import Judgement

#: The reference's histogram buckets, in microseconds.
PROCESS_TIME_BUCKETS_US: Final = (1, 10, 50, 200, 500, 750, 1000, 2000, 5000, 10000, 100000)
#: Bucket index per whole microsecond up to this bound, so most packets skip the bisect.
BUCKET_TABLE_LIMIT: Final = 1000
BUCKET_OF: Final = [bisect.bisect_left(PROCESS_TIME_BUCKETS_US, us) for us in range(BUCKET_TABLE_LIMIT + 1)]
#: Processing times kept for the summary's quantiles (the most recent ones); a power of two.
SUMMARY_WINDOW: Final = 4096
SUMMARY_MASK: Final = SUMMARY_WINDOW - 1
#: Flows in one table before it is retired (a bound on memory).
DEFAULT_MAX_FLOWS: Final = 65536
#: A retired table is folded once it has been retired this long: by then no
#: packet that looked it up can still be updating its counters.
FOLD_AFTER_SECONDS: Final = 1.0

# IPv4 without options: flags/fragment offset, protocol, addresses, destination port.
_unpack_v4: Final = struct.Struct("!6xHxB2x8s2xH").unpack_from
# IPv6 with the transport header right after the fixed header: next header, addresses, port.
_unpack_v6: Final = struct.Struct("!6xB1x32s2xH").unpack_from

FlowKey = tuple[bytes, int, int]  # (source + destination address bytes, protocol, destination port)


def flow_key(payload: bytes) -> FlowKey | None:
    """The flow key of the common first packets (IPv4 without options and not a
    later fragment, IPv6 without extension headers); None for the rest, which
    the caller parses in full.

    It only finds the table entry: an entry exists only for a key some earlier
    packet produced through the full parse and the engine, so a key this
    shortcut reads from a malformed packet (an ICMP header read as ports, a cut
    transport header) gets at most the verdict of a well-formed packet with the
    same addresses, protocol and port, never a verdict of its own.
    """
    if len(payload) >= 24:
        first = payload[0]
        if first == 0x45:
            fragment, protocol, addresses, port = _unpack_v4(payload)
            if not fragment & 0x1FFF:
                return (addresses, protocol, port)
        elif first >> 4 == 6 and len(payload) >= 44:
            protocol, addresses, port = _unpack_v6(payload)
            return (addresses, protocol, port)
    return None


def packet_flow_key(packet: Packet) -> FlowKey:
    """The same key for a parsed packet (any protocol)."""
    return (packet.src + packet.dst, packet.protocol, packet.dst_port)


def bucket_index(microseconds: int) -> int:
    if microseconds <= BUCKET_TABLE_LIMIT:
        return BUCKET_OF[microseconds]
    return bisect.bisect_left(PROCESS_TIME_BUCKETS_US, microseconds)


class FlowStats:
    """One flow key's verdict and what it has cost so far."""

    __slots__ = ("judgement", "accepted", "protocol", "family", "packets", "buckets", "total_ns")

    def __init__(self, judgement: Judgement, accepted: bool, protocol: int, family: int) -> None:
        self.judgement = judgement
        self.accepted = accepted  # the verdict handed to the kernel (audit mode accepts denials)
        self.protocol = protocol
        self.family = family
        self.packets = 0
        self.buckets = [0] * (len(PROCESS_TIME_BUCKETS_US) + 1)
        self.total_ns = 0

    def record(self, elapsed_ns: int) -> None:
        """Count one packet (the verdict loop inlines this on its fast path)."""
        self.packets += 1
        self.buckets[bucket_index((elapsed_ns + 999) // 1000)] += 1
        self.total_ns += elapsed_ns


@dataclass
class Totals:
    """Sums over flows, by the labels the metrics use."""

    packets: dict[tuple[int, int, bool], int] = field(default_factory=dict)  # (protocol, family, accepted)
    buckets: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (protocol, family)
    total_ns: dict[tuple[int, int], int] = field(default_factory=dict)
    would_deny: dict[tuple[int, int], int] = field(default_factory=dict)
    # (direction, deciding evaluator, policy, allow|deny)
    decisions: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    def add(self, stats: FlowStats) -> None:
        count = stats.packets
        if not count:
            return
        key = (stats.protocol, stats.family)
        counted = (stats.protocol, stats.family, stats.accepted)
        self.packets[counted] = self.packets.get(counted, 0) + count
        buckets = self.buckets.setdefault(key, [0] * len(stats.buckets))
        for i, n in enumerate(stats.buckets):
            buckets[i] += n
        self.total_ns[key] = self.total_ns.get(key, 0) + stats.total_ns
        judgement = stats.judgement
        if stats.accepted and not judgement.allowed:
            self.would_deny[key] = self.would_deny.get(key, 0) + count
        for direction, decision, evaluator in (
            ("egress", judgement.egress, judgement.egress_by),
            ("ingress", judgement.ingress, judgement.ingress_by),
        ):
            label = (
                direction,
                evaluator or "(none)",
                decision.policy or "(none)",
                "allow" if decision.verdict is Verdict.ACCEPT else "deny",
            )
            self.decisions[label] = self.decisions.get(label, 0) + count

    def merged(self, other: "Totals") -> "Totals":
        result = Totals()
        for totals in (self, other):
            for name in ("packets", "total_ns", "would_deny", "decisions"):
                target = getattr(result, name)
                for key, value in getattr(totals, name).items():
                    target[key] = target.get(key, 0) + value
            for key, buckets in totals.buckets.items():
                merged = result.buckets.setdefault(key, [0] * len(buckets))
                for i, n in enumerate(buckets):
                    merged[i] += n
        return result


class VerdictStats:
    """The packet thread's flow table, plus what scrapes need to sum it."""

    def __init__(self, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        self.max_flows = max_flows
        self.flows: dict[FlowKey, FlowStats] = {}
        # Recent processing times (ns) for the summary's quantiles; written at sample_index & mask.
        self.samples = [0] * SUMMARY_WINDOW
        self.sample_index = 0
        self._retired: list[tuple[float, dict[FlowKey, FlowStats]]] = []
        self._folded = Totals()
        self._fold_lock = threading.Lock()
        self._retire_lock = threading.Lock()

    def add(self, key: FlowKey, judgement: Judgement, accepted: bool, protocol: int, family: int) -> FlowStats:
        """A new entry for ``key`` (packet thread)."""
        flows = self.flows
        if len(flows) >= self.max_flows:
            flows = self.retire()
        displaced = flows.get(key)
        if displaced is not None:
            # The key's verdict changed within one table (a race with a retirement,
            # or a caller recording by hand): keep what the old entry counted.
            with self._fold_lock:
                self._folded.add(displaced)
        stats = flows[key] = FlowStats(judgement, accepted, protocol, family)
        return stats

    def retire(self) -> dict[FlowKey, FlowStats]:
        """Start a new table: verdicts changed, or the table is full. Safe from any thread."""
        with self._retire_lock:  # two retirements at once must not both take the same table
            retired, self.flows = self.flows, {}
            self._retired.append((time.monotonic(), retired))
            return self.flows

    def record_sample(self, elapsed_ns: int) -> None:
        index = self.sample_index
        self.samples[index & SUMMARY_MASK] = elapsed_ns
        self.sample_index = index + 1

    def totals(self) -> Totals:
        """Everything counted so far (scrape thread)."""
        with self._fold_lock:
            cutoff = time.monotonic() - FOLD_AFTER_SECONDS
            keep: list[tuple[float, dict[FlowKey, FlowStats]]] = []
            # Read the list once: retire() may append meanwhile; what it appends after this
            # copy is kept by the slice assignment below.
            retired = list(self._retired)
            for retired_at, table in retired:
                if retired_at <= cutoff:
                    for stats in list(table.values()):
                        self._folded.add(stats)
                else:
                    keep.append((retired_at, table))
            self._retired[: len(retired)] = keep
            live = Totals()
            for _, table in keep:
                for stats in list(table.values()):
                    live.add(stats)
            for stats in list(self.flows.values()):
                live.add(stats)
            return self._folded.merged(live)

    def recent_samples(self) -> list[int]:
        count = min(self.sample_index, SUMMARY_WINDOW)
        return self.samples[:count]
