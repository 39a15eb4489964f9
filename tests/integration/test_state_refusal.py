"""The real controller process against a damaged or half-missing state dir: it exits with status 3
and one line naming the file and what to do, and leaves every file byte for byte as it was. On a
real full disk (a small tmpfs), a REST write gets a 507 and changes nothing, reads go on, and the
write succeeds once there is space again."""

from __future__ import annotations

import errno
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from controller.launcher import EXIT_STATE
from controller.store import SCHEMA_VERSION
from mininet_scenarios.harness import ControllerProcess, api_call, free_port
from tests.unit.test_store_migrations import build

ARGS = ["--no-ovsdb-inventory"]  # nothing here touches the machine's Open vSwitch
WEB = {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.1"], "labels": {"tier": "web"}}
DB = {"macs": ["02:00:00:00:00:02"], "ips": ["10.0.0.2"], "labels": {f"k{n}": "v" * 60 for n in range(40)}}


@pytest.fixture(scope="session", autouse=True)
def environment():
    """Only a controller process on loopback: no Open vSwitch or Mininet needed."""


def controller(state: Path, logs: Path) -> ControllerProcess:
    # The log goes outside the state dir: the state dir must hold only what the controller keeps.
    return ControllerProcess(state_dir=str(state), log_path=str(logs / f"{state.name}.log"), extra_args=list(ARGS))


def start(ctl: ControllerProcess) -> ControllerProcess:
    """Start it; on a port that something else took between free_port() and the controller's bind
    (client sockets of other processes pick from the same range), try other ports, twice at most."""
    for attempt in range(3):
        try:
            return ctl.start()
        except RuntimeError as exc:
            if "Address already in use" not in str(exc) or attempt == 2:
                raise
            ctl.kill()
            ctl.of_port, ctl.rest_port, ctl.agent_port = free_port(), free_port(), free_port()
    raise AssertionError("unreachable")


def files(state: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(state.iterdir())}


@pytest.fixture(scope="module")
def used_state(tmp_path_factory) -> Path:
    """A state dir that a controller, killed with SIGKILL, left: a VM in quarantine, a token,
    the audit log, the master key and the CA, and the latest writes still in the WAL."""
    state, logs = tmp_path_factory.mktemp("used-state"), tmp_path_factory.mktemp("logs")
    ctl = start(controller(state, logs))
    try:
        ctl.api("PUT", "/v1/vms/web1", WEB, expect=201)
        ctl.api("POST", "/v1/quarantine", {"vm": "web1", "reason": "IDS alert"}, expect=201)
        ctl.api("POST", "/v1/tokens", {"name": "ops", "role": "read-only"}, expect=201)
    finally:
        ctl.kill()
    assert {"goldilocks.db", "goldilocks.db-wal", "master.key", "ca.key.sealed", "admin.token"} <= set(os.listdir(state))
    return state


def sql(statements: str) -> Callable[[Path], None]:
    def damage(state: Path) -> None:
        db = sqlite3.connect(state / "goldilocks.db")
        db.executescript(statements)
        db.close()

    return damage


def truncate(state: Path) -> None:
    sql("PRAGMA wal_checkpoint(TRUNCATE)")(state)  # everything into the database file, then cut it
    path = state / "goldilocks.db"
    os.truncate(path, path.stat().st_size // 2)


def not_ours(state: Path) -> None:
    for name in ("goldilocks.db", "goldilocks.db-wal", "goldilocks.db-shm"):
        (state / name).unlink(missing_ok=True)
    db = sqlite3.connect(state / "goldilocks.db")
    db.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    db.commit()
    db.close()


def lose_database(state: Path) -> None:
    for name in ("goldilocks.db", "goldilocks.db-wal", "goldilocks.db-shm"):
        (state / name).unlink(missing_ok=True)


DAMAGE = {
    "garbage": (lambda s: (s / "goldilocks.db").write_bytes(os.urandom(96 * 1024)), "goldilocks.db is not an SQLite database"),
    "truncated": (truncate, "goldilocks.db is damaged"),
    "not ours": (not_ours, "goldilocks.db is an SQLite database, but not Goldilocks's state"),
    "missing tables": (sql("DROP TABLE quarantine; DROP TABLE tokens;"), "damaged: it lacks the tables quarantine, tokens"),
    "newer version": (sql(f"UPDATE meta SET value = '{SCHEMA_VERSION + 1}';"), "goldilocks.db was written by a newer Goldilocks"),
    "database lost": (lose_database, "goldilocks.db is missing or empty, but admin.token, master.key"),
    "master key lost": (lambda s: (s / "master.key").unlink(), "master.key is missing, but ca.key.sealed"),
    "another master key": (lambda s: (s / "master.key").write_bytes(os.urandom(32)), "master.key does not open .*ca.key.sealed"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_the_controller_refuses_to_start_and_changes_nothing(used_state: Path, tmp_path: Path, case: str) -> None:
    damage, expected = DAMAGE[case]
    state = tmp_path / "state"
    shutil.copytree(used_state, state)
    damage(state)
    before = files(state)
    ctl = controller(state, tmp_path)
    try:
        with pytest.raises(RuntimeError, match=f"controller exited with {EXIT_STATE}"):
            ctl.start(wait=30)
    finally:
        ctl.kill()
    assert ctl.proc.returncode == EXIT_STATE
    lines = Path(ctl.log_path).read_text().splitlines()
    assert len(lines) == 1, f"one line, nothing else: {lines}"
    assert lines[0].startswith(f"goldilocks-controller: {state}/")
    assert re.search(expected, lines[0]), lines[0]
    assert "did not start and changed nothing" in lines[0]
    assert files(state) == before, "every file as it was, none added or removed"


def test_a_new_state_dir_and_an_old_database_start(tmp_path: Path) -> None:
    """An empty state dir is a first start; a database of an earlier release is migrated."""
    fresh = start(controller(tmp_path / "fresh", tmp_path))
    try:
        assert fresh.api("GET", "/v1/vms") == {"vms": []}
    finally:
        fresh.stop()
    assert {"goldilocks.db", "master.key", "admin.token"} <= set(os.listdir(tmp_path / "fresh"))
    old = tmp_path / "old"
    build(old, 8)  # release 8: a VM in quarantine, its database saying schema version 1
    sql("DELETE FROM tunnel_pairs;")(old)  # the fixture's sealed key has no master key to open it
    ctl = controller(old, tmp_path)
    ctl.extra_args.append("--reset-admin-token")  # the fixture's admin token is a made-up digest
    start(ctl)
    try:
        assert [vm["name"] for vm in ctl.api("GET", "/v1/vms")["vms"]] == ["web1"]
        assert [q["vm"] for q in ctl.api("GET", "/v1/quarantine")["quarantine"]] == ["web1"]
    finally:
        ctl.stop()


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 4 MiB tmpfs, always unmounted."""
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)]).returncode:
            subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
    assert shutil.disk_usage(disk).free == 0
    return filler


def test_a_full_disk_refuses_writes_with_507_and_keeps_serving(small_disk: Path, tmp_path: Path) -> None:
    state = small_disk / "state"
    ctl = start(controller(state, tmp_path))
    try:
        ctl.api("PUT", "/v1/vms/web1", WEB, expect=201)
        audit = ctl.api("GET", "/v1/audit")
        filler = fill(small_disk)
        token = ctl.admin_token
        for method, path, body in (
            ("PUT", "/v1/vms/db1", DB),
            ("POST", "/v1/quarantine", {"vm": "web1", "reason": "IDS alert"}),
            ("POST", "/v1/tokens", {"name": "ops", "role": "read-only"}),
        ):
            status, doc = api_call(ctl.rest_url, method, path, body, token)
            assert status == 507, (method, path, status, doc)
            assert doc == {"error": "the state database's disk is full; nothing was changed; retry once there is space"}
        # reads go on, and show nothing of the writes that failed
        assert api_call(ctl.rest_url, "GET", "/v1/health")[0] == 200
        assert [vm["name"] for vm in ctl.api("GET", "/v1/vms")["vms"]] == ["web1"]
        assert ctl.api("GET", "/v1/quarantine")["quarantine"] == []
        assert [t["name"] for t in ctl.api("GET", "/v1/tokens")["tokens"]] == ["admin"]
        assert ctl.api("GET", "/v1/audit") == audit
        filler.unlink()
        ctl.api("PUT", "/v1/vms/db1", DB, expect=201)
        ctl.api("POST", "/v1/quarantine", {"vm": "web1", "reason": "IDS alert"}, expect=201)
    finally:
        ctl.kill()
    # what was acknowledged, and only that, is on disk: the controller restarted on it shows it
    again = controller(state, tmp_path)
    again.of_port, again.rest_port, again.agent_port = ctl.of_port, ctl.rest_port, ctl.agent_port
    start(again)
    try:
        assert [vm["name"] for vm in again.api("GET", "/v1/vms")["vms"]] == ["db1", "web1"]
        assert [q["vm"] for q in again.api("GET", "/v1/quarantine")["quarantine"]] == ["web1"]
        entries = [(e["action"], e["target"]) for e in again.api("GET", "/v1/audit")["entries"]]
        assert entries[:3] == [("vm.quarantine", "web1"), ("vm.create", "db1"), ("vm.create", "web1")]
    finally:
        again.stop()
