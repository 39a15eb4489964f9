"""VMs the hypervisor publishes in OVS Interface external_ids: parsed from `ovs-vsctl --format=json`,
merged into the inventory without ever overriding the API or the inventory file, removed when their
interface goes away, and a bad entry skipped without touching anything else."""

from __future__ import annotations

import json
import time

import pytest

from controller import inventory_file
from controller.launcher import parse_args
from controller.ovsdb_inventory import OvsdbInventory, OvsdbUnavailable, parse_interfaces, read_interfaces
from controller.settings import Settings
from tests.api_stub import make_api

MAC1, MAC2, MAC3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"


def iface(name: str, ofport: int | None = 1, **external_ids: str) -> list:
    """One row as ovs-vsctl prints it: external_ids is ["map", [[k, v], ...]], an unset ofport ["set", []]."""
    ids = {k.replace("_", "-"): v for k, v in external_ids.items()}
    return [name, ["map", [[k, v] for k, v in sorted(ids.items())]], ofport if ofport is not None else ["set", []]]


def table(*rows: list) -> str:
    return json.dumps({"data": list(rows), "headings": ["name", "external_ids", "ofport"]})


def vm_iface(name: str, vm: str, mac: str, labels: str | None = None, ips: str | None = None) -> list:
    ids = {"vm_id": vm, "attached_mac": mac}
    if labels is not None:
        ids["goldilocks_labels"] = labels
    if ips is not None:
        ids["goldilocks_ips"] = ips
    return iface(name, **ids)


def error_keys(published) -> set[tuple[str, str]]:
    return {(e.interface, e.key) for e in published.errors}


# -- parsing ------------------------------------------------------------------------------------
def test_interfaces_with_vm_id_and_attached_mac_publish_vms_and_other_ports_are_ignored():
    published = parse_interfaces(
        table(
            iface("br-int", ofport=65534),
            iface("hv1-eth1"),  # an uplink: no external_ids
            iface("tap-os", attached_mac=MAC3, iface_id="c0ffee"),  # OpenStack's keys, no vm-id: not ours
            vm_iface("hv1-eth2", "web1", "02:00:00:00:00:0A", labels="tier=web, tenant=blue", ips="10.0.0.1"),
            vm_iface("hv1-eth3", "db1", MAC2, labels="tier=db,sensitivity="),
            iface("hv1-eth4", ofport=None, vm_id="bare", attached_mac="02:00:00:00:00:04"),
        )
    )
    assert published.errors == ()
    assert sorted(published.vms) == ["bare", "db1", "web1"]
    web = published.vms["web1"]
    assert web.macs == ("02:00:00:00:00:0a",), "normalised as the API normalises"
    assert web.ips == ("10.0.0.1",) and web.label_map == {"tier": "web", "tenant": "blue"}
    assert published.vms["db1"].label_map == {"tier": "db", "sensitivity": ""}, "key= is an empty value"
    assert published.vms["bare"].labels == () and published.vms["bare"].ips == ()
    assert published.interfaces["web1"] == ("hv1-eth2",)


def test_an_empty_interface_table_publishes_nothing_but_unusable_output_is_a_failed_read():
    assert parse_interfaces(table()).vms == {}
    for text in ("", "ovs-vsctl: unix:/var/run/openvswitch/db.sock: database connection failed", '{"data": 1}'):
        with pytest.raises(OvsdbUnavailable):
            parse_interfaces(text)


def test_a_vm_id_without_attached_mac_is_skipped_and_named_and_others_still_publish():
    published = parse_interfaces(
        table(iface("hv1-eth2", vm_id="web1", goldilocks_labels="tier=web"), vm_iface("hv1-eth3", "db1", MAC2))
    )
    assert list(published.vms) == ["db1"]
    assert error_keys(published) == {("hv1-eth2", "attached-mac")}
    assert "web1" in published.broken
    assert str(published.errors[0]).startswith("interface hv1-eth2: external_ids:attached-mac: missing")


