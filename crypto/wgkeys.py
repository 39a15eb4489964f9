"""WireGuard keys: X25519 key pairs, pre-shared keys, their base64 text form and fingerprints."""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

KEY_LEN = 32


class KeyFormatError(ValueError):
    """Text or bytes that are not a WireGuard key (the message never holds the key material)."""


def _check_length(key: bytes, what: str) -> None:
    if not isinstance(key, bytes):
        raise KeyFormatError(f"{what} must be bytes, not {type(key).__name__}")
    if len(key) != KEY_LEN:
        raise KeyFormatError(f"{what} must be {KEY_LEN} bytes, got {len(key)}")


def generate_private_key() -> bytes:
    """A new private key, clamped the way `wg genkey` clamps it."""
    key = bytearray(secrets.token_bytes(KEY_LEN))
    key[0] &= 248
    key[31] = (key[31] & 127) | 64
    return bytes(key)


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a private key (what `wg pubkey` prints, before base64)."""
    _check_length(private, "private key")
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def generate_psk() -> bytes:
    """A new pre-shared key (what `wg genpsk` prints, before base64)."""
    return secrets.token_bytes(KEY_LEN)


def encode(key: bytes) -> str:
    """The 44-character standard base64 form that `wg` reads and prints."""
    _check_length(key, "key")
    return base64.b64encode(key).decode("ascii")


def decode(text: str) -> bytes:
    """Parse the base64 form strictly: exactly the text `encode` would produce (no whitespace)."""
    if not isinstance(text, str):
        raise KeyFormatError(f"key text must be str, not {type(text).__name__}")
    try:
        key = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        raise KeyFormatError("key text is not valid base64") from None
    if len(key) != KEY_LEN:
        raise KeyFormatError(f"key text decodes to {len(key)} bytes, expected {KEY_LEN}")
    # base64 ignores the unused low bits of the last character; refuse a second spelling of a key.
    if base64.b64encode(key).decode("ascii") != text:
        raise KeyFormatError("key text is not in canonical base64 form")
    return key


def fingerprint(key: bytes) -> str:
    """A short identifier safe to show for any key, PSKs included: a truncated SHA-256."""
    if not isinstance(key, bytes):
        raise KeyFormatError(f"key must be bytes, not {type(key).__name__}")
    return "sha256:" + hashlib.sha256(key).hexdigest()[:16]
