"""Reading a /metrics answer the way Prometheus does: prometheus_client's own parser, then sums
over label sets (a per-switch counter's total is the sum of its switches' series)."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def families(text: str) -> dict:
    """Family name (a counter's without `_total`) -> Metric, with its type and samples."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def total(text: str, name: str) -> float:
    """The sum of every series named `name` (0 when there is none), e.g. goldilocks_packet_ins_total."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples if s.name == name)


def value(text: str, name: str, **labels: str) -> float | None:
    """The series named `name` with exactly these labels, or None."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def series(text: str, name: str) -> list[dict[str, str]]:
    """The label sets of every series named `name`."""
    return [s.labels for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]
