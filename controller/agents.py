"""The controller's side of the hypervisor agents: enrollment, hellos and reports, the tunnel pairs
and their pre-shared keys (generated here, sealed at rest, rotated), identity rotation and
revocation, and what every agent should be told. No sockets here: controller/agent_server.py
carries messages in and out; this decides.

Keys never leave this module except inside `config` messages to the two agents of a pair: views,
logs, audit entries and errors show fingerprints and ages."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import re
import secrets
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from crypto import wgkeys
from crypto.ca import CAError, CertificateAuthority, ClientIdentity
from crypto.keystore import MasterKey
from crypto.peers import AgentInfo, PairKey, PeerConfig, desired_configs, tunnel_interface_address
from topology.model import Endpoint

LOG = logging.getLogger("goldilocks.agents")

TOKEN_TTL = 3600.0  # seconds an enrollment token stays valid, unless the request says otherwise
MAX_TOKEN_TTL = 7 * 24 * 3600.0
IDLE_TEARDOWN = 300.0  # a pair no encrypt rule needs any more keeps its tunnel this long
HANDSHAKE_FRESH = 180.0  # WireGuard drops a session this long after its handshake (REJECT_AFTER_TIME)
REPORT_INTERVAL = 2.0  # seconds between an agent's reports
SWITCH_IDENTITY_MAX_WAIT = 2.0  # identity rotation: switch even if a peer has not confirmed by then
MAX_VNI = (1 << 24) - 1
ERROR_TEXT_MAX = 200  # characters of an agent's `applied` error that reach the log
STALE_REPORT = 3 * REPORT_INTERVAL  # an agent silent this long tells us nothing about its tunnels
# Names appear in URLs (/v1/agents/{hypervisor}) and in pair names ("a|b"): no '/', no '|'.
HYPERVISOR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# What a hello's bridge and port names may be: printable ASCII without space or '/', as an interface name.
OVS_NAME = re.compile(r"[\x21-\x2e\x30-\x7e]{1,64}")
MAC = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


class AgentError(Exception):
    """A refused agent request: `code` goes back to the agent in an `error` message."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class NoSuchAgent(KeyError):
    def __str__(self) -> str:
        return f"no enrolled agent for hypervisor {self.args[0]!r}"


class Session(Protocol):
    """One live agent connection (controller/agent_server.py)."""

    hypervisor: str | None

    def send(self, message: dict) -> None: ...

    def close(self) -> None: ...


@dataclass
class Agent:
    hypervisor: str
    index: int
    serial: int
    enrolled: float
    info: AgentInfo | None = None
    connected_since: float | None = None
    report: dict | None = None
    report_at: float | None = None
    handshakes: dict[str, tuple[float, float]] = field(default_factory=dict)  # peer -> (agent's time, when we saw it)
    interfaces: list[dict] | None = None  # the Interface rows of its bridge's ports, as last reported
    # When the controller first saw its current WireGuard public key (None: stored before this was kept).
    key_since: float | None = None


@dataclass
class Pair:
    a: str
    b: str
    vni: int
    psk: bytes = field(repr=False)
    psk_created: float

    @property
    def key(self) -> PairKey:
        return PairKey(self.a, self.b, self.vni, self.psk)


@dataclass
class IdentityRotation:
    rotation: str
    hypervisor: str
    started: float
    public_key: str | None = None  # the new key, once the agent has made it
    waiting_for: set[str] = field(default_factory=set)  # peers that must confirm they hold it
    config_seq: int = 0  # the config that carries the new key to them
    switch_by: float | None = None