@pytest.mark.parametrize(
    "labels, detail",
    [
        ("tier", "'tier' is not key=value"),
        ("tier=web!", "label tier: 'web!' is not a valid label value"),
        ("tier=web,tier=db", "label tier: given twice"),
        ("-bad=x", "label -bad: '-bad' is not a valid label key"),
    ],
)
def test_bad_labels_skip_that_vm_with_the_interface_and_key_named(labels, detail):
    published = parse_interfaces(table(vm_iface("hv1-eth2", "web1", MAC1, labels=labels), vm_iface("hv1-eth3", "db1", MAC2)))
    assert list(published.vms) == ["db1"]
    assert [(e.interface, e.key, e.message) for e in published.errors] == [("hv1-eth2", "goldilocks-labels", detail)]


@pytest.mark.parametrize(
    "row, key",
    [
        (vm_iface("hv1-eth2", "web1", "01:00:5e:00:00:01"), "attached-mac"),
        (vm_iface("hv1-eth2", "web1", "not-a-mac"), "attached-mac"),
        (vm_iface("hv1-eth2", "web1", MAC1, ips="10.0.0.1,nope"), "goldilocks-ips"),
        (vm_iface("hv1-eth2", "bad name!", MAC1), "vm-id"),
        (iface("hv1-eth2", goldilocks_labels="tier=web"), "vm-id"),
    ],
)
def test_bad_addresses_names_and_orphan_labels_are_skipped_with_the_key_named(row, key):
    published = parse_interfaces(table(row, vm_iface("hv1-eth3", "db1", MAC2)))
    assert list(published.vms) == ["db1"]
    assert error_keys(published) == {("hv1-eth2", key)}


def test_a_mac_published_for_two_vms_is_ambiguous_and_neither_gets_it():
    published = parse_interfaces(
        table(vm_iface("hv1-eth2", "web1", MAC1), vm_iface("hv1-eth3", "web2", MAC1), vm_iface("hv1-eth4", "db1", MAC2))
    )
    assert list(published.vms) == ["db1"]
    assert published.broken == {"web1", "web2"}
    messages = {str(e) for e in published.errors}
    assert f"interface hv1-eth2: external_ids:attached-mac: {MAC1} is also published for VM web2 (interface hv1-eth3)" in messages
    assert f"interface hv1-eth3: external_ids:attached-mac: {MAC1} is also published for VM web1 (interface hv1-eth2)" in messages


def test_interfaces_with_one_vm_id_are_one_vm_with_several_nics_and_their_labels_must_agree():
    nics = parse_interfaces(
        table(vm_iface("vnet0", "web1", MAC1, labels="tier=web", ips="10.0.0.1"), vm_iface("vnet1", "web1", MAC2, ips="10.1.0.1"))
    )
    assert nics.errors == ()
    web = nics.vms["web1"]
    assert web.macs == (MAC1, MAC2) and web.ips == ("10.0.0.1", "10.1.0.1") and web.label_map == {"tier": "web"}
    assert nics.interfaces["web1"] == ("vnet0", "vnet1")

    disagree = parse_interfaces(
        table(vm_iface("vnet0", "web1", MAC1, labels="tier=web"), vm_iface("vnet1", "web1", MAC2, labels="tier=db"))
    )
    assert disagree.vms == {} and disagree.broken == {"web1"}
    assert error_keys(disagree) == {("vnet1", "goldilocks-labels")}


# -- merging into a running controller ----------------------------------------------------------------
class FakeOvsdb:
    """What ovs-vsctl would print, settable by the test; `fail` makes the next reads fail like it."""

    def __init__(self) -> None:
        self.rows: dict[str, list] = {}
        self.fail: BaseException | None = None
        self.reads = 0

    def publish(self, interface: str, vm: str, mac: str, labels: str | None = None, ips: str | None = None) -> None:
        self.rows[interface] = vm_iface(interface, vm, mac, labels, ips)

    def unplug(self, interface: str) -> None:
        del self.rows[interface]

    def read(self) -> str:
        self.reads += 1
        if self.fail is not None:
            raise self.fail
        return table(*self.rows.values())


@pytest.fixture
def env(tmp_path):
    """(stub controller, admin REST client, fake OVSDB, the OVSDB source)."""
    app, client = make_api(tmp_path)
    ovs = FakeOvsdb()
    source = OvsdbInventory(app, enabled=True, read=ovs.read)
    return app, client, ovs, source


def audit_rows(app, actor: str = "ovsdb") -> list[tuple[str, str]]:
    return [(e.action, e.target) for e in reversed(app.store.audit_entries(1000)) if e.actor == actor]


