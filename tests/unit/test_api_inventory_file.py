"""The --inventory file: VMs in it are upserted at start, others are untouched, and a bad file is
refused with a message naming the file and the field."""

from __future__ import annotations

import json

import pytest

from apps.context import PolicyState
from apps.inventory import vm_from_json
from controller import inventory_file
from controller.inventory_file import InventoryFileError
from controller.store import Store

STORED = {
    "web1": {"macs": ["02:00:00:00:00:01"], "labels": {"tier": "web"}},
    "keep": {"macs": ["02:00:00:00:00:09"], "ips": ["10.0.0.9"], "labels": {"tier": "ops"}},
}


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "state")
    state = PolicyState().with_vms([vm_from_json(name, doc) for name, doc in STORED.items()])
    with store.transaction():
        store.write_policy(PolicyState(), state)
    return store


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_vms_in_the_file_are_upserted_and_others_are_untouched(tmp_path, store):
    path = write(
        tmp_path,
        "vms.yaml",
        "vms:\n  web1:\n    macs: ['02:00:00:00:00:01']\n    labels: {tier: web, tenant: blue}\n"
        "  db1:\n    macs: ['02:00:00:00:00:02']\n    ips: [10.0.0.2]\n",
    )
    loaded = inventory_file.apply_at_start(store, store.load_policy(), path)
    assert store.load_policy() == loaded, "written to disk"
    assert loaded.vms["web1"].label_map == {"tier": "web", "tenant": "blue"}
    assert loaded.vms["db1"].ips == ("10.0.0.2",)
    assert loaded.vms["keep"] == vm_from_json("keep", STORED["keep"])
    entry = store.audit_entries(1)[0]
    assert (entry.actor, entry.action, entry.target) == ("inventory-file", "inventory.load", str(path))
    assert entry.summary == "upserted 2 VMs: db1, web1"


def test_loading_the_same_file_again_writes_nothing(tmp_path, store):
    path = write(tmp_path, "vms.json", json.dumps({"vms": {"db1": {"macs": ["02:00:00:00:00:02"]}}}))
    first = inventory_file.apply_at_start(store, store.load_policy(), path)
    entries = store.audit_entries(100)
    assert inventory_file.apply_at_start(store, first, path) == first
    assert store.audit_entries(100) == entries


def test_an_empty_file_changes_nothing(tmp_path, store):
    before = store.load_policy()
    assert inventory_file.apply_at_start(store, before, write(tmp_path, "empty.yaml", "vms: {}\n")) == before
    assert inventory_file.apply_at_start(store, before, write(tmp_path, "blank.yaml", "vms:\n")) == before


def test_an_address_may_move_between_vms_within_one_file(tmp_path, store):
    """Checked as a whole, not VM by VM: web1 hands its MAC to web2 in the same file."""
    path = write(
        tmp_path,
        "move.yaml",
        "vms:\n  web2:\n    macs: ['02:00:00:00:00:01']\n  web1:\n    macs: ['02:00:00:00:00:11']\n",
    )
    loaded = inventory_file.apply_at_start(store, store.load_policy(), path)
    assert loaded.vms["web2"].macs == ("02:00:00:00:00:01",) and loaded.vms["web1"].macs == ("02:00:00:00:00:11",)


@pytest.mark.parametrize(
    "name, text, field, detail",
    [
        ("a.yaml", "vms:\n  db1:\n    macs: ['02:00:00:00:00:09']\n", "vms.db1.macs", "already belongs to VM keep"),
        ("b.yaml", "vms:\n  db1:\n    macs: ['02:00:00:00:00:03']\n    ips: [10.0.0.9]\n", "vms.db1.ips", "keep"),
        ("c.yaml", "vms:\n  db1:\n    macs: ['02:00:00:00:00:03']\n    colour: red\n", "vms.db1.colour", "unknown field"),
        ("d.yaml", "vms:\n  'bad name':\n    macs: ['02:00:00:00:00:03']\n", "vms.bad name.name", "not a valid name"),
        ("e.yaml", "vms:\n  db1:\n    macs: ['02:00:00:00:00:03']\n  db1:\n    macs: ['02:00:00:00:00:04']\n", "file", "twice"),
        ("f.yaml", "- db1\n", "file", "must be an object"),
        ("g.yaml", "vms: [db1]\n", "vms", "must map VM names"),
        ("h.json", "{'vms': {}}", "file", "not valid JSON"),
    ],
)
def test_a_bad_file_names_the_file_and_field_and_changes_nothing(tmp_path, store, name, text, field, detail):
    path = write(tmp_path, name, text)
    before, entries = store.load_policy(), store.audit_entries(100)
    with pytest.raises(InventoryFileError) as raised:
        inventory_file.apply_at_start(store, before, path)
    assert str(raised.value).startswith(f"inventory file {path}: {field}: ") and detail in str(raised.value)
    assert "\n" not in str(raised.value)
    with pytest.raises(InventoryFileError):
        inventory_file.check(path, store)
    assert (store.load_policy(), store.audit_entries(100)) == (before, entries)
