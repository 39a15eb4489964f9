"""The learned topology survives a controller restart, and a restart compiles the same flows."""

from __future__ import annotations

import sqlite3

import pytest

from apps.desired import desired_tables
from controller.store import StateError, Store
from tests.fakeoftable import build_leaf_spine
from topology.model import Host, Port, PortRef, Topology


def snapshot(topo: Topology) -> tuple:
    switches = {
        d: (sw.name, sw.role_override, dict(sw.ports), sorted(sw.edge_confirmed)) for d, sw in sorted(topo.switches.items())
    }
    return switches, set(topo.links), dict(topo.hosts)


def test_save_then_load_round_trips_switches_links_and_hosts(tmp_path):
    fabric = build_leaf_spine(dual_homed=True)
    topo = fabric.topo
    topo.set_role_override(fabric.leaves[0], "role=fabric")
    topo.set_port(fabric.spines[0], Port(1, "down-port", up=False))
    store = Store(tmp_path / "state")
    store.save_topology(topo)
    store.close()

    loaded = Store(tmp_path / "state").load_topology(now=42.0)
    assert snapshot(loaded) == snapshot(topo)
    assert set(loaded.links.values()) == {42.0}, "loaded links get a fresh timeout window"
    assert not any(sw.connected for sw in loaded.switches.values()), "nothing is connected until it says hello"


def test_a_restart_compiles_exactly_the_flows_the_switches_hold(tmp_path):
    topo = build_leaf_spine(dual_homed=True).topo
    Store(tmp_path).save_topology(topo)
    loaded = Store(tmp_path).load_topology(now=0.0)
    before = {d: set(t) for d, t in desired_tables(topo).items()}
    after = {d: set(t) for d, t in desired_tables(loaded).items()}
    assert after == before


def test_the_addresses_a_hypervisor_answers_because_its_vms_asked_survive_a_restart(tmp_path):
    """The responders a hypervisor holds for the addresses its VMs asked for are flows the switch
    holds: a restarted controller must want exactly them again, not delete them."""
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1)
    topo = fabric.topo
    asker, target = fabric.vms[0], fabric.vms[-1]
    assert topo.note_asked(asker.dpid, next(iter(target.ips)))
    store = Store(tmp_path)
    store.save_topology(topo)
    loaded = Store(tmp_path).load_topology(now=0.0)
    assert loaded.asked == topo.asked == {asker.dpid: (next(iter(target.ips)),)}
    before = {d: set(t) for d, t in desired_tables(topo).items()}
    assert {d: set(t) for d, t in desired_tables(loaded).items()} == before
    del topo.asked[asker.dpid]
    store.save_topology(topo)
    assert Store(tmp_path).load_topology(now=0.0).asked == {}


def test_a_save_replaces_the_previous_state(tmp_path):
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1)
    topo = fabric.topo
    store = Store(tmp_path)
    store.save_topology(topo)
    gone = fabric.vms[0]
    topo.remove_host(gone.mac)
    cut = next(iter(topo.links))
    del topo.links[cut]
    topo.host_seen("02:aa:aa:aa:aa:aa", fabric.hypervisors[-1], 9, "10.9.9.9")
    store.save_topology(topo)
    loaded = store.load_topology(now=0.0)
    assert gone.mac not in loaded.hosts and cut not in loaded.links
    assert loaded.hosts["02:aa:aa:aa:aa:aa"].ips == {"10.9.9.9"}


def test_an_empty_state_dir_loads_an_empty_topology(tmp_path):
    topo = Store(tmp_path / "new" / "nested").load_topology(now=0.0)
    assert (topo.switches, topo.links, topo.hosts) == ({}, {}, {})


