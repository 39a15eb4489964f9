"""SQLite state in the state dir: topology, policy, API tokens and the audit log survive a controller restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType

from apps.context import PolicyState
from apps.inventory import vm_from_json
from apps.policy import rule_from_json
from apps.quarantine import Quarantine
from apps.remediation import allow_list_json, parse_allow_list
from topology.model import Host, Link, Port, PortRef, Switch, Topology

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS switches (
    dpid INTEGER PRIMARY KEY, name TEXT NOT NULL, role_override TEXT, state TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS links (
    a_dpid INTEGER NOT NULL, a_port INTEGER NOT NULL, b_dpid INTEGER NOT NULL, b_port INTEGER NOT NULL,
    PRIMARY KEY (a_dpid, a_port, b_dpid, b_port));
CREATE TABLE IF NOT EXISTS hosts (
    mac TEXT PRIMARY KEY, ips TEXT NOT NULL, dpid INTEGER NOT NULL, port INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS vms (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS vm_sources (name TEXT PRIMARY KEY, source TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS rules (position INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS identities (labels TEXT PRIMARY KEY, id INTEGER UNIQUE NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    name TEXT PRIMARY KEY, role TEXT NOT NULL, digest TEXT UNIQUE NOT NULL, fingerprint TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS quarantine (vm TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS alerts (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, vm TEXT NOT NULL, target TEXT NOT NULL,
    severity TEXT NOT NULL, source TEXT NOT NULL, signature TEXT NOT NULL, action TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS agent_tokens (
    digest TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, used REAL);
CREATE TABLE IF NOT EXISTS agents (
    hypervisor TEXT PRIMARY KEY, idx INTEGER UNIQUE NOT NULL, serial TEXT NOT NULL, enrolled REAL NOT NULL, info TEXT);
CREATE TABLE IF NOT EXISTS revoked_serials (serial TEXT PRIMARY KEY, hypervisor TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tunnel_pairs (
    a TEXT NOT NULL, b TEXT NOT NULL, vni INTEGER UNIQUE NOT NULL, psk BLOB NOT NULL, psk_created REAL NOT NULL,
    PRIMARY KEY (a, b));
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
    target TEXT NOT NULL, summary TEXT NOT NULL);
"""
# The version SCHEMA is. A database of an earlier version is migrated to it (MIGRATIONS); one of
# a later version is refused. Changing SCHEMA means adding a migration: tests/unit/test_store_migrations.py
# checks that a database migrated from version 1 has exactly the tables and columns SCHEMA makes.
SCHEMA_VERSION = 9
DB_FILE = "goldilocks.db"

# Who last wrote a VM: the REST API, the --inventory file, or the hypervisor's OVSDB. Only VMs
# whose source is "ovsdb" are updated and removed by what OVS publishes. A VM without a row
# (stored before sources were kept) counts as the API's.
SOURCE_API, SOURCE_FILE, SOURCE_OVSDB = "api", "file", "ovsdb"


@dataclass(frozen=True)
class StoredToken:
    """An API token as stored: its SHA-256 digest (hex), never its value."""

    name: str
    role: str
    digest: str
    fingerprint: str
    created: float


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    actor: str
    action: str
    target: str
    summary: str


class StateError(RuntimeError):
    """The state directory or database cannot be used."""


def _owner_only(path: Path) -> None:
    """The database holds token digests, the audit log and the inventory: only its owner may read
    it, whatever the state directory's mode. It is created 0600 (SQLite gives its -wal and -shm
    files the database's mode), and one an older version created readable by others is made 0600."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        if os.fstat(fd).st_mode & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    for extra in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if extra.exists() and extra.stat().st_mode & 0o077:
            extra.chmod(0o600)


class StateFullError(StateError):
    """A transaction did not fit on the state database's disk: it was rolled back, nothing of it applied."""


