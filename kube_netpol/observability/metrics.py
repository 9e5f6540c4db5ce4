"""Prometheus metrics, with the reference implementation's names under ``kube_network_policies_``.

The packet thread records into plain integers and lists (a few dict and list
operations per packet, no locks, no label lookups); everything is turned into
metric families only when Prometheus scrapes. Counters are exposed under the
reference's exact names (``..._packet_count``, not ``..._total``) so existing
dashboards keep working.
"""

from __future__ import annotations

import bisect
import time
from typing import Any, Callable, Iterable, Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from kube_netpol import __version__
from kube_netpol.api.packet import PROTOCOL_NAMES, Packet
from kube_netpol.api.verdict import Decision, Verdict
from kube_netpol.engine import Judgement
from kube_netpol.observability.nfqueue_proc import QueueStats, read_nfqueue_stats

PREFIX = "kube_network_policies_"
#: The reference's histogram buckets, in microseconds.
PROCESS_TIME_BUCKETS_US = (1, 10, 50, 200, 500, 750, 1000, 2000, 5000, 10000, 100000)
#: Seconds; for dataplane syncs and policy apply latency.
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
#: Durations kept for the summary's quantiles (the most recent ones).
SUMMARY_WINDOW = 4096
QUANTILES = (0.5, 0.9, 0.99)
OTHER_POLICIES = "(other)"
#: Decisions counted by identity before they are folded into totals by label. Evaluators
#: build new Decision objects whenever policies change (NetworkPolicy denials on every memo
#: miss), so without folding the table would grow with every change for the agent's lifetime.
DECISIONS_FOLD_AT = 4096
FAMILY_NAMES = {4: "IPv4", 6: "IPv6"}


def _counter(name: str, documentation: str, labels: Iterable[str]) -> Metric:
    """A counter under the reference's exact name.

    The Go client exposes counters without a ``_total`` suffix; prometheus_client
    would add one to the TYPE line of a ``counter``. Declaring the family
    untyped keeps HELP, TYPE and samples under one name, so PromQL written for the
    reference (``rate(kube_network_policies_packet_count[1m])``) works unchanged.
    """
    metric = Metric(name, documentation + " (counter)", "unknown")
    metric._labelnames = tuple(labels)  # type: ignore[attr-defined]
    return metric


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
        cumulative, out = 0, []
        for bound, count in zip((*self.bounds, float("inf")), list(self.counts)):
            cumulative += count
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), cumulative))
        return out


