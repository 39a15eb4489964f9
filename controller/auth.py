"""API tokens: 256-bit random bearer tokens, stored only as SHA-256 digests, each read-only or admin."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from apps.errors import FieldError
from controller.store import Store, StoredToken

LOG = logging.getLogger("goldilocks.auth")

ROLES = ("read-only", "admin")
ADMIN = "admin"
ADMIN_TOKEN_NAME = "admin"
ADMIN_TOKEN_FILE = "admin.token"
TOKEN_PREFIX = "glk_"
TOKEN_NAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")
# RFC 6750 token68 characters; anything else cannot be one of ours.
_BEARER_RE = re.compile(r"^Bearer +([A-Za-z0-9\-._~+/]+=*) *$", re.IGNORECASE)


class TokenError(FieldError):
    """A bad token request; `field` names the offending field."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (the actor in the audit log), role and fingerprint."""

    name: str
    role: str
    fingerprint: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


def new_token_value() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def digest(value: str) -> str:
    """What the store keeps. A 256-bit random token needs no slow hash: SHA-256 cannot be reversed."""
    return hashlib.sha256(value.encode()).hexdigest()


def fingerprint(value: str) -> str:
    """A short public name for a token, derived separately so it reveals neither the token nor its digest."""
    return "fp-" + hashlib.sha256(b"goldilocks token fingerprint\0" + value.encode()).hexdigest()[:12]


def bearer_token(header: str | None) -> str | None:
    """The token in an `Authorization: Bearer <token>` header, or None."""
    if not header:
        return None
    match = _BEARER_RE.fullmatch(header)
    return match.group(1) if match else None


def authenticate(store: Store, header: str | None) -> Principal | None:
    """The principal behind an Authorization header, or None. Every stored digest is compared in
    constant time, so timing tells an attacker nothing about how close a guess came."""
    value = bearer_token(header)
    if value is None:
        return None
    presented = hashlib.sha256(value.encode()).digest()
    found: StoredToken | None = None
    for token in store.tokens():
        if hmac.compare_digest(bytes.fromhex(token.digest), presented):
            found = token
    return Principal(found.name, found.role, found.fingerprint) if found else None


def check_token_request(body: object) -> tuple[str, str]:
    """Validate a POST /v1/tokens body {"name", "role"}; return (name, role)."""
    if not isinstance(body, dict):
        raise TokenError("body", "must be a JSON object")
    unknown = set(body) - {"name", "role"}
    if unknown:
        raise TokenError(sorted(unknown)[0], "unknown field (allowed: name, role)")
    name, role = body.get("name"), body.get("role", "read-only")
    if not isinstance(name, str) or not TOKEN_NAME_RE.fullmatch(name):
        raise TokenError("name", f"{name!r} is not a valid token name (letters, digits, -, _, . ; at most 63)")
    if role not in ROLES:
        raise TokenError("role", f"must be one of {', '.join(ROLES)}")
    return name, role


def issue(store: Store, name: str, role: str) -> tuple[StoredToken, str]:
    """Store a new token (inside the caller's transaction); return it and its value, which is
    shown once and kept nowhere."""
    value = new_token_value()
    token = StoredToken(name, role, digest(value), fingerprint(value), time.time())
    store.add_token(token)
    return token, value


def write_secret_file(path: Path, value: str) -> None:
    """Write a secret readable by its owner only, replacing any previous file atomically."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, (value + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def ensure_admin_token(store: Store, state_dir: str | os.PathLike, reset: bool = False) -> Path | None:
    """On first start (no admin token stored), or when asked to reset, issue the token named
    `admin` and write it to <state-dir>/admin.token (mode 0600). Logs the path, never the value.
    Returns the path written, or None."""
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    if not reset and any(t.role == ADMIN for t in store.tokens()):
        if not path.exists():
            LOG.warning("%s is missing; start with --reset-admin-token to issue a new admin token", path)
        return None
    with store.transaction():
        replaced = store.delete_token(ADMIN_TOKEN_NAME)
        token, value = issue(store, ADMIN_TOKEN_NAME, ADMIN)
        action = "token.reset" if replaced else "token.create"
        store.add_audit(
            token.created, "controller", action, ADMIN_TOKEN_NAME, f"admin token {token.fingerprint} written to {path}"
        )
        # Written inside the transaction: if the file cannot be written, no token is stored.
        write_secret_file(path, value)
    LOG.info("admin token %s written to %s (mode 0600); send it as 'Authorization: Bearer <token>'", token.fingerprint, path)
    return path
