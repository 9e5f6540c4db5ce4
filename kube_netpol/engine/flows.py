"""The flow table: the one verdict cache, and all the bookkeeping the packet thread does.

Each verdict the verdict loop hands out is kept with its counters in a
``FlowStats`` in the current snapshot's table, keyed by the flow's addresses,
protocol and destination port. A repeat of the flow key then costs the loop
one ``struct`` unpack and one dict lookup instead of parsing and judging, and
recording a packet is a few integer updates on that object. Everything else
(sums by protocol, family, verdict, policy) is computed when metrics are
scraped.

A table belongs to one snapshot: it is retired, not cleared, when the engine
publishes the next snapshot or when it is full; a retired table stays readable
for scrapes and is folded into the totals (``FlowHistory``) once the packet
thread can no longer be writing to it.
"""

from __future__ import annotations

import bisect
import struct
import threading
import time
from dataclasses import dataclass, field
from operator import add
from typing import Any, Final, Iterable, Mapping

from kube_netpol.api.packet import Packet
from kube_netpol.api.verdict import Verdict
from kube_netpol.engine.judgement import Judgement

#: The reference's histogram buckets, in microseconds.
PROCESS_TIME_BUCKETS_US: Final = (1, 10, 50, 200, 500, 750, 1000, 2000, 5000, 10000, 100000)
#: Bucket index per whole microsecond up to this bound, so most packets skip the bisect.
BUCKET_TABLE_LIMIT: Final = 1000
BUCKET_OF: Final = [bisect.bisect_left(PROCESS_TIME_BUCKETS_US, us) for us in range(BUCKET_TABLE_LIMIT + 1)]
#: Processing times kept for the summary's quantiles (the most recent timed packets); a power of two.
SUMMARY_WINDOW: Final = 4096
SUMMARY_MASK: Final = SUMMARY_WINDOW - 1
#: One queued packet in this many is timed from the start of the callback; of
#: the others, judged packets are timed from the start of the parse and
#: flow-table hits not at all. Reading the clock for every packet cost about
#: 0.1 µs of a hit's 0.35 µs in Python; hits all run the same few statements, so
#: a sample times them well.
TIMING_EVERY: Final = 64
#: Flows in one table before it is retired (a bound on memory).
DEFAULT_MAX_FLOWS: Final = 65536
#: A retired table is folded once it has been retired this long: by then no
#: packet that looked it up can still be updating its counters.
FOLD_AFTER_SECONDS: Final = 1.0
#: Guards a flow's timing fields between the packet thread's ``record`` (taken for
#: timed packets only) and a scrape's ``snapshot``.
_TIMING_LOCK: Final = threading.Lock()

# The flow table's keys are header fields read with one unpack and used as they
# come, so that a repeat costs no tuple building: IPv4: version/IHL, flags and
# fragment offset, protocol, addresses, destination port; IPv6: version/traffic
# class, next header, addresses, destination port.
unpack_raw_v4: Final = struct.Struct("!B5xHxB2x8s2xH").unpack_from
unpack_raw_v6: Final = struct.Struct("!B5xB1x32s2xH").unpack_from

FlowKey = tuple[bytes, int, int]  # (source + destination address bytes, protocol, destination port)
#: A table key: a raw key (``flow_key``) or, for packets it does not read right, a FlowKey.
TableKey = tuple[object, ...]


def flow_key(payload: bytes) -> TableKey | None:
    """The raw key of a packet: header fields where the first packets of the
    common kinds (IPv4 without options, IPv6 without extension headers) keep
    addresses, protocol and destination port; None when too short to read.

    The verdict loop inlines this. A raw key is only ever looked up: the
    table holds an entry under a raw key only after a packet with that raw
    key was parsed and judged and ``parsed_key(raw) == packet_flow_key(packet)``
    (an unfragmented or first-fragment IPv4 packet without options, or an
    IPv6 packet whose next header is the transport, with the port where the
    raw key read it). Any other packet with the same raw key therefore parses
    to the same addresses, protocol and port, or fails to parse (cut short): a
    raw key read from anything else (options, extension headers, ICMP)
    finds no entry and the packet is parsed and judged.
    """
    try:
        return unpack_raw_v4(payload) if payload[0] == 0x45 else unpack_raw_v6(payload)
    except (IndexError, struct.error):
        return None


def parsed_key(raw: TableKey) -> FlowKey | None:
    """What a raw key says the parsed key is, if it has the layout ``flow_key`` assumes."""
    first = raw[0]
    if first == 0x45 and len(raw) == 5:
        _, fragment, protocol, addresses, port = raw
        if not fragment & 0x1FFF:  # type: ignore[operator]
            return (addresses, protocol, port)  # type: ignore[return-value]
    elif len(raw) == 4 and first >> 4 == 6:  # type: ignore[operator]
        _, protocol, addresses, port = raw
        return (addresses, protocol, port)  # type: ignore[return-value]
    return None


