"""What the controller knows about VMs and the rules between them: one immutable value per version.

Every change builds a new, validated PolicyState; the REST layer persists it in one transaction
and only then swaps it in, so a request applies fully or not at all. A change of one VM checks and
copies only what it touches (apps/inventory.py Inventory): its cost does not grow with the inventory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from apps.inventory import VM, Inventory, InventoryError, check_labels
from apps.pipeline import MAX_RULES
from apps.policy import DEFAULT_ACTIONS, PolicyError, Rule
from apps.quarantine import LABEL as QUARANTINE_LABEL
from apps.quarantine import Quarantine, QuarantineError
from apps.remediation import AllowRule


class NotFound(KeyError):
    """A named VM or rule does not exist."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"no {kind} named {name!r}")
        self.kind, self.name = kind, name

    def __str__(self) -> str:
        return self.args[0]


@dataclass(frozen=True)
class PolicyState:
    vms: Inventory = field(default_factory=Inventory)
    rules: tuple[Rule, ...] = ()
    default_action: str = "allow"
    quarantine: Mapping[str, Quarantine] = field(default_factory=lambda: MappingProxyType({}))  # VM name -> record
    remediation: tuple[AllowRule, ...] = ()  # the allow-list of a VM in remediation that brought none of its own

    def __post_init__(self) -> None:
        if not isinstance(self.vms, Inventory):  # any mapping of VMs, checked and indexed once
            object.__setattr__(self, "vms", Inventory(self.vms.values()))

    # -- derived views --------------------------------------------------------------
    def vm_by_mac(self) -> Mapping[str, VM]:
        return self.vms.by_mac()

    def rule(self, name: str) -> Rule:
        for rule in self.rules:
            if rule.name == name:
                return rule
        raise NotFound("rule", name)

    def effective_labels(self, vm: VM) -> tuple[tuple[str, str], ...]:
        """The labels policy sees: a quarantined VM's own plus quarantined=true. Its stored labels never
        change, so releasing it restores its policy exactly."""
        if vm.name in self.quarantine:
            return tuple(sorted((dict(vm.labels) | dict([QUARANTINE_LABEL])).items()))
        return vm.labels

    def with_quarantine(self, record: Quarantine) -> PolicyState:
        if record.vm in self.quarantine:
            raise QuarantineError("vm", f"{record.vm!r} is already in quarantine")
        self.vm(record.vm)
        if record.mirror_to is not None:
            if record.mirror_to not in self.vms:
                raise QuarantineError("mirror_to", f"no VM named {record.mirror_to!r} in the inventory")
            if record.mirror_to in self.quarantine:
                raise QuarantineError("mirror_to", f"{record.mirror_to!r} is in quarantine itself")
        return replace(self, quarantine=MappingProxyType({**self.quarantine, record.vm: record}))

    def allow_list(self, record: Quarantine) -> tuple[AllowRule, ...]:
        """What a VM in remediation may still reach: its own allow-list, or the configured one."""
        if record.mode != "remediate":
            return ()
        return record.allow if record.allow is not None else self.remediation

    def without_quarantine(self, name: str) -> PolicyState:
        if name not in self.quarantine:
            raise QuarantineError("vm", f"{name!r} is not in quarantine")
        return replace(self, quarantine=MappingProxyType({k: v for k, v in self.quarantine.items() if k != name}))

    def vm(self, name: str) -> VM:
        try:
            return self.vms[name]
        except KeyError:
            raise NotFound("vm", name) from None

    # -- changes: each returns a new, validated state ------------------------------
    def with_vm(self, vm: VM) -> PolicyState:
        return replace(self, vms=self.vms.with_vm(vm))

    def with_vms(self, new_vms: Sequence[VM]) -> PolicyState:
        """Replace the whole inventory (an inventory file)."""
        return replace(self, vms=Inventory(new_vms))

    def without_vm(self, name: str) -> PolicyState:
        self.vm(name)
        if name in self.quarantine:
            raise InventoryError("name", f"{name!r} is in quarantine: release it (DELETE /v1/quarantine/{name}) first")
        return replace(self, vms=self.vms.without(name))

    def with_labels(self, name: str, add: Mapping[str, str], remove: Sequence[str]) -> PolicyState:
        vm = self.vm(name)
        labels = {k: v for k, v in vm.labels if k not in set(remove)}
        labels.update(check_labels(add))
        return self.with_vm(replace(vm, labels=tuple(sorted(labels.items()))))

    def with_rule(self, rule: Rule, position: int | None = None) -> PolicyState:
        """Add a rule (at the end, or at position), or replace the rule of the same name in place."""
        rules = list(self.rules)
        names = [r.name for r in rules]
        if rule.name in names:
            index = names.index(rule.name)
            if position is None or position == index:
                rules[index] = rule
                return replace(self, rules=tuple(rules))
            del rules[index]
        if len(rules) >= MAX_RULES:
            raise PolicyError("rules", f"at most {MAX_RULES} rules")
        if position is None:
            position = len(rules)
        if not 0 <= position <= len(rules):
            raise PolicyError("position", f"must be between 0 and {len(rules)}")
        rules.insert(position, rule)
        return replace(self, rules=tuple(rules))

    def without_rule(self, name: str) -> PolicyState:
        self.rule(name)
        return replace(self, rules=tuple(r for r in self.rules if r.name != name))

    def reordered(self, names: Sequence[str]) -> PolicyState:
        """The rules in exactly this order; every rule must be named once."""
        current = {r.name: r for r in self.rules}
        if sorted(names) != sorted(current) or len(set(names)) != len(names):
            raise PolicyError("order", "must name every rule exactly once")
        return replace(self, rules=tuple(current[n] for n in names))

    def with_default(self, action: str) -> PolicyState:
        if action not in DEFAULT_ACTIONS:
            raise PolicyError("default_action", f"must be one of {', '.join(DEFAULT_ACTIONS)}")
        return replace(self, default_action=action)
