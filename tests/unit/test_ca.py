"""The controller's CA: its files at rest, client and server certificates, and real TLS 1.3 handshakes."""

from __future__ import annotations

import socket
import ssl
import stat
import tempfile
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.ca import (
    CAError,
    CertificateAuthority,
    make_key_and_csr,
    ssl_client_context,
    ssl_server_context,
)
from crypto.keystore import MasterKey

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def master(tmp_path: Path) -> MasterKey:
    return MasterKey.load_or_create(tmp_path / "master.key")


@pytest.fixture
def ca(tmp_path: Path, master: MasterKey) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "state", master)


@pytest.fixture
def other_ca(tmp_path: Path, master: MasterKey) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "other", master)


def der(cert_pem: str) -> bytes:
    return x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)


def test_a_new_ca_is_written_with_its_key_sealed(tmp_path: Path, ca: CertificateAuthority) -> None:
    cert_path, key_path = tmp_path / "state" / "ca.pem", tmp_path / "state" / "ca.key.sealed"
    assert stat.S_IMODE(cert_path.stat().st_mode) == 0o644
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    sealed = key_path.read_bytes()
    assert b"PRIVATE KEY" not in sealed and b"-----" not in sealed
    assert cert_path.read_text() == ca.cert_pem

    cert = x509.load_pem_x509_certificate(ca.cert_pem.encode())
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value.startswith("Goldilocks CA ")
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=3650)
    assert ca.fingerprint.startswith("sha256:") and len(ca.fingerprint) == 23
    assert "PRIVATE" not in repr(ca)


def test_the_ca_loads_back_and_keeps_signing(tmp_path: Path, master: MasterKey, ca: CertificateAuthority) -> None:
    loaded = CertificateAuthority.load_or_create(tmp_path / "state", master)
    assert loaded.fingerprint == ca.fingerprint and loaded.cert_pem == ca.cert_pem
    _, csr = make_key_and_csr("hv1")
    cert_pem, serial = loaded.sign_csr(csr, "hv1")
    assert ca.verify_client(der(cert_pem)).serial == serial


def test_two_cas_have_different_names(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    assert ca.name != other_ca.name and ca.fingerprint != other_ca.fingerprint


def test_another_master_key_cannot_load_the_ca(tmp_path: Path, ca: CertificateAuthority) -> None:
    stranger = MasterKey.load_or_create(tmp_path / "stranger.key")
    with pytest.raises(CAError, match="ca.key.sealed"):
        CertificateAuthority.load_or_create(tmp_path / "state", stranger)


def test_a_corrupt_certificate_is_named(tmp_path: Path, master: MasterKey, ca: CertificateAuthority) -> None:
    (tmp_path / "state" / "ca.pem").write_text("garbage")
    with pytest.raises(CAError, match="ca.pem: not a PEM certificate"):
        CertificateAuthority.load_or_create(tmp_path / "state", master)


def test_a_missing_piece_is_named_and_nothing_is_overwritten(tmp_path: Path, master: MasterKey, ca: CertificateAuthority) -> None:
    (tmp_path / "state" / "ca.key.sealed").unlink()
    with pytest.raises(CAError, match="ca.key.sealed: missing"):
        CertificateAuthority.load_or_create(tmp_path / "state", master)
    assert (tmp_path / "state" / "ca.pem").read_text() == ca.cert_pem


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path, master: MasterKey, ca: CertificateAuthority) -> None:
    CertificateAuthority.load_or_create(tmp_path / "other", master)
    (tmp_path / "state" / "ca.key.sealed").write_bytes((tmp_path / "other" / "ca.key.sealed").read_bytes())
    with pytest.raises(CAError, match="does not belong"):
        CertificateAuthority.load_or_create(tmp_path / "state", master)


def test_a_signed_csr_gives_a_client_certificate_for_the_hypervisor(ca: CertificateAuthority) -> None:
    key_pem, csr_pem = make_key_and_csr("hv1")
    assert "PRIVATE KEY" in key_pem and "CERTIFICATE REQUEST" in csr_pem
    cert_pem, serial = ca.sign_csr(csr_pem, "hv1", now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    assert cert.serial_number == serial
    assert cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.CLIENT_AUTH]
    )
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    assert cert.public_key() == key.public_key()

    identity = ca.verify_client(der(cert_pem), now=NOW + timedelta(days=100))
    assert identity.hypervisor == "hv1" and identity.serial == serial
    assert identity.not_after == NOW + timedelta(days=365)


