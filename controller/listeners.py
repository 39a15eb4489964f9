"""The controller's listening sockets, hardened against clients that connect and then say nothing.

A probe of the REST API (issue 10) silenced it, `/v1/health` included, with 1,024 idle TCP
connections or 1,030 slow-header sockets and no token: eventlet's WSGI server serves at most 1,024
connections from one green pool, its accept loop waits for a free slot, and nothing closes a
connection that never finishes its request. Ryu's OpenFlow listener has no pool, but a socket
that never completes the OpenFlow handshake stays open for ever, and once the process runs out of
file descriptors `accept()` raises and Ryu's accept loop ends: the controller never accepts a
switch again.

The REST server here (`serve_api`) is eventlet's HTTP protocol behind our own accept loop:
- a request's line and headers must arrive within `request_seconds` of the connection becoming
  ready for it (idle keep-alive time included), its body within `body_seconds`, and any one read
  or write within `io_seconds`;
- the connections are counted per client address. A new connection is always accepted: when its
  client already holds `per_client`, or all clients hold `connections`, the connection that has
  waited longest for its request is closed instead (the busiest client's, when all are full), so
  a health check gets through whatever a flood holds open. Only when every connection is in the
  middle of a request is the newcomer refused, with a JSON 503;
- the errors the HTTP layer answers itself (a request line or headers too long, a malformed
  request line or length) are JSON like the API's other errors.

The OpenFlow listener: a connection must complete the OpenFlow handshake (features reply)
within `HANDSHAKE_SECONDS` (controller/ryu_parsing.py closes it otherwise), and when the process
is out of file descriptors the oldest unfinished handshake is closed to make room.

Every accept loop (`accept_forever`, the agents' listener's too) survives every error `accept()`
raises: out of descriptors it closes the connection that has waited longest on any listener
(`ROOM_MAKERS`) or, with none, backs off; it logs once per episode, and keeps accepting.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

import eventlet
from eventlet import greenio, wsgi

LOG = logging.getLogger("goldilocks.listeners")

# accept() errors that mean "no descriptor or memory for the new connection now": make room, retry.
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ERROR_LOG_SECONDS = 60.0

# A switch that has not completed the OpenFlow handshake this long after connecting is closed.
# A cold start of 1,000 emulated hypervisors completes every handshake within about 2 s.
HANDSHAKE_SECONDS = float(os.environ.get("GOLDILOCKS_OF_HANDSHAKE_SECONDS", "30"))


@dataclass(frozen=True)
class Limits:
    connections: int = 1000  # REST connections open at once, all clients together
    per_client: int = 64  # ... from one client address
    request_seconds: float = 10.0  # for a request line and headers, idle keep-alive time included
    body_seconds: float = 10.0  # for a request body
    io_seconds: float = 10.0  # for any one read or write

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Limits:
        env = os.environ if env is None else env
        return cls(
            connections=int(env.get("GOLDILOCKS_REST_CONNECTIONS", cls.connections)),
            per_client=int(env.get("GOLDILOCKS_REST_CONNECTIONS_PER_CLIENT", cls.per_client)),
            request_seconds=float(env.get("GOLDILOCKS_REST_REQUEST_SECONDS", cls.request_seconds)),
            body_seconds=float(env.get("GOLDILOCKS_REST_BODY_SECONDS", cls.body_seconds)),
            io_seconds=float(env.get("GOLDILOCKS_REST_IO_SECONDS", cls.io_seconds)),
        )

    def __post_init__(self) -> None:
        if self.connections < 1 or self.per_client < 1:
            raise ValueError("REST connection limits must be at least 1")
        if min(self.request_seconds, self.body_seconds, self.io_seconds) <= 0:
            raise ValueError("REST timeouts must be positive")


# -- who holds which connection (pure bookkeeping: no sockets) --------------------------------------
WAITING, WORKING = "waiting", "working"


class Connection:
    """One client connection: WAITING for a request (since `since`) or WORKING on one."""

    __slots__ = ("client", "sock", "state", "since", "closed")

    def __init__(self, client: str, sock=None, now: float = 0.0) -> None:
        self.client, self.sock = client, sock
        self.state, self.since, self.closed = WAITING, now, False

    def __repr__(self) -> str:
        return f"Connection({self.client}, {self.state}, since={self.since:.3f})"


class ConnectionTable:
    """The open connections per client, each client's waiting ones oldest first."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.count = 0
        self._clients: dict[str, set[Connection]] = {}
        self._waiting: dict[str, dict[Connection, None]] = {}  # insertion order: oldest first

    def admit(self, client: str) -> tuple[bool, list[Connection]]:
        """Whether a new connection from `client` may open, and which open ones it displaces."""
        mine = self._clients.get(client, ())
        if len(mine) >= self.limits.per_client:
            victim = self._oldest_waiting(client)
            return (victim is not None), ([victim] if victim is not None else [])
        if self.count >= self.limits.connections:
            victim = self.longest_waiting(busiest_first=True)
            return (victim is not None), ([victim] if victim is not None else [])
        return True, []

    def longest_waiting(self, busiest_first: bool = False) -> Connection | None:
        """The connection waiting longest for a request: of the client holding the most
        connections when `busiest_first` (and it has one waiting), else of anyone."""
        if busiest_first:
            for client in sorted(self._clients, key=lambda c: len(self._clients[c]), reverse=True):
                victim = self._oldest_waiting(client)
                if victim is not None:
                    return victim
            return None
        heads = [next(iter(w)) for w in self._waiting.values() if w]
        return min(heads, key=lambda c: c.since, default=None)

    def _oldest_waiting(self, client: str) -> Connection | None:
        waiting = self._waiting.get(client)
        return next(iter(waiting)) if waiting else None

    def add(self, conn: Connection) -> None:
        self._clients.setdefault(conn.client, set()).add(conn)
        self.count += 1
        self.waiting(conn, conn.since)

    def remove(self, conn: Connection) -> None:
        """Idempotent."""
        mine = self._clients.get(conn.client)
        if mine is None or conn not in mine:
            return
        mine.discard(conn)
        self.count -= 1
        waiting = self._waiting.get(conn.client)
        if waiting is not None:
            waiting.pop(conn, None)
        if not mine:
            del self._clients[conn.client]
            self._waiting.pop(conn.client, None)

    def waiting(self, conn: Connection, now: float) -> None:
        if conn.client not in self._clients or conn not in self._clients[conn.client]:
            return
        conn.state, conn.since = WAITING, now
        waiting = self._waiting.setdefault(conn.client, {})
        waiting.pop(conn, None)
        waiting[conn] = None  # to the end: the newest waiter

    def working(self, conn: Connection) -> None:
        conn.state = WORKING
        waiting = self._waiting.get(conn.client)
        if waiting is not None:
            waiting.pop(conn, None)

    def holding(self, client: str) -> int:
        return len(self._clients.get(client, ()))


