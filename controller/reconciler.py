"""Diff a switch's desired flow table against what it actually holds: only the difference is sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from apps.flows import FlowEntry, is_ours


@dataclass
class Plan:
    """The flow-mods that bring one switch from its actual table to the desired one."""

    adds: list[FlowEntry] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)  # cookies
    deferred_deletes: int = 0

    def __bool__(self) -> bool:
        return bool(self.adds or self.deletes)


def plan(desired: dict[int, FlowEntry], actual: set[int], allow_deletes: bool = True) -> Plan:
    """Adds go downstream tables first, so a frame admitted by a new ingress entry always finds
    its way on; deletes follow the adds, so a replaced entry never leaves a gap."""
    adds = sorted((e for c, e in desired.items() if c not in actual), key=lambda e: (-e.table, -e.priority, e.cookie))
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
    probed: bool = False  # LLDP has gone out of its ports since it connected
    _by_slot: dict[tuple, int] = field(default_factory=dict)

    def set_actual(self, cookies: set[int], known: dict[int, FlowEntry]) -> None:
        """The switch's table as read back: cookies, with slots for the entries we know."""
        self.installed = {c: (known[c].slot if c in known else None) for c in cookies}
        self._by_slot = {slot: c for c, slot in self.installed.items() if slot is not None}
        self.synced = True

    def next_plan(self, desired: dict[int, FlowEntry], now: float) -> Plan:
        return plan(desired, set(self.installed), allow_deletes=now >= self.settle_until)

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
