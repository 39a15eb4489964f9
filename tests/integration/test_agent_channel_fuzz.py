"""A fuzz campaign against the agent channel of a real controller process (no Mininet, no switches):
malformed, oversized and replayed msgpack frames, TLS clients without a valid certificate, plain TCP
garbage, and floods of idle, half-handshaken and slow connections.

Every one is refused (with the protocol's `error` wherever the protocol answers), and after each
batch the controller is up, a genuine agent connected before the campaign still reports on its
connection, and nothing changed: the REST views of agents, tunnels, tokens and the audit log, and
every row of the state database, are as they were before."""

from __future__ import annotations

import hashlib
import queue
import random
import re
import resource
import select
import socket
import sqlite3
import ssl
import struct
import tempfile
import threading
import time
from contextlib import ExitStack, suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controller.agent_server import FIRST_MESSAGE_DEADLINE, MAX_UNAUTHENTICATED_PER_CLIENT
from controller.ovsdb_inventory import ATTACHED_MAC, IPS_KEY, LABELS_KEY, VM_ID
from crypto import protocol, wgkeys
from crypto.ca import CertificateAuthority, make_key_and_csr, ssl_client_context
from crypto.keystore import MasterKey
from mininet_scenarios.harness import ControllerProcess, rest_get, wait_for

SEED = 20261201
ANSWER_TIMEOUT = 5.0  # seconds a refused client waits for the controller's answer or close
REPORT_EVERY = 0.5  # the genuine agent's report interval during the campaign
ERROR_CODES = {"frame", "decode", "version", "type", "schema", "certificate", "revoked", "identity", "order", "token",
               "name", "csr", "hello"}  # fmt: skip


@pytest.fixture(scope="module")
def environment():
    """This module starts a controller process and nothing else: it needs no Open vSwitch, Mininet
    or root, so it overrides the integration suite's check for them."""


# -- talking to the agent port ------------------------------------------------------------------------
def frame(value, raw: bool = False) -> bytes:
    """A frame around any msgpack value (or raw body bytes), bypassing our own encoder's checks."""
    body = value if raw else msgpack.packb(value, use_bin_type=True)
    return struct.pack("!I", len(body)) + body


def tcp(ctl, source: str = "127.0.0.1", timeout: float = ANSWER_TIMEOUT) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", ctl.agent_port))
    return sock


def tls(ctl, ca_pem: str, cert_pem: str | None = None, key_pem: str | None = None, context=None) -> ssl.SSLSocket:
    context = context or ssl_client_context(ca_pem, cert_pem, key_pem)
    return context.wrap_socket(tcp(ctl))


def answers(sock, payload: bytes, wait: bool = True, expect: int | None = None) -> tuple[list[dict], bool]:
    """Send `payload`; return what the controller answered and whether it closed the connection (EOF,
    reset or a TLS alert) within ANSWER_TIMEOUT, or as soon as `expect` messages came. Without
    `wait`, only send. Bytes that are not frames (a TLS alert to a plain TCP client) are no message."""
    messages: list[dict] = []
    reader = protocol.FrameReader(accept=frozenset(protocol.CONTROLLER_MESSAGES))
    try:
        sock.sendall(payload)
    except (ssl.SSLError, OSError):
        pass  # refused while we were still sending: read what it said
    if not wait:
        return messages, False
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                return messages, True
            try:
                messages += reader.feed(data)
            except protocol.ProtocolError:
                reader = protocol.FrameReader(accept=frozenset())  # not frames: read on until the close
                reader.feed = lambda data: []
            if expect is not None and len(messages) >= expect:
                return messages, False
    except TimeoutError:
        return messages, False
    except (ssl.SSLError, OSError):
        return messages, True


def refused(messages: list[dict], closed: bool, codes: set[str] = ERROR_CODES) -> str | None:
    """Why an exchange was not a proper refusal, or None: at most one `error` with a known code, nothing
    else, and the connection closed."""
    if not closed:
        return "the connection stayed open"
    if any(m["type"] != "error" for m in messages):
        return f"answered {[m['type'] for m in messages]}"
    if len(messages) > 1 or (messages and messages[0]["code"] not in codes):
        return f"errors {[(m['code'], m['message']) for m in messages]}"
    return None


def hello_message(hypervisor: str, public_key: str) -> dict:
    return {
        "type": "hello", "hypervisor": hypervisor, "software": "fuzz", "wg_public_key": public_key, "listen_port": 51820,
        "bridge": f"br-{hypervisor}", "underlay": {"ip": "192.0.2.10", "mac": "02:00:00:00:00:10", "port": "ul0"},
    }  # fmt: skip


