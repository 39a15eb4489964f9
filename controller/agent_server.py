"""The agents' TLS 1.3 listener (docs/agent-protocol.md): one green thread per connection, frames in
and out with crypto/protocol.py, every decision in controller/agents.py. A bad frame, a refused
certificate or a broken connection closes that connection and nothing else.

Connections that have not yet shown who they are cannot hold the listener: each must finish its
TLS handshake and its first message within FIRST_MESSAGE_DEADLINE, one client address may have only
MAX_UNAUTHENTICATED_PER_CLIENT of them open and all clients together a quarter of the process's file
descriptors, and running out of descriptors pauses accepting for a moment instead of ending it
(controller/listeners.py `accept_forever`, shared with the REST and OpenFlow listeners)."""

from __future__ import annotations

import logging
import resource
import socket
import ssl
import time
from collections.abc import Callable

from ryu.lib import hub

from controller import listeners
from controller.agents import AgentError, AgentManager
from crypto import protocol
from crypto.ca import ssl_server_context

LOG = logging.getLogger("goldilocks.agent_server")

# From accept to a completed TLS handshake and a first valid message (enroll, or hello): a
# connection slower than this is closed, so idle or half-open sockets free their slot and fd.
FIRST_MESSAGE_DEADLINE = 10.0
IDLE_TIMEOUT = 30.0  # an agent reports every few seconds: one silent this long is gone
# Connections from one address still short of their first message. A hypervisor runs one agent;
# many hypervisors behind one NAT address enroll or reconnect a few at a time.
MAX_UNAUTHENTICATED_PER_CLIENT = 32
RECV_BYTES = 65536
LINGER_SECONDS = 1.0  # after an error: how long we read (and drop) what the agent still sends
LINGER_BYTES = 1 << 20
# Refusals of connections are logged this many per window; the rest are counted in one line.
REFUSAL_LOG_BURST, REFUSAL_LOG_WINDOW = 20, 10.0


