"""Alerts about VMs from an external IDS, and the thresholds that turn them into a quarantine (as NSX
turns IDS tags into isolation). Pure: the controller feeds alerts in with the time, and is told
whether this one tips the VM into quarantine."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

from apps.errors import FieldError

SEVERITIES = ("low", "medium", "high", "critical")
MAX_TEXT = 200
MAX_KEPT_PER_VM = 1000  # recent alerts kept per VM to count against the threshold


class AlertError(FieldError):
    """An alert that cannot be taken; names the field."""


@dataclass(frozen=True)
class AlertRequest:
    """What an IDS says: which VM (by name, MAC or IPv4 address), how bad, who says so and why."""

    target: str  # as given: a VM name, a MAC or an IPv4 address
    severity: str
    source: str
    signature: str


def check_request(body: object) -> AlertRequest:
    if not isinstance(body, dict):
        raise AlertError("body", "must be a JSON object")
    allowed = {"vm", "severity", "source", "signature"}
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise AlertError(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")
    for name in ("vm", "source", "signature"):
        value = body.get(name)
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_TEXT:
            what = "a VM name, MAC or IPv4 address" if name == "vm" else f"1 to {MAX_TEXT} characters"
            raise AlertError(name, f"required: {what}")
    severity = body.get("severity")
    if severity not in SEVERITIES:
        raise AlertError("severity", f"must be one of {', '.join(SEVERITIES)}")
    return AlertRequest(body["vm"].strip(), severity, body["source"].strip(), body["signature"].strip())


@dataclass(frozen=True)
class Threshold:
    """Quarantine a VM once `count` alerts of at least `severity` arrived for it within `window`
    seconds. severity None: alerts never quarantine by themselves."""

    severity: str | None = "high"
    count: int = 1
    window: float = 300.0

    def __post_init__(self) -> None:
        if self.severity is not None and self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {', '.join(SEVERITIES)} or none")
        if self.count < 1 or self.window <= 0:
            raise ValueError("count must be at least 1 and window positive")

    def describe(self) -> str:
        if self.severity is None:
            return "alerts never quarantine"
        return f"{self.count} alert(s) of severity {self.severity} or worse within {self.window:g} s quarantine"


@dataclass
class AlertBook:
    """Recent alerts per VM, to count against the threshold."""

    threshold: Threshold = field(default_factory=Threshold)
    _recent: dict[str, deque] = field(default_factory=dict)  # VM -> deque of (time, severity)

    def record(self, vm: str, severity: str, now: float) -> bool:
        """Note an alert about `vm`; True when it tips the VM over the threshold."""
        recent = self._recent.setdefault(vm, deque(maxlen=MAX_KEPT_PER_VM))
        recent.append((now, severity))
        threshold = self.threshold
        if threshold.severity is None:
            return False
        floor = SEVERITIES.index(threshold.severity)
        counted = sum(1 for at, sev in recent if now - at <= threshold.window and SEVERITIES.index(sev) >= floor)
        return counted >= threshold.count

    def forget(self, vm: str) -> None:
        """A released VM starts counting afresh."""
        self._recent.pop(vm, None)

    def counts(self) -> Mapping[str, int]:
        return {vm: len(recent) for vm, recent in self._recent.items()}
