"""Reading a /metrics text the way Prometheus reads it: names and types as written.

prometheus_client's parser turns a counter into its OpenMetrics shape: a sample
written ``kube_network_policies_packet_count`` comes back as ``..._count_total``.
Tests must see what Prometheus stores, so sample names are given back as the
text has them and types are those of the ``# TYPE`` lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

_TYPE_LINE = re.compile(r"^# TYPE (\S+) (\S+)$", re.MULTILINE)
_SAMPLE_NAME = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", re.MULTILINE)


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Family:
    """One family under the name of its ``# TYPE`` line."""

    name: str
    type: str  # as written: counter, gauge, histogram, summary, untyped
    samples: tuple[Sample, ...]


def type_lines(text: str) -> dict[str, str]:
    """Family name -> type, from the ``# TYPE`` lines."""
    return dict(_TYPE_LINE.findall(text))


def parse_metrics(text: str) -> dict[str, Family]:
    """Every family of ``text`` by the name of its TYPE line, its samples named as written."""
    written_names = set(_SAMPLE_NAME.findall(text))
    types = type_lines(text)
    families: dict[str, Family] = {}
    for parsed in text_string_to_metric_families(text):
        samples = tuple(Sample(_as_written(s.name, written_names), dict(s.labels), s.value) for s in parsed.samples)
        name = parsed.name if parsed.name in types else parsed.name + "_total"
        if name not in types:
            raise ValueError(f"family {parsed.name!r} has no TYPE line")
        if name in families:
            raise ValueError(f"family {name!r} appears twice: its samples do not follow its TYPE line's name")
        families[name] = Family(name, types[name], samples)
    return families


def _as_written(name: str, written: set[str]) -> str:
    if name not in written and name.endswith("_total") and name[: -len("_total")] in written:
        return name[: -len("_total")]
    return name
