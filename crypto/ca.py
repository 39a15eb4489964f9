"""The controller's certificate authority: client and server certificates, and the TLS 1.3 contexts built on them."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from crypto.keystore import KeystoreError, MasterKey, read_secret_file, write_file_atomic, write_secret_file

CA_CERT_FILE = "ca.pem"
CA_KEY_FILE = "ca.key.sealed"
CA_KEY_CONTEXT = "ca-key"
CA_LIFETIME = timedelta(days=3652)
LEAF_LIFETIME = timedelta(days=365)
# Certificates start a little in the past so a peer whose clock is slightly behind accepts them.
CLOCK_SKEW = timedelta(minutes=5)
# A cached server certificate is replaced once less than this much of its life is left.
SERVER_RENEW_BEFORE = timedelta(days=30)
SERVER_CN = "Goldilocks controller"
MAX_CN_LEN = 64

_DNS_NAME = re.compile(r"^(?=.{1,253}$)[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?$")


class CAError(Exception):
    """A certificate, CSR or CA file that cannot be used; the message says which and why."""


@dataclass(frozen=True)
class ClientIdentity:
    """Who a verified client certificate speaks for."""

    hypervisor: str
    serial: int
    not_after: datetime


def _utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now if now.tzinfo is not None else now.replace(tzinfo=UTC)


def _fingerprint(der: bytes) -> str:
    return "sha256:" + hashlib.sha256(der).hexdigest()[:16]


def _check_hypervisor(hypervisor: str) -> None:
    if not isinstance(hypervisor, str) or not 1 <= len(hypervisor) <= MAX_CN_LEN or not hypervisor.isprintable():
        raise CAError(f"hypervisor name must be 1 to {MAX_CN_LEN} printable characters")


def _common_name(name: x509.Name, what: str) -> str:
    values = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise CAError(f"{what} must have exactly one common name")
    return values[0].value


def _check_public_key(key: CertificatePublicKeyTypes) -> None:
    """Only key types and sizes TLS 1.3 can use and that are still strong."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in {"secp256r1", "secp384r1", "secp521r1"}:
            raise CAError(f"CSR key uses unsupported curve {key.curve.name}")
    elif isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise CAError(f"CSR RSA key is {key.key_size} bits, at least 2048 required")
    elif not isinstance(key, ed25519.Ed25519PublicKey):
        raise CAError("CSR key type is not supported (use EC P-256, RSA >= 2048 or Ed25519)")


def _subject_alt_names(names: list[str]) -> list[x509.GeneralName]:
    if not names:
        raise CAError("a server certificate needs at least one DNS name or IP address")
    result: list[x509.GeneralName] = []
    for name in names:
        if not isinstance(name, str):
            raise CAError("server names must be str")
        try:
            result.append(x509.IPAddress(ipaddress.ip_address(name)))
            continue
        except ValueError:
            pass
        if not _DNS_NAME.fullmatch(name):
            raise CAError(f"server name {name!r} is neither an IP address nor a DNS name")
        result.append(x509.DNSName(name))
    return result


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")


def make_key_and_csr(hypervisor: str) -> tuple[str, str]:
    """Agent side: a new EC P-256 key (unencrypted PKCS8 PEM) and a CSR for it with CN = hypervisor."""
    _check_hypervisor(hypervisor)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hypervisor)]))
        .sign(key, hashes.SHA256())
    )
    return _private_key_pem(key), csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


