"""The hypervisor agent against a fake controller over real TLS 1.3: enrollment, hello, configs turned into
WireGuard peers and tunnel ports, repairs, identity rotation, outages and bad frames, and logs without secrets.

WireGuard and the tunnel ports are fakes holding the data plane in memory (a "dead" wireguard-go loses
its peers, as the real one does), so every test runs in well under a second."""

from __future__ import annotations

import logging
import os
import queue
import socket
import ssl
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import main as cli
from agent.channel import Channel
from agent.desired import ConfigError, parse_config
from agent.main import dialer, parse_controller, underlay_interface
from agent.netns import DataplaneError
from agent.ovsdb import OvsdbError, bridge_interfaces, read_interfaces
from agent.runner import Agent, AgentSettings, Backoff, Enrollment, Underlay
from agent.state import AgentState, PendingRotation, StateError
from agent.tunnel_ports import TunnelPortSpec
from agent.wireguard import PeerSpec, PeerState, psk_digest
from crypto import ca, protocol, wgkeys
from crypto.keystore import MasterKey

HYPERVISOR = "hv1"
ADDRESS = "10.99.0.1/24"
TOKEN = "TOKEN-f00dfeed-0123456789"
PSK2, PSK3 = b"PSK-FOR-HV2-RECOGNISABLE-0123456", b"PSK-FOR-HV3-RECOGNISABLE-0123456"
assert len(PSK2) == len(PSK3) == 32
KEY2 = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
KEY3 = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))


def peer(name: str, public_key: str, psk: bytes, number: int) -> dict:
    return {
        "peer": name, "public_key": public_key, "psk": psk, "endpoint": f"192.0.2.{number}:51820",
        "tunnel_ip": f"10.99.0.{number}", "vni": 10 + number, "port": f"glvx{number}",
    }  # fmt: skip


PEERS = [peer("hv2", KEY2, PSK2, 2), peer("hv3", KEY3, PSK3, 3)]
VM_PORT = {"name": "vnet0", "external_ids": {"vm-id": "web1", "attached-mac": "02:00:00:00:00:0a"}}
WAIT = 3.0  # seconds any single expectation may take


