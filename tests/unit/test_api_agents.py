"""Agents, tunnels and keys through the REST layer: enrollment tokens (admin only, shown once,
used once, expiring), the agent list, revocation, identity and key rotation, the tunnel list,
explain of encrypt flows, and no secret (token, pre-shared key) in any answer, the audit log or
the log. Agent sessions are fakes that record what the controller sends them."""

from __future__ import annotations

import base64
import hashlib
import logging
import re

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller import audit
from controller.agents import AgentError
from crypto import ca, wgkeys
from tests.api_stub import make_api
from tests.fakeoftable import build_leaf_spine

AGENT_OPERATIONS = {
    ("POST", "/v1/agents/tokens"),
    ("GET", "/v1/agents"),
    ("GET", "/v1/agents/{hypervisor}"),
    ("DELETE", "/v1/agents/{hypervisor}"),
    ("POST", "/v1/agents/{hypervisor}/rotate-identity"),
    ("GET", "/v1/tunnels"),
    ("POST", "/v1/keys/rotate"),
}
FINGERPRINT = re.compile(r"sha256:[0-9a-f]{16}")


class Clock:
    """The agent manager's clock, moved by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeSession:
    """An agent connection: records what the controller sends and whether it was closed."""

    def __init__(self) -> None:
        self.hypervisor: str | None = None
        self.messages: list[dict] = []
        self.closed = False

    def send(self, message: dict) -> None:
        self.messages.append(message)

    def close(self) -> None:
        self.closed = True

    def of_type(self, kind: str) -> list[dict]:
        return [m for m in self.messages if m["type"] == kind]

    def psk(self) -> bytes:
        """The pre-shared key of the only peer in the last config."""
        (peer,) = self.of_type("config")[-1]["peers"]
        return peer["psk"]


class Recorder:
    """The admin client, keeping every answer it got: nothing secret may be in any of them."""

    def __init__(self, client) -> None:
        self.client = client
        self.answers: list = []

    def call(self, method, path, body=None, **kwargs):
        answer = self.client.call(method, path, body, **kwargs)
        self.answers.append(answer)
        return answer

    @property
    def contract(self):
        return self.client.contract


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def api(tmp_path, clock):
    app, client = make_api(tmp_path)
    app.agents.clock = clock
    return app, Recorder(client)


@pytest.fixture
def reader(api):
    answer = api[1].call("POST", "/v1/tokens", {"name": "dashboard", "role": "read-only"})
    assert answer.status == 201
    return answer.json["token"]


def issue(client, body: dict | None = None) -> dict:
    answer = client.call("POST", "/v1/agents/tokens", {} if body is None else body)
    assert answer.status == 201, answer.raw
    return answer.json


def enroll(app, client, hypervisor: str) -> bytes:
    """Enroll through a fresh token, as the agent would; the certificate in DER."""
    _, csr = ca.make_key_and_csr(hypervisor)
    cert_pem, _ = app.agents.enroll(issue(client)["token"], hypervisor, csr)
    return x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)


def connect(app, hypervisor: str, cert_der: bytes, bridge: str | None = None, address: int = 1) -> FakeSession:
    """An agent that connects with its certificate and says hello."""
    session = FakeSession()
    identity = app.agents.authenticate(cert_der)
    hello = {
        "type": "hello",
        "hypervisor": hypervisor,
        "software": "test",
        "wg_public_key": wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key())),
        "listen_port": 51820,
        "bridge": bridge or f"br-{hypervisor}",
        "underlay": {"ip": f"192.0.2.{address}", "mac": f"02:aa:00:00:00:{address:02x}", "port": f"ul{address}"},
    }
    app.agents.hello(session, identity, hello)
    return session


def paired(app, client) -> tuple[FakeSession, FakeSession]:
    """hv1 and hv2 enrolled and connected, and an encrypt rule needing their pair."""
    one = connect(app, "hv1", enroll(app, client, "hv1"), address=1)
    two = connect(app, "hv2", enroll(app, client, "hv2"), address=2)
    app.agents.set_needed([("hv1", "hv2")])
    return one, two


def report(app, hypervisor: str, peer: str, handshake: float) -> None:
    """The agent reports its tunnel to `peer` configured, with its latest handshake (0: never)."""
    tunnel = {"peer": peer, "port": "glt-x", "configured": True, "latest_handshake": handshake}
    tunnel |= {"rx_bytes": 10, "tx_bytes": 10, "drops": 0}
    app.agents.report(hypervisor, {"type": "report", "interfaces": [], "tunnels": [tunnel], "wg_running": True})


def secret_forms(secret: bytes) -> list[bytes]:
    """How a key could be spelled in an answer: raw, base64 (with and without padding, URL-safe)
    and hex."""
    encoded = [base64.b64encode(secret), base64.urlsafe_b64encode(secret)]
    return [secret, *encoded, *(e.rstrip(b"=") for e in encoded), secret.hex().encode(), secret.hex().upper().encode()]


def assert_nowhere(secret: bytes, texts: list[bytes]) -> None:
    for text in texts:
        for form in secret_forms(secret):
            assert form not in text, f"a secret ({form[:6]!r}...) is in {text[:120]!r}"


def audit_actions(client) -> list[str]:
    return [e["action"] for e in client.call("GET", "/v1/audit?limit=1000").json["entries"]]


def metric(client, name: str) -> float:
    text = client.call("GET", "/metrics").text
    (value,) = re.findall(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(value)


# -- enrollment tokens -------------------------------------------------------------------------------
def test_only_an_admin_may_issue_an_enrollment_token_and_readers_may_list(api, reader):
    app, client = api
    before = audit_actions(client)
    refused = client.call("POST", "/v1/agents/tokens", {}, token=reader)
    assert refused.status == 403 and "admin" in refused.json["error"]
    assert audit_actions(client) == before, "a refused request writes nothing"
    assert client.call("POST", "/v1/agents/tokens", {}, token="").status == 401
    assert client.call("GET", "/v1/agents", token=reader).json == {"agents": []}
    assert client.call("GET", "/v1/tunnels", token=reader).json["tunnels"] == []


def test_a_token_is_shown_once_and_then_only_by_fingerprint(api, clock):
    app, client = api
    issued = issue(client, {"ttl_seconds": 600})
    value = issued["token"]
    assert re.fullmatch(r"gle_[A-Za-z0-9_-]{43}", value), "256 random bits, URL-safe"
    assert FINGERPRINT.fullmatch(issued["fingerprint"])
    assert issued["expires"] == audit.iso_time(clock.now + 600)
    assert issued["agent_port"] is None, "the stub runs no agent listener"
    enroll_with = issued["token"]
    _, csr = ca.make_key_and_csr("hv1")
    app.agents.enroll(enroll_with, "hv1", csr)
    texts = [
        client.call(method, path).raw
        for method, path in [
            ("GET", "/v1/agents"),
            ("GET", "/v1/agents/hv1"),
            ("GET", "/v1/tunnels"),
            ("GET", "/v1/tokens"),
            ("GET", "/v1/audit?limit=1000"),
            ("GET", "/metrics"),
        ]
    ]
    digest = hashlib.sha256(value.encode()).hexdigest()
    for text in texts:
        assert value.encode() not in text and value[4:20].encode() not in text and digest.encode() not in text
    token_entry = next(e for e in client.call("GET", "/v1/audit").json["entries"] if e["action"] == "agent.token")
    assert token_entry["target"] == issued["fingerprint"] and token_entry["actor"] == "admin"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"ttl_seconds": 0}, "ttl_seconds"),
        ({"ttl_seconds": -1}, "ttl_seconds"),
        ({"ttl_seconds": "x"}, "ttl_seconds"),
        ({"ttl_seconds": "60"}, "ttl_seconds"),
        ({"ttl_seconds": True}, "ttl_seconds"),
        ({"ttl_seconds": None}, "ttl_seconds"),
        ({"ttl_seconds": 1e9}, "ttl_seconds"),
        ({"ttl_seconds": 604801}, "ttl_seconds"),
        ({"ttl_seconds": [60]}, "ttl_seconds"),
        ({"ttl": 60}, "ttl"),
        ({"ttl_seconds": 60, "hypervisor": "hv1"}, "hypervisor"),
        ([60], "body"),
    ],
    ids=lambda v: repr(v) if not isinstance(v, str) else v,
)
def test_a_bad_token_request_is_a_400_naming_the_field_and_issues_nothing(api, body, field):
    app, client = api
    before = audit_actions(client)
    answer = client.call("POST", "/v1/agents/tokens", body)
    assert answer.status == 400 and answer.json["field"] == field
    assert answer.json["error"].startswith(f"{field}:")
    assert audit_actions(client) == before


def test_the_token_request_takes_json_only_and_the_lifetime_bounds_are_inclusive(api, clock):
    app, client = api
    assert client.call("POST", "/v1/agents/tokens", raw=b"ttl=5", headers={"Content-Type": "text/plain"}).status == 415
    huge = b"{" + b" " * 70_000 + b"}"
    assert client.call("POST", "/v1/agents/tokens", raw=huge, headers={"Content-Type": "application/json"}).status == 413
    assert issue(client, {"ttl_seconds": 1})["expires"] == audit.iso_time(clock.now + 1)
    assert issue(client, {"ttl_seconds": 604800})["expires"] == audit.iso_time(clock.now + 604800)
    assert issue(client, {"ttl_seconds": 90.5})["expires"] == audit.iso_time(clock.now + 90.5)
    assert issue(client)["expires"] == audit.iso_time(clock.now + 3600), "an hour unless asked"


def test_the_ca_certificate_parses_matches_its_fingerprint_and_signs_what_enrollment_returns(api):
    app, client = api
    issued = issue(client)
    cert = x509.load_pem_x509_certificate(issued["ca_certificate"].encode())
    der = cert.public_bytes(serialization.Encoding.DER)
    assert issued["ca_fingerprint"] == "sha256:" + hashlib.sha256(der).hexdigest()[:16]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    _, csr = ca.make_key_and_csr("hv1")
    agent_pem, ca_pem = app.agents.enroll(issued["token"], "hv1", csr)
    assert ca_pem == issued["ca_certificate"]
    x509.load_pem_x509_certificate(agent_pem.encode()).verify_directly_issued_by(cert)


# -- enrollment ----------------------------------------------------------------------------------------
def test_a_token_enrolls_once(api):
    app, client = api
    token = issue(client)["token"]
    _, csr = ca.make_key_and_csr("hv1")
    app.agents.enroll(token, "hv1", csr)
    for hypervisor in ("hv1", "hv2"):
        _, again = ca.make_key_and_csr(hypervisor)
        with pytest.raises(AgentError) as refused:
            app.agents.enroll(token, hypervisor, again)
        assert refused.value.code == "token" and "already used" in refused.value.message
        assert token not in refused.value.message
    with pytest.raises(AgentError) as unknown:
        app.agents.enroll("gle_" + "A" * 43, "hv2", csr)
    assert unknown.value.code == "token"
    assert [a["hypervisor"] for a in client.call("GET", "/v1/agents").json["agents"]] == ["hv1"]


def test_an_expired_token_is_refused(api, clock):
    app, client = api
    short, spare = issue(client, {"ttl_seconds": 60})["token"], issue(client, {"ttl_seconds": 60})["token"]
    clock.now += 59
    _, csr = ca.make_key_and_csr("hv1")
    app.agents.enroll(spare, "hv1", csr)
    clock.now += 2
    _, csr = ca.make_key_and_csr("hv2")
    with pytest.raises(AgentError) as refused:
        app.agents.enroll(short, "hv2", csr)
    assert refused.value.code == "token" and "expired" in refused.value.message
    assert client.call("GET", "/v1/agents/hv2").status == 404


def test_an_enrolled_agent_is_listed_not_connected_until_it_says_hello(api):
    app, client = api
    cert = x509.load_der_x509_certificate(enroll(app, client, "hv1"))
    listing = client.call("GET", "/v1/agents").json["agents"]
    assert [a["hypervisor"] for a in listing] == ["hv1"]
    (agent,) = listing
    assert agent == client.call("GET", "/v1/agents/hv1").json
    assert agent["connected"] is False and agent["bridge"] is None and agent["underlay"] is None
    assert agent["wg_public_key_fingerprint"] is None and agent["last_report_age"] is None
    assert agent["index"] == 1
    assert agent["certificate_serial"] == f"{cert.serial_number:x}"
    assert client.call("GET", "/v1/agents/hv9").status == 404
    enrolled = next(e for e in client.call("GET", "/v1/audit").json["entries"] if e["action"] == "agent.enroll")
    assert enrolled["actor"] == "agent:hv1" and enrolled["target"] == "hv1"


def test_a_connected_agent_shows_its_bridge_underlay_and_key_fingerprint(api):
    app, client = api
    session = connect(app, "hv1", enroll(app, client, "hv1"), bridge="s11", address=7)
    agent = client.call("GET", "/v1/agents/hv1").json
    assert agent["connected"] is True and agent["bridge"] == "s11"
    assert agent["underlay"] == {"ip": "192.0.2.7", "mac": "02:aa:00:00:00:07", "port": "ul7"}
    assert FINGERPRINT.fullmatch(agent["wg_public_key_fingerprint"])
    welcome = session.of_type("welcome")[0]
    assert agent["tunnel_address"] == welcome["address"]
    assert metric(client, "goldilocks_agents_enrolled") == 1 and metric(client, "goldilocks_agents_connected") == 1


# -- revocation ----------------------------------------------------------------------------------------
def test_revoking_an_agent_removes_it_and_refuses_its_certificate(api):
    app, client = api
    cert_der = enroll(app, client, "hv1")
    assert app.agents.authenticate(cert_der).hypervisor == "hv1"
    assert client.call("DELETE", "/v1/agents/hv1").status == 204
    assert client.call("GET", "/v1/agents/hv1").status == 404
    assert client.call("GET", "/v1/agents").json == {"agents": []}
    assert client.call("DELETE", "/v1/agents/hv1").status == 404
    with pytest.raises(AgentError) as refused:
        app.agents.authenticate(cert_der)
    assert refused.value.code == "revoked"
    # Enrolling again takes a new token and gives a new certificate; the old one stays refused.
    enroll(app, client, "hv1")
    with pytest.raises(AgentError):
        app.agents.authenticate(cert_der)
    revoked = next(e for e in client.call("GET", "/v1/audit").json["entries"] if e["action"] == "agent.revoke")
    assert revoked["actor"] == "admin" and revoked["target"] == "hv1"


def test_revoking_a_connected_agent_closes_it_and_takes_it_out_of_its_peers_sets(api):
    app, client = api
    one, two = paired(app, client)
    assert two.psk() == one.psk()
    assert client.call("DELETE", "/v1/agents/hv1").status == 204
    assert one.closed
    assert two.of_type("config")[-1]["peers"] == [], "its peer is told at once"
    assert client.call("GET", "/v1/tunnels").json["tunnels"] == []
    assert metric(client, "goldilocks_agents_enrolled") == 1 and metric(client, "goldilocks_tunnels_down") == 0


def test_a_read_only_token_cannot_revoke_or_rotate(api, reader):
    app, client = api
    enroll(app, client, "hv1")
    for method, path in [
        ("DELETE", "/v1/agents/hv1"),
        ("POST", "/v1/agents/hv1/rotate-identity"),
        ("POST", "/v1/keys/rotate"),
    ]:
        assert client.call(method, path, token=reader).status == 403, path
    assert client.call("GET", "/v1/agents/hv1", token=reader).status == 200


# -- identity rotation ---------------------------------------------------------------------------------
def test_rotating_the_identity_of_an_agent_that_is_not_connected_is_a_409(api):
    app, client = api
    enroll(app, client, "hv1")
    answer = client.call("POST", "/v1/agents/hv1/rotate-identity")
    assert answer.status == 409 and "not connected" in answer.json["error"]
    assert client.call("POST", "/v1/agents/hv9/rotate-identity").status == 404
    assert "agent.rotate-identity" not in audit_actions(client)


def test_rotating_the_identity_of_a_connected_agent_starts_a_rotation(api):
    app, client = api
    session = connect(app, "hv1", enroll(app, client, "hv1"))
    answer = client.call("POST", "/v1/agents/hv1/rotate-identity")
    assert answer.status == 202 and answer.json["hypervisor"] == "hv1"
    assert session.of_type("rotate_identity") == [{"type": "rotate_identity", "rotation": answer.json["rotation"]}]
    assert client.call("GET", "/v1/agents/hv1").json["identity_rotation"] is True
    assert "agent.rotate-identity" in audit_actions(client)


# -- tunnels and keys --------------------------------------------------------------------------------
def test_a_needed_pair_is_one_tunnel_shown_by_fingerprint_and_age(api, clock):
    app, client = api
    one, two = paired(app, client)
    clock.now += 30
    listing = client.call("GET", "/v1/tunnels").json
    (tunnel,) = listing["tunnels"]
    assert (tunnel["a"], tunnel["b"], tunnel["needed"]) == ("hv1", "hv2", True)
    assert tunnel["state"] in ("pending", "down"), "no handshake yet"
    assert tunnel["psk_fingerprint"] == wgkeys.fingerprint(one.psk()) and tunnel["psk_age"] == 30
    assert set(tunnel["ends"]) == {"hv1", "hv2"} and all(e["agent_connected"] for e in tunnel["ends"].values())
    assert listing["psk_rotations"] == 0 and listing["psk_rotation_seconds"] == 3600
    created = next(e for e in client.call("GET", "/v1/audit").json["entries"] if e["action"] == "tunnel.create")
    assert created["target"] == "hv1|hv2" and created["actor"] == "controller"
    assert metric(client, "goldilocks_tunnels_pending") + metric(client, "goldilocks_tunnels_down") == 1
    assert metric(client, "goldilocks_tunnels_up") == 0


def test_tunnel_states_follow_the_agents_reports(api, clock):
    app, client = api
    paired(app, client)

    def state() -> str:
        return client.call("GET", "/v1/tunnels").json["tunnels"][0]["state"]

    assert state() == "down", "neither end reports it configured"
    report(app, "hv1", "hv2", 0.0)
    assert state() == "down", "one end is not enough"
    report(app, "hv2", "hv1", 0.0)
    assert state() == "pending"
    # The handshake time is the hypervisor's (here 1000 s behind): its age counts from when the
    # controller first saw it, so a skewed clock changes nothing.
    handshake = clock.now - 1000
    report(app, "hv2", "hv1", handshake)
    clock.now += 5
    report(app, "hv1", "hv2", 0.0)
    tunnel = client.call("GET", "/v1/tunnels").json["tunnels"][0]
    assert tunnel["state"] == "up" and tunnel["handshake_age"] == 5 and tunnel["rx_bytes"] == 20
    assert metric(client, "goldilocks_tunnels_up") == 1
    clock.now += 200
    report(app, "hv1", "hv2", 0.0)
    report(app, "hv2", "hv1", handshake)  # the same handshake, reported again
    assert state() == "pending", "a handshake older than 180 s is no session"
    clock.now += 10
    assert state() == "down", "reports older than 6 s say nothing: the agents may be gone"
    assert client.call("GET", "/v1/agents/hv1").json["wg_running"] is True


def test_rotating_the_keys_changes_every_psk_at_both_ends(api, clock):
    app, client = api
    one, two = paired(app, client)
    old = one.psk()
    before = client.call("GET", "/v1/tunnels").json["tunnels"][0]["psk_fingerprint"]
    clock.now += 100
    answer = client.call("POST", "/v1/keys/rotate")
    assert answer.status == 200 and answer.json == {"rotated": 1}
    new = one.psk()
    assert new != old and two.psk() == new
    listing = client.call("GET", "/v1/tunnels").json
    (tunnel,) = listing["tunnels"]
    assert tunnel["psk_fingerprint"] != before and tunnel["psk_fingerprint"] == wgkeys.fingerprint(new)
    assert tunnel["psk_age"] == 0 and listing["psk_rotations"] == 1
    assert metric(client, "goldilocks_psk_rotations_total") == 1
    rotated = next(e for e in client.call("GET", "/v1/audit").json["entries"] if e["action"] == "tunnel.psk-rotate")
    assert rotated["target"] == "hv1|hv2" and rotated["actor"] == "admin" and tunnel["psk_fingerprint"] in rotated["summary"]


def test_rotating_the_keys_with_no_tunnels_rotates_none(api):
    assert api[1].call("POST", "/v1/keys/rotate").json == {"rotated": 0}


def test_no_psk_or_token_reaches_an_answer_the_audit_log_or_the_log(api, reader, caplog):
    caplog.set_level(logging.DEBUG)
    app, client = api
    token = issue(client)["token"]
    issuing = client.answers[-1]  # the one answer that may hold the token
    _, csr = ca.make_key_and_csr("hv1")
    cert_pem, _ = app.agents.enroll(token, "hv1", csr)
    one = connect(app, "hv1", x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER))
    two = connect(app, "hv2", enroll(app, client, "hv2"), address=2)
    app.agents.set_needed([("hv1", "hv2")])
    psks = [one.psk()]
    client.call("POST", "/v1/keys/rotate")
    psks.append(one.psk())
    assert two.psk() == psks[-1] and psks[0] != psks[1]
    for method, path in [
        ("GET", "/v1/agents"),
        ("GET", "/v1/agents/hv1"),
        ("GET", "/v1/agents/hv2"),
        ("GET", "/v1/tunnels"),
        ("GET", "/v1/audit?limit=1000"),
        ("GET", "/v1/topology"),
        ("GET", "/metrics"),
        ("POST", "/v1/agents/hv1/rotate-identity"),
    ]:
        client.call(method, path)
    client.call("GET", "/v1/tunnels", token=reader)
    client.call("DELETE", "/v1/agents/hv2")
    client.call("GET", "/v1/audit?limit=1000")
    texts = [answer.raw for answer in client.answers if answer is not issuing] + [caplog.text.encode()]
    for psk in psks:
        assert_nowhere(psk, texts)
    assert all(token.encode() not in text for text in texts)
    assert set(audit_actions(client)) >= {"agent.token", "agent.enroll", "tunnel.create", "tunnel.psk-rotate", "agent.revoke"}


# -- explain --------------------------------------------------------------------------------------------
@pytest.fixture
def fabric_api(tmp_path, clock):
    """Two hypervisors with two VMs each and tunnel ports between them, web on the first and db on the second."""
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2, tunnels=True)
    app, client = make_api(tmp_path, fabric.topo)
    app.agents.clock = clock
    vms = {"web1": fabric.vms[0], "web2": fabric.vms[1], "db1": fabric.vms[2]}
    for name, host in vms.items():
        tier = "db" if name.startswith("db") else "web"
        assert client.call("PUT", f"/v1/vms/{name}", {"macs": [host.mac], "labels": {"tier": tier}}).status == 201
    client.call("PUT", "/v1/vms/db9", {"macs": ["02:00:00:00:00:99"], "labels": {"tier": "db"}})
    rule = {"name": "web-db", "src": "tier=web", "dst": "any", "action": "encrypt"}
    assert client.call("POST", "/v1/policies", rule).status == 201
    return fabric, app, client


def encryption(client, src: str, dst: str) -> dict:
    answer = client.call("GET", f"/v1/explain?src={src}&dst={dst}")
    assert answer.status == 200 and answer.json["action"] == "encrypt" and answer.json["effective_action"] == "allow"
    return answer.json["encryption"]


def test_explain_says_how_an_encrypt_flow_travels_and_that_it_fails_closed(fabric_api, clock):
    fabric, app, client = fabric_api
    local = encryption(client, "web1", "web2")
    assert (local["path"], local["delivered"]) == ("local", True)
    unseen = encryption(client, "web1", "db9")
    assert (unseen["path"], unseen["delivered"]) == ("unknown", False)
    no_agent = encryption(client, "web1", "db1")
    assert (no_agent["path"], no_agent["delivered"], no_agent["tunnel"]) == ("none", False, None)
    assert "fail closed" in no_agent["why"]
    # Agents on both hypervisors, indexes in the order of the fabric's tunnel ports.
    names = {}
    for n, dpid in enumerate(fabric.hypervisors, start=1):
        names[dpid] = f"hv{n}"
        connect(app, f"hv{n}", enroll(app, client, f"hv{n}"), bridge=fabric.topo.switches[dpid].name, address=n)
    no_tunnel = encryption(client, "web1", "db1")
    assert (no_tunnel["src_hypervisor"], no_tunnel["dst_hypervisor"]) == ("hv1", "hv2")
    assert (no_tunnel["path"], no_tunnel["delivered"]) == ("none", False)
    app.agents.set_needed([("hv1", "hv2")])
    down = encryption(client, "web1", "db1")
    assert (down["path"], down["tunnel"], down["tunnel_state"], down["delivered"]) == ("tunnel", "hv1|hv2", "down", False)
    report(app, "hv1", "hv2", clock.now)
    report(app, "hv2", "hv1", clock.now)
    up = encryption(client, "web1", "db1")
    assert (up["tunnel_state"], up["delivered"]) == ("up", True)
    kinds = {p["kind"] for s in client.call("GET", "/v1/topology").json["switches"] for p in s["ports"]}
    assert "tunnel" in kinds
    client.call("DELETE", "/v1/agents/hv2")
    revoked = encryption(client, "web1", "db1")
    assert (revoked["path"], revoked["delivered"]) == ("none", False), "a revoked agent's VMs are cut off"
    allowed = client.call("GET", "/v1/explain?src=db1&dst=web1").json
    assert allowed["action"] == "allow" and allowed["encryption"] is None


# -- the contract --------------------------------------------------------------------------------------
def test_every_agent_operation_answers_as_documented(api):
    """The client checks every answer against docs/openapi.yaml; here each new operation is called
    at least once, with its success and its documented errors."""
    app, client = api
    session = connect(app, "hv1", enroll(app, client, "hv1"))
    connect(app, "hv2", enroll(app, client, "hv2"), address=2)
    app.agents.set_needed([("hv1", "hv2")])
    assert session.hypervisor == "hv1"
    for method, path, body, status in [
        ("POST", "/v1/agents/tokens", {"ttl_seconds": 120}, 201),
        ("POST", "/v1/agents/tokens", {"ttl_seconds": 0}, 400),
        ("GET", "/v1/agents", None, 200),
        ("GET", "/v1/agents/hv1", None, 200),
        ("GET", "/v1/agents/nope", None, 404),
        ("POST", "/v1/agents/hv1/rotate-identity", None, 202),
        ("POST", "/v1/agents/nope/rotate-identity", None, 404),
        ("GET", "/v1/tunnels", None, 200),
        ("POST", "/v1/keys/rotate", None, 200),
        ("DELETE", "/v1/agents/hv2", None, 204),
        ("DELETE", "/v1/agents/hv2", None, 404),
        ("PUT", "/v1/agents/hv1", {}, 405),
    ]:
        answer = client.call(method, path, body)
        assert answer.status == status, f"{method} {path}: {answer.status} {answer.raw[:200]!r}"
    assert AGENT_OPERATIONS <= client.contract.exercised
    documented = {op for op in client.contract.operations() if op[1].startswith(("/v1/agents", "/v1/tunnels", "/v1/keys"))}
    assert documented == AGENT_OPERATIONS


# ---------------------------------------------------------------------------
# The agent manager's lifecycle: configs only on change, idle teardown, make-before-break rotation
# ---------------------------------------------------------------------------
def configs(session: FakeSession) -> list[dict]:
    return [m for m in session.messages if m["type"] == "config"]


def test_a_config_is_sent_only_when_an_agent_s_peers_change(api):
    app, client = api
    one, two = paired(app, client)
    sent = len(configs(one)), len(configs(two))
    app.agents.set_needed([("hv1", "hv2")])
    app.agents.push_configs()
    assert (len(configs(one)), len(configs(two))) == sent, "nothing changed: nothing sent"
    (peer,) = configs(one)[-1]["peers"]
    assert (peer["peer"], peer["port"], peer["tunnel_ip"]) == ("hv2", "glvx1x2", "100.127.0.2")
    assert configs(two)[-1]["peers"][0]["vni"] == peer["vni"], "both ends of a pair use one VNI"


def test_a_pair_no_rule_needs_is_kept_for_the_idle_time_then_torn_down(api, clock):
    app, client = api
    one, two = paired(app, client)
    app.agents.set_needed([])
    app.agents.tick()
    assert ("hv1", "hv2") in app.agents.pairs, "kept while idle"
    clock.now += 299
    app.agents.tick()
    assert ("hv1", "hv2") in app.agents.pairs
    app.agents.set_needed([("hv1", "hv2")])  # needed again: the idle clock stops
    clock.now += 10
    app.agents.set_needed([])
    clock.now += 299
    app.agents.tick()
    assert ("hv1", "hv2") in app.agents.pairs, "the idle time starts again"
    clock.now += 2
    app.agents.tick()
    assert ("hv1", "hv2") not in app.agents.pairs
    assert configs(one)[-1]["peers"] == [] and configs(two)[-1]["peers"] == []
    assert client.call("GET", "/v1/tunnels").json["tunnels"] == []
    assert any(e["action"] == "tunnel.delete" for e in client.call("GET", "/v1/audit").json["entries"])


def test_identity_rotation_gives_the_peers_the_new_key_before_the_agent_switches(api, clock):
    app, client = api
    one, two = paired(app, client)
    rotation = app.agents.rotate_identity("hv1")
    assert one.messages[-1] == {"type": "rotate_identity", "rotation": rotation}
    new_key = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
    app.agents.new_identity("hv1", {"type": "identity", "rotation": rotation, "public_key": new_key})
    assert configs(two)[-1]["peers"][0]["public_key"] == new_key, "the peer learns the new key first"
    assert not any(m["type"] == "switch_identity" for m in one.messages), "not before the peer confirmed"
    app.agents.applied("hv2", {"type": "applied", "seq": configs(two)[-1]["seq"], "ok": True})
    assert one.messages[-1] == {"type": "switch_identity", "rotation": rotation}
    app.agents.identity_switched("hv1", {"type": "identity_switched", "rotation": rotation})
    agent = client.call("GET", "/v1/agents/hv1").json
    assert agent["wg_public_key_fingerprint"] == wgkeys.fingerprint(wgkeys.decode(new_key)) and not agent["identity_rotation"]
    assert metric(client, "goldilocks_identity_rotations_total") == 1


def test_identity_rotation_switches_anyway_when_a_peer_never_confirms(api, clock):
    app, client = api
    one, two = paired(app, client)
    rotation = app.agents.rotate_identity("hv1")
    new_key = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
    app.agents.new_identity("hv1", {"type": "identity", "rotation": rotation, "public_key": new_key})
    app.agents.tick()
    assert not any(m["type"] == "switch_identity" for m in one.messages)
    clock.now += 2.5
    app.agents.tick()
    assert one.messages[-1] == {"type": "switch_identity", "rotation": rotation}


def test_metrics_say_whether_a_compile_is_due(api):
    """A benchmark or an operator waiting for the controller to catch up cannot tell from the flows
    alone: a compile of a large fabric can run for seconds with no flow-mod out yet."""
    app, client = api
    assert metric(client, "goldilocks_compile_pending") == 0
    app._compile_pending = True
    assert metric(client, "goldilocks_compile_pending") == 1
