"""State that would lose something is refused, naming the file, with every file left byte for byte
as it was; a write that cannot be committed (a full disk) changes nothing and the next one works."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from controller import state_check
from controller.agents import AgentManager, _psk_context
from controller.store import SCHEMA_VERSION, StateError, StateFullError, Store, snapshot
from crypto.keystore import KeystoreError, MasterKey

VM = {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.1"], "labels": {"tier": "web"}}


def files(state_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state_dir.iterdir())}


@pytest.fixture
def used_state():
    """Makes a state dir as a controller leaves it when killed: a database holding a VM, an audit
    entry and sealed tunnel keys, with the latest writes still in its WAL; the master key and the
    CA sealed with it. The connection stays open, idle, until the test ends: closing it would fold
    the WAL into the database."""
    opened: list[Store] = []

    def make(state_dir: Path, pairs: int = 1) -> Path:
        store = Store(state_dir)
        opened.append(store)
        agents = AgentManager(store, state_dir)  # creates master.key, ca.pem and ca.key.sealed
        with store.transaction():
            store.db.execute("INSERT INTO vms VALUES ('web1', ?)", (json.dumps(VM),))
            store.add_audit(time.time(), "admin", "vm.put", "web1", "created")
            for n in range(pairs):
                a, b, vni = f"hv{n}a", f"hv{n}b", 4096 + n
                store.put_tunnel_pair(a, b, vni, agents.master.seal(os.urandom(32), _psk_context(a, b, vni)), time.time())
        assert (state_dir / "goldilocks.db-wal").stat().st_size > 0
        return state_dir

    yield make
    for store in opened:
        store.close()


def tamper(state_dir: Path, *statements: str | tuple) -> None:
    """Run SQL on the state database from outside, as another program or a damaged disk would."""
    db = sqlite3.connect(state_dir / "goldilocks.db")
    for statement in statements:
        db.execute(*((statement,) if isinstance(statement, str) else statement))
    db.commit()
    db.close()


def refused(state_dir: Path, match: str) -> str:
    """Both the launcher's check and the Store refuse, and neither changes a byte."""
    before = files(state_dir)
    with pytest.raises(StateError, match=match) as caught:
        state_check.check(state_dir)
    assert files(state_dir) == before
    message = str(caught.value)
    assert "\n" not in message and "did not start and changed nothing" in message
    return message


# -- the database ----------------------------------------------------------------------------------
def test_garbage_bytes_are_refused(tmp_path: Path, used_state) -> None:
    state = used_state(tmp_path)
    (state / "goldilocks.db").write_bytes(os.urandom(64 * 1024))
    message = refused(state, "goldilocks.db is not an SQLite database")
    assert "restore the state dir from a backup" in message
    before = files(state)
    with pytest.raises(StateError, match="not an SQLite database"):
        Store(state)
    assert files(state) == before


