"""The CLI's parsing of what an operator types: durations, --since, label changes."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from controller.cli.parsing import parse_duration, parse_label_changes, parse_labels, parse_since, parse_time

NOW = datetime(2026, 12, 1, 10, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text, seconds",
    [("30s", 30), ("10m", 600), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("1h30m", 5400), (" 2H ", 7200), ("0s", 0)],
)
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "10", "m", "10 m", "1.5h", "-1h", "10x", "h1", "1h-"])
def test_what_is_not_a_duration_is_refused_with_the_text(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)


def test_any_sum_of_units_reads_back():
    rng = random.Random(11)
    units = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
    for _ in range(200):
        parts = {u: rng.randrange(0, 100) for u in units if rng.random() < 0.6} or {"s": 1}
        text = "".join(f"{n}{u}" for u, n in parts.items())
        assert parse_duration(text).total_seconds() == sum(n * units[u] for u, n in parts.items())


def test_since_is_a_duration_back_from_now_or_an_iso_time():
    assert parse_since("10m", NOW) == NOW - timedelta(minutes=10)
    assert parse_since("2026-11-30T10:00:00Z", NOW) == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_since("2026-11-30T11:00:00+01:00", NOW) == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_since("2026-11-30", NOW) == datetime(2026, 11, 30, tzinfo=UTC)  # no zone: UTC
    with pytest.raises(ValueError, match="neither a duration"):
        parse_since("yesterday", NOW)
    with pytest.raises(ValueError):
        parse_time("30/11/2026")


def test_label_changes_in_kubectl_style():
    assert parse_label_changes(["tier=web", "canary-", "note="]) == ({"tier": "web", "note": ""}, ["canary"])
    assert parse_label_changes(["a=b=c"]) == ({"a": "b=c"}, [])  # the value is everything after the first '='
    assert parse_label_changes(["x-", "x-"]) == ({}, ["x"])
    for bad, message in ((["tier"], "key=value"), (["=v"], "no label key"), (["a=1", "a=2"], "set twice"),
                         (["a=1", "a-"], "both set and removed"), (["-"], "key=value")):  # fmt: skip
        with pytest.raises(ValueError, match=message):
            parse_label_changes(bad)


def test_a_label_map_from_repeated_options():
    assert parse_labels(["tier=web", "tenant=blue", "empty="]) == {"tier": "web", "tenant": "blue", "empty": ""}
    assert parse_labels([]) == {}
    for bad in (["tier"], ["=web"], ["a=1", "a=2"]):
        with pytest.raises(ValueError):
            parse_labels(bad)
