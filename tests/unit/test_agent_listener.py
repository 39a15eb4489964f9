"""The agent listener's guards, without sockets: accepting survives running out of descriptors,
connections not yet authenticated are capped per client and in all, refusals cannot flood the log,
a hello's facts are checked before they become flows, and copies of messages (a second hello on a
connection, an `applied` for a config never sent) are refused with no state change."""

from __future__ import annotations

import errno
import json
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from controller import agent_server, listeners
from controller.agent_server import AgentConnection, ClientSlots, QuietLog
from controller.agents import AgentError, check_hello
from controller.listeners import accept_forever
from crypto import ca, wgkeys
from tests.api_stub import make_api

LOG = logging.getLogger("test.agent_listener")


# -- accepting ----------------------------------------------------------------------------------------
class ScriptedListener:
    """accept() plays a script: an exception to raise, or a (socket, address) to return. When the
    script is done the loop is told to stop."""

    def __init__(self, script: list) -> None:
        self.script = list(script)

    def accept(self):
        step = self.script.pop(0)
        if isinstance(step, BaseException):
            raise step
        return step

    def running(self) -> bool:
        return bool(self.script)


class FakeSocket:
    def __init__(self, name: str) -> None:
        self.name, self.closed = name, False

    def close(self) -> None:
        self.closed = True


def test_the_accept_loop_survives_running_out_of_descriptors_and_logs_it_once(caplog, monkeypatch):
    monkeypatch.setattr(listeners, "ROOM_MAKERS", {})  # no listener has a connection to close
    first, second, third = FakeSocket("a"), FakeSocket("b"), FakeSocket("c")
    emfile, enfile = OSError(errno.EMFILE, "Too many open files"), OSError(errno.ENFILE, "Too many open files in system")
    listener = ScriptedListener(
        [emfile, emfile, emfile, emfile, emfile, emfile, (first, ("192.0.2.1", 1)), enfile, (second, ("192.0.2.2", 2)),
         ValueError("something else"), (third, ("192.0.2.3", 3))]
    )  # fmt: skip
    handled, slept = [], []
    with caplog.at_level(logging.WARNING, logger="goldilocks.listeners"):
        accept_forever(listener.accept, lambda sock, address: handled.append(sock.name), "agents", slept.append, listener.running)
    assert handled == ["a", "b", "c"], "a connection after the errors was not served"
    # Backing off, doubling up to a ceiling, and starting over once accepting works again.
    assert slept == [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 0.05, listeners.ACCEPT_BACKOFF_MIN]
    out_of_fds = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert [r.getMessage().split("(")[1][:6] for r in out_of_fds] == ["EMFILE", "ENFILE"], "one line per episode"
    assert sum("accepting again" in r.getMessage() for r in caplog.records) == 2


def test_a_handler_that_fails_closes_the_socket_and_the_loop_goes_on():
    bad, good = FakeSocket("bad"), FakeSocket("good")
    listener = ScriptedListener([(bad, ("192.0.2.1", 1)), (good, ("192.0.2.2", 2))])
    served = []

    def handle(sock, address):
        if sock is bad:
            raise RuntimeError("cannot spawn")
        served.append(sock.name)

    accept_forever(listener.accept, handle, "agents", lambda seconds: None, listener.running)
    assert bad.closed and served == ["good"]


# -- slots for connections not yet authenticated ------------------------------------------------------
def test_each_client_and_all_clients_together_hold_a_bounded_number_of_waiting_connections():
    slots = ClientSlots(per_client=3, total=5)
    assert [slots.take("192.0.2.1") for _ in range(3)] == [None, None, None]
    assert "3 connections from this address" in slots.take("192.0.2.1")
    assert slots.take("192.0.2.2") is None and slots.take("192.0.2.2") is None
    assert "5 connections are waiting" in slots.take("192.0.2.3"), "the total cap"
    slots.release("192.0.2.1")
    assert slots.take("192.0.2.3") is None, "a released slot is free for anyone"
    for client, count in (("192.0.2.1", 2), ("192.0.2.2", 2), ("192.0.2.3", 1)):
        for _ in range(count):
            slots.release(client)
    slots.release("192.0.2.9")  # never held: no effect
    assert slots.open == {} and slots.held == 0


@pytest.mark.parametrize("nofile, budget", [(1024, 256), (20000, 5000), (40, 16), (0, 16384)])
def test_waiting_connections_may_use_a_quarter_of_the_descriptors(nofile, budget):
    assert agent_server.unauthenticated_budget(nofile) == budget