def wait_for(condition: Callable[[], object], timeout: float = WAIT, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


# -- the data plane, faked ------------------------------------------------------------------------
class FakeWireGuard:
    """wireguard-go in memory: `die()` loses the process and every peer with it, as the real one does."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.up = False
        self.private_key: bytes | None = None
        self.address: str | None = None
        self.held: dict[str, PeerSpec] = {}
        self.changes: list[str] = []  # every change made to it, in order

    def running(self) -> bool:
        return self.up

    def ensure_up(self, private_key: bytes, address: str) -> bool:
        with self.lock:
            started = not self.up
            if started:
                self.held = {}
                self.changes.append("start")
            self.up, self.private_key, self.address = True, private_key, address
            return started

    def peers(self) -> dict[str, PeerState]:
        with self.lock:
            if not self.up:
                raise DataplaneError("glwg0: not running")
            return {
                key: PeerState(key, psk_digest(spec.psk), spec.endpoint, (spec.allowed_ip,), 1700000000.0, 1000, 2000)
                for key, spec in self.held.items()
            }

    def apply_peers(self, desired: dict[str, PeerSpec]) -> list[str]:
        with self.lock:
            if not self.up:
                raise DataplaneError("glwg0: not running")
            changes = []
            for key in sorted(set(self.held) - set(desired)):
                del self.held[key]
                changes.append(f"remove peer {key[:8]}")
            for key, spec in sorted(desired.items()):
                if self.held.get(key) != spec:
                    changes.append(f"{'update' if key in self.held else 'add'} peer {key[:8]}")
                    self.held[key] = spec
            self.changes += changes
            return changes

    def set_private_key(self, private_key: bytes) -> None:
        with self.lock:
            if not self.up:
                raise DataplaneError("glwg0: not running")
            self.private_key = private_key
            self.changes.append("set private key")

    def kick(self, tunnel_ips: list[str]) -> None:
        with self.lock:
            self.changes.append(f"kick {','.join(tunnel_ips)}")

    def stop(self) -> None:
        with self.lock:
            self.up, self.held = False, {}
            self.changes.append("stop")

    def die(self) -> None:
        with self.lock:
            self.up, self.held = False, {}


class FakeTunnelPorts:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.held: dict[str, TunnelPortSpec] = {}
        self.changes: list[str] = []

    def actual(self) -> dict[str, TunnelPortSpec]:
        with self.lock:
            return dict(self.held)

    def apply(self, desired: dict[str, TunnelPortSpec]) -> list[str]:
        with self.lock:
            changes = []
            for name in sorted(set(self.held) - set(desired)):
                del self.held[name]
                changes.append(f"remove tunnel port {name}")
            for name, spec in sorted(desired.items()):
                if self.held.get(name) != spec:
                    changes.append(f"{'replace' if name in self.held else 'add'} tunnel port {name}")
                    self.held[name] = spec
            self.changes += changes
            return changes

    def remove_all(self) -> None:
        with self.lock:
            self.held = {}
            self.changes.append("remove all")

    def port_stats(self) -> dict[str, dict]:
        with self.lock:
            return {name: {"tx_dropped": 1, "tx_errors": 2, "tx_packets": 30, "rx_packets": 40} for name in self.held}


# -- the controller, faked over real TLS -----------------------------------------------------------
class Pki:
    """A controller CA, its server certificate for 127.0.0.1, and a second CA the agent does not know."""

    def __init__(self, directory: Path) -> None:
        self.ca = ca.CertificateAuthority.load_or_create(directory / "ca", MasterKey(os.urandom(32)))
        self.other_ca = ca.CertificateAuthority.load_or_create(directory / "other", MasterKey(os.urandom(32)))
        self.server_cert, self.server_key = self.ca.server_credentials(["127.0.0.1"])

    def enroll(self, state: AgentState, hypervisor: str = HYPERVISOR) -> None:
        key_pem, csr_pem = ca.make_key_and_csr(hypervisor)
        cert_pem, _ = self.ca.sign_csr(csr_pem, hypervisor)
        state.save_enrollment(key_pem, cert_pem, self.ca.cert_pem)


class ControllerConnection:
    """One accepted agent connection: what the agent sent (parsed and raw), and ways to answer."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self.sock = sock
        self.reader = protocol.FrameReader(frozenset(protocol.AGENT_MESSAGES))
        self.raw = bytearray()
        self.pending: deque[dict] = deque()
        self.seen: list[dict] = []
        self.eof = False

    @property
    def client_cn(self) -> str | None:
        cert = self.sock.getpeercert()
        if not cert:
            return None
        return dict(item for rdn in cert["subject"] for item in rdn)["commonName"]

    def _fill(self, timeout: float) -> None:
        try:
            self.sock.settimeout(max(timeout, 0.001))
            data = self.sock.recv(65536)
        except TimeoutError:
            return
        except OSError:
            data = b""
        if not data:
            self.eof = True
            return
        self.raw += data
        self.pending.extend(self.reader.feed(data))

    def expect(self, kind: str, timeout: float = WAIT) -> dict:
        """The next message of type `kind`, skipping (and keeping in `seen`) any others before it."""
        deadline = time.monotonic() + timeout
        while True:
            while self.pending:
                message = self.pending.popleft()
                self.seen.append(message)
                if message["type"] == kind:
                    return message
            if self.eof:
                raise AssertionError(f"connection closed before {kind}; seen {[m['type'] for m in self.seen]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {kind} within {timeout} s; seen {[m['type'] for m in self.seen]}")
            self._fill(deadline - time.monotonic())

    def expect_none(self, kind: str, within: float) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline and not self.eof:
            self._fill(deadline - time.monotonic())
        assert kind not in [m["type"] for m in [*self.seen, *self.pending]], f"unexpected {kind}"

    def expect_closed(self, timeout: float = WAIT) -> list[dict]:
        deadline = time.monotonic() + timeout
        while not self.eof:
            assert time.monotonic() < deadline, "the agent kept the connection open"
            self._fill(deadline - time.monotonic())
        return [*self.seen, *self.pending]

    def send(self, message: dict) -> None:
        self.sock.sendall(protocol.encode(message))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def welcome(self, address: str = ADDRESS, report_interval: float = 30.0) -> dict:
        hello = self.expect("hello")
        self.send({"type": "welcome", "index": 1, "address": address, "report_interval": report_interval})
        return hello

    def configure(self, seq: int, peers: list[dict] = PEERS) -> dict:
        self.send({"type": "config", "seq": seq, "peers": peers})
        applied = self.expect("applied")
        assert applied["seq"] == seq
        return applied

    def close(self) -> None:
        self.sock.close()


class FakeController:
    """A TLS 1.3 listener on 127.0.0.1 that hands each accepted connection to the test."""

    def __init__(self, pki: Pki, *, client_ca_pem: str | None = None, require_client_cert: bool = False) -> None:
        self.context = ca.ssl_server_context(
            pki.server_cert, pki.server_key, client_ca_pem or pki.ca.cert_pem, require_client_cert
        )
        self.connections: queue.Queue[ControllerConnection] = queue.Queue()
        self.port = 0
        self.accepted: list[ControllerConnection] = []
        self.listen()

    def listen(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.02)
        self.listening = True
        self.thread = threading.Thread(target=self._accept_loop, args=(self.listener,), daemon=True)
        self.thread.start()

    def _accept_loop(self, listener: socket.socket) -> None:
        while self.listening:
            try:
                sock, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            sock.settimeout(WAIT)
            try:
                tls = self.context.wrap_socket(sock, server_side=True)
            except (ssl.SSLError, OSError):
                sock.close()
                continue
            connection = ControllerConnection(tls)
            self.accepted.append(connection)
            self.connections.put(connection)

    def accept(self, timeout: float = WAIT) -> ControllerConnection:
        try:
            return self.connections.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the agent did not connect within {timeout} s") from None

    def stop_listening(self) -> None:
        self.listening = False
        self.thread.join()
        self.listener.close()

    def close(self) -> None:
        self.stop_listening()
        for connection in self.accepted:
            connection.close()


class RunningAgent:
    """An Agent running in a thread, with its fakes."""

    def __init__(self, agent: Agent, wireguard: FakeWireGuard, ports: FakeTunnelPorts, state: AgentState) -> None:
        self.agent, self.wireguard, self.ports, self.state = agent, wireguard, ports, state
        self.code: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.code = self.agent.run()

    def stop(self) -> int | None:
        self.agent.stop()
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the agent did not stop"
        return self.code


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def controller(pki):
    fake = FakeController(pki)
    yield fake
    fake.close()


@pytest.fixture
def start(tmp_path, pki):
    """start(controller, enrolled=True, enrollment=None) -> RunningAgent; stopped at the end of the test."""
    running: list[RunningAgent] = []

    def _start(controller: FakeController, *, enrolled: bool = True, enrollment: Enrollment | None = None) -> RunningAgent:
        state = AgentState(tmp_path / "state")
        if enrolled and not state.enrolled():
            pki.enroll(state)
        wireguard, ports = FakeWireGuard(), FakeTunnelPorts()
        agent = Agent(
            AgentSettings(HYPERVISOR, "br-hv1", Underlay("192.0.2.1", "02:00:00:00:01:01", "hv1-eth0"), 51820, "test"),
            state,
            wireguard,
            ports,
            lambda: [
                VM_PORT,
                *({"name": n, "external_ids": {"goldilocks-tunnel-peer": s.peer}} for n, s in ports.actual().items()),
            ],
            dialer("127.0.0.1", controller.port),
            enrollment=enrollment,
            reconcile_interval=0.02,
            answer_timeout=WAIT,
            backoff=Backoff(0.01, 0.05),
        )
        running.append(RunningAgent(agent, wireguard, ports, state))
        return running[-1]

    yield _start
    for agent in running:
        if agent.thread.is_alive():
            agent.stop()


def welcomed_and_configured(controller: FakeController, agent: RunningAgent) -> ControllerConnection:
    connection = controller.accept()
    connection.welcome()
    assert connection.configure(1)["ok"] is True
    return connection


# -- enrollment ------------------------------------------------------------------------------------
def test_enrollment_saves_the_certificate_and_the_next_connection_presents_it(controller, start, pki):
    agent = start(controller, enrolled=False, enrollment=Enrollment(TOKEN, pki.ca.cert_pem))
    first = controller.accept()
    enroll = first.expect("enroll")
    assert first.client_cn is None, "enrollment connections carry no client certificate"
    assert enroll["token"] == TOKEN and enroll["hypervisor"] == HYPERVISOR
    certificate, _ = pki.ca.sign_csr(enroll["csr"], HYPERVISOR)
    first.send({"type": "enrolled", "certificate": certificate, "ca": pki.ca.cert_pem})

    second = controller.accept()
    assert second.client_cn == HYPERVISOR
    second.expect("hello")
    state_dir = agent.state.path
    assert (state_dir / "tls.crt").read_text() == certificate
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    for key_file in ("tls.key", "wg.key"):
        assert stat.S_IMODE((state_dir / key_file).stat().st_mode) == 0o600


def test_a_refused_token_ends_the_agent_with_exit_1_and_no_certificate(controller, start, pki, caplog):
    agent = start(controller, enrolled=False, enrollment=Enrollment(TOKEN, pki.ca.cert_pem))
    connection = controller.accept()
    connection.expect("enroll")
    connection.send({"type": "error", "code": "token", "message": "token already used"})
    agent.thread.join(WAIT)
    assert agent.code == 1
    assert not agent.state.enrolled()
    assert "token already used" in caplog.text and TOKEN not in caplog.text


def test_an_unenrolled_agent_retries_enrollment_while_the_controller_is_down(pki, start, controller):
    controller.stop_listening()
    agent = start(controller, enrolled=False, enrollment=Enrollment(TOKEN, pki.ca.cert_pem))
    time.sleep(0.1)  # a few refused connections
    controller.listen()
    connection = controller.accept()
    certificate, _ = pki.ca.sign_csr(connection.expect("enroll")["csr"], HYPERVISOR)
    connection.send({"type": "enrolled", "certificate": certificate, "ca": pki.ca.cert_pem})
    controller.accept().expect("hello")
    assert agent.thread.is_alive()


# -- hello and config ------------------------------------------------------------------------------
def test_hello_carries_the_public_key_and_never_the_private_key(controller, start):
    agent = start(controller)
    connection = controller.accept()
    hello = connection.expect("hello")
    private_key = wgkeys.decode((agent.state.path / "wg.key").read_text().strip())
    assert hello["wg_public_key"] == wgkeys.encode(wgkeys.public_key(private_key))
    assert hello["hypervisor"] == HYPERVISOR and hello["bridge"] == "br-hv1" and hello["listen_port"] == 51820
    assert hello["underlay"] == {"ip": "192.0.2.1", "mac": "02:00:00:00:01:01", "port": "hv1-eth0"}
    connection.send({"type": "welcome", "index": 1, "address": ADDRESS, "report_interval": 30.0})
    connection.expect("report")
    assert private_key not in connection.raw and wgkeys.encode(private_key).encode() not in connection.raw


def test_a_config_becomes_wireguard_peers_and_tunnel_ports_and_is_answered_applied(controller, start):
    agent = start(controller)
    connection = controller.accept()
    connection.welcome()
    first_report = connection.expect("report")
    assert first_report["tunnels"] == [] and first_report["interfaces"] == [VM_PORT]
    assert connection.configure(1) == {"v": 1, "type": "applied", "seq": 1, "ok": True}

    wireguard, ports = agent.wireguard, agent.ports
    assert wireguard.address == ADDRESS and wireguard.private_key == agent.agent._private_key
    assert wireguard.held == {
        KEY2: PeerSpec(KEY2, PSK2, "192.0.2.2:51820", "10.99.0.2/32"),
        KEY3: PeerSpec(KEY3, PSK3, "192.0.2.3:51820", "10.99.0.3/32"),
    }
    assert ports.held == {
        "glvx2": TunnelPortSpec("glvx2", 12, "10.99.0.1", "10.99.0.2", "hv2"),
        "glvx3": TunnelPortSpec("glvx3", 13, "10.99.0.1", "10.99.0.3", "hv3"),
    }
    report = connection.expect("report")  # at once: the tunnels changed
    assert report["wg_running"] is True
    assert report["tunnels"][0] == {
        "peer": "hv2", "port": "glvx2", "configured": True, "latest_handshake": 1700000000.0,
        "rx_bytes": 1000, "tx_bytes": 2000, "drops": 3,
    }  # fmt: skip
    assert {row["name"] for row in report["interfaces"]} == {"vnet0", "glvx2", "glvx3"}


def test_a_second_identical_config_changes_nothing(controller, start):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    before = (list(agent.wireguard.changes), list(agent.ports.changes))
    assert connection.configure(2)["ok"] is True
    time.sleep(0.05)  # a few reconciles
    assert (agent.wireguard.changes, agent.ports.changes) == before


def test_a_smaller_config_removes_the_peer_and_port_left_out(controller, start):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    assert connection.configure(2, PEERS[:1])["ok"] is True
    assert set(agent.wireguard.held) == {KEY2} and set(agent.ports.held) == {"glvx2"}


def test_a_config_that_cannot_hold_is_refused_and_the_last_one_stays(controller, start):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    clash = [PEERS[0], {**PEERS[1], "vni": PEERS[0]["vni"]}]
    applied = connection.configure(2, clash)
    assert applied["ok"] is False and "vni 12" in applied["error"]
    assert set(agent.ports.held) == {"glvx2", "glvx3"}


def test_a_data_plane_failure_is_answered_not_ok_without_secrets(controller, start):
    agent = start(controller)
    connection = controller.accept()
    connection.welcome()
    agent.ports.apply = lambda desired: (_ for _ in ()).throw(DataplaneError("glvx2: create VXLAN device failed: busy"))
    applied = connection.configure(1)
    assert applied == {"v": 1, "type": "applied", "seq": 1, "ok": False, "error": "glvx2: create VXLAN device failed: busy"}


# -- reconcile -------------------------------------------------------------------------------------
def test_a_dead_wireguard_is_repaired_and_reported_at_once(controller, start):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    connection.expect("report")
    agent.wireguard.die()
    wait_for(lambda: agent.wireguard.up and len(agent.wireguard.held) == 2, what="WireGuard repaired")
    report = connection.expect("report", timeout=1.0)  # report_interval is 30 s: this one is the repair's
    assert report["wg_running"] is True
    assert agent.wireguard.held[KEY2] == PeerSpec(KEY2, PSK2, "192.0.2.2:51820", "10.99.0.2/32")
    # The new wireguard-go starts the handshakes itself: its peers' sessions died with the old one.
    wait_for(lambda: agent.wireguard.changes[-1].startswith("kick "), what="a handshake kicked after the restart")


def test_a_lost_tunnel_port_is_put_back(controller, start):
    agent = start(controller)
    welcomed_and_configured(controller, agent)
    with agent.ports.lock:
        del agent.ports.held["glvx3"]
    wait_for(lambda: "glvx3" in agent.ports.actual(), what="tunnel port repaired")


# -- identity rotation -----------------------------------------------------------------------------
def test_identity_rotation_makes_a_key_then_switches_to_it(controller, start):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    state_dir = agent.state.path
    old_key = (state_dir / "wg.key").read_text()

    connection.send({"type": "rotate_identity", "rotation": "r1"})
    identity = connection.expect("identity")
    new_private = wgkeys.decode((state_dir / "wg.next.key").read_text().strip())
    assert identity == {"v": 1, "type": "identity", "rotation": "r1", "public_key": wgkeys.encode(wgkeys.public_key(new_private))}
    assert stat.S_IMODE((state_dir / "wg.next.key").stat().st_mode) == 0o600
    assert (state_dir / "wg.key").read_text() == old_key, "not in use before switch_identity"
    assert agent.wireguard.private_key != new_private

    connection.send({"type": "switch_identity", "rotation": "r2-unknown"})
    connection.send({"type": "switch_identity", "rotation": "r1"})
    switched = connection.expect("identity_switched")
    assert switched["rotation"] == "r1"
    assert [m for m in connection.seen if m["type"] == "identity_switched"] == [switched], "the unknown rotation is ignored"
    assert agent.wireguard.private_key == new_private
    # It starts the handshakes itself: the peers' own attempts, made before it switched, failed.
    wait_for(lambda: agent.wireguard.changes[-1].startswith("kick "), what="a handshake kicked after the switch")
    assert agent.wireguard.changes[-2:][0] == "set private key"
    assert wgkeys.decode((state_dir / "wg.key").read_text().strip()) == new_private
    assert not (state_dir / "wg.next.key").exists()

    connection.close()  # the next hello introduces the new key
    assert controller.accept().expect("hello")["wg_public_key"] == identity["public_key"]


# -- outages and bad frames ------------------------------------------------------------------------
def test_a_controller_outage_keeps_the_data_plane_and_the_agent_reconnects(controller, start):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    held = (dict(agent.wireguard.held), dict(agent.ports.held))
    controller.stop_listening()
    connection.close()
    time.sleep(0.1)  # refused reconnects meanwhile
    agent.wireguard.die()  # and still repaired from the last config, with no controller
    wait_for(lambda: len(agent.wireguard.held) == 2, what="repair during the outage")
    assert (agent.wireguard.held, agent.ports.held) == held
    assert not [c for c in agent.wireguard.changes + agent.ports.changes if c.startswith("remove")]

    controller.listen()
    again = controller.accept()
    again.welcome()
    again.expect("report")
    assert again.configure(2)["ok"] is True
    assert (agent.wireguard.held, agent.ports.held) == held


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (b"\x00\x00\x00\x01\xc1", "decode"),
        (b"\x7f\xff\xff\xff", "frame"),
        (protocol.HEADER.pack(4) + b"\x93\x01\x02\x03", "schema"),
    ],
)
def test_a_malformed_frame_closes_the_connection_and_the_agent_reconnects(controller, start, caplog, frame, code):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    connection.send_raw(frame)
    connection.expect_closed()
    controller.accept().expect("hello")
    assert agent.thread.is_alive() and len(agent.wireguard.held) == 2
    assert f"protocol error {code}" in caplog.text