def test_a_published_vm_is_added_updated_and_removed_with_its_interface(env):
    app, client, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=web")
    assert source.refresh()
    shown = client.call("GET", "/v1/vms/web1").json
    assert (shown["macs"], shown["labels"], shown["source"]) == ([MAC1], {"tier": "web"}, "ovsdb")

    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=db", ips="10.0.0.1")
    assert source.refresh()
    assert app.policy.vms["web1"].label_map == {"tier": "db"} and app.policy.vms["web1"].ips == ("10.0.0.1",)

    ovs.unplug("hv1-eth2")
    assert source.refresh()
    assert client.call("GET", "/v1/vms/web1").status == 404
    assert audit_rows(app) == [("vm.create", "web1"), ("vm.replace", "web1"), ("vm.delete", "web1")]
    assert app.store.load_policy() == app.policy, "every change was written to the store"


def test_a_read_that_finds_nothing_new_writes_nothing_and_compiles_nothing(env):
    app, _, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1)
    source.refresh()
    compiles, entries = app.compiles, app.store.audit_entries(1000)
    assert not source.refresh() and not source.refresh()
    assert (app.compiles, app.store.audit_entries(1000)) == (compiles, entries)


def test_a_bad_entry_is_skipped_logged_once_and_never_blocks_the_others(env, caplog):
    app, _, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier")
    ovs.publish("hv1-eth3", "db1", MAC2, labels="tier=db")
    caplog.set_level("INFO", logger="goldilocks.ovsdb_inventory")
    source.refresh()
    assert sorted(app.policy.vms) == ["db1"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == ["interface hv1-eth2: external_ids:goldilocks-labels: 'tier' is not key=value; VM skipped"]
    ovs.publish("hv1-eth4", "app1", MAC3)  # something else changes: the old problem is not logged again
    caplog.clear()
    source.refresh()
    assert sorted(app.policy.vms) == ["app1", "db1"]
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


def test_a_typo_on_the_port_of_a_vm_ovs_owns_keeps_the_vm_as_it_was(env):
    app, _, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=web")
    source.refresh()
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=web,oops")
    source.refresh()
    assert app.policy.vms["web1"].label_map == {"tier": "web"}, "neither removed nor half-updated"


def test_a_vm_defined_through_the_api_is_never_overwritten_or_removed_by_ovs(env):
    app, client, ovs, source = env
    assert client.call("PUT", "/v1/vms/web1", {"macs": [MAC1], "labels": {"tier": "web"}}).status == 201
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=db")
    assert not source.refresh()
    ovs.unplug("hv1-eth2")
    assert not source.refresh()
    shown = client.call("GET", "/v1/vms/web1").json
    assert (shown["labels"], shown["source"]) == ({"tier": "web"}, "api")
    assert audit_rows(app) == []


def test_a_put_takes_a_vm_away_from_ovs_even_with_the_same_content(env):
    app, client, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=web")
    source.refresh()
    replaced = client.call("PUT", "/v1/vms/web1", {"macs": [MAC1], "labels": {"tier": "web"}})
    assert replaced.status == 200 and replaced.json["source"] == "api"
    assert audit_rows(app, "admin") == [("vm.replace", "web1")], "taking ownership is a change, and audited"
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=db")
    source.refresh()
    assert app.policy.vms["web1"].label_map == {"tier": "web"}, "OVS no longer updates it"
    ovs.unplug("hv1-eth2")
    source.refresh()
    assert "web1" in app.policy.vms, "nor removes it"


def test_a_label_patch_through_the_api_also_takes_the_vm_over(env):
    app, client, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=web")
    source.refresh()
    assert client.call("PATCH", "/v1/vms/web1/labels", {"set": {"pinned": "yes"}}).json["source"] == "api"
    ovs.unplug("hv1-eth2")
    source.refresh()
    assert app.policy.vms["web1"].label_map == {"tier": "web", "pinned": "yes"}


def test_a_vm_deleted_through_the_api_comes_back_while_the_hypervisor_still_publishes_it(env):
    app, client, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1)
    source.refresh()
    assert client.call("DELETE", "/v1/vms/web1").status == 204
    assert app.store.vm_sources() == {}, "the source row goes with the VM"
    assert source.refresh() and app.store.vm_source("web1") == "ovsdb"


