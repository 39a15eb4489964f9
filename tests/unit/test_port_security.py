"""Port security and automatic flagging: on a managed VM's port, frames from another MAC, from an
IPv4 address not its own, or ARP claiming another address are dropped and shown to the controller
as evidence (never learned from); the controller raises an alert or quarantines the VM, per kind."""

from __future__ import annotations

import struct
import time

import pytest

from apps import pipeline
from apps.flows import app_of
from apps.port_security import violation
from controller.security import SpoofGuard
from tests.api_stub import make_api
from tests.fakeoftable import FakeNetwork, arp_reply, build_leaf_spine, first_ip, ipv4_frame, policy_state, service_frame
from topology.learner import Learner, Punt
from topology.model import Host


@pytest.fixture
def fabric():
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2)


def network(fabric, managed=None):
    """Every VM managed (in the inventory, with its IP) unless `managed` names some."""
    chosen = fabric.vms if managed is None else managed
    return FakeNetwork.compile(fabric.topo, policy_state({vm: {"tier": "web"} for vm in chosen}))


def evidence_only(trace) -> bool:
    return not trace.deliveries and trace.punts and all(app_of(p.cookie) == "port-security" for p in trace.punts)


def test_a_managed_vm_cannot_send_as_another_mac_ip_or_arp_sender_and_is_shown_as_evidence(fabric):
    net = network(fabric)
    vm, peer, other = fabric.vms[0], fabric.vms[1], fabric.vms[2]
    assert net.send(vm, service_frame(vm, peer, "tcp", 80, sport=1234)).reaches(peer), "its own traffic flows"
    stolen_mac = Host(other.mac, vm.ips, vm.dpid, vm.port)  # another VM's MAC, from vm's port
    assert evidence_only(net.send(stolen_mac, ipv4_frame(stolen_mac, peer.mac, first_ip(peer))))
    random_mac = Host("02:66:66:66:66:66", vm.ips, vm.dpid, vm.port)
    assert evidence_only(net.send(random_mac, ipv4_frame(random_mac, peer.mac, first_ip(peer))))
    stolen_ip = Host(vm.mac, other.ips, vm.dpid, vm.port)  # its own MAC, another VM's IP
    assert evidence_only(net.send(stolen_ip, service_frame(stolen_ip, peer, "udp", 53, sport=999)))
    liar = Host(vm.mac, other.ips, vm.dpid, vm.port)  # ARP: "other's address is at my MAC"
    assert evidence_only(net.send(liar, arp_reply(liar, peer)))
    assert net.send(vm, arp_reply(vm, peer)).reaches(peer), "its own ARP answers pass"
    dhcp = {**ipv4_frame(vm, "ff:ff:ff:ff:ff:ff", "255.255.255.255"), "ipv4_src": "0.0.0.0"}
    assert net.send(vm, dhcp).deliveries, "a DHCP request from 0.0.0.0 is not spoofing"


def test_ports_of_unmanaged_hosts_are_not_pinned(fabric):
    """Without an inventory entry the hypervisor knows nothing to pin: learning goes on as before."""
    vm = fabric.vms[0]
    net = network(fabric, managed=fabric.vms[1:])
    stranger = Host("02:66:66:66:66:66", vm.ips, vm.dpid, vm.port)
    trace = net.send(stranger, ipv4_frame(stranger, fabric.vms[1].mac, first_ip(fabric.vms[1])))
    assert [app_of(p.cookie) for p in trace.punts] == ["topology"], "an unknown source to learn, not evidence"


def test_the_learner_never_learns_from_evidence(fabric):
    learner = Learner(fabric.topo)
    vm, other = fabric.vms[0], fabric.vms[2]
    out = learner.packet_in(vm.dpid, vm.port, _ipv4(other.mac, first_ip(other), "10.9.9.9"), Punt.EVIDENCE, 0.0)
    assert not out.changed and fabric.topo.hosts[other.mac].port == other.port, "the stolen MAC did not move"


def _eth(dst: str, src: str, eth_type: int) -> bytes:
    return bytes.fromhex(dst.replace(":", "")) + bytes.fromhex(src.replace(":", "")) + struct.pack("!H", eth_type)


def _ipv4(src_mac: str, src_ip: str, dst_ip: str) -> bytes:
    addresses = bytes(map(int, src_ip.split("."))) + bytes(map(int, dst_ip.split(".")))
    header = bytes([0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0]) + addresses
    return _eth("02:00:00:00:00:99", src_mac, 0x0800) + header + bytes(8)


def _arp(src_mac: str, sender_ip: str, op: int = 2) -> bytes:
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, op) + bytes.fromhex(src_mac.replace(":", ""))
    body += bytes(map(int, sender_ip.split("."))) + bytes(6) + bytes([10, 0, 0, 9])
    return _eth("ff:ff:ff:ff:ff:ff", src_mac, 0x0806) + body


