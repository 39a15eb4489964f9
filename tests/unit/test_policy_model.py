"""The policy model: VM documents, rule documents and PolicyState changes, each refusing bad input by naming the field."""

from __future__ import annotations

import pytest

from apps.context import NotFound, PolicyState
from apps.inventory import VM, InventoryError, vm_from_json
from apps.policy import PolicyError, Rule, rule_from_json
from apps.selectors import parse_selector
from apps.services import Service


def vm(name: str, mac: str, ip: str | None = None, **labels: str) -> VM:
    return vm_from_json(name, {"macs": [mac], "ips": [ip] if ip else [], "labels": labels})


def rule(name: str, src: str = "tier=web", dst: str = "tier=db", action: str = "deny", services=None) -> Rule:
    body = {"name": name, "src": src, "dst": dst, "action": action}
    if services is not None:
        body["services"] = services
    return rule_from_json(body)


WEB = vm("web1", "02:00:00:00:00:01", "10.0.0.1", tier="web")
DB = vm("db1", "02:00:00:00:00:02", "10.0.0.2", tier="db")


@pytest.fixture
def state() -> PolicyState:
    return PolicyState().with_vm(WEB).with_vm(DB).with_rule(rule("a")).with_rule(rule("b")).with_rule(rule("c"))


# ---------------------------------------------------------------------------
# PolicyState: VMs
# ---------------------------------------------------------------------------
def test_with_vm_adds_or_replaces_by_name_and_leaves_the_old_state_alone(state):
    moved = state.with_vm(vm("web1", "02:00:00:00:00:09", "10.0.0.9", tier="web"))
    assert moved.vm("web1").macs == ("02:00:00:00:00:09",)
    assert state.vm("web1").macs == ("02:00:00:00:00:01",), "a change builds a new state"
    assert set(moved.vm_by_mac()) == {"02:00:00:00:00:09", "02:00:00:00:00:02"}


@pytest.mark.parametrize(
    "clash, field, address",
    [
        (vm("web2", "02:00:00:00:00:01", "10.0.0.3"), "macs", "02:00:00:00:00:01"),
        (vm("web2", "02:00:00:00:00:03", "10.0.0.2"), "ips", "10.0.0.2"),
    ],
)
def test_an_address_of_another_vm_is_refused_naming_the_field_and_both_vms(state, clash, field, address):
    with pytest.raises(InventoryError) as err:
        state.with_vm(clash)
    assert err.value.field == field
    assert address in str(err.value) and "web2" in str(err.value)
    assert "web1" in str(err.value) or "db1" in str(err.value)


def test_a_whole_inventory_refuses_a_name_twice_and_shared_addresses():
    with pytest.raises(InventoryError) as err:
        PolicyState().with_vms([WEB, vm("web1", "02:00:00:00:00:07")])
    assert err.value.field == "name"
    with pytest.raises(InventoryError) as err:
        PolicyState().with_vms([WEB, vm("other", "02:00:00:00:00:01")])
    assert err.value.field == "macs"
    assert PolicyState().with_vms([WEB, DB]).vms.keys() == {"web1", "db1"}


def test_removing_or_asking_for_a_missing_vm_names_it(state):
    assert "web1" not in state.without_vm("web1").vms
    with pytest.raises(NotFound, match="no vm named 'ghost'"):
        state.without_vm("ghost")
    with pytest.raises(NotFound, match="no vm named 'ghost'"):
        state.with_labels("ghost", {"tier": "db"}, [])


def test_with_labels_sets_and_removes_and_validates(state):
    changed = state.with_labels("web1", {"tier": "app", "env": "prod"}, [])
    assert changed.vm("web1").label_map == {"tier": "app", "env": "prod"}
    assert changed.with_labels("web1", {}, ["env", "absent"]).vm("web1").label_map == {"tier": "app"}
    assert state.vm("web1").label_map == {"tier": "web"}
    with pytest.raises(InventoryError) as err:
        state.with_labels("web1", {"ti er": "x"}, [])
    assert err.value.field == "labels.ti er"
    with pytest.raises(InventoryError) as err:
        state.with_labels("web1", {"tier": "not valid"}, [])
    assert err.value.field == "labels.tier"


# ---------------------------------------------------------------------------
# PolicyState: rules and the default
# ---------------------------------------------------------------------------
def names(state: PolicyState) -> list[str]:
    return [r.name for r in state.rules]