def test_an_agent_message_type_from_the_controller_is_a_protocol_error(controller, start, caplog):
    agent = start(controller)
    connection = welcomed_and_configured(controller, agent)
    connection.send_raw(protocol.encode({"type": "identity_switched", "rotation": "r1"}))
    connection.expect_closed()
    assert "protocol error type" in caplog.text
    controller.accept().expect("hello")
    assert agent.thread.is_alive()


def test_a_refused_client_certificate_is_logged_clearly(pki, start, caplog):
    strict = FakeController(pki, client_ca_pem=pki.other_ca.cert_pem, require_client_cert=True)
    try:
        agent = start(strict)
        wait_for(lambda: "refused our certificate" in caplog.text, what="the refusal in the log")
        assert agent.thread.is_alive()
        refusals = [r for r in caplog.records if "refused our certificate" in r.getMessage()]
        assert refusals[0].levelno == logging.ERROR and "tls.crt" in refusals[0].getMessage()
        assert len(refusals) == 1, "the same refusal is logged once, not at every retry"
    finally:
        strict.close()


def test_a_controller_our_ca_did_not_sign_is_not_trusted(controller, start, pki, tmp_path, caplog):
    state = AgentState(tmp_path / "state")
    pki.enroll(state)
    (state.path / "ca.pem").write_text(pki.other_ca.cert_pem)
    agent = start(controller)
    wait_for(lambda: "does not verify against our CA" in caplog.text, what="the distrust in the log")
    assert controller.accepted == [] and agent.thread.is_alive()
    assert [r.levelno for r in caplog.records if "does not verify" in r.getMessage()] == [logging.ERROR]


