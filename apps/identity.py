"""Security identities: one small number per distinct label set, stable across restarts.

Policy flows match identities, not VMs: a thousand web servers with the same labels share
one identity, so a rule costs flows per identity pair, not per VM pair."""

from __future__ import annotations

from collections.abc import Mapping

from apps.context import PolicyState
from apps.inventory import Inventory

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
        self._last = max(self._labels, default=FIRST_ASSIGNED - 1)
        self.added: dict[Labels, int] = {}  # assigned since the last persist
        # VM name -> (the VM record, quarantined?) as assign_identities last numbered it
        self.numbered: dict[str, tuple[object, bool]] = {}
        # What assign_identities last saw (it visits only what changed since), and the VMs it has
        # not numbered because the network has not seen them yet: MAC -> VM name.
        self.seen_vms: Inventory = Inventory()
        self.seen_quarantine: Mapping[str, object] = {}
        self.unlearned: dict[str, str] = {}

    def id_for(self, labels: Labels) -> int:
        number = self._by_labels.get(labels)
        if number is None:
            number = self._last + 1
            if number > MAX_IDENTITY:
                raise RuntimeError("out of identity numbers")
            self._last = number
            self._by_labels[labels] = number
            self._labels[number] = labels
            self.added[labels] = number
        return number

    def lookup(self, labels: Labels) -> int | None:
        """The number of a label set, without handing one out."""
        return self._by_labels.get(labels)

    def labels_of(self, number: int) -> Labels | None:
        return self._labels.get(number)

    def assigned(self) -> dict[Labels, int]:
        return dict(self._by_labels)


class UnassignedIdentity(LookupError):
    """A compile met a label set with no identity number: assign_identities must run first."""


def assign_identities(topo, policy: PolicyState, identities: Identities) -> None:
    """Hand out numbers to the label sets of every learned VM, before compiling: compiling itself
    only reads them. New label sets are numbered in the order of their VMs' MACs. The caller
    persists `identities.added`. Costs what changed: only the VMs added, replaced or (un)quarantined
    since the last call are visited, and those the network had not seen (kept by MAC) once it has;
    a VM already numbered, with the same record and quarantine state, is skipped by identity."""
    done, unlearned, hosts = identities.numbered, identities.unlearned, topo.hosts
    vms, quarantined = policy.vms, policy.quarantine
    names = vms.changed_since(identities.seen_vms)
    if quarantined is not identities.seen_quarantine:
        names.update(quarantined.keys() ^ identities.seen_quarantine.keys())
    gone = identities.seen_vms
    # Learned since: the smaller of the two sides is scanned.
    if len(unlearned) <= len(hosts):
        names.update(unlearned[m] for m in unlearned if m in hosts)
    else:
        names.update(unlearned[m] for m in hosts if m in unlearned)
    identities.seen_vms, identities.seen_quarantine = vms, quarantined
    pending = []
    for name in names:
        before = gone.get(name)
        for mac in before.macs if before is not None else ():
            if unlearned.get(mac) == name:
                del unlearned[mac]
        vm = vms.get(name)
        if vm is None:
            done.pop(name, None)
            continue
        for mac in vm.macs:
            if unlearned.get(mac) == name:
                del unlearned[mac]
        state = (vm, name in quarantined)
        seen = done.get(name)
        if seen is not None and seen[0] is vm and seen[1] == state[1]:
            continue
        learned = [m for m in vm.macs if m in hosts]
        if learned:
            pending.append((min(learned), name, vm, state))
        else:
            unlearned.update((mac, name) for mac in vm.macs)
    for _, name, vm, state in sorted(pending, key=lambda p: p[0]):
        identities.id_for(policy.effective_labels(vm))
        done[name] = state


class IdentityLabels(dict):
    """identity -> labels (None for unmanaged), remembering which identities each selector
    selects: a compile asks the same question for every hypervisor. Not to be changed once asked."""

    def selected(self, selector) -> frozenset[int]:
        cache = self.__dict__.setdefault("_selected", {})
        found = cache.get(selector)
        if found is None:
            found = cache[selector] = frozenset(i for i, lbl in self.items() if i != UNKNOWN and selector.matches(lbl))
        return found

    def selected_sorted(self, selector) -> list[int]:
        """selected(), sorted (shared: callers must not change it)."""
        cache = self.__dict__.setdefault("_sorted", {})
        found = cache.get(selector)
        if found is None:
            found = cache[selector] = sorted(self.selected(selector))
        return found

    def everyone(self) -> frozenset[int]:
        """Every identity in use and UNKNOWN: the candidates of a rule's far end."""
        found = self.__dict__.get("_everyone")
        if found is None:
            found = self.__dict__["_everyone"] = frozenset(self) | {UNKNOWN}
        return found
