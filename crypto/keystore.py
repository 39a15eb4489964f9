"""Secrets at rest: the controller's master key, sealed blobs, and owner-only files written atomically."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MASTER_KEY_LEN = 32
SEAL_VERSION = 1
NONCE_LEN = 12
TAG_LEN = 16
SECRET_MODE = 0o600
SEALED_SUFFIX = ".sealed"  # files sealed with the master key that lies beside them


class KeystoreError(Exception):
    """A key file or sealed blob that cannot be used; the message names the file or context, never a secret."""


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_file_atomic(path: Path | str, data: bytes, mode: int, *, exclusive: bool = False) -> None:
    """Write `data` to `path` with `mode` so that readers see the old file or the whole new one.

    The temporary file has `mode` from its first byte, so a secret is never readable by others
    even briefly. With `exclusive`, an existing `path` is left alone and FileExistsError raised.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as tmp:
            os.fchmod(tmp.fileno(), mode)
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        if exclusive:
            os.link(tmp_name, path)
            os.unlink(tmp_name)
        else:
            os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def write_secret_file(path: Path | str, data: bytes) -> None:
    """Atomically write a secret (a private key) readable by its owner only (mode 0600)."""
    try:
        write_file_atomic(path, data, SECRET_MODE)
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot write secret file: {exc.strerror}") from None


def read_secret_file(path: Path | str, size: int | None = None) -> bytes:
    """Read a secret file, refusing one that group or others may access, or of the wrong size."""
    path = Path(path)
    try:
        # O_NONBLOCK: opening a FIFO planted at the path must not hang; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise KeystoreError(f"{path}: does not exist") from None
    except OSError as exc:
        raise KeystoreError(f"{path}: cannot open: {exc.strerror}") from None
    try:
        # Checked on the open file, so the file cannot be swapped between the check and the read.
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise KeystoreError(f"{path}: is not a regular file")
        perms = stat.S_IMODE(info.st_mode)
        if perms & 0o077:
            raise KeystoreError(
                f"{path}: mode {perms:04o} lets group or others access a secret; expected 0600 (chmod 600 {path})"
            )
        if size is not None and info.st_size != size:
            raise KeystoreError(f"{path}: is {info.st_size} bytes, expected exactly {size}")
        # os.read, not os.fdopen: under eventlet's monkey patching fdopen closes the descriptor
        # whatever closefd says, and the close below would then fail.
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        os.close(fd)
    if size is not None and len(data) != size:
        raise KeystoreError(f"{path}: is {len(data)} bytes, expected exactly {size}")
    return data


class MasterKey:
    """The AES-256-GCM key that seals the controller's secrets at rest (PSKs, the CA key)."""

    __slots__ = ("_aead", "path")

    def __init__(self, key: bytes, path: Path | None = None) -> None:
        if not isinstance(key, bytes) or len(key) != MASTER_KEY_LEN:
            raise KeystoreError(f"a master key must be {MASTER_KEY_LEN} bytes")
        self._aead = AESGCM(key)
        self.path = path

    def __repr__(self) -> str:
        return f"MasterKey(path={str(self.path) if self.path else None!r})"

    @classmethod
    def load(cls, path: Path | str) -> MasterKey:
        """Load the key file at `path`; KeystoreError if it is missing or unusable."""
        path = Path(path)
        return cls(read_secret_file(path, MASTER_KEY_LEN), path)

    @classmethod
    def load_or_create(cls, path: Path | str) -> MasterKey:
        """Load the key file at `path`, or create it (32 random bytes, mode 0600) if there is none.

        A key is never created beside files sealed with the one that is missing (`*.sealed`): a
        new key would not open them, and whatever they hold would be lost for good."""
        path = Path(path)
        if not os.path.lexists(path):
            sealed = sorted(p.name for p in path.parent.glob(f"*{SEALED_SUFFIX}")) if path.parent.is_dir() else []
            if sealed:
                raise KeystoreError(
                    f"{path}: missing, but {', '.join(sealed)} in {path.parent} {'is' if len(sealed) == 1 else 'are'} "
                    "sealed with it; restore it from a backup (a new key would not open them)"
                )
            try:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                write_file_atomic(path, secrets.token_bytes(MASTER_KEY_LEN), SECRET_MODE, exclusive=True)
            except FileExistsError:
                pass  # another process created it first: use theirs
            except OSError as exc:
                raise KeystoreError(f"{path}: cannot create master key: {exc.strerror}") from None
        return cls.load(path)

    @staticmethod
    def _associated_data(context: str) -> bytes:
        if not isinstance(context, str) or not context:
            raise KeystoreError("a sealing context must be a non-empty str")
        return bytes([SEAL_VERSION]) + context.encode("utf-8")

    def seal(self, plaintext: bytes, context: str) -> bytes:
        """Encrypt and authenticate `plaintext` bound to `context` (the record it belongs to).

        Layout: version byte (1), 12-byte random nonce, AES-256-GCM ciphertext and tag. The
        version byte and `context` are associated data, so a blob moved to another record fails.
        """
        associated = self._associated_data(context)
        nonce = secrets.token_bytes(NONCE_LEN)
        return bytes([SEAL_VERSION]) + nonce + self._aead.encrypt(nonce, plaintext, associated)

    def open(self, blob: bytes, context: str) -> bytes:
        """The plaintext of a blob from `seal` with the same context; KeystoreError otherwise."""
        associated = self._associated_data(context)
        if not isinstance(blob, bytes) or len(blob) < 1 + NONCE_LEN + TAG_LEN:
            raise KeystoreError(f"sealed blob for {context!r} is truncated")
        if blob[0] != SEAL_VERSION:
            raise KeystoreError(f"sealed blob for {context!r} has unknown format version {blob[0]}")
        nonce, ciphertext = blob[1 : 1 + NONCE_LEN], blob[1 + NONCE_LEN :]
        try:
            return self._aead.decrypt(nonce, ciphertext, associated)
        except InvalidTag:
            raise KeystoreError(
                f"sealed blob for {context!r} failed authentication (tampered, another master key, or another record)"
            ) from None