def test_a_controller_refusing_hello_is_logged_once_at_error_while_the_agent_retries(controller, start, caplog):
    agent = start(controller)
    for _ in range(3):
        connection = controller.accept()
        connection.expect("hello")
        connection.send({"type": "error", "code": "revoked", "message": "certificate serial 42 is revoked"})
        connection.close()
    controller.accept().expect("hello")
    refusals = [r for r in caplog.records if "serial 42 is revoked" in r.getMessage()]
    assert [r.levelno for r in refusals] == [logging.ERROR]
    assert agent.thread.is_alive()


def test_stopping_leaves_the_data_plane_and_teardown_removes_it(controller, start):
    agent = start(controller)
    welcomed_and_configured(controller, agent)
    assert agent.stop() == 0
    assert agent.wireguard.up and len(agent.wireguard.held) == 2 and len(agent.ports.held) == 2
    agent.agent.teardown()
    assert not agent.wireguard.up and agent.ports.held == {}


# -- secrets ---------------------------------------------------------------------------------------
def test_logs_never_hold_the_token_a_psk_or_a_private_key(controller, start, pki, caplog):
    caplog.set_level(logging.DEBUG, logger="goldilocks.agent")
    agent = start(controller, enrolled=False, enrollment=Enrollment(TOKEN, pki.ca.cert_pem))
    first = controller.accept()
    certificate, _ = pki.ca.sign_csr(first.expect("enroll")["csr"], HYPERVISOR)
    first.send({"type": "enrolled", "certificate": certificate, "ca": pki.ca.cert_pem})
    connection = controller.accept()
    connection.welcome()
    first_key = (agent.state.path / "wg.key").read_text().strip()
    connection.configure(1)
    agent.wireguard.die()
    connection.expect("report")
    connection.send({"type": "rotate_identity", "rotation": "r1"})
    connection.expect("identity")
    next_key = (agent.state.path / "wg.next.key").read_text().strip()
    connection.send({"type": "switch_identity", "rotation": "r1"})
    connection.expect("identity_switched")
    connection.send_raw(b"\x00\x00\x00\x01\xc1")
    controller.accept().expect("hello")
    agent.stop()

    secrets = [TOKEN, first_key, next_key, repr(PSK2), PSK2.decode(), PSK2.hex(), wgkeys.encode(PSK2), wgkeys.encode(PSK3)]
    tls_key = (agent.state.path / "tls.key").read_text().splitlines()[1]
    secrets += [tls_key]
    assert "rotation r1" in caplog.text and "welcomed" in caplog.text
    for secret in secrets:
        assert secret not in caplog.text