REPORT = {"type": "report", "interfaces": [], "tunnels": [], "wg_running": True}
TUNNEL = {"peer": "p", "port": "glvx1", "configured": True, "latest_handshake": 1.0, "rx_bytes": 1, "tx_bytes": 2, "drops": 0}


class Credentials:
    """An enrolled agent's certificate and key, and the enroll frame it sent."""

    def __init__(self, ctl, ca_pem: str, hypervisor: str) -> None:
        self.hypervisor = hypervisor
        issued = ctl.api("POST", "/v1/agents/tokens", {"ttl_seconds": 600}, expect=201)
        self.key_pem, csr_pem = make_key_and_csr(hypervisor)
        enroll = {"type": "enroll", "token": issued["token"], "hypervisor": hypervisor, "csr": csr_pem}
        self.enroll_frame = protocol.encode(enroll)
        self.token = issued["token"]
        with tls(ctl, ca_pem) as sock:
            messages, _ = answers(sock, self.enroll_frame)
        assert messages and messages[0]["type"] == "enrolled", messages
        self.cert_pem = messages[0]["certificate"]


class LiveAgent(threading.Thread):
    """A genuine agent on one connection: hello, `applied` for each config, and a report every
    REPORT_EVERY seconds. It notes every message it gets and why its connection ended, if it did."""

    def __init__(self, ctl, ca_pem: str, credentials: Credentials) -> None:
        super().__init__(daemon=True)
        self.credentials = credentials
        public_key = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
        self.hello_frame = protocol.encode(hello_message(credentials.hypervisor, public_key))
        self.report_frame = protocol.encode(REPORT)
        self.applied_frames: list[bytes] = []
        self.sock = tls(ctl, ca_pem, credentials.cert_pem, credentials.key_pem)
        self.messages: list[dict] = []
        self.ended: str | None = None
        self.reports = 0
        self.stopping = threading.Event()
        self.outbox: queue.Queue[bytes] = queue.Queue()  # more frames to send, from this thread (one TLS object)

    def run(self) -> None:
        reader = protocol.FrameReader(accept=frozenset(protocol.CONTROLLER_MESSAGES))
        self.sock.settimeout(0.1)
        try:
            self.sock.sendall(self.hello_frame)
            due = time.monotonic()
            while not self.stopping.is_set():
                if time.monotonic() >= due and any(m["type"] == "welcome" for m in self.messages):
                    self.sock.sendall(self.report_frame)
                    self.reports += 1
                    due = time.monotonic() + REPORT_EVERY
                while not self.outbox.empty():
                    self.sock.sendall(self.outbox.get())
                try:
                    data = self.sock.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    self.ended = "closed by the controller"
                    return
                for message in reader.feed(data):
                    self.messages.append(message)
                    if message["type"] == "config":
                        applied = protocol.encode({"type": "applied", "seq": message["seq"], "ok": True})
                        self.applied_frames.append(applied)
                        self.sock.sendall(applied)
        except (OSError, ssl.SSLError, protocol.ProtocolError) as exc:
            self.ended = f"{exc.__class__.__name__}: {exc}"
        finally:
            self.sock.close()

    def wait_welcomed(self) -> None:
        deadline = time.monotonic() + 10
        while not any(m["type"] == "config" for m in self.messages):
            assert self.ended is None and time.monotonic() < deadline, f"no welcome and config: {self.ended}"
            time.sleep(0.02)

    def assert_alive(self) -> None:
        reports = self.reports
        deadline = time.monotonic() + 5
        while self.reports < reports + 2 and self.ended is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.ended is None, f"the genuine agent's connection ended: {self.ended}"
        assert self.reports >= reports + 2, "the genuine agent could not report"
        assert not [m for m in self.messages if m["type"] == "error"], "the genuine agent was sent an error"


# -- certificates that must not get in ------------------------------------------------------------
def self_signed(hypervisor: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hypervisor)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem.decode()


# -- the controller's state -------------------------------------------------------------------------
def database_rows(state_dir: str) -> dict[str, list]:
    db = sqlite3.connect(f"file:{Path(state_dir, 'goldilocks.db')}?mode=ro", uri=True)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        return {table: sorted(map(repr, db.execute(f'SELECT * FROM "{table}"'))) for table in tables}
    finally:
        db.close()


def state(ctl) -> dict:
    agents = ctl.api("GET", "/v1/agents")["agents"]
    for agent in agents:
        agent.pop("last_report_age")  # the genuine agent reports all the time
    return {
        "agents": agents,
        "tunnels": ctl.api("GET", "/v1/tunnels"),
        "tokens": ctl.api("GET", "/v1/tokens"),
        "audit": ctl.api("GET", "/v1/audit?limit=1000"),
        "database": database_rows(ctl.state_dir),
    }


