"""Every schema the project has shipped opens in this version with its data intact.

Each fixture below is a database built with the DDL a release shipped (copied from
`git log -p -- controller/store.py`, not derived from the migrations) and filled the way that
release wrote its rows. Every release up to version 9 wrote "1" as its schema version, so the
fixtures say "1" too."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from controller import store as store_mod
from controller.store import SCHEMA, SCHEMA_VERSION, StateError, Store, layout_of, layouts, snapshot
from topology.model import Port

REPO = Path(__file__).resolve().parents[2]

T_SWITCHES_V1 = """
CREATE TABLE IF NOT EXISTS switches (
    dpid INTEGER PRIMARY KEY, name TEXT NOT NULL, role_override TEXT, ports TEXT NOT NULL,
    edge_ports TEXT NOT NULL DEFAULT '[]');"""
T_COMMON = """
CREATE TABLE IF NOT EXISTS links (
    a_dpid INTEGER NOT NULL, a_port INTEGER NOT NULL, b_dpid INTEGER NOT NULL, b_port INTEGER NOT NULL,
    PRIMARY KEY (a_dpid, a_port, b_dpid, b_port));
CREATE TABLE IF NOT EXISTS hosts (
    mac TEXT PRIMARY KEY, ips TEXT NOT NULL, dpid INTEGER NOT NULL, port INTEGER NOT NULL);"""
T_META = "\nCREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);"
T_SWITCHES = """
CREATE TABLE IF NOT EXISTS switches (
    dpid INTEGER PRIMARY KEY, name TEXT NOT NULL, role_override TEXT, state TEXT NOT NULL);"""
T_VMS = "\nCREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, doc TEXT NOT NULL);"
T_VM_SOURCES = "\nCREATE TABLE IF NOT EXISTS vm_sources (name TEXT PRIMARY KEY, source TEXT NOT NULL);"
T_RULES_SETTINGS = """
CREATE TABLE IF NOT EXISTS rules (position INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);"""
T_IDENTITIES = "\nCREATE TABLE IF NOT EXISTS identities (labels TEXT PRIMARY KEY, id INTEGER UNIQUE NOT NULL);"
T_TOKENS = """
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, digest TEXT UNIQUE NOT NULL, fingerprint TEXT NOT NULL, created REAL NOT NULL);"""
T_QUARANTINE = "\nCREATE TABLE IF NOT EXISTS quarantine (vm TEXT PRIMARY KEY, doc TEXT NOT NULL);"
T_ALERTS = """
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, vm TEXT NOT NULL, target TEXT NOT NULL,
    severity TEXT NOT NULL, source TEXT NOT NULL, signature TEXT NOT NULL, action TEXT NOT NULL);"""
T_AGENTS = """
CREATE TABLE IF NOT EXISTS agent_tokens (
    digest TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, used REAL);
CREATE TABLE IF NOT EXISTS agents (
    hypervisor TEXT PRIMARY KEY, idx INTEGER UNIQUE NOT NULL, serial TEXT NOT NULL, enrolled REAL NOT NULL, info TEXT);