# -- schema versions ---------------------------------------------------------------------------
# Version 1, the first schema shipped. Every later version is version 1 plus the migrations up to
# it. Until version 9 every release wrote "1" into meta, whatever its tables: a database that says
# "1" is recognised by its tables instead (_legacy_version).
SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE switches (
    dpid INTEGER PRIMARY KEY, name TEXT NOT NULL, role_override TEXT, ports TEXT NOT NULL,
    edge_ports TEXT NOT NULL DEFAULT '[]');
CREATE TABLE links (
    a_dpid INTEGER NOT NULL, a_port INTEGER NOT NULL, b_dpid INTEGER NOT NULL, b_port INTEGER NOT NULL,
    PRIMARY KEY (a_dpid, a_port, b_dpid, b_port));
CREATE TABLE hosts (
    mac TEXT PRIMARY KEY, ips TEXT NOT NULL, dpid INTEGER NOT NULL, port INTEGER NOT NULL);
"""


@dataclass(frozen=True)
class Migration:
    """From version `version - 1` to `version`, in one transaction with the new version number."""

    version: int
    summary: str
    apply: Callable[[sqlite3.Connection], None]


def _statements(ddl: str) -> Callable[[sqlite3.Connection], None]:
    def apply(db: sqlite3.Connection) -> None:
        for statement in ddl.split(";"):
            if statement.strip():
                db.execute(statement)

    return apply


def _switch_state_in_one_column(db: sqlite3.Connection) -> None:
    """Version 2 keeps a switch's ports, edge ports and fabric ports as one JSON document. Fabric
    ports were new: the ports that carry a stored link are fabric ports."""
    fabric: dict[int, set[int]] = {}
    for a_dpid, a_port, b_dpid, b_port in db.execute("SELECT a_dpid, a_port, b_dpid, b_port FROM links"):
        fabric.setdefault(a_dpid, set()).add(a_port)
        fabric.setdefault(b_dpid, set()).add(b_port)
    rows = [
        (dpid, name, role, json.dumps({"ports": json.loads(ports), "edge_ports": json.loads(edge),
                                       "fabric_ports": sorted(fabric.get(dpid, ()))}))
        for dpid, name, role, ports, edge in db.execute("SELECT dpid, name, role_override, ports, edge_ports FROM switches")
    ]  # fmt: skip
    db.execute("DROP TABLE switches")
    db.execute("CREATE TABLE switches (dpid INTEGER PRIMARY KEY, name TEXT NOT NULL, role_override TEXT, state TEXT NOT NULL)")
    db.executemany("INSERT INTO switches VALUES (?, ?, ?, ?)", rows)


MIGRATIONS: tuple[Migration, ...] = (
    Migration(2, "switch state as one JSON column, with fabric ports", _switch_state_in_one_column),
    Migration(3, "VM inventory, ordered rules, settings", _statements("""
        CREATE TABLE vms (name TEXT PRIMARY KEY, doc TEXT NOT NULL);
        CREATE TABLE rules (position INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, doc TEXT NOT NULL);
        CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)""")),
    Migration(4, "identity numbers", _statements(
        "CREATE TABLE identities (labels TEXT PRIMARY KEY, id INTEGER UNIQUE NOT NULL)")),
    Migration(5, "API tokens and the audit log", _statements("""
        CREATE TABLE tokens (name TEXT PRIMARY KEY, role TEXT NOT NULL, digest TEXT UNIQUE NOT NULL,
            fingerprint TEXT NOT NULL, created REAL NOT NULL);
        CREATE TABLE audit (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL,
            action TEXT NOT NULL, target TEXT NOT NULL, summary TEXT NOT NULL)""")),
    Migration(6, "who wrote each VM", _statements(
        "CREATE TABLE vm_sources (name TEXT PRIMARY KEY, source TEXT NOT NULL)")),
    Migration(7, "agents, enrollment tokens, revoked certificates, tunnel pairs", _statements("""
        CREATE TABLE agent_tokens (digest TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, created REAL NOT NULL,
            expires REAL NOT NULL, used REAL);
        CREATE TABLE agents (hypervisor TEXT PRIMARY KEY, idx INTEGER UNIQUE NOT NULL, serial TEXT NOT NULL,
            enrolled REAL NOT NULL, info TEXT);
        CREATE TABLE revoked_serials (serial TEXT PRIMARY KEY, hypervisor TEXT NOT NULL, at REAL NOT NULL);
        CREATE TABLE tunnel_pairs (a TEXT NOT NULL, b TEXT NOT NULL, vni INTEGER UNIQUE NOT NULL, psk BLOB NOT NULL,
            psk_created REAL NOT NULL, PRIMARY KEY (a, b))""")),
    Migration(8, "quarantine", _statements("CREATE TABLE quarantine (vm TEXT PRIMARY KEY, doc TEXT NOT NULL)")),
    Migration(9, "alerts", _statements("""
        CREATE TABLE alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, vm TEXT NOT NULL,
            target TEXT NOT NULL, severity TEXT NOT NULL, source TEXT NOT NULL, signature TEXT NOT NULL,
            action TEXT NOT NULL)""")),
)  # fmt: skip

Layout = dict[str, tuple[str, ...]]  # table -> its column names


def layout_of(db: sqlite3.Connection) -> Layout:
    """The tables (SQLite's own left out) and their columns."""
    names = [n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    return {name: tuple(row[1] for row in db.execute(f'PRAGMA table_info("{name}")')) for name in sorted(names)}


def layouts() -> dict[int, Layout]:
    """Each version's tables and columns: version 1, then each migration applied in turn (in memory,
    about a millisecond)."""
    db = sqlite3.connect(":memory:", isolation_level=None)
    try:
        _statements(SCHEMA_V1)(db)
        found = {1: layout_of(db)}
        for step in MIGRATIONS:
            step.apply(db)
            found[step.version] = layout_of(db)
        return found
    finally:
        db.close()


def _legacy_version(path: Path, found: Layout, known: dict[int, Layout]) -> int:
    """The version of a database that says "1": the one whose tables it has, exactly."""
    for version, layout in known.items():
        if found == layout:
            return version
    closest = min(known.values(), key=lambda layout: len(layout.keys() ^ found.keys()))
    raise StateError(_damaged(path, closest, found))


def _damaged(path: Path, expected: Layout, found: Layout) -> str:
    missing = sorted(expected.keys() - found.keys())
    differ = sorted(t for t in expected.keys() & found.keys() if expected[t] != found[t])
    what = []
    if missing:
        what.append(f"lacks the tables {', '.join(missing)}")
    if differ:
        what.append(f"has other columns in {', '.join(differ)}")
    extra = sorted(found.keys() - expected.keys())
    if extra:
        what.append(f"has unknown tables {', '.join(extra)}")
    return f"{path} is damaged: it {' and '.join(what)}. {_RESTORE}"


def migrate(db: sqlite3.Connection, version: int) -> None:
    """Bring a database of `version` to SCHEMA_VERSION, one migration per transaction: a crash
    leaves it at the version of the last migration that committed, whole."""
    for step in MIGRATIONS[version - 1 :]:
        db.execute("BEGIN IMMEDIATE")
        try:
            step.apply(db)
            db.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(step.version),))
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    (label,) = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if label != str(SCHEMA_VERSION):  # a version 9 database that says "1"
        db.execute("BEGIN IMMEDIATE")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))
        db.execute("COMMIT")


