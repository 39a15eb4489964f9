"""Remediation, asked of the fake switch network: a VM in quarantine mode `remediate` reaches exactly
its allow-list (and gets the replies), nothing else; connections it had open are cut; a spoofed source
gets nothing through; another quarantined VM is never a peer; the configured allow-list applies to VMs
that brought none of their own."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from apps.quarantine import Quarantine
from apps.remediation import RemediationError, parse_allow_list
from tests.fakeoftable import FakeNetwork, arp_request, build_leaf_spine, first_ip, reply_frame, service_frame, vm_name
from topology.model import Host

_sports = itertools.count(41000)

DNS = [{"name": "dns", "to": "role=dns", "services": ["udp/53", "tcp/53"]}]
SSH_IN = [{"name": "ops", "from": "role=ops", "services": ["tcp/22"]}]


@pytest.fixture
def fabric():
    """Two hypervisors (one per leaf), three VMs each, a tunnel between them."""
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3, tunnels=True)


def roles(fabric) -> dict[Host, dict[str, str]]:
    """vm0 (hv1): the flagged one; vm1 (hv1): dns; vm2 (hv1): ops; vm3 (hv2): dns; vm4, vm5 (hv2): web."""
    names = ["web", "dns", "ops", "dns", "web", "web"]
    return {vm: {"role": role} for vm, role in zip(fabric.vms, names, strict=True)}


def remediate(state, host: Host, allow=None, configured=None):
    vm = state.vm(vm_name(host))
    if configured is not None:
        state = replace(state, remediation=parse_allow_list(configured))
    rules = None if allow is None else parse_allow_list(allow)
    return state.with_quarantine(Quarantine(vm.name, "test", "remediate", "admin", 0.0, vm.macs, None, rules))


def exchange(net: FakeNetwork, a: Host, b: Host, proto: str, port: int | None) -> tuple[bool, bool]:
    """a opens a connection to b: (did it reach b, did b's reply reach a)."""
    frame = service_frame(a, b, proto, port, sport=next(_sports))
    there = net.send(a, frame).reaches(b)
    back = net.send(b, reply_frame(frame)).reaches(a)
    return there, back


def policy(fabric, rules=(), default="allow"):
    from tests.fakeoftable import policy_state

    return policy_state(roles(fabric), rules, default)


@pytest.mark.parametrize("default", ["allow", "deny"])
def test_it_reaches_exactly_its_allow_list_and_gets_the_replies(fabric, default):
    """DNS to both DNS servers (on its hypervisor and across) works in both directions of the
    exchange, whatever policy says; any other service, or any other VM, is cut."""
    flagged, dns_near, ops, dns_far, web1, web2 = fabric.vms
    state = remediate(policy(fabric, default=default), flagged, allow=DNS)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    for server in (dns_near, dns_far):
        for proto in ("udp", "tcp"):
            assert exchange(net, flagged, server, proto, 53) == (True, True), (server.mac, proto)
        assert exchange(net, flagged, server, "tcp", 80) == (False, False)
        assert exchange(net, flagged, server, "icmp", None) == (False, False)
        # The allowance is one way: the server cannot open a connection to it.
        assert exchange(net, server, flagged, "udp", 53) == (False, False)
    for other in (ops, web1, web2):
        for proto, port in (("udp", 53), ("tcp", 80), ("icmp", None)):
            assert exchange(net, flagged, other, proto, port) == (False, False), (other.mac, proto)
            assert exchange(net, other, flagged, proto, port) == (False, False), (other.mac, proto)
    # Everyone else is untouched.
    assert exchange(net, web1, dns_near, "tcp", 80) == ((True, True) if default == "allow" else (False, False))


def test_an_inbound_allowance_lets_the_peers_in_and_not_the_vm_out(fabric):
    flagged, _dns, ops, _dns_far, web1, _web2 = fabric.vms
    state = remediate(policy(fabric), flagged, allow=SSH_IN)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    assert exchange(net, ops, flagged, "tcp", 22) == (True, True)
    assert exchange(net, flagged, ops, "tcp", 22) == (False, False)
    assert exchange(net, web1, flagged, "tcp", 22) == (False, False)


def test_its_peers_resolve_it_on_every_hypervisor_though_no_flood_reaches_it(fabric, monkeypatch):
    """A VM in remediation is cut from every flood, so an ARP request for it never reaches it:
    every hypervisor answers its address itself, even in a data centre too large for every
    address to be answered ahead of time."""
    from apps import compiler

    monkeypatch.setattr(compiler, "ARP_AHEAD_MAX", 0)
    flagged, *others = fabric.vms
    state = remediate(policy(fabric), flagged, allow=SSH_IN)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    for other in others:
        trace = net.send(other, arp_request(other, first_ip(flagged)))
        assert trace.delivered_to() == [(other.dpid, other.port)], other.mac
        assert trace.deliveries[0].packet["arp_sha"] == flagged.mac


def test_connections_open_before_the_quarantine_are_cut_even_on_an_allowed_service(fabric):
    """Its connections were tracked in the hypervisors' zones; remediation tracks in a zone of its
    own, where a connection it did not open since is unknown: a TCP stream midway is refused."""
    flagged, dns_near, _ops, _dns_far, web1, _web2 = fabric.vms
    state = policy(fabric)
    before = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    to_web = service_frame(flagged, web1, "tcp", 80, sport=next(_sports))
    assert before.send(flagged, to_web).reaches(web1) and before.send(web1, reply_frame(to_web)).reaches(flagged)
    after = FakeNetwork.compile(fabric.topo, remediate(state, flagged, allow=DNS), tunnels=fabric.tunnels)
    after.conntrack = before.conntrack
    assert not after.send(flagged, to_web).reaches(web1)
    assert not after.send(web1, reply_frame(to_web)).reaches(flagged)


def test_a_spoofed_source_address_gets_nothing_through(fabric):
    flagged, dns_near, *_ = fabric.vms
    state = remediate(policy(fabric), flagged, allow=DNS)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    frame = {**service_frame(flagged, dns_near, "udp", 53, sport=next(_sports)), "ipv4_src": "10.99.99.99"}
    assert not net.send(flagged, frame).deliveries
    # Its ARP with its own address is answered; with another VM's address it goes nowhere.
    assert net.send(flagged, arp_request(flagged, first_ip(dns_near))).deliveries
    assert not net.send(flagged, arp_request(flagged, first_ip(dns_near), sender_ip=first_ip(fabric.vms[4]))).deliveries


def test_another_quarantined_vm_is_never_a_peer(fabric):
    """Even an allowance to `any` never reaches another quarantined VM, nor lets it in."""
    flagged, dns_near, _ops, dns_far, web1, _web2 = fabric.vms
    anything = [{"name": "all", "to": "any", "services": ["any"]}, {"name": "in", "from": "any", "services": ["any"]}]
    state = remediate(policy(fabric), flagged, allow=anything)
    vm = state.vm(vm_name(dns_far))
    state = state.with_quarantine(Quarantine(vm.name, "also", "isolate", "admin", 0.0, vm.macs))
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    assert exchange(net, flagged, dns_near, "udp", 53) == (True, True)
    assert exchange(net, flagged, web1, "tcp", 80) == (True, True)
    assert exchange(net, web1, flagged, "tcp", 80) == (True, True)
    assert exchange(net, flagged, dns_far, "udp", 53) == (False, False)
    assert exchange(net, dns_far, flagged, "udp", 53) == (False, False)


def test_the_configured_allow_list_applies_unless_the_vm_brought_its_own(fabric):
    flagged, dns_near, ops, *_ = fabric.vms
    configured = remediate(policy(fabric), flagged, configured=DNS)
    net = FakeNetwork.compile(fabric.topo, configured, tunnels=fabric.tunnels)
    assert exchange(net, flagged, dns_near, "udp", 53) == (True, True)
    assert exchange(net, ops, flagged, "tcp", 22) == (False, False)
    own = remediate(policy(fabric), flagged, allow=SSH_IN, configured=DNS)
    net = FakeNetwork.compile(fabric.topo, own, tunnels=fabric.tunnels)
    assert exchange(net, flagged, dns_near, "udp", 53) == (False, False)
    assert exchange(net, ops, flagged, "tcp", 22) == (True, True)
    # An empty allow-list is isolation.
    empty = remediate(policy(fabric), flagged, configured=[])
    net = FakeNetwork.compile(fabric.topo, empty, tunnels=fabric.tunnels)
    assert exchange(net, flagged, dns_near, "udp", 53) == (False, False)


def test_it_moves_and_its_allowances_follow_once_it_is_seen_there(fabric):
    flagged, dns_near, _ops, dns_far, *_ = fabric.vms
    state = remediate(policy(fabric), flagged, allow=DNS)
    spare = max(fabric.topo.edge_ports(dns_far.dpid))
    moved = replace(flagged, dpid=dns_far.dpid, port=spare)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    frame = service_frame(flagged, dns_far, "udp", 53, sport=next(_sports))
    trace = net.trace(moved.dpid, moved.port, frame)
    assert not trace.deliveries and trace.to_controller, "on a port it was not seen on: dropped, and shown to the controller"
    fabric.topo.host_seen(flagged.mac, moved.dpid, moved.port)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    assert exchange(net, moved, dns_far, "udp", 53) == (True, True)
    assert exchange(net, moved, dns_near, "udp", 53) == (True, True)
    assert exchange(net, moved, dns_far, "tcp", 80) == (False, False)


def test_allow_lists_are_checked_whole():
    with pytest.raises(RemediationError) as caught:
        parse_allow_list([{"name": "ok", "to": "any", "services": ["udp/53"]}, {"name": "bad", "to": "any", "services": ["x"]}])
    assert caught.value.field == "allow[1].services"


@pytest.mark.parametrize("peers", ["role=dns", "any"])
def test_what_policy_encrypts_stays_encrypted_and_is_dropped_without_a_tunnel(fabric, peers):
    """Remediation narrows what passes and never weakens it: DNS to a server policy encrypts to goes
    through the tunnel both ways, never across the fabric in clear; with no tunnel, it is dropped."""
    flagged, dns_near, _ops, dns_far, *_ = fabric.vms
    rules = [{"src": "role=web", "dst": "role=dns", "action": "encrypt", "services": ["udp/53"]}]
    allow = [{"name": "dns", "to": peers, "services": ["udp/53", "tcp/53"]}]
    state = remediate(policy(fabric, rules), flagged, allow=allow)
    net = FakeNetwork.compile(fabric.topo, state, tunnels=fabric.tunnels)
    query = service_frame(flagged, dns_far, "udp", 53, sport=next(_sports))
    there = [d for d in net.send(flagged, query).deliveries if d.at == (dns_far.dpid, dns_far.port)]
    back = [d for d in net.send(dns_far, reply_frame(query)).deliveries if d.at == (flagged.dpid, flagged.port)]
    assert there and back
    assert all(net.through_tunnel(d) and not net.crossed_in_clear(d) for d in there + back), "crossed in clear"
    # TCP 53 is not encrypted by policy: it goes in clear, as it would without the quarantine.
    tcp = service_frame(flagged, dns_far, "tcp", 53, sport=next(_sports))
    assert [d for d in net.send(flagged, tcp).deliveries if net.crossed_in_clear(d)]
    # On its own hypervisor there is nothing to cross.
    assert exchange(net, flagged, dns_near, "udp", 53) == (True, True)
    # No tunnel: fail-closed.
    closed = FakeNetwork.compile(fabric.topo, state)
    assert exchange(closed, flagged, dns_far, "udp", 53) == (False, False)
    assert exchange(closed, flagged, dns_far, "tcp", 53) == (True, True)
