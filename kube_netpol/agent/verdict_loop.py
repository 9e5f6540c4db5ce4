"""The NFQUEUE reader: parse, judge, accept or drop, one packet at a time.

This is the per-packet hot path (see DESIGN.md): no logging, no allocation
beyond the parsed Packet, and every failure turns into the configured
fail-open/fail-closed verdict instead of an exception that would end the loop.
"""

from __future__ import annotations

import select
import threading
from time import perf_counter_ns
from typing import Any, Callable

from kube_netpol.api.packet import Packet
from kube_netpol.engine import Judgement, PolicyEngine
from kube_netpol.observability.flowstats import (
    BUCKET_OF,
    BUCKET_TABLE_LIMIT,
    SUMMARY_MASK,
    VerdictStats,
    bucket_index,
    flow_key,
    packet_flow_key,
)
from kube_netpol.packet import MalformedPacket, parse_packet

#: Bytes of each packet the kernel copies to us: as many as NetfilterQueue takes
#: (it caps the range at its 4 KB buffer less metadata, 4016 bytes). The whole
#: IPv6 extension header chain must fit: a packet whose transport header lies
#: beyond the copy cannot be judged, and fail-open would then let it through,
#: so a pod could pad its packets past any small range to evade policies.
#: Queued packets are mostly first packets of connections, which are small.
COPY_RANGE = 4016
#: Packets the kernel holds for us before it drops (or bypasses) new ones.
DEFAULT_MAX_QUEUE_LEN = 4096

#: Observer of every judged packet: (packet, judgement, accepted, nanoseconds spent).
VerdictObserver = Callable[[Packet, Judgement, bool, int], None]


class VerdictCounters:
    __slots__ = ("accepted", "dropped", "errors")

    def __init__(self) -> None:
        self.accepted = 0
        self.dropped = 0
        self.errors = 0


class VerdictLoop:
    """Judges queued packets; ``stats`` is the flow table the metrics are computed from.

    Fast path: a packet whose flow key (addresses, protocol, destination port)
    already has an entry in ``stats.flows`` gets that entry's verdict without
    being parsed or judged. The table is retired whenever the engine's verdicts
    change, so an entry is exactly a cached engine verdict plus its counters.
    With an ``observer`` (decision records need every packet) every packet
    takes the full path.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        queue_num: int,
        fail_open: bool,
        audit: bool = False,
        max_queue_len: int = DEFAULT_MAX_QUEUE_LEN,
        observer: VerdictObserver | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        stats: VerdictStats | None = None,
    ) -> None:
        self.engine = engine
        self.queue_num = queue_num
        self.fail_open = fail_open
        self.audit = audit
        self.max_queue_len = max_queue_len
        self.observer = observer
        self.on_error = on_error
        self.counters = VerdictCounters()
        self.stats = stats or VerdictStats()
        engine.add_sync_listener(self.stats.retire)
        self._queue: Any = None

    def handle(self, queued: Any) -> None:
        """The NetfilterQueue callback; ``queued`` has get_payload/accept/drop."""
        started = perf_counter_ns()
        stats = self.stats
        payload = queued.get_payload()
        key = flow_key(payload)
        observer = self.observer
        flow = stats.flows.get(key) if observer is None else None
        if flow is None:
            try:
                packet = parse_packet(payload)
                judgement = self.engine.evaluate(packet)
            except Exception as err:  # noqa: BLE001 - a bad packet must never end the loop
                self._failed(queued, payload, err)
                return
            key = packet_flow_key(packet)
            flow = stats.flows.get(key)
            if flow is None or flow.judgement is not judgement:
                flow = stats.add(key, judgement, judgement.allowed or self.audit, packet.protocol, packet.family)
            if observer is not None:
                observer(packet, judgement, flow.accepted, perf_counter_ns() - started)
        elapsed = perf_counter_ns() - started
        if flow.accepted:
            queued.accept()
            self.counters.accepted += 1
        else:
            queued.drop()
            self.counters.dropped += 1
        # FlowStats.record and VerdictStats.record_sample, inlined: this runs for every packet.
        flow.packets += 1
        microseconds = (elapsed + 999) // 1000
        flow.buckets[BUCKET_OF[microseconds] if microseconds <= BUCKET_TABLE_LIMIT else bucket_index(microseconds)] += 1
        flow.total_ns += elapsed
        index = stats.sample_index
        stats.samples[index & SUMMARY_MASK] = elapsed
        stats.sample_index = index + 1

    def _failed(self, queued: Any, payload: bytes, err: BaseException) -> None:
        self.counters.errors += 1
        # A packet that fills the copy range and still cannot be parsed hides its
        # transport header beyond what the kernel gave us (e.g. a long IPv6
        # extension header chain). Its sender chose that layout, so it must not
        # pass unjudged even when failing open.
        if self.fail_open and not (isinstance(err, MalformedPacket) and len(payload) >= COPY_RANGE):
            queued.accept()
        else:
            queued.drop()
        if self.on_error is not None:
            self.on_error(err)

    def bind(self) -> None:
        from netfilterqueue import COPY_PACKET, NetfilterQueue

        queue = NetfilterQueue()
        queue.bind(self.queue_num, self.handle, max_len=self.max_queue_len, mode=COPY_PACKET, range=COPY_RANGE)
        self._queue = queue

    def run(self, stop: threading.Event, poll_interval: float = 0.05) -> None:
        """Serve the queue until ``stop`` is set (noticed within ``poll_interval`` seconds). Call ``bind`` first."""
        queue = self._queue
        if queue is None:
            raise RuntimeError("bind() the queue before run()")
        fd = queue.get_fd()
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while not stop.is_set():
                if poller.poll(poll_interval * 1000):
                    # Drain everything available without blocking, then wait again.
                    queue.run(block=False)
        finally:
            queue.unbind()
            self._queue = None