# -- looking before writing ------------------------------------------------------------------------
_RESTORE = "The controller did not start and changed nothing; restore the state dir from a backup"
_SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Snapshot:
    """What a read-only look at the state database found. `version` is None when there is no
    database yet (no file, an empty file, or one without tables): a first start creates it."""

    path: Path
    version: int | None
    label: str = ""  # the schema version its meta table states
    tunnel_pairs: tuple[tuple[str, str, int, bytes], ...] = ()  # (a, b, vni, sealed PSK)


def snapshot(state_dir: str | os.PathLike) -> Snapshot:
    """Check the state database without writing a byte of it: raise StateError naming the file and
    what to do if it is damaged, not Goldilocks's, or of a newer version. SQLite reads its WAL
    through a shared-memory file it writes to, even read-only, so a private copy is read instead."""
    path = Path(state_dir) / DB_FILE
    try:
        if not os.path.lexists(path):
            return Snapshot(path, None)
        if not path.is_file():
            raise StateError(f"{path} is not a regular file. {_RESTORE}")
        with open(path, "rb") as file:
            header = file.read(len(_SQLITE_MAGIC))
        wal = path.with_name(path.name + "-wal")
        if not header and not (wal.exists() and wal.stat().st_size):
            return Snapshot(path, None)  # created by a first start that stopped before SQLite wrote
        if header != _SQLITE_MAGIC:
            raise StateError(f"{path} is not an SQLite database (its first bytes are not SQLite's). {_RESTORE}")
        with tempfile.TemporaryDirectory(prefix="goldilocks-check-") as scratch:
            copy = Path(scratch) / DB_FILE
            shutil.copyfile(path, copy)
            if wal.exists():
                shutil.copyfile(wal, copy.with_name(copy.name + "-wal"))
            return _read_snapshot(path, copy)
    except OSError as exc:
        raise StateError(f"cannot read {exc.filename or path}: {exc.strerror or exc}") from None


