"""The audit log: who changed what, when, on which target, with a one-line summary (never a secret)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime

from apps.inventory import VM
from apps.policy import Rule
from controller.store import AuditEntry, Store

MAX_PAGE = 1000
DEFAULT_PAGE = 100


def record(store: Store, actor: str, action: str, target: str, summary: str) -> None:
    """Add an entry; call inside the transaction that makes the change."""
    store.add_audit(time.time(), actor, action, target, summary)


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def entry_json(entry: AuditEntry) -> dict:
    return {
        "id": entry.id,
        "time": iso_time(entry.at),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "summary": entry.summary,
    }


def labels_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "(none)"


def describe_vm(vm: VM) -> str:
    return f"macs {','.join(vm.macs)}; ips {','.join(vm.ips) or '(none)'}; labels {labels_text(vm.label_map)}"


def describe_rule(rule: Rule, position: int) -> str:
    services = ",".join(str(s) for s in rule.services)
    return f"#{position}: {rule.src} -> {rule.dst} [{services}] {rule.action}"


def describe_label_change(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    changed = {k: v for k, v in after.items() if before.get(k) != v}
    removed = sorted(before.keys() - after.keys())
    parts = []
    if changed:
        parts.append(f"set {labels_text(changed)}")
    if removed:
        parts.append(f"removed {','.join(removed)}")
    return "; ".join(parts) or "no change"
