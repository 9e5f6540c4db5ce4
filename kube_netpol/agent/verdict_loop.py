"""The NFQUEUE reader: parse, judge, accept or drop, one packet at a time.

This is the per-packet hot path (docs/development.md, "How a packet travels"): no logging, no allocation
beyond the parsed Packet, and every failure turns into the configured
fail-open/fail-closed verdict instead of an exception that would end the loop.
"""

from __future__ import annotations

import select
import threading
from struct import error as struct_error
from time import monotonic, perf_counter_ns
from typing import Any, Callable

from kube_netpol.dataplane.ruleset import (
    DEFAULT_MEMORY_TIMEOUT,
    DNS_ANSWER_MARK,
    MEMORY_EPOCHS,
    MEMORY_MARK,
    MEMORY_PROTOCOLS,
    NF_INET_POST_ROUTING,
    mark_seconds,
    memory_class,
    memory_mark,
)

from kube_netpol.dns.observe import observe as observe_dns_answer
from kube_netpol.engine import PolicyEngine, Snapshot
from kube_netpol.engine.judgement import Judgement
from kube_netpol.engine.flows import (
    TIMING_EVERY, FlowStats, FlowTable, TableKey, segment_key, table_key, unpack_raw_v4, unpack_raw_v6,
)  # fmt: skip
from kube_netpol.observability.decisions import RecordGate, VerdictObserver
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
#: The mark bits a verdict keeps of the packet's own mark when it carries the memory's bits.
_KEEP = 0xFFFFFFFF ^ MEMORY_MARK


class VerdictCounters:
    __slots__ = ("errors", "dns_answers", "dns_refused", "segment_answers")

    def __init__(self) -> None:
        self.errors = 0  # packets that could not be parsed or judged
        self.dns_answers = 0  # DNS answers observed (the DNS observation), refused ones included
        self.dns_refused = 0  # of those, the ones not learnt from (malformed, an error code, not to a pod, ...)
        self.segment_answers = 0  # new keys given the judgement of their port segment (not parsed, not judged)