class QuietLog:
    """Warnings about refused connections, at most `burst` lines per `window` seconds: a flood of
    bad connections must not become a flood of log lines. The rest are counted and summed up in
    one line when the next window starts."""

    def __init__(
        self, log: logging.Logger, burst: int = REFUSAL_LOG_BURST, window: float = REFUSAL_LOG_WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.log, self.burst, self.window, self.clock = log, burst, window, clock
        self._window_start = clock()
        self._logged = 0
        self.suppressed = 0

    def warning(self, message: str, *args) -> None:
        now = self.clock()
        if now - self._window_start >= self.window:
            if self.suppressed:
                elapsed = now - self._window_start
                self.log.warning("%d more agent connections refused in %.0f s (not logged one by one)", self.suppressed, elapsed)
            self._window_start, self._logged, self.suppressed = now, 0, 0
        if self._logged < self.burst:
            self._logged += 1
            self.log.warning(message, *args)
        else:
            self.suppressed += 1


class ClientSlots:
    """Connections that have not yet shown who they are (no first message yet): at most `per_client`
    from one address and `total` in all, so that no client and no crowd can hold every descriptor of
    the process (the REST and OpenFlow listeners, and the state database, need some too)."""

    def __init__(self, per_client: int = MAX_UNAUTHENTICATED_PER_CLIENT, total: int = 1024) -> None:
        self.per_client, self.total = per_client, total
        self.open: dict[str, int] = {}
        self.held = 0

    def take(self, client: str) -> str | None:
        """Take a slot for a new connection from `client`; if none is left, why not."""
        if self.held >= self.total:
            return f"{self.total} connections are waiting for a first message"
        count = self.open.get(client, 0)
        if count >= self.per_client:
            return f"{self.per_client} connections from this address are waiting for a first message"
        self.open[client] = count + 1
        self.held += 1
        return None

    def release(self, client: str) -> None:
        count = self.open.get(client, 0)
        if count == 0:
            return
        self.held -= 1
        if count == 1:
            del self.open[client]
        else:
            self.open[client] = count - 1


def unauthenticated_budget(nofile: int) -> int:
    """How many not yet authenticated connections the listener may hold with `nofile` descriptors:
    a quarter of them, so that the rest of the process always has room."""
    if nofile <= 0 or nofile == resource.RLIM_INFINITY:
        nofile = 65536
    return max(16, nofile // 4)


class AgentConnection:
    """One agent's connection. `hypervisor` is set once its hello is accepted."""

    def __init__(
        self, manager: AgentManager, sock: socket.socket, address: str, context: ssl.SSLContext,
        quiet: QuietLog | None = None, on_first_message: Callable[[], None] = lambda: None,
    ) -> None:  # fmt: skip
        self.manager, self.address, self.context = manager, address, context
        self.tls: socket.socket = sock  # the TLS socket, once the handshake is done
        self.quiet = quiet or QuietLog(LOG)
        self.on_first_message = on_first_message
        self.hypervisor: str | None = None
        self.greeted = False  # a hello was accepted on this connection
        self._closed = False
        self._send_lock = hub.BoundedSemaphore(1)

    def send(self, message: dict) -> None:
        if self._closed:
            return
        frame = protocol.encode(message)
        try:
            with self._send_lock:
                self.tls.sendall(frame)
        except OSError as exc:
            LOG.warning("agent connection %s: send failed (%s); closing", self.address, exc.__class__.__name__)
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        _close_quietly(self.tls)

    def refuse(self, code: str, message: str) -> None:
        who = f"{self.address} ({self.hypervisor})" if self.hypervisor else self.address
        self.quiet.warning("agent connection %s refused: %s", who, message)
        self.manager.refused_connections += 1
        self.send({"type": "error", "code": code, "message": message})
        self._linger()
        self.close()

    def _linger(self) -> None:
        """Let the error reach the agent: closing with its unread frames in our buffer would reset the
        connection and could destroy the error before the agent reads it. So stop sending, and read
        (and drop) what it still sends, for a moment."""
        if self._closed:
            return
        try:
            self.tls.shutdown(socket.SHUT_WR)
            self.tls.settimeout(LINGER_SECONDS)
            drained, until = 0, time.monotonic() + LINGER_SECONDS
            while drained < LINGER_BYTES and time.monotonic() < until and (chunk := self.tls.recv(RECV_BYTES)):
                drained += len(chunk)
        except (OSError, ValueError):
            pass

    def serve(self) -> None:
        reader = protocol.FrameReader(accept=frozenset(protocol.AGENT_MESSAGES))
        try:
            opened = self._open(reader)
            if opened is None:
                return
            identity, messages = opened
            self.tls.settimeout(IDLE_TIMEOUT)
            while not self._closed:
                for message in messages:
                    if identity is None:
                        self._enroll(message)
                        return
                    self._dispatch(identity, message)
                    self.on_first_message()
                data = self.tls.recv(RECV_BYTES)
                if not data:
                    break
                messages = reader.feed(data)
        except protocol.ProtocolError as exc:
            self.refuse(exc.code, f"bad frame: {exc.message}")
        except AgentError as exc:
            self.refuse(exc.code, exc.message)
        except (OSError, ssl.SSLError) as exc:
            if not self._closed:
                LOG.info("agent connection %s closed: %s", self.address, exc.__class__.__name__)
        finally:
            self.manager.disconnected(self)
            self.close()

    def _open(self, reader: protocol.FrameReader):
        """Under one deadline: the TLS handshake, the client certificate, and the frames up to a first
        complete message. Returns (identity or None, messages), or None when the connection is gone.
        Nothing is decided or written here, so the deadline never cuts a decision in half."""
        deadline = hub.Timeout(FIRST_MESSAGE_DEADLINE)
        handshaken = False
        try:
            self.tls.settimeout(FIRST_MESSAGE_DEADLINE)
            try:
                self.tls = self.context.wrap_socket(self.tls, server_side=True, do_handshake_on_connect=False)
                self.tls.do_handshake()
            except (OSError, ssl.SSLError) as exc:
                self.quiet.warning("agent connection %s refused during the TLS handshake: %s", self.address, _reason(exc))
                self.manager.refused_connections += 1
                return None
            handshaken = True
            cert = self.tls.getpeercert(binary_form=True)
            identity = self.manager.authenticate(cert) if cert else None
            while True:
                data = self.tls.recv(RECV_BYTES)
                if not data:
                    return None
                messages = reader.feed(data)
                if messages:
                    return identity, messages
        except hub.Timeout as timeout:
            if timeout is not deadline:
                raise
            stage = "a first message" if handshaken else "the TLS handshake"
            self.quiet.warning("agent connection %s closed: no %s within %.0f s", self.address, stage, FIRST_MESSAGE_DEADLINE)
            self.manager.refused_connections += 1
            if handshaken:
                late = f"no complete first message within {FIRST_MESSAGE_DEADLINE:.0f} s of connecting"
                self.send({"type": "error", "code": "deadline", "message": late})
            return None
        finally:
            deadline.cancel()

    def _enroll(self, message: dict) -> None:
        """A connection without a client certificate may send one message: enroll."""
        if message["type"] != "enroll":
            raise AgentError("certificate", f"{message['type']} needs a client certificate; only enroll may come without")
        certificate, ca = self.manager.enroll(message["token"], message["hypervisor"], message["csr"])
        self.send({"type": "enrolled", "certificate": certificate, "ca": ca})

    def _dispatch(self, identity, message: dict) -> None:
        kind = message["type"]
        if kind == "hello":
            # Once per connection: a second hello (say, a copy of the first) would re-register a session already registered.
            if self.greeted:
                raise AgentError("order", "hello was already accepted on this connection")
            self.manager.hello(self, identity, message)
            self.greeted = True
            return
        if not self.greeted:
            raise AgentError("order", f"{kind} before hello")
        if self.hypervisor is None:
            return  # a newer connection of the same agent took over; this one is being closed
        if kind == "report":
            self.manager.report(self.hypervisor, message)
        elif kind == "applied":
            self.manager.applied(self.hypervisor, message)
        elif kind == "identity":
            self.manager.new_identity(self.hypervisor, message)
        elif kind == "identity_switched":
            self.manager.identity_switched(self.hypervisor, message)
        else:
            raise AgentError("type", f"{kind} is not expected from an agent")


class AgentServer:
    """Listens for agents; each accepted socket gets its own green thread for the TLS handshake and the
    messages after it."""

    def __init__(self, manager: AgentManager, host: str, port: int) -> None:
        self.manager, self.host, self.port = manager, host, port
        cert_pem, key_pem = manager.ca.server_credentials(["goldilocks-controller", "localhost", "127.0.0.1"])
        self.context = ssl_server_context(cert_pem, key_pem, manager.ca.cert_pem, require_client_cert=False)
        self.listener: socket.socket | None = None
        self.slots = ClientSlots(total=unauthenticated_budget(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
        self.quiet = QuietLog(LOG)

    def start(self) -> AgentServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.listener = hub.listen((self.host, self.port), family=family, backlog=128)
        self.port = self.listener.getsockname()[1]
        hub.spawn(listeners.accept_forever, self.listener.accept, self._spawn, "agent listener", hub.sleep)
        LOG.info("agent listener on %s:%d (TLS 1.3, CA %s)", self.host, self.port, self.manager.ca.fingerprint)
        return self

    def _spawn(self, sock: socket.socket, address) -> None:
        client = address[0] if isinstance(address, tuple) else str(address)
        full = self.slots.take(client)
        if full is not None:
            self.manager.refused_connections += 1
            self.quiet.warning("agent connection from %s refused at once: %s", client, full)
            _close_quietly(sock)
            return
        hub.spawn(self._serve, sock, address, client)

    def _serve(self, sock: socket.socket, address, client: str) -> None:
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.slots.release(client)

        try:
            AgentConnection(self.manager, sock, where, self.context, self.quiet, on_first_message=release).serve()
        finally:
            release()


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "reason", None) or exc.__class__.__name__)


def _close_quietly(sock: socket.socket) -> None:
    try:
        sock.close()
    except OSError:
        pass