def test_an_unusable_state_dir_is_a_state_error_naming_it(tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(StateError, match="not-a-dir"):
        Store(blocker)


def test_a_failed_save_leaves_the_previous_state(tmp_path):
    topo = build_leaf_spine(spines=1, leaves=1, hypervisors_per_leaf=1).topo
    store = Store(tmp_path)
    store.save_topology(topo)
    broken = build_leaf_spine(spines=1, leaves=1, hypervisors_per_leaf=1).topo
    broken.link_seen(PortRef(1, 1), PortRef(2, 1), 0.0)
    # A port SQLite cannot store: the save fails half-way, after the switches and links.
    broken.hosts["02:bb:bb:bb:bb:bb"] = Host("02:bb:bb:bb:bb:bb", frozenset(), 1, object())
    with pytest.raises(sqlite3.Error):
        store.save_topology(broken)
    assert snapshot(store.load_topology(now=0.0)) == snapshot(topo)
    del broken.hosts["02:bb:bb:bb:bb:bb"]
    store.save_topology(broken)  # what the failed save meant to write is written by the next one
    assert snapshot(store.load_topology(now=0.0)) == snapshot(broken)


def writes(store: Store) -> list[str]:
    """Record the data-changing statements the store runs."""
    seen: list[str] = []
    store.db.set_trace_callback(lambda sql: seen.append(sql) if sql.split()[0] in ("INSERT", "DELETE", "UPDATE") else None)
    return seen


def test_a_save_writes_only_what_changed_and_nothing_when_nothing_did(tmp_path):
    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=3)
    topo = fabric.topo
    store = Store(tmp_path)
    store.save_topology(topo)
    seen = writes(store)
    store.save_topology(topo)
    assert seen == [], "nothing changed, nothing written"
    mover = fabric.vms[0]
    topo.host_seen(mover.mac, fabric.hypervisors[-1], 9, "10.9.9.9")
    store.save_topology(topo)
    assert len(seen) == 1 and seen[0].startswith("INSERT OR REPLACE INTO hosts") and mover.mac in seen[0]
    # After a restart, saving the topology as loaded writes nothing either.
    store.close()
    again = Store(tmp_path)
    loaded = again.load_topology(now=0.0)
    seen = writes(again)
    again.save_topology(loaded)
    assert seen == []


def test_a_save_builds_rows_only_for_what_changed(tmp_path, monkeypatch):
    """A compile saves the topology: with thousands of hosts, serialising every row to find the
    changed ones cost more than the compile (a cold start of 500 hypervisors spent a sixth of its
    time there). Rows are built for the switches and hosts that are not the same as last time."""
    import controller.store as store_module

    fabric = build_leaf_spine(spines=2, leaves=4, hypervisors_per_leaf=4, vms_per_hypervisor=20)
    topo = fabric.topo
    store = Store(tmp_path)
    store.save_topology(topo)
    built = []
    real = store_module.json.dumps
    monkeypatch.setattr(store_module.json, "dumps", lambda obj, *a, **k: built.append(obj) or real(obj, *a, **k))
    store.save_topology(topo)
    assert built == [], "nothing changed: no row built"
    mover = fabric.vms[0]
    topo.host_seen(mover.mac, mover.dpid, mover.port, "10.9.9.9")
    topo.note_asked(fabric.hypervisors[0], next(iter(fabric.vms[-1].ips)))
    seen = writes(store)
    store.save_topology(topo)
    assert len(built) == 2, built  # the host's row and the hypervisor's
    assert len(seen) == 2
    assert Store(tmp_path).load_topology(now=0.0).hosts[mover.mac].ips == topo.hosts[mover.mac].ips


def test_the_database_is_readable_by_its_owner_only_whatever_the_directory(tmp_path):
    """It holds token digests, the audit log and the inventory. In a 0755 state directory it was
    created 0644, readable by anyone on the machine (issue 10)."""
    import os
    import stat

    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)
    store = Store(state)
    store.add_identities({(("tier", "web"),): 5})  # a write, so the WAL file exists
    for name in ("goldilocks.db", "goldilocks.db-wal", "goldilocks.db-shm"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    store.db.close()
    old = tmp_path / "old"
    old.mkdir()
    (old / "goldilocks.db").touch(mode=0o644)
    os.chmod(old / "goldilocks.db", 0o644)
    Store(old).db.close()
    assert stat.S_IMODE((old / "goldilocks.db").stat().st_mode) == 0o600, "an older version's 0644 file is fixed"