def test_serials_are_random(ca: CertificateAuthority) -> None:
    _, csr = make_key_and_csr("hv1")
    assert len({ca.sign_csr(csr, "hv1")[1] for _ in range(5)}) == 5


def test_a_csr_for_another_hypervisor_is_refused(ca: CertificateAuthority) -> None:
    _, csr = make_key_and_csr("hv2")
    with pytest.raises(CAError, match="'hv2' does not match hypervisor 'hv1'"):
        ca.sign_csr(csr, "hv1")


BROKEN_PEM = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize("text", ["", "not a csr", BROKEN_PEM])
def test_garbage_csrs_are_refused(ca: CertificateAuthority, text: str) -> None:
    with pytest.raises(CAError, match="not a valid PEM certificate signing request"):
        ca.sign_csr(text, "hv1")


def test_a_csr_with_a_broken_signature_is_refused(ca: CertificateAuthority) -> None:
    # Ed25519 signatures are the last 64 bytes of the DER, so flipping the final bit breaks only the signature.
    key = ed25519.Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hv1")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, None)
    assert ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), "hv1")
    tampered = bytearray(csr.public_bytes(serialization.Encoding.DER))
    tampered[-1] ^= 0x01
    pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CAError, match="signature does not verify"):
        ca.sign_csr(pem, "hv1")


def test_a_weak_csr_key_is_refused(ca: CertificateAuthority) -> None:
    key = rsa.generate_private_key(65537, 1024)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hv1")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    with pytest.raises(CAError, match="1024 bits"):
        ca.sign_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), "hv1")