@pytest.mark.parametrize(
    "frame, kind",
    [
        (_ipv4("02:66:00:00:00:01", "10.0.0.1", "10.0.0.9"), "mac-spoofing"),
        (_ipv4("02:00:00:00:00:01", "10.0.0.77", "10.0.0.9"), "ip-spoofing"),
        (_arp("02:00:00:00:00:01", "10.0.0.2"), "arp-spoofing"),
        (_ipv4("02:00:00:00:00:01", "10.0.0.1", "10.0.0.9"), None),
        (_ipv4("02:00:00:00:00:01", "0.0.0.0", "255.255.255.255"), None),
        (_arp("02:00:00:00:00:01", "10.0.0.1"), None),
    ],
)
def test_what_counts_as_a_violation(frame, kind):
    found = violation(frame, ["02:00:00:00:00:01"], ["10.0.0.1"])
    assert (found[0] if found else None) == kind


# ---------------------------------------------------------------------------
# What the controller does with evidence
# ---------------------------------------------------------------------------
@pytest.fixture
def guarded(tmp_path, fabric):
    app, client = make_api(tmp_path, fabric.topo)
    for i, vm in enumerate(fabric.vms):
        body = {"macs": [vm.mac], "ips": sorted(vm.ips), "labels": {"tier": "web"}}
        assert client.call("PUT", f"/v1/vms/vm{i}", body).status == 201
    return app, client, SpoofGuard(app, clock=lambda: 1000.0)


def test_by_default_mac_and_arp_spoofing_quarantine_and_ip_spoofing_alerts(guarded, fabric):
    app, client, guard = guarded
    vm, other = fabric.vms[0], fabric.vms[2]
    assert guard.evidence(vm.dpid, vm.port, _ipv4(vm.mac, first_ip(other), "10.9.9.9")) == "alert"
    assert "vm0" not in app.policy.quarantine
    assert guard.evidence(vm.dpid, vm.port, _ipv4(vm.mac, first_ip(other), "10.9.9.9")) is None, "once a minute"
    assert guard.evidence(vm.dpid, vm.port, _arp(vm.mac, first_ip(other))) == "quarantine"
    record = app.policy.quarantine["vm0"]
    assert record.actor == "goldilocks" and "arp-spoofing" in record.reason and first_ip(other) in record.reason
    liar = fabric.vms[1]
    assert guard.evidence(liar.dpid, liar.port, _ipv4(other.mac, first_ip(liar), "10.9.9.9")) == "quarantine"
    assert "mac-spoofing" in app.policy.quarantine["vm1"].reason
    alerts = client.call("GET", "/v1/alerts").json["alerts"]
    assert [(a["vm"], a["action"], a["source"]) for a in alerts] == [
        ("vm1", "quarantine", "goldilocks"), ("vm0", "quarantine", "goldilocks"), ("vm0", "alert", "goldilocks")]  # fmt: skip
    assert other.mac in alerts[0]["signature"], "the evidence names the frame's fields"


def test_responses_are_configurable_and_evidence_from_a_port_nobody_owns_is_ignored(guarded, fabric):
    app, client, _ = guarded
    guard = SpoofGuard(app, (("mac-spoofing", "alert"),), clock=time.time)
    vm, other = fabric.vms[0], fabric.vms[2]
    assert guard.evidence(vm.dpid, vm.port, _ipv4(other.mac, first_ip(vm), "10.9.9.9")) == "alert"
    assert not app.policy.quarantine
    assert guard.evidence(vm.dpid, pipeline.OFPP_MAX - 1, _ipv4(other.mac, first_ip(vm), "10.9.9.9")) is None


def test_a_quarantined_vm_is_followed_but_never_believed_about_addresses(fabric):
    """Copies of a quarantined VM's frames tell where it is, never which address it has: an ARP
    claiming a neighbour's address must not teach the ARP responder to answer with its MAC."""
    from apps.forwarding import punt_reason
    from apps.quarantine import quarantine_flows

    vm, neighbour = fabric.vms[0], fabric.vms[1]
    copy = next(e for e in quarantine_flows([vm.mac]) if e.actions)
    assert punt_reason(pipeline.INGRESS, copy.cookie) is Punt.FOLLOW
    learner = Learner(fabric.topo)
    learner.packet_in(vm.dpid, vm.port, _arp(vm.mac, first_ip(neighbour)), Punt.FOLLOW, 0.0)
    assert first_ip(neighbour) in fabric.topo.hosts[neighbour.mac].ips
    assert first_ip(neighbour) not in fabric.topo.hosts[vm.mac].ips


def test_an_evidence_frame_reads_only_its_own_port_not_every_host_or_vm(guarded, fabric, monkeypatch):
    """A flood of dropped frames is handled frame by frame: each must cost what its port holds,
    not a walk of the fabric's hosts and the inventory (it rebuilt a MAC -> VM map per frame)."""
    app, _, guard = guarded
    vm, other = fabric.vms[0], fabric.vms[2]

    def walked(*args, **kwargs):
        raise AssertionError("evidence walked every host or every VM")

    monkeypatch.setattr(type(app.topo.hosts), "values", walked)
    monkeypatch.setattr(type(app.topo.hosts), "items", walked)
    monkeypatch.setattr(type(app.policy.vm_by_mac()), "items", walked)
    monkeypatch.setattr(type(app.policy.vm_by_mac()), "__iter__", walked)
    assert guard.evidence(vm.dpid, vm.port, _ipv4(vm.mac, first_ip(other), "10.9.9.9")) == "alert"
