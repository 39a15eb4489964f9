"""WireGuard keys: generation, derivation as `wg` does it, the base64 form, and fingerprints."""

from __future__ import annotations

import base64
import shutil
import subprocess

import pytest

from crypto import wgkeys
from crypto.wgkeys import KeyFormatError

WG = shutil.which("wg")

# RFC 7748 section 6.1: Alice's X25519 key pair.
RFC7748_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
RFC7748_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")


def test_public_key_matches_the_x25519_standard() -> None:
    assert wgkeys.public_key(RFC7748_PRIVATE) == RFC7748_PUBLIC


@pytest.mark.skipif(WG is None, reason="wg is not installed")
def test_public_key_matches_wg_pubkey() -> None:
    for _ in range(3):
        private = wgkeys.generate_private_key()
        result = subprocess.run([WG, "pubkey"], input=wgkeys.encode(private) + "\n", capture_output=True, text=True, check=True)
        assert result.stdout.strip() == wgkeys.encode(wgkeys.public_key(private))


@pytest.mark.skipif(WG is None, reason="wg is not installed")
def test_keys_from_wg_genkey_are_read() -> None:
    text = subprocess.run([WG, "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    assert wgkeys.encode(wgkeys.decode(text)) == text


def test_private_keys_are_random_32_bytes_and_clamped_like_wg_genkey() -> None:
    keys = {wgkeys.generate_private_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(key) == 32
        assert key[0] & 7 == 0
        assert key[31] & 0x80 == 0 and key[31] & 0x40


def test_psks_are_random_32_bytes() -> None:
    psks = {wgkeys.generate_psk() for _ in range(20)}
    assert len(psks) == 20 and all(len(psk) == 32 for psk in psks)


def test_encode_decode_round_trip() -> None:
    for key in (wgkeys.generate_private_key(), wgkeys.generate_psk(), RFC7748_PUBLIC, bytes(32), b"\xff" * 32):
        text = wgkeys.encode(key)
        assert len(text) == 44 and text.endswith("=")
        assert text == base64.b64encode(key).decode()
        assert wgkeys.decode(text) == key


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not base64 at all!",
        base64.b64encode(b"k" * 31).decode(),
        base64.b64encode(b"k" * 33).decode(),
        base64.b64encode(b"k" * 32).decode()[:-1],
        base64.b64encode(b"k" * 32).decode() + "\n",
        " " + base64.b64encode(b"k" * 32).decode(),
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),
        "é" * 44,
    ],
)
def test_decode_refuses_what_is_not_a_key_without_echoing_it(text: str) -> None:
    with pytest.raises(KeyFormatError) as caught:
        wgkeys.decode(text)
    if text.strip():
        assert text.strip() not in str(caught.value)


def test_decode_refuses_a_second_spelling_of_a_key() -> None:
    text = wgkeys.encode(bytes(32))  # "AAAA...A="; the last character's low bits are unused
    assert text[-2] == "A"
    with pytest.raises(KeyFormatError, match="canonical"):
        wgkeys.decode(text[:-2] + "B=")


def test_decode_refuses_non_text() -> None:
    with pytest.raises(KeyFormatError, match="str"):
        wgkeys.decode(RFC7748_PUBLIC)  # type: ignore[arg-type]


def test_wrong_length_keys_are_refused() -> None:
    with pytest.raises(KeyFormatError, match="32 bytes"):
        wgkeys.public_key(b"short")
    with pytest.raises(KeyFormatError, match="32 bytes"):
        wgkeys.encode(b"x" * 33)


def test_fingerprint_is_short_stable_and_reveals_nothing_of_the_key() -> None:
    psk = wgkeys.generate_psk()
    shown = wgkeys.fingerprint(psk)
    assert shown == wgkeys.fingerprint(psk)
    assert shown.startswith("sha256:") and len(shown) == len("sha256:") + 16
    assert wgkeys.fingerprint(wgkeys.generate_psk()) != shown
    assert psk.hex()[:16] not in shown and wgkeys.encode(psk)[:8] not in shown
