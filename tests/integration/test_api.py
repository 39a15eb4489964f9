"""The REST API of a real controller process over HTTP on loopback, with no switches: tokens refused and
accepted, CRUD round trips, restart, bad input that changes nothing, explain, the inventory file,
and every answer checked against docs/openapi.yaml."""

from __future__ import annotations

import json
import os
import signal
import stat
from pathlib import Path

import pytest

from apps.context import PolicyState
from apps.inventory import vm_from_json
from controller.store import Store
from mininet_scenarios.harness import ControllerProcess
from tests.api_contract import Contract, HttpClient, visible_state

INVENTORY = """\
# VMs known before the network sees them
vms:
  web1:
    macs: ["02:00:00:00:00:01"]
    ips: [10.0.0.1]
    labels: {tenant: blue, tier: web}
  db1:
    macs: ["02:00:00:00:00:02"]
    ips: [10.0.0.2]
    labels: {tenant: blue, tier: db, sensitivity: pci}
"""
WEB_TO_DB = {"name": "web-db", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "encrypt"}


@pytest.fixture(scope="session", autouse=True)
def environment():
    """These tests only talk to a controller over loopback: they need no Open vSwitch, Mininet or
    root, so they override the integration suite's environment check."""


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    state = tmp_path_factory.mktemp("api-state")
    inventory = tmp_path_factory.mktemp("api-inventory") / "inventory.yaml"
    inventory.write_text(INVENTORY)
    ctl = ControllerProcess(state_dir=str(state), extra_args=["--inventory", str(inventory)]).start()
    try:
        yield ctl
    finally:
        ctl.stop()


@pytest.fixture
def client(controller):
    return HttpClient(controller.rest_url, Contract(), controller.admin_token)


def test_the_inventory_file_is_loaded_at_start(controller, client):
    vms = {vm["name"]: vm for vm in client.call("GET", "/v1/vms").json["vms"]}
    assert vms["web1"]["labels"] == {"tenant": "blue", "tier": "web"} and vms["web1"]["ips"] == ["10.0.0.1"]
    assert vms["db1"]["labels"]["sensitivity"] == "pci" and vms["db1"]["location"] is None
    loads = [e for e in client.call("GET", "/v1/audit?limit=1000").json["entries"] if e["action"] == "inventory.load"]
    assert len(loads) == 1 and loads[0]["actor"] == "inventory-file" and loads[0]["target"].endswith("inventory.yaml")
    assert "db1" in loads[0]["summary"] and "web1" in loads[0]["summary"]


def test_the_admin_token_file_is_owner_only(controller):
    token_file = Path(controller.state_dir, "admin.token")
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    assert "admin token" in controller.log_tail(200) and str(token_file) in Path(controller.log_path).read_text()


def test_requests_without_a_valid_token_get_401_and_read_only_tokens_get_403_on_writes(client):
    for path in ("/v1/health", "/metrics"):
        assert client.call("GET", path, token="").status == 200, f"{path} is open"
    assert client.call("GET", "/v1/openapi.json", token="").status == 401
    for method, path in (("GET", "/v1/vms"), ("GET", "/v1/topology"), ("GET", "/v1/audit"), ("DELETE", "/v1/vms/web1")):
        for header in (None, "Bearer glk_wrong", "Basic YWRtaW46eA=="):
            answer = client.call(method, path, token="", headers={"Authorization": header} if header else {})
            assert answer.status == 401, (method, path, header)
            assert answer.headers["www-authenticate"].startswith('Bearer realm="goldilocks"')
    issued = client.call("POST", "/v1/tokens", {"name": "viewer", "role": "read-only"})
    reader = issued.json["token"]
    before = visible_state(client)
    for method, path, body in (
        ("PUT", "/v1/vms/web9", {"macs": ["02:00:00:00:00:09"]}),
        ("PATCH", "/v1/vms/web1/labels", {"set": {"x": "y"}}),
        ("DELETE", "/v1/vms/web1", None),
        ("POST", "/v1/policies", WEB_TO_DB),
        ("PUT", "/v1/policies/default", {"default_action": "deny"}),
        ("POST", "/v1/tokens", {"name": "escalate", "role": "admin"}),
        ("DELETE", "/v1/tokens/viewer", None),
        ("GET", "/v1/tokens", None),
    ):
        assert client.call(method, path, body, token=reader).status == 403, (method, path)
    assert visible_state(client) == before
    assert client.call("GET", "/v1/vms", token=reader).status == 200
    assert client.call("GET", "/v1/explain?src=web1&dst=db1", token=reader).status == 200
    assert client.call("DELETE", "/v1/tokens/viewer").status == 204
    assert client.call("GET", "/v1/vms", token=reader).status == 401, "a revoked token stops working at once"


