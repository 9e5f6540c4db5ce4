"""Decision records: one JSON line per judged connection, rate-limited.

The packet thread's share is ``DecisionLogger.observe``: a length check and
one ``deque.append`` of a small tuple (the Packet and Judgement are shared,
not copied), and, while the rate limit's budget is spent, nothing: the
logger's ``RecordGate`` closes and the verdict loop then answers from its
flow table without parsing packets for records that would be dropped.
Everything else (pod names, JSON, I/O, the rate limit itself) happens on the
logger's own thread, so a flood of connections can neither slow the verdict
loop nor fill the disk: records beyond the queue's capacity are dropped and
records beyond the rate are suppressed, both only counted, and a periodic
summary line says how many were lost.

Record layout (documented in docs/observability.md)::

    {"time": "...Z", "level": "info", "logger": "kube_netpol.decisions", "msg": "connection denied",
     "src": "x/a", "src_ip": "10.244.1.10", "dst": "y/b", "dst_ip": "10.244.2.11",
     "family": "IPv4", "protocol": "TCP", "src_port": 40000, "dst_port": 80,
     "verdict": "deny", "audit": false, "process_time_us": 12.5,
     "egress": {"evaluator": null, "verdict": "allow", "policy": "", "rule": "", "reason": "..."},
     "ingress": {"evaluator": "networkpolicy", "verdict": "deny", "policy": "y/deny-all", ...},
     "src_owner": "ReplicaSet/a-5d8f7c9b4", "src_labels": {...}, "dst_owner": null, "dst_labels": {...},
     "dst_port_name": "http"}

The last five fields exist only for the ends that are pods (``dst_port_name``
only when the receiving pod names the port): what ``kube-netpol advise``
groups by and selects with.
"""

from __future__ import annotations

import collections
import ipaddress
import json
import logging
import threading
import time
from typing import IO, Any, Callable, Deque

from kube_netpol.api.cluster import PodRecord
from kube_netpol.api.evaluator import PodInfoProvider
from kube_netpol.api.packet import FAMILY_NAMES, PROTOCOL_NAMES, Packet
from kube_netpol.api.verdict import Decision, Verdict
from kube_netpol.engine import Judgement

log = logging.getLogger(__name__)

LOGGER_NAME = "kube_netpol.decisions"
#: Records written per second at most, and the burst the bucket allows after a quiet spell.
DEFAULT_RATE = 100.0
#: Records waiting for the writer; beyond this the packet thread drops (and counts) them.
DEFAULT_CAPACITY = 10000
#: How often the writer wakes up.
DEFAULT_INTERVAL = 0.1
#: At most one "suppressed K records" line per this many seconds.
DEFAULT_REPORT_INTERVAL = 10.0

#: What the packet thread queues: (wall time, packet, judgement, accepted, nanoseconds spent,
#: seconds the kernel's verdict memory keeps the verdict).
Pending = tuple[float, Packet, Judgement, bool, int, int]
#: Observer of every judged packet: (packet, judgement, accepted, nanoseconds spent, seconds the
#: kernel's verdict memory answers the key's next connections itself, 0 when it does not).
VerdictObserver = Callable[[Packet, Judgement, bool, int, int], None]


# ------------------------------------------------------------------ formatting


def format_time(seconds: float) -> str:
    """RFC 3339 UTC with milliseconds, as the JSON log lines write it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(seconds * 1000) % 1000:03d}Z"


def verdict_word(verdict: Verdict) -> str:
    """"allow"/"deny" for a final verdict (NEXT never reaches here: the end of the pipeline accepts)."""
    return "deny" if verdict is Verdict.DENY else "allow"


def direction_fields(evaluator: str, decision: Decision) -> dict[str, Any]:
    """What decided one direction; ``evaluator`` is None when the end of the pipeline did."""
    return {
        "evaluator": evaluator or None,
        "verdict": verdict_word(decision.verdict),
        "policy": decision.policy,
        "rule": decision.rule,
        "reason": decision.reason,
    }


def port_name(pod: PodRecord, protocol: int, port: int) -> str | None:
    """The receiving pod's container port name for (protocol, port), the first declared; None if unnamed."""
    names = pod.port_names.get((protocol, port))
    return names[0] if names else None


def workload_fields(record: dict[str, Any], packet: Packet, src: PodRecord | None, dst: PodRecord | None) -> None:
    """What ``kube-netpol advise`` groups and selects by: each pod end's controller owner and labels,
    and the name the receiving pod gives the destination port."""
    if src is not None:
        record["src_owner"] = src.owner or None
        record["src_labels"] = dict(src.labels)
    if dst is not None:
        record["dst_owner"] = dst.owner or None
        record["dst_labels"] = dict(dst.labels)
        name = port_name(dst, packet.protocol, packet.dst_port) if packet.icmp_type < 0 else None
        if name is not None:
            record["dst_port_name"] = name


