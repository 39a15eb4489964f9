"""The agent's core: enroll once, then keep the data plane as the controller's last `config` says, through outages.

One thread and one loop with timeouts. Between messages from the controller it reconciles every
second (the desired state of the last config against what WireGuard and the bridge hold; the same
code path for a new config, a repair after wireguard-go died, and a restart) and reports every
`report_interval` seconds. When the controller is unreachable the loop keeps reconciling against the
last config and reconnects with backoff: an outage never removes a peer or a port, and neither
does stopping the agent. Everything the loop touches is injected (WireGuard, TunnelPorts, the OVSDB
reader, the dialer), so tests drive it with fakes.
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Protocol

from agent.channel import CertificateRefused, ChannelError, ControllerUntrusted
from agent.desired import Config, ConfigError, desired_peers, desired_ports, parse_config
from agent.netns import DataplaneError
from agent.ovsdb import OvsdbError
from agent.state import AgentState, PendingRotation, StateError
from crypto import ca, protocol, wgkeys

LOG = logging.getLogger("goldilocks.agent")

RECONCILE_INTERVAL = 1.0  # seconds between comparisons of the data plane with the last config
ANSWER_TIMEOUT = 10.0  # seconds to wait for `welcome` after `hello`, or `enrolled` after `enroll`
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 5.0  # reconnect delays, doubling from the first to the max
MIN_REPORT_INTERVAL = 0.05  # a controller asking for reports more often than this gets this
MIN_RECEIVE_TIMEOUT = 0.005  # even when reconciling is due, look at the socket
ERROR_TEXT_MAX = 500  # characters of a data plane error sent back in `applied`
TOKEN_REFUSED = "token"  # the `error` code for a bad or reused enrollment token


def _software() -> str:
    try:
        return f"goldilocks-agent {metadata.version('goldilocks')}"
    except metadata.PackageNotFoundError:
        return "goldilocks-agent"


SOFTWARE = _software()


class Channel(Protocol):
    """What the agent needs of a connection (agent.channel.Channel, or a test's fake)."""

    def send(self, message: dict) -> None: ...
    def receive(self, timeout: float) -> dict | None: ...
    def close(self) -> None: ...


# (ca_pem, cert_pem or None, key_pem or None) -> a connected Channel; raises ChannelError.
Dial = Callable[[str, str | None, str | None], Channel]


class AgentError(Exception):
    """The agent cannot start as configured (for instance: not enrolled and no token to enroll with)."""


class EnrollmentRefused(Exception):
    """The controller refused to enroll us in a way that retrying cannot fix (a bad or reused token)."""


@dataclass(frozen=True)
class Underlay:
    """The endpoint's underlay: its address, the MAC of the interface holding it, and its OVS port on the bridge."""

    ip: str
    mac: str
    port: str


@dataclass(frozen=True)
class AgentSettings:
    hypervisor: str
    bridge: str
    underlay: Underlay
    listen_port: int = 51820
    software: str = SOFTWARE


@dataclass(frozen=True)
class Enrollment:
    """What a first start needs: the one-time token and the controller's CA (PEM)."""

    token: str = field(repr=False)
    ca_pem: str


@dataclass(frozen=True)
class Welcome:
    index: int
    address: str  # our tunnel address, CIDR
    report_interval: float


class Backoff:
    """Reconnect delays: `first` doubling up to `maximum`, each scaled by a random factor in [0.5, 1)
    so that agents cut off together do not come back together."""

    def __init__(self, first: float = BACKOFF_FIRST, maximum: float = BACKOFF_MAX, jitter: Callable[[], float] = random.random):
        self.first, self.maximum = first, maximum
        self._jitter = jitter
        self._delay = first

    def next(self) -> float:
        delay, self._delay = self._delay, min(self._delay * 2, self.maximum)
        return delay * (0.5 + 0.5 * self._jitter())

    def reset(self) -> None:
        self._delay = self.first


class Agent:
    """One hypervisor's agent. `run()` blocks until `stop()`; it returns the process exit code."""

    def __init__(
        self,
        settings: AgentSettings,
        state: AgentState,
        wireguard: Any,
        tunnel_ports: Any,
        read_interfaces: Callable[[], list[dict]],
        dial: Dial,
        *,
        enrollment: Enrollment | None = None,
        reconcile_interval: float = RECONCILE_INTERVAL,
        answer_timeout: float = ANSWER_TIMEOUT,
        backoff: Backoff | None = None,
    ) -> None:
        self.settings = settings
        self.state = state
        self.wireguard = wireguard
        self.tunnel_ports = tunnel_ports
        self.read_interfaces = read_interfaces
        self.dial = dial
        self.enrollment = enrollment
        self.reconcile_interval = reconcile_interval
        self.answer_timeout = answer_timeout
        self.backoff = backoff or Backoff()
        self._stop = threading.Event()
        self._private_key: bytes | None = None
        self._rotation: PendingRotation | None = None  # made and saved, not switched to yet
        self._switched: str | None = None  # the last rotation switched, answered again if asked again
        self._welcome: Welcome | None = None
        self._config: Config | None = None  # the last config, in memory only: PSKs never reach the disk
        self._wireguard_for: tuple[str, bytes] | None = None  # (address, private key) WireGuard was brought up with
        self._next_reconcile = 0.0
        self._next_report: float | None = None  # None: no welcome on the current connection
        self._interfaces: list[dict] = []  # the last rows read: an OVSDB hiccup does not report "no ports"
        self._problems: dict[str, set[str]] = {}  # failures of each part since it last worked: each logged once

    # -- what tests and the CLI see ----------------------------------------------------------------
    @property
    def config(self) -> Config | None:
        return self._config

    @property
    def welcome(self) -> Welcome | None:
        return self._welcome

    @property
    def public_key(self) -> str:
        if self._private_key is None:
            raise AgentError("no WireGuard key loaded yet")
        return wgkeys.encode(wgkeys.public_key(self._private_key))

    def stop(self) -> None:
        """Ask `run` to return (within about a reconcile interval); the data plane is left as it is."""
        self._stop.set()

    def teardown(self) -> None:
        """Remove the tunnel ports and stop WireGuard. Never done on stop: a restart must not cut tunnels."""
        self.tunnel_ports.remove_all()
        self.wireguard.stop()
        self._wireguard_for = None

    # -- the loop ----------------------------------------------------------------------------------
    def run(self) -> int:
        """Enroll if needed, then serve the controller until stopped: 0 when stopped, 1 when enrollment
        was refused for good. Raises AgentError or StateError when the agent cannot start."""
        try:
            if not self.state.enrolled() and not self._enroll():
                return 0
        except EnrollmentRefused as exc:
            LOG.error("%s", exc)
            return 1
        self._private_key = self.state.wg_private_key(wgkeys.generate_private_key)
        self._rotation = self.state.pending_rotation()
        LOG.info("hypervisor %s: WireGuard public key %s", self.settings.hypervisor, self._fingerprint(self._private_key))
        while not self._stop.is_set():
            self._connection()
            if not self._stop.is_set():
                self._idle(self.backoff.next())
        LOG.info("stopping; the data plane stays as it is")
        return 0

    def _connection(self) -> None:
        """One authenticated connection, from dial to its end; never raises ChannelError."""
        identity = self.state.tls_identity()
        try:
            channel = self.dial(identity.ca_pem, identity.cert_pem, identity.key_pem)
        except (CertificateRefused, ControllerUntrusted) as exc:
            self._refused(exc)
            return
        except ChannelError as exc:
            self._problem("connect", f"cannot connect to the controller: {exc}; retrying")
            return
        LOG.debug("connected to the controller")
        try:
            self._serve(channel)
        except (CertificateRefused, ControllerUntrusted) as exc:
            self._refused(exc)
        except ChannelError as exc:
            self._problem("connect", f"connection to the controller lost: {exc}; the data plane stays as it is")
        finally:
            channel.close()
            self._next_report = None

    def _refused(self, exc: ChannelError) -> None:
        """A TLS refusal will not fix itself: say so, and what to do, at error level (once per reason)."""
        if isinstance(exc, CertificateRefused):
            advice = f"revoked? To enroll again, remove {self.state.path}/tls.crt and start with a new --token-file"
        else:
            advice = f"is {self.state.path}/ca.pem this controller's CA?"
        self._problem("connect", f"{exc} ({advice}); retrying, the data plane stays as it is", logging.ERROR)

    def _serve(self, channel: Channel) -> None:
        self._send(channel, self._hello())
        welcome_deadline = time.monotonic() + self.answer_timeout
        while not self._stop.is_set():
            now = time.monotonic()
            if self._next_report is None and now >= welcome_deadline:
                raise ChannelError(f"no welcome within {self.answer_timeout:g} s of hello")
            wake = min(self._next_reconcile, welcome_deadline if self._next_report is None else self._next_report)
            message = channel.receive(min(max(wake - now, MIN_RECEIVE_TIMEOUT), self.reconcile_interval))
            if message is not None:
                self._handle(channel, message)
            self._tick(channel)

    def _idle(self, seconds: float) -> None:
        """Wait `seconds` (or until stopped), reconciling on time meanwhile."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return
            self._stop.wait(max(min(deadline, self._next_reconcile) - now, 0))
            self._tick(None)

    def _tick(self, channel: Channel | None) -> None:
        """Reconcile and report when they are due; a repair makes the report due at once."""
        now = time.monotonic()
        if now >= self._next_reconcile:
            self._next_reconcile = now + self.reconcile_interval
            if self._reconcile() and self._next_report is not None:
                self._next_report = now
        if channel is not None and self._next_report is not None and time.monotonic() >= self._next_report:
            self._report(channel)

    # -- enrollment --------------------------------------------------------------------------------
    def _enroll(self) -> bool:
        """Enroll with the controller: True once the certificate is saved, False if stopped first."""
        if self.enrollment is None:
            raise AgentError(f"{self.state.path}: not enrolled yet; the first start needs --token-file and --ca-file")
        try:
            key_pem, csr_pem = ca.make_key_and_csr(self.settings.hypervisor)
        except ca.CAError as exc:
            raise AgentError(f"cannot make a certificate request: {exc}") from None
        LOG.info("enrolling hypervisor %s with the controller", self.settings.hypervisor)
        while not self._stop.is_set():
            try:
                channel = self.dial(self.enrollment.ca_pem, None, None)
            except ChannelError as exc:
                self._problem("enroll", f"cannot connect to the controller to enroll: {exc}; retrying")
            else:
                try:
                    if self._enroll_on(channel, key_pem, csr_pem):
                        return True
                except ChannelError as exc:
                    self._problem("enroll", f"enrollment interrupted: {exc}; retrying")
                finally:
                    channel.close()
            self._idle(self.backoff.next())
        return False

    def _enroll_on(self, channel: Channel, key_pem: str, csr_pem: str) -> bool:
        assert self.enrollment is not None
        request = {"type": "enroll", "token": self.enrollment.token, "hypervisor": self.settings.hypervisor, "csr": csr_pem}
        self._send(channel, request)
        deadline = time.monotonic() + self.answer_timeout
        while not self._stop.is_set() and time.monotonic() < deadline:
            message = channel.receive(min(deadline - time.monotonic(), self.reconcile_interval))
            if message is None:
                continue
            if message["type"] == "enrolled":
                self._save_enrollment(key_pem, message["certificate"], message["ca"])
                return True
            if message["type"] == "error":
                if message["code"] == TOKEN_REFUSED:
                    raise EnrollmentRefused(f"the controller refused the enrollment token: {message['message']}")
                self._problem("enroll", f"the controller refused the enrollment: {message['code']}: {message['message']}")
                return False
            LOG.warning("ignoring a %s message from the controller during enrollment", message["type"])
        if not self._stop.is_set():
            self._problem("enroll", f"no answer to enroll within {self.answer_timeout:g} s; retrying")
        return False

    def _save_enrollment(self, key_pem: str, cert_pem: str, ca_pem: str) -> None:
        try:  # the same check every later connection makes: the CA loads, the certificate fits our key
            ca.ssl_client_context(ca_pem, cert_pem, key_pem)
        except ca.CAError as exc:
            raise EnrollmentRefused(f"the controller's answer to enroll cannot be used: {exc}") from None
        self.state.save_enrollment(key_pem, cert_pem, ca_pem)
        self.backoff.reset()
        LOG.info(
            "enrolled as %s; certificate saved in %s (the token is no longer needed)", self.settings.hypervisor, self.state.path
        )

    # -- messages ----------------------------------------------------------------------------------
    def _hello(self) -> dict:
        underlay = self.settings.underlay
        return {
            "type": "hello",
            "hypervisor": self.settings.hypervisor,
            "software": self.settings.software,
            "wg_public_key": self.public_key,
            "listen_port": self.settings.listen_port,
            "bridge": self.settings.bridge,
            "underlay": {"ip": underlay.ip, "mac": underlay.mac, "port": underlay.port},
        }

    def _send(self, channel: Channel, message: dict) -> None:
        try:
            channel.send(message)
        except protocol.ProtocolError as exc:  # our message breaks the schema: a bug here, not a reason to hang up
            LOG.error("could not send %s: %s: %s", message["type"], exc.code, exc.message)
            return
        LOG.debug("sent %s", message["type"])

    def _handle(self, channel: Channel, message: dict) -> None:
        kind = message["type"]
        LOG.debug("received %s", kind)
        handlers = {
            "welcome": self._on_welcome,
            "config": self._on_config,
            "rotate_identity": self._on_rotate_identity,
            "switch_identity": self._on_switch_identity,
            "error": self._on_error,
        }
        handler = handlers.get(kind)
        if handler is None:
            LOG.warning("ignoring a %s message from the controller on an authenticated connection", kind)
            return
        handler(channel, message)

    def _on_welcome(self, channel: Channel, message: dict) -> None:
        try:
            ipaddress.ip_interface(message["address"])
        except ValueError:
            raise ChannelError("the controller's welcome gives an address that is not CIDR") from None
        welcome = Welcome(message["index"], message["address"], max(message["report_interval"], MIN_REPORT_INTERVAL))
        if self._welcome is not None and self._welcome.address != welcome.address:
            LOG.warning("the controller moved our tunnel address from %s to %s", self._welcome.address, welcome.address)
        self._welcome = welcome
        self.backoff.reset()
        self._problems.pop("connect", None)
        LOG.info(
            "welcomed by the controller: index %d, tunnel address %s, report every %g s",
            welcome.index,
            welcome.address,
            welcome.report_interval,
        )
        try:
            if self._ensure_wireguard():
                LOG.info("WireGuard started with tunnel address %s", welcome.address)
        except DataplaneError as exc:
            self._problem("reconcile", f"cannot bring WireGuard up: {exc}; trying again")
        self._next_report = time.monotonic()

    def _on_config(self, channel: Channel, message: dict) -> None:
        seq = message["seq"]
        try:
            if self._welcome is None:
                raise ConfigError("config before welcome: no tunnel address yet")
            config = parse_config(message, self._welcome.address)
        except ConfigError as exc:
            LOG.error("config %d refused: %s", seq, exc)
            self._send(channel, {"type": "applied", "seq": seq, "ok": False, "error": str(exc)})
            return
        self._config = config
        try:
            changes = self._apply()
        except DataplaneError as exc:
            LOG.error("config %d with %d peers: applying failed: %s", seq, len(config.peers), exc)
            self._send(channel, {"type": "applied", "seq": seq, "ok": False, "error": str(exc)[:ERROR_TEXT_MAX]})
            self._next_report = time.monotonic()
            return
        LOG.info("config %d with %d peers applied: %d changes", seq, len(config.peers), len(changes))
        self._send(channel, {"type": "applied", "seq": seq, "ok": True})
        if changes:
            self._next_report = time.monotonic()

    def _on_rotate_identity(self, channel: Channel, message: dict) -> None:
        rotation = message["rotation"]
        pending = self._rotation
        if pending is None or pending.rotation != rotation:
            pending = PendingRotation(rotation, wgkeys.generate_private_key())
            try:
                self.state.save_rotation(pending)
            except StateError as exc:
                LOG.error("rotation %s: cannot save the new WireGuard key: %s", rotation, exc)
                return
            self._rotation = pending
            LOG.info("rotation %s: new WireGuard key %s made, not in use yet", rotation, self._fingerprint(pending.private_key))
        else:
            LOG.info("rotation %s asked for again: answering with the same new key", rotation)
        public = wgkeys.encode(wgkeys.public_key(pending.private_key))
        self._send(channel, {"type": "identity", "rotation": rotation, "public_key": public})

    def _on_switch_identity(self, channel: Channel, message: dict) -> None:
        rotation = message["rotation"]
        pending = self._rotation
        if pending is None or pending.rotation != rotation:
            if rotation == self._switched:  # our answer was lost: the key is in use already
                self._send(channel, {"type": "identity_switched", "rotation": rotation})
            else:
                LOG.warning("ignoring switch_identity for rotation %s, which this agent did not start", rotation)
            return
        try:
            if self.wireguard.running():  # if not, the next reconcile brings it up with the new key
                self.wireguard.set_private_key(pending.private_key)
        except DataplaneError as exc:
            LOG.error("rotation %s: WireGuard refused the new key: %s; still on the old one", rotation, exc)
            return
        self._private_key = pending.private_key
        if self._wireguard_for is not None:
            self._wireguard_for = (self._wireguard_for[0], pending.private_key)
        try:
            self.state.promote_rotation()
        except StateError as exc:
            LOG.error("rotation %s: the new key is in use but could not be saved: %s", rotation, exc)
        self._rotation, self._switched = None, rotation
        LOG.info("rotation %s: now using WireGuard key %s", rotation, self._fingerprint(pending.private_key))
        self._send(channel, {"type": "identity_switched", "rotation": rotation})
        self._kick_peers()

    def _kick_peers(self) -> None:
        """Handshake with every peer now, rather than when traffic next needs it (see WireGuard.kick)."""
        if self._config is None or not self._config.peers:
            return
        try:
            self.wireguard.kick([peer.tunnel_ip for peer in self._config.peers])
        except DataplaneError as exc:
            LOG.warning("could not start handshakes with the peers: %s", exc)

    def _on_error(self, channel: Channel, message: dict) -> None:
        """The controller refuses us (it closes next): a revoked certificate ends up here, so say it loudly."""
        self._problem("connect", f"the controller refused us: {message['code']}: {message['message']}", logging.ERROR)

    # -- the data plane ----------------------------------------------------------------------------
    def _ensure_wireguard(self) -> bool:
        """Bring WireGuard up with our key and address unless it already runs with them; True if it changed."""
        assert self._welcome is not None and self._private_key is not None
        wanted = (self._welcome.address, self._private_key)
        if self._wireguard_for == wanted and self.wireguard.running():
            return False
        changed = bool(self.wireguard.ensure_up(self._private_key, self._welcome.address))
        self._wireguard_for = wanted
        return changed

    def _apply(self) -> list[str]:
        """Make the data plane what the last welcome and config ask for; the changes made. Raises DataplaneError."""
        changes = ["WireGuard brought up"] if self._ensure_wireguard() else []
        if self._config is not None:  # before the first config nothing is known: leave peers and ports alone
            assert self._welcome is not None
            changes += self.wireguard.apply_peers(desired_peers(self._config))
            changes += self.tunnel_ports.apply(desired_ports(self._config, self._welcome.address))
        return changes

    def _reconcile(self) -> bool:
        """Repair whatever drifted from the last config (a dead wireguard-go, a lost peer or port); True if repaired."""
        if self._welcome is None:  # no address yet: nothing can be desired
            return False
        try:
            changes = self._apply()
        except DataplaneError as exc:
            self._problem("reconcile", f"cannot repair the data plane: {exc}; trying again")
            return False
        self._problems.pop("reconcile", None)
        if changes and changes[0] == "WireGuard brought up":
            # A new wireguard-go has no session: the peers would keep sending on the old one, which
            # it cannot decrypt, until their own rekey timers fire (15 s, measured by the chaos test).
            self._kick_peers()
        if changes:
            LOG.warning("repaired the data plane: %s", "; ".join(changes))
        return bool(changes)

    def _report(self, channel: Channel) -> None:
        assert self._welcome is not None
        self._next_report = time.monotonic() + self._welcome.report_interval
        try:
            self._interfaces = self.read_interfaces()
            self._problems.pop("ovsdb", None)
        except OvsdbError as exc:
            self._problem("ovsdb", f"cannot read the bridge's interfaces: {exc}; reporting the last ones read")
        running = bool(self.wireguard.running())
        try:
            peers = self.wireguard.peers() if running else {}
        except DataplaneError as exc:
            LOG.debug("cannot read WireGuard peers for the report: %s", exc)
            peers = {}
        try:
            stats = self.tunnel_ports.port_stats()
        except DataplaneError as exc:
            LOG.debug("cannot read tunnel port statistics for the report: %s", exc)
            stats = {}
        tunnels = []
        for peer in self._config.peers if self._config else ():
            wg, port = peers.get(peer.public_key), stats.get(peer.port)
            tunnels.append(
                {
                    "peer": peer.peer,
                    "port": peer.port,
                    "configured": wg is not None and port is not None,
                    "latest_handshake": float(wg.latest_handshake) if wg else 0.0,
                    "rx_bytes": int(wg.rx_bytes) if wg else 0,
                    "tx_bytes": int(wg.tx_bytes) if wg else 0,
                    "drops": int(port.get("tx_dropped", 0)) + int(port.get("tx_errors", 0)) if port else 0,
                }
            )
        self._send(channel, {"type": "report", "interfaces": self._interfaces, "tunnels": tunnels, "wg_running": running})

    # -- logging -----------------------------------------------------------------------------------
    def _problem(self, part: str, text: str, level: int = logging.WARNING) -> None:
        """Log a failure of `part` once until the part works again (then `_problems.pop(part)`), not at
        every retry: an outage or a refusal is a few lines in the log, however long it lasts."""
        seen = self._problems.setdefault(part, set())
        if text not in seen:
            seen.add(text)
            LOG.log(level, "%s", text)
        else:
            LOG.debug("%s", text)

    @staticmethod
    def _fingerprint(private_key: bytes) -> str:
        """The fingerprint of the public key: what logs show of a key pair."""
        return wgkeys.fingerprint(wgkeys.public_key(private_key))