def test_vm_rule_and_token_round_trips(client):
    vm = {"macs": ["02:00:00:00:00:31"], "ips": ["10.0.0.31"], "labels": {"tenant": "red", "tier": "app"}}
    assert client.call("PUT", "/v1/vms/app1", vm).status == 201
    assert client.call("GET", "/v1/vms/app1").json == {"name": "app1", **vm, "location": None, "source": "api"}
    patched = client.call("PATCH", "/v1/vms/app1/labels", {"set": {"tier": "cache"}, "remove": ["tenant"]})
    assert patched.json["labels"] == {"tier": "cache"}
    assert client.call("PUT", "/v1/vms/app1", {**vm, "labels": {"tier": "app"}}).status == 200

    assert client.call("POST", "/v1/policies", WEB_TO_DB).status == 201
    assert (
        client.call(
            "POST", "/v1/policies?position=0", {"name": "first", "src": "any", "dst": "tier=app", "action": "deny"}
        ).status
        == 201
    )
    assert client.call("GET", "/v1/policies/order").json == {"order": ["first", "web-db"]}
    assert client.call("PUT", "/v1/policies/order", {"order": ["web-db", "first"]}).json == {"order": ["web-db", "first"]}
    replaced = client.call(
        "PUT", "/v1/policies/first", {"src": "any", "dst": "tier=app", "services": ["udp/53"], "action": "allow"}
    )
    assert replaced.json == {
        "name": "first",
        "src": "any",
        "dst": "tier=app",
        "services": ["udp/53"],
        "action": "allow",
        "position": 1,
    }
    assert client.call("GET", "/v1/policies/first").json == replaced.json
    assert client.call("PUT", "/v1/policies/default", {"default_action": "deny"}).json == {"default_action": "deny"}
    assert client.call("GET", "/v1/policies").json["default_action"] == "deny"

    token = client.call("POST", "/v1/tokens", {"name": "automation", "role": "admin"}).json
    assert client.call("GET", "/v1/tokens/automation").json == {k: v for k, v in token.items() if k != "token"}
    assert client.call("DELETE", "/v1/policies/first", token=token["token"]).status == 204
    assert client.call("GET", "/v1/audit?limit=1").json["entries"][0]["actor"] == "automation"
    assert client.call("DELETE", "/v1/tokens/automation").status == 204
    assert client.call("DELETE", "/v1/vms/app1").status == 204
    assert client.call("GET", "/v1/vms/app1").status == 404
    assert client.call("PUT", "/v1/policies/default", {"default_action": "allow"}).status == 200
    assert client.call("DELETE", "/v1/policies/web-db").status == 204