class World:
    """The controller, a genuine agent connected through the campaign, other enrolled, revoked and
    forged identities, an unused enrollment token, and frames captured from the genuine agent."""

    def __init__(self, ctl) -> None:
        self.ctl = ctl
        self.ca_pem = ctl.api("POST", "/v1/agents/tokens", {"ttl_seconds": 60}, expect=201)["ca_certificate"]
        self.keeper = Credentials(ctl, self.ca_pem, "keeper")
        self.other = Credentials(ctl, self.ca_pem, "other")
        self.revoked = Credentials(ctl, self.ca_pem, "revoked")
        ctl.api("DELETE", "/v1/agents/revoked", expect=204)
        self.spare_token = ctl.api("POST", "/v1/agents/tokens", {"ttl_seconds": 3600}, expect=201)["token"]
        # Certificates our CA never issued to an agent in this form, minted with its key as a thief might.
        state_dir = Path(ctl.state_dir)
        authority = CertificateAuthority.load_or_create(state_dir, MasterKey.load_or_create(state_dir / "master.key"))
        now = datetime.now(UTC)
        self.forged: dict[str, tuple[str, str]] = {}
        for name, when in (("expired", now - timedelta(days=800)), ("not-yet-valid", now + timedelta(days=2))):
            key_pem, csr_pem = make_key_and_csr("keeper")
            self.forged[name] = (authority.sign_csr(csr_pem, "keeper", now=when)[0], key_pem)
        self.forged["server-certificate"] = authority.server_credentials(["keeper"])
        self.forged["self-signed"] = self_signed("keeper")
        with tempfile.TemporaryDirectory(prefix="goldilocks-other-ca-") as other_dir:
            other_dir = Path(other_dir)
            other_ca = CertificateAuthority.load_or_create(other_dir, MasterKey.load_or_create(other_dir / "master.key"))
            key_pem, csr_pem = make_key_and_csr("keeper")
            self.forged["another-ca"] = (other_ca.sign_csr(csr_pem, "keeper")[0], key_pem)
        self.agent = LiveAgent(ctl, self.ca_pem, self.keeper)
        self.agent.start()
        self.agent.wait_welcomed()

    def check(self, before: dict, what: str) -> None:
        """The controller is up, the genuine agent still reports, and nothing changed."""
        assert self.ctl.proc.poll() is None, f"the controller died during {what}: {self.ctl.log_tail()}"
        assert rest_get(self.ctl.rest_url, "/v1/health")["status"] == "ok"
        self.agent.assert_alive()
        after = state(self.ctl)
        for part in before:
            assert after[part] == before[part], f"{what} changed the controller's {part}"
        log = Path(self.ctl.log_path).read_text(errors="replace")
        assert "Traceback" not in log and "uncaught exception" not in log, f"{what}: a crash in the log"
        assert self.spare_token not in log and self.keeper.token not in log, "an enrollment token reached the log"

    def refuse_all(self, cases: list[tuple[str, callable]], what: str) -> int:
        """Run each case (a label and a function returning why the exchange was not a refusal, or
        None); fail with the first few that were not refused. Returns how many ran."""
        failures = []
        for label, case in cases:
            problem = case()
            if problem:
                failures.append(f"{label}: {problem}")
        assert not failures, f"{what}: {len(failures)} of {len(cases)} not refused: {failures[:5]}"
        return len(cases)


@pytest.fixture(scope="module")
def world():
    # The controller inherits our descriptor limit, and holds a quarter of it for connections not yet
    # authenticated: enough for the flood below to be held, not refused, until its deadline.
    raise_own_fd_limit(8192)
    ctl = ControllerProcess(extra_args=["--no-ovsdb-inventory"]).start()
    world = None
    try:
        world = World(ctl)
        yield world
    finally:
        if world is not None:
            world.agent.stopping.set()
            world.agent.join(5)
        ctl.stop()


# -- frames -----------------------------------------------------------------------------------------
def send_unauthenticated(world: World, payload: bytes, codes: set[str] = ERROR_CODES, wait: bool = True):
    def case() -> str | None:
        with tls(world.ctl, world.ca_pem) as sock:
            messages, closed = answers(sock, payload, wait)
        if not wait:
            return None if not messages else f"answered {messages}"
        return refused(messages, closed, codes)

    return case