def test_refusals_are_logged_a_few_at_a_time_and_the_rest_counted(caplog):
    now = [0.0]
    quiet = QuietLog(LOG, burst=3, window=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        for i in range(50):
            quiet.warning("refused %d", i)
        now[0] = 10.5
        quiet.warning("refused %d", 50)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["refused 0", "refused 1", "refused 2", "47 more agent connections refused in 10 s (not logged one by one)",
                     "refused 50"]  # fmt: skip


# -- what an authenticated agent may say ---------------------------------------------------------------
def hello(hypervisor: str = "hv1", **changes) -> dict:
    message = {
        "type": "hello", "hypervisor": hypervisor, "software": "test",
        "wg_public_key": wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key())), "listen_port": 51820,
        "bridge": "br-hv1", "underlay": {"ip": "192.0.2.1", "mac": "02:AA:00:00:00:01", "port": "ul1"},
    }  # fmt: skip
    for key, value in changes.items():
        if key in message["underlay"]:
            message["underlay"] = {**message["underlay"], key: value}
        else:
            message[key] = value
    return message


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"listen_port": 0}, "listen_port"),
        ({"listen_port": 65536}, "listen_port"),
        ({"listen_port": -1}, "listen_port"),
        ({"ip": "not-an-ip"}, "underlay.ip"),
        ({"ip": "2001:db8::1"}, "underlay.ip"),  # the endpoint flows match IPv4 only
        ({"ip": "010.0.0.1"}, "underlay.ip"),
        ({"ip": "0.0.0.0"}, "underlay.ip"),
        ({"ip": "224.0.0.5"}, "underlay.ip"),
        ({"ip": "255.255.255.255"}, "underlay.ip"),
        ({"mac": "zz:00:00:00:00:01"}, "underlay.mac"),
        ({"mac": "02:00:00:00:00:01\n"}, "underlay.mac"),
        ({"mac": "01:00:5e:00:00:01"}, "underlay.mac"),
        ({"mac": "00:00:00:00:00:00"}, "underlay.mac"),
        ({"bridge": ""}, "bridge"),
        ({"bridge": "br 0"}, "bridge"),
        ({"bridge": "x" * 65}, "bridge"),
        ({"port": "a/b"}, "underlay.port"),
        ({"port": "p\x00"}, "underlay.port"),
        ({"port": "pé"}, "underlay.port"),
    ],
)
def test_a_hello_whose_facts_could_not_become_flows_is_refused(changes, field):
    with pytest.raises(AgentError) as refused:
        check_hello(hello(**changes))
    assert refused.value.code == "hello" and refused.value.message.startswith(f"hello.{field}:")
    for value in changes.values():
        if isinstance(value, str) and len(value) > 1:
            assert value not in refused.value.message, "the refusal echoes a value from the frame"


def test_a_sound_hello_passes_the_checks():
    check_hello(hello())
    check_hello(hello(listen_port=1, ip="10.0.0.1", mac="02:00:00:00:00:01", bridge="s1", port="hv1-eth0"))


class FakeSession:
    def __init__(self) -> None:
        self.hypervisor: str | None = None
        self.messages: list[dict] = []
        self.closed = False

    def send(self, message: dict) -> None:
        self.messages.append(message)

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def agents(tmp_path):
    app, client = make_api(tmp_path)
    answer = client.call("POST", "/v1/agents/tokens", {})
    _, csr = ca.make_key_and_csr("hv1")
    cert_pem, _ = app.agents.enroll(answer.json["token"], "hv1", csr)
    cert_der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    return app, app.agents.authenticate(cert_der)


def stored_agents(app) -> list:
    return [tuple(row) for row in app.store.db.execute("SELECT * FROM agents ORDER BY hypervisor")]


def test_a_refused_hello_changes_nothing(agents):
    app, identity = agents
    before = stored_agents(app)
    session = FakeSession()
    with pytest.raises(AgentError):
        app.agents.hello(session, identity, hello(ip="not-an-ip"))
    assert stored_agents(app) == before and app.agents.agents["hv1"].info is None
    assert app.agents.sessions == {} and session.messages == []


def test_an_applied_for_a_config_never_sent_is_refused(agents):
    app, identity = agents
    session = FakeSession()
    app.agents.hello(session, identity, hello())
    (config,) = [m for m in session.messages if m["type"] == "config"]
    for seq in (config["seq"] + 1, 0, 2**63):
        with pytest.raises(AgentError) as refused:
            app.agents.applied("hv1", {"type": "applied", "seq": seq, "ok": True})
        assert refused.value.code == "order"
    assert "hv1" not in app.agents.applied_seq
    app.agents.applied("hv1", {"type": "applied", "seq": config["seq"], "ok": True})
    assert app.agents.applied_seq["hv1"] == config["seq"]


def test_a_second_hello_on_one_connection_is_refused_and_keeps_the_first(agents):
    app, identity = agents
    connection = AgentConnection(app.agents, FakeSocket("tls"), "192.0.2.1:40000", context=None)
    connection.send = lambda message: None  # no socket behind it
    first = hello()
    connection._dispatch(identity, first)
    info = app.agents.agents["hv1"].info
    stored = stored_agents(app)
    with pytest.raises(AgentError) as refused:
        connection._dispatch(identity, hello(wg_public_key=wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))))
    assert refused.value.code == "order"
    assert app.agents.sessions["hv1"] is connection and app.agents.agents["hv1"].info == info
    assert stored_agents(app) == stored and json.loads(stored[0][-1])["public_key"] == first["wg_public_key"]


def test_messages_before_hello_are_refused(agents):
    app, identity = agents
    connection = AgentConnection(app.agents, FakeSocket("tls"), "192.0.2.1:40000", context=None)
    report = {"type": "report", "interfaces": [], "tunnels": [], "wg_running": True}
    with pytest.raises(AgentError) as refused:
        connection._dispatch(identity, report)
    assert refused.value.code == "order" and app.agents.agents["hv1"].report is None


def test_refusals_and_logs_do_not_carry_what_an_agent_wrote(agents, caplog):
    app, identity = agents
    with pytest.raises(AgentError) as refused:
        app.agents.hello(FakeSession(), identity, hello(hypervisor="impostor-" + "x" * 5000))
    assert refused.value.code == "identity" and "impostor" not in refused.value.message
    app.agents.hello(FakeSession(), identity, hello())
    seq = app.agents.config_seq["hv1"]
    with caplog.at_level(logging.ERROR, logger="goldilocks.agents"):
        app.agents.applied("hv1", {"type": "applied", "seq": seq, "ok": False, "error": "wg failed\n" + "y" * 100_000})
    (line,) = [r.getMessage() for r in caplog.records if "could not apply" in r.getMessage()]
    assert len(line) < 400 and "\n" not in line