CREATE TABLE IF NOT EXISTS revoked_serials (serial TEXT PRIMARY KEY, hypervisor TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tunnel_pairs (
    a TEXT NOT NULL, b TEXT NOT NULL, vni INTEGER UNIQUE NOT NULL, psk BLOB NOT NULL, psk_created REAL NOT NULL,
    PRIMARY KEY (a, b));"""
T_AUDIT = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, summary TEXT NOT NULL);"""

# The DDL each version shipped, in the order its SCHEMA listed the tables, and the commit.
SHIPPED = {
    1: ("6a77d4b", T_META + T_SWITCHES_V1 + T_COMMON),
    2: ("d83c38b", T_META + T_SWITCHES + T_COMMON),
    3: ("563c3ac", T_META + T_SWITCHES + T_COMMON + T_VMS + T_RULES_SETTINGS),
    4: ("db2f8ae", T_META + T_SWITCHES + T_COMMON + T_VMS + T_RULES_SETTINGS + T_IDENTITIES),
    5: ("25c9e69", T_META + T_SWITCHES + T_COMMON + T_VMS + T_RULES_SETTINGS + T_IDENTITIES + T_TOKENS + T_AUDIT),
    6: ("fc68f00", T_META + T_SWITCHES + T_COMMON + T_VMS + T_VM_SOURCES + T_RULES_SETTINGS + T_IDENTITIES + T_TOKENS + T_AUDIT),
    7: ("7ac025e", T_META + T_SWITCHES + T_COMMON + T_VMS + T_VM_SOURCES + T_RULES_SETTINGS + T_IDENTITIES + T_TOKENS
        + T_AGENTS + T_AUDIT),
    8: ("95acd80", T_META + T_SWITCHES + T_COMMON + T_VMS + T_VM_SOURCES + T_RULES_SETTINGS + T_IDENTITIES + T_TOKENS
        + T_QUARANTINE + T_AGENTS + T_AUDIT),
    9: ("9f8a439", T_META + T_SWITCHES + T_COMMON + T_VMS + T_VM_SOURCES + T_RULES_SETTINGS + T_IDENTITIES + T_TOKENS
        + T_QUARANTINE + T_ALERTS + T_AGENTS + T_AUDIT),
}  # fmt: skip

PORTS = [[1, "leaf1-eth1", "02:00:00:00:01:01", True], [2, "leaf1-eth2", "02:00:00:00:01:02", True]]
SEALED_PSK = bytes([1]) + bytes(range(12)) + b"\xaa" * 48  # stored as is: the migration never opens it
VM_DOC = {"macs": ["02:00:00:00:00:0a"], "ips": ["10.0.0.10"], "labels": {"app": "web"}}
RULE_DOC = {"name": "web-db", "src": "app=web", "dst": "app=db", "services": ["tcp/5432"], "action": "allow"}
QUARANTINE_DOC = {"vm": "web1", "reason": "ids", "mode": "isolate", "mirror_to": None, "actor": "admin", "at": 5.0,
                  "macs": ["02:00:00:00:00:0a"]}  # fmt: skip


def build(path: Path, version: int, label: str = "1") -> None:
    """A database as release `version` left it, with some of everything that release stored."""
    path.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path / "goldilocks.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("BEGIN")
    for statement in SHIPPED[version][1].split(";"):
        if statement.strip():
            db.execute(statement)
    db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (label,))
    if version == 1:
        db.execute("INSERT INTO switches VALUES (1, 'leaf1', NULL, ?, '[1]')", (json.dumps(PORTS),))
    else:
        state = {"ports": PORTS, "edge_ports": [1], "fabric_ports": [2]}
        db.execute("INSERT INTO switches VALUES (1, 'leaf1', NULL, ?)", (json.dumps(state),))
    db.execute("INSERT INTO switches VALUES (2, 'spine1', 'fabric', ?)" if version > 1 else
               "INSERT INTO switches VALUES (2, 'spine1', 'fabric', ?, '[]')",
               (json.dumps({"ports": [], "edge_ports": [], "fabric_ports": [1]}) if version > 1 else "[]",))  # fmt: skip
    db.execute("INSERT INTO links VALUES (1, 2, 2, 1)")
    db.execute("INSERT INTO hosts VALUES ('02:00:00:00:00:0a', '[\"10.0.0.10\"]', 1, 1)")
    if version >= 3:
        db.execute("INSERT INTO vms VALUES ('web1', ?)", (json.dumps(VM_DOC),))
        db.execute("INSERT INTO rules VALUES (0, 'web-db', ?)", (json.dumps(RULE_DOC),))
        db.execute("INSERT INTO settings VALUES ('default_action', 'deny')")
    if version >= 4:
        db.execute("INSERT INTO identities VALUES (?, 7)", (json.dumps([["app", "web"]]),))
    if version >= 5:
        db.execute("INSERT INTO tokens VALUES ('admin', 'admin', ?, 'fp-0123456789ab', 1.5)", ("d" * 64,))
        db.execute("INSERT INTO audit (at, actor, action, target, summary) VALUES (2.5, 'admin', 'vm.put', 'web1', 'created')")
    if version >= 6:
        db.execute("INSERT INTO vm_sources VALUES ('web1', 'file')")
    if version >= 7:
        db.execute("INSERT INTO agent_tokens VALUES (?, 'sha256:00', 1.0, 2.0, 1.5)", ("e" * 64,))
        db.execute("INSERT INTO agents VALUES ('hv1', 1, '123456', 3.0, NULL)")
        db.execute("INSERT INTO revoked_serials VALUES ('654321', 'hv1', 2.5)")
        db.execute("INSERT INTO tunnel_pairs VALUES ('hv1', 'hv2', 4097, ?, 4.0)", (SEALED_PSK,))
    if version >= 8:
        db.execute("INSERT INTO quarantine VALUES ('web1', ?)", (json.dumps(QUARANTINE_DOC),))
    if version >= 9:
        db.execute("INSERT INTO alerts (at, vm, target, severity, source, signature, action) "
                   "VALUES (6.0, 'web1', '10.0.0.10', 'high', 'ids', 'ET SCAN', 'quarantine')")  # fmt: skip
    db.execute("COMMIT")
    db.close()


def assert_intact(store: Store, version: int) -> None:
    """Everything `build` wrote for `version` reads back through the current Store."""
    topo = store.load_topology(now=0.0)
    leaf = topo.switches[1]
    assert leaf.name == "leaf1" and leaf.ports == {p[0]: Port(*p) for p in PORTS}
    assert leaf.edge_confirmed == {1} and leaf.fabric_ports == {2}, "version 1's linked port becomes a fabric port"
    assert topo.switches[2].role_override == "fabric"
    assert len(topo.links) == 1 and set(topo.hosts) == {"02:00:00:00:00:0a"}
    policy = store.load_policy()
    if version >= 3:
        assert policy.vms["web1"].to_json() == {"name": "web1", **VM_DOC}
        assert [r.to_json() for r in policy.rules] == [RULE_DOC]
        assert policy.default_action == "deny"
    if version >= 4:
        assert store.load_identities() == {(("app", "web"),): 7}
    if version >= 5:
        assert [(t.name, t.role, t.fingerprint) for t in store.tokens()] == [("admin", "admin", "fp-0123456789ab")]
        assert [(e.actor, e.action, e.target) for e in store.audit_entries(10)] == [("admin", "vm.put", "web1")]
    if version >= 6:
        assert store.vm_sources() == {"web1": "file"}
    if version >= 7:
        assert store.agents() == [("hv1", 1, "123456", 3.0, None)]
        assert store.revoked_serials() == {654321}
        assert store.tunnel_pairs() == [("hv1", "hv2", 4097, SEALED_PSK, 4.0)], "a sealed key is kept byte for byte"
        assert store.agent_token("e" * 64) == ("sha256:00", 2.0, 1.5)
    if version >= 8:
        assert policy.quarantine["web1"].reason == "ids" and policy.quarantine["web1"].mode == "isolate"
    if version >= 9:
        assert [row[2:] for row in store.alerts(10)] == [("web1", "10.0.0.10", "high", "ids", "ET SCAN", "quarantine")]