def test_a_truncated_database_is_refused(tmp_path: Path) -> None:
    state = tmp_path
    store = Store(state)
    with store.transaction():
        for n in range(2000):
            store.add_audit(0.0, "admin", "vm.put", f"vm{n}", "x" * 200)
    store.close()
    assert not (state / "goldilocks.db-wal").exists(), "closed: everything is in the database file"
    path = state / "goldilocks.db"
    os.truncate(path, path.stat().st_size // 2)
    refused(state, "goldilocks.db is damaged")
    before = files(state)
    with pytest.raises(StateError, match="damaged"):
        Store(state)
    assert files(state) == before


def test_a_damaged_page_is_refused(tmp_path: Path) -> None:
    state = tmp_path
    store = Store(state)
    with store.transaction():
        for n in range(500):
            store.add_audit(0.0, "admin", "vm.put", f"vm{n}", "x" * 200)
    store.close()
    path = state / "goldilocks.db"
    data = bytearray(path.read_bytes())
    data[4096 * 2 : 4096 * 2 + 200] = os.urandom(200)  # inside a b-tree page, the header intact
    path.write_bytes(bytes(data))
    refused(state, "goldilocks.db is damaged")


def test_an_sqlite_database_that_is_not_ours_is_refused(tmp_path: Path) -> None:
    (tmp_path / "master.key").write_bytes(b"")  # not reached: the database is looked at first
    tamper(
        tmp_path, "CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)",
        "INSERT INTO moz_places (url) VALUES ('https://example.org')",
    )  # fmt: skip
    message = refused(tmp_path, "an SQLite database, but not Goldilocks's state")
    assert "moz_places" in message and "--state-dir" in message


def test_a_database_missing_tables_is_refused(tmp_path: Path, used_state) -> None:
    state = used_state(tmp_path)
    tamper(state, "DROP TABLE quarantine", "DROP TABLE tokens")
    refused(state, "damaged: it lacks the tables quarantine, tokens")


def test_an_old_database_missing_tables_is_refused(tmp_path: Path, used_state) -> None:
    """Releases up to version 9 all say "1": one whose tables match no release is damaged, not old."""
    state = used_state(tmp_path)
    tamper(state, "UPDATE meta SET value = '1'", "DROP TABLE identities")
    refused(state, "damaged: it lacks the tables identities")


def test_a_database_from_a_newer_version_is_refused(tmp_path: Path, used_state) -> None:
    state = used_state(tmp_path)
    tamper(state, ("UPDATE meta SET value = ?", (str(SCHEMA_VERSION + 1),)), "CREATE TABLE sign_ins (client TEXT PRIMARY KEY)")
    message = refused(state, f"written by a newer Goldilocks \\(schema version {SCHEMA_VERSION + 1}; this one knows up to")
    assert "run the newer version" in message


def test_the_newer_version_in_the_wal_alone_is_seen(tmp_path: Path, used_state) -> None:
    """The version number a newer controller wrote may still be in the WAL only: it is read there,
    and the WAL is not folded into the database."""
    state = used_state(tmp_path)
    store = Store(state)
    with store.transaction():
        store.db.execute("UPDATE meta SET value = ?", (str(SCHEMA_VERSION + 1),))
    refused(state, "written by a newer Goldilocks")
    store.close()


@pytest.mark.parametrize("content", [None, b"", "no tables"])
def test_a_first_start_creates_the_database(tmp_path: Path, content) -> None:
    """No file, an empty one, or one without tables (a first start that stopped early): created."""
    if content == "no tables":
        sqlite3.connect(tmp_path / "goldilocks.db").execute("PRAGMA journal_mode=WAL").fetchall()
    elif content is not None:
        (tmp_path / "goldilocks.db").write_bytes(content)
    assert state_check.check(tmp_path).version is None
    store = Store(tmp_path)
    assert snapshot(tmp_path).version == SCHEMA_VERSION
    AgentManager(store, tmp_path)  # the master key and the CA are made on a first start
    assert (tmp_path / "master.key").exists() and (tmp_path / "ca.key.sealed").exists()


@pytest.mark.parametrize("how", ["deleted", "emptied"])
def test_a_lost_database_beside_keys_is_refused(tmp_path: Path, used_state, how: str) -> None:
    state = used_state(tmp_path)
    for name in ("goldilocks.db", "goldilocks.db-wal", "goldilocks.db-shm"):
        (state / name).unlink()
    if how == "emptied":
        (state / "goldilocks.db").write_bytes(b"")
    message = refused(state, "goldilocks.db is missing or empty, but admin.token|master.key")
    assert "releasing quarantines and forgetting keys" in message and "restore goldilocks.db from a backup" in message


# -- the master key --------------------------------------------------------------------------------
def test_a_missing_master_key_is_refused_not_replaced(tmp_path: Path, used_state) -> None:
    state = used_state(tmp_path, pairs=3)
    (state / "master.key").unlink()
    message = refused(state, "master.key is missing, but ca.key.sealed and 3 tunnel keys in goldilocks.db are sealed with it")
    assert "restore master.key from a backup" in message
    # and whoever loads the key directly does not make a new one beside the sealed CA key
    with pytest.raises(KeystoreError, match="ca.key.sealed .* is sealed with it"):
        MasterKey.load_or_create(state / "master.key")
    assert not (state / "master.key").exists()


def test_a_missing_master_key_with_sealed_tunnel_keys_alone_is_refused(tmp_path: Path, used_state) -> None:
    state = used_state(tmp_path, pairs=2)
    for name in ("master.key", "ca.key.sealed", "ca.pem"):
        (state / name).unlink()
    refused(state, "master.key is missing, but 2 tunnel keys in goldilocks.db are sealed with it")


def test_a_database_from_before_encryption_gets_a_master_key(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.close()
    (tmp_path / "goldilocks.db-wal").unlink(missing_ok=True)
    state_check.check(tmp_path)  # a database and no key: nothing is sealed, the key is created
    AgentManager(Store(tmp_path), tmp_path)
    assert (tmp_path / "master.key").stat().st_size == 32


def test_another_master_key_is_refused(tmp_path: Path, used_state) -> None:
    state = used_state(tmp_path)
    (state / "master.key").write_bytes(os.urandom(32))
    refused(state, "master.key does not open .*ca.key.sealed: it is not the key this state was sealed with")


def test_another_master_key_with_its_own_ca_is_refused_on_the_tunnel_keys(tmp_path: Path, used_state) -> None:
    """master.key and the CA restored from another controller: the CA opens, the tunnel keys do not."""
    state = used_state(tmp_path / "state")
    other = tmp_path / "other"
    AgentManager(Store(other), other)
    for name in ("master.key", "ca.key.sealed", "ca.pem"):
        (state / name).write_bytes((other / name).read_bytes())
    refused(state, "master.key does not open the tunnel key of hv0a and hv0b")


def test_a_master_key_readable_by_others_is_refused(tmp_path: Path, used_state) -> None:
    state = used_state(tmp_path)
    os.chmod(state / "master.key", 0o644)
    refused(state, "master.key: mode 0644 lets group or others access a secret")


# -- a write that cannot be committed --------------------------------------------------------------
def fill(store: Store) -> None:
    """No page may be added to the database from now on (SQLite's own limit, like a full disk)."""
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    store.db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_transaction_that_cannot_be_written_changes_nothing(tmp_path: Path) -> None:
    store = Store(tmp_path)
    fill(store)
    with pytest.raises(StateFullError, match="database or disk is full; nothing was changed"):
        with store.transaction():
            for n in range(200):
                store.add_audit(0.0, "admin", "vm.put", f"vm{n}", "x" * 500)
    assert store.audit_entries(500) == [], "none of the transaction was kept"
    store.db.execute("PRAGMA max_page_count = 1073741823")
    with store.transaction():  # the connection is not left inside the failed transaction
        store.add_audit(0.0, "admin", "vm.put", "vm1", "created")
    assert [e.target for e in store.audit_entries(10)] == ["vm1"]


def test_a_rest_write_on_a_full_database_is_507_and_applies_nothing(tmp_path: Path) -> None:
    from tests.api_stub import make_api

    app, client = make_api(tmp_path)
    assert client.call("PUT", "/v1/vms/web1", VM).status == 201
    policy, audit = app.policy, client.call("GET", "/v1/audit").json
    fill(app.store)
    big = {"macs": ["02:00:00:00:00:02"], "ips": ["10.0.0.2"], "labels": {f"k{n}": "v" * 60 for n in range(60)}}
    answer = client.call("PUT", "/v1/vms/db1", big)  # checked against the API document
    assert answer.status == 507
    assert answer.json == {"error": "the state database's disk is full; nothing was changed; retry once there is space"}
    assert app.policy is policy, "the controller's model is not changed"
    assert client.call("GET", "/v1/vms/db1").status == 404
    assert client.call("GET", "/v1/audit").json == audit, "nor is the audit log"
    assert [vm["name"] for vm in client.call("GET", "/v1/vms").json["vms"]] == ["web1"], "reads are served"
    app.store.db.execute("PRAGMA max_page_count = 1073741823")
    assert client.call("PUT", "/v1/vms/db1", big).status == 201
    assert client.call("GET", "/v1/vms/db1").status == 200


def test_a_compile_whose_state_cannot_be_saved_still_programs_the_switches_and_saves_later(tmp_path: Path, caplog) -> None:
    """A full disk used to abort the compile at its first write (the identities), before any switch
    got its flows. Now the write fails alone, is logged once, and is made by a later compile."""
    import logging
    from types import SimpleNamespace

    from controller.launcher import patch_eventlet

    patch_eventlet()
    from controller.app import GoldilocksController

    store = Store(tmp_path)
    shell = SimpleNamespace(_save_failed_at={})
    added = {(("tier", "db"),): 7}
    (pages,) = store.db.execute("PRAGMA page_count").fetchone()
    big = {tuple((f"k{n}", "v" * 200) for n in range(30)): 8 + i for i in range(200)}
    fill(store)
    with caplog.at_level(logging.ERROR, logger="goldilocks.controller"):
        for _ in range(3):  # three compiles while the disk is full
            assert GoldilocksController._save(shell, "identities", lambda: store.add_identities({**added, **big})) is False
    assert sum("could not save the identities" in r.getMessage() for r in caplog.records) == 1, "logged once"
    store.db.execute(f"PRAGMA max_page_count = {pages * 100}")  # room again
    assert GoldilocksController._save(shell, "identities", lambda: store.add_identities(added)) is True
    assert Store(tmp_path).load_identities() == added
