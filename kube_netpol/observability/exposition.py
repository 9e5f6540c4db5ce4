"""The Prometheus text format (0.0.4) of a registry, with counters named as the reference names them.

prometheus_client follows OpenMetrics: a counter's HELP and TYPE lines always
carry a ``_total`` suffix, so a counter named ``kube_network_policies_packet_count``
cannot be written as the Go client (and so the reference implementation) writes it::

    # TYPE kube_network_policies_packet_count counter
    kube_network_policies_packet_count{...} 42

Here a counter whose samples carry the family's own name is written that way;
every other family (histograms, gauges, the process and GC collectors' ``..._total``
counters) is written by prometheus_client's own ``generate_latest``.
"""

from __future__ import annotations

from typing import Iterable

from prometheus_client import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: What the text is; the Go client answers the same.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def generate_text(registry: Collector) -> bytes:
    """Every family ``registry`` collects, in the text format."""
    parts: list[bytes] = []
    for metric in registry.collect():
        if _named_like_go(metric):
            parts.append(_go_counter(metric).encode("utf-8"))
        else:
            parts.append(generate_latest(_Only(metric)))
    return b"".join(parts)


def _named_like_go(metric: Metric) -> bool:
    return metric.type == "counter" and all(sample.name == metric.name for sample in metric.samples)


def _go_counter(metric: Metric) -> str:
    help_text = metric.documentation.replace("\\", r"\\").replace("\n", r"\n")
    lines = [f"# HELP {metric.name} {help_text}\n", f"# TYPE {metric.name} counter\n"]
    for sample in metric.samples:
        labels = ",".join(f'{name}="{_escape_label_value(value)}"' for name, value in sorted(sample.labels.items()))
        timestamp = "" if sample.timestamp is None else f" {int(float(sample.timestamp) * 1000)}"
        value = floatToGoString(sample.value)  # type: ignore[no-untyped-call]
        lines.append(f"{metric.name}{{{labels}}} {value}{timestamp}\n" if labels else f"{metric.name} {value}{timestamp}\n")
    return "".join(lines)


def _escape_label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Only:
    """One family as a collector, for ``generate_latest``."""

    def __init__(self, metric: Metric) -> None:
        self._metric = metric

    def collect(self) -> Iterable[Metric]:
        return [self._metric]
