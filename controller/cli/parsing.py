"""Pure parsing of what an operator types: durations, times, label changes, key=value pairs."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(?:(\d+)([smhdw]))+")
_PART = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> timedelta:
    """`90s`, `10m`, `2h`, `1d`, `1w` or combinations such as `1h30m`. A bare number is refused:
    minutes or seconds would be a guess."""
    compact = text.strip().lower()
    if not compact or not _DURATION.fullmatch(compact):
        raise ValueError(f"{text!r} is not a duration like 30s, 10m, 2h, 1d or 1h30m")
    return timedelta(seconds=sum(int(n) * _UNITS[unit] for n, unit in _PART.findall(compact)))


def parse_time(text: str) -> datetime:
    """An ISO 8601 time (`2026-11-30`, `2026-11-30T10:00`, `...Z`, `...+01:00`); without a zone, UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO time like 2026-11-30T10:00:00Z") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def parse_since(text: str, now: datetime) -> datetime:
    """`--since`: a duration back from now, or an absolute ISO time."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (10m, 2h, 1d) nor an ISO time (2026-11-30T10:00:00Z)") from None


def parse_api_time(text: str) -> datetime:
    """The API's times: ISO 8601 UTC with milliseconds and a Z."""
    return datetime.fromisoformat(text)


def parse_label_changes(args: tuple[str, ...] | list[str]) -> tuple[dict[str, str], list[str]]:
    """kubectl style: `key=value` sets (`key=` sets an empty value), `key-` removes. A key both
    set and removed, or set twice to different values, is refused here; the API checks the rest."""
    to_set: dict[str, str] = {}
    to_remove: list[str] = []
    for arg in args:
        if "=" in arg:
            key, value = arg.split("=", 1)
            if not key:
                raise ValueError(f"{arg!r}: no label key before '='")
            if key in to_set and to_set[key] != value:
                raise ValueError(f"{key!r} is set twice")
            to_set[key] = value
        elif arg.endswith("-") and len(arg) > 1:
            if arg[:-1] not in to_remove:
                to_remove.append(arg[:-1])
        else:
            raise ValueError(f"{arg!r}: give key=value to set a label or key- to remove it")
    both = sorted(set(to_set) & set(to_remove))
    if both:
        raise ValueError(f"{both[0]!r} is both set and removed")
    return to_set, to_remove


def parse_labels(args: tuple[str, ...] | list[str]) -> dict[str, str]:
    """`--label key=value`, repeated: a whole label map."""
    labels: dict[str, str] = {}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ValueError(f"{arg!r} is not key=value")
        if key in labels and labels[key] != value:
            raise ValueError(f"{key!r} is given twice")
        labels[key] = value
    return labels