# -- the pure parts --------------------------------------------------------------------------------
def interface_table(*rows: tuple[str, dict]) -> str:
    import json

    data = [[name, ["map", sorted(ids.items())]] for name, ids in rows]
    return json.dumps({"headings": ["name", "external_ids"], "data": data})


def test_bridge_interfaces_keeps_only_the_bridge_ports_with_their_external_ids():
    text = interface_table(("vnet0", {"vm-id": "web1"}), ("other-br-port", {}), ("glvx2", {"goldilocks-tunnel-peer": "hv2"}))
    assert bridge_interfaces(text, ["glvx2", "vnet0", "br-hv1"]) == [
        {"name": "glvx2", "external_ids": {"goldilocks-tunnel-peer": "hv2"}},
        {"name": "vnet0", "external_ids": {"vm-id": "web1"}},
    ]
    with pytest.raises(OvsdbError):
        bridge_interfaces("ovs-vsctl: database connection failed", ["vnet0"])


def test_read_interfaces_runs_list_ports_then_list_interface():
    import subprocess

    calls = []

    def run(command, **_):
        calls.append(command)
        out = "vnet0\n" if "list-ports" in command else interface_table(("vnet0", {"vm-id": "web1"}), ("x", {}))
        return subprocess.CompletedProcess(command, 0, out, "")

    assert read_interfaces("br-hv1", run=run) == [{"name": "vnet0", "external_ids": {"vm-id": "web1"}}]
    assert calls[0] == ["ovs-vsctl", "--timeout=2", "list-ports", "br-hv1"]
    assert calls[1][-2:] == ["list", "Interface"] and "--format=json" in calls[1]
    failing = lambda command, **_: subprocess.CompletedProcess(command, 1, "", "no bridge named br-x")  # noqa: E731
    with pytest.raises(OvsdbError, match="no bridge named br-x"):
        read_interfaces("br-x", run=failing)