class VerdictLoop:
    """Judges queued packets with the engine's current snapshot, one snapshot read per packet.

    Fast path: a packet whose flow key (addresses, protocol, destination port)
    already has an entry in the snapshot's flow table gets that entry's verdict
    without being parsed or judged, and costs one counter increment; one packet
    in ``TIMING_EVERY`` is timed (see ``FlowStats``). Each snapshot has its own
    table, so an entry is exactly a verdict of that snapshot plus its counters.
    With an ``observer`` (decision records need every packet) every packet
    takes the full path, except while its ``observer_gate`` is closed (the
    decision logger's rate limit is spent).

    With the kernel's verdict memory (``verdict_memory``), a verdict that may
    be remembered (``FlowStats.mark``) is handed back as "accept, with the
    memory's mark bits" for packets queued on postrouting; the remember chain
    then keeps the key and carries out the verdict (kube_netpol.dataplane.ruleset).
    A verdict past its lifetime (``FlowStats.expires``) is judged again.

    With ``observe_dns``, a packet carrying the ruleset's DNS answer bit
    (``DNS_ANSWER_MARK``) is not judged: the pod it goes to learns from it
    (``kube_netpol.dns.observe`` into ``engine.dns``) and it is accepted, in
    that order. Such packets reach the loop only on the flow table's miss
    path (they are never added to it); a packet of a key the table holds gets
    that key's verdict without being learnt from, which can only narrow
    (the names are then not learnt).
    """

    def __init__(
        self,
        engine: PolicyEngine[Any],
        queue_num: int,
        fail_open: bool,
        audit: bool = False,
        max_queue_len: int = DEFAULT_MAX_QUEUE_LEN,
        observer: VerdictObserver | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        observer_gate: RecordGate | None = None,
        verdict_memory: bool = False,
        observe_dns: bool = False,
        memory_timeout: int = DEFAULT_MEMORY_TIMEOUT,
    ) -> None:
        self.engine = engine
        self.observe_dns = observe_dns
        self.queue_num = queue_num
        self.fail_open = fail_open
        self.audit = audit
        self.max_queue_len = max_queue_len
        self.observer = observer
        self.observer_gate = observer_gate  # while closed, packets are not parsed for the observer
        self.on_error = on_error
        self.verdict_memory = verdict_memory
        self.memory_timeout = memory_timeout  # what a decision record says the kernel keeps a verdict
        self.counters = VerdictCounters()
        self._history = engine.history
        self._queue: Any = None
        self._untimed_left = 0  # packets until the next timed one

    def verdicts(self) -> tuple[int, int]:
        """(accepted, dropped) packets so far, errors excluded."""
        accepted = dropped = 0
        for (_, _, was_accepted), count in self._history.totals(self.engine.snapshot.flows).packets.items():
            if was_accepted:
                accepted += count
            else:
                dropped += count
        return accepted, dropped

    def handle(self, queued: Any) -> None:
        """The NetfilterQueue callback; ``queued`` has get_payload/accept/drop."""
        # One packet in TIMING_EVERY is timed from here; judged packets are always
        # timed, the others from the start of the parse.
        untimed_left = self._untimed_left
        if untimed_left:
            self._untimed_left = untimed_left - 1
            started = 0
        else:
            self._untimed_left = TIMING_EVERY - 1
            started = perf_counter_ns()
        snapshot = self.engine.snapshot  # read once: everything below uses this snapshot
        payload = queued.get_payload()
        try:  # flows.flow_key, inlined
            raw = unpack_raw_v4(payload) if payload[0] == 0x45 else unpack_raw_v6(payload)
        except (IndexError, struct_error):
            raw = None
        observer = self.observer
        if observer is None:
            flow = snapshot.flows.get(raw)  # type: ignore[arg-type]
        elif self.observer_gate is not None and not self.observer_gate.open:
            # The observer takes no records now: no need to parse this packet for one.
            flow = snapshot.flows.get(raw)  # type: ignore[arg-type]
            if flow is not None:
                self.observer_gate.skip(flow.judgement)
        else:
            flow = None
        if flow is None or (flow.expires and flow.expires < monotonic()):
            self._judge(snapshot, queued, payload, raw, started)
            return
        mark = flow.mark
        if started:
            elapsed = perf_counter_ns() - started
            if mark and queued.hook == NF_INET_POST_ROUTING:
                queued.set_mark((queued.get_mark() & _KEEP) | mark)
                queued.accept()
            elif flow.accepted:
                queued.accept()
            else:
                queued.drop()
            self._history.record_timed_hit(flow, elapsed)
            return
        flow.hits += 1
        if mark and queued.hook == NF_INET_POST_ROUTING:
            queued.set_mark((queued.get_mark() & _KEEP) | mark)
            queued.accept()  # the remember chain keeps the key, then accepts or drops
        elif flow.accepted:
            queued.accept()
        else:
            queued.drop()

    def _judge(self, snapshot: Snapshot, queued: Any, payload: bytes, raw: TableKey | None, started: int) -> None:
        """The full path: parse, judge, remember the verdict in the snapshot's flow table.

        ``started``: when ``handle`` began, if it times this packet (0: not); a judged packet is timed
        from here then, a segment answer only when ``handle`` times it (as a hit).
        """
        if self.observe_dns and queued.get_mark() & DNS_ANSWER_MARK:
            self._learn(snapshot, queued, payload)
            return
        segment = None
        if raw is not None and self.observer is None:
            segment = segment_key(raw, snapshot.segments)
            if segment is not None:
                shared = snapshot.judged.get(segment)
                # A full table is replaced on the full path (Snapshot.add_flow), which empties the memo.
                if shared is not None and (len(snapshot.flows) < self._history.max_flows or snapshot.retired):
                    self._answer(queued, snapshot.flows, raw, shared, started)
                    return
        started = started or perf_counter_ns()
        try:
            packet = parse_packet(payload)
            key = table_key(raw, packet)
            # Without an observer ``handle`` looked the raw key up already (with one, every packet comes
            # here); a packet the raw key misreads has its own key.
            flow = None if key is raw and self.observer is None else snapshot.flows.get(key)
            if flow is None or (flow.expires and flow.expires < monotonic()):
                judgement = snapshot.judge(packet)
                accepted = judgement.allowed or self.audit
                flow = snapshot.add_flow(key, judgement, accepted, packet.protocol, packet.family)
                if self.verdict_memory and packet.protocol in MEMORY_PROTOCOLS:
                    flow.mark = self._memory_mark(snapshot.generation, judgement, accepted)
                if segment is not None and key is raw and judgement.lifetime is None:
                    snapshot.judged[segment] = flow  # new keys of the segment share this entry
            else:
                judgement = flow.judgement
        except Exception as err:  # noqa: BLE001 - a bad packet must never end the loop
            self._failed(queued, payload, err)
            return
        if self.observer is not None:
            gate = self.observer_gate
            if gate is None or gate.open:
                mark = flow.mark  # the kernel remembers only what postrouting queued (the remember chain's hook)
                remembered = mark_seconds(mark, self.memory_timeout) if mark and queued.hook == NF_INET_POST_ROUTING else 0
                self.observer(packet, judgement, flow.accepted, perf_counter_ns() - started, remembered)
            else:
                gate.skip(judgement)
        elapsed = perf_counter_ns() - started
        mark = flow.mark
        if mark and queued.hook == NF_INET_POST_ROUTING:
            queued.set_mark((queued.get_mark() & _KEEP) | mark)
            queued.accept()
        elif flow.accepted:
            queued.accept()
        else:
            queued.drop()
        flow.record(elapsed)
        self._history.record_sample(elapsed)

    def _answer(self, queued: Any, flows: FlowTable, raw: TableKey, flow: FlowStats, started: int) -> None:
        """A new key in a port segment judged before: the segment's entry, without parsing or judging.

        The key joins the entry judged for its segment (``FlowStats.keys``): same judgement, same
        mark, counted together, and like a hit of it (neither parsed nor judged: timed one packet
        in ``TIMING_EVERY``, ``started``). Repeats the end of ``handle`` on purpose: shared helpers
        cost two calls, measured 0.17 µs of a 3.8 µs new key.
        """
        self.counters.segment_answers += 1
        flows[raw] = flow
        flow.keys += 1
        elapsed = perf_counter_ns() - started if started else 0
        mark = flow.mark
        if mark and queued.hook == NF_INET_POST_ROUTING:
            queued.set_mark((queued.get_mark() & _KEEP) | mark)
            queued.accept()
        elif flow.accepted:
            queued.accept()
        else:
            queued.drop()
        if started:
            self._history.record_timed_hit(flow, elapsed)
        else:
            flow.hits += 1

    def _learn(self, snapshot: Snapshot, queued: Any, payload: bytes) -> None:
        """A DNS answer on its way to a pod: learn from it, then let it through (it answers an accepted query)."""
        self.counters.dns_answers += 1
        try:
            observe_dns_answer(self.engine.dns, payload, snapshot.pod_by_ip)
        except Exception:  # noqa: BLE001 - DnsError, or any bug: never end the loop; nothing is learnt
            self.counters.dns_refused += 1
        queued.accept()

    def _memory_mark(self, generation: int, judgement: Judgement, accepted: bool) -> int:
        """The mark bits that make the kernel remember this verdict; 0 when it must not.

        Not remembered: an answer from an evaluator outside kube_netpol without
        a lifetime, a lifetime under the shortest class, and in audit mode a
        denial (its would-deny count needs every connection in userspace).
        """
        if not judgement.kernel or (self.audit and not judgement.allowed):
            return 0
        lifetime_class = memory_class(judgement.lifetime)
        if lifetime_class is None:
            return 0
        return memory_mark(not accepted, lifetime_class, generation % MEMORY_EPOCHS)

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
