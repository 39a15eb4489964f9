"""Kubernetes-style label selectors: parse `tier=db,env!=dev,zone in (a,b),pci,!quarantined`."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# Kubernetes label syntax: an optional DNS prefix and a name of at most 63 characters.
_NAME = r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
KEY_RE = re.compile(rf"^([a-z0-9]([-a-z0-9.]{{0,251}}[a-z0-9])?/)?{_NAME}$")
VALUE_RE = re.compile(rf"^({_NAME})?$")

ANY = "any"
UNMANAGED = "unmanaged"


class SelectorError(ValueError):
    """A selector that cannot be parsed; the message names the offending part."""


@dataclass(frozen=True)
class Requirement:
    """One clause: key op values. op is one of =, !=, in, notin, exists, !exists."""

    key: str
    op: str
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and labels[self.key] in self.values
        # != and notin match objects without the key too, as in Kubernetes.
        return not present or labels[self.key] not in self.values

    def __str__(self) -> str:
        if self.op == "exists":
            return self.key
        if self.op == "!exists":
            return f"!{self.key}"
        if self.op in ("=", "!="):
            return f"{self.key}{self.op}{self.values[0]}"
        return f"{self.key} {self.op} ({','.join(self.values)})"


@dataclass(frozen=True)
class Selector:
    """`any`, `unmanaged`, or an AND of label requirements (which select managed VMs only)."""

    kind: str  # "any" | "unmanaged" | "labels"
    requirements: tuple[Requirement, ...] = ()

    def __hash__(self) -> int:
        # Selectors key the compiler's caches, asked for every hypervisor: hashed once.
        found = self.__dict__.get("_hash")
        if found is None:
            found = hash((self.kind, self.requirements))
            object.__setattr__(self, "_hash", found)
        return found

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        """labels is None for an unmanaged host (seen on the network, not in the inventory)."""
        if self.kind == ANY:
            return True
        if self.kind == UNMANAGED:
            return labels is None
        return labels is not None and all(r.matches(labels) for r in self.requirements)

    def keys(self) -> frozenset[str]:
        return frozenset(r.key for r in self.requirements)

    def __str__(self) -> str:
        if self.kind != "labels":
            return self.kind
        return ",".join(str(r) for r in self.requirements)


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                raise SelectorError(f"unbalanced ')' in selector {text!r}")
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if depth:
        raise SelectorError(f"unbalanced '(' in selector {text!r}")
    parts.append("".join(current))
    return parts


def _check_key(key: str, clause: str) -> str:
    if not KEY_RE.fullmatch(key):
        raise SelectorError(f"invalid label key {key!r} in {clause!r}")
    return key


def _check_value(value: str, clause: str) -> str:
    if not VALUE_RE.fullmatch(value):
        raise SelectorError(f"invalid label value {value!r} in {clause!r}")
    return value


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def _parse_requirement(clause: str) -> Requirement:
    text = clause.strip()
    if not text:
        raise SelectorError("empty clause in selector (two commas in a row, or a trailing comma)")
    match = _SET_RE.fullmatch(text)
    if match:
        values = tuple(sorted({_check_value(v.strip(), text) for v in match["values"].split(",")}))
        if not any(values):  # `k in (,)` would read back as `k in ()`, which no longer parses
            raise SelectorError(f"empty value list in {text!r}")
        return Requirement(_check_key(match["key"], text), match["op"], values)
    for op in ("!=", "==", "="):
        if op in text:
            key, _, value = text.partition(op)
            return Requirement(_check_key(key.strip(), text), "!=" if op == "!=" else "=", (_check_value(value.strip(), text),))
    if text.startswith("!"):
        return Requirement(_check_key(text[1:].strip(), text), "!exists")
    if " " in text or "(" in text:
        raise SelectorError(f"cannot parse {text!r}: expected key, !key, key=value, key!=value, key in (...) or key notin (...)")
    return Requirement(_check_key(text, text), "exists")


def parse_selector(text: str) -> Selector:
    """Parse a selector; raise SelectorError with a message naming the bad part."""
    if not isinstance(text, str):
        raise SelectorError(f"a selector must be a string, not {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise SelectorError("empty selector (use 'any' to select everything)")
    if stripped in (ANY, UNMANAGED):
        return Selector(stripped)
    requirements = [_parse_requirement(part) for part in _split_top_level(stripped)]
    if any(r.key in (ANY, UNMANAGED) and r.op == "exists" for r in requirements):
        raise SelectorError(f"'any' and 'unmanaged' stand alone; they cannot be combined in {text!r}")
    # Canonical order: the same selector written differently compares equal.
    return Selector("labels", tuple(sorted(set(requirements), key=lambda r: (r.key, r.op, r.values))))
