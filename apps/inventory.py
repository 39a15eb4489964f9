"""The VM inventory: names, MACs, IPs and labels, validated so that bad input never enters the model."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import ItemsView, Iterable, Iterator, KeysView, Mapping, ValuesView
from dataclasses import dataclass

from apps.errors import FieldError
from apps.persistent_map import PersistentMap
from apps.selectors import KEY_RE, VALUE_RE

NAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")
MAC_RE = re.compile(r"^[0-9a-f]{2}(:[0-9a-f]{2}){5}$")
VM_FIELDS = frozenset({"macs", "ips", "labels"})


class InventoryError(FieldError):
    """Bad VM data; `field` names the offending field for the API's 400 response."""


@dataclass(frozen=True)
class VM:
    """A managed VM. Its location is learned from the network, not declared."""

    name: str
    macs: tuple[str, ...]
    ips: tuple[str, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def to_json(self) -> dict:
        return {"name": self.name, "macs": list(self.macs), "ips": list(self.ips), "labels": self.label_map}


def check_name(name: object, field: str = "name") -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InventoryError(field, f"{name!r} is not a valid name (letters, digits, -, _, . ; at most 63)")
    return name


def normalize_mac(mac: object, field: str = "macs") -> str:
    if not isinstance(mac, str):
        raise InventoryError(field, f"{mac!r} is not a MAC address")
    text = mac.strip().lower().replace("-", ":")
    if not MAC_RE.fullmatch(text):
        raise InventoryError(field, f"{mac!r} is not a MAC address (aa:bb:cc:dd:ee:ff)")
    if int(text[:2], 16) & 1:
        raise InventoryError(field, f"{mac!r} is a multicast address, not a VM's")
    if text == "00:00:00:00:00:00":
        raise InventoryError(field, "00:00:00:00:00:00 is not a VM's address")
    return text


def normalize_ip(ip: object, field: str = "ips") -> str:
    try:
        address = ipaddress.IPv4Address(ip) if isinstance(ip, str) else None
    except ValueError:
        address = None
    if address is None:
        raise InventoryError(field, f"{ip!r} is not an IPv4 address")
    if address.is_multicast or address.is_unspecified or str(address) == "255.255.255.255":
        raise InventoryError(field, f"{ip} cannot be a VM's address")
    return str(address)


def check_labels(labels: object, field: str = "labels") -> tuple[tuple[str, str], ...]:
    if not isinstance(labels, Mapping):
        raise InventoryError(field, "must be an object of key: value strings")
    result = []
    for key, value in labels.items():
        if not isinstance(key, str) or not KEY_RE.fullmatch(key):
            raise InventoryError(f"{field}.{key}", f"{key!r} is not a valid label key")
        if not isinstance(value, str) or not VALUE_RE.fullmatch(value):
            raise InventoryError(f"{field}.{key}", f"{value!r} is not a valid label value")
        result.append((key, value))
    return tuple(sorted(result))


def vm_from_json(name: object, body: object) -> VM:
    """Validate a VM document ({"macs", "ips", "labels"}); raise InventoryError naming the field."""
    name = check_name(name)
    if not isinstance(body, Mapping):
        raise InventoryError("body", "must be a JSON object")
    unknown = set(body) - VM_FIELDS
    if unknown:
        raise InventoryError(sorted(unknown)[0], f"unknown field (allowed: {', '.join(sorted(VM_FIELDS))})")
    macs = body.get("macs")
    if not isinstance(macs, list) or not macs:
        raise InventoryError("macs", "must be a non-empty list of MAC addresses")
    ips = body.get("ips", [])
    if not isinstance(ips, list):
        raise InventoryError("ips", "must be a list of IPv4 addresses")
    norm_macs = tuple(normalize_mac(m) for m in macs)
    norm_ips = tuple(normalize_ip(i) for i in ips)
    for field, values in (("macs", norm_macs), ("ips", norm_ips)):
        if len(set(values)) != len(values):
            raise InventoryError(field, "lists the same address twice")
    return VM(name, tuple(sorted(norm_macs)), tuple(sorted(norm_ips)), check_labels(body.get("labels", {})))


def check_unique(vms: Mapping[str, VM]) -> None:
    """No MAC or IP may belong to two VMs."""
    Inventory(vms.values())


class Inventory(Mapping[str, VM]):
    """The VMs by name, and which VM holds each MAC and IPv4 address (no address belongs to two), as
    one immutable value. A new version with one VM added, replaced or removed checks and indexes that
    VM's addresses only and shares everything else with this one (apps/persistent_map.py): a write
    costs what it changes, however large the inventory."""

    __slots__ = ("_vms", "_macs", "_ips")

    def __init__(self, vms: Iterable[VM] = ()) -> None:
        by_name: dict[str, VM] = {}
        for vm in vms:
            if vm.name in by_name:
                raise InventoryError("name", f"{vm.name!r} appears twice")
            by_name[vm.name] = vm
        macs: dict[str, str] = {}
        ips: dict[str, str] = {}
        for vm in by_name.values():
            for index, kind, addresses in ((macs, "macs", vm.macs), (ips, "ips", vm.ips)):
                for address in addresses:
                    other = index.setdefault(address, vm.name)
                    if other != vm.name:
                        raise InventoryError(kind, f"{address} belongs to both {other} and {vm.name}")
        self._vms: PersistentMap[str, VM] = PersistentMap(by_name)
        self._macs: PersistentMap[str, str] = PersistentMap(macs)
        self._ips: PersistentMap[str, str] = PersistentMap(ips)

    @classmethod
    def _of(cls, vms: PersistentMap, macs: PersistentMap, ips: PersistentMap) -> Inventory:
        made = cls.__new__(cls)
        made._vms, made._macs, made._ips = vms, macs, ips
        return made

    # -- reading --------------------------------------------------------------------------------
    def __getitem__(self, name: str) -> VM:
        return self._vms[name]

    def get(self, name, default=None):
        return self._vms.get(name, default)

    def __contains__(self, name) -> bool:
        return name in self._vms

    def __iter__(self) -> Iterator[str]:
        return iter(self._vms)

    def __len__(self) -> int:
        return len(self._vms)

    def keys(self) -> KeysView[str]:
        return self._vms.keys()

    def items(self) -> ItemsView[str, VM]:
        return self._vms.items()

    def values(self) -> ValuesView[VM]:
        return self._vms.values()

    @property
    def mac_owners(self) -> Mapping[str, str]:
        """MAC -> the name of the VM that holds it."""
        return self._macs

    @property
    def ip_owners(self) -> Mapping[str, str]:
        """IPv4 address -> the name of the VM that holds it."""
        return self._ips

    def by_mac(self) -> Mapping[str, VM]:
        """MAC -> the VM that holds it (a view: nothing is copied)."""
        return _VmByMac(self)

    def changed_since(self, older: Mapping[str, VM]) -> set[str]:
        """Names of the VMs added, removed or replaced (by identity) since `older`: in time
        proportional to the change when `older` is an earlier version of this inventory."""
        return self._vms.changed_keys(older._vms if isinstance(older, Inventory) else older)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Inventory):
            return self._vms == other._vms
        if isinstance(other, Mapping):
            return self._vms == other
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Inventory({list(self.values())!r})"

    def __reduce__(self) -> tuple:
        return (type(self), (list(self.values()),))

    # -- changes: each returns a new, checked inventory ------------------------------------------
    def with_vm(self, vm: VM) -> Inventory:
        """Add the VM, or replace the one of its name. InventoryError if another VM holds one of
        its addresses."""
        old = self._vms.get(vm.name)
        if old is vm:
            return self
        for index, kind, addresses in ((self._macs, "macs", vm.macs), (self._ips, "ips", vm.ips)):
            for address in addresses:
                other = index.get(address)
                if other is not None and other != vm.name:
                    raise InventoryError(kind, f"{address} belongs to both {other} and {vm.name}")
        macs, ips = self._macs, self._ips
        if old is not None:
            macs = _released(macs, old.macs, vm.macs)
            ips = _released(ips, old.ips, vm.ips)
        for address in vm.macs:
            if macs.get(address) != vm.name:
                macs = macs.set(address, vm.name)
        for address in vm.ips:
            if ips.get(address) != vm.name:
                ips = ips.set(address, vm.name)
        return self._of(self._vms.set(vm.name, vm), macs, ips)

    def without(self, name: str) -> Inventory:
        """Without the VM of this name (KeyError if there is none)."""
        vm = self._vms[name]
        return self._of(self._vms.delete(name), _released(self._macs, vm.macs, ()), _released(self._ips, vm.ips, ()))


def _released(index: PersistentMap, held: Iterable[str], kept: Iterable[str]) -> PersistentMap:
    for address in set(held) - set(kept):
        index = index.delete(address)
    return index


class _VmByMac(Mapping[str, VM]):
    """MAC -> VM over an inventory's index."""

    __slots__ = ("_inventory",)

    def __init__(self, inventory: Inventory) -> None:
        self._inventory = inventory

    def __getitem__(self, mac: str) -> VM:
        return self._inventory[self._inventory.mac_owners[mac]]

    def get(self, mac, default=None):
        name = self._inventory.mac_owners.get(mac)
        return default if name is None else self._inventory[name]

    def __contains__(self, mac) -> bool:
        return mac in self._inventory.mac_owners

    def __iter__(self) -> Iterator[str]:
        return iter(self._inventory.mac_owners)

    def __len__(self) -> int:
        return len(self._inventory.mac_owners)