def _read_snapshot(path: Path, copy: Path) -> Snapshot:
    db = sqlite3.connect(copy, isolation_level=None)
    try:
        check = [row[0] for row in db.execute("PRAGMA quick_check")]
        if check != ["ok"]:
            first = " ".join(check[0].split())[:200]  # one line: SQLite's report has several
            raise StateError(f"{path} is damaged (SQLite's check: {first}). {_RESTORE}")
        found = layout_of(db)
        if not found:
            return Snapshot(path, None)
        if "meta" not in found:
            tables = ", ".join(sorted(found))
            raise StateError(
                f"{path} is an SQLite database, but not Goldilocks's state (no meta table; its tables: {tables}). "
                "The controller did not start and changed nothing; point --state-dir at the right directory"
            )
        row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row is None or not str(row[0]).isascii() or not str(row[0]).isdigit() or int(row[0]) < 1:
            raise StateError(f"{path} is damaged: its meta table has no schema version. {_RESTORE}")
        version = int(row[0])
        if version > SCHEMA_VERSION:
            raise StateError(
                f"{path} was written by a newer Goldilocks (schema version {version}; this one knows up to "
                f"{SCHEMA_VERSION}). The controller did not start and changed nothing; run the newer version, "
                "or restore a backup this version wrote"
            )
        known = layouts()
        if version == 1:
            version = _legacy_version(path, found, known)
        elif found != known[version]:
            raise StateError(_damaged(path, known[version], found))
        pairs = ()
        if "tunnel_pairs" in found:
            pairs = tuple(db.execute("SELECT a, b, vni, psk FROM tunnel_pairs ORDER BY a, b"))
        return Snapshot(path, version, row[0], pairs)
    except sqlite3.DatabaseError as exc:
        raise StateError(f"{path} is damaged or not an SQLite database ({exc}). {_RESTORE}") from None
    finally:
        db.close()


