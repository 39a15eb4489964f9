"""Quarantine, asked of the fake switch network and of the REST API: a quarantined VM reaches no one
and no one reaches it, by any path and over open connections too; it stays cut off where it moves;
releasing it restores exactly the tables it had; bad requests change nothing."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from apps import pipeline
from apps.desired import desired_tables
from apps.quarantine import Quarantine
from tests import prometheus_text
from tests.api_stub import make_api
from tests.fakeoftable import (
    BROADCAST,
    FakeNetwork,
    arp_request,
    build_leaf_spine,
    first_ip,
    ipv4_frame,
    policy_state,
    reply_frame,
    service_frame,
    vm_name,
)
from topology.model import Host

_sports = itertools.count(40000)


@pytest.fixture
def fabric():
    """Two hypervisors (one per leaf), three VMs each, a tunnel between them."""
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3, tunnels=True)


def quarantined(state, host: Host):
    vm = state.vm(vm_name(host))
    return state.with_quarantine(Quarantine(vm.name, "test", "isolate", "admin", 0.0, vm.macs))


def delivered(net: FakeNetwork, src: Host, dst: Host, frame: dict) -> bool:
    trace = net.send(src, frame)
    return trace.reaches(dst)


def frames(src: Host, dst: Host) -> list[dict]:
    return [
        service_frame(src, dst, proto, 80 if proto != "icmp" else None, sport=next(_sports)) for proto in ("tcp", "udp", "icmp")
    ]


@pytest.mark.parametrize("rule", ["allow", "encrypt"])
def test_a_quarantined_vm_reaches_no_one_and_no_one_reaches_it(fabric, rule):
    """Whatever the rules say (an encrypt rule included, through the tunnel), on its hypervisor and
    across; everyone else is untouched."""
    labels = {vm: {"tier": "web"} for vm in fabric.vms}
    rules = [{"src": "any", "dst": "any", "action": rule}]
    flagged = fabric.vms[0]
    state = quarantined(policy_state(labels, rules), flagged)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    others = [vm for vm in fabric.vms if vm != flagged]
    for other in others:
        for frame in frames(flagged, other):
            assert not net.send(flagged, frame).deliveries, f"from the quarantined VM to {other.mac}: {frame}"
        for frame in frames(other, flagged):
            assert not delivered(net, other, flagged, frame), f"to the quarantined VM from {other.mac}"
    # Not even a broadcast reaches it, and its own broadcasts reach no one.
    for other in others:
        assert not net.send(other, arp_request(other, "10.99.0.1")).reaches(flagged)
        assert not net.send(other, ipv4_frame(other, BROADCAST, "255.255.255.255")).reaches(flagged)
    assert not net.send(flagged, arp_request(flagged, first_ip(others[0]))).deliveries
    # Everyone else still talks.
    for a, b in itertools.permutations(others, 2):
        assert all(delivered(net, a, b, frame) for frame in frames(a, b)), (a.mac, b.mac)


def test_open_connections_stop_at_once(fabric):
    """Quarantine acts before conntrack: an established connection is cut in both directions."""
    labels = {vm: {"tier": "web"} for vm in fabric.vms}
    a, b = fabric.vms[0], fabric.vms[-1]
    state = policy_state(labels, [])
    before = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    syn = service_frame(a, b, "tcp", 80, sport=next(_sports))
    assert delivered(before, a, b, syn) and delivered(before, b, a, reply_frame(syn))
    after = FakeNetwork.compile(fabric.topo, quarantined(state, b), tunnels=fabric.tunnels)
    after.conntrack = before.conntrack
    assert not delivered(after, a, b, syn) and not after.send(b, reply_frame(syn)).deliveries


def test_frames_from_it_are_copied_to_the_controller_on_their_own_meter(fabric):
    """So a VM that moved is learned where it is now, and its flood cannot starve anyone's learning."""
    flagged = fabric.vms[0]
    state = quarantined(policy_state({vm: {} for vm in fabric.vms}), flagged)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    trace = net.send(flagged, ipv4_frame(flagged, fabric.vms[1].mac))
    assert [p.table for p in trace.punts] == [pipeline.INGRESS] and not trace.deliveries
    entries = [e for t in desired_tables(fabric.topo, state).values() for e in t.values() if e.app == pipeline.APP_QUARANTINE]
    copies = [e for e in entries if dict(e.match).get("eth_src") == flagged.mac]
    assert copies and {e.meter for e in copies} == {pipeline.METER_QUARANTINE}


