"""The audit log: who changed what, when, on which target, with a one-line summary (never a secret)."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Mapping
from datetime import UTC, datetime

from apps.inventory import VM
from apps.policy import Rule
from controller.store import AuditEntry, StateError, Store

LOG = logging.getLogger("goldilocks.audit")

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


# Audit entries purged per run, at most: about 1 ms of the event loop (9 ms at worst, measured on a
# log of a million entries), so a backlog of ten million takes about 1.4 hours of ticks to clear.
PURGE_BATCH = 2000
PURGE_INTERVAL = 3600.0  # seconds between runs once nothing is left to purge


class Retention:
    """Keeps the audit log to its last `days` days (0: forever). `run` is called at start and on
    every tick: it purges one bounded batch when due, at once again while a backlog remains
    (one batch a tick), else an hour later, so a huge old log never stalls the controller."""

    def __init__(self, store: Store, days: float, batch: int = PURGE_BATCH) -> None:
        self.store, self.days, self.batch = store, days, batch
        self._due = -float("inf")
        self._purging = 0  # entries purged so far in this pass, logged when it ends

    def run(self, now: float) -> int:
        """Purge if due at `now` (a time.time()); return how many entries went."""
        # A wall clock stepped back by more than an interval would otherwise postpone the next run.
        if self.days <= 0 or self._due - PURGE_INTERVAL <= now < self._due:
            return 0
        self._due = now + PURGE_INTERVAL
        try:
            purged = self.store.purge_audit(now - self.days * 86400.0, self.batch)
        except (StateError, sqlite3.Error) as exc:  # a full disk, say: the controller goes on, and so does the log
            LOG.warning("audit log: purging entries older than %g days failed (%s); next try in an hour", self.days, exc)
            return 0
        self._purging += purged
        if purged == self.batch:
            self._due = now
        else:
            if self._purging:
                LOG.info("audit log: purged %d entries older than %g days", self._purging, self.days)
            self._purging = 0
        return purged
