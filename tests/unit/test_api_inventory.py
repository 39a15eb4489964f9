"""The VM inventory through the REST layer: create, replace, label changes, locations, unmanaged hosts,
and bad input that is refused with the field named and nothing changed."""

from __future__ import annotations

import pytest

from tests.api_contract import visible_state
from tests.api_stub import make_api
from tests.fakeoftable import build_leaf_spine

WEB = {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.1"], "labels": {"tenant": "blue", "tier": "web"}}
DB = {"macs": ["02:00:00:00:00:02"], "ips": ["10.0.0.2"], "labels": {"tenant": "blue", "tier": "db", "sensitivity": "pci"}}


@pytest.fixture
def api(tmp_path):
    return make_api(tmp_path)


def test_put_creates_then_replaces_and_get_shows_the_vm(api):
    app, client = api
    created = client.call("PUT", "/v1/vms/web1", WEB)
    assert created.status == 201 and created.headers["location"].endswith("/v1/vms/web1")
    assert created.json == {"name": "web1", **WEB, "location": None, "source": "api"}
    replaced = client.call("PUT", "/v1/vms/web1", {**WEB, "labels": {"tier": "app"}})
    assert replaced.status == 200 and replaced.json["labels"] == {"tier": "app"}
    assert client.call("GET", "/v1/vms/web1").json["labels"] == {"tier": "app"}
    assert app.policy.vms["web1"].label_map == {"tier": "app"}, "the controller's model changed too"


def test_list_is_sorted_and_delete_removes(api):
    _, client = api
    client.call("PUT", "/v1/vms/web1", WEB)
    client.call("PUT", "/v1/vms/db1", DB)
    assert [vm["name"] for vm in client.call("GET", "/v1/vms").json["vms"]] == ["db1", "web1"]
    assert client.call("DELETE", "/v1/vms/db1").status == 204
    assert client.call("GET", "/v1/vms/db1").status == 404
    assert client.call("DELETE", "/v1/vms/db1").status == 404
    assert [vm["name"] for vm in client.call("GET", "/v1/vms").json["vms"]] == ["web1"]


def test_macs_are_normalised(api):
    _, client = api
    vm = client.call("PUT", "/v1/vms/web1", {"macs": ["02-00-00-00-00-0A"]}).json
    assert vm["macs"] == ["02:00:00:00:00:0a"] and vm["ips"] == [] and vm["labels"] == {}


def test_an_unchanged_put_writes_nothing(api):
    app, client = api
    client.call("PUT", "/v1/vms/web1", WEB)
    compiles, audit = app.compiles, client.call("GET", "/v1/audit").json
    assert client.call("PUT", "/v1/vms/web1", WEB).status == 200
    assert (app.compiles, client.call("GET", "/v1/audit").json) == (compiles, audit)


def test_patch_sets_and_removes_labels(api):
    app, client = api
    client.call("PUT", "/v1/vms/db1", DB)
    patched = client.call(
        "PATCH", "/v1/vms/db1/labels", {"set": {"tier": "cache", "zone": "a"}, "remove": ["sensitivity", "absent"]}
    )
    assert patched.status == 200
    assert patched.json["labels"] == {"tenant": "blue", "tier": "cache", "zone": "a"}
    assert app.policy.vms["db1"].label_map == patched.json["labels"]
    entry = client.call("GET", "/v1/audit?limit=1").json["entries"][0]
    assert (entry["action"], entry["target"], entry["actor"]) == ("vm.labels", "db1", "admin")
    assert "tier=cache" in entry["summary"] and "removed sensitivity" in entry["summary"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({}, "body"),
        ({"set": {"a": "b"}, "remove": ["a"]}, "remove"),
        ({"set": {"bad key!": "x"}}, "set.bad key!"),
        ({"set": {"tier": 5}}, "set.tier"),
        ({"set": ["tier=db"]}, "set"),
        ({"remove": "tier"}, "remove"),
        ({"remove": ["-bad"]}, "remove"),
        ({"add": {"a": "b"}}, "add"),
    ],
)
def test_bad_label_patches_name_the_field_and_change_nothing(api, body, field):
    _, client = api
    client.call("PUT", "/v1/vms/db1", DB)
    before = visible_state(client)
    answer = client.call("PATCH", "/v1/vms/db1/labels", body)
    assert answer.status == 400 and answer.json["field"] == field and field in answer.json["error"]
    assert visible_state(client) == before


def test_patching_a_missing_vm_is_404(api):
    assert api[1].call("PATCH", "/v1/vms/nope/labels", {"set": {"a": "b"}}).status == 404