def test_it_stays_cut_off_where_it_moves_from_its_first_frame(fabric):
    flagged, other = fabric.vms[0], fabric.vms[-1]
    state = quarantined(policy_state({vm: {} for vm in fabric.vms}), flagged)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    spare = max(fabric.topo.edge_ports(other.dpid))  # an empty port on the other hypervisor
    moved = replace(flagged, dpid=other.dpid, port=spare)
    # Before the controller knows it moved, its first frame on the new port goes nowhere.
    assert not net.trace(moved.dpid, moved.port, ipv4_frame(flagged, other.mac, first_ip(other))).deliveries
    fabric.topo.host_seen(flagged.mac, moved.dpid, moved.port)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    for frame in frames(other, moved):
        assert not net.send(other, frame).reaches(moved)
    assert not net.send(other, arp_request(other, "10.99.0.1")).reaches(moved), "its new port leaves the floods"


def test_release_restores_exactly_the_tables_it_had(fabric):
    labels = {vm: {"tier": "web" if i % 2 else "db"} for i, vm in enumerate(fabric.vms)}
    rules = [
        {"src": "tier=web", "dst": "tier=db", "action": "encrypt"},
        {"src": "quarantined=true", "dst": "any", "action": "deny"},
    ]
    state = policy_state(labels, rules, "deny")
    before = desired_tables(fabric.topo, state, tunnels=fabric.tunnels.plan)
    flagged = fabric.vms[1]
    during = desired_tables(fabric.topo, quarantined(state, flagged), tunnels=fabric.tunnels.plan)
    assert {c for t in during.values() for c in t} != {c for t in before.values() for c in t}
    released = quarantined(state, flagged).without_quarantine(vm_name(flagged))
    after = desired_tables(fabric.topo, released, tunnels=fabric.tunnels.plan)
    assert {d: set(t) for d, t in after.items()} == {d: set(t) for d, t in before.items()}
    assert released.vm(vm_name(flagged)).label_map == labels[flagged]


# ---------------------------------------------------------------------------
# The API
# ---------------------------------------------------------------------------
@pytest.fixture
def api(tmp_path):
    app, client = make_api(tmp_path)
    for name, mac in (("web1", "02:00:00:00:00:01"), ("db1", "02:00:00:00:00:02")):
        assert client.call("PUT", f"/v1/vms/{name}", {"macs": [mac], "labels": {"tier": name[:-1]}}).status == 201
    return app, client


def test_quarantine_and_release_through_the_api_are_audited_and_survive_a_restart(api, tmp_path):
    app, client = api
    answer = client.call("POST", "/v1/quarantine", {"vm": "web1", "reason": "IDS: beaconing"})
    assert answer.status == 201 and answer.json["macs"] == ["02:00:00:00:00:01"] and answer.json["actor"] == "admin"
    assert [q["vm"] for q in client.call("GET", "/v1/quarantine").json["quarantine"]] == ["web1"]
    assert app.policy.effective_labels(app.policy.vm("web1")) == (("quarantined", "true"), ("tier", "web"))
    assert app.store.load_policy().quarantine.keys() == {"web1"}, "written to SQLite"
    assert client.call("DELETE", "/v1/vms/web1").status == 409, "a quarantined VM cannot be deleted"
    assert client.call("DELETE", "/v1/quarantine/web1").status == 204
    assert client.call("GET", "/v1/quarantine/web1").status == 404 and not app.store.load_policy().quarantine
    actions = [e["action"] for e in client.call("GET", "/v1/audit").json["entries"]]
    assert actions[:2] == ["vm.release", "vm.quarantine"]


def remediate(allow) -> dict:
    return {"vm": "web1", "reason": "x", "mode": "remediate", "allow": allow}


@pytest.mark.parametrize(
    "body, field",
    [
        ({"vm": "nobody", "reason": "x"}, "vm"),
        ({"vm": "web1", "reason": "x", "mode": "banish"}, "mode"),
        ({"vm": "web1"}, "reason"),
        ({"vm": "web1", "reason": "   "}, "reason"),
        ({"vm": "web1", "reason": "x", "mirror_to": "nobody"}, "mirror_to"),
        ({"vm": "web1", "reason": "x", "mirror_to": "web1"}, "mirror_to"),
        ({"vm": "web1", "reason": "x", "mirror_to": 7}, "mirror_to"),
        ({"vm": "web1", "reason": "x", "allow": []}, "allow"),
        (remediate({"dns": 1}), "allow"),
        (remediate([{"name": "dns", "services": ["udp/53"]}]), "allow[0]"),
        (remediate([{"name": "dns", "to": "any", "from": "any", "services": ["udp/53"]}]), "allow[0]"),
        (remediate([{"name": "dns", "to": "=web", "services": ["udp/53"]}]), "allow[0].to"),
        (remediate([{"name": "dns", "to": "unmanaged", "services": ["udp/53"]}]), "allow[0].to"),
        (remediate([{"name": "dns", "to": "any", "services": ["udp/99999"]}]), "allow[0].services"),
        (remediate([{"name": "dns", "to": "any", "services": []}]), "allow[0].services"),
        (remediate([{"name": "a", "to": "any", "services": ["icmp"]}] * 2), "allow[1].name"),
        (remediate([{"name": "dns", "to": "any", "services": ["udp/53"], "port": 1}]), "allow[0].port"),
        ({"vm": "web1", "reason": "x", "colour": "red"}, "colour"),
        (["web1"], "body"),
    ],
)
def test_bad_requests_are_refused_and_change_nothing(api, body, field):
    app, client = api
    before = app.policy
    answer = client.call("POST", "/v1/quarantine", body)
    assert answer.status == 400 and answer.json["field"] == field, answer.json
    assert app.policy is before and not app.store.load_policy().quarantine


