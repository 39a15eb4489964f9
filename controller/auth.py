"""API tokens: 256-bit random bearer tokens, stored only as SHA-256 digests, each read-only or admin;
and the budget of failed sign-ins each client address may spend before it is refused (429)."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
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


# Failed sign-ins: a client may fail this many times at once, and this many more each second after.
FAILURE_BURST = 20
FAILURE_RATE = 1.0
# Clients whose failures are remembered, at most (about 150 bytes each). Past it the client that
# failed longest ago is forgotten, so a spray of source addresses cannot grow the table.
MAX_CLIENTS = 10_000


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


@dataclass
class _Budget:
    left: float  # failures this client may still make at once
    at: float  # when `left` was counted
    announced: bool = False  # its "now limited" line is logged


class SignInLimiter:
    """Failed sign-ins per client, as a token bucket: a client may fail `burst` times at once and
    `rate` more times a second after. A client whose budget is spent is refused (429) before its
    token is checked, so no guess can be tested while it is limited, not even a right one.
    Successful sign-ins cost nothing. A client is an IPv4 address or an IPv6 /64 (one host's
    usual share). A client whose budget is whole again is forgotten; the table holds at most
    `max_clients`, and past that the one that failed longest ago is forgotten."""

    def __init__(
        self,
        burst: int = FAILURE_BURST,
        rate: float = FAILURE_RATE,
        max_clients: int = MAX_CLIENTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if burst < 1 or not 0 < rate < math.inf or max_clients < 1:
            raise ValueError("a sign-in limit needs burst >= 1, a positive finite rate and room for one client")
        self.burst, self.rate, self.max_clients, self.clock = burst, rate, max_clients, clock
        self._clients: OrderedDict[str, _Budget] = OrderedDict()  # least recently failed first

    @property
    def remembered(self) -> int:
        """How many clients' failures are remembered."""
        return len(self._clients)

    @staticmethod
    def client(address: str | None) -> str:
        """Who a request's source address counts as."""
        try:
            ip = ipaddress.ip_address(address or "")
        except ValueError:
            return address or "unknown"
        if ip.version == 6:
            if ip.ipv4_mapped:
                return str(ip.ipv4_mapped)
            return str(ipaddress.IPv6Network((ip, 64), strict=False))
        return str(ip)

    def _left(self, budget: _Budget, now: float) -> float:
        return min(float(self.burst), budget.left + max(0.0, now - budget.at) * self.rate)

    def retry_after(self, client: str) -> float:
        """Seconds until `client` may try again; 0 if it may now."""
        budget = self._clients.get(client)
        if budget is None:
            return 0.0
        left = self._left(budget, self.clock())
        if left >= self.burst:
            del self._clients[client]
            return 0.0
        return 0.0 if left >= 1 else (1 - left) / self.rate

    def failed(self, client: str) -> None:
        """Spend one failure of `client`'s budget."""
        now = self.clock()
        budget = self._clients.pop(client, None)
        left = self.burst if budget is None else self._left(budget, now)
        # A budget that was whole again starts a new episode, with its own log line.
        announced = budget is not None and left < self.burst and budget.announced
        budget = _Budget(left - 1, now, announced)
        if budget.left < 1 and not budget.announced:
            budget.announced = True
            # The address is not a secret; the token tried is never seen here.
            LOG.warning(
                "client %s has used up its %d failed sign-ins: its requests get 429, one more try allowed every %g s",
                client, self.burst, 1 / self.rate,
            )  # fmt: skip
        self._clients[client] = budget
        self._forget(now)

    def _forget(self, now: float) -> None:
        """Drop the least recently failed clients whose budget is whole again, and past the cap,
        the least recently failed ones whatever their budget."""
        while self._clients:
            oldest, budget = next(iter(self._clients.items()))
            if len(self._clients) <= self.max_clients and self._left(budget, now) < self.burst:
                return
            del self._clients[oldest]