def test_a_vm_whose_mac_another_vm_holds_is_skipped_whole_and_the_rest_applies(env, caplog):
    app, client, ovs, source = env
    client.call("PUT", "/v1/vms/db1", {"macs": [MAC2], "ips": ["10.0.0.2"]})
    ovs.publish("hv1-eth2", "web1", MAC1, ips="10.0.0.2")  # db1's IP
    ovs.publish("hv1-eth3", "app1", MAC3)
    caplog.set_level("WARNING", logger="goldilocks.ovsdb_inventory")
    source.refresh()
    assert sorted(app.policy.vms) == ["app1", "db1"]
    assert any("VM web1: ips: 10.0.0.2 belongs to both db1 and web1" in r.getMessage() for r in caplog.records)
    client.call("DELETE", "/v1/vms/db1")
    source.refresh()
    assert app.policy.vms["web1"].ips == ("10.0.0.2",), "applied once the conflict is gone"


def test_a_mac_may_move_between_ovs_vms_in_one_read_whatever_their_order(env):
    app, _, ovs, source = env
    ovs.publish("hv1-eth2", "b-old", MAC1)
    source.refresh()
    ovs.publish("hv1-eth2", "b-old", MAC2)
    ovs.publish("hv1-eth3", "a-new", MAC1)  # sorts first, but needs b-old to let go of MAC1
    source.refresh()
    assert app.policy.vms["a-new"].macs == (MAC1,) and app.policy.vms["b-old"].macs == (MAC2,)


def test_ovs_ownership_survives_a_restart(env, tmp_path):
    app, _, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1)
    source.refresh()
    app.store.close()
    restarted, _ = make_api(tmp_path)
    assert restarted.store.vm_source("web1") == "ovsdb"
    ovs.unplug("hv1-eth2")
    OvsdbInventory(restarted, enabled=True, read=ovs.read).refresh()
    assert "web1" not in restarted.policy.vms, "the restarted controller still knew OVS owned it"


def test_the_inventory_file_takes_a_vm_away_from_ovs(env, tmp_path):
    app, _, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=web")
    source.refresh()
    path = tmp_path / "vms.yaml"
    path.write_text(f"vms:\n  web1:\n    macs: ['{MAC1}']\n    labels: {{tier: web}}\n")
    app.policy = inventory_file.apply_at_start(app.store, app.policy, path)
    assert app.store.vm_source("web1") == "file"
    ovs.publish("hv1-eth2", "web1", MAC1, labels="tier=db")
    source.refresh()
    assert app.policy.vms["web1"].label_map == {"tier": "web"}


def test_a_failed_read_changes_nothing_and_a_missing_ovs_vsctl_turns_the_source_off(env, caplog):
    app, _, ovs, source = env
    ovs.publish("hv1-eth2", "web1", MAC1)
    source.refresh()
    caplog.set_level("WARNING", logger="goldilocks.ovsdb_inventory")
    ovs.fail = OvsdbUnavailable("database connection failed")
    assert not source.refresh() and not source.refresh()
    assert "web1" in app.policy.vms, "an unreadable OVSDB is not an empty one"
    assert len(caplog.records) == 1, "logged once, not on every read"
    ovs.fail = FileNotFoundError("ovs-vsctl")
    source.refresh()
    assert not source.enabled
    reads = ovs.reads
    source.request()
    source.tick(1e12)
    assert ovs.reads == reads


def test_port_events_during_a_read_share_one_thread_and_get_one_more_read(tmp_path):
    app, _ = make_api(tmp_path)
    ovs, spawned = FakeOvsdb(), []

    def read() -> str:
        text = ovs.read()
        if ovs.reads == 1:  # while ovs-vsctl runs, a VM is plugged in and its port event arrives
            ovs.publish("hv1-eth2", "web1", MAC1)
            source.ports_changed()
        return text

    source = OvsdbInventory(
        app, enabled=True, read=read, spawn=lambda fn, *args: spawned.append((fn, args)), sleep=lambda s: None
    )
    source.request()
    source.ports_changed()
    source.tick(0.0)
    assert len(spawned) == 1, "one green thread for the burst"
    fn, args = spawned[0]
    fn(*args)
    assert ovs.reads == 2, "one more read for the port event that came during the first, not one per request"
    assert "web1" in app.policy.vms
    source.ports_changed()
    assert len(spawned) == 2, "once idle, the next request starts a new read"


