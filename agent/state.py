"""The agent's state directory: its TLS identity, the controller's CA and its WireGuard private keys.

    <state-dir>/         0700
        tls.key          the TLS client key (made here at enrollment, never sent)
        tls.crt          the client certificate the controller signed; its presence means "enrolled"
        ca.pem           the controller's CA, which the controller's certificate must chain to
        wg.key           the WireGuard private key, base64 as `wg genkey` writes it (never sent)
        wg.next.key      during an identity rotation: the new private key, not in use yet
        wg.next.rotation the rotation id that wg.next.key answers, so a restart mid-rotation can finish it

Every file is written atomically with mode 0600 (crypto.keystore); a key file that group or other
may access is refused when loaded, naming the file. PSKs and configs are never written here: they live in memory only.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from crypto import keystore, wgkeys

DIR_MODE = 0o700
TLS_KEY, TLS_CERT, CA = "tls.key", "tls.crt", "ca.pem"
WG_KEY, WG_NEXT_KEY, WG_NEXT_ROTATION = "wg.key", "wg.next.key", "wg.next.rotation"
WG_KEY_BYTES = 32


class StateError(Exception):
    """The state directory or a file in it cannot be used; the message names the file, never its contents."""


@dataclass(frozen=True)
class TlsIdentity:
    """What an authenticated connection needs: the CA to verify the controller by, our certificate and key (PEM)."""

    ca_pem: str
    cert_pem: str
    key_pem: str = field(repr=False)


@dataclass(frozen=True)
class PendingRotation:
    """A WireGuard key pair made for rotation `rotation`, saved but not in use yet."""

    rotation: str
    private_key: bytes = field(repr=False)


def _text(pem: str | bytes) -> str:
    return pem.decode("ascii") if isinstance(pem, bytes) else pem


class AgentState:
    """The state directory `path`, created 0700 if missing (and tightened to 0700 if it was looser)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        try:
            self.path.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            if stat.S_IMODE(self.path.stat().st_mode) != DIR_MODE:
                os.chmod(self.path, DIR_MODE)
        except OSError as exc:
            raise StateError(f"{self.path}: cannot use as the state directory: {exc.strerror or exc}") from None
        if not self.path.is_dir():
            raise StateError(f"{self.path}: not a directory")

    # -- files -------------------------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        return self.path / name

    def _read(self, name: str) -> bytes:
        path = self._file(name)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise StateError(f"{path}: cannot read: {exc.strerror or exc}") from None

    def _read_secret(self, name: str) -> bytes:
        """A key file's bytes, refused if group or other may access it."""
        try:
            return keystore.read_secret_file(self._file(name))
        except keystore.KeystoreError as exc:
            raise StateError(str(exc)) from None

    def _write(self, name: str, data: bytes) -> None:
        """Every file here is written 0600, certificates too: nothing in the directory is for others."""
        try:
            keystore.write_secret_file(self._file(name), data)
        except keystore.KeystoreError as exc:
            raise StateError(str(exc)) from None

    def _remove(self, name: str) -> None:
        self._file(name).unlink(missing_ok=True)

    # -- TLS identity ------------------------------------------------------------------------------
    def enrolled(self) -> bool:
        return self._file(TLS_CERT).exists()

    def tls_identity(self) -> TlsIdentity:
        key = self._read_secret(TLS_KEY)
        return TlsIdentity(_text(self._read(CA)), _text(self._read(TLS_CERT)), _text(key))

    def save_enrollment(self, key_pem: str | bytes, cert_pem: str | bytes, ca_pem: str | bytes) -> None:
        """The certificate goes last: until it is written, the agent is not enrolled and enrolls again."""
        self._write(TLS_KEY, _text(key_pem).encode("ascii"))
        self._write(CA, _text(ca_pem).encode("ascii"))
        self._write(TLS_CERT, _text(cert_pem).encode("ascii"))

    # -- WireGuard keys ----------------------------------------------------------------------------
    def _load_wg_key(self, name: str) -> bytes:
        text = self._read_secret(name)
        try:
            return wgkeys.decode(text.decode("ascii").strip())
        except (wgkeys.KeyFormatError, UnicodeDecodeError):
            raise StateError(f"{self._file(name)}: not a WireGuard private key (base64 of {WG_KEY_BYTES} bytes)") from None

    def _save_wg_key(self, name: str, private_key: bytes) -> None:
        self._write(name, (wgkeys.encode(private_key) + "\n").encode("ascii"))

    def wg_private_key(self, generate: Callable[[], bytes]) -> bytes:
        """The WireGuard private key; made with `generate` and saved on first use."""
        if not self._file(WG_KEY).exists():
            self._save_wg_key(WG_KEY, generate())
        return self._load_wg_key(WG_KEY)

    def pending_rotation(self) -> PendingRotation | None:
        """The rotation saved by `save_rotation` and not switched yet, if both its files are there."""
        if not (self._file(WG_NEXT_KEY).exists() and self._file(WG_NEXT_ROTATION).exists()):
            return None
        rotation = self._read(WG_NEXT_ROTATION).decode("utf-8", "replace").strip()
        return PendingRotation(rotation, self._load_wg_key(WG_NEXT_KEY))

    def save_rotation(self, rotation: PendingRotation) -> None:
        self._remove(WG_NEXT_ROTATION)  # never a new id next to an old key
        self._save_wg_key(WG_NEXT_KEY, rotation.private_key)
        self._write(WG_NEXT_ROTATION, (rotation.rotation + "\n").encode("utf-8"))

    def promote_rotation(self) -> None:
        """wg.next.key becomes wg.key in one rename: at every instant wg.key holds one whole key."""
        try:
            os.replace(self._file(WG_NEXT_KEY), self._file(WG_KEY))
        except OSError as exc:
            raise StateError(f"{self._file(WG_NEXT_KEY)}: cannot make it {WG_KEY}: {exc.strerror or exc}") from None
        self._remove(WG_NEXT_ROTATION)