class CertificateAuthority:
    """The CA in a state directory: `ca.pem` (public) and `ca.key.sealed` (its key, sealed by the master key)."""

    def __init__(self, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        self._cert = cert
        self._key = key
        self._cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        self._fingerprint = _fingerprint(cert.public_bytes(serialization.Encoding.DER))
        self._ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self._server_cache: dict[tuple[str, ...], tuple[str, str, datetime]] = {}

    def __repr__(self) -> str:
        return f"CertificateAuthority({self.name!r}, {self._fingerprint})"

    @classmethod
    def load_or_create(cls, state_dir: Path, master: MasterKey, now: datetime | None = None) -> CertificateAuthority:
        """Load the CA from `state_dir`, or create one there if neither of its files exists."""
        state_dir = Path(state_dir)
        cert_path, key_path = state_dir / CA_CERT_FILE, state_dir / CA_KEY_FILE
        have_cert, have_key = os.path.lexists(cert_path), os.path.lexists(key_path)
        if have_cert and have_key:
            return cls._load(cert_path, key_path, master)
        if have_cert or have_key:
            missing = key_path if have_cert else cert_path
            raise CAError(f"{missing}: missing, but {cert_path if have_key else key_path} exists; restore it or remove both")
        ca = cls._create(_utc(now))
        try:
            state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            key_der = ca._key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            write_secret_file(key_path, master.seal(key_der, CA_KEY_CONTEXT))
            write_file_atomic(cert_path, ca.cert_pem.encode("ascii"), 0o644)
        except (OSError, KeystoreError) as exc:
            raise CAError(f"{state_dir}: cannot write the CA: {exc}") from None
        return ca

    @classmethod
    def _create(cls, now: datetime) -> CertificateAuthority:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Goldilocks CA {secrets.token_hex(4)}")])
        public = key.public_key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path, master: MasterKey) -> CertificateAuthority:
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except OSError as exc:
            raise CAError(f"{cert_path}: cannot read: {exc.strerror}") from None
        except ValueError:
            raise CAError(f"{cert_path}: not a PEM certificate") from None
        try:
            key_der = master.open(read_secret_file(key_path), CA_KEY_CONTEXT)
        except KeystoreError as exc:
            raise CAError(f"{key_path}: cannot unseal the CA key: {exc}") from None
        try:
            key = serialization.load_der_private_key(key_der, password=None)
        except ValueError:
            raise CAError(f"{key_path}: sealed content is not a private key") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
            raise CAError(f"{key_path}: the key does not belong to the certificate in {cert_path}")
        try:
            cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
            is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            raise CAError(f"{cert_path}: not a CA certificate made by Goldilocks")
        return cls(cert, key)

    @property
    def name(self) -> str:
        return _common_name(self._cert.subject, "the CA certificate")

    @property
    def cert_pem(self) -> str:
        return self._cert_pem

    @property
    def fingerprint(self) -> str:
        """sha256 of the CA certificate's DER, shortened: what an operator compares by eye."""
        return self._fingerprint

    def _leaf(
        self,
        subject: x509.Name,
        public: CertificatePublicKeyTypes,
        usage: x509.ObjectIdentifier,
        now: datetime,
        alt_names: list[x509.GeneralName] | None = None,
    ) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._cert.subject)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(min(now + LEAF_LIFETIME, self._cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski), critical=False)
        )
        if alt_names:
            builder = builder.add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        return builder.sign(self._key, hashes.SHA256())

    def sign_csr(self, csr_pem: str, hypervisor: str, now: datetime | None = None) -> tuple[str, int]:
        """Issue a one-year clientAuth certificate for `hypervisor` from its CSR: (certificate PEM, serial)."""
        _check_hypervisor(hypervisor)
        if not isinstance(csr_pem, str):
            raise CAError("CSR must be PEM text")
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8", "replace"))
            public = csr.public_key()
        except (ValueError, UnsupportedAlgorithm):
            raise CAError("CSR is not a valid PEM certificate signing request") from None
        _check_public_key(public)
        try:
            signature_ok = csr.is_signature_valid
        except (ValueError, UnsupportedAlgorithm):
            signature_ok = False
        if not signature_ok:
            raise CAError("CSR signature does not verify")
        common_name = _common_name(csr.subject, "CSR subject")
        if common_name != hypervisor:
            raise CAError(f"CSR common name {common_name[:MAX_CN_LEN]!r} does not match hypervisor {hypervisor!r}")
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hypervisor)])
        cert = self._leaf(subject, public, ExtendedKeyUsageOID.CLIENT_AUTH, _utc(now))
        return cert.public_bytes(serialization.Encoding.PEM).decode("ascii"), cert.serial_number

    def server_credentials(self, names: list[str], now: datetime | None = None) -> tuple[str, str]:
        """A serverAuth certificate for `names` (DNS names or IP addresses) and its unencrypted key PEM.

        Remembered per list of names for this CA object and reissued only when less than
        SERVER_RENEW_BEFORE of it is left, so calling it at every start (or often) is cheap.
        """
        now = _utc(now)
        cache_key = tuple(names)
        cached = self._server_cache.get(cache_key)
        if cached is not None and now < cached[2] - SERVER_RENEW_BEFORE:
            return cached[0], cached[1]
        alt_names = _subject_alt_names(list(names))
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, SERVER_CN)])
        cert = self._leaf(subject, key.public_key(), ExtendedKeyUsageOID.SERVER_AUTH, now, alt_names)
        cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        key_pem = _private_key_pem(key)
        self._server_cache[cache_key] = (cert_pem, key_pem, cert.not_valid_after_utc)
        return cert_pem, key_pem

    def verify_client(self, cert_der: bytes, now: datetime | None = None) -> ClientIdentity:
        """Who a client certificate speaks for, if this CA issued it for clientAuth and it is valid now.

        Revocation (by serial) is the caller's business: it owns the list of revoked serials.
        """
        try:
            cert = x509.load_der_x509_certificate(cert_der)
        except (ValueError, TypeError):
            raise CAError("client certificate is not a DER certificate") from None
        try:
            cert.verify_directly_issued_by(self._cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CAError("client certificate was not issued by this CA") from None
        now = _utc(now)
        if now < cert.not_valid_before_utc:
            raise CAError(f"client certificate serial {cert.serial_number} is not valid before {cert.not_valid_before_utc}")
        if now > cert.not_valid_after_utc:
            raise CAError(f"client certificate serial {cert.serial_number} expired at {cert.not_valid_after_utc}")
        try:
            usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
            constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except (x509.ExtensionNotFound, ValueError):
            raise CAError(f"client certificate serial {cert.serial_number} lacks clientAuth usage") from None
        if ExtendedKeyUsageOID.CLIENT_AUTH not in usages or constraints.ca:
            raise CAError(f"client certificate serial {cert.serial_number} is not a clientAuth certificate")
        hypervisor = _common_name(cert.subject, "client certificate")
        return ClientIdentity(hypervisor=hypervisor, serial=cert.serial_number, not_after=cert.not_valid_after_utc)


def _load_cert_chain(context: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """ssl reads certificates and keys only from files: hand them over through a private directory."""
    with tempfile.TemporaryDirectory(prefix="goldilocks-tls-") as directory:  # created 0700
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="ascii") as out:
                out.write(text)
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError:
            raise CAError("certificate and key PEM do not load (malformed, or the key does not match)") from None


def _tls13_context(protocol: int, ca_pem: str) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    try:
        context.load_verify_locations(cadata=ca_pem)
    except (ssl.SSLError, ValueError):
        raise CAError("CA PEM does not load") from None
    return context


def ssl_server_context(cert_pem: str, key_pem: str, ca_pem: str, require_client_cert: bool) -> ssl.SSLContext:
    """TLS 1.3 server side. Client certificates are checked against our CA: required, or optional
    for the enrollment port (where a client has none yet, and the handshake must still succeed)."""
    context = _tls13_context(ssl.PROTOCOL_TLS_SERVER, ca_pem)
    context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    _load_cert_chain(context, cert_pem, key_pem)
    return context


def ssl_client_context(ca_pem: str, cert_pem: str | None = None, key_pem: str | None = None) -> ssl.SSLContext:
    """TLS 1.3 client side: the server must have a certificate from our CA.

    Host names are not checked: the CA is private to one controller and signs nothing else,
    and agents often reach the controller by an address that is not in its certificate.
    """
    if (cert_pem is None) != (key_pem is None):
        raise CAError("a client certificate needs its key, and a key its certificate")
    context = _tls13_context(ssl.PROTOCOL_TLS_CLIENT, ca_pem)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    if cert_pem is not None and key_pem is not None:
        _load_cert_chain(context, cert_pem, key_pem)
    return context
