"""The `--inventory` file: VMs declared in JSON or YAML, upserted into the inventory when the controller starts.

    vms:
      web1:
        macs: ["02:00:00:00:00:01"]
        ips: ["10.0.0.1"]
        labels: {tenant: blue, tier: web}

Each VM takes the same fields as `PUT /v1/vms/{name}`. VMs in the file replace the stored VMs of
the same name; stored VMs the file does not name are left alone."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import yaml

from apps.context import PolicyState
from apps.inventory import VM, InventoryError, vm_from_json
from controller import audit
from controller.store import SOURCE_FILE, Store

FILE_FIELDS = frozenset({"vms"})
ACTOR = "inventory-file"


class InventoryFileError(ValueError):
    """The inventory file cannot be used; the message names the file and the field."""

    def __init__(self, path: str | os.PathLike, field: str, message: str) -> None:
        super().__init__(f"inventory file {path}: {field}: {message}")
        self.path, self.field = str(path), field


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice, which plain YAML would let the last one win."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, f"key {key!r} appears twice", key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"key {key!r} appears twice")
        result[key] = value
    return result


def parse(path: str | os.PathLike) -> object:
    """The file's document: JSON for *.json, YAML otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InventoryFileError(path, "file", f"cannot be read: {exc}") from None
    try:
        if str(path).endswith(".json"):
            return json.loads(text, object_pairs_hook=_no_duplicate_keys)
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds plain data only
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if str(path).endswith(".json") else "YAML"
        raise InventoryFileError(path, "file", f"is not valid {kind}: {_one_line(exc)}") from None


def _one_line(exc: Exception) -> str:
    """YAML errors span several lines, with the offending text quoted; a start-up message needs one."""
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{exc.problem} at line {mark.line + 1} column {mark.column + 1}"
    return " ".join(str(exc).split())


def read_vms(path: str | os.PathLike) -> list[VM]:
    """Every VM in the file, validated; InventoryFileError names the file and the field."""
    doc = parse(path)
    if not isinstance(doc, dict):
        raise InventoryFileError(path, "file", 'must be an object with a "vms" key')
    unknown = set(doc) - FILE_FIELDS
    if unknown:
        raise InventoryFileError(path, str(sorted(unknown, key=str)[0]), 'unknown field (allowed: "vms")')
    vms_doc = doc.get("vms") or {}
    if not isinstance(vms_doc, dict):
        raise InventoryFileError(path, "vms", "must map VM names to {macs, ips, labels}")
    vms = []
    for name, body in vms_doc.items():
        try:
            vms.append(vm_from_json(name, body))
        except InventoryError as exc:
            raise InventoryFileError(path, f"vms.{name}.{exc.field}", str(exc).partition(": ")[2]) from None
    return vms


def merged(path: str | os.PathLike, state: PolicyState, vms: Sequence[VM]) -> PolicyState:
    """The state with the file's VMs upserted. A MAC or IP that ends up on two VMs is blamed on
    the file's VM (stored VMs are checked first), so the message names the field to fix."""
    from_file = {vm.name: vm for vm in vms}
    kept = [vm for name, vm in state.vms.items() if name not in from_file]
    owners: dict[str, str] = {}
    for vm in [*kept, *vms]:
        for field, addresses in (("macs", vm.macs), ("ips", vm.ips)):
            for address in addresses:
                other = owners.setdefault(address, vm.name)
                if other != vm.name:
                    raise InventoryFileError(path, f"vms.{vm.name}.{field}", f"{address} already belongs to VM {other}")
    return state.with_vms([*kept, *vms])


def check(path: str | os.PathLike, store: Store) -> None:
    """Raise InventoryFileError unless the file would load cleanly onto the stored state."""
    merged(path, store.load_policy(), read_vms(path))


def apply_at_start(store: Store, state: PolicyState, path: str | os.PathLike) -> PolicyState:
    """Upsert the file's VMs in one transaction with an audit entry; return the new state. The
    file becomes the source of its VMs, even of unchanged ones: OVSDB no longer updates them."""
    vms = read_vms(path)
    new = merged(path, state, vms)
    sources = store.vm_sources()
    changed = sorted(vm.name for vm in vms if state.vms.get(vm.name) != vm or sources.get(vm.name) != SOURCE_FILE)
    if not changed:
        return state
    with store.transaction():
        store.write_policy(state, new)
        store.set_vm_sources(changed, SOURCE_FILE)
        audit.record(store, ACTOR, "inventory.load", str(path), f"upserted {len(changed)} VMs: {', '.join(changed)}")
    return new
