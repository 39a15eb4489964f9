"""The VM inventory: names, MACs, IPs and labels, validated so that bad input never enters the model."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from apps.errors import FieldError
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
    owners: dict[str, str] = {}
    for vm in vms.values():
        for kind, addresses in (("macs", vm.macs), ("ips", vm.ips)):
            for address in addresses:
                other = owners.setdefault(address, vm.name)
                if other != vm.name:
                    raise InventoryError(kind, f"{address} belongs to both {other} and {vm.name}")
