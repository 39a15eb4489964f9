"""Diff a switch's desired flow table against what it actually holds: only the difference is sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from operator import attrgetter

from apps.flows import FlowEntry, is_ours
from apps.switch_table import SwitchTable, diff_tables

# A refused add is retried after these waits (the last repeats): a full table may free up, and a
# refusal that never goes away costs one flow-mod every half minute, reported all along.
RETRY_BACKOFF = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)

_BY_INSTALL_ORDER = attrgetter("install_order")


def _order(adds) -> list[FlowEntry]:
    """Highest table first, then highest priority, then cookie: one sort on an integer each entry
    carries (FlowEntry.install_order)."""
    return sorted(adds, key=_BY_INSTALL_ORDER)


@dataclass
class Plan:
    """The flow-mods that bring one switch from its actual table to the desired one."""

    adds: list[FlowEntry] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)  # cookies
    deferred_deletes: int = 0
    target: Mapping[int, FlowEntry] | None = None  # the desired table this plan reaches
    withheld: int = 0  # refused adds waiting for their retry time

    def __bool__(self) -> bool:
        return bool(self.adds or self.deletes)


def plan(desired: Mapping[int, FlowEntry], actual: set[int], allow_deletes: bool = True) -> Plan:
    """Adds go downstream tables first, so a frame admitted by a new ingress entry always finds
    its way on; deletes follow the adds, so a replaced entry never leaves a gap."""
    adds = _order(e for c, e in desired.items() if c not in actual)
    stale = sorted(c for c in actual if c not in desired and is_ours(c))
    if not allow_deletes:
        return Plan(adds, [], len(stale))
    return Plan(adds, stale, 0)


@dataclass
class Refusal:
    """An entry the switch refused (an OpenFlow error naming its flow-mod), until it is installed or
    no longer wanted."""

    entry: FlowEntry
    error: str
    attempts: int
    first_at: float
    retry_at: float


@dataclass
class SwitchSync:
    """What the controller knows a switch holds (cookies of our flows, with their slot when
    known), and whether it has read the switch's table since it connected.

    Adding an entry to an occupied slot replaces the old entry on the switch, so the old
    cookie is forgotten here too; otherwise a later plan could believe it is still there."""

    synced: bool = False
    settle_until: float = 0.0  # before this, stale flows are kept (the model may still be learning)
    connected_at: float = 0.0
    converge_seconds: float | None = None  # connect to first converged table (barrier reply)
    converge_xid: int | None = None
    audited_after_settle: bool = False
    _by_slot: dict[tuple, int] = field(default_factory=dict)
    # Flow-mods sent and not yet confirmed, by xid, and the xids each barrier confirms once answered
    # without an error for them in between (a switch answers messages in order, errors included).
    inflight: dict[int, tuple[str, FlowEntry | int]] = field(default_factory=dict)
    barriers: dict[int, tuple[float, list[int]]] = field(default_factory=dict)  # xid -> (sent at, flow-mod xids)
    refusals: dict[int, Refusal] = field(default_factory=dict)  # cookie -> refusal
    reading_back: bool = False  # a read of its table was asked for after a refusal

    # The desired table the switch was last brought to exactly (installed == its cookies). While
    # that holds, the next plan diffs the two desired tables, looking only at what changed.
    last: Mapping[int, FlowEntry] | None = None
    # cookie -> slot of what the switch holds. While the switch sits exactly at a desired table, it
    # is kept as that table plus the few entries not ours (_lazy), and written out only when asked
    # for: a plan that reaches its target then costs nothing per entry here.
    _installed: dict[int, tuple | None] = field(default_factory=dict, repr=False)
    _lazy: tuple[Mapping[int, FlowEntry], dict[int, tuple | None]] | None = field(default=None, repr=False)

    @property
    def installed(self) -> dict[int, tuple | None]:
        if self._lazy is not None:
            target, foreign = self._lazy
            self._lazy = None
            installed = {c: e.slot for c, e in target.items()}
            installed.update(foreign)
            self._installed = installed
            self._by_slot = {slot: c for c, slot in installed.items() if slot is not None}
        return self._installed

    @installed.setter
    def installed(self, value: dict[int, tuple | None]) -> None:
        self._lazy = None
        self._installed = value

    def held(self) -> int:
        """How many entries the switch holds, without writing the books out."""
        if self._lazy is not None:
            return len(self._lazy[0]) + len(self._lazy[1])
        return len(self._installed)

    def set_actual(self, cookies: set[int], known: Mapping[int, FlowEntry]) -> None:
        """The switch's table as read back: cookies, with slots for the entries we know."""
        self.installed = {c: (known[c].slot if c in known else None) for c in cookies}
        self._by_slot = {slot: c for c, slot in self.installed.items() if slot is not None}
        self.synced = True
        self.last = None

    def next_plan(self, desired: Mapping[int, FlowEntry], now: float, memo: dict | None = None) -> Plan:
        """The flow-mods from what the switch holds to `desired`. `memo` (the caller's, one per
        compile) keeps group diffs: the same group change repeats on every switch sharing it."""
        result = self._next_plan(desired, now, memo)
        if self.refusals:
            for cookie in [c for c in self.refusals if c not in desired]:
                del self.refusals[cookie]  # no longer wanted: nothing to retry or report
            waiting = {c for c, r in self.refusals.items() if r.retry_at > now}
            if waiting:
                kept = [e for e in result.adds if e.cookie not in waiting]
                result.withheld = len(result.adds) - len(kept)
                result.adds = kept
        return result

    def _next_plan(self, desired: Mapping[int, FlowEntry], now: float, memo: dict | None) -> Plan:
        if self.last is not None:
            if desired is self.last:
                return Plan(target=desired)
            if isinstance(desired, SwitchTable) and isinstance(self.last, SwitchTable):
                adds, deletes = diff_tables(self.last, desired, memo)
                return Plan(_order(adds), [c for c in deletes if is_ours(c)], 0, desired)
        result = plan(desired, set(self.installed), allow_deletes=now >= self.settle_until)
        result.target = desired
        return result

    def applied(self, result: Plan) -> None:
        exact = result.target is not None and result.deferred_deletes == 0 and result.withheld == 0
        if exact and self._lazy is not None:
            # From one desired table exactly to the next: the books are the new table (plus the
            # entries not ours that no add replaced).
            foreign = self._lazy[1]
            if foreign and result.adds:
                taken = {e.slot for e in result.adds}
                foreign = {c: s for c, s in foreign.items() if s not in taken}
            self._lazy = (result.target, foreign)
            self.last = result.target
            return
        installed = self.installed
        for entry in result.adds:
            replaced = self._by_slot.get(entry.slot)
            if replaced is not None and replaced != entry.cookie:
                installed.pop(replaced, None)
            self._by_slot[entry.slot] = entry.cookie
            installed[entry.cookie] = entry.slot
        for cookie in result.deletes:
            slot = installed.pop(cookie, None)
            if slot is not None and self._by_slot.get(slot) == cookie:
                del self._by_slot[slot]
        # Exactly at the target only if nothing stale or refused was kept back.
        self.last = result.target if exact else None
        if exact:
            self._lazy = (result.target, {c: s for c, s in installed.items() if not is_ours(c)})

    # -- what the switch did with them ------------------------------------------------------------
    def sent(self, xid: int, kind: str, item: FlowEntry | int) -> None:
        """A flow-mod went out: ("add", entry) or ("delete", cookie)."""
        self.inflight[xid] = (kind, item)

    def barrier_sent(self, barrier_xid: int, xids: list[int], now: float = 0.0) -> None:
        """A barrier went out after the flow-mods `xids`."""
        if xids:
            self.barriers[barrier_xid] = (now, xids)

    def unconfirmed_since(self) -> float | None:
        """When the oldest batch of flow-mods the switch has not confirmed yet was sent (None: all
        confirmed). Until then it may still be working through them."""
        return min((sent for sent, _ in self.barriers.values()), default=None)

    def working(self, now: float, at_least: float, min_rate: float) -> bool:
        """Is the switch still working through flow-mods it has not confirmed? For `at_least`
        seconds after the oldest unconfirmed batch was sent, and longer for a big backlog: as long
        as it takes at `min_rate` flow-mods a second (a leaf given 20,000 routes at once, behind a
        spine given as many, is slow, not broken). After that it is taken for broken."""
        since = self.unconfirmed_since()
        if since is None:
            return False
        backlog = sum(len(xids) for _, xids in self.barriers.values())
        return now - since < max(at_least, backlog / min_rate)

    def barrier_answered(self, barrier_xid: int) -> list[FlowEntry]:
        """Everything sent before the barrier that was not refused is in place; returns the refused
        entries that now went in on a retry."""
        healed = []
        _, xids = self.barriers.pop(barrier_xid, (None, ()))
        for xid in xids:
            item = self.inflight.pop(xid, None)
            if item is not None and item[0] == "add":
                refusal = self.refusals.pop(item[1].cookie, None)
                if refusal is not None:
                    healed.append(refusal.entry)
        return healed

    def refused(self, xid: int, error: str, now: float) -> Refusal | None:
        """The switch answered the flow-mod `xid` with an error. An add is not believed installed
        and is retried after a backoff; a delete is retried at the next plan. None: not ours."""
        item = self.inflight.pop(xid, None)
        if item is None:
            return None
        kind, what = item
        self.last = None  # the next plan compares with what is really there
        if kind == "delete":
            self.installed.setdefault(what, None)
            return None
        entry = what
        if self.installed.get(entry.cookie, ()) == entry.slot:
            del self.installed[entry.cookie]
            if self._by_slot.get(entry.slot) == entry.cookie:
                del self._by_slot[entry.slot]
        before = self.refusals.get(entry.cookie)
        attempts = before.attempts + 1 if before else 1
        wait = RETRY_BACKOFF[min(attempts, len(RETRY_BACKOFF)) - 1]
        refusal = Refusal(entry, error, attempts, before.first_at if before else now, now + wait)
        self.refusals[entry.cookie] = refusal
        return refusal
