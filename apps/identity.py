"""Security identities: one small number per distinct label set, stable across restarts.

Policy flows match identities, not VMs: a thousand web servers with the same labels share
one identity, so a rule costs flows per identity pair, not per VM pair."""

from __future__ import annotations

from collections.abc import Mapping

from apps.context import PolicyState
from topology.model import Host

UNKNOWN = 0  # not a learned host (only the `any` selector matches it)
UNMANAGED = 1  # a learned host that is not in the inventory
FIRST_ASSIGNED = 16
MAX_IDENTITY = 0xFFFFFFFF

Labels = tuple[tuple[str, str], ...]


class Identities:
    """Label set <-> identity number. Numbers are handed out once and kept (persisted by the
    store), so a restart or an unrelated change never renumbers, and flows stay put."""

    def __init__(self, assigned: Mapping[Labels, int] | None = None) -> None:
        self._by_labels: dict[Labels, int] = dict(assigned or {})
        self._labels: dict[int, Labels] = {v: k for k, v in self._by_labels.items()}
        self.added: dict[Labels, int] = {}  # assigned since the last persist

    def id_for(self, labels: Labels) -> int:
        number = self._by_labels.get(labels)
        if number is None:
            number = max(self._labels, default=FIRST_ASSIGNED - 1) + 1
            if number > MAX_IDENTITY:
                raise RuntimeError("out of identity numbers")
            self._by_labels[labels] = number
            self._labels[number] = labels
            self.added[labels] = number
        return number

    def labels_of(self, number: int) -> Labels | None:
        return self._labels.get(number)

    def assigned(self) -> dict[Labels, int]:
        return dict(self._by_labels)


def host_identities(hosts: Mapping[str, Host], policy: PolicyState, identities: Identities) -> dict[str, int]:
    """The identity of every learned host, by MAC."""
    by_mac = policy.vm_by_mac()
    result = {}
    for mac in hosts:
        vm = by_mac.get(mac)
        result[mac] = UNMANAGED if vm is None else identities.id_for(policy.effective_labels(vm))
    return result


class IdentityLabels(dict):
    """identity -> labels (None for unmanaged), remembering which identities each selector
    selects: a compile asks the same question for every hypervisor."""

    def selected(self, selector) -> frozenset[int]:
        cache = self.__dict__.setdefault("_selected", {})
        found = cache.get(selector)
        if found is None:
            found = cache[selector] = frozenset(i for i, lbl in self.items() if i != UNKNOWN and selector.matches(lbl))
        return found


def identity_labels(numbers: set[int], identities: Identities) -> IdentityLabels:
    """Labels per identity in use; None for unmanaged (and unknown) identities."""
    return IdentityLabels(
        {n: (None if n in (UNKNOWN, UNMANAGED) else dict(identities.labels_of(n) or ())) for n in numbers}
    )