def test_the_ovs_vsctl_wrapper_is_bounded_and_tells_failure_from_absence():
    ok = read_interfaces(command=("echo", table(vm_iface("hv1-eth2", "web1", MAC1))))
    assert list(parse_interfaces(ok).vms) == ["web1"]
    with pytest.raises(OvsdbUnavailable, match="database connection failed"):
        read_interfaces(command=("sh", "-c", "echo 'ovs-vsctl: database connection failed' >&2; exit 1"))
    started = time.monotonic()
    with pytest.raises(OvsdbUnavailable, match="did not answer within 0.3 s"):
        read_interfaces(timeout=0.3, command=("sleep", "5"))
    assert time.monotonic() - started < 2
    with pytest.raises(FileNotFoundError):
        read_interfaces(command=("goldilocks-no-such-ovs-vsctl",))


# -- switching it on and off --------------------------------------------------------------------------
def test_the_flag_and_the_environment_turn_the_source_on_and_off(monkeypatch):
    assert parse_args([]).ovsdb_inventory is None
    assert parse_args(["--ovsdb-inventory"]).ovsdb_inventory is True
    assert parse_args(["--no-ovsdb-inventory"]).ovsdb_inventory is False
    assert Settings.from_env({"GOLDILOCKS_OVSDB_INVENTORY": "0"}).ovsdb_inventory is False
    assert Settings.from_env({"GOLDILOCKS_OVSDB_INVENTORY": "1"}).ovsdb_inventory is True
    monkeypatch.setattr("shutil.which", lambda name: None)
    assert Settings.from_env({}).ovsdb_inventory is False, "no ovs-vsctl: off by default"
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert Settings.from_env({}).ovsdb_inventory is True


class FakeSession:
    hypervisor = None

    def send(self, message: dict) -> None:
        pass

    def close(self) -> None:
        pass


def enrolled_agent(app, hypervisor: str):
    """An agent of the stub controller, enrolled and connected (its hello accepted)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    from crypto import wgkeys
    from crypto.ca import make_key_and_csr

    value, _, _ = app.agents.issue_token()
    _, csr = make_key_and_csr(hypervisor)
    cert_pem, _ = app.agents.enroll(value, hypervisor, csr)
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(Encoding.DER)
    hello = {
        "type": "hello", "hypervisor": hypervisor, "software": "test", "listen_port": 51820, "bridge": f"br-{hypervisor}",
        "wg_public_key": wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key())),
        "underlay": {"ip": "192.0.2.1", "mac": "02:00:00:00:00:99", "port": "eth9"},
    }  # fmt: skip
    app.agents.hello(FakeSession(), app.agents.authenticate(der), hello)


def agent_report(app, hypervisor: str, rows: list[dict]) -> None:
    app.agents.report(hypervisor, {"type": "report", "interfaces": rows, "tunnels": [], "wg_running": True})


def test_enrolled_agents_are_the_hypervisors_truth_and_the_local_ovsdb_is_not_read(env):
    app, client, ovs, source = env
    app.agents.on_interfaces = source.agents_reported
    ovs.publish("local-eth1", "local1", MAC1)  # what the controller's own host publishes
    enrolled_agent(app, "hv1")
    enrolled_agent(app, "hv2")
    assert not source.refresh() and ovs.reads == 0, "no agent has reported yet: nothing changes, nothing is read"
    agent_report(app, "hv1", [{"name": "vnet0", "external_ids": {"vm-id": "web1", "attached-mac": MAC2,
                                                                 "goldilocks-labels": "tier=web"}}])  # fmt: skip
    agent_report(app, "hv2", [{"name": "vnet0", "external_ids": {"vm-id": "db1", "attached-mac": MAC3}}])
    assert {n: client.call("GET", f"/v1/vms/{n}").status for n in ("web1", "db1", "local1")} == {
        "web1": 200, "db1": 200, "local1": 404}  # fmt: skip
    assert ovs.reads == 0
    assert app.declared_vm_interfaces == {"vnet0"}
    # An agent that goes quiet keeps its VMs; a revoked one's are no longer believed.
    app.agents.disconnected(app.agents.sessions["hv2"])
    assert client.call("GET", "/v1/vms/db1").status == 200
    app.agents.revoke("hv2")
    assert client.call("GET", "/v1/vms/db1").status == 404 and client.call("GET", "/v1/vms/web1").status == 200
