"""Diff a switch's desired flow table against what it actually holds: only the difference is sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from apps.flows import FlowEntry, is_ours
from apps.switch_table import SwitchTable, diff_tables

# Group diffs are the same on every switch that shares the groups: computed once per change.
_GROUP_DIFFS: dict = {}
_GROUP_DIFFS_LIMIT = 1024


def _order(adds) -> list[FlowEntry]:
    return sorted(adds, key=lambda e: (-e.table, -e.priority, e.cookie))


@dataclass
class Plan:
    """The flow-mods that bring one switch from its actual table to the desired one."""

    adds: list[FlowEntry] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)  # cookies
    deferred_deletes: int = 0
    target: Mapping[int, FlowEntry] | None = None  # the desired table this plan reaches

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
class SwitchSync:
    """What the controller knows a switch holds (cookies of our flows, with their slot when
    known), and whether it has read the switch's table since it connected.

    Adding an entry to an occupied slot replaces the old entry on the switch, so the old
    cookie is forgotten here too; otherwise a later plan could believe it is still there."""

    installed: dict[int, tuple | None] = field(default_factory=dict)  # cookie -> slot
    synced: bool = False
    settle_until: float = 0.0  # before this, stale flows are kept (the model may still be learning)
    connected_at: float = 0.0
    converge_seconds: float | None = None  # connect to first converged table (barrier reply)
    converge_xid: int | None = None
    audited_after_settle: bool = False
    _by_slot: dict[tuple, int] = field(default_factory=dict)

    # The desired table the switch was last brought to exactly (installed == its cookies). While
    # that holds, the next plan diffs the two desired tables, looking only at what changed.
    last: Mapping[int, FlowEntry] | None = None

    def set_actual(self, cookies: set[int], known: Mapping[int, FlowEntry]) -> None:
        """The switch's table as read back: cookies, with slots for the entries we know."""
        self.installed = {c: (known[c].slot if c in known else None) for c in cookies}
        self._by_slot = {slot: c for c, slot in self.installed.items() if slot is not None}
        self.synced = True
        self.last = None

    def next_plan(self, desired: Mapping[int, FlowEntry], now: float) -> Plan:
        if self.last is not None:
            if desired is self.last:
                return Plan(target=desired)
            if isinstance(desired, SwitchTable) and isinstance(self.last, SwitchTable):
                if len(_GROUP_DIFFS) > _GROUP_DIFFS_LIMIT:
                    _GROUP_DIFFS.clear()
                adds, deletes = diff_tables(self.last, desired, _GROUP_DIFFS)
                return Plan(_order(adds), [c for c in deletes if is_ours(c)], 0, desired)
        result = plan(desired, set(self.installed), allow_deletes=now >= self.settle_until)
        result.target = desired
        return result

    def applied(self, result: Plan) -> None:
        for entry in result.adds:
            replaced = self._by_slot.get(entry.slot)
            if replaced is not None and replaced != entry.cookie:
                self.installed.pop(replaced, None)
            self._by_slot[entry.slot] = entry.cookie
            self.installed[entry.cookie] = entry.slot
        for cookie in result.deletes:
            slot = self.installed.pop(cookie, None)
            if slot is not None and self._by_slot.get(slot) == cookie:
                del self._by_slot[slot]
        # Exactly at the target only if nothing stale was kept back.
        self.last = result.target if result.deferred_deletes == 0 else None