def random_value(rng: random.Random, depth: int = 0):
    """Any msgpack value: scalars of every kind, and lists and maps of them, a few levels deep."""
    kinds = ["nil", "bool", "int", "bigint", "float", "nan", "str", "bytes", "ext", "timestamp"]
    if depth < 3:
        kinds += ["list", "map"]
    kind = rng.choice(kinds)
    if kind == "nil":
        return None
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "int":
        return rng.randint(-(2**31), 2**31)
    if kind == "bigint":
        return rng.choice([2**64 - 1, -(2**63), 2**63, 2**32, -1])
    if kind == "float":
        return rng.uniform(-1e300, 1e300)
    if kind == "nan":
        return rng.choice([float("nan"), float("inf"), float("-inf")])
    if kind == "str":
        return "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                       for _ in range(rng.randint(0, 40)))  # fmt: skip
    if kind == "bytes":
        return rng.randbytes(rng.randint(0, 40))
    if kind == "ext":
        return msgpack.ExtType(rng.randint(0, 127), rng.randbytes(rng.randint(0, 16)))
    if kind == "timestamp":
        return msgpack.Timestamp(rng.randint(0, 2**34 - 1), rng.randint(0, 999_999_999))
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {random_value(rng, 3) if rng.random() < 0.2 else f"k{rng.randint(0, 9)}": random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}  # fmt: skip


def mutate(rng: random.Random, message: dict) -> dict:
    """A copy of a valid message with one to three things wrong: a field missing, of another type or
    shape (anywhere in it), or the version or type changed."""
    message = msgpack.unpackb(msgpack.packb(message, use_bin_type=True), raw=False)
    for _ in range(rng.randint(1, 3)):
        target, path = message, []
        while isinstance(target, dict | list) and target and rng.random() < 0.6:
            key = rng.choice(list(target)) if isinstance(target, dict) else rng.randrange(len(target))
            if not isinstance(target[key], dict | list) or not target[key]:
                break
            path.append(key)
            target = target[key]
        if isinstance(target, list) and target:
            target[rng.randrange(len(target))] = random_value(rng)
            continue
        if not isinstance(target, dict) or not target:
            continue
        key = rng.choice(list(target))
        choice = rng.random()
        if choice < 0.25:
            del target[key]
        elif choice < 0.9:
            target[key] = random_value(rng)
        else:
            message["v" if rng.random() < 0.5 else "type"] = random_value(rng)
    return message