class Store:
    """One SQLite database file. Every save is one transaction: all of it or none."""

    def __init__(self, state_dir: str | os.PathLike) -> None:
        """Open the state database, creating it on a first start and migrating one of an earlier
        version. A database that cannot be used raises StateError before anything is written."""
        self.state_dir = Path(state_dir)
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise StateError(f"cannot use state dir {self.state_dir}: {exc}") from exc
        found = snapshot(self.state_dir)
        self.path = found.path
        try:
            _owner_only(self.path)
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if found.version is None:
                with self.transaction():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            self.db.execute(statement)
                    self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif found.label != str(SCHEMA_VERSION):
                migrate(self.db, found.version)
        except (OSError, sqlite3.Error) as exc:
            raise StateError(f"cannot use state dir {self.state_dir}: {exc}") from exc

        self._saved_topology: tuple[dict, set, dict] | None = None  # rows as last written or read
        self._seen: tuple[dict, dict] = ({}, {})  # what they were built from: switch signatures, Host objects

    def transaction(self) -> _Transaction:
        return _Transaction(self.db, self.path)

    def close(self) -> None:
        self.db.close()

    # -- policy: inventory, rules, default action -----------------------------------
    def load_policy(self) -> PolicyState:
        vms = [vm_from_json(name, json.loads(doc)) for name, doc in self.db.execute("SELECT name, doc FROM vms")]
        rules = tuple(rule_from_json(json.loads(doc)) for (doc,) in self.db.execute("SELECT doc FROM rules ORDER BY position"))
        row = self.db.execute("SELECT value FROM settings WHERE key = 'default_action'").fetchone()
        state = PolicyState().with_vms(vms)
        quarantine = {
            vm: Quarantine.from_json(json.loads(doc)) for vm, doc in self.db.execute("SELECT vm, doc FROM quarantine")
        }
        remediation = self.db.execute("SELECT value FROM settings WHERE key = 'remediation'").fetchone()
        return replace(
            state,
            rules=rules,
            default_action=row[0] if row else state.default_action,
            quarantine=MappingProxyType(quarantine),
            remediation=parse_allow_list(json.loads(remediation[0])) if remediation else (),
        )

    def write_policy(self, old: PolicyState, new: PolicyState) -> None:
        """Write what changed from old to new. Call inside a transaction (with other writes
        of the same request, such as its audit entry). Only the VMs that differ are visited: a
        write costs what it changes, not the size of the inventory."""
        for name in sorted(new.vms.changed_since(old.vms)):
            vm = new.vms.get(name)
            if vm is None:
                self.db.execute("DELETE FROM vms WHERE name = ?", (name,))
                self.db.execute("DELETE FROM vm_sources WHERE name = ?", (name,))
            elif old.vms.get(name) != vm:
                body = vm.to_json()
                del body["name"]
                self.db.execute("INSERT OR REPLACE INTO vms VALUES (?, ?)", (name, json.dumps(body)))
        if old.rules != new.rules:
            self.db.execute("DELETE FROM rules")
            self.db.executemany(
                "INSERT INTO rules VALUES (?, ?, ?)", [(i, r.name, json.dumps(r.to_json())) for i, r in enumerate(new.rules)]
            )
        if old.default_action != new.default_action:
            self.db.execute("INSERT OR REPLACE INTO settings VALUES ('default_action', ?)", (new.default_action,))
        if old.remediation != new.remediation:
            value = json.dumps(allow_list_json(new.remediation))
            self.db.execute("INSERT OR REPLACE INTO settings VALUES ('remediation', ?)", (value,))
        for name in old.quarantine.keys() - new.quarantine.keys():
            self.db.execute("DELETE FROM quarantine WHERE vm = ?", (name,))
        for name, record in new.quarantine.items():
            if old.quarantine.get(name) != record:
                self.db.execute("INSERT OR REPLACE INTO quarantine VALUES (?, ?)", (name, json.dumps(record.to_json())))

    def vm_sources(self) -> dict[str, str]:
        return dict(self.db.execute("SELECT name, source FROM vm_sources"))

    def vm_source(self, name: str) -> str:
        row = self.db.execute("SELECT source FROM vm_sources WHERE name = ?", (name,)).fetchone()
        return row[0] if row else SOURCE_API

    def set_vm_sources(self, names: Iterable[str], source: str) -> None:
        """Record who wrote these VMs. Call inside the transaction that writes them."""
        self.db.executemany("INSERT OR REPLACE INTO vm_sources VALUES (?, ?)", [(name, source) for name in names])

    # -- identities: label set -> number, never renumbered ---------------------------------
    def load_identities(self) -> dict[tuple, int]:
        return {
            tuple(tuple(pair) for pair in json.loads(labels)): number
            for labels, number in self.db.execute("SELECT labels, id FROM identities")
        }

    def add_identities(self, added: dict[tuple, int]) -> None:
        with self.transaction():
            self.db.executemany(
                "INSERT OR IGNORE INTO identities VALUES (?, ?)", [(json.dumps(labels), n) for labels, n in added.items()]
            )

    # -- API tokens (digests only) and the audit log -------------------------------------
    # The writers run inside the caller's transaction, together with the change they belong to.
    def add_token(self, token: StoredToken) -> None:
        self.db.execute(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?)", (token.name, token.role, token.digest, token.fingerprint, token.created)
        )

    def delete_token(self, name: str) -> bool:
        return self.db.execute("DELETE FROM tokens WHERE name = ?", (name,)).rowcount > 0

    def tokens(self) -> list[StoredToken]:
        return [
            StoredToken(*row)
            for row in self.db.execute("SELECT name, role, digest, fingerprint, created FROM tokens ORDER BY name")
        ]

    def add_alert(self, at: float, vm: str, target: str, severity: str, source: str, signature: str, action: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO alerts (at, vm, target, severity, source, signature, action) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (at, vm, target, severity, source, signature, action),
        )
        return cursor.lastrowid

    def alerts(self, limit: int, vm: str | None = None) -> list[tuple]:
        """(id, at, vm, target, severity, source, signature, action), newest first."""
        if vm is None:
            query, args = "SELECT * FROM alerts ORDER BY id DESC LIMIT ?", (limit,)
        else:
            query, args = "SELECT * FROM alerts WHERE vm = ? ORDER BY id DESC LIMIT ?", (vm, limit)
        return list(self.db.execute(query, args))

    def add_audit(self, at: float, actor: str, action: str, target: str, summary: str) -> int:
        cursor = self.db.execute(
            "INSERT INTO audit (at, actor, action, target, summary) VALUES (?, ?, ?, ?, ?)", (at, actor, action, target, summary)
        )
        return cursor.lastrowid

    def audit_entries(self, limit: int, before: int | None = None) -> list[AuditEntry]:
        """Newest first; `before` (an entry id) continues a previous page."""
        rows = self.db.execute(
            "SELECT id, at, actor, action, target, summary FROM audit WHERE id < ? ORDER BY id DESC LIMIT ?",
            (before if before is not None else 2**63 - 1, limit),
        )
        return [AuditEntry(*row) for row in rows]

    def purge_audit(self, before: float, limit: int) -> int:
        """Delete entries recorded before `before` (a time.time()) among the `limit` oldest, and
        return how many went. Entries are appended in time order, so the oldest ids are the oldest
        entries: this reads at most `limit` rows however large the log is (there is no index on
        `at` to search). Call again while it returns `limit`."""
        with self.transaction():
            return self.db.execute(
                "DELETE FROM audit WHERE id IN (SELECT id FROM audit ORDER BY id LIMIT ?) AND at < ?", (limit, before)
            ).rowcount

    # -- agents, their enrollment tokens and the tunnel pairs' keys ------------------------
    # PSKs are stored sealed (crypto/keystore.py); the store never sees them in clear.
    def add_agent_token(self, digest: str, fingerprint: str, created: float, expires: float) -> None:
        self.db.execute("INSERT INTO agent_tokens VALUES (?, ?, ?, ?, NULL)", (digest, fingerprint, created, expires))

    def agent_token(self, digest: str) -> tuple[str, float, float | None] | None:
        """(fingerprint, expires, used) of an enrollment token, by digest."""
        return self.db.execute("SELECT fingerprint, expires, used FROM agent_tokens WHERE digest = ?", (digest,)).fetchone()

    def use_agent_token(self, digest: str, at: float) -> bool:
        """Mark a token used; False when it was already used (or does not exist)."""
        cursor = self.db.execute("UPDATE agent_tokens SET used = ? WHERE digest = ? AND used IS NULL", (at, digest))
        return cursor.rowcount == 1

    def agents(self) -> list[tuple[str, int, str, float, str | None]]:
        """(hypervisor, index, certificate serial, enrolled at, hello JSON) of every enrolled agent."""
        return list(self.db.execute("SELECT hypervisor, idx, serial, enrolled, info FROM agents ORDER BY idx"))

    def put_agent(self, hypervisor: str, index: int, serial: int, enrolled: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO agents VALUES (?, ?, ?, ?, (SELECT info FROM agents WHERE hypervisor = ?))",
            (hypervisor, index, str(serial), enrolled, hypervisor),
        )

    def set_agent_info(self, hypervisor: str, info: str) -> None:
        self.db.execute("UPDATE agents SET info = ? WHERE hypervisor = ?", (info, hypervisor))

    def delete_agent(self, hypervisor: str) -> None:
        self.db.execute("DELETE FROM agents WHERE hypervisor = ?", (hypervisor,))

    def revoke_serial(self, serial: int, hypervisor: str, at: float) -> None:
        self.db.execute("INSERT OR IGNORE INTO revoked_serials VALUES (?, ?, ?)", (str(serial), hypervisor, at))

    def revoked_serials(self) -> set[int]:
        return {int(serial) for (serial,) in self.db.execute("SELECT serial FROM revoked_serials")}

    def tunnel_pairs(self) -> list[tuple[str, str, int, bytes, float]]:
        """(a, b, vni, sealed psk, psk created) of every pair, a < b."""
        return list(self.db.execute("SELECT a, b, vni, psk, psk_created FROM tunnel_pairs ORDER BY a, b"))

    def put_tunnel_pair(self, a: str, b: str, vni: int, sealed_psk: bytes, created: float) -> None:
        self.db.execute("INSERT OR REPLACE INTO tunnel_pairs VALUES (?, ?, ?, ?, ?)", (a, b, vni, sealed_psk, created))

    def delete_tunnel_pair(self, a: str, b: str) -> None:
        self.db.execute("DELETE FROM tunnel_pairs WHERE a = ? AND b = ?", (a, b))

    # -- topology -----------------------------------------------------------
    def save_topology(self, topo: Topology) -> None:
        """Write what changed since the last save (or load): a compile that changed one host writes
        one row, and one that changed nothing writes nothing. Rows are built only for the switches
        and hosts that are not the same as at the last save: the cost grows with the change, not
        with the data centre."""
        saved = self._saved_topology
        if saved is None:
            saved = self._read_topology_rows()
        old_switches, old_links, old_hosts = saved
        seen_switches, seen_hosts = self._seen
        signatures = {}
        switches = dict(old_switches)
        for sw in topo.switches.values():
            asked = topo.asked.get(sw.dpid, ())
            signature = (sw.name, sw.role_override, tuple(sw.ports.values()), frozenset(sw.edge_confirmed),
                         frozenset(sw.fabric_ports), asked)  # fmt: skip
            signatures[sw.dpid] = signature
            if seen_switches.get(sw.dpid) != signature or sw.dpid not in switches:
                switches[sw.dpid] = (sw.dpid, sw.name, sw.role_override, json.dumps(_switch_state(sw, asked)))
        for dpid in [d for d in switches if d not in topo.switches]:
            del switches[dpid]
        links = {(lk.a.dpid, lk.a.port, lk.b.dpid, lk.b.port) for lk in topo.links}
        hosts = dict(old_hosts)
        current = topo.hosts
        for mac, host in current.items():
            if seen_hosts.get(mac) is not host or mac not in hosts:
                hosts[mac] = (mac, json.dumps(sorted(host.ips)), host.dpid, host.port)
        if len(hosts) != len(current):
            for mac in [m for m in hosts if m not in current]:
                del hosts[mac]
        changed_switches = [row for dpid, row in switches.items() if old_switches.get(dpid) != row]
        changed_hosts = [row for mac, row in hosts.items() if old_hosts.get(mac) is not row and old_hosts.get(mac) != row]
        gone_switches = [(d,) for d in old_switches.keys() - switches.keys()]
        gone_hosts = [(m,) for m in old_hosts.keys() - hosts.keys()]
        new_links, gone_links = links - old_links, old_links - links
        if changed_switches or changed_hosts or gone_switches or gone_hosts or new_links or gone_links:
            with self.transaction():
                self.db.executemany("DELETE FROM switches WHERE dpid = ?", gone_switches)
                self.db.executemany("INSERT OR REPLACE INTO switches VALUES (?, ?, ?, ?)", changed_switches)
                self.db.executemany(
                    "DELETE FROM links WHERE a_dpid = ? AND a_port = ? AND b_dpid = ? AND b_port = ?", sorted(gone_links)
                )
                self.db.executemany("INSERT OR REPLACE INTO links VALUES (?, ?, ?, ?)", sorted(new_links))
                self.db.executemany("DELETE FROM hosts WHERE mac = ?", gone_hosts)
                self.db.executemany("INSERT OR REPLACE INTO hosts VALUES (?, ?, ?, ?)", changed_hosts)
        self._saved_topology = (switches, links, hosts)
        self._seen = (signatures, dict(current))

    def _read_topology_rows(self) -> tuple[dict, set, dict]:
        switches = {row[0]: tuple(row) for row in self.db.execute("SELECT dpid, name, role_override, state FROM switches")}
        links = {tuple(row) for row in self.db.execute("SELECT a_dpid, a_port, b_dpid, b_port FROM links")}
        hosts = {row[0]: tuple(row) for row in self.db.execute("SELECT mac, ips, dpid, port FROM hosts")}
        return switches, links, hosts

    def load_topology(self, now: float) -> Topology:
        topo = Topology()
        for dpid, name, role, state in self.db.execute("SELECT dpid, name, role_override, state FROM switches"):
            state = json.loads(state)
            topo.switches[dpid] = Switch(
                dpid,
                name,
                {p[0]: Port(p[0], p[1], p[2], bool(p[3])) for p in state["ports"]},
                role,
                connected=False,
                edge_confirmed=set(state["edge_ports"]),
                fabric_ports=set(state["fabric_ports"]),
            )
            if state.get("asked"):
                topo.asked[dpid] = tuple(state["asked"])  # the addresses it answers because its VMs asked
        for a_dpid, a_port, b_dpid, b_port in self.db.execute("SELECT * FROM links"):
            topo.links[Link.between(PortRef(a_dpid, a_port), PortRef(b_dpid, b_port))] = now
        for mac, ips, dpid, port in self.db.execute("SELECT * FROM hosts"):
            topo.hosts[mac] = Host(mac, frozenset(json.loads(ips)), dpid, port)
        return topo


def _switch_state(sw: Switch, asked: tuple[str, ...]) -> dict:
    state = {
        "ports": [[p.port_no, p.name, p.hw_addr, p.up] for p in sw.ports.values()],
        "edge_ports": sorted(sw.edge_confirmed),
        "fabric_ports": sorted(sw.fabric_ports),
    }
    if asked:
        state["asked"] = list(asked)  # oldest first, as Topology.asked keeps them
    return state


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT. If the body or the commit fails, the transaction is rolled back
    (a commit that fails, on a full disk say, leaves it open otherwise, and every later write would
    fail too). A full disk is raised as StateFullError."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self.db = db
        self.path = path

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            try:
                self.db.execute("COMMIT")
                return
            except sqlite3.Error as error:
                exc = error
        with contextlib.suppress(sqlite3.Error):  # SQLite may have rolled back already
            self.db.execute("ROLLBACK")
        if getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            raise StateFullError(f"cannot write the state database {self.path}: {exc}; nothing was changed") from exc
        if exc_type is None:
            raise exc