def test_with_rule_appends_inserts_replaces_and_moves(state):
    assert names(state) == ["a", "b", "c"]
    assert names(state.with_rule(rule("d"))) == ["a", "b", "c", "d"]
    assert names(state.with_rule(rule("d"), position=0)) == ["d", "a", "b", "c"]
    assert names(state.with_rule(rule("d"), position=3)) == ["a", "b", "c", "d"]
    replaced = state.with_rule(rule("b", action="allow"))
    assert names(replaced) == ["a", "b", "c"] and replaced.rule("b").action == "allow", "same name: replaced in place"
    assert names(state.with_rule(rule("b", action="allow"), position=1)) == ["a", "b", "c"]
    moved = state.with_rule(rule("a", action="allow"), position=2)
    assert names(moved) == ["b", "c", "a"] and moved.rule("a").action == "allow"
    assert names(state) == ["a", "b", "c"], "the old state is untouched"


@pytest.mark.parametrize("position", [-1, 4, 99])
def test_a_position_outside_the_list_is_refused(state, position):
    with pytest.raises(PolicyError, match="between 0 and 3") as err:
        state.with_rule(rule("d"), position=position)
    assert err.value.field == "position"


def test_removing_or_asking_for_a_missing_rule_names_it(state):
    assert names(state.without_rule("b")) == ["a", "c"]
    with pytest.raises(NotFound, match="no rule named 'zz'"):
        state.without_rule("zz")
    with pytest.raises(NotFound, match="no rule named 'zz'"):
        state.rule("zz")


@pytest.mark.parametrize("order", [["c", "a"], ["c", "a", "b", "b"], ["c", "a", "b", "d"], ["c", "a", "a"], []])
def test_reordering_must_name_every_rule_exactly_once(state, order):
    with pytest.raises(PolicyError, match="every rule exactly once") as err:
        state.reordered(order)
    assert err.value.field == "order"


def test_reordering_puts_the_rules_in_that_order(state):
    assert names(state.reordered(["c", "a", "b"])) == ["c", "a", "b"]
    assert PolicyState().reordered([]).rules == ()


@pytest.mark.parametrize("action", ["encrypt", "drop", "", None, "Allow"])
def test_the_default_action_is_allow_or_deny(state, action):
    assert PolicyState().default_action == "allow"
    assert state.with_default("deny").default_action == "deny"
    with pytest.raises(PolicyError, match="allow, deny") as err:
        state.with_default(action)
    assert err.value.field == "default_action"


# ---------------------------------------------------------------------------
# VM documents
# ---------------------------------------------------------------------------
def test_a_vm_document_is_normalised():
    doc = vm_from_json(
        "web-1", {"macs": ["02-00-00-00-00-0A", "02:00:00:00:00:01"], "ips": ["10.0.0.1"], "labels": {"tier": "web"}}
    )
    assert doc == VM("web-1", ("02:00:00:00:00:01", "02:00:00:00:00:0a"), ("10.0.0.1",), (("tier", "web"),))
    body = {k: v for k, v in doc.to_json().items() if k != "name"}
    assert vm_from_json("web-1", body) == doc, "to_json round-trips"


@pytest.mark.parametrize(
    "name, body, field, fragment",
    [
        ("bad name!", {"macs": ["02:00:00:00:00:01"]}, "name", "not a valid name"),
        ("", {"macs": ["02:00:00:00:00:01"]}, "name", "not a valid name"),
        ("vm", ["02:00:00:00:00:01"], "body", "JSON object"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "mac": "x"}, "mac", "unknown field"),
        ("vm", {}, "macs", "non-empty list"),
        ("vm", {"macs": []}, "macs", "non-empty list"),
        ("vm", {"macs": "02:00:00:00:00:01"}, "macs", "non-empty list"),
        ("vm", {"macs": ["zz:00:00:00:00:01"]}, "macs", "not a MAC address"),
        ("vm", {"macs": ["02:00:00:00:01"]}, "macs", "not a MAC address"),
        ("vm", {"macs": [42]}, "macs", "not a MAC address"),
        ("vm", {"macs": ["01:00:5e:00:00:01"]}, "macs", "multicast"),
        ("vm", {"macs": ["ff:ff:ff:ff:ff:ff"]}, "macs", "multicast"),
        ("vm", {"macs": ["00:00:00:00:00:00"]}, "macs", "not a VM's address"),
        ("vm", {"macs": ["02:00:00:00:00:01", "02-00-00-00-00-01"]}, "macs", "same address twice"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": "10.0.0.1"}, "ips", "list"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.256"]}, "ips", "not an IPv4 address"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": ["fe80::1"]}, "ips", "not an IPv4 address"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": [167772161]}, "ips", "not an IPv4 address"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": ["224.0.0.1"]}, "ips", "cannot be a VM's address"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": ["0.0.0.0"]}, "ips", "cannot be a VM's address"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": ["255.255.255.255"]}, "ips", "cannot be a VM's address"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "ips": ["10.0.0.1", "10.0.0.1"]}, "ips", "same address twice"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "labels": ["tier=web"]}, "labels", "key: value"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "labels": {"-tier": "web"}}, "labels.-tier", "not a valid label key"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "labels": {"tier": "we b"}}, "labels.tier", "not a valid label value"),
        ("vm", {"macs": ["02:00:00:00:00:01"], "labels": {"tier": 3}}, "labels.tier", "not a valid label value"),
    ],
)
def test_bad_vm_documents_name_the_field(name, body, field, fragment):
    with pytest.raises(InventoryError, match=fragment) as err:
        vm_from_json(name, body)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")