def packet_flow_key(packet: Packet) -> FlowKey:
    """The key of a parsed packet (any protocol): the engine's cache key."""
    return (packet.src + packet.dst, packet.protocol, packet.dst_port)


def table_key(raw: TableKey | None, packet: Packet) -> TableKey:
    """The key a judged packet's entry is kept under: its raw key when that reads the packet right.

    ``packet`` is the parse of the payload ``raw`` was read from. That is
    ``parsed_key(raw) == packet_flow_key(packet)``, checked on the fields that
    can differ (the miss path runs this for every new key): a raw IPv4 key
    was read with IHL 5 and the parse refused non-first fragments, so only the
    port can differ (ICMP and other protocols without ports parse to port 0);
    a raw IPv6-shaped key also needs an IPv6 header and the transport right
    after it (its next header is the parsed protocol).
    """
    if raw is not None and raw[-1] == packet.dst_port:
        if len(raw) == 5 or (raw[0] >> 4 == 6 and raw[1] == packet.protocol):  # type: ignore[operator]
            return raw
    return (packet.src + packet.dst, packet.protocol, packet.dst_port)


def segment_key(raw: TableKey, segments: Mapping[int, tuple[int, ...]]) -> tuple[bytes, int, int] | None:
    """The key of a raw key's port segment (``snapshot.port_segments``), or None when there is none.

    Only raw keys with the layout ``flow_key`` assumes (``parsed_key``: IPv4
    with IHL 5 and no fragment offset, IPv6 read as if the transport followed
    its header) of a protocol with segments, which an IPv6 extension header
    never is. Such a packet has exactly these addresses, protocol and port,
    or is cut short, and then gets at most its key's verdict (as a flow-table
    hit does).
    """
    parsed = parsed_key(raw)
    if parsed is None:
        return None
    addresses, protocol, port = parsed
    bounds = segments.get(protocol)
    if bounds is None:
        return None
    return (addresses, protocol, bisect.bisect_right(bounds, port))


def bucket_index(microseconds: int) -> int:
    if microseconds <= BUCKET_TABLE_LIMIT:
        return BUCKET_OF[microseconds]
    return bisect.bisect_left(PROCESS_TIME_BUCKETS_US, microseconds)