BAD_REQUESTS = [
    # (method, path, body or raw bytes, content type, status, field)
    ("PUT", "/v1/vms/web1", b'{"macs": ["02:00:00:00:00:01"', "application/json", 400, "body"),
    ("PUT", "/v1/vms/web1", {"macs": ["02:00:00:00:00:01"], "colour": "red"}, None, 400, "colour"),
    ("PUT", "/v1/vms/web1", {"macs": ["not-a-mac"]}, None, 400, "macs"),
    ("PUT", "/v1/vms/web1", {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.256"]}, None, 400, "ips"),
    ("PUT", "/v1/vms/web1", {"macs": ["02:00:00:00:00:01"], "labels": {"tier": 1}}, None, 400, "labels.tier"),
    ("PUT", "/v1/vms/web2", {"macs": ["02:00:00:00:00:02"]}, None, 409, "macs"),
    ("PUT", "/v1/vms/web2", {"macs": ["02:00:00:00:00:22"], "ips": ["10.0.0.1"]}, None, 409, "ips"),
    ("PUT", "/v1/vms/web1", b'{"macs": ["02:00:00:00:00:01"]}', "text/plain", 415, "Content-Type"),
    ("PATCH", "/v1/vms/web1/labels", {"set": {"a": "b"}, "remove": ["a"]}, None, 400, "remove"),
    ("POST", "/v1/policies", {**WEB_TO_DB, "src": "tier in (web"}, None, 400, "src"),
    ("POST", "/v1/policies", {**WEB_TO_DB, "services": ["tcp/0"]}, None, 400, "services"),
    ("POST", "/v1/policies", {**WEB_TO_DB, "action": "maybe"}, None, 400, "action"),
    ("POST", "/v1/policies", {**WEB_TO_DB, "name": "order"}, None, 400, "name"),
    ("POST", "/v1/policies?position=7", WEB_TO_DB, None, 400, "position"),
    ("PUT", "/v1/policies/order", {"order": ["nope"]}, None, 400, "order"),
    ("PUT", "/v1/policies/default", {"default_action": "encrypt"}, None, 400, "default_action"),
    ("POST", "/v1/tokens", {"name": "admin"}, None, 409, "name"),
    ("POST", "/v1/tokens", {"name": "x", "role": "superuser"}, None, 400, "role"),
    ("GET", "/v1/explain?src=web1&dst=db1&proto=gre", None, None, 400, "proto"),
    ("GET", "/v1/audit?limit=0", None, None, 400, "limit"),
]


def test_bad_input_gets_a_4xx_naming_the_field_and_changes_nothing(client):
    before = visible_state(client)
    for method, path, body, content_type, status, field in BAD_REQUESTS:
        raw = body if isinstance(body, bytes) else None
        headers = {"Content-Type": content_type} if content_type else {}
        answer = client.call(method, path, None if raw else body, raw=raw, headers=headers)
        assert (answer.status, answer.json.get("field")) == (status, field), (method, path, answer.json)
        assert field in answer.json["error"]
    assert visible_state(client) == before


def test_oversized_bodies_get_413_with_or_without_a_length(client):
    before = visible_state(client)
    padding = "x" * 100_000
    body = json.dumps({"macs": ["02:00:00:00:00:41"], "labels": {"pad": padding}}).encode()
    assert client.call("PUT", "/v1/vms/big", raw=body, headers={"Content-Type": "application/json"}).status == 413
    chunks = [body[i : i + 8192] for i in range(0, len(body), 8192)]
    chunked = client.call("PUT", "/v1/vms/big", headers={"Content-Type": "application/json"}, chunks=chunks)
    assert chunked.status == 413 and chunked.json["field"] == "body"
    small = json.dumps({"macs": ["02:00:00:00:00:41"]}).encode()
    accepted = client.call("PUT", "/v1/vms/small", headers={"Content-Type": "application/json"}, chunks=[small[:10], small[10:]])
    assert accepted.status == 201, "a chunked body within the limit is read whole"
    assert client.call("DELETE", "/v1/vms/small").status == 204
    assert visible_state(client)[:3] == before[:3]


def test_explain_over_http(client):
    client.call("POST", "/v1/policies", WEB_TO_DB)
    try:
        answer = client.call("GET", "/v1/explain?src=web1&dst=10.0.0.2&proto=tcp&dport=5432").json
        assert answer["rule"]["name"] == "web-db" and answer["dst"]["vm"] == "db1"
        assert (answer["action"], answer["effective_action"]) == ("encrypt", "allow")
        # Neither VM has been seen on a network: how the traffic would travel is not known yet.
        assert (answer["encryption"]["path"], answer["encryption"]["delivered"]) == ("unknown", False)
        assert answer["match"]["src_labels"] == {"tier": "web"} and answer["match"]["service"] == "tcp/5432"
        other = client.call("GET", "/v1/explain?src=web1&dst=02:aa:00:00:00:01&proto=tcp&dport=5432").json
        assert other["dst"]["labels"] is None and other["reason"] == "default" and other["action"] == "allow"
    finally:
        client.call("DELETE", "/v1/policies/web-db")


def test_every_documented_operation_answers_as_documented(client):
    steps = [
        ("GET", "/v1/health", None),
        ("GET", "/v1/openapi.json", None),
        ("GET", "/metrics", None),
        ("GET", "/v1/topology", None),
        ("GET", "/v1/switches/0000000000000001/flows", None),  # no switches here: a documented 404
        ("PUT", "/v1/vms/tour", {"macs": ["02:00:00:00:00:51"], "labels": {"tier": "tour"}}),
        ("GET", "/v1/vms", None),
        ("GET", "/v1/vms?unmanaged=1", None),
        ("GET", "/v1/vms/tour", None),
        ("PATCH", "/v1/vms/tour/labels", {"set": {"step": "two"}}),
        ("POST", "/v1/policies", {"name": "tour-a", "src": "tier=tour", "dst": "any", "action": "allow"}),
        ("PUT", "/v1/policies/tour-b", {"src": "any", "dst": "tier=tour", "action": "deny"}),
        ("GET", "/v1/policies", None),
        ("GET", "/v1/policies/tour-a", None),
        ("GET", "/v1/policies/order", None),
        ("PUT", "/v1/policies/order", {"order": ["tour-b", "tour-a"]}),
        ("GET", "/v1/policies/default", None),
        ("PUT", "/v1/policies/default", {"default_action": "allow"}),
        ("GET", "/v1/explain?src=tour&dst=web1&proto=icmp", None),
        ("POST", "/v1/tokens", {"name": "tour"}),
        ("GET", "/v1/tokens", None),
        ("GET", "/v1/tokens/tour", None),
        ("DELETE", "/v1/tokens/tour", None),
        ("POST", "/v1/alerts", {"vm": "tour", "severity": "low", "source": "tour", "signature": "a look around"}),
        ("GET", "/v1/alerts?vm=tour", None),
        ("POST", "/v1/quarantine", {"vm": "tour", "reason": "the tour"}),
        ("GET", "/v1/quarantine", None),
        ("GET", "/v1/quarantine/tour", None),
        ("DELETE", "/v1/quarantine/tour", None),
        ("PUT", "/v1/remediation", {"allow": [{"name": "dns", "to": "any", "services": ["udp/53"]}]}),
        ("GET", "/v1/remediation", None),
        ("POST", "/v1/agents/tokens", {"ttl_seconds": 60}),
        ("GET", "/v1/agents", None),
        ("GET", "/v1/agents/hv9", None),  # a documented 404
        ("POST", "/v1/agents/hv9/rotate-identity", None),  # a documented 404
        ("DELETE", "/v1/agents/hv9", None),  # a documented 404
        ("GET", "/v1/tunnels", None),
        ("POST", "/v1/keys/rotate", None),
        ("GET", "/v1/audit?limit=3", None),
        ("GET", "/v1/whoami", None),
        ("GET", "/v1/fabric", None),
        ("GET", "/ui", None),
        ("GET", "/ui/", None),
        ("GET", "/ui/cytoscape.min.js", None),
        ("DELETE", "/v1/policies/tour-a", None),
        ("DELETE", "/v1/policies/tour-b", None),
        ("DELETE", "/v1/vms/tour", None),
    ]
    for method, path, body in steps:
        answer = client.call(method, path, body)  # checked against the document
        assert answer.status < 300 or path.startswith(("/v1/switches/", "/v1/agents/hv9")), (method, path, answer.raw[:200])
    assert client.contract.exercised == client.contract.operations()


def test_a_restart_keeps_inventory_rules_default_tokens_and_audit(tmp_path):
    first = ControllerProcess(state_dir=str(tmp_path)).start()
    try:
        client = HttpClient(first.rest_url, Contract(), first.admin_token)
        client.call("PUT", "/v1/vms/web1", {"macs": ["02:00:00:00:00:01"], "labels": {"tier": "web"}})
        client.call("PUT", "/v1/vms/db1", {"macs": ["02:00:00:00:00:02"], "ips": ["10.0.0.2"], "labels": {"tier": "db"}})
        client.call("PATCH", "/v1/vms/db1/labels", {"set": {"sensitivity": "pci"}})
        client.call("POST", "/v1/policies", WEB_TO_DB)
        client.call("POST", "/v1/policies?position=0", {"name": "pci", "src": "any", "dst": "sensitivity", "action": "deny"})
        client.call("PUT", "/v1/policies/default", {"default_action": "deny"})
        reader = client.call("POST", "/v1/tokens", {"name": "reader"}).json["token"]
        before = visible_state(client)
        admin_token = first.admin_token
    finally:
        first.kill(signal.SIGKILL)  # no clean shutdown: every answered write is already on disk
    second = ControllerProcess(state_dir=str(tmp_path)).start()
    try:
        assert second.admin_token == admin_token, "the admin token is not reissued"
        client = HttpClient(second.rest_url, Contract(), admin_token)
        assert visible_state(client) == before
        assert client.call("GET", "/v1/vms", token=reader).status == 200, "tokens survive"
        assert client.call("GET", "/v1/explain?src=web1&dst=db1&proto=tcp&dport=5432").json["rule"]["name"] == "pci"
    finally:
        second.stop()


@pytest.mark.parametrize(
    "name, text, field",
    [
        ("bad-mac.yaml", "vms:\n  web1:\n    macs: [nonsense]\n", "vms.web1.macs"),
        ("bad-label.yaml", "vms:\n  web1:\n    macs: ['02:00:00:00:00:01']\n    labels: {pci: yes}\n", "vms.web1.labels.pci"),
        ("unknown.json", '{"vms": {}, "rules": []}', "rules"),
        ("twice.json", '{"vms": {"a": {"macs": ["02:00:00:00:00:01"]}, "a": {"macs": ["02:00:00:00:00:02"]}}}', "file"),
        ("broken.yaml", "vms: [unclosed\n", "file"),
        ("clash.yaml", "vms:\n  other:\n    macs: ['02:00:00:00:00:01']\n", "vms.other.macs"),
        ("missing.yaml", None, "file"),
    ],
)
def test_a_bad_inventory_file_stops_the_start_naming_the_file_and_field(tmp_path, name, text, field):
    state = tmp_path / "state"
    store = Store(state)  # a stored VM for the clash case
    web1 = vm_from_json("web1", {"macs": ["02:00:00:00:00:01"]})
    with store.transaction():
        store.write_policy(PolicyState(), PolicyState().with_vm(web1))
    inventory = tmp_path / name
    if text is not None:
        inventory.write_text(text)
    refused = ControllerProcess(state_dir=str(state), extra_args=["--inventory", str(inventory)])
    with pytest.raises(RuntimeError, match="controller exited"):
        refused.start(wait=20)
    assert refused.proc.returncode == 2
    message = Path(refused.log_path).read_text().strip().splitlines()[-1]
    assert message.startswith(f"goldilocks-controller: error: inventory file {inventory}: {field}:"), message
    assert list(store.load_policy().vms) == ["web1"] and store.load_policy().vms["web1"] == web1, "nothing was applied"


def test_no_token_value_reaches_the_controller_log(controller, client):
    extra = client.call("POST", "/v1/tokens", {"name": "secret-check", "role": "admin"}).json["token"]
    client.call("GET", "/v1/vms", token=extra)
    client.call("GET", "/v1/vms", token=extra + "x")
    client.call("GET", "/v1/vms", token="", headers={"Authorization": f"Basic {extra}"})
    client.call("DELETE", "/v1/tokens/secret-check")
    log = Path(controller.log_path).read_text()
    assert "admin.token" in log
    for value in (controller.admin_token, extra):
        assert value[4:] not in log
    assert os.path.getsize(controller.log_path) > 0
