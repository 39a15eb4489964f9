"""The agent's end of the controller connection: TLS 1.3 over TCP, one msgpack map per frame (crypto.protocol).

Blocking, with socket timeouts: `receive(timeout)` returns None when nothing came in time, so the
agent's one loop can reconcile and report between messages. Every way the connection can end raises
ChannelError (or a subclass naming the reason); the agent then reconnects. A bad frame from the
controller is logged by its error code, never its contents, and closes the connection.
"""

from __future__ import annotations

import logging
import socket
import ssl
import time
from collections import deque

from crypto import protocol

LOG = logging.getLogger("goldilocks.agent.channel")

CONNECT_TIMEOUT = 5.0  # seconds for TCP connect and the TLS handshake
SEND_TIMEOUT = 5.0
RECV_SIZE = 65536
# The controller may send only its own message types: an agent type from it is a protocol error.
ACCEPT = frozenset(protocol.CONTROLLER_MESSAGES)


class ChannelError(Exception):
    """The connection could not be made, or it ended; the message says why (never a frame's contents)."""


class CertificateRefused(ChannelError):
    """The controller refused our client certificate with a TLS alert (unknown, revoked, or none given)."""


class ControllerUntrusted(ChannelError):
    """The controller's certificate does not verify against our CA file."""


class BadFrame(ChannelError):
    """The controller sent a frame that breaks the protocol; `code` is crypto.protocol's error code."""

    def __init__(self, code: str) -> None:
        super().__init__(f"protocol error from the controller: {code}")
        self.code = code


def _tls_failure(exc: ssl.SSLError, during: str) -> ChannelError:
    """A TLS error as the ChannelError that says most: a refused certificate gets its own class."""
    reason = exc.reason or ""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ControllerUntrusted(f"the controller's certificate does not verify against our CA: {exc.verify_message}")
    if "ALERT" in reason and ("CERTIFICATE" in reason or "UNKNOWN_CA" in reason or "ACCESS_DENIED" in reason):
        return CertificateRefused(f"the controller refused our certificate (TLS alert {reason})")
    if isinstance(exc, ssl.SSLZeroReturnError | ssl.SSLEOFError):
        return ChannelError("the controller closed the connection")
    return ChannelError(f"TLS error {during}: {reason or exc}")


class Channel:
    """One connection to the controller at host:port, authenticated by `context` (crypto.ca.ssl_client_context)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.host, self.port = host, port
        self.context = context
        self.connect_timeout = connect_timeout
        self._sock: ssl.SSLSocket | None = None
        self._reader = protocol.FrameReader(ACCEPT)
        self._pending: deque[dict] = deque()

    def __repr__(self) -> str:
        return f"Channel({self.host}:{self.port}, {'open' if self._sock else 'closed'})"

    def connect(self) -> Channel:
        """Connect and finish the TLS handshake; returns self. Raises ChannelError."""
        where = f"{self.host}:{self.port}"
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.connect_timeout)
        except OSError as exc:
            raise ChannelError(f"cannot connect to {where}: {exc.strerror or exc}") from None
        try:
            hostname = self.host if self.context.check_hostname else None
            self._sock = self.context.wrap_socket(raw, server_hostname=hostname)
        except ssl.SSLError as exc:
            raw.close()
            raise _tls_failure(exc, f"in the handshake with {where}") from None
        except OSError as exc:
            raw.close()
            raise ChannelError(f"TLS handshake with {where} failed: {exc.strerror or exc}") from None
        self._reader = protocol.FrameReader(ACCEPT)
        self._pending.clear()
        return self

    @property
    def connected(self) -> bool:
        return self._sock is not None

    def send(self, message: dict) -> None:
        """Send one message. Raises ChannelError if the connection is gone; protocol.ProtocolError if the
        message itself breaks the schema (our bug, the connection stays usable)."""
        data = protocol.encode(message)
        sock = self._open_socket()
        try:
            sock.settimeout(SEND_TIMEOUT)
            sock.sendall(data)
        except ssl.SSLError as exc:
            self.close()
            raise _tls_failure(exc, "while sending") from None
        except OSError as exc:
            self.close()
            raise ChannelError(f"sending to the controller failed: {exc.strerror or exc}") from None

    def receive(self, timeout: float) -> dict | None:
        """The next message, or None if none arrived within `timeout` seconds. Raises ChannelError when the
        connection ends, BadFrame (after closing) when the controller breaks the protocol."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while not self._pending:
            sock = self._open_socket()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                sock.settimeout(remaining)
                data = sock.recv(RECV_SIZE)
            except TimeoutError:
                return None
            except ssl.SSLError as exc:
                self.close()
                raise _tls_failure(exc, "while receiving") from None
            except OSError as exc:
                self.close()
                raise ChannelError(f"receiving from the controller failed: {exc.strerror or exc}") from None
            if not data:
                self.close()
                raise ChannelError("the controller closed the connection")
            try:
                self._pending.extend(self._reader.feed(data))
            except protocol.ProtocolError as exc:
                self._refuse(exc.code)
        return self._pending.popleft()

    def _refuse(self, code: str) -> None:
        """Log the bad frame by its code, close, and raise BadFrame. No `error` goes back: it is not among
        the messages an agent sends (crypto.protocol.AGENT_MESSAGES), so the controller would refuse it too."""
        LOG.warning("closing the connection to the controller: protocol error %s in a frame it sent", code)
        self.close()
        raise BadFrame(code)

    def _open_socket(self) -> ssl.SSLSocket:
        if self._sock is None:
            raise ChannelError("not connected to the controller")
        return self._sock

    def close(self) -> None:
        sock, self._sock = self._sock, None
        self._pending.clear()
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