def test_parse_config_refuses_clashes_naming_the_field_never_the_psk():
    with pytest.raises(ConfigError, match="port glvx2") as refused:
        parse_config({"seq": 1, "peers": [PEERS[0], {**PEERS[1], "port": "glvx2"}]}, ADDRESS)
    assert PSK2.decode() not in str(refused.value)
    with pytest.raises(ConfigError, match="endpoint"):
        parse_config({"seq": 1, "peers": [{**PEERS[0], "endpoint": "nowhere"}]}, ADDRESS)
    config = parse_config({"seq": 7, "peers": list(reversed(PEERS))}, ADDRESS)
    assert [p.peer for p in config.peers] == ["hv2", "hv3"] and PSK2.decode() not in repr(config)


def test_backoff_doubles_from_0_2_to_5_seconds_with_jitter():
    backoff = Backoff(jitter=lambda: 1.0)
    delays = [backoff.next() for _ in range(8)]
    assert delays == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0])
    backoff.reset()
    assert Backoff(jitter=lambda: 0.0).next() == pytest.approx(0.1) and backoff.next() == pytest.approx(0.2)


def test_state_refuses_a_key_file_others_can_read(tmp_path):
    state = AgentState(tmp_path / "state")
    state.wg_private_key(wgkeys.generate_private_key)
    os.chmod(tmp_path / "state" / "wg.key", 0o644)
    with pytest.raises(StateError, match="wg.key"):
        state.wg_private_key(wgkeys.generate_private_key)