def test_malformed_frames_are_refused_with_no_state_change(world):
    rng = random.Random(SEED)
    before = state(world.ctl)
    keeper_key = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
    valid = [
        {"v": 1, "type": "enroll", "token": "gle_" + "x" * 43, "hypervisor": "fuzz", "csr": "-----BEGIN CERTIFICATE"},
        {"v": 1, **hello_message("keeper", keeper_key)},
        {"v": 1, **REPORT, "tunnels": [TUNNEL]},
        {"v": 1, "type": "applied", "seq": 1, "ok": True},
        {"v": 1, "type": "identity", "rotation": "r", "public_key": keeper_key},
        {"v": 1, "type": "identity_switched", "rotation": "r"},
        {"v": 1, "type": "welcome", "index": 1, "address": "100.127.0.1/16", "report_interval": 2.0},
        {"v": 1, "type": "config", "seq": 1, "peers": []},
    ]
    cases = []
    for i in range(2000):  # valid msgpack of the wrong types and shapes
        cases.append((f"mutated #{i}", send_unauthenticated(world, frame(mutate(rng, rng.choice(valid))))))
    for i in range(400):  # any msgpack value at all
        cases.append((f"random value #{i}", send_unauthenticated(world, frame(random_value(rng)))))
    for i in range(400):  # random bytes in a well-formed frame
        cases.append((f"random body #{i}", send_unauthenticated(world, frame(rng.randbytes(rng.randint(1, 300)), raw=True))))
    for i in range(400):  # random bytes, header included: refused, or left waiting for a body that never comes
        payload = rng.randbytes(rng.randint(1, 300))
        (length,) = struct.unpack("!I", payload[:4]) if len(payload) >= 4 else (None,)
        complete = length is not None and (not 1 <= length <= protocol.MAX_FRAME or len(payload) >= 4 + length)
        cases.append((f"random bytes #{i}", send_unauthenticated(world, payload, wait=complete)))
    for i, cut in enumerate([b"\x00", b"\x00\x00", b"\x00\x00\x01", struct.pack("!I", 20) + b"\x85\xa1v"]):
        cases.append((f"truncated #{i}", send_unauthenticated(world, cut, wait=False)))
    for _ in range(100):  # lengths beyond the limit, or zero: refused from the header alone
        length = rng.choice([0, protocol.MAX_FRAME + 1, rng.randint(protocol.MAX_FRAME + 1, 2**32 - 1), 2**32 - 1])
        cases.append((f"length {length}", send_unauthenticated(world, struct.pack("!I", length) + b"\x80", {"frame"})))
    for depth in (100, 1000, 10_000, 100_000, protocol.MAX_FRAME - 1):  # nested deeper than the decoder goes
        cases.append((f"{depth} nested lists", send_unauthenticated(world, frame(b"\x91" * depth + b"\xc0", raw=True))))
        maps = frame(b"\x81\xa1a" * (depth // 3) + b"\xc0", raw=True)
        cases.append((f"{depth} nested maps", send_unauthenticated(world, maps)))
    huge_headers = {
        "array32": b"\xdd\xff\xff\xff\xff", "map32": b"\xdf\xff\xff\xff\xff", "str32": b"\xdb\xff\xff\xff\xff",
        "bin32": b"\xc6\xff\xff\xff\xff", "ext32": b"\xc9\xff\xff\xff\xff\x01", "array16": b"\xdc\xff\xff",
        "map16": b"\xde\xff\xff", "map of 100,000 int keys": b"\xdf\x00\x01\x86\xa0" + b"\x01\xc0" * 100_000,
        "map of 60,000 str keys": b"\xdf\x00\x00\xea\x60" + b"".join(b"\xa4" + b"%04x" % i + b"\xc0" for i in range(60_000)),
        "list of 200,000 nils": b"\xdd\x00\x03\x0d\x40" + b"\xc0" * 200_000,
        "two values": msgpack.packb({"v": 1, "type": "report"}) + b"\xc0",
        "bad utf-8": b"\x81\xa2v\xff\x01",
        "a timestamp of 3 bytes": b"\x81\xa1v\xc7\x03\xff\x00\x00\x00",
        "reserved byte": b"\xc1",
    }  # fmt: skip
    for name, body in huge_headers.items():
        cases.append((name, send_unauthenticated(world, frame(body + b"\x00" * 8 if len(body) < 8 else body, raw=True))))
    started = time.monotonic()
    count = world.refuse_all(cases, "malformed frames")
    elapsed = time.monotonic() - started
    print(f"\n{count} malformed frames refused in {elapsed:.1f} s")
    world.check(before, "malformed frames")


def test_oversized_frames_are_refused_from_their_header(world):
    rng = random.Random(SEED + 1)
    before = state(world.ctl)
    cases = []
    for i in range(20):  # the body is sent in full, 256 KiB and more: refused from its header
        body = rng.randbytes(protocol.MAX_FRAME + 1 + rng.randint(0, 4096))
        cases.append((f"oversized #{i}", send_unauthenticated(world, frame(body, raw=True), {"frame"})))
    csr = "-----BEGIN CERTIFICATE REQUEST-----\n" + "A" * (protocol.MAX_FRAME - 200)  # the largest frame allowed
    big_enroll = frame({"v": 1, "type": "enroll", "token": world.spare_token, "hypervisor": "fuzz", "csr": csr})
    assert len(big_enroll) - 4 <= protocol.MAX_FRAME
    cases.append(("a frame at the limit with a bad CSR", send_unauthenticated(world, big_enroll, {"csr"})))
    world.refuse_all(cases, "oversized frames")
    world.check(before, "oversized frames")


def test_enrolling_with_a_valid_token_but_bad_content_leaves_the_token_unused(world):
    rng = random.Random(SEED + 2)
    before = state(world.ctl)
    _, csr = make_key_and_csr("fuzz")
    _, csr_for_another_name = make_key_and_csr("someone-else")
    cases = []
    bad = [
        ("hypervisor", "", "name"), ("hypervisor", "a/b", "name"), ("hypervisor", "x" * 65, "name"),
        ("hypervisor", "fuzz\n", "name"), ("csr", "", "csr"), ("csr", csr_for_another_name, "csr"),
        ("csr", csr.replace("A", "B", 3), "csr"), ("csr", "\x00" * 100, "csr"),
    ]  # fmt: skip
    for field, value, code in bad:
        message = {"type": "enroll", "token": world.spare_token, "hypervisor": "fuzz", "csr": csr, field: value}
        cases.append((f"enroll with a bad {field}", send_unauthenticated(world, frame({"v": 1, **message}), {code})))
    for i in range(50):  # the right fields of the wrong types, around a valid token
        message = {"v": 1, "type": "enroll", "token": world.spare_token, "hypervisor": "fuzz", "csr": csr}
        message[rng.choice(["hypervisor", "csr"])] = rng.choice([None, 1, b"fuzz", ["fuzz"], {"a": 1}, True, 1.5])
        cases.append((f"enroll of wrong types #{i}", send_unauthenticated(world, frame(message), {"schema"})))
    world.refuse_all(cases, "bad enrollments")
    world.check(before, "bad enrollments")
    digest = hashlib.sha256(world.spare_token.encode()).hexdigest()
    rows = database_rows(world.ctl.state_dir)["agent_tokens"]
    assert [row for row in rows if digest in row and ", None)" in row], "the spare token was used up by a refused enrollment"


def test_replayed_frames_are_refused(world):
    before = state(world.ctl)
    agent = world.agent
    other = (world.other.cert_pem, world.other.key_pem)
    revoked = (world.revoked.cert_pem, world.revoked.key_pem)

    def send_as(identity, payload: bytes, codes: set[str]):
        def case() -> str | None:
            with tls(world.ctl, world.ca_pem, *identity) as sock:
                return refused(*answers(sock, payload), codes)

        return case

    assert agent.applied_frames, "the genuine agent never answered a config"
    captured = {
        "enroll": world.keeper.enroll_frame, "hello": agent.hello_frame, "report": agent.report_frame,
        "applied": agent.applied_frames[0], "hello and report": agent.hello_frame + agent.report_frame,
    }  # fmt: skip
    cases = []
    for _ in range(10):
        # The enrollment token was used once, by the genuine agent: a copy of its enroll is refused.
        cases.append(("enroll again, no certificate", send_unauthenticated(world, captured["enroll"], {"token"})))
        for name in ("hello", "report", "applied", "hello and report"):
            # Without the agent's key, a copy of what it said is refused on a new connection...
            cases.append((f"{name}, no certificate", send_unauthenticated(world, captured[name], {"certificate"})))
            # ...with another agent's certificate (a hello names someone else; the rest come before any hello)...
            codes = {"identity"} if name.startswith("hello") else {"order"}
            cases.append((f"{name}, another agent's certificate", send_as(other, captured[name], codes)))
            # ...and with a revoked certificate.
            cases.append((f"{name}, revoked certificate", send_as(revoked, captured[name], {"revoked"})))
        cases.append(("enroll, another agent's certificate", send_as(other, captured["enroll"], {"order"})))
    world.refuse_all(cases, "replayed frames")
    world.check(before, "replayed frames")


def test_a_replay_on_the_same_connection_is_refused(world):
    """On its own authenticated connection, an agent's copies: a second hello and an `applied` for a
    config it was never sent are refused; a repeated report is a snapshot that changes nothing."""
    credentials = Credentials(world.ctl, world.ca_pem, "replayer")
    for replay, code in (("hello", "order"), ("applied", "order"), ("enroll", "type")):
        public_key = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
        hello = protocol.encode(hello_message("replayer", public_key))
        with tls(world.ctl, world.ca_pem, credentials.cert_pem, credentials.key_pem) as sock:
            messages, closed = answers(sock, hello, expect=2)
            assert [m["type"] for m in messages] == ["welcome", "config"] and not closed, messages
            seq = messages[1]["seq"]
            for _ in range(2):
                messages, closed = answers(sock, protocol.encode(REPORT), wait=False)
            view = wait_for(lambda: (v := world.ctl.api("GET", "/v1/agents/replayer"))["wg_running"] and v, 5, what="a report")
            assert view["connected"], view
            rows, audit = database_rows(world.ctl.state_dir), world.ctl.api("GET", "/v1/audit?limit=1000")
            copy = {
                "hello": hello,
                "applied": protocol.encode({"type": "applied", "seq": seq + 1000, "ok": True}),
                "enroll": credentials.enroll_frame,
            }[replay]
            messages, closed = answers(sock, copy)
            assert refused(messages, closed, {code}) is None and messages, (replay, messages, closed)
        assert database_rows(world.ctl.state_dir) == rows, f"a replayed {replay} changed the database"
        assert world.ctl.api("GET", "/v1/audit?limit=1000") == audit
    world.agent.assert_alive()


def test_clients_without_a_valid_certificate_are_refused(world):
    before = state(world.ctl)
    cases = []
    for name, (cert_pem, key_pem) in world.forged.items():

        def case(cert_pem=cert_pem, key_pem=key_pem) -> str | None:
            try:
                sock = tls(world.ctl, world.ca_pem, cert_pem, key_pem)
            except (ssl.SSLError, OSError):
                return None  # refused during the handshake
            with sock:
                messages, closed = answers(sock, world.agent.hello_frame)
            return refused(messages, closed, {"certificate"})

        for i in range(5):
            cases.append((f"{name} #{i}", case))

    def tls12() -> str | None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        context.maximum_version = ssl.TLSVersion.TLSv1_2
        try:
            tls(world.ctl, world.ca_pem, context=context).close()
        except (ssl.SSLError, OSError):
            return None
        return "a TLS 1.2 handshake succeeded"

    def plain(payload: bytes):
        def case() -> str | None:
            with tcp(world.ctl) as sock:
                messages, closed = answers(sock, payload)
            return None if closed and not messages else f"plain TCP answered {messages}, closed={closed}"

        return case

    rng = random.Random(SEED + 3)
    cases.append(("TLS 1.2", tls12))
    cases += [(f"plain TCP garbage #{i}", plain(rng.randbytes(rng.randint(1, 2000)))) for i in range(50)]
    cases.append(("a hello in clear", plain(world.agent.hello_frame)))
    cases.append(("HTTP", plain(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")))
    world.refuse_all(cases, "bad certificates")
    world.check(before, "bad certificates")


# -- floods -------------------------------------------------------------------------------------------
def client_hello_start() -> bytes:
    """The first bytes of a real TLS ClientHello: a handshake begun and never finished."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    with suppress(ssl.SSLWantReadError):
        context.wrap_bio(incoming, outgoing).do_handshake()
    return outgoing.read()[:40]


def raise_own_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= wanted, "cannot open enough sockets for the flood"


def closed_within(sockets: list[socket.socket], timeout: float) -> list[socket.socket]:
    """The sockets the controller closed (EOF or reset) before `timeout` seconds passed."""
    waiting, closed = set(sockets), []
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        poller = select.poll()
        by_fd = {sock.fileno(): sock for sock in waiting}
        for fd in by_fd:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        for fd, _ in poller.poll(200):
            sock = by_fd[fd]
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                data = b""
            if not data:
                waiting.discard(sock)
                closed.append(sock)
    return closed


def test_a_flood_of_idle_half_open_and_slow_connections_does_not_silence_the_listener(world):
    idle_per_address, addresses = 30, 40  # 1,200 idle TCP connections, each address under its cap
    assert idle_per_address <= MAX_UNAUTHENTICATED_PER_CLIENT
    raise_own_fd_limit(4096)
    with ExitStack() as stack:
        sources = [f"127.0.1.{a}" for a in range(1, addresses + 1) for _ in range(idle_per_address)]
        idle = [stack.enter_context(tcp(world.ctl, source)) for source in sources]
        hello_start = client_hello_start()
        half = []
        for i in range(100):  # a ClientHello begun and never finished
            sock = stack.enter_context(tcp(world.ctl, f"127.0.2.{i // 25 + 1}"))
            sock.sendall(hello_start)
            half.append(sock)
        slow = []
        for _ in range(20):  # TLS done, then two bytes of a frame header, and nothing more
            sock = stack.enter_context(
                ssl_client_context(world.ca_pem).wrap_socket(tcp(world.ctl, "127.0.3.1", timeout=FIRST_MESSAGE_DEADLINE + 10))
            )
            sock.sendall(b"\x00\x00")
            slow.append(sock)
        over = [stack.enter_context(tcp(world.ctl, "127.0.4.1")) for _ in range(MAX_UNAUTHENTICATED_PER_CLIENT + 40)]
        flooded = time.monotonic()
        for sock in idle + half + over:
            sock.setblocking(False)

        # A genuine agent enrolls and connects while all of that is held open.
        credentials = Credentials(world.ctl, world.ca_pem, "after-flood")
        newcomer = LiveAgent(world.ctl, world.ca_pem, credentials)
        newcomer.start()
        try:
            newcomer.wait_welcomed()
            newcomer_took = time.monotonic() - flooded
            assert not closed_within(idle + half, 0.05), "idle connections were closed before their deadline"
            assert newcomer_took < FIRST_MESSAGE_DEADLINE, "the genuine agent got in only once the flood was closed"
            world.agent.assert_alive()
            newcomer.assert_alive()
        finally:
            newcomer.stopping.set()
            newcomer.join(5)

        # One address over its cap is refused at once, beyond the connections it may hold.
        shed = closed_within(over, 3.0)
        assert len(shed) >= 40, f"only {len(shed)} of {len(over)} connections over the per-client cap were refused"

        # Every idle, half-open and slow connection is closed by the deadline, the slow ones told why.
        remaining = FIRST_MESSAGE_DEADLINE + 10 - (time.monotonic() - flooded)
        closed = closed_within(idle + half + [s for s in over if s not in shed], remaining)
        assert len(closed) == len(idle) + len(half) + len(over) - len(shed), (
            f"{len(idle) + len(half) + len(over) - len(shed) - len(closed)} flood connections outlived the deadline"
        )
        for sock in slow:
            messages, closed_now = answers(sock, b"", wait=True)
            assert [(m["type"], m["code"]) for m in messages] == [("error", "deadline")] and closed_now, messages
    print(f"\nflood: 1,200 idle + 100 half-handshake + 20 slow + {len(over)} over-cap connections; "
          f"a genuine agent enrolled and was welcomed {newcomer_took:.2f} s into it")  # fmt: skip
    assert rest_get(world.ctl.rest_url, "/v1/health")["status"] == "ok"
    world.agent.assert_alive()
    log = Path(world.ctl.log_path).read_text(errors="replace")
    assert len(re.findall(r"agent connection .* (refused|closed)", log)) < 2000, "the flood was logged line by line"


def test_the_listener_keeps_accepting_after_running_out_of_descriptors(tmp_path):
    """With no descriptor left, accept() fails (EMFILE); the listener must wait and go on, not die."""
    ctl = ControllerProcess(extra_args=["--no-ovsdb-inventory"]).start()
    try:
        issued = ctl.api("POST", "/v1/agents/tokens", {"ttl_seconds": 600}, expect=201)
        key_pem, csr_pem = make_key_and_csr("patient")
        enroll = protocol.encode({"type": "enroll", "token": issued["token"], "hypervisor": "patient", "csr": csr_pem})
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        # A soft limit of 0 leaves not one descriptor, whatever the controller closes meanwhile (a limit
        # of "the descriptors now open" raced with the REST connection above closing a moment later).
        resource.prlimit(ctl.proc.pid, resource.RLIMIT_NOFILE, (0, hard))
        outcome: dict = {}

        def agent() -> None:
            try:
                with _patient_tls(ctl, issued["ca_certificate"]) as sock:
                    outcome["messages"] = answers(sock, enroll)[0]
            except (ssl.SSLError, OSError) as exc:
                outcome["error"] = repr(exc)

        thread = threading.Thread(target=agent, daemon=True)
        thread.start()
        time.sleep(3.0)  # the agent waits in the listen backlog; every accept() fails meanwhile
        assert thread.is_alive(), f"the agent got an answer with no descriptor free: {outcome}"
        resource.prlimit(ctl.proc.pid, resource.RLIMIT_NOFILE, (hard, hard))  # descriptors are free again
        thread.join(20)
        assert not thread.is_alive(), "the agent waited in vain: the listener stopped accepting"
        assert "error" not in outcome, outcome
        assert [m["type"] for m in outcome["messages"]] == ["enrolled"], outcome
        log = Path(ctl.log_path).read_text(errors="replace")
        assert log.count("cannot accept connections (EMFILE)") == 1, "the outage was not logged exactly once"
        assert "accepting again" in log and "uncaught exception" not in log
        assert rest_get(ctl.rest_url, "/v1/health")["status"] == "ok"
    finally:
        ctl.stop()


def _patient_tls(ctl, ca_pem: str) -> ssl.SSLSocket:
    """A TLS connection that waits long for the handshake: it sits in the listen backlog meanwhile."""
    return ssl_client_context(ca_pem).wrap_socket(tcp(ctl, timeout=30))


def test_odd_reports_from_an_authenticated_agent_do_not_break_the_controller(world):
    """A report is the agent's own snapshot, so it may change what the controller believes (the VMs
    its bridge publishes); odd content must still never crash anything or end the connection."""
    rng = random.Random(SEED + 4)
    credentials = Credentials(world.ctl, world.ca_pem, "reporter")
    reporter = LiveAgent(world.ctl, world.ca_pem, credentials)
    reporter.start()
    try:
        reporter.wait_welcomed()
        keys = [VM_ID, ATTACHED_MAC, LABELS_KEY, IPS_KEY, "iface-id", "other"]
        values = ["web1", "02:00:00:00:00:0a", "role=web", "10.0.0.5", "", "x" * 300, "role=", "=", "a=b,c", "10.0.0.0/8",
                  "02:00:00:00:00:0A", "ff:ff:ff:ff:ff:ff", "web1\n", "é", "10.0.0.5,10.0.0.5", "::1", "999.1.1.1"]  # fmt: skip
        for _ in range(300):
            interfaces = [
                {"name": rng.choice(["vnet0", "vnet1", "", "x" * 100]),
                 "external_ids": {rng.choice(keys): rng.choice(values) for _ in range(rng.randint(0, 5))}}
                for _ in range(rng.randint(0, 4))
            ]  # fmt: skip
            tunnels = [{**TUNNEL, "latest_handshake": rng.choice([0.0, 1e308, -1.0]), "rx_bytes": 2**64 - 1}]
            reporter.outbox.put(protocol.encode({**REPORT, "interfaces": interfaces, "tunnels": tunnels}))
        reporter.outbox.put(protocol.encode(REPORT))  # and nothing published any more
        deadline = time.monotonic() + 20
        while not reporter.outbox.empty() and reporter.ended is None and time.monotonic() < deadline:
            time.sleep(0.05)
        reporter.assert_alive()
        world.agent.assert_alive()
        assert world.ctl.proc.poll() is None and rest_get(world.ctl.rest_url, "/v1/health")["status"] == "ok"
        assert world.ctl.api("GET", "/v1/agents/reporter")["connected"]
        log = Path(world.ctl.log_path).read_text(errors="replace")
        assert "Traceback" not in log and "uncaught exception" not in log, "a report crashed something"
    finally:
        reporter.stopping.set()
        reporter.join(5)