def test_every_version_before_this_one_has_a_fixture_and_a_migration() -> None:
    assert set(SHIPPED) | {SCHEMA_VERSION} == set(range(1, SCHEMA_VERSION + 1))
    assert [m.version for m in store_mod.MIGRATIONS] == list(range(2, SCHEMA_VERSION + 1)), "one step per version, in order"


@pytest.mark.parametrize("version", sorted(SHIPPED))
def test_the_migrations_rebuild_each_shipped_schema(version: int) -> None:
    """Version 1 plus the migrations up to N has exactly the tables and columns release N shipped."""
    db = sqlite3.connect(":memory:")
    for statement in SHIPPED[version][1].split(";"):
        if statement.strip():
            db.execute(statement)
    assert layout_of(db) == layouts()[version]


def test_a_new_database_has_the_schema_the_migrations_reach(tmp_path: Path) -> None:
    """Whoever changes SCHEMA must add the migration that makes the same tables."""
    db = sqlite3.connect(":memory:")
    for statement in SCHEMA.split(";"):
        if statement.strip():
            db.execute(statement)
    assert layout_of(db) == layouts()[SCHEMA_VERSION]
    assert layout_of(Store(tmp_path).db) == layouts()[SCHEMA_VERSION]
    assert snapshot(tmp_path).label == str(SCHEMA_VERSION)


@pytest.mark.parametrize("version", sorted(SHIPPED))
def test_each_shipped_version_migrates_with_its_data_intact(tmp_path: Path, version: int) -> None:
    build(tmp_path, version)
    assert snapshot(tmp_path).version == version, "recognised by its tables, since it says 1"
    store = Store(tmp_path)
    assert_intact(store, version)
    assert layout_of(store.db) == layouts()[SCHEMA_VERSION]
    assert store.db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    store.close()
    again = Store(tmp_path)  # and opens again as the current version, unchanged
    assert_intact(again, version)
    assert snapshot(tmp_path).version == SCHEMA_VERSION


def test_a_database_that_states_its_version_migrates_from_it(tmp_path: Path) -> None:
    build(tmp_path, 5, label="5")
    assert_intact(Store(tmp_path), 5)


def test_a_database_whose_tables_are_not_those_of_its_version_is_refused(tmp_path: Path) -> None:
    build(tmp_path, 5, label="6")  # says 6 but lacks vm_sources
    before = (tmp_path / "goldilocks.db").read_bytes()
    with pytest.raises(StateError, match="damaged: it lacks the tables vm_sources"):
        Store(tmp_path)
    assert (tmp_path / "goldilocks.db").read_bytes() == before


CRASH = """
import os, sys
from dataclasses import replace
from controller import store

def crash_after(apply):
    def crashing(db):
        apply(db)
        if db.execute("PRAGMA database_list").fetchone()[2]:  # the real file, not the layouts' :memory:
            os._exit(7)  # the process dies mid-transaction: no rollback, no close
    return crashing

version = int(sys.argv[2])
store.MIGRATIONS = tuple(replace(m, apply=crash_after(m.apply)) if m.version == version else m for m in store.MIGRATIONS)
store.Store(sys.argv[1])
"""


@pytest.mark.parametrize(("built", "crash_in"), [(1, 2), (4, 6)])
def test_a_crash_inside_a_migration_leaves_the_version_before_it_whole(tmp_path: Path, built: int, crash_in: int) -> None:
    """Migration 1 -> 2 rewrites the switches table; 5 -> 6 adds a table. A process killed inside
    one leaves the database at the version before it, with its data, and the next start finishes."""
    build(tmp_path, built)
    child = subprocess.run([sys.executable, "-c", CRASH, str(tmp_path), str(crash_in)], cwd=REPO, timeout=60)
    assert child.returncode == 7
    found = snapshot(tmp_path)
    assert found.version == crash_in - 1
    db = sqlite3.connect(tmp_path / "goldilocks.db")
    assert layout_of(db) == layouts()[crash_in - 1], "nothing of the migration that crashed is left"
    db.close()
    store = Store(tmp_path)
    assert_intact(store, built)
    assert snapshot(tmp_path).version == SCHEMA_VERSION
