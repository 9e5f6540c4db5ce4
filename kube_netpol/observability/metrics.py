"""Prometheus metrics, with the reference implementation's names under ``kube_network_policies_``.

The packet thread only counts into the snapshot's flow table (engine/flows.py:
a few integer updates per packet, no locks, no label lookups); the control
thread records into ``ControlStats``; everything is summed and turned into
metric families when Prometheus scrapes. Counters are exposed under the
reference's exact names (``..._packet_count``, not ``..._total``) so existing
dashboards keep working.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Callable, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from kube_netpol import __version__
from kube_netpol.api.packet import FAMILY_NAMES, PROTOCOL_NAMES
from kube_netpol.engine import PolicyEngine
from kube_netpol.engine.flows import PROCESS_TIME_BUCKETS_US
from kube_netpol.observability.nfqueue_proc import QueueStats, read_nfqueue_stats

PREFIX = "kube_network_policies_"
#: Seconds; for dataplane syncs and policy apply latency.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
QUANTILES = (0.5, 0.9, 0.99)
OTHER_POLICIES = "(other)"


def _counter(name: str, documentation: str) -> Metric:
    """A counter under the reference's exact name: its samples carry that name, without ``_total``.

    prometheus_client's own text writer would put ``_total`` on a counter's HELP
    and TYPE lines; ``exposition.generate_text`` writes these as the Go client does
    (``# TYPE kube_network_policies_packet_count counter``), so PromQL written for
    the reference (``rate(kube_network_policies_packet_count[1m])``) works unchanged.
    """
    return Metric(name, documentation, "counter")


class Histogram:
    """A plain histogram: observe from one thread, export from another."""

    __slots__ = ("bounds", "counts", "total", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def buckets(self) -> list[tuple[str, int]]:
        return cumulative_buckets(self.bounds, self.counts)


class ControlStats:
    """What the control thread measures: dataplane syncs and policy apply latency (read at scrape time)."""

    def __init__(self) -> None:
        self.sync_duration = Histogram(LATENCY_BUCKETS_S)
        self.sync_errors = 0
        self.apply_latency = Histogram(LATENCY_BUCKETS_S)

    def record_sync(self, seconds: float, ok: bool) -> None:
        self.sync_duration.observe(seconds)
        if not ok:
            self.sync_errors += 1

    def record_apply_latency(self, seconds: float) -> None:
        """Seconds from a change reaching the agent to the dataplane enforcing it."""
        self.apply_latency.observe(seconds)


def cumulative_buckets(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, int]]:
    cumulative, out = 0, []
    for bound, count in zip((*bounds, float("inf")), list(counts)):
        cumulative += count
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
    return out


def weighted_quantile(window: list[tuple[int, int]], quantile: float) -> int:
    """The value below which ``quantile`` of the weight lies; ``window``: sorted (value, weight) pairs.

    Timed flow-table hits stand for the untimed ones of their flow (weight
    ``TIMING_EVERY``), judged packets for themselves.
    """
    total = sum(weight for _, weight in window)
    target = quantile * total
    seen = 0
    for value, weight in window:
        seen += weight
        if seen > target:
            return value
    return window[-1][0]


def _protocol(number: int) -> str:
    return PROTOCOL_NAMES.get(number, str(number))


class VerdictMetrics:
    """The verdict metrics, computed at scrape time from the engine's flow tables (current and retired)."""

    def __init__(self, engine: PolicyEngine[Any], top_policies: int = 20) -> None:
        self.engine = engine
        self.top_policies = top_policies

    def collect(self) -> Iterator[Metric]:
        history = self.engine.history
        totals = history.totals(self.engine.snapshot.flows)
        process_time = HistogramMetricFamily(
            PREFIX + "packet_process_time", "Time it has taken to process each packet (microseconds)",
            labels=["protocol", "family"],
        )
        for (protocol, family), counts in sorted(totals.buckets.items()):
            process_time.add_metric(
                [_protocol(protocol), FAMILY_NAMES[family]],
                cumulative_buckets(PROCESS_TIME_BUCKETS_US, counts),
                totals.total_ns[(protocol, family)] / 1000,
            )
        yield process_time

        summary = SummaryMetricFamily(
            PREFIX + "packet_process_duration_microseconds",
            "A summary of the packet processing durations in microseconds.",
        )
        window = sorted(history.recent_samples())
        for quantile in QUANTILES:
            value = weighted_quantile(window, quantile) / 1000 if window else float("nan")
            summary.samples.append(Sample(summary.name, {"quantile": repr(quantile)}, value))
        summary.add_metric([], count_value=sum(totals.packets.values()), sum_value=sum(totals.total_ns.values()) / 1000)
        yield summary

        packets = _counter(PREFIX + "packet_count", "Number of packets")
        for (protocol, family, accepted), value in sorted(totals.packets.items()):
            packets.add_sample(PREFIX + "packet_count", {
                "protocol": _protocol(protocol),
                "family": FAMILY_NAMES[family],
                "verdict": "accept" if accepted else "drop",
            }, value)
        yield packets

        would_deny = _counter(
            PREFIX + "audit_would_deny_count",
            "Packets accepted in audit mode that the policies deny",
        )
        for (protocol, family), value in sorted(totals.would_deny.items()):
            would_deny.add_sample(PREFIX + "audit_would_deny_count", {
                "protocol": _protocol(protocol), "family": FAMILY_NAMES[family],
            }, value)
        yield would_deny

        yield self._decision_counter(totals.decisions)

    def _decision_counter(self, totals: dict[tuple[str, str, str, str], int]) -> Metric:
        """Verdicts by deciding evaluator and policy: the top policies by count, the rest as "(other)"."""
        name = PREFIX + "verdicts_by_policy"
        metric = _counter(name, "Judged connections by direction, deciding evaluator, policy and verdict "
                                f"(the {self.top_policies} busiest policies; the rest as {OTHER_POLICIES})")
        by_policy: dict[str, int] = {}
        for key, count in totals.items():
            by_policy[key[2]] = by_policy.get(key[2], 0) + count
        # "(none)" (no policy decided) is always its own series and takes no place among the top.
        ranked = sorted((p for p in by_policy if p != "(none)"), key=lambda p: (-by_policy[p], p))
        top = {"(none)", *ranked[: self.top_policies]}
        folded: dict[tuple[str, str, str, str], int] = {}
        for (direction, evaluator, policy, verdict), count in totals.items():
            key = (direction, evaluator, policy if policy in top else OTHER_POLICIES, verdict)
            folded[key] = folded.get(key, 0) + count
        for (direction, evaluator, policy, verdict), count in sorted(folded.items()):
            metric.add_sample(name, {"direction": direction, "evaluator": evaluator, "policy": policy,
                                     "verdict": verdict}, count)
        return metric


class AgentCollector(Collector):
    """Everything the agent exports, gathered at scrape time."""

    def __init__(
        self,
        verdicts: VerdictMetrics,
        control: ControlStats,
        invalid_objects: Callable[[], dict[str, int]],
        managed_ips: Callable[[], tuple[int, int]],
        cache_stats: Callable[[], tuple[int, int, int]],
        queue_stats: Callable[[], list[QueueStats]] = read_nfqueue_stats,
        verdict_errors: Callable[[], int] = lambda: 0,
        decision_log_stats: Callable[[], dict[str, int]] | None = None,
        dataplane_repairs: Callable[[], dict[str, int]] = dict,
        new_flows_limited: Callable[[], int] = lambda: 0,
        remembered_verdicts: Callable[[], tuple[int, int]] = lambda: (0, 0),
        dns_stats: Callable[[], tuple[int, int, int, int]] = lambda: (0, 0, 0, 0),
    ) -> None:
        self._dns_stats = dns_stats
        self._remembered_verdicts = remembered_verdicts
        self._dataplane_repairs = dataplane_repairs
        self._new_flows_limited = new_flows_limited
        self.verdicts = verdicts
        self.control = control
        self._invalid_objects = invalid_objects
        self._managed_ips = managed_ips
        self._cache_stats = cache_stats
        self._queue_stats = queue_stats
        self._verdict_errors = verdict_errors
        self._decision_log_stats = decision_log_stats
        self.started = time.time()

    def collect(self) -> Iterator[Metric]:
        yield from self.verdicts.collect()
        queues = self._queue_stats()
        for field, help_text in (
            ("queue_total", "The number of packets currently queued and waiting to be processed by the application"),
            ("queue_dropped", "Number of packets that had to be dropped by the kernel because too many packets are already waiting for user space to send back the mandatory accept/drop verdicts"),
            ("user_dropped", "Number of packets that were dropped within the netlink subsystem. Such drops usually happen when the corresponding socket buffer is full; that is, user space is not able to read messages fast enough"),
            ("packet_id", "ID of the most recent packet queued"),
        ):
            gauge = GaugeMetricFamily(PREFIX + "nfqueue_" + field, help_text, labels=["queue"])
            for stats in queues:
                gauge.add_metric([str(stats.queue_num)], getattr(stats, field))
            yield gauge

        invalid = _counter(PREFIX + "invalid_objects", "Objects ignored because they cannot be enforced, by kind")
        for kind, count in sorted(self._invalid_objects().items()):
            invalid.add_sample(PREFIX + "invalid_objects", {"kind": kind}, count)
        yield invalid

        for name, help_text, histogram in (
            ("dataplane_sync_duration_seconds", "Time to bring the nftables sets and rules in line with the managed pods", self.control.sync_duration),
            ("policy_apply_latency_seconds", "Time from a change reaching the agent to the dataplane enforcing it", self.control.apply_latency),
        ):
            family = HistogramMetricFamily(PREFIX + name, help_text)
            family.add_metric([], histogram.buckets(), histogram.total)
            yield family
        repairs = _counter(PREFIX + "dataplane_repairs", "Repairs of the kernel's ruleset that found it changed, by what had changed")
        for kind, count in sorted(self._dataplane_repairs().items()):
            repairs.add_sample(PREFIX + "dataplane_repairs", {"kind": kind}, count)
        yield repairs
        limited = _counter(PREFIX + "new_flows_rate_limited", "New flows dropped before the queue by the per-source limit")
        limited.add_sample(PREFIX + "new_flows_rate_limited", {}, self._new_flows_limited())
        yield limited
        # Packets the kernel's verdict memory answered: they never reached the queue, so the reference
        # metrics (packets seen by userspace) do not count them.
        remembered = _counter(PREFIX + "kernel_verdicts",
                              "New connections' first packets the kernel answered from its verdict memory, by verdict")
        accepted, dropped = self._remembered_verdicts()
        remembered.add_sample(PREFIX + "kernel_verdicts", {"verdict": "accept"}, accepted)
        remembered.add_sample(PREFIX + "kernel_verdicts", {"verdict": "drop"}, dropped)
        yield remembered
        errors = _counter(PREFIX + "dataplane_sync_errors", "Dataplane syncs that failed (retried)")
        errors.add_sample(PREFIX + "dataplane_sync_errors", {}, self.control.sync_errors)
        yield errors

        packet_errors = _counter(PREFIX + "packet_errors", "Packets that could not be parsed or judged; they got the fail-open/fail-closed verdict")
        packet_errors.add_sample(PREFIX + "packet_errors", {}, self._verdict_errors())
        yield packet_errors

        answers, refused, entries, full = self._dns_stats()
        dns = _counter(PREFIX + "dns_answers", "DNS answers to managed pods observed, by result (learnt from, or refused: "
                       "malformed, an error code, not to a pod)")
        dns.add_sample(PREFIX + "dns_answers", {"result": "learnt"}, answers - refused)
        dns.add_sample(PREFIX + "dns_answers", {"result": "refused"}, refused)
        yield dns
        dns_entries = GaugeMetricFamily(PREFIX + "dns_cache_entries", "(pod, address, name) entries the DNS cache holds")
        dns_entries.add_metric([], entries)
        yield dns_entries
        dns_full = _counter(PREFIX + "dns_cache_refused", "DNS cache entries refused because the cache was full")
        dns_full.add_sample(PREFIX + "dns_cache_refused", {}, full)
        yield dns_full

        if self._decision_log_stats is not None:
            records = _counter(PREFIX + "decision_records", "Decision records by fate (written, or dropped: rate_limited, queue_full, write_error)")
            for result, count in sorted(self._decision_log_stats().items()):
                records.add_sample(PREFIX + "decision_records", {"result": result}, count)
            yield records

        managed = GaugeMetricFamily(PREFIX + "managed_pod_ips", "Pod addresses whose traffic is sent to the queue", labels=["family"])
        v4, v6 = self._managed_ips()
        managed.add_metric(["IPv4"], v4)
        managed.add_metric(["IPv6"], v6)
        yield managed

        hits, misses, segment = self._cache_stats()
        cache = _counter(PREFIX + "verdict_cache", "Verdict cache lookups by result")
        cache.add_sample(PREFIX + "verdict_cache", {"result": "hit"}, hits)
        cache.add_sample(PREFIX + "verdict_cache", {"result": "miss"}, misses)
        cache.add_sample(PREFIX + "verdict_cache", {"result": "segment"}, segment)
        yield cache

        info = GaugeMetricFamily(PREFIX + "build_info", "Build information", labels=["version", "python"])
        import platform

        info.add_metric([__version__, platform.python_version()], 1)
        yield info
