"""A switch's desired table as its own entries plus shared groups, so that large fabrics are cheap.

Many switches hold the same entries: the ARP responders and classify entries of one identity,
every switch behind the same port the same route to a hypervisor's VMs. A group is one
immutable mapping (cookie -> entry) built once by the compiler (apps/compiler.py) and shared by
every switch that holds it; when nothing it depends on changed, the next compile hands out the
very same object, and the reconciler skips it without looking inside."""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from types import MappingProxyType

from apps.flows import FlowEntry

Group = Mapping[int, FlowEntry]
EMPTY: Group = MappingProxyType({})


class SwitchTable(Mapping[int, FlowEntry]):
    """Mapping cookie -> entry over `own` and the groups (disjoint by construction)."""

    __slots__ = ("own", "groups", "_index")

    def __init__(self, own: Mapping[int, FlowEntry], groups: Mapping[Hashable, Group] | None = None) -> None:
        self.own = own
        self.groups = dict(groups or {})
        self._index: dict[int, FlowEntry] | None = None

    def _lookup(self) -> Mapping[int, FlowEntry]:
        """A flat index, built on the first lookup: diffs never need it, full plans do."""
        if self._index is None:
            index = dict(self.own)
            for group in self.groups.values():
                index.update(group)
            self._index = index
        return self._index

    def __getitem__(self, cookie: int) -> FlowEntry:
        return self._lookup()[cookie]

    def __contains__(self, cookie: object) -> bool:
        return cookie in self._lookup()

    def __iter__(self) -> Iterator[int]:
        yield from self.own
        for group in self.groups.values():
            yield from group

    def __len__(self) -> int:
        return len(self.own) + sum(len(g) for g in self.groups.values())

    def __repr__(self) -> str:
        return f"SwitchTable({len(self.own)} own, {len(self.groups)} groups, {len(self)} entries)"


def diff_tables(old: SwitchTable, new: SwitchTable, memo: dict | None = None) -> tuple[list[FlowEntry], list[int]]:
    """Entries to add and cookies to delete to go from `old` to `new`, looking only at what
    changed: own entries, and groups that are not the same object as before. Group diffs are
    memoised by object pair, since the same change repeats on every switch sharing the group."""
    if new.own is old.own:
        adds: dict[int, FlowEntry] = {}
        deletes: set[int] = set()
    else:
        adds = {c: e for c, e in new.own.items() if c not in old.own}
        deletes = set(_not_refilled([e for c, e in old.own.items() if c not in new.own], adds.values()))
    old_groups = old.groups
    pairs = [(old_groups.get(k, EMPTY), g) for k, g in new.groups.items() if old_groups.get(k) is not g]
    pairs += [(g, EMPTY) for k, g in old_groups.items() if k not in new.groups]
    for before, after in pairs:
        pair = (id(before), id(after))
        cached = memo.get(pair) if memo is not None else None
        if cached is None or cached[0] is not before or cached[1] is not after:
            added = [e for c, e in after.items() if c not in before]
            removed = _not_refilled([e for c, e in before.items() if c not in after], added)
            cached = (before, after, added, removed)
            if memo is not None:
                memo[pair] = cached
        for entry in cached[2]:
            adds[entry.cookie] = entry
        deletes.update(cached[3])
    # An entry that moved between own and a group (or between groups) is neither.
    moved = deletes & adds.keys()
    for cookie in moved:
        del adds[cookie]
    deletes -= moved
    # Own entries and groups never share a cookie (the compiler builds them apart), so what is
    # left is exactly the difference, without a lookup in either whole table.
    return list(adds.values()), sorted(deletes)


def _not_refilled(removed: list[FlowEntry], added) -> list[int]:
    """The cookies of the removed entries whose slot no added entry takes: an add to an occupied
    slot replaces what was there (OpenFlow 1.3, OFPFC_ADD), so deleting the old cookie afterwards
    is a flow-mod that finds nothing. A changed route is then one flow-mod, not two."""
    if not removed:
        return []
    slots = {e.slot for e in added}
    if not slots:
        return [e.cookie for e in removed]
    return [e.cookie for e in removed if e.slot not in slots]