class VerdictMetrics:
    """The per-packet part: an observer for the verdict loop."""

    def __init__(self, audit: bool = False, top_policies: int = 20) -> None:
        self.audit = audit
        self.top_policies = top_policies
        self._process_time: dict[tuple[int, int], Histogram] = {}
        self._packets: dict[tuple[int, int, bool], int] = {}
        self._would_deny: dict[tuple[int, int], int] = {}
        self._recent = [0.0] * SUMMARY_WINDOW
        self._recent_next = 0
        self._recent_sum = 0.0
        self._recent_count = 0
        # (folded, live): totals by (direction, evaluator, policy, verdict), and the counts since
        # the last fold by Decision identity (cheap on the hot path). Replaced as one pair so a
        # scrape sees either the pair before a fold or the pair after it, never a mix.
        self._tally: tuple[dict[tuple[str, str, str, str], int], dict[tuple[int, int, str], list[Any]]] = ({}, {})

    def observe(self, packet: Packet, judgement: Judgement, accepted: bool, elapsed_ns: int) -> None:
        microseconds = elapsed_ns / 1000
        key = (packet.protocol, packet.family)
        histogram = self._process_time.get(key)
        if histogram is None:
            histogram = self._process_time[key] = Histogram(PROCESS_TIME_BUCKETS_US)
        histogram.observe(microseconds)
        counted = (packet.protocol, packet.family, accepted)
        self._packets[counted] = self._packets.get(counted, 0) + 1
        if accepted and not judgement.allowed:
            self._would_deny[key] = self._would_deny.get(key, 0) + 1
        index = self._recent_next
        self._recent[index] = microseconds
        self._recent_next = (index + 1) % SUMMARY_WINDOW
        self._recent_sum += microseconds
        self._recent_count += 1
        self._count_decision(0, judgement.egress, judgement.egress_by)
        self._count_decision(1, judgement.ingress, judgement.ingress_by)

    def _count_decision(self, direction: int, decision: Decision, evaluator: str) -> None:
        live = self._tally[1]
        key = (direction, id(decision), evaluator)
        entry = live.get(key)
        if entry is None:
            if len(live) >= DECISIONS_FOLD_AT:
                self._fold()
                live = self._tally[1]
            live[key] = [decision, 1]  # holding the Decision keeps its id unique
        else:
            entry[1] += 1

    def _fold(self) -> None:
        """Move the live counts into the totals by label (packet thread only: the only writer)."""
        folded, live = self._tally
        merged = dict(folded)  # a copy: a scrape may be reading ``folded``
        for key, count in _label_totals(live).items():
            merged[key] = merged.get(key, 0) + count
        self._tally = (merged, {})

    # --------------------------------------------------------------- export

    def collect(self) -> Iterator[Metric]:
        process_time = HistogramMetricFamily(
            PREFIX + "packet_process_time", "Time it has taken to process each packet (microseconds)",
            labels=["protocol", "family"],
        )
        for (protocol, family), histogram in list(self._process_time.items()):
            process_time.add_metric(
                [PROTOCOL_NAMES.get(protocol, str(protocol)), FAMILY_NAMES[family]], histogram.buckets(), histogram.total
            )
        yield process_time

        summary = SummaryMetricFamily(
            PREFIX + "packet_process_duration_microseconds",
            "A summary of the packet processing durations in microseconds.",
        )
        count = self._recent_count
        window = sorted(self._recent[: min(count, SUMMARY_WINDOW)])
        for quantile in QUANTILES:
            value = window[min(len(window) - 1, int(quantile * len(window)))] if window else float("nan")
            summary.samples.append(Sample(summary.name, {"quantile": repr(quantile)}, value))
        summary.add_metric([], count_value=count, sum_value=self._recent_sum)
        yield summary

        packets = _counter(PREFIX + "packet_count", "Number of packets", ["protocol", "family", "verdict"])
        for (protocol, family, accepted), value in list(self._packets.items()):
            packets.add_sample(PREFIX + "packet_count", {
                "protocol": PROTOCOL_NAMES.get(protocol, str(protocol)),
                "family": FAMILY_NAMES[family],
                "verdict": "accept" if accepted else "drop",
            }, value)
        yield packets

        would_deny = _counter(
            PREFIX + "audit_would_deny_count",
            "Packets accepted in audit mode that the policies deny", ["protocol", "family"],
        )
        for (protocol, family), value in list(self._would_deny.items()):
            would_deny.add_sample(PREFIX + "audit_would_deny_count", {
                "protocol": PROTOCOL_NAMES.get(protocol, str(protocol)), "family": FAMILY_NAMES[family],
            }, value)
        yield would_deny

        yield self._decision_counter()

    def _decision_counter(self) -> Metric:
        """Verdicts by deciding evaluator and policy: the top policies by count, the rest as "(other)"."""
        name = PREFIX + "verdicts_by_policy"
        metric = _counter(name, "Judged connections by direction, deciding evaluator, policy and verdict "
                                f"(the {self.top_policies} busiest policies; the rest as {OTHER_POLICIES})",
                          ["direction", "evaluator", "policy", "verdict"])
        folded, live = self._tally
        totals = dict(folded)
        for key, count in _label_totals(live).items():
            totals[key] = totals.get(key, 0) + count
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


def _label_totals(live: dict[tuple[int, int, str], list[Any]]) -> dict[tuple[str, str, str, str], int]:
    """Counts by Decision identity summed by (direction, evaluator, policy, verdict)."""
    totals: dict[tuple[str, str, str, str], int] = {}
    for (direction, _, evaluator), (decision, count) in list(live.items()):
        verdict = "allow" if decision.verdict is Verdict.ACCEPT else "deny"
        key = ("egress" if direction == 0 else "ingress", evaluator or "(none)", decision.policy or "(none)", verdict)
        totals[key] = totals.get(key, 0) + count
    return totals


