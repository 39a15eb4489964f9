"""Policy rules, their order, the default action and explain through the REST layer; every change is
applied whole or not at all."""

from __future__ import annotations

import sqlite3

import pytest

from controller.store import Store
from tests.api_contract import visible_state
from tests.api_stub import make_api
from tests.fakeoftable import build_leaf_spine

VMS = {
    "web1": {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.1"], "labels": {"tenant": "blue", "tier": "web"}},
    "db1": {"macs": ["02:00:00:00:00:02"], "ips": ["10.0.0.2"], "labels": {"tenant": "blue", "tier": "db", "sensitivity": "pci"}},
    "app1": {"macs": ["02:00:00:00:00:03"], "labels": {"tenant": "red", "tier": "app"}},
}
WEB_TO_DB = {"name": "web-db", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "encrypt"}
DENY_PCI = {"name": "deny-pci", "src": "any", "dst": "sensitivity", "services": ["any"], "action": "deny"}
RED = {"name": "red", "src": "tenant=red", "dst": "any", "action": "allow"}


def api_with_vms(tmp_path):
    """(stub controller, admin client) holding VMS."""
    app, client = make_api(tmp_path)
    for name, doc in VMS.items():
        assert client.call("PUT", f"/v1/vms/{name}", doc).status == 201
    return app, client


@pytest.fixture
def api(tmp_path):
    return api_with_vms(tmp_path)


def names(client) -> list[str]:
    return [r["name"] for r in client.call("GET", "/v1/policies").json["policies"]]


def test_rules_are_added_in_order_or_at_a_position(api):
    app, client = api
    first = client.call("POST", "/v1/policies", WEB_TO_DB)
    assert first.status == 201 and first.headers["location"].endswith("/v1/policies/web-db")
    assert first.json == {**WEB_TO_DB, "position": 0}
    assert client.call("POST", "/v1/policies", RED).json["position"] == 1
    assert client.call("POST", "/v1/policies?position=0", DENY_PCI).json["position"] == 0
    assert names(client) == ["deny-pci", "web-db", "red"]
    listing = client.call("GET", "/v1/policies").json
    assert [r["position"] for r in listing["policies"]] == [0, 1, 2] and listing["default_action"] == "allow"
    assert listing["policies"][2]["services"] == ["any"], "services default to any"
    assert [r.name for r in app.policy.rules] == ["deny-pci", "web-db", "red"]
    assert client.call("GET", "/v1/policies/order").json == {"order": ["deny-pci", "web-db", "red"]}


def test_get_put_and_delete_one_rule(api):
    _, client = api
    client.call("POST", "/v1/policies", WEB_TO_DB)
    client.call("POST", "/v1/policies", RED)
    assert client.call("GET", "/v1/policies/red").json == {**RED, "services": ["any"], "position": 1}
    replaced = client.call("PUT", "/v1/policies/web-db", {**WEB_TO_DB, "action": "deny"})
    assert replaced.status == 200 and replaced.json["position"] == 0 and replaced.json["action"] == "deny"
    moved = client.call("PUT", "/v1/policies/web-db?position=1", {k: v for k, v in WEB_TO_DB.items() if k != "name"})
    assert moved.status == 200 and names(client) == ["red", "web-db"]
    created = client.call("PUT", "/v1/policies/new", {"src": "any", "dst": "any", "action": "allow"})
    assert created.status == 201 and names(client) == ["red", "web-db", "new"]
    assert client.call("DELETE", "/v1/policies/red").status == 204
    assert client.call("GET", "/v1/policies/red").status == 404
    assert client.call("DELETE", "/v1/policies/red").status == 404
    assert names(client) == ["web-db", "new"]


def test_selectors_and_services_come_back_in_canonical_form(api):
    rule = api[1].call(
        "POST", "/v1/policies", {**WEB_TO_DB, "src": " tier = web , tenant in (red, blue)", "services": ["TCP/5432", "tcp/5432"]}
    )
    assert rule.json["src"] == "tenant in (blue,red),tier=web" and rule.json["services"] == ["tcp/5432"]


def test_reorder_names_every_rule_once(api):
    _, client = api
    for rule in (WEB_TO_DB, DENY_PCI, RED):
        client.call("POST", "/v1/policies", rule)
    assert client.call("PUT", "/v1/policies/order", {"order": ["red", "web-db", "deny-pci"]}).json == {
        "order": ["red", "web-db", "deny-pci"]
    }
    assert names(client) == ["red", "web-db", "deny-pci"]
    before = visible_state(client)
    for body in (
        {"order": ["red", "web-db"]},
        {"order": ["red", "web-db", "deny-pci", "red"]},
        {"order": ["red", "web-db", "nope"]},
    ):
        answer = client.call("PUT", "/v1/policies/order", body)
        assert answer.status == 400 and answer.json["field"] == "order"
    for body, field in (({"order": "red"}, "order"), ({"order": [1, 2, 3]}, "order"), ({"names": []}, "names")):
        assert client.call("PUT", "/v1/policies/order", body).json["field"] == field
    assert visible_state(client) == before


def test_default_action(api):
    app, client = api
    assert client.call("GET", "/v1/policies/default").json == {"default_action": "allow"}
    assert client.call("PUT", "/v1/policies/default", {"default_action": "deny"}).json == {"default_action": "deny"}
    assert app.policy.default_action == "deny" and client.call("GET", "/v1/policies").json["default_action"] == "deny"
    before = visible_state(client)
    for body, field in (
        ({"default_action": "encrypt"}, "default_action"),
        ({}, "default_action"),
        ({"default": "allow"}, "default"),
    ):
        answer = client.call("PUT", "/v1/policies/default", body)
        assert answer.status == 400 and answer.json["field"] == field
    assert visible_state(client) == before


def test_order_and_default_are_not_rule_names(api):
    _, client = api
    for name in ("order", "default"):
        answer = client.call("POST", "/v1/policies", {**RED, "name": name})
        assert answer.status == 400 and answer.json["field"] == "name"
    answer = client.call("DELETE", "/v1/policies/order")
    assert answer.status == 405 and answer.headers["allow"] == "GET, HEAD, PUT"
    assert client.call("POST", "/v1/policies/default", {"default_action": "deny"}).status == 405


@pytest.mark.parametrize(
    "change, field",
    [
        ({"src": "=db"}, "src"),
        ({"dst": "tier in (db"}, "dst"),
        ({"dst": ""}, "dst"),
        ({"src": 5}, "src"),
        ({"services": ["tcp/70000"]}, "services"),
        ({"services": ["icmp/8"]}, "services"),
        ({"services": ["sctp"]}, "services"),
        ({"services": []}, "services"),
        ({"action": "permit"}, "action"),
        ({"name": "has space"}, "name"),
        ({"priority": 5}, "priority"),
    ],
)
def test_bad_rules_name_the_field_and_change_nothing(api, change, field):
    app, client = api
    client.call("POST", "/v1/policies", RED)
    before, compiles = visible_state(client), app.compiles
    answer = client.call("POST", "/v1/policies", {**WEB_TO_DB, **change})
    assert answer.status == 400 and answer.json["field"] == field and answer.json["error"].startswith(f"{field}:")
    answer = client.call("PUT", "/v1/policies/red", {**RED, **change})
    assert answer.status == 400 and answer.json["field"] == field
    assert visible_state(client) == before and app.compiles == compiles


def test_conflicts_and_bad_positions(api):
    _, client = api
    client.call("POST", "/v1/policies", RED)
    before = visible_state(client)
    duplicate = client.call("POST", "/v1/policies", {**RED, "action": "deny"})
    assert duplicate.status == 409 and duplicate.json["field"] == "name"
    for query in ("?position=2", "?position=-1", "?position=x"):
        answer = client.call("POST", "/v1/policies" + query, WEB_TO_DB)
        assert answer.status == 400 and answer.json["field"] == "position"
    assert client.call("PUT", "/v1/policies/red?position=1", RED).json["field"] == "position"
    mismatch = client.call("PUT", "/v1/policies/red", {**RED, "name": "blue"})
    assert mismatch.status == 400 and mismatch.json["field"] == "name"
    assert visible_state(client) == before


def test_a_failed_write_leaves_memory_and_disk_as_they_were(api, tmp_path, monkeypatch):
    """The audit row is written in the same transaction as the change: if it fails, so does the change."""
    app, client = api
    client.call("POST", "/v1/policies", RED)
    before, compiles = visible_state(client), app.compiles

    def broken(*_args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(app.store, "add_audit", broken)
    # A 500 is not part of the contract, so these answers are not checked against it.
    assert client.call("POST", "/v1/policies", WEB_TO_DB, check=False).status == 500
    assert client.call("PUT", "/v1/vms/web1", {**VMS["web1"], "labels": {}}, check=False).status == 500
    failed = client.call("DELETE", "/v1/vms/db1", check=False)
    assert failed.status == 500 and failed.json == {"error": "internal error; see the controller log"}
    monkeypatch.undo()
    assert visible_state(client) == before and app.compiles == compiles
    on_disk = Store(tmp_path).load_policy()
    assert on_disk == app.policy


# -- explain ------------------------------------------------------------------------------------
def explain(client, **query):
    answer = client.call("GET", "/v1/explain?" + "&".join(f"{k}={v}" for k, v in query.items()))
    assert answer.status == 200, answer.json
    return answer.json


def test_explain_names_the_rule_the_labels_and_the_service(api):
    _, client = api
    client.call("POST", "/v1/policies", WEB_TO_DB)
    answer = explain(client, src="web1", dst="db1", proto="tcp", dport=5432)
    assert answer["reason"] == "rule" and answer["rule"] == {**WEB_TO_DB, "position": 0}
    assert answer["match"] == {
        "src_selector": "tier=web",
        "dst_selector": "tier=db",
        "service": "tcp/5432",
        "src_labels": {"tier": "web"},
        "dst_labels": {"tier": "db"},
    }
    assert answer["src"]["labels"] == VMS["web1"]["labels"] and answer["dst"]["vm"] == "db1"
    # Until the encryption issue lands, encrypt forwards like allow and says so.
    assert (answer["action"], answer["effective_action"]) == ("encrypt", "allow")
    assert (answer["encryption"]["path"], answer["encryption"]["delivered"]) == ("unknown", False)


def test_explain_first_match_wins_and_the_default_applies_otherwise(api):
    _, client = api
    client.call("POST", "/v1/policies", WEB_TO_DB)
    client.call("POST", "/v1/policies?position=0", DENY_PCI)
    client.call("PUT", "/v1/policies/default", {"default_action": "deny"})
    first = explain(client, src="web1", dst="db1", proto="tcp", dport=5432)
    assert first["rule"]["name"] == "deny-pci" and first["action"] == "deny" and first["encryption"] is None
    assert first["match"]["dst_labels"] == {"sensitivity": "pci"} and first["match"]["service"] == "any"
    fallthrough = explain(client, src="web1", dst="app1", proto="udp", dport=53)
    assert fallthrough["reason"] == "default" and fallthrough["rule"] is None and fallthrough["match"] is None
    assert (fallthrough["action"], fallthrough["effective_action"], fallthrough["default_action"]) == ("deny", "deny", "deny")
    other_port = explain(client, src="web1", dst="app1", proto="tcp", dport=5433)
    assert other_port["reason"] == "default"
    no_proto = explain(client, src="web1", dst="app1")
    assert (no_proto["proto"], no_proto["dport"], no_proto["action"]) == (None, None, "deny")


def test_explain_accepts_addresses_of_vms_and_unmanaged_hosts(tmp_path):
    fabric = build_leaf_spine(spines=1, leaves=1, hypervisors_per_leaf=1, vms_per_hypervisor=2)
    vm_host, stranger = sorted(fabric.topo.hosts.values(), key=lambda h: h.mac)
    _, client = make_api(tmp_path, fabric.topo)
    client.call("PUT", "/v1/vms/web1", {"macs": [vm_host.mac], "labels": {"tier": "web"}})  # IP only learned
    client.call("POST", "/v1/policies", {"name": "outsiders", "src": "unmanaged", "dst": "tier=web", "action": "deny"})
    stranger_ip, vm_ip = next(iter(stranger.ips)), next(iter(vm_host.ips))
    for src in (stranger.mac, stranger.mac.upper(), stranger_ip):
        answer = explain(client, src=src, dst="web1", proto="icmp")
        assert answer["src"] == {
            "query": src,
            "vm": None,
            "labels": None,
            "host": {"mac": stranger.mac, "ips": sorted(stranger.ips), "dpid": f"{stranger.dpid:016x}", "port": stranger.port},
        }
        assert answer["rule"]["name"] == "outsiders" and answer["match"]["src_labels"] is None
    for dst in (vm_host.mac, vm_ip):
        assert explain(client, src=stranger_ip, dst=dst)["dst"]["vm"] == "web1"
    never_seen = explain(client, src="192.0.2.7", dst="web1")
    assert never_seen["src"]["host"] is None and never_seen["action"] == "deny"


@pytest.mark.parametrize(
    "query, status, field",
    [
        ("dst=web1", 400, "src"),
        ("src=web1", 400, "dst"),
        ("src=nobody&dst=web1", 404, "src"),
        ("src=web1&dst=nobody", 404, "dst"),
        ("src=web1&dst=db1&proto=sctp", 400, "proto"),
        ("src=web1&dst=db1&dport=80", 400, "dport"),
        ("src=web1&dst=db1&proto=icmp&dport=80", 400, "dport"),
        ("src=web1&dst=db1&proto=tcp&dport=0", 400, "dport"),
        ("src=web1&dst=db1&proto=tcp&dport=http", 400, "dport"),
        ("src=web1&dst=db1&port=80", 400, "port"),
    ],
)
def test_bad_explain_queries_name_the_parameter(api, query, status, field):
    answer = api[1].call("GET", "/v1/explain?" + query)
    assert answer.status == status and answer.json["field"] == field