def test_a_certificate_from_another_ca_is_refused(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    _, csr = make_key_and_csr("hv1")
    cert_pem, _ = other_ca.sign_csr(csr, "hv1")
    with pytest.raises(CAError, match="not issued by this CA"):
        ca.verify_client(der(cert_pem))


def test_expired_and_not_yet_valid_certificates_are_refused(ca: CertificateAuthority) -> None:
    _, csr = make_key_and_csr("hv1")
    cert_pem, _ = ca.sign_csr(csr, "hv1", now=NOW)
    with pytest.raises(CAError, match="expired"):
        ca.verify_client(der(cert_pem), now=NOW + timedelta(days=366))
    with pytest.raises(CAError, match="not valid before"):
        ca.verify_client(der(cert_pem), now=NOW - timedelta(days=1))


def test_a_server_certificate_is_not_a_client_certificate(ca: CertificateAuthority) -> None:
    cert_pem, _ = ca.server_credentials(["controller.example"])
    with pytest.raises(CAError, match="not a clientAuth certificate"):
        ca.verify_client(der(cert_pem))


def test_the_ca_certificate_itself_is_not_a_client_certificate(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError):
        ca.verify_client(der(ca.cert_pem))


def test_garbage_is_not_a_client_certificate(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="not a DER certificate"):
        ca.verify_client(b"\x30\x03garbage")


def test_server_credentials_name_the_controller_and_are_reused(ca: CertificateAuthority) -> None:
    cert_pem, key_pem = ca.server_credentials(["controller.example", "10.0.0.1", "::1"], now=NOW)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["controller.example"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["10.0.0.1", "::1"]
    assert ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert serialization.load_pem_private_key(key_pem.encode(), None).public_key() == cert.public_key()

    assert ca.server_credentials(["controller.example", "10.0.0.1", "::1"], now=NOW + timedelta(days=10)) == (cert_pem, key_pem)
    renewed = ca.server_credentials(["controller.example", "10.0.0.1", "::1"], now=NOW + timedelta(days=340))
    assert renewed[0] != cert_pem


@pytest.mark.parametrize("names", [[], ["bad name"], ["-dash.example"]])
def test_bad_server_names_are_refused(ca: CertificateAuthority, names: list[str]) -> None:
    with pytest.raises(CAError):
        ca.server_credentials(names)


def test_bad_hypervisor_names_are_refused() -> None:
    for name in ("", "x" * 65, "hv\n1"):
        with pytest.raises(CAError, match="hypervisor name"):
            make_key_and_csr(name)


# --- TLS over a socket pair ---------------------------------------------------------------------


@dataclass
class Handshake:
    server_error: Exception | None = None
    server_peer_der: bytes | None = None
    server_version: str | None = None
    client_error: Exception | None = None
    client_reply: bytes | None = None


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> Handshake:
    """Run one TLS connection: the client says ping, the server answers pong."""
    result = Handshake()
    server_sock, client_sock = socket.socketpair()
    for sock in (server_sock, client_sock):
        sock.settimeout(5)

    def serve() -> None:
        try:
            with server.wrap_socket(server_sock, server_side=True) as tls:
                result.server_peer_der = tls.getpeercert(binary_form=True)
                result.server_version = tls.version()
                if tls.recv(4) == b"ping":
                    tls.sendall(b"pong")
        except (ssl.SSLError, OSError) as exc:
            result.server_error = exc
        finally:
            server_sock.close()

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client.wrap_socket(client_sock) as tls:
            tls.sendall(b"ping")
            result.client_reply = tls.recv(4)
    except (ssl.SSLError, OSError) as exc:
        result.client_error = exc
    finally:
        client_sock.close()
        thread.join(10)
    return result


def enrolled_client(ca: CertificateAuthority, signer: CertificateAuthority, hypervisor: str = "hv1") -> ssl.SSLContext:
    key_pem, csr = make_key_and_csr(hypervisor)
    cert_pem, _ = signer.sign_csr(csr, hypervisor)
    return ssl_client_context(ca.cert_pem, cert_pem, key_pem)


def server_context(ca: CertificateAuthority, require_client_cert: bool = True) -> ssl.SSLContext:
    cert_pem, key_pem = ca.server_credentials(["localhost", "127.0.0.1"])
    return ssl_server_context(cert_pem, key_pem, ca.cert_pem, require_client_cert)


def test_tls13_with_a_client_certificate_from_our_ca(ca: CertificateAuthority) -> None:
    result = handshake(server_context(ca), enrolled_client(ca, ca))
    assert result.server_error is None and result.client_error is None
    assert result.client_reply == b"pong" and result.server_version == "TLSv1.3"
    assert result.server_peer_der is not None
    assert ca.verify_client(result.server_peer_der).hypervisor == "hv1"


def test_a_client_certificate_from_another_ca_fails_the_handshake(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    result = handshake(server_context(ca), enrolled_client(ca, other_ca))
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.client_reply in (None, b"")


def test_no_client_certificate_fails_when_one_is_required(ca: CertificateAuthority) -> None:
    result = handshake(server_context(ca, require_client_cert=True), ssl_client_context(ca.cert_pem))
    assert isinstance(result.server_error, ssl.SSLError)
    assert result.client_reply in (None, b"")


def test_enrollment_connections_need_no_client_certificate(ca: CertificateAuthority) -> None:
    result = handshake(server_context(ca, require_client_cert=False), ssl_client_context(ca.cert_pem))
    assert result.client_reply == b"pong" and result.server_peer_der is None


def test_a_server_from_another_ca_is_refused_by_the_client(ca: CertificateAuthority, other_ca: CertificateAuthority) -> None:
    result = handshake(server_context(other_ca, require_client_cert=False), ssl_client_context(ca.cert_pem))
    assert isinstance(result.client_error, ssl.SSLCertVerificationError)
    assert result.client_reply is None


def test_tls12_clients_are_refused(ca: CertificateAuthority) -> None:
    old = ssl_client_context(ca.cert_pem)
    old.minimum_version = ssl.TLSVersion.TLSv1_2
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    result = handshake(server_context(ca, require_client_cert=False), old)
    assert isinstance(result.server_error, ssl.SSLError) and result.client_reply is None


def test_a_key_that_does_not_match_its_certificate_is_refused(ca: CertificateAuthority) -> None:
    cert_pem, _ = ca.server_credentials(["localhost"])
    other_key, _ = make_key_and_csr("hv1")
    with pytest.raises(CAError, match="do not load"):
        ssl_server_context(cert_pem, other_key, ca.cert_pem, True)
    with pytest.raises(CAError, match="needs its key"):
        ssl_client_context(ca.cert_pem, cert_pem=cert_pem)


def test_keys_handed_to_ssl_do_not_stay_on_disk(
    tmp_path: Path, ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    server_context(ca)
    enrolled_client(ca, ca)
    assert list(scratch.iterdir()) == []