def decision_record(
    when: float,
    packet: Packet,
    judgement: Judgement,
    accepted: bool,
    elapsed_ns: int,
    provider: PodInfoProvider | None,
    remembered_s: int = 0,
) -> dict[str, Any]:
    """The record of one judged connection (names resolved now, at write time)."""
    allowed = judgement.verdict is Verdict.ACCEPT
    would_deny = accepted and not allowed
    src = provider.pod_by_ip(packet.src) if provider is not None else None
    dst = provider.pod_by_ip(packet.dst) if provider is not None else None
    src_ip = str(ipaddress.ip_address(packet.src))
    dst_ip = str(ipaddress.ip_address(packet.dst))
    record: dict[str, Any] = {
        "time": format_time(when),
        "level": "info",
        "logger": LOGGER_NAME,
        "msg": "connection allowed" if allowed else ("connection would be denied (audit)" if would_deny else "connection denied"),
        "src": f"{src.namespace}/{src.name}" if src is not None else src_ip,
        "src_ip": src_ip,
        "dst": f"{dst.namespace}/{dst.name}" if dst is not None else dst_ip,
        "dst_ip": dst_ip,
        "family": FAMILY_NAMES.get(packet.family, str(packet.family)),
        "protocol": PROTOCOL_NAMES.get(packet.protocol, str(packet.protocol)),
        "src_port": packet.src_port,
        "dst_port": packet.dst_port,
    }
    if packet.icmp_type >= 0:
        record["icmp_type"] = packet.icmp_type
        record["icmp_code"] = packet.icmp_code
    record["verdict"] = "allow" if allowed else "deny"
    record["audit"] = would_deny
    record["process_time_us"] = round(elapsed_ns / 1000, 1)
    if remembered_s:
        # The next connections of this key within that time are answered by the kernel: no record.
        record["remembered_s"] = remembered_s
    record["egress"] = direction_fields(judgement.egress_by, judgement.egress)
    record["ingress"] = direction_fields(judgement.ingress_by, judgement.ingress)
    workload_fields(record, packet, src, dst)
    return record


# ---------------------------------------------------------------- rate limit