def test_a_rotation_saved_before_a_restart_is_found_again(tmp_path):
    private_key = wgkeys.generate_private_key()
    AgentState(tmp_path / "state").save_rotation(PendingRotation("r7", private_key))
    again = AgentState(tmp_path / "state")
    assert again.pending_rotation() == PendingRotation("r7", private_key)
    again.promote_rotation()
    assert again.pending_rotation() is None and again.wg_private_key(wgkeys.generate_private_key) == private_key


def test_controller_flag_and_underlay_lookup():
    assert parse_controller("ctl.example") == ("ctl.example", 6654)
    assert parse_controller("10.0.0.1:7000") == ("10.0.0.1", 7000)
    assert parse_controller("[fd00::1]:7000") == ("fd00::1", 7000)
    ip_json = '[{"ifname": "lo", "address": "00:00:00:00:00:00", "addr_info": [{"local": "127.0.0.1"}]},' \
        '{"ifname": "hv1-eth0", "address": "02:00:00:00:01:01", "addr_info": [{"local": "192.0.2.1"}]}]'  # fmt: skip
    assert underlay_interface(ip_json, "192.0.2.1") == ("hv1-eth0", "02:00:00:00:01:01")
    with pytest.raises(cli.UsageError, match="--underlay-ip 192.0.2.9"):
        underlay_interface(ip_json, "192.0.2.9")