def pair_of(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a < b else (b, a)


def token_digest(value: str) -> str:
    """What the store keeps of an enrollment token, to look it up by."""
    return hashlib.sha256(value.encode()).hexdigest()


def token_fingerprint(value: str) -> str:
    """What logs, audit and API show of an enrollment token: derived apart from the stored digest."""
    return "sha256:" + hashlib.sha256(b"goldilocks agent token fingerprint:" + value.encode()).hexdigest()[:16]


def check_hello(message: dict) -> None:
    """The facts of a hello (already of the right types) make sense: they become OpenFlow matches on
    the hypervisor's bridge and WireGuard endpoints at its peers, which a wrong value would break."""
    port, underlay = message["listen_port"], message["underlay"]
    if not 1 <= port <= 65535:
        raise AgentError("hello", "hello.listen_port: expected a UDP port from 1 to 65535")
    try:
        ip = ipaddress.IPv4Address(underlay["ip"])
    except ValueError:
        raise AgentError("hello", "hello.underlay.ip: expected an IPv4 address") from None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise AgentError("hello", "hello.underlay.ip: expected a unicast IPv4 address")
    mac = underlay["mac"]
    if not MAC.fullmatch(mac) or int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        raise AgentError("hello", "hello.underlay.mac: expected a unicast MAC address (xx:xx:xx:xx:xx:xx)")
    for field_name, value in (("bridge", message["bridge"]), ("underlay.port", underlay["port"])):
        if not OVS_NAME.fullmatch(value):
            raise AgentError("hello", f"hello.{field_name}: expected 1 to 64 printable ASCII characters, no space or '/'")


class AgentManager:
    """Enrolled agents, their sessions, the tunnel pairs and their keys."""

    def __init__(
        self,
        store,
        state_dir: str | Path,
        network: str = "100.127.0.0/16",
        psk_rotation: float = 3600.0,
        identity_rotation: float = 0.0,
        idle_teardown: float = IDLE_TEARDOWN,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        on_interfaces: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.network = ipaddress.IPv4Network(network)
        self.psk_rotation = psk_rotation
        self.identity_rotation = identity_rotation
        self.idle_teardown = idle_teardown
        self.clock = clock
        self.on_change = on_change  # endpoints or tunnel ports may have changed: recompile
        self.on_interfaces = on_interfaces  # the VM ports some agent reports changed: merge the inventory
        state_dir = Path(state_dir)
        self.master = MasterKey.load_or_create(state_dir / "master.key")
        self.ca = CertificateAuthority.load_or_create(state_dir, self.master)
        self.revoked: set[int] = store.revoked_serials()
        self.agents: dict[str, Agent] = {}
        for hypervisor, index, serial, enrolled, info in store.agents():
            agent = Agent(hypervisor, index, int(serial), enrolled)
            if info:
                doc = json.loads(info)
                agent.info = AgentInfo.from_json(doc)
                agent.key_since = doc.get("key_since")
            self.agents[hypervisor] = agent
        self.pairs: dict[tuple[str, str], Pair] = {}
        for a, b, vni, sealed, created in store.tunnel_pairs():
            psk = self.master.open(sealed, _psk_context(a, b, vni))
            self.pairs[(a, b)] = Pair(a, b, vni, psk, created)
        self.sessions: dict[str, Session] = {}
        self.sent: dict[str, tuple[PeerConfig, ...]] = {}
        self.applied_seq: dict[str, int] = {}
        self.config_seq: dict[str, int] = {}  # the last config seq sent to each agent
        self.seq = 0
        self.needed: frozenset[tuple[str, str]] = frozenset(self.pairs)  # until the first compile says otherwise
        self.unneeded_since: dict[tuple[str, str], float] = {}
        self.rotations: dict[str, IdentityRotation] = {}
        self.last_psk_rotation = clock()
        self.last_identity_rotation = clock()
        self.psk_rotations = 0
        self.identity_rotations = 0
        self.refused_connections = 0  # counted by the listener (controller/agent_server.py)

    # -- enrollment ------------------------------------------------------------------------------
    def issue_token(self, ttl: float = TOKEN_TTL, actor: str = "api") -> tuple[str, str, float]:
        """A one-time enrollment token: (value, fingerprint, expires). Only its digest is kept."""
        from controller import audit

        value = "gle_" + secrets.token_urlsafe(32)
        now = self.clock()
        fingerprint = token_fingerprint(value)
        with self.store.transaction():
            self.store.add_agent_token(token_digest(value), fingerprint, now, now + ttl)
            audit.record(self.store, actor, "agent.token", fingerprint, f"enrollment token valid for {ttl:.0f} s")
        return value, fingerprint, now + ttl

    def enroll(self, token: str, hypervisor: str, csr_pem: str) -> tuple[str, str]:
        """Check the one-time token and sign the agent's CSR: (certificate PEM, CA PEM)."""
        from controller import audit

        if not HYPERVISOR_NAME.fullmatch(hypervisor):
            rule = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            raise AgentError("name", f"enrollment refused: a hypervisor name is {rule}")
        # Looked up by SHA-256 digest: a guess must find a preimage, so the lookup's timing tells nothing.
        digest = token_digest(token)
        row = self.store.agent_token(digest)
        now = self.clock()
        if row is None:
            raise AgentError("token", "enrollment refused: unknown token")
        fingerprint, expires, used = row
        if used is not None:
            raise AgentError("token", f"enrollment refused: token {fingerprint} was already used")
        if now > expires:
            raise AgentError("token", f"enrollment refused: token {fingerprint} expired")
        try:
            cert_pem, serial = self.ca.sign_csr(csr_pem, hypervisor)
        except CAError as exc:
            raise AgentError("csr", f"enrollment refused: {exc}") from None
        old = self.agents.get(hypervisor)
        index = old.index if old is not None else self._free_index()
        with self.store.transaction():
            if not self.store.use_agent_token(digest, now):
                raise AgentError("token", f"enrollment refused: token {fingerprint} was already used")
            if old is not None:
                self.store.revoke_serial(old.serial, hypervisor, now)  # one certificate per hypervisor
            self.store.put_agent(hypervisor, index, serial, now)
            summary = f"token {fingerprint}; certificate serial {serial:x}"
            audit.record(self.store, f"agent:{hypervisor}", "agent.enroll", hypervisor, summary)
        if old is not None:
            self.revoked.add(old.serial)
            self._drop_session(hypervisor)
        self.agents[hypervisor] = Agent(
            hypervisor, index, serial, now, old.info if old else None, key_since=old.key_since if old else None
        )
        LOG.info("agent %s enrolled (index %d, token %s)", hypervisor, index, fingerprint)
        return cert_pem, self.ca.cert_pem

    def _free_index(self) -> int:
        used = {a.index for a in self.agents.values()}  # self.agents mirrors the store's agents table
        index = 1
        while index in used:
            index += 1
        return index

    # -- sessions ---------------------------------------------------------------------------------
    def authenticate(self, cert_der: bytes) -> ClientIdentity:
        """A client certificate: signed by our CA, not revoked, and the current one of an enrolled agent."""
        try:
            identity = self.ca.verify_client(cert_der)
        except CAError as exc:
            raise AgentError("certificate", f"certificate refused: {exc}") from None
        agent = self.agents.get(identity.hypervisor)
        if identity.serial in self.revoked or agent is None or agent.serial != identity.serial:
            raise AgentError("revoked", f"certificate of {identity.hypervisor} (serial {identity.serial:x}) is revoked")
        return identity

    def hello(self, session: Session, identity: ClientIdentity, message: dict) -> None:
        """An authenticated agent introduced itself: remember it, welcome it, configure it."""
        if message["hypervisor"] != identity.hypervisor:
            # The name in the frame is not echoed (it may be anything, of any length): the certificate's is ours.
            raise AgentError("identity", f"hello names another hypervisor than the certificate ({identity.hypervisor!r})")
        check_hello(message)
        agent = self.agents[identity.hypervisor]
        underlay = message["underlay"]
        info = AgentInfo(
            identity.hypervisor,
            agent.index,
            message["wg_public_key"],
            message["listen_port"],
            message["bridge"],
            underlay["ip"],
            underlay["mac"].lower(),
            underlay["port"],
        )
        rotation = self.rotations.get(identity.hypervisor)
        if rotation is not None and rotation.public_key == info.public_key:
            pass  # the agent restarted after switching: its key is the rotated one
        elif rotation is not None:
            del self.rotations[identity.hypervisor]  # the agent restarted mid-rotation: start over later
        previous = self._drop_session(identity.hypervisor)
        if previous is not None:
            LOG.info("agent %s reconnected; closing its previous session", identity.hypervisor)
        self.sessions[identity.hypervisor] = session
        session.hypervisor = identity.hypervisor
        agent.connected_since = self.clock()
        changed = agent.info != info
        if changed:
            same_key = agent.info is not None and agent.info.public_key == info.public_key
            key_since = agent.key_since if same_key else self.clock()
            with self.store.transaction():
                self.store.set_agent_info(identity.hypervisor, _info_json(info, key_since))
            agent.info, agent.key_since = info, key_since
        LOG.info(
            "agent %s connected: bridge %s, underlay %s, WireGuard key %s",
            identity.hypervisor, info.bridge, info.underlay_ip, wgkeys.fingerprint(wgkeys.decode(info.public_key)),
        )  # fmt: skip
        session.send(
            {
                "type": "welcome",
                "index": agent.index,
                "address": tunnel_interface_address(self.network, agent.index),
                "report_interval": REPORT_INTERVAL,
            }
        )
        self.sent.pop(identity.hypervisor, None)  # a new session gets the full config
        if changed:
            self.on_change()
        self.push_configs()

    def disconnected(self, session: Session) -> None:
        name = session.hypervisor
        if name is not None and self.sessions.get(name) is session:
            del self.sessions[name]
            self.sent.pop(name, None)
            if name in self.agents:
                self.agents[name].connected_since = None
            LOG.warning("agent %s disconnected; its data plane keeps running as it is", name)

    def _drop_session(self, hypervisor: str) -> Session | None:
        session = self.sessions.pop(hypervisor, None)
        self.sent.pop(hypervisor, None)
        if session is not None:
            session.hypervisor = None
            session.close()
        return session

    def report(self, hypervisor: str, message: dict) -> None:
        agent = self.agents.get(hypervisor)
        if agent is None:
            return
        now = self.clock()
        # Handshake times come from the hypervisor's clock: we only note when one is new, by ours.
        for tunnel in message.get("tunnels", []):
            peer, handshake = tunnel.get("peer"), tunnel.get("latest_handshake") or 0.0
            if handshake and handshake != agent.handshakes.get(peer, (0.0, 0.0))[0]:
                agent.handshakes[peer] = (handshake, now)
        agent.report, agent.report_at = message, now
        interfaces = [{"name": row["name"], "external_ids": dict(row["external_ids"])} for row in message["interfaces"]]
        if interfaces != agent.interfaces:
            agent.interfaces = interfaces
            self.on_interfaces()

    def applied(self, hypervisor: str, message: dict) -> None:
        # An answer to a config this agent was never sent (a copy from elsewhere, or a lie) must not
        # confirm anything, such as a peer holding a rotated key.
        if not 1 <= message["seq"] <= self.config_seq.get(hypervisor, 0):
            raise AgentError("order", "applied names a config that was never sent to this agent")
        self.applied_seq[hypervisor] = message["seq"]
        if not message["ok"]:
            reason = message.get("error", "?")[:ERROR_TEXT_MAX]  # the agent's own words, kept to one short line
            LOG.error("agent %s could not apply config %d: %r", hypervisor, message["seq"], reason)
        for rotation in self.rotations.values():
            if hypervisor in rotation.waiting_for and message["ok"] and message["seq"] >= rotation.config_seq:
                rotation.waiting_for.discard(hypervisor)
        self._switch_identities(self.clock())

    # -- what each agent should hold ----------------------------------------------------------------
    def desired(self) -> dict[str, tuple[PeerConfig, ...]]:
        live = {name: agent.info for name, agent in self.agents.items() if agent.info is not None}
        return desired_configs(live, [p.key for p in self.pairs.values()], self.network)

    def push_configs(self) -> None:
        """Send every connected agent its peers, when they differ from what it was last sent."""
        desired = self.desired()
        for name, session in list(self.sessions.items()):
            peers = desired.get(name, ())
            if self.sent.get(name) == peers:
                continue
            self.seq += 1
            self.sent[name] = peers
            self.config_seq[name] = self.seq
            session.send({"type": "config", "seq": self.seq, "peers": [p.to_message() for p in peers]})

    # -- pairs: on demand, keys, rotation ---------------------------------------------------------------
    def set_needed(self, pairs: Iterable[tuple[str, str]]) -> None:
        """The hypervisor pairs that encrypt rules need now (from the compile). New pairs get a tunnel
        at once; pairs no longer needed keep theirs for `idle_teardown` seconds."""
        now = self.clock()
        needed = frozenset(pair_of(a, b) for a, b in pairs if a in self.agents and b in self.agents)
        self.needed = needed
        created = []
        for pair in sorted(needed - set(self.pairs)):
            created.append(self._new_pair(*pair, now))
        for pair in needed:
            self.unneeded_since.pop(pair, None)
        for pair in set(self.pairs) - needed:
            self.unneeded_since.setdefault(pair, now)
        if created:
            from controller import audit

            with self.store.transaction():
                for pair in created:
                    self._store_pair(pair)
                    summary = f"vni {pair.vni}; psk {_fp(pair.psk)}"
                    audit.record(self.store, "controller", "tunnel.create", f"{pair.a}|{pair.b}", summary)
            self.push_configs()

    def _new_pair(self, a: str, b: str, now: float) -> Pair:
        used = {p.vni for p in self.pairs.values()}
        vni = next(v for v in range(1, MAX_VNI + 1) if v not in used)
        pair = Pair(a, b, vni, wgkeys.generate_psk(), now)
        self.pairs[(a, b)] = pair
        LOG.info("tunnel %s <-> %s: created (vni %d, psk %s)", a, b, vni, _fp(pair.psk))
        return pair

    def _store_pair(self, pair: Pair) -> None:
        sealed = self.master.seal(pair.psk, _psk_context(pair.a, pair.b, pair.vni))
        self.store.put_tunnel_pair(pair.a, pair.b, pair.vni, sealed, pair.psk_created)

    def rotate_psks(self, actor: str = "controller", pairs: Iterable[tuple[str, str]] | None = None) -> int:
        """New pre-shared keys for these pairs (default all), pushed to both ends. WireGuard keeps its
        running session and uses the new key from the next handshake: nothing is lost."""
        from controller import audit

        now = self.clock()
        chosen = [self.pairs[p] for p in (pairs if pairs is not None else sorted(self.pairs)) if p in self.pairs]
        with self.store.transaction():
            for pair in chosen:
                pair.psk, pair.psk_created = wgkeys.generate_psk(), now
                self._store_pair(pair)
                audit.record(self.store, actor, "tunnel.psk-rotate", f"{pair.a}|{pair.b}", f"psk {_fp(pair.psk)}")
        self.last_psk_rotation = now
        self.psk_rotations += len(chosen)
        if chosen:
            LOG.info("rotated the pre-shared keys of %d tunnel pairs", len(chosen))
        self.push_configs()
        return len(chosen)

    def _tear_down_idle(self, now: float) -> None:
        from controller import audit

        gone = [p for p, since in self.unneeded_since.items() if now - since >= self.idle_teardown and p in self.pairs]
        if not gone:
            return
        with self.store.transaction():
            for a, b in gone:
                self.store.delete_tunnel_pair(a, b)
                audit.record(self.store, "controller", "tunnel.delete", f"{a}|{b}", f"idle for {self.idle_teardown:.0f} s")
        for pair in gone:
            del self.pairs[pair]
            del self.unneeded_since[pair]
            LOG.info("tunnel %s <-> %s: torn down after %.0f s unused", *pair, self.idle_teardown)
        self.push_configs()

    # -- identity rotation ------------------------------------------------------------------------------
    def rotate_identity(self, hypervisor: str, actor: str = "controller") -> str:
        """Ask the agent for a new WireGuard key pair (make before break: its peers learn the new
        public key first, then it switches). Returns the rotation id."""
        from controller import audit

        if hypervisor not in self.agents:
            raise NoSuchAgent(hypervisor)
        session = self.sessions.get(hypervisor)
        if session is None:
            raise AgentError("offline", f"agent {hypervisor} is not connected")
        rotation = IdentityRotation(uuid.uuid4().hex, hypervisor, self.clock())
        self.rotations[hypervisor] = rotation
        with self.store.transaction():
            audit.record(self.store, actor, "agent.rotate-identity", hypervisor, f"rotation {rotation.rotation[:8]} started")
        session.send({"type": "rotate_identity", "rotation": rotation.rotation})
        return rotation.rotation

    def new_identity(self, hypervisor: str, message: dict) -> None:
        """The agent made its new key pair: its peers get the new public key, then it switches."""
        rotation = self.rotations.get(hypervisor)
        agent = self.agents.get(hypervisor)
        if rotation is None or rotation.rotation != message["rotation"] or agent is None or agent.info is None:
            LOG.warning("agent %s: identity for an unknown rotation ignored", hypervisor)
            return
        rotation.public_key = message["public_key"]
        info, key_since = replace(agent.info, public_key=rotation.public_key), self.clock()
        with self.store.transaction():
            self.store.set_agent_info(hypervisor, _info_json(info, key_since))
        agent.info, agent.key_since = info, key_since
        peers = {p.peer for p in self.desired().get(hypervisor, ())}
        rotation.waiting_for = {p for p in peers if p in self.sessions}
        self.push_configs()
        rotation.config_seq = self.seq
        rotation.switch_by = self.clock() + SWITCH_IDENTITY_MAX_WAIT
        self._switch_identities(self.clock())

    def _switch_identities(self, now: float) -> None:
        for name, rotation in list(self.rotations.items()):
            if rotation.public_key is None or rotation.switch_by is None:
                continue
            if rotation.waiting_for and now < rotation.switch_by:
                continue
            session = self.sessions.get(name)
            if session is not None:
                session.send({"type": "switch_identity", "rotation": rotation.rotation})
            rotation.switch_by = None

    def identity_switched(self, hypervisor: str, message: dict) -> None:
        from controller import audit

        rotation = self.rotations.get(hypervisor)
        if rotation is None or rotation.rotation != message["rotation"]:
            return
        del self.rotations[hypervisor]
        self.identity_rotations += 1
        self.last_identity_rotation = self.clock()
        key_fp = wgkeys.fingerprint(wgkeys.decode(rotation.public_key)) if rotation.public_key else "?"
        with self.store.transaction():
            audit.record(self.store, f"agent:{hypervisor}", "agent.identity-switched", hypervisor, f"WireGuard key {key_fp}")
        LOG.info("agent %s switched to its new WireGuard key %s", hypervisor, key_fp)

    # -- revocation ------------------------------------------------------------------------------------
    def revoke(self, hypervisor: str, actor: str = "controller") -> None:
        """Remove the hypervisor from every peer set and refuse its certificate from now on."""
        from controller import audit

        agent = self.agents.get(hypervisor)
        if agent is None:
            raise NoSuchAgent(hypervisor)
        now = self.clock()
        gone_pairs = [p for p in self.pairs if hypervisor in p]
        with self.store.transaction():
            self.store.revoke_serial(agent.serial, hypervisor, now)
            self.store.delete_agent(hypervisor)
            for a, b in gone_pairs:
                self.store.delete_tunnel_pair(a, b)
            audit.record(self.store, actor, "agent.revoke", hypervisor, f"certificate serial {agent.serial:x} revoked")
        self.revoked.add(agent.serial)
        del self.agents[hypervisor]
        for pair in gone_pairs:
            del self.pairs[pair]
            self.unneeded_since.pop(pair, None)
        self.rotations.pop(hypervisor, None)
        self.config_seq.pop(hypervisor, None)
        self._drop_session(hypervisor)
        LOG.warning("agent %s revoked: removed from %d tunnel pairs", hypervisor, len(gone_pairs))
        self.push_configs()
        self.on_change()
        if agent.interfaces:
            self.on_interfaces()  # what it published is no longer believed

    # -- time --------------------------------------------------------------------------------------------
    def tick(self) -> None:
        now = self.clock()
        if self.psk_rotation > 0 and now - self.last_psk_rotation >= self.psk_rotation:
            self.rotate_psks()
        if self.identity_rotation > 0 and now - self.last_identity_rotation >= self.identity_rotation:
            self.last_identity_rotation = now
            for name in sorted(self.sessions):
                if name not in self.rotations:
                    self.rotate_identity(name)
        self._switch_identities(now)
        self._tear_down_idle(now)

    def reported_interfaces(self) -> list[dict] | None:
        """The Interface rows every agent reported (the last report of each, connected or not), or
        None when no agent has reported since the controller started."""
        reported = [a.interfaces for a in self.agents.values() if a.interfaces is not None]
        if not reported:
            return None
        return [row for rows in reported for row in rows]

    # -- what the compiler needs ---------------------------------------------------------------------------
    def bridge_of_index(self) -> dict[int, str]:
        return {a.index: a.info.bridge for a in self.agents.values() if a.info is not None}

    def hypervisor_of_bridge(self) -> dict[str, str]:
        return {a.info.bridge: name for name, a in self.agents.items() if a.info is not None}

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint(name, a.info.bridge, a.info.underlay_port, a.info.underlay_mac, a.info.underlay_ip, a.info.listen_port)
            for name, a in sorted(self.agents.items())
            if a.info is not None
        ]

    # -- views (no secrets) -------------------------------------------------------------------------------
    def agent_view(self, name: str) -> dict:
        agent = self.agents[name]
        info = agent.info
        return {
            "hypervisor": name,
            "index": agent.index,
            "connected": name in self.sessions,
            "enrolled": _iso(agent.enrolled),
            "certificate_serial": f"{agent.serial:x}",
            "bridge": info.bridge if info else None,
            "underlay": {"ip": info.underlay_ip, "mac": info.underlay_mac, "port": info.underlay_port} if info else None,
            "wg_public_key_fingerprint": wgkeys.fingerprint(wgkeys.decode(info.public_key)) if info else None,
            "tunnel_address": tunnel_interface_address(self.network, agent.index),
            "wg_running": bool(agent.report and agent.report.get("wg_running")),
            "last_report_age": None if agent.report_at is None else round(self.clock() - agent.report_at, 3),
            "identity_rotation": name in self.rotations,
        }

    def tunnel_view(self, a: str, b: str) -> dict:
        pair = self.pairs[(a, b)]
        now = self.clock()
        ends = {}
        for own, other in ((a, b), (b, a)):
            ends[own] = self._end_state(own, other)
        handshake = max((e["latest_handshake"] or 0.0) for e in ends.values())
        configured = all(e["configured"] for e in ends.values())
        connected = all(e["agent_connected"] for e in ends.values())
        if configured and connected and handshake and now - handshake < HANDSHAKE_FRESH:
            state = "up"
        elif configured:
            state = "pending"
        else:
            state = "down"
        return {
            "a": a,
            "b": b,
            "state": state,
            "vni": pair.vni,
            "needed": (a, b) in self.needed,
            "latest_handshake": handshake or None,
            "handshake_age": round(now - handshake, 3) if handshake else None,
            "rx_bytes": sum(e["rx_bytes"] for e in ends.values()),
            "tx_bytes": sum(e["tx_bytes"] for e in ends.values()),
            "drops": sum(e["drops"] for e in ends.values()),
            "psk_fingerprint": _fp(pair.psk),
            "psk_age": round(now - pair.psk_created, 3),
            "ends": ends,
        }

    def _end_state(self, own: str, other: str) -> dict:
        agent = self.agents.get(own)
        tunnel = {}
        fresh = agent is not None and agent.report_at is not None and self.clock() - agent.report_at <= STALE_REPORT
        if agent is not None and agent.report:
            tunnel = next((t for t in agent.report.get("tunnels", []) if t.get("peer") == other), {})
        handshake = agent.handshakes.get(other) if agent is not None else None
        return {
            "agent_connected": own in self.sessions,
            "report_fresh": fresh,
            "configured": bool(tunnel.get("configured")) and fresh,
            "port": tunnel.get("port"),
            "latest_handshake": handshake[1] if handshake else None,  # when we learned of it, by our clock
            "rx_bytes": int(tunnel.get("rx_bytes", 0)),
            "tx_bytes": int(tunnel.get("tx_bytes", 0)),
            "drops": int(tunnel.get("drops", 0)),
        }

    def tunnel_state(self, a: str, b: str) -> str | None:
        pair = pair_of(a, b)
        return self.tunnel_view(*pair)["state"] if pair in self.pairs else None


def _info_json(info: AgentInfo, key_since: float | None) -> str:
    """What the store keeps of an agent's facts: its hello's, and since when its key is in use."""
    return json.dumps({**info.to_json(), "key_since": key_since})


def _iso(at: float) -> str:
    from controller.audit import iso_time

    return iso_time(at)


def _fp(psk: bytes) -> str:
    return wgkeys.fingerprint(psk)


def _psk_context(a: str, b: str, vni: int) -> str:
    return f"psk:{a}|{b}|{vni}"
