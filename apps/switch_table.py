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
    adds: dict[int, FlowEntry] = {c: e for c, e in new.own.items() if c not in old.own}
    deletes: set[int] = {c for c in old.own if c not in new.own}
    for key in new.groups.keys() | old.groups.keys():
        before, after = old.groups.get(key, EMPTY), new.groups.get(key, EMPTY)
        if before is after:
            continue
        pair = (id(before), id(after))
        cached = memo.get(pair) if memo is not None else None
        if cached is None or cached[0] is not before or cached[1] is not after:
            added = [e for c, e in after.items() if c not in before]
            removed = [c for c in before if c not in after]
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