class AgentCollector(Collector):
    """Everything the agent exports, gathered at scrape time."""

    def __init__(
        self,
        verdicts: VerdictMetrics,
        invalid_objects: Callable[[], dict[str, int]],
        managed_ips: Callable[[], tuple[int, int]],
        cache_stats: Callable[[], tuple[int, int]],
        queue_stats: Callable[[], list[QueueStats]] = read_nfqueue_stats,
        verdict_errors: Callable[[], int] = lambda: 0,
        decision_log_stats: Callable[[], dict[str, int]] | None = None,
    ) -> None:
        self.verdicts = verdicts
        self._invalid_objects = invalid_objects
        self._managed_ips = managed_ips
        self._cache_stats = cache_stats
        self._queue_stats = queue_stats
        self._verdict_errors = verdict_errors
        self._decision_log_stats = decision_log_stats
        self.sync_duration = Histogram(LATENCY_BUCKETS_S)
        self.sync_errors = 0
        self.apply_latency = Histogram(LATENCY_BUCKETS_S)
        self.started = time.time()

    def record_sync(self, seconds: float, ok: bool) -> None:
        self.sync_duration.observe(seconds)
        if not ok:
            self.sync_errors += 1

    def record_apply_latency(self, seconds: float) -> None:
        self.apply_latency.observe(seconds)

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

        invalid = _counter(PREFIX + "invalid_objects", "Objects ignored because they cannot be enforced, by kind", ["kind"])
        for kind, count in sorted(self._invalid_objects().items()):
            invalid.add_sample(PREFIX + "invalid_objects", {"kind": kind}, count)
        yield invalid

        for name, help_text, histogram in (
            ("dataplane_sync_duration_seconds", "Time to bring the nftables sets and rules in line with the managed pods", self.sync_duration),
            ("policy_apply_latency_seconds", "Time from a change reaching the agent to the dataplane enforcing it", self.apply_latency),
        ):
            family = HistogramMetricFamily(PREFIX + name, help_text)
            family.add_metric([], histogram.buckets(), histogram.total)
            yield family
        errors = _counter(PREFIX + "dataplane_sync_errors", "Dataplane syncs that failed (retried)", [])
        errors.add_sample(PREFIX + "dataplane_sync_errors", {}, self.sync_errors)
        yield errors

        packet_errors = _counter(PREFIX + "packet_errors", "Packets that could not be parsed or judged; they got the fail-open/fail-closed verdict", [])
        packet_errors.add_sample(PREFIX + "packet_errors", {}, self._verdict_errors())
        yield packet_errors

        if self._decision_log_stats is not None:
            records = _counter(PREFIX + "decision_records", "Decision records by fate (written, or dropped: rate_limited, queue_full, write_error)", ["result"])
            for result, count in sorted(self._decision_log_stats().items()):
                records.add_sample(PREFIX + "decision_records", {"result": result}, count)
            yield records

        managed = GaugeMetricFamily(PREFIX + "managed_pod_ips", "Pod addresses whose traffic is sent to the queue", labels=["family"])
        v4, v6 = self._managed_ips()
        managed.add_metric(["IPv4"], v4)
        managed.add_metric(["IPv6"], v6)
        yield managed

        hits, misses = self._cache_stats()
        cache = _counter(PREFIX + "verdict_cache", "Verdict cache lookups by result", ["result"])
        cache.add_sample(PREFIX + "verdict_cache", {"result": "hit"}, hits)
        cache.add_sample(PREFIX + "verdict_cache", {"result": "miss"}, misses)
        yield cache

        info = GaugeMetricFamily(PREFIX + "build_info", "Build information", labels=["version", "python"])
        import platform

        info.add_metric([__version__, platform.python_version()], 1)
        yield info
