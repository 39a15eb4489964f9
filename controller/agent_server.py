"""The agents' TLS 1.3 listener (docs/agent-protocol.md): one green thread per connection, frames in
and out with crypto/protocol.py, every decision in controller/agents.py. A bad frame, a refused
certificate or a broken connection closes that connection and nothing else."""

from __future__ import annotations

import logging
import socket
import ssl

from ryu.lib import hub

from controller.agents import AgentError, AgentManager
from crypto import protocol
from crypto.ca import ssl_server_context

LOG = logging.getLogger("goldilocks.agent_server")

HANDSHAKE_TIMEOUT = 10.0
IDLE_TIMEOUT = 30.0  # an agent reports every few seconds: one silent this long is gone
RECV_BYTES = 65536
LINGER_SECONDS = 1.0  # after an error: how long we read (and drop) what the agent still sends
LINGER_BYTES = 1 << 20


class AgentConnection:
    """One agent's connection. `hypervisor` is set once its hello is accepted."""

    def __init__(self, manager: AgentManager, tls: ssl.SSLSocket, address: str) -> None:
        self.manager, self.tls, self.address = manager, tls, address
        self.hypervisor: str | None = None
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
        try:
            self.tls.close()
        except OSError:
            pass

    def refuse(self, code: str, message: str) -> None:
        who = f"{self.address} ({self.hypervisor})" if self.hypervisor else self.address
        LOG.warning("agent connection %s refused: %s", who, message)
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
            drained = 0
            while drained < LINGER_BYTES and (chunk := self.tls.recv(RECV_BYTES)):
                drained += len(chunk)
        except (OSError, ValueError):
            pass

    def serve(self) -> None:
        cert = self.tls.getpeercert(binary_form=True)
        reader = protocol.FrameReader(accept=frozenset(protocol.AGENT_MESSAGES))
        identity = None
        try:
            if cert:
                identity = self.manager.authenticate(cert)
            self.tls.settimeout(IDLE_TIMEOUT)
            while not self._closed:
                data = self.tls.recv(RECV_BYTES)
                if not data:
                    break
                for message in reader.feed(data):
                    if identity is None:
                        self._enroll(message)
                        return
                    self._dispatch(identity, message)
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

    def _enroll(self, message: dict) -> None:
        """A connection without a client certificate may send one message: enroll."""
        if message["type"] != "enroll":
            raise AgentError("certificate", f"{message['type']} needs a client certificate; only enroll may come without")
        certificate, ca = self.manager.enroll(message["token"], message["hypervisor"], message["csr"])
        self.send({"type": "enrolled", "certificate": certificate, "ca": ca})

    def _dispatch(self, identity, message: dict) -> None:
        kind = message["type"]
        if kind == "hello":
            self.manager.hello(self, identity, message)
            return
        if self.hypervisor is None:
            raise AgentError("order", f"{kind} before hello")
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
    """Listens for agents; each accepted socket gets the TLS handshake and a green thread."""

    def __init__(self, manager: AgentManager, host: str, port: int) -> None:
        self.manager, self.host, self.port = manager, host, port
        cert_pem, key_pem = manager.ca.server_credentials(["goldilocks-controller", "localhost", "127.0.0.1"])
        self.context = ssl_server_context(cert_pem, key_pem, manager.ca.cert_pem, require_client_cert=False)
        self.server = None

    def start(self) -> AgentServer:
        self.server = hub.StreamServer((self.host, self.port), self._accept)
        self.port = self.server.server.getsockname()[1]
        hub.spawn(self.server.serve_forever)
        LOG.info("agent listener on %s:%d (TLS 1.3, CA %s)", self.host, self.port, self.manager.ca.fingerprint)
        return self

    def _accept(self, sock: socket.socket, address) -> None:
        where = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
        try:
            sock.settimeout(HANDSHAKE_TIMEOUT)
            tls = self.context.wrap_socket(sock, server_side=True)
        except (OSError, ssl.SSLError) as exc:
            self.manager.refused_connections += 1
            LOG.warning("agent connection %s refused during the TLS handshake: %s", where, getattr(exc, "reason", None) or exc)
            try:
                sock.close()
            except OSError:
                pass
            return
        AgentConnection(self.manager, tls, where).serve()