class TokenBucket:
    """``rate`` tokens per second, holding at most ``burst``; starts full."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("the rate must be positive and the burst at least 1")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self._last = now

    def refill(self, now: float) -> None:
        if now > self._last:
            self.tokens = min(self.burst, self.tokens + (now - self._last) * self.rate)
        self._last = now

    def take(self) -> bool:
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


# ---------------------------------------------------------------------- gate


class RecordGate:
    """Whether the logger takes another record now: the verdict loop reads ``open`` before the parse.

    While the rate limit's budget is spent the gate is closed, and the loop
    answers packets from its flow table without parsing them for a record
    that would be thrown away; it only counts them (``skip``). So a flood
    costs the loop about what it costs without decision logging.
    """

    __slots__ = ("open", "skipped", "only_denied")

    def __init__(self, only_denied: bool = False) -> None:
        self.open = True
        self.skipped = 0  # records not made because the gate was closed (rate-limited), packet thread
        self.only_denied = only_denied

    def wants(self, judgement: Judgement) -> bool:
        """Whether a connection so judged gets a record at all (only denials, when only those are logged)."""
        return not (self.only_denied and judgement.verdict is Verdict.ACCEPT)

    def skip(self, judgement: Judgement) -> None:
        """Count the record a packet would have had."""
        if self.wants(judgement):
            self.skipped += 1


# -------------------------------------------------------------------- logger


class DecisionLogger:
    """A VerdictObserver that writes decision records as JSON lines from a background thread.

    ``provider`` (e.g. the agent's ClusterState) names the pods behind
    addresses; it may be set after construction, before ``start``.
    ``only_denied`` keeps only denied connections (audit ones included).
    """

    def __init__(
        self,
        stream: IO[str],
        provider: PodInfoProvider | None = None,
        rate: float = DEFAULT_RATE,
        burst: float | None = None,
        capacity: int = DEFAULT_CAPACITY,
        only_denied: bool = False,
        interval: float = DEFAULT_INTERVAL,
        report_interval: float = DEFAULT_REPORT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        close_stream: bool = False,
    ) -> None:
        if capacity < 1:
            raise ValueError("the capacity must be at least 1")
        self.stream = stream
        self.provider = provider
        self.interval = interval
        self.report_interval = report_interval
        self._capacity = capacity
        self._pending: Deque[Pending] = collections.deque()
        self._clock = clock
        self._wall_clock = wall_clock
        self._bucket = TokenBucket(rate, burst if burst is not None else max(rate, 1.0), clock())
        # Records the packet thread may still queue before the writer's next drain; the
        # writer resets it from its bucket, the packet thread counts it down.
        self.gate = RecordGate(only_denied)
        self._budget = int(self._bucket.tokens)
        self._close_stream = close_stream
        # Written by the packet thread only; the writer only reads it.
        self.queue_full = 0
        # Written by the writer thread only.
        self.written = 0
        self.rate_limited = 0
        self.write_errors = 0  # records lost to a failed write (or that could not be formatted)
        self._warned_write = False
        self._reported_full = 0
        self._unreported_limited = 0
        self._reported_skipped = 0
        self._last_report = clock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._drain_lock = threading.Lock()

    @classmethod
    def to_file(cls, path: str, **options: Any) -> "DecisionLogger":
        """A logger appending to ``path`` (line-buffered; closed by ``stop``)."""
        stream = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - owned by the logger
        return cls(stream, close_stream=True, **options)

    @property
    def suppressed(self) -> int:
        """Records never written: dropped when the queue was full plus rate-limited."""
        return self.queue_full + self.rate_limited + self.gate.skipped

    # ------------------------------------------------------- packet thread

    def observe(self, packet: Packet, judgement: Judgement, accepted: bool, elapsed_ns: int, remembered_s: int = 0) -> None:
        if not self.gate.wants(judgement):
            return
        pending = self._pending
        if len(pending) >= self._capacity:
            self.queue_full += 1
            return
        pending.append((self._wall_clock(), packet, judgement, accepted, elapsed_ns, remembered_s))
        budget = self._budget - 1
        self._budget = budget
        if budget <= 0:
            self.gate.open = False

    # ------------------------------------------------------- writer thread

    def stats(self) -> dict[str, int]:
        """Records by fate, for the metrics endpoint."""
        return {
            "written": self.written,
            "rate_limited": self.rate_limited + self.gate.skipped,
            "queue_full": self.queue_full,
            "write_error": self.write_errors,
        }

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Write what the budget still allows, report the losses, and close an owned file."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self.drain(final=True)
        if self._close_stream:
            try:
                self.stream.close()
            except OSError:
                pass

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.drain()
        self.drain(final=True)

    def drain(self, final: bool = False) -> int:
        """Take every queued record, write those the bucket allows; returns how many were written."""
        with self._drain_lock:
            now = self._clock()
            bucket = self._bucket
            bucket.refill(now)
            pending = self._pending
            lines: list[str] = []
            limited = 0
            unformatted = 0
            # Only what is queued now: the packet thread keeps appending meanwhile.
            for _ in range(len(pending)):
                item = pending.popleft()
                if not bucket.take():
                    limited += 1
                    continue
                try:
                    when, packet, judgement, accepted, elapsed_ns, remembered_s = item
                    record = decision_record(when, packet, judgement, accepted, elapsed_ns, self.provider, remembered_s)
                except Exception as err:  # noqa: BLE001 - a bad record must not end the writer
                    log.debug("cannot format a decision record: %s", err)
                    unformatted += 1
                    continue
                lines.append(json.dumps(record, separators=(",", ":")))
            self.rate_limited += limited
            self._unreported_limited += limited
            records = len(lines)
            # What the bucket will allow by the next drain, less what is queued already.
            self._budget = int(min(bucket.burst, bucket.tokens + bucket.rate * self.interval)) - len(pending)
            self.gate.open = self._budget > 0
            summary = self._summary(now, final)
            if summary is not None:
                lines.append(summary)
            if lines and not self._write(lines):
                # Every record has one fate: these are lost, not written.
                self.write_errors += records + unformatted
                return 0
            self.write_errors += unformatted
            self.written += records
            return records

    def _summary(self, now: float, final: bool) -> str | None:
        """The "suppressed K records" line, at most once per report interval (and at the end)."""
        full = self.queue_full - self._reported_full
        skipped = self.gate.skipped
        limited = self._unreported_limited + skipped - self._reported_skipped
        if not (full or limited) or (not final and now - self._last_report < self.report_interval):
            return None
        self._reported_full += full
        self._reported_skipped = skipped
        self._unreported_limited = 0
        self._last_report = now
        return json.dumps({
            "time": format_time(self._wall_clock()),
            "level": "warning",
            "logger": LOGGER_NAME,
            "msg": f"suppressed {full + limited} decision records",
            "suppressed": full + limited,
            "rate_limited": limited,
            "queue_full": full,
        }, separators=(",", ":"))

    def _write(self, lines: list[str]) -> bool:
        """Write ``lines``; False (logged once) when the stream refuses them."""
        try:
            self.stream.write("\n".join(lines) + "\n")
            self.stream.flush()
            return True
        except (OSError, ValueError) as err:  # full disk, closed stream: count, keep serving
            if not self._warned_write:
                self._warned_write = True
                log.warning("cannot write decision records: %s", err)
            return False