@pytest.mark.parametrize(
    "body, field",
    [
        ({"ips": ["10.0.0.9"]}, "macs"),
        ({"macs": []}, "macs"),
        ({"macs": "02:00:00:00:00:09"}, "macs"),
        ({"macs": ["02:00:00:00:00"]}, "macs"),
        ({"macs": ["01:00:5e:00:00:01"]}, "macs"),
        ({"macs": ["02:00:00:00:00:09", "02:00:00:00:00:09"]}, "macs"),
        ({"macs": ["02:00:00:00:00:09"], "ips": ["10.0.0.300"]}, "ips"),
        ({"macs": ["02:00:00:00:00:09"], "ips": ["224.0.0.1"]}, "ips"),
        ({"macs": ["02:00:00:00:00:09"], "ips": "10.0.0.9"}, "ips"),
        ({"macs": ["02:00:00:00:00:09"], "labels": {"tier": ["db"]}}, "labels.tier"),
        ({"macs": ["02:00:00:00:00:09"], "labels": {"": "x"}}, "labels."),
        ({"macs": ["02:00:00:00:00:09"], "labels": "tier=db"}, "labels"),
        ({"macs": ["02:00:00:00:00:09"], "location": {"dpid": 1}}, "location"),
        (["02:00:00:00:00:09"], "body"),
    ],
)
def test_bad_vm_documents_name_the_field_and_change_nothing(api, body, field):
    app, client = api
    client.call("PUT", "/v1/vms/web1", WEB)
    before, compiles = visible_state(client), app.compiles
    answer = client.call("PUT", "/v1/vms/new1", body)
    assert answer.status == 400, answer.json
    assert answer.json["field"] == field and answer.json["error"].startswith(f"{field}:")
    assert visible_state(client) == before and app.compiles == compiles


def test_a_bad_vm_name_is_400(api):
    answer = api[1].call("PUT", "/v1/vms/-bad", WEB)
    assert answer.status == 400 and answer.json["field"] == "name"


@pytest.mark.parametrize("field, value", [("macs", ["02:00:00:00:00:01"]), ("ips", ["10.0.0.1"])])
def test_an_address_of_another_vm_is_a_409_conflict(api, field, value):
    _, client = api
    client.call("PUT", "/v1/vms/web1", WEB)
    before = visible_state(client)
    body = {"macs": ["02:00:00:00:00:09"], field: value} if field == "ips" else {"macs": value}
    answer = client.call("PUT", "/v1/vms/web2", body)
    assert answer.status == 409 and answer.json["field"] == field
    assert "web1" in answer.json["error"] and "web2" in answer.json["error"]
    assert visible_state(client) == before


@pytest.mark.parametrize(
    "raw, content_type, status, field",
    [
        (b'{"macs": ["02:00:00:00:00:09"]', "application/json", 400, "body"),
        (b"", "application/json", 400, "body"),
        (b'{"macs": ["02:00:00:00:00:09"], "macs": []}', "application/json", 400, "macs"),
        (b'{"macs": ["02:00:00:00:00:09"], "labels": {"a": NaN}}', "application/json", 400, "body"),
        (b'{"macs": ["\xff"]}', "application/json", 400, "body"),
        (b'{"macs": ["02:00:00:00:00:09"]}', "text/plain", 415, "Content-Type"),
        (b'{"macs": ["02:00:00:00:00:09"]}', "", 415, "Content-Type"),
        (b'{"macs": ["02:00:00:00:00:09"], "labels": {"pad": "' + b"x" * 70_000 + b'"}}', "application/json", 413, "body"),
    ],
)
def test_malformed_bodies_are_refused_before_anything_changes(api, raw, content_type, status, field):
    _, client = api
    before = visible_state(client)
    answer = client.call("PUT", "/v1/vms/web9", raw=raw, headers={"Content-Type": content_type} if content_type else {})
    assert answer.status == status and answer.json["field"] == field, answer.json
    assert visible_state(client) == before


def test_a_json_content_type_with_a_charset_is_accepted(api):
    answer = api[1].call(
        "PUT", "/v1/vms/web1", raw=b'{"macs": ["02:00:00:00:00:01"]}', headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert answer.status == 201


@pytest.mark.parametrize(
    "query, field", [("?unmanaged=maybe", "unmanaged"), ("?foo=1", "foo"), ("?unmanaged=1&unmanaged=0", "unmanaged")]
)
def test_bad_query_parameters_name_the_parameter(api, query, field):
    answer = api[1].call("GET", "/v1/vms" + query)
    assert answer.status == 400 and answer.json["field"] == field


def test_location_is_learned_from_the_network_and_other_hosts_are_unmanaged(tmp_path):
    fabric = build_leaf_spine(spines=1, leaves=1, hypervisors_per_leaf=2, vms_per_hypervisor=2)
    seen = sorted(fabric.topo.hosts.values(), key=lambda h: h.mac)
    app, client = make_api(tmp_path, fabric.topo)
    managed = seen[0]
    client.call("PUT", "/v1/vms/web1", {"macs": ["02:00:00:00:00:99", managed.mac.upper()], "labels": {"tier": "web"}})
    client.call("PUT", "/v1/vms/ghost", {"macs": ["02:00:00:00:00:98"]})
    vm = client.call("GET", "/v1/vms/web1").json
    assert vm["location"] == {
        "mac": managed.mac,
        "ips": sorted(managed.ips),
        "dpid": f"{managed.dpid:016x}",
        "port": managed.port,
    }
    assert client.call("GET", "/v1/vms/ghost").json["location"] is None, "never seen on the network"
    unmanaged = client.call("GET", "/v1/vms?unmanaged=1").json["unmanaged"]
    assert [h["mac"] for h in unmanaged] == [h.mac for h in seen[1:]]
    assert all(set(h) == {"mac", "ips", "dpid", "port"} for h in unmanaged)
    assert client.call("GET", "/v1/vms?unmanaged=0").json["vms"][1]["location"] == vm["location"]
    # Deleting the VM makes its host unmanaged again.
    client.call("DELETE", "/v1/vms/web1")
    assert managed.mac in [h["mac"] for h in client.call("GET", "/v1/vms?unmanaged=true").json["unmanaged"]]