# -- the REST server ---------------------------------------------------------------------------
def json_error_bytes(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 error response with the API's JSON error body; the connection closes."""
    body = json.dumps({"error": message}).encode()
    reason = HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _TimelyInput:
    """A request body that must arrive within the server's body deadline (a read past it raises
    socket.timeout, which the API answers as a body that did not arrive: 400)."""

    def __init__(self, inner, deadline: float) -> None:
        self._inner, self._deadline = inner, deadline

    def _within(self, read: Callable, *args):
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request body did not arrive in time")
        with eventlet.Timeout(left, TimeoutError("the request body did not arrive in time")):
            return read(*args)

    def read(self, *args):
        return self._within(self._inner.read, *args)

    def readline(self, *args):
        return self._within(self._inner.readline, *args)

    def readlines(self, *args):
        return self._within(self._inner.readlines, *args)

    def __iter__(self):
        return iter(self.readline, b"")

    def __getattr__(self, name):
        return getattr(self._inner, name)


class ApiProtocol(wsgi.HttpProtocol):
    """eventlet's HTTP/1.1 protocol, with deadlines, connection accounting and JSON errors.
    (`handle_one_request` follows eventlet 0.41's, with the deadline and the JSON answers.)"""

    def handle_one_request(self) -> None:
        server, conn = self.server, self.conn_state[3]
        limits: Limits = server.limits
        server.table.waiting(conn, time.monotonic())
        if self.server.max_http_version:
            self.protocol_version = self.server.max_http_version
        deadline = eventlet.Timeout(limits.request_seconds, TimeoutError("no complete request in time"))
        try:
            try:
                self.raw_requestline = self.rfile.readline(server.url_length_limit)
            except OSError:  # reset, or closed to make room for another client
                self.raw_requestline = b""
            self.conn_state[2] = wsgi.STATE_REQUEST
            if not self.raw_requestline:
                self.close_connection = 1
                return
            if len(self.raw_requestline) >= server.url_length_limit:
                self._refuse(414, f"request line: longer than {server.url_length_limit - 1} bytes")
                return
            plain = self.rfile
            try:
                self.rfile = wsgi.FileObjectForHeaders(self.rfile)
                if not self.parse_request():  # it answered (send_error, below)
                    return
            except wsgi.HeaderLineTooLong:
                self._refuse(431, f"headers: a header line is longer than {wsgi.MAX_HEADER_LINE} bytes")
                return
            except wsgi.HeadersTooLarge:
                self._refuse(431, f"headers: larger than {wsgi.MAX_TOTAL_HEADER_SIZE} bytes in all")
                return
            finally:
                self.rfile = plain
        finally:
            deadline.cancel()
        server.table.working(conn)
        content_length = self.headers.get("content-length")
        if content_length is not None:
            if not (content_length.isascii() and content_length.strip().isdigit()):
                self._refuse(400, "Content-Length: not a whole number of bytes")
                return
            if self.headers.get("transfer-encoding") is not None:
                self._refuse(400, "Content-Length and Transfer-Encoding: not allowed together")
                return
        self.environ = self.get_environ()
        self.application = server.app
        server.outstanding_requests += 1
        try:
            self.handle_one_response()
        except OSError as exc:
            if wsgi.support.get_errno(exc) not in wsgi.BROKEN_SOCK:
                raise
        finally:
            server.outstanding_requests -= 1

    def get_environ(self):
        env = super().get_environ()
        timely = _TimelyInput(env["wsgi.input"], time.monotonic() + self.server.limits.body_seconds)
        env["wsgi.input"] = env["eventlet.input"] = timely
        return env

    def send_error(self, code, message=None, explain=None) -> None:
        """What http.server answers for a malformed request line, as JSON instead of HTML."""
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "error"
        self._refuse(code, f"request: {message or phrase}")

    def _refuse(self, status: int, message: str) -> None:
        self.close_connection = 1
        try:
            self.wfile.write(json_error_bytes(status, message))
            self.wfile.flush()
        except OSError:
            pass


class _Log:
    """Where a rate-limited warning was last logged, per key."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}

    def warn(self, key: str, message: str, *args) -> None:
        now = time.monotonic()
        if now - self.last.get(key, -ERROR_LOG_SECONDS) >= ERROR_LOG_SECONDS:
            if len(self.last) > 1024:
                self.last.clear()
            self.last[key] = now
            LOG.warning(message, *args)


# Each listener's connection that has waited longest for its client, as (since, close), or None.
# Out of descriptors, whichever of them has waited longest, on any listener, is closed: a flood
# on one port must not keep the other ports from accepting, and the connection just accepted (a
# health check, say) must not be the one closed.
ROOM_MAKERS: dict[str, Callable[[], tuple[float, Callable[[], None]] | None]] = {}


def make_room() -> bool:
    candidates = [c for c in (find() for find in list(ROOM_MAKERS.values())) if c is not None]
    if not candidates:
        return False
    _, close = min(candidates, key=lambda c: c[0])
    close()
    return True


# Out of descriptors with none to free: wait this long, doubling, before accepting again.
ACCEPT_BACKOFF_MIN, ACCEPT_BACKOFF_MAX = 0.05, 1.0
ROOM_SECONDS = 0.01  # after closing a connection to make room: let its green thread free the descriptor


class AcceptBackoff:
    """How long an accept loop waits after accept() failed, and what it logs: one line when it runs
    out of descriptors and one when it accepts again (per episode, however long), other errors at
    most once a minute."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.delay = 0.0
        self.failures = 0
        self._out = False
        self._log = _Log()

    def failed(self, exc: BaseException) -> float:
        """Seconds to wait before the next accept()."""
        code = exc.errno if isinstance(exc, OSError) else None
        if code in (errno.ECONNABORTED, errno.EINTR, errno.EAGAIN, errno.EPROTO):
            return 0.0  # the client gave up before we accepted it
        self.failures += 1
        if code in OUT_OF_RESOURCES:
            if not self._out:
                self._out = True
                LOG.error(
                    "%s: cannot accept connections (%s); closing connections that wait for their client, "
                    "oldest first, and retrying", self.name, errno.errorcode.get(code, code),
                )  # fmt: skip
            # A closed connection frees its descriptor when its green thread ends: let it run
            # before trying again, or every waiting connection would be closed at once.
            if make_room():
                return ROOM_SECONDS
            self.delay = min(ACCEPT_BACKOFF_MAX, max(ACCEPT_BACKOFF_MIN, self.delay * 2))
            return self.delay
        self._log.warn("error", "%s: accept failed (%s: %s); retrying", self.name, exc.__class__.__name__, exc)
        return ACCEPT_BACKOFF_MIN

    def succeeded(self) -> None:
        if self._out:
            LOG.warning("%s: accepting again after %d failed attempts", self.name, self.failures)
        self.delay, self.failures, self._out = 0.0, 0, False


def accept_forever(
    accept: Callable[[], tuple[object, object]],
    on_connection: Callable,
    name: str,
    sleep: Callable[[float], None] | None = None,
    running: Callable[[], bool] = lambda: True,
) -> None:
    """Accept connections and hand each to `on_connection` while `running()`. No error ends the
    loop: a listener that stops accepting is silenced for good (AcceptBackoff says what it does)."""
    sleep = sleep or eventlet.sleep
    backoff = AcceptBackoff(name)
    while running():
        try:
            client, addr = accept()
        except Exception as exc:  # noqa: BLE001 - whatever accept() raises, the listener goes on
            if not running():
                return
            seconds = backoff.failed(exc)
            if seconds:
                sleep(seconds)
            continue
        backoff.succeeded()
        try:
            on_connection(client, addr)
        except Exception:  # noqa: BLE001 - handing a socket over must not end the loop either
            LOG.exception("%s: could not start serving %s", name, addr)
            try:
                client.close()
            except OSError:
                pass


def serve_api(sock, app, log, limits: Limits | None = None) -> None:
    """Serve the WSGI `app` on the listening `sock` until the process ends."""
    limits = limits or Limits.from_env()
    server = wsgi.Server(
        sock, sock.getsockname(), app, log,
        max_http_version=wsgi.DEFAULT_MAX_HTTP_VERSION, protocol=ApiProtocol, socket_timeout=limits.io_seconds,
    )  # fmt: skip
    server.limits = limits
    server.table = table = ConnectionTable(limits)
    warn = _Log()

    def close(conn: Connection) -> None:
        table.remove(conn)
        if not conn.closed:
            conn.closed = True
            greenio.shutdown_safe(conn.sock)  # its green thread reads EOF and ends

    def longest_waiting():
        victim = table.longest_waiting()
        return None if victim is None else (victim.since, lambda: close(victim))

    ROOM_MAKERS["REST"] = longest_waiting

    def run(conn_state: list) -> None:
        conn = conn_state[3]
        try:
            server.process_request(conn_state)
        except Exception:  # noqa: BLE001 - one connection's failure is not the server's
            LOG.exception("REST: connection from %s failed", conn.client)
        finally:
            table.remove(conn)
            conn.closed = True
            greenio.shutdown_safe(conn.sock)
            conn.sock.close()

    def on_connection(client_sock, addr) -> None:
        client = str(addr[0]) if isinstance(addr, tuple) else "local"
        admitted, displaced = table.admit(client)
        for victim in displaced:
            warn.warn(
                f"evict {victim.client}", "REST: %s holds %d connections; closing the one waiting longest for a request",
                victim.client, table.holding(victim.client),
            )  # fmt: skip
            close(victim)
        if not admitted:
            warn.warn(f"refuse {client}", "REST: every connection is busy with a request; refusing %s (503)", client)
            try:
                client_sock.setblocking(False)
                client_sock.send(json_error_bytes(503, "server: every connection is busy; retry shortly"))
            except OSError:
                pass
            greenio.shutdown_safe(client_sock)
            client_sock.close()
            return
        client_sock.settimeout(limits.io_seconds)
        conn = Connection(client, client_sock, time.monotonic())
        table.add(conn)
        eventlet.spawn_n(run, [addr, client_sock, wsgi.STATE_IDLE, conn])

    LOG.info("REST: serving on %s (%d connections, %d per client)", wsgi.socket_repr(sock), limits.connections, limits.per_client)
    accept_forever(sock.accept, on_connection, "REST")


# -- the OpenFlow listener ------------------------------------------------------------------------
class Handshakes:
    """Switch connections that have not completed the OpenFlow handshake, oldest first."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[float, object]] = {}  # id(datapath): (since, datapath)
        self._log = _Log()

    def started(self, datapath) -> None:
        self.pending[id(datapath)] = (time.monotonic(), datapath)

    def ended(self, datapath) -> None:
        self.pending.pop(id(datapath), None)

    def oldest(self):
        if not self.pending:
            return None
        key, (since, datapath) = next(iter(self.pending.items()))
        return since, functools.partial(self._close, key, datapath)

    def _close(self, key: int, datapath) -> None:
        self.pending.pop(key, None)
        self._log.warn(
            "room", "OpenFlow: out of descriptors; closing connections that have not completed their handshake, "
            "oldest first (%s, for one)", datapath.address,
        )  # fmt: skip
        greenio.shutdown_safe(datapath.socket)


HANDSHAKES = Handshakes()


def _stream_serve_forever(self) -> None:
    """Ryu's StreamServer.serve_forever (the OpenFlow listener; the agents' listener also uses
    it), which survives accept() errors."""

    def on_connection(sock, addr) -> None:
        eventlet.spawn_n(self.handle, sock, addr)

    from ryu.controller.controller import datapath_connection_factory

    if self.handle is datapath_connection_factory:
        name = "OpenFlow"
        ROOM_MAKERS[name] = HANDSHAKES.oldest
    else:
        name = f"listener {wsgi.socket_repr(self.server)}"
    accept_forever(self.server.accept, on_connection, name)


def _wsgi_serve_forever(self) -> None:
    """Ryu's WSGIServer.serve_forever, with our server."""
    from ryu.lib import hub

    serve_api(self.server, self.handle, hub.LoggingWrapper())


_INSTALLED = False


def install() -> None:
    """Ryu's listeners use the accept loops and the REST server above. Idempotent."""
    global _INSTALLED
    if _INSTALLED:
        return
    from ryu.lib import hub

    hub.StreamServer.serve_forever = _stream_serve_forever
    hub.WSGIServer.serve_forever = _wsgi_serve_forever
    raise_open_file_limit()
    _INSTALLED = True


def raise_open_file_limit() -> None:
    """A controller holds a descriptor per switch, agent and REST client: Debian's default soft
    limit of 1,024 is too few for a data centre of 1,000 hypervisors. Raise it to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            LOG.warning("could not raise the open-file limit from %d: %s", soft, exc)

