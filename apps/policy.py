"""Ordered allow / deny / encrypt rules between label selectors, and the first-match evaluation behind `explain`."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from apps.errors import FieldError
from apps.selectors import Selector, SelectorError, parse_selector
from apps.services import Service, ServiceError, parse_service

ACTIONS = ("allow", "deny", "encrypt")
DEFAULT_ACTIONS = ("allow", "deny")
RULE_FIELDS = frozenset({"name", "src", "dst", "services", "action"})
RULE_NAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")


class PolicyError(FieldError):
    """A bad rule; `field` names the offending field."""


@dataclass(frozen=True)
class Rule:
    name: str
    src: Selector
    dst: Selector
    services: tuple[Service, ...]
    action: str

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "src": str(self.src),
            "dst": str(self.dst),
            "services": [str(s) for s in self.services],
            "action": self.action,
        }

    def applies(self, src_labels: Mapping[str, str] | None, dst_labels: Mapping[str, str] | None) -> bool:
        return self.src.matches(src_labels) and self.dst.matches(dst_labels)


def rule_from_json(body: object, name: str | None = None) -> Rule:
    if not isinstance(body, Mapping):
        raise PolicyError("body", "must be a JSON object")
    unknown = set(body) - RULE_FIELDS
    if unknown:
        raise PolicyError(sorted(unknown)[0], f"unknown field (allowed: {', '.join(sorted(RULE_FIELDS))})")
    rule_name = body.get("name", name)
    if name is not None and rule_name != name:
        raise PolicyError("name", f"the body names {rule_name!r} but the path names {name!r}")
    if not isinstance(rule_name, str) or not RULE_NAME_RE.fullmatch(rule_name):
        raise PolicyError("name", f"{rule_name!r} is not a valid rule name")
    selectors = {}
    for field in ("src", "dst"):
        if field not in body:
            raise PolicyError(field, "is required")
        try:
            selectors[field] = parse_selector(body[field])
        except SelectorError as exc:
            raise PolicyError(field, str(exc)) from None
    services_text = body.get("services", ["any"])
    if not isinstance(services_text, list) or not services_text:
        raise PolicyError("services", "must be a non-empty list such as [\"tcp/5432\", \"icmp\"]")
    try:
        services = tuple(dict.fromkeys(parse_service(s) for s in services_text))
    except ServiceError as exc:
        raise PolicyError("services", str(exc)) from None
    action = body.get("action")
    if action not in ACTIONS:
        raise PolicyError("action", f"must be one of {', '.join(ACTIONS)}")
    return Rule(rule_name, selectors["src"], selectors["dst"], services, action)


@dataclass(frozen=True)
class Decision:
    """What happens to one flow, and why."""

    action: str
    rule: Rule | None  # None: the default action applied
    service: Service | None

    @property
    def effective_action(self) -> str:
        """Whether the connection is delivered: encrypt is allow, inside a tunnel."""
        return "allow" if self.action == "encrypt" else self.action


def evaluate(
    rules: Sequence[Rule],
    default_action: str,
    src_labels: Mapping[str, str] | None,
    dst_labels: Mapping[str, str] | None,
    proto: str | None,
    dport: int | None,
) -> Decision:
    """First match wins: the first rule whose selectors and one of whose services match."""
    for rule in rules:
        if not rule.applies(src_labels, dst_labels):
            continue
        for service in rule.services:
            if service.matches(proto, dport):
                return Decision(rule.action, rule, service)
    return Decision(default_action, None, None)