# ---------------------------------------------------------------------------
# Rule documents
# ---------------------------------------------------------------------------
def test_a_rule_document_is_parsed_with_defaults_and_round_trips():
    parsed = rule_from_json(
        {"name": "pg", "src": "tier==web", "dst": "tier in (db, cache)", "services": ["TCP/5432", "tcp/5432"], "action": "allow"}
    )
    assert parsed == Rule(
        "pg", parse_selector("tier=web"), parse_selector("tier in (cache,db)"), (Service("tcp", 5432, 5432),), "allow"
    )
    assert rule_from_json(parsed.to_json()) == parsed
    assert rule_from_json({"src": "any", "dst": "unmanaged", "action": "encrypt"}, name="x").services == (Service(None),)


@pytest.mark.parametrize(
    "body, path_name, field, fragment",
    [
        (["src", "dst"], None, "body", "JSON object"),
        ({"name": "r", "src": "any", "dst": "any", "action": "deny", "priority": 5}, None, "priority", "unknown field"),
        ({"name": "r", "src": "any", "dst": "any", "action": "deny"}, "other", "name", "path names"),
        ({"name": "bad name", "src": "any", "dst": "any", "action": "deny"}, None, "name", "not a valid rule name"),
        ({"src": "any", "dst": "any", "action": "deny"}, None, "name", "not a valid rule name"),
        ({"name": "r", "dst": "any", "action": "deny"}, None, "src", "is required"),
        ({"name": "r", "src": "any", "action": "deny"}, None, "dst", "is required"),
        ({"name": "r", "src": "tier in (web", "dst": "any", "action": "deny"}, None, "src", "unbalanced"),
        ({"name": "r", "src": "any", "dst": "", "action": "deny"}, None, "dst", "empty selector"),
        ({"name": "r", "src": "any", "dst": ["tier=db"], "action": "deny"}, None, "dst", "must be a string"),
        ({"name": "r", "src": "any,tier=db", "dst": "any", "action": "deny"}, None, "src", "stand alone"),
        ({"name": "r", "src": "any", "dst": "any", "services": [], "action": "deny"}, None, "services", "non-empty list"),
        ({"name": "r", "src": "any", "dst": "any", "services": "tcp/80", "action": "deny"}, None, "services", "non-empty list"),
        ({"name": "r", "src": "any", "dst": "any", "services": ["tcp/99999"], "action": "deny"}, None, "services", "outside"),
        ({"name": "r", "src": "any", "dst": "any", "services": ["http"], "action": "deny"}, None, "services", "protocol"),
        ({"name": "r", "src": "any", "dst": "any", "services": ["icmp/8"], "action": "deny"}, None, "services", "no port"),
        ({"name": "r", "src": "any", "dst": "any"}, None, "action", "one of allow, deny, encrypt"),
        ({"name": "r", "src": "any", "dst": "any", "action": "drop"}, None, "action", "one of allow, deny, encrypt"),
    ],
)
def test_bad_rule_documents_name_the_field(body, path_name, field, fragment):
    with pytest.raises(PolicyError, match=fragment) as err:
        rule_from_json(body, name=path_name)
    assert err.value.field == field
    assert str(err.value).startswith(f"{field}: ")
