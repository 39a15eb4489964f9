"""An immutable mapping whose versions share all but what changed: setting or deleting one key costs
O(log n), not a copy of n entries, and the keys that differ between two versions of one lineage are
found in time proportional to the difference.

A hash trie, as in Clojure's maps and CPython's contextvars (HAMT): a node is a leaf (a dict of at
most LEAF_MAX entries, never changed once built) or a branch (a tuple of 32 children, chosen by the
next five bits of the key's hash). A change copies the leaf it lands in and the branches on the way
there; every other node is shared with the version it was made from, so two versions are compared
by skipping the nodes they share."""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from types import MappingProxyType
from typing import Any, TypeVar

K = TypeVar("K")
V = TypeVar("V")

_BITS = 5
_MASK = (1 << _BITS) - 1
LEAF_MAX = 16  # a leaf holding more splits into a branch (while hash bits are left)
_MAX_SHIFT = 60  # hashes are 64 bits: below this depth a leaf just grows (equal hashes)
_EMPTY: Mapping = MappingProxyType({})
_ABSENT = object()


def _build(data: dict, shift: int):
    """A node holding `data` (which it may keep: the caller hands it over)."""
    if len(data) <= LEAF_MAX or shift >= _MAX_SHIFT:
        return data if data else _EMPTY
    buckets: list[dict] = [{} for _ in range(_MASK + 1)]
    for key, value in data.items():
        buckets[(hash(key) >> shift) & _MASK][key] = value
    return tuple(_build(bucket, shift + _BITS) for bucket in buckets)


def _set(node, h: int, shift: int, key, value):
    if type(node) is tuple:
        i = (h >> shift) & _MASK
        return node[:i] + (_set(node[i], h, shift + _BITS, key, value),) + node[i + 1 :]
    leaf = dict(node)
    leaf[key] = value
    return _build(leaf, shift) if len(leaf) > LEAF_MAX else leaf


def _delete(node, h: int, shift: int, key):
    if type(node) is tuple:
        i = (h >> shift) & _MASK
        branch = node[:i] + (_delete(node[i], h, shift + _BITS, key),) + node[i + 1 :]
        # A branch that has shrunk to a few entries becomes one leaf again.
        if all(type(child) is not tuple for child in branch) and sum(map(len, branch)) <= LEAF_MAX // 2:
            merged: dict = {}
            for child in branch:
                merged.update(child)
            return merged if merged else _EMPTY
        return branch
    leaf = dict(node)
    del leaf[key]
    return leaf if leaf else _EMPTY


def _leaves(node) -> Iterator[Mapping]:
    stack = [node]
    while stack:
        node = stack.pop()
        if type(node) is tuple:
            stack.extend(node)
        elif node:
            yield node


def _flat(node) -> Mapping:
    if type(node) is not tuple:
        return node
    merged: dict = {}
    for leaf in _leaves(node):
        merged.update(leaf)
    return merged


def _diff(a, b, out: set) -> None:
    if a is b:
        return
    if type(a) is tuple and type(b) is tuple:
        for x, y in zip(a, b, strict=True):
            if x is not y:
                _diff(x, y, out)
        return
    left, right = _flat(a), _flat(b)
    out.update(k for k, v in left.items() if right.get(k, _ABSENT) is not v)
    out.update(k for k in right if k not in left)


class _Items(ItemsView):
    def __iter__(self):
        for leaf in _leaves(self._mapping._root):
            yield from leaf.items()


class _Values(ValuesView):
    def __iter__(self):
        for leaf in _leaves(self._mapping._root):
            yield from leaf.values()


class PersistentMap(Mapping[K, V]):
    """An immutable mapping; `set` and `delete` return a new version sharing the rest."""

    __slots__ = ("_root", "_len")

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        data = dict(items)
        self._root = _build(data, 0)
        self._len = len(data)

    @classmethod
    def _of(cls, root, length: int) -> PersistentMap[K, V]:
        made = cls.__new__(cls)
        made._root, made._len = root, length
        return made

    def _leaf(self, key) -> Mapping:
        node = self._root
        if type(node) is tuple:
            h, shift = hash(key), 0
            while type(node) is tuple:
                node = node[(h >> shift) & _MASK]
                shift += _BITS
        return node

    def get(self, key, default=None):
        return self._leaf(key).get(key, default)

    def __getitem__(self, key: K) -> V:
        value = self._leaf(key).get(key, _ABSENT)
        if value is _ABSENT:
            raise KeyError(key)
        return value

    def __contains__(self, key) -> bool:
        return key in self._leaf(key)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[K]:
        for leaf in _leaves(self._root):
            yield from leaf

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def set(self, key: K, value: V) -> PersistentMap[K, V]:
        """This map with key set to value (itself when it already holds that very value)."""
        current = self._leaf(key).get(key, _ABSENT)
        if current is value:
            return self
        root = _set(self._root, hash(key), 0, key, value)
        return self._of(root, self._len + (current is _ABSENT))

    def delete(self, key: K) -> PersistentMap[K, V]:
        """This map without key (itself when it has no such key)."""
        if key not in self._leaf(key):
            return self
        return self._of(_delete(self._root, hash(key), 0, key), self._len - 1)

    def changed_keys(self, other: Mapping[K, V]) -> set[K]:
        """The keys held by one of the two maps only, or by both with different values (by
        identity): in time proportional to the difference when other is a version of this map."""
        out: set = set()
        if isinstance(other, PersistentMap):
            _diff(self._root, other._root, out)
        else:
            _diff(self._root, dict(other), out)
        return out

    def __eq__(self, other: object) -> bool:
        if isinstance(other, PersistentMap):
            if self._len != other._len:
                return False
            return all(self.get(k, _ABSENT) == other.get(k, _ABSENT) for k in self.changed_keys(other))
        if isinstance(other, Mapping):
            return dict(self.items()) == dict(other.items())
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"PersistentMap({dict(self.items())!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (dict(self.items()),))