class FlowStats:
    """One flow key's verdict and what it has cost so far.

    Packets are counted exactly, but flow-table hits are timed only one in
    ``TIMING_EVERY`` (judged packets always). ``buckets`` and ``total_ns``
    hold the timed packets plus the untimed hits credited so far: an untimed
    hit counts with the time of the last timed hit of its flow or, before its
    flow has one, of the last timed hit of any flow when the entry was made
    (all hits run the same few statements). ``snapshot`` adds the hits not
    credited yet, so the histogram counts every packet.

    One entry may stand for several keys of one table (``keys``): the new keys
    of a port segment share the entry of the key judged for it (the verdict
    loop's segment answers, counted and timed like hits: neither parsed nor
    judged), so a new key costs a dict insertion, not an object, and folding a
    table costs one entry per segment. The counters are then the keys' sums,
    which is all the metrics read.
    """

    __slots__ = (
        "judgement", "accepted", "protocol", "family", "judged", "hits", "buckets", "total_ns",
        "credited_hits", "last_bucket", "last_ns", "expires", "mark", "keys",
    )  # fmt: skip

    def __init__(
        self, judgement: Judgement, accepted: bool, protocol: int, family: int, last_hit_ns: int = 0,
        last_hit_bucket: int = -1,
    ) -> None:
        self.judgement = judgement
        self.accepted = accepted  # the verdict handed to the kernel (audit mode accepts denials)
        self.protocol = protocol
        self.family = family
        self.judged = 0  # packets parsed and judged (the full path; always timed)
        self.hits = 0  # answered without judging: flow-table hits and new keys of its segment (the loop counts them)
        self.buckets = [0] * (len(PROCESS_TIME_BUCKETS_US) + 1)
        self.total_ns = 0
        self.credited_hits = 0  # ``hits`` already in buckets/total_ns
        # The time untimed hits count with (0: none yet; the first judged packet's then).
        self.last_ns = last_hit_ns
        # The history keeps the bucket of its last timed hit (``last_hit_bucket``): no bisect per new entry.
        self.last_bucket = last_hit_bucket if last_hit_bucket >= 0 else bucket_index((last_hit_ns + 999) // 1000)
        # Monotonic seconds after which the verdict must be judged again (0.0: at the next snapshot).
        self.expires = 0.0
        # The mark bits the verdict loop hands this verdict back with so that the kernel remembers
        # it (kube_netpol.dataplane.ruleset, "verdict memory"); 0: plain accept/drop.
        self.mark = 0
        self.keys = 1  # the table's keys that hold this entry (more: a port segment's shared entry)

    @property
    def packets(self) -> int:
        return self.judged + self.hits

    def record(self, elapsed_ns: int, hit: bool = False) -> None:
        """Count a timed packet: a judged one, or (``hit``) a flow-table hit.

        Packet thread only. Moving hits from pending to credited holds
        ``_TIMING_LOCK``, so that a scrape never counts one twice or moves it
        between buckets (hence a timed hit is added to ``hits`` here, not by
        the loop); a judged packet with nothing to credit needs no lock (a
        scrape may see its count before its bucket, never the reverse).
        """
        microseconds = (elapsed_ns + 999) // 1000
        bucket = BUCKET_OF[microseconds] if microseconds <= BUCKET_TABLE_LIMIT else bucket_index(microseconds)
        if not hit and self.hits == self.credited_hits:
            self.judged += 1
            self.buckets[bucket] += 1
            self.total_ns += elapsed_ns
            if not self.last_ns:
                self.last_bucket, self.last_ns = bucket, elapsed_ns
            return
        with _TIMING_LOCK:
            untimed = self.hits - self.credited_hits
            if untimed:
                self.buckets[self.last_bucket] += untimed
                self.total_ns += untimed * self.last_ns
            self.buckets[bucket] += 1
            self.total_ns += elapsed_ns
            if hit:
                self.hits += 1
                self.last_bucket, self.last_ns = bucket, elapsed_ns
            else:
                self.judged += 1
            self.credited_hits = self.hits

    def snapshot(self) -> tuple[int, list[int], int]:
        """(packets, histogram buckets, total ns) with every packet counted (scrape thread)."""
        with _TIMING_LOCK:
            buckets = list(self.buckets)
            total_ns = self.total_ns
            judged, hits = self.judged, self.hits
            untimed = hits - self.credited_hits
            buckets[self.last_bucket] += untimed
            total_ns += untimed * self.last_ns
        return judged + hits, buckets, total_ns


@dataclass
class Totals:
    """Sums over flows, by the labels the metrics use."""

    packets: dict[tuple[int, int, bool], int] = field(default_factory=dict)  # (protocol, family, accepted)
    buckets: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (protocol, family)
    total_ns: dict[tuple[int, int], int] = field(default_factory=dict)
    would_deny: dict[tuple[int, int], int] = field(default_factory=dict)
    # (direction, deciding evaluator, policy, allow|deny)
    decisions: dict[tuple[str, str, str, str], int] = field(default_factory=dict)
    #: Flow-table keys that counted packets: each is one run of the pipeline, or one new key given
    #: its port segment's judgement (VerdictCounters.segment_answers).
    entries: int = 0

    def add(self, stats: FlowStats) -> None:
        self.add_all((stats,))

    def add_all(self, flows: Iterable[FlowStats], settled: bool = False) -> None:
        """Count entries: their packets, times, and the labels of their verdicts.

        Folding a retired table is most of what a flood of new keys costs
        besides judging them, so the labels and sums are worked out once per
        group of entries with the same deciding decisions (shared rule
        objects, grouped by identity; each group keeps one entry, and so its
        decisions, alive). ``settled``: no packet thread can still write to
        these entries (a table retired FOLD_AFTER_SECONDS ago), so an entry
        with nothing to credit is read without ``_TIMING_LOCK``.
        """
        # Entries several keys share (a port segment's, FlowStats.keys) count once.
        groups: dict[tuple[int, str, int, str, bool, int, int], list[Any]] = {}
        entries = 0
        for stats in dict.fromkeys(flows):
            if settled and stats.hits == stats.credited_hits:
                count = stats.judged + stats.hits
                flow_buckets, flow_total_ns = stats.buckets, stats.total_ns
            else:
                count, flow_buckets, flow_total_ns = stats.snapshot()
            if not count:
                continue
            entries += stats.keys
            judgement = stats.judgement
            group_key = (id(judgement.egress), judgement.egress_by, id(judgement.ingress), judgement.ingress_by,
                         stats.accepted, stats.protocol, stats.family)  # fmt: skip
            group = groups.get(group_key)
            if group is None:
                groups[group_key] = [count, stats, list(flow_buckets), flow_total_ns]
                continue
            group[0] += count
            group[3] += flow_total_ns
            if count == 1 and sum(flow_buckets) == 1:
                group[2][flow_buckets.index(1)] += 1  # one packet (a judged new key): its one bucket
            else:
                group[2] = list(map(add, group[2], flow_buckets))
        self.entries += entries
        packets, would_deny, decisions = self.packets, self.would_deny, self.decisions
        buckets_by, total_ns = self.buckets, self.total_ns
        for count, stats, group_buckets, group_total_ns in groups.values():
            key = (stats.protocol, stats.family)
            buckets = buckets_by.get(key)
            buckets_by[key] = group_buckets if buckets is None else list(map(add, buckets, group_buckets))
            total_ns[key] = total_ns.get(key, 0) + group_total_ns
            counted = (stats.protocol, stats.family, stats.accepted)
            packets[counted] = packets.get(counted, 0) + count
            judgement = stats.judgement
            if stats.accepted and not judgement.allowed:
                would_deny[key] = would_deny.get(key, 0) + count
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
                decisions[label] = decisions.get(label, 0) + count

    def merged(self, other: "Totals") -> "Totals":
        result = Totals(entries=self.entries + other.entries)
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


FlowTable = dict[TableKey, FlowStats]


class FlowHistory:
    """Retired flow tables and recent processing times, for the metrics (one per engine)."""

    def __init__(self, max_flows: int = DEFAULT_MAX_FLOWS) -> None:
        self.max_flows = max_flows
        # Flow tables replaced because they were full (packet thread writes, control thread reads):
        # the kernel's verdict memory is flushed with each (agent/controller.py).
        self.tables_filled = 0
        # Recent timed packets for the summary's quantiles, written at sample_index & mask:
        # processing time (ns) and how many packets the time stands for.
        self.samples = [0] * SUMMARY_WINDOW
        self.sample_weights = [0] * SUMMARY_WINDOW
        self.sample_index = 0
        self.last_hit_ns = 0  # the last timed hit's processing time, of any flow
        self.last_hit_bucket = 0  # and its histogram bucket
        self._retired: list[tuple[float, FlowTable]] = []
        self._folded = Totals()
        self._fold_lock = threading.Lock()
        self._retire_lock = threading.Lock()

    def retire(self, table: FlowTable) -> None:
        """Keep ``table`` for the totals: it is no longer current (any thread)."""
        with self._retire_lock:
            # Once only: a full table replaced by the packet thread while the control thread
            # retires its snapshot may reach here twice.
            if all(retired is not table for _, retired in self._retired):
                self._retired.append((time.monotonic(), table))

    def fold(self, stats: FlowStats) -> None:
        """Count an entry that left its table (replaced under its key) into the totals."""
        with self._fold_lock:
            self._folded.add(stats)

    def record_sample(self, elapsed_ns: int, weight: int = 1) -> None:
        """Keep a timed packet's time for the summary; ``weight``: the packets it stands for."""
        index = self.sample_index & SUMMARY_MASK
        self.samples[index] = elapsed_ns
        self.sample_weights[index] = weight
        self.sample_index += 1

    def record_timed_hit(self, flow: FlowStats, elapsed_ns: int) -> None:
        """Count a timed flow-table hit (packet thread)."""
        flow.record(elapsed_ns, hit=True)
        self.last_hit_ns = elapsed_ns
        self.last_hit_bucket = flow.last_bucket
        self.record_sample(elapsed_ns, TIMING_EVERY)

    def fold_retired(self) -> None:
        """Fold the tables retired at least FOLD_AFTER_SECONDS ago into the totals (control thread).

        Called every control interval, not only at scrapes: retired tables
        would otherwise pile up between scrapes (or forever, without a
        scraper) while new keys keep filling tables.
        """
        with self._fold_lock:
            self._fold_old()

    def _fold_old(self) -> list[tuple[float, FlowTable]]:
        """Fold the old retired tables; the ones still recent (``_fold_lock`` held)."""
        cutoff = time.monotonic() - FOLD_AFTER_SECONDS
        keep: list[tuple[float, FlowTable]] = []
        # What retire() appends after this copy is kept by the slice assignment below.
        with self._retire_lock:
            retired = list(self._retired)
        for retired_at, table in retired:
            if retired_at <= cutoff:
                self._folded.add_all(list(table.values()), settled=True)
                # Emptied, so that a scrape still holding it as its current table (read before it
                # was retired) does not count it again; it frees the entries now, too.
                table.clear()
            else:
                keep.append((retired_at, table))
        with self._retire_lock:
            self._retired[: len(retired)] = keep
        return keep

    def totals(self, current: FlowTable) -> Totals:
        """Everything counted so far, ``current`` (the current snapshot's table) included (scrape thread)."""
        with self._fold_lock:
            # The retired tables and the current one as one consistent picture: a
            # retirement in between would make a table count twice or not at all.
            keep = self._fold_old()
            live = Totals()
            seen = {id(table) for _, table in keep}
            for _, table in keep:
                live.add_all(list(table.values()))
            if id(current) not in seen:
                live.add_all(list(current.values()))
            return self._folded.merged(live)

    def recent_samples(self) -> list[tuple[int, int]]:
        """(processing ns, weight) of the most recent timed packets."""
        count = min(self.sample_index, SUMMARY_WINDOW)
        return list(zip(self.samples[:count], self.sample_weights[:count]))