def test_twice_and_releasing_what_is_not_in_quarantine_are_refused(api):
    app, client = api
    assert client.call("POST", "/v1/quarantine", {"vm": "web1", "reason": "x"}).status == 201
    twice = client.call("POST", "/v1/quarantine", {"vm": "web1", "reason": "again"})
    assert twice.status == 400 and "already in quarantine" in twice.json["error"]
    assert app.policy.quarantine["web1"].reason == "x"
    loose = client.call("DELETE", "/v1/quarantine/db1")
    assert loose.status == 404 and "not in quarantine" in loose.json["error"]  # as GET /v1/quarantine/db1 answers


def test_a_quarantined_vm_the_hypervisor_stops_publishing_stays_until_released(tmp_path):
    from controller.ovsdb_inventory import OvsdbInventory
    from tests.unit.test_ovsdb_inventory import FakeOvsdb

    app, client = make_api(tmp_path)
    ovs = FakeOvsdb()
    source = OvsdbInventory(app, enabled=True, read=ovs.read)
    ovs.publish("vnet0", "web1", "02:00:00:00:00:01")
    ovs.publish("vnet1", "db1", "02:00:00:00:00:02")
    source.refresh()
    assert client.call("POST", "/v1/quarantine", {"vm": "web1", "reason": "x"}).status == 201
    ovs.unplug("vnet0")
    ovs.unplug("vnet1")
    source.refresh()
    assert set(app.policy.vms) == {"web1"}, "db1 goes; web1 stays while in quarantine"
    assert client.call("DELETE", "/v1/quarantine/web1").status == 204
    source.refresh()
    assert not app.policy.vms


def test_explain_says_a_quarantined_end_is_dropped_whatever_the_rules_say(api):
    app, client = api
    assert client.call("POST", "/v1/policies", {"name": "all", "src": "any", "dst": "any", "action": "allow"}).status == 201
    assert client.call("POST", "/v1/quarantine", {"vm": "db1", "reason": "x"}).status == 201
    answer = client.call("GET", "/v1/explain?src=web1&dst=db1&proto=icmp").json
    assert (answer["action"], answer["effective_action"], answer["quarantined"]) == ("allow", "deny", ["db1"])
    client.call("DELETE", "/v1/quarantine/db1")
    answer = client.call("GET", "/v1/explain?src=web1&dst=db1&proto=icmp").json
    assert (answer["effective_action"], answer["quarantined"]) == ("allow", [])


# ---------------------------------------------------------------------------
# Alerts from an external IDS
# ---------------------------------------------------------------------------
def alert(client, vm: str, severity: str, signature: str = "ET TROJAN beacon"):
    return client.call("POST", "/v1/alerts", {"vm": vm, "severity": severity, "source": "suricata-1", "signature": signature})


def test_an_alert_below_the_threshold_is_recorded_and_one_at_it_quarantines(api):
    """The default: one alert of severity high or worse quarantines its VM; lower ones are only
    recorded (an IDS's low findings are too often wrong to cut a VM off for)."""
    app, client = api
    low = alert(client, "02:00:00:00:00:01", "medium", "port scan")  # by MAC
    assert low.status == 201 and (low.json["vm"], low.json["action"]) == ("web1", "alert")
    assert "web1" not in app.policy.quarantine
    high = alert(client, "web1", "critical")
    assert high.status == 201 and high.json["action"] == "quarantine"
    record = app.policy.quarantine["web1"]
    assert record.actor == "ids:suricata-1" and "ET TROJAN beacon" in record.reason
    assert alert(client, "web1", "high").json["action"] == "already-quarantined"
    listed = client.call("GET", "/v1/alerts?vm=web1").json
    assert [a["action"] for a in listed["alerts"]] == ["already-quarantined", "quarantine", "alert"]
    assert "high or worse" in listed["threshold"]
    audit_rows = [(e["action"], e["actor"]) for e in client.call("GET", "/v1/audit").json["entries"]]
    assert ("vm.quarantine", "ids:suricata-1") in audit_rows and ("vm.alert", "admin") in audit_rows
    text = client.call("GET", "/metrics").text
    assert prometheus_text.value(text, "goldilocks_alerts_total", severity="critical", action="quarantine") == 1
    assert prometheus_text.value(text, "goldilocks_quarantines_total", mode="isolate") == 1
    assert prometheus_text.value(text, "goldilocks_quarantined_vms", mode="isolate") == 1


