"""The master key file, sealed blobs bound to their record, and owner-only secret files."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from crypto.keystore import KeystoreError, MasterKey, read_secret_file, write_secret_file


@pytest.fixture
def open_umask() -> Iterator[None]:
    """The most permissive umask, so only the code under test decides file modes."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_master_key_is_created_owner_only_and_loaded_again(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "state" / "master.key"
    first = MasterKey.load_or_create(path)
    assert mode(path) == 0o600
    assert path.stat().st_size == 32
    assert [p.name for p in path.parent.iterdir()] == ["master.key"]  # no temporary file left behind
    blob = first.seal(b"psk bytes", "psk:hv1|hv2")
    assert MasterKey.load_or_create(path).open(blob, "psk:hv1|hv2") == b"psk bytes"


@pytest.mark.parametrize("perms", [0o644, 0o640, 0o604, 0o660])
def test_master_key_readable_by_others_is_refused(tmp_path: Path, perms: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(os.urandom(32))
    path.chmod(perms)
    with pytest.raises(KeystoreError) as caught:
        MasterKey.load_or_create(path)
    assert str(path) in str(caught.value) and f"{perms:04o}" in str(caught.value)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_master_key_of_the_wrong_size_is_refused(tmp_path: Path, size: int) -> None:
    path = tmp_path / "master.key"
    path.write_bytes(b"k" * size)
    path.chmod(0o600)
    with pytest.raises(KeystoreError, match=f"{size} bytes, expected exactly 32") as caught:
        MasterKey.load_or_create(path)
    assert str(path) in str(caught.value)


def test_master_key_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    path.mkdir(mode=0o700)
    with pytest.raises(KeystoreError, match="master.key"):
        MasterKey.load_or_create(path)


def test_seal_layout_and_fresh_nonces(tmp_path: Path) -> None:
    master = MasterKey.load_or_create(tmp_path / "master.key")
    secret = b"s" * 32
    one, two = master.seal(secret, "psk:a|b"), master.seal(secret, "psk:a|b")
    assert one[0] == 1 and len(one) == 1 + 12 + 32 + 16
    assert one != two and one[1:13] != two[1:13]
    assert secret not in one


def test_every_tampered_byte_is_refused(tmp_path: Path) -> None:
    master = MasterKey.load_or_create(tmp_path / "master.key")
    blob = master.seal(b"the psk", "psk:a|b")
    for index in range(len(blob)):
        tampered = bytearray(blob)
        tampered[index] ^= 0x01
        with pytest.raises(KeystoreError):
            master.open(bytes(tampered), "psk:a|b")
    with pytest.raises(KeystoreError, match="truncated"):
        master.open(blob[:20], "psk:a|b")


def test_a_blob_cannot_move_to_another_record(tmp_path: Path) -> None:
    master = MasterKey.load_or_create(tmp_path / "master.key")
    secret = b"RECOGNISABLE-SECRET"
    blob = master.seal(secret, "psk:hv1|hv2")
    with pytest.raises(KeystoreError) as caught:
        master.open(blob, "psk:hv1|hv3")
    assert "RECOGNISABLE" not in str(caught.value)


def test_another_master_key_cannot_open_a_blob(tmp_path: Path) -> None:
    blob = MasterKey.load_or_create(tmp_path / "a.key").seal(b"x", "ca-key")
    with pytest.raises(KeystoreError, match="failed authentication"):
        MasterKey.load_or_create(tmp_path / "b.key").open(blob, "ca-key")


def test_empty_context_is_refused(tmp_path: Path) -> None:
    master = MasterKey.load_or_create(tmp_path / "master.key")
    with pytest.raises(KeystoreError, match="context"):
        master.seal(b"x", "")


def test_repr_does_not_show_the_key(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    master = MasterKey.load_or_create(path)
    key = path.read_bytes()
    shown = repr(master)
    assert "master.key" in shown
    assert key.hex()[:8] not in shown and repr(key)[2:10] not in shown


def test_secret_file_is_owner_only_even_when_replacing_a_public_file(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "agent.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    write_secret_file(path, b"new private key")
    assert mode(path) == 0o600
    assert read_secret_file(path) == b"new private key"
    assert [p.name for p in tmp_path.iterdir()] == ["agent.key"]


def test_secret_file_readable_by_group_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agent.key"
    write_secret_file(path, b"private")
    path.chmod(0o640)
    with pytest.raises(KeystoreError, match="chmod 600"):
        read_secret_file(path)


def test_missing_secret_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(KeystoreError, match="nothing.key: does not exist"):
        read_secret_file(tmp_path / "nothing.key")
