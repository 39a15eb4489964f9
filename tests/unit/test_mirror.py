"""Quarantine `mirror_to`, asked of the fake switch network: every frame from and to the quarantined
VM reaches the analyzer exactly once, untagged and as it was sent, whether quarantine dropped it or
(in remediation) let it through; nobody else's frames are copied; nobody can inject into a mirror."""

from __future__ import annotations

import itertools

import pytest

from apps import mirror
from apps.quarantine import Quarantine
from apps.remediation import parse_allow_list
from tests.fakeoftable import (
    FakeNetwork,
    arp_request,
    build_leaf_spine,
    first_ip,
    policy_state,
    reply_frame,
    service_frame,
    vm_name,
)
from topology.model import Host

_sports = itertools.count(42000)


@pytest.fixture
def fabric():
    """Two leaves, a hypervisor each with three VMs: vm0-vm2 on hv1, vm3-vm5 on hv2."""
    return build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3, tunnels=True)


def state_for(fabric, flagged: Host, analyzer: Host, mode: str = "isolate", allow=None):
    labels = {vm: {"role": "dns" if i == 4 else "web"} for i, vm in enumerate(fabric.vms)}
    state = policy_state(labels)
    vm = state.vm(vm_name(flagged))
    rules = None if allow is None else parse_allow_list(allow)
    return state.with_quarantine(Quarantine(vm.name, "test", mode, "admin", 0.0, vm.macs, vm_name(analyzer), rules))


def copies(trace, analyzer: Host) -> list[dict]:
    return [d.packet for d in trace.deliveries if d.at == (analyzer.dpid, analyzer.port)]


def all_entries(net: FakeNetwork) -> list:
    return [e for tables in net.tables.values() for entries in tables.values() for e in entries]


@pytest.mark.parametrize("analyzer_index", [2, 5], ids=["analyzer-on-its-hypervisor", "analyzer-across-the-fabric"])
def test_every_frame_from_and_to_an_isolated_vm_reaches_the_analyzer_once_as_it_was(fabric, analyzer_index):
    flagged, analyzer = fabric.vms[0], fabric.vms[analyzer_index]
    net = FakeNetwork.compile(fabric.topo, state_for(fabric, flagged, analyzer), tunnels=fabric.tunnels)
    for other in fabric.vms[1:]:
        if other == analyzer:
            continue
        for proto, port in (("tcp", 80), ("udp", 53), ("icmp", None)):
            out = service_frame(flagged, other, proto, port, sport=next(_sports))
            trace = net.send(flagged, out)
            assert not trace.reaches(other), "isolated all the same"
            assert copies(trace, analyzer) == [out], (other.mac, proto)
            back = service_frame(other, flagged, proto, port, sport=next(_sports))
            trace = net.send(other, back)
            assert not trace.reaches(flagged)
            assert copies(trace, analyzer) == [back], (other.mac, proto)
    arp = arp_request(flagged, first_ip(fabric.vms[3]))
    assert copies(net.send(flagged, arp), analyzer) == [arp]


def test_in_remediation_the_analyzer_sees_what_got_through_and_what_did_not(fabric):
    flagged, dns, analyzer = fabric.vms[0], fabric.vms[4], fabric.vms[5]
    allow = [{"name": "dns", "to": "role=dns", "services": ["udp/53"]}]
    net = FakeNetwork.compile(fabric.topo, state_for(fabric, flagged, analyzer, "remediate", allow), tunnels=fabric.tunnels)
    query = service_frame(flagged, dns, "udp", 53, sport=next(_sports))
    trace = net.send(flagged, query)
    assert trace.reaches(dns) and copies(trace, analyzer) == [query]
    answer = reply_frame(query)
    trace = net.send(dns, answer)
    assert trace.reaches(flagged) and copies(trace, analyzer) == [answer]
    refused = service_frame(flagged, dns, "tcp", 80, sport=next(_sports))
    trace = net.send(flagged, refused)
    assert not trace.reaches(dns) and copies(trace, analyzer) == [refused]


def test_nobody_elses_frames_are_copied_and_nobody_can_inject_into_a_mirror(fabric):
    flagged, analyzer = fabric.vms[0], fabric.vms[5]
    net = FakeNetwork.compile(fabric.topo, state_for(fabric, flagged, analyzer), tunnels=fabric.tunnels)
    a, b = fabric.vms[1], fabric.vms[3]
    frame = service_frame(a, b, "tcp", 80, sport=next(_sports))
    trace = net.send(a, frame)
    assert trace.reaches(b) and not copies(trace, analyzer)
    vids = {e.match_dict["vlan_vid"] for e in all_entries(net) if "vlan_vid" in e.match_dict}
    used = sorted(v for v in vids if isinstance(v, int))
    assert used == [mirror.OFPVID_PRESENT | mirror.MIRROR_VLAN_BASE]
    for sender in (a, b, flagged):
        tagged = {**service_frame(sender, analyzer, "udp", 9, sport=next(_sports)), "vlan_vid": used[0]}
        tagged["eth_dst"] = "02:00:00:00:99:99"  # an unknown unicast would otherwise be flooded
        assert not copies(net.send(sender, tagged), analyzer), f"{sender.mac} injected into the mirror"


def test_a_quarantined_analyzer_gets_nothing_and_release_stops_the_copies(fabric):
    flagged, analyzer, other = fabric.vms[0], fabric.vms[5], fabric.vms[3]
    state = state_for(fabric, flagged, analyzer)
    vm = state.vm(vm_name(analyzer))
    cut = state.with_quarantine(Quarantine(vm.name, "it too", "isolate", "admin", 0.0, vm.macs))
    net = FakeNetwork.compile(fabric.topo, cut, tunnels=fabric.tunnels)
    assert not copies(net.send(flagged, service_frame(flagged, other, "tcp", 80, sport=next(_sports))), analyzer)
    released = state.without_quarantine(vm_name(flagged))
    net = FakeNetwork.compile(fabric.topo, released, tunnels=fabric.tunnels)
    frame = service_frame(flagged, other, "tcp", 80, sport=next(_sports))
    trace = net.send(flagged, frame)
    assert trace.reaches(other) and not copies(trace, analyzer)
    assert not [e for e in all_entries(net) if "vlan_vid" in e.match_dict], "no mirror entries left"