REQUIRED = ["--bridge", "br0", "--underlay-ip", "127.0.0.1", "--underlay-port", "p0", "--controller", "127.0.0.1:9"]


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        (["--token-file", "/nonexistent/token"], "--token-file /nonexistent/token"),
        ([], "--token-file and --ca-file"),
        (["--controller", "host:port"], "--controller host:port"),
        (["--listen-port", "0"], "--listen-port"),
    ],
)
def test_cli_exits_2_with_one_line_naming_the_flag(tmp_path, capsys, extra, named):
    assert cli.main([*REQUIRED, "--state-dir", str(tmp_path / "state"), *extra]) == 2
    err = capsys.readouterr().err
    assert named in err and err.count("\n") == 1


def test_cli_refuses_an_unknown_flag_in_one_line(capsys):
    assert cli.main([*REQUIRED, "--no-such-flag"]) == 2
    err = capsys.readouterr().err
    assert "--no-such-flag" in err and err.count("\n") == 1


def test_channel_reports_a_connection_refused_as_channel_error(pki):
    from agent.channel import ChannelError

    with socket.create_server(("127.0.0.1", 0)) as unused:
        port = unused.getsockname()[1]
    with pytest.raises(ChannelError, match="cannot connect"):
        Channel("127.0.0.1", port, ca.ssl_client_context(pki.ca.cert_pem), connect_timeout=1).connect()
