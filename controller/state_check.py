"""Before the controller writes anything, the state dir is whole, or the controller refuses to start.

Starting on a damaged or half-missing state dir would mean starting empty: quarantines released,
keys forgotten. Every check here only reads, so a refusal leaves every file as it was."""

from __future__ import annotations

import os
from pathlib import Path

from controller.agents import _psk_context  # the record each tunnel key is sealed to
from controller.auth import ADMIN_TOKEN_FILE
from controller.store import DB_FILE, Snapshot, StateError, snapshot
from crypto.ca import CA_CERT_FILE, CA_KEY_CONTEXT, CA_KEY_FILE
from crypto.keystore import KeystoreError, MasterKey, read_secret_file

MASTER_KEY_FILE = "master.key"
# Files a controller writes on its first start, after the database: one of them without a
# database means the database was lost, not that this is a first start.
FIRST_START_FILES = (ADMIN_TOKEN_FILE, MASTER_KEY_FILE, CA_CERT_FILE, CA_KEY_FILE)
REFUSED = "The controller did not start and changed nothing"


def check(state_dir: str | os.PathLike) -> Snapshot:
    """Raise StateError, naming the file and what to do, unless the controller can start on
    `state_dir` without losing anything: the database is whole, ours and not newer, and the
    master key is there and opens what is sealed with it (or nothing is sealed yet)."""
    state_dir = Path(state_dir)
    found = snapshot(state_dir)
    if found.version is None:
        left = [name for name in FIRST_START_FILES if os.path.lexists(state_dir / name)]
        if left:
            raise StateError(
                f"{found.path} is missing or empty, but {', '.join(left)} in {state_dir} show that a controller "
                f"ran there: it would start empty, releasing quarantines and forgetting keys. {REFUSED}; restore "
                f"{DB_FILE} from a backup, or move {state_dir} away to start afresh"
            )
        return found
    key_path = state_dir / MASTER_KEY_FILE
    ca_key = state_dir / CA_KEY_FILE
    if not os.path.lexists(key_path):
        sealed = [CA_KEY_FILE] if os.path.lexists(ca_key) else []
        pairs = len(found.tunnel_pairs)
        if pairs:
            sealed.append(f"{pairs} tunnel key{'s' if pairs > 1 else ''} in {DB_FILE}")
        if sealed:
            are = "is" if sealed == [CA_KEY_FILE] or (pairs == 1 and len(sealed) == 1) else "are"
            raise StateError(
                f"{key_path} is missing, but {' and '.join(sealed)} {are} sealed with it; a new key would lose "
                f"them. {REFUSED}; restore {MASTER_KEY_FILE} from a backup"
            )
        return found  # nothing sealed yet (a database of a version before encryption): the key is created
    wrong = f"is not the key this state was sealed with. {REFUSED}; restore the {MASTER_KEY_FILE} of this state dir"
    try:
        master = MasterKey.load(key_path)
        if os.path.lexists(ca_key):
            try:
                master.open(read_secret_file(ca_key), CA_KEY_CONTEXT)
            except KeystoreError:
                raise StateError(f"{key_path} does not open {ca_key}: it {wrong}") from None
        for a, b, vni, sealed_psk in found.tunnel_pairs:
            try:
                master.open(sealed_psk, _psk_context(a, b, vni))
            except KeystoreError:
                raise StateError(f"{key_path} does not open the tunnel key of {a} and {b} in {found.path}: it {wrong}") from None
    except KeystoreError as exc:
        raise StateError(f"{exc}. {REFUSED}") from None
    return found