def test_a_count_within_a_window_is_what_quarantines(tmp_path):
    from apps.alerts import AlertBook, Threshold

    book = AlertBook(Threshold("medium", count=3, window=60))
    assert not book.record("vm1", "high", 0) and not book.record("vm1", "low", 1) and not book.record("vm1", "medium", 2)
    assert not book.record("vm1", "medium", 100), "the first two fell out of the window"
    assert book.record("vm1", "critical", 101) is False and book.record("vm1", "high", 102) is True
    assert not AlertBook(Threshold(None)).record("vm1", "critical", 0), "none: alerts never quarantine"


@pytest.mark.parametrize(
    "body, field",
    [
        ({"vm": "nobody", "severity": "high", "source": "s", "signature": "x"}, "vm"),
        ({"vm": "02:aa:00:00:00:99", "severity": "high", "source": "s", "signature": "x"}, "vm"),
        ({"vm": "web1", "severity": "dire", "source": "s", "signature": "x"}, "severity"),
        ({"vm": "web1", "severity": "high", "signature": "x"}, "source"),
        ({"vm": "web1", "severity": "high", "source": "s", "signature": ""}, "signature"),
        ({"vm": "web1", "severity": "high", "source": "s", "signature": "x", "score": 9}, "score"),
    ],
)
def test_bad_alerts_are_refused_and_change_nothing(api, body, field):
    app, client = api
    answer = client.call("POST", "/v1/alerts", body)
    assert answer.status == 400 and answer.json["field"] == field, answer.json
    assert not app.policy.quarantine and client.call("GET", "/v1/alerts").json["alerts"] == []


def test_remediation_through_the_api_shows_its_allow_list_explains_and_survives_a_restart(api):
    app, client = api
    dns = [{"name": "dns", "to": "tier=db", "services": ["udp/53"]}]
    assert client.call("PUT", "/v1/remediation", {"allow": dns}).json == {"allow": dns}
    assert app.store.load_policy().remediation == app.policy.remediation, "written to SQLite"
    body = {"vm": "web1", "reason": "patch it", "mode": "remediate", "mirror_to": "db1"}
    record = client.call("POST", "/v1/quarantine", body).json
    assert (record["mode"], record["allow"], record["allow_from"], record["mirror_to"]) == ("remediate", dns, "configured", "db1")
    loaded = app.store.load_policy().quarantine["web1"]
    assert (loaded.mode, loaded.mirror_to, loaded.allow) == ("remediate", "db1", None)
    allowed = client.call("GET", "/v1/explain?src=web1&dst=db1&proto=udp&dport=53").json
    assert allowed["effective_action"] == "allow" and allowed["remediation"]["rule"]["name"] == "dns"
    for query in ("src=web1&dst=db1&proto=tcp&dport=53", "src=db1&dst=web1&proto=udp&dport=53"):
        refused = client.call("GET", f"/v1/explain?{query}").json
        assert refused["effective_action"] == "deny" and refused["remediation"]["action"] == "deny", query
    # The configured list changes under it; a bad one changes nothing.
    before = app.policy
    bad = client.call("PUT", "/v1/remediation", {"allow": [{"name": "x", "to": "any", "services": ["udp/0"]}]})
    assert bad.status == 400 and bad.json["field"] == "allow[0].services" and app.policy is before
    assert client.call("PUT", "/v1/remediation", {"allow": []}).status == 200
    assert client.call("GET", "/v1/quarantine/web1").json["allow"] == []
    actions = [e["action"] for e in client.call("GET", "/v1/audit").json["entries"]]
    assert actions[:3] == ["remediation.set", "vm.quarantine", "remediation.set"]
    # Its own allow-list wins over the configured one.
    assert client.call("DELETE", "/v1/quarantine/web1").status == 204
    body = {"vm": "web1", "reason": "patch it", "mode": "remediate", "allow": dns}
    assert client.call("POST", "/v1/quarantine", body).json["allow_from"] == "request"
