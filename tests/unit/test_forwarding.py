"""What the compiled flow tables do to packets on a looped leaf-spine, asked of the fake switch network."""

from __future__ import annotations

import copy
import itertools
from dataclasses import replace

import pytest

from apps import compiler, pipeline
from apps.desired import desired_tables
from tests.fakeoftable import (
    BROADCAST,
    FakeNetwork,
    LeafSpine,
    Trace,
    arp_request,
    build_leaf_spine,
    first_ip,
    ipv4_frame,
    lldp_frame,
    unicast_frame,
)
from topology import graph
from topology.model import EDGE_CONFIRM_TIME, ROLE_FABRIC, ROLE_HYPERVISOR, Host, Port, PortRef, Topology


@pytest.fixture(scope="module")
def fabric() -> LeafSpine:
    """2 spines, 3 leaves (every leaf on every spine: looped), 2 hypervisors per leaf, 2 VMs each."""
    return build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2, vms_per_hypervisor=2, spare_ports=1)


@pytest.fixture(scope="module")
def net(fabric) -> FakeNetwork:
    return FakeNetwork.compile(fabric.topo)


def assert_unicast_delivered(net: FakeNetwork, src: Host, dst: Host) -> Trace:
    frame = unicast_frame(src, dst)
    trace = net.send(src, frame)
    assert not trace.loops, trace.loops
    assert trace.delivered_to() == [(dst.dpid, dst.port)], f"{src.mac} -> {dst.mac}: {trace}"
    delivered = trace.deliveries[0]
    assert delivered.host == dst.mac
    assert delivered.packet == frame, "forwarding must not rewrite a unicast frame"
    return trace


def edge_ports(topo: Topology) -> set[tuple[int, int]]:
    """Every port the controller believes faces hosts."""
    return {(dpid, port) for dpid in topo.switches for port in topo.edge_ports(dpid)}


def assert_flooded_once_everywhere(net: FakeNetwork, src: Host, frame: dict) -> Trace:
    trace = net.send(src, frame)
    assert not trace.loops, f"flood looped: {trace.loops[:3]}"
    expected = sorted(edge_ports(net.wiring) - {(src.dpid, src.port)})
    assert trace.delivered_to() == expected
    assert all(d.packet == frame for d in trace.deliveries)
    return trace


# ---------------------------------------------------------------------------
# Unicast
# ---------------------------------------------------------------------------
def test_every_vm_reaches_every_other_vm_exactly_once(fabric, net):
    for src, dst in itertools.permutations(fabric.vms, 2):
        trace = assert_unicast_delivered(net, src, dst)
        assert not trace.punts, "known-to-known unicast must not involve the controller"


def test_unicast_between_leaves_crosses_exactly_one_spine(fabric, net):
    src = next(h for h in fabric.vms if h.dpid == fabric.hypervisors[0])
    dst = next(h for h in fabric.vms if h.dpid == fabric.hypervisors[-1])
    path = [dpid for dpid, _ in assert_unicast_delivered(net, src, dst).deliveries[0].path]
    assert len(path) == 5  # hypervisor, leaf, spine, leaf, hypervisor
    assert sum(dpid in fabric.spines for dpid in path) == 1


def test_vms_on_the_same_hypervisor_talk_without_leaving_it(fabric, net):
    a, b = [h for h in fabric.vms if h.dpid == fabric.hypervisors[0]][:2]
    trace = assert_unicast_delivered(net, a, b)
    assert trace.deliveries[0].path == ((a.dpid, a.port),)


def test_unicast_survives_a_cut_spine_link(fabric):
    topo = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
    spine, leaf = fabric.spines[0], fabric.leaves[0]
    cut = next(lk for lk in topo.links if {lk.a.dpid, lk.b.dpid} == {spine, leaf})
    before = FakeNetwork.compile(topo)
    paths = [before.send(s, unicast_frame(s, d)).deliveries[0].path for s, d in itertools.permutations(fabric.vms, 2)]
    cut_ends = {(end.dpid, end.port) for end in cut.ends()}
    assert any(cut_ends & set(path) for path in paths), (
        "the cut link must carry traffic before the cut, or the test proves nothing"
    )
    del topo.links[cut]
    after = FakeNetwork.compile(topo)
    for src, dst in itertools.permutations(fabric.vms, 2):
        assert_unicast_delivered(after, src, dst)
    assert_flooded_once_everywhere(after, fabric.vms[0], ipv4_frame(fabric.vms[0], BROADCAST))


def test_every_unicast_survives_any_single_spine_link_cut(fabric):
    for spine, leaf in itertools.product(fabric.spines, fabric.leaves):
        topo = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
        topo.links.pop(next(lk for lk in topo.links if {lk.a.dpid, lk.b.dpid} == {spine, leaf}))
        net = FakeNetwork.compile(topo)
        for src, dst in itertools.permutations(fabric.vms[::3], 2):
            assert_unicast_delivered(net, src, dst)


def test_port_down_on_a_spine_reroutes(fabric):
    topo = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
    spine = fabric.spines[0]
    sw = topo.switches[spine]
    topo.set_port(spine, replace(sw.ports[1], up=False))
    assert not any(PortRef(spine, 1) in lk.ends() for lk in topo.links)
    net = FakeNetwork.compile(topo)
    for src, dst in itertools.permutations(fabric.vms, 2):
        assert_unicast_delivered(net, src, dst)


def test_an_isolated_hypervisor_is_unreachable_but_nothing_storms(fabric):
    topo = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
    lonely = fabric.hypervisors[0]
    topo.links.pop(next(lk for lk in topo.links if lonely in (lk.a.dpid, lk.b.dpid)))
    net = FakeNetwork.compile(topo)
    for src, dst in itertools.permutations(fabric.vms, 2):
        if (src.dpid == lonely) == (dst.dpid == lonely):
            assert_unicast_delivered(net, src, dst)
        else:
            trace = net.send(src, unicast_frame(src, dst))
            assert not trace.loops
            assert (dst.dpid, dst.port) not in trace.delivered_to()


def test_unknown_unicast_goes_up_and_floods_on_the_tree_beyond_the_senders_hypervisor(fabric, net):
    """A single-uplink hypervisor sends every unicast not for a local VM up; the fabric floods
    an unknown one on the tree. The sender's local neighbours are known VMs, so they don't get it."""
    src = fabric.vms[0]
    trace = net.send(src, ipv4_frame(src, "02:99:99:99:99:99"))
    assert not trace.loops
    assert trace.delivered_to() == sorted(p for p in edge_ports(net.wiring) if p[0] != src.dpid)


def test_a_single_uplink_hypervisor_holds_no_entry_per_remote_vm(fabric):
    tables = desired_tables(fabric.topo)
    for dpid in fabric.hypervisors:
        remote = {h.mac for h in fabric.vms if h.dpid != dpid}
        named = {v for e in tables[dpid].values() for k, v in e.match if k == "eth_dst" and isinstance(v, str)}
        assert not (named & remote), f"hypervisor {dpid:x} still has per-VM entries for remote VMs"


def test_a_leaf_routes_only_its_own_hypervisors_vms(fabric):
    """A switch holds no route toward its parent on the flooding tree: a leaf that is not the
    tree's root routes only its own hypervisors' VMs and sends the rest up, so the tables that grow
    with the data centre are the spines' and the root's."""
    tables = desired_tables(fabric.topo)
    view = graph.view(fabric.topo)
    (root,) = [d for d in fabric.topo.switches if d not in view.parent]
    under = {leaf: {h.mac for h in fabric.vms if _leaf_of(fabric, h.dpid) == leaf} for leaf in fabric.leaves}

    def routed(dpid: int) -> set[str]:
        return {
            v
            for e in tables[dpid].values()
            if e.table == pipeline.FORWARD
            for k, v in e.match
            if k == "eth_dst" and isinstance(v, str)
        }

    everyone = {h.mac for h in fabric.vms}
    assert routed(root) == everyone
    for leaf in fabric.leaves:
        if leaf != root:
            assert routed(leaf) == under[leaf], f"leaf {leaf:x}"
    for spine in fabric.spines:
        if spine != root:
            parent_leaf = next(
                n for n in view.graph.neighbors(spine) if view.graph.edges[spine, n]["ports"][spine] == view.parent[spine]
            )
            assert routed(spine) == everyone - under[parent_leaf], f"spine {spine:x}"


def _leaf_of(fabric, hypervisor: int) -> int:
    (leaf,) = {
        lk.b.dpid if lk.a.dpid == hypervisor else lk.a.dpid for lk in fabric.topo.links if hypervisor in (lk.a.dpid, lk.b.dpid)
    }
    return leaf


# ---------------------------------------------------------------------------
# Broadcast
# ---------------------------------------------------------------------------
def test_broadcast_reaches_every_other_edge_port_once_and_never_loops(fabric, net):
    for src in fabric.vms:
        trace = assert_flooded_once_everywhere(net, src, ipv4_frame(src, BROADCAST, "255.255.255.255"))
        assert not trace.punts
        delivered_hosts = {d.host for d in trace.deliveries if d.host}
        assert delivered_hosts == {h.mac for h in fabric.vms} - {src.mac}


def test_multicast_floods_like_broadcast(fabric, net):
    src = fabric.vms[-1]
    assert_flooded_once_everywhere(net, src, ipv4_frame(src, "01:00:5e:00:00:fb", "224.0.0.251"))


def test_broadcast_from_a_spine_port_arriving_on_a_non_tree_link_is_dropped(fabric, net):
    # A frame entering on an inter-switch port outside the flooding tree is a copy that already
    # travelled the tree: flooding it again would storm.
    topo = fabric.topo
    view = graph.view(topo)
    off_tree = [(d, p) for d in topo.switches for p in topo.inter_switch_ports(d) if p not in view.tree_ports[d]]
    assert off_tree, "the looped fixture has links outside the tree"
    for dpid, port in off_tree:
        trace = net.trace(dpid, port, ipv4_frame(fabric.vms[0], BROADCAST))
        assert not trace.deliveries and not trace.loops


@pytest.mark.parametrize("wrongly_confirmed", [False, True], ids=["ports-pending", "ports-wrongly-confirmed-edge"])
def test_no_storm_while_a_cabled_link_is_not_yet_discovered(fabric, wrongly_confirmed):
    """The controller has not seen LLDP on spine 2's links yet (or lost it long enough for their
    ports to pass as edge ports), while the cables are there and the fabric is looped."""
    model = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
    hidden = [lk for lk in model.links if fabric.spines[1] in (lk.a.dpid, lk.b.dpid)]
    for lk in hidden:
        del model.links[lk]
        if wrongly_confirmed:
            for end in lk.ends():
                model.switches[end.dpid].edge_confirmed.add(end.port)
    net = FakeNetwork(desired_tables(model), wiring=fabric.topo)
    for src in fabric.vms:
        trace = net.send(src, ipv4_frame(src, BROADCAST))
        assert not trace.loops
        delivered = {d.host for d in trace.deliveries if d.host}
        assert delivered == {h.mac for h in fabric.vms} - {src.mac}
        assert len(trace.deliveries) == len(set(trace.delivered_to()))
        # A copy reaching spine 2 on a port it thinks faces hosts is a stranger there: only the controller hears it.
        assert {p.dpid for p in trace.punts} <= ({fabric.spines[1]} if wrongly_confirmed else set())


def test_ports_still_proving_themselves_get_no_flood(fabric):
    topo = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
    hv = fabric.hypervisors[0]
    new_port = max(topo.switches[hv].ports.keys() - {pipeline.OFPP_LOCAL}) + 1
    topo.set_port(hv, Port(new_port, "tap-new"))
    topo.confirm_edge_ports(100.0)  # the clock starts; not yet confirmed
    net = FakeNetwork.compile(topo)
    src = fabric.vms[-1]
    assert (hv, new_port) not in net.send(src, ipv4_frame(src, BROADCAST)).delivered_to()
    topo.confirm_edge_ports(100.0 + EDGE_CONFIRM_TIME)
    net = FakeNetwork.compile(topo)
    assert (hv, new_port) in net.send(src, ipv4_frame(src, BROADCAST)).delivered_to()


# ---------------------------------------------------------------------------
# ARP
# ---------------------------------------------------------------------------
def compile_on_request(topo: Topology) -> FakeNetwork:
    """Compiled as a data centre above ARP_AHEAD_MAX hosts: ARP answered ahead of time only for
    the peers rules name, and for the addresses VMs asked for."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiler, "ARP_AHEAD_MAX", 0)
        return FakeNetwork.compile(topo)


@pytest.fixture(scope="module")
def on_request(fabric) -> FakeNetwork:
    return compile_on_request(fabric.topo)


@pytest.fixture(scope="module")
def asked(fabric, on_request) -> FakeNetwork:
    """Every VM asked for every other VM's address once: each request was flooded to its owner
    and copied to the controller, which noted it (Topology.note_asked), and compiled."""
    topo = copy.deepcopy(fabric.topo)
    for requester, target in itertools.permutations(fabric.vms, 2):
        trace = on_request.send(requester, arp_request(requester, first_ip(target)))
        assert not trace.loops
        assert (target.dpid, target.port) in trace.delivered_to(), "the first request reaches its owner"
        assert [(p.dpid, p.in_port, p.table) for p in trace.punts] == [(requester.dpid, requester.port, pipeline.FORWARD)]
        for punt in trace.punts:
            topo.note_asked(punt.dpid, punt.packet["arp_tpa"])
    return compile_on_request(topo)


def test_arp_for_a_known_ip_is_answered_by_the_requesters_own_hypervisor(fabric, net):
    """A data centre of at most ARP_AHEAD_MAX hosts: every hypervisor answers every address ahead of time."""
    for requester, target in itertools.permutations(fabric.vms, 2):
        trace = net.send(requester, arp_request(requester, first_ip(target)))
        assert not trace.loops and not trace.punts
        assert trace.delivered_to() == [(requester.dpid, requester.port)], "answered locally, never flooded"
        assert trace.deliveries[0].packet["arp_sha"] == target.mac


def test_no_hypervisor_holds_a_responder_for_every_vm_of_a_large_data_centre(fabric, on_request):
    """Above ARP_AHEAD_MAX hosts, with no inventory (every host unmanaged) and the default allow, a
    hypervisor answers ARP for no one until its VMs ask: O(VMs x hypervisors) entries otherwise."""
    for dpid in fabric.hypervisors:
        assert not [e for e in on_request.tables[dpid][pipeline.FORWARD] if e.priority == pipeline.PRIO_ARP_RESPONDER]


def test_arp_for_a_known_ip_is_answered_by_the_requesters_own_hypervisor_once_asked(fabric, asked):
    for requester, target in itertools.permutations(fabric.vms, 2):
        trace = asked.send(requester, arp_request(requester, first_ip(target)))
        assert not trace.loops and not trace.punts
        assert trace.delivered_to() == [(requester.dpid, requester.port)], "answered locally, never flooded"
        reply = trace.deliveries[0]
        assert reply.path == ((requester.dpid, requester.port),), "the reply never leaves the hypervisor"
        assert reply.packet == {
            "eth_src": target.mac,
            "eth_dst": requester.mac,
            "eth_type": pipeline.ETH_TYPE_ARP,
            "arp_op": 2,
            "arp_sha": target.mac,
            "arp_spa": first_ip(target),
            "arp_tha": requester.mac,
            "arp_tpa": first_ip(requester),
        }


def test_a_hosts_arp_for_its_own_address_is_flooded_not_answered(fabric, net):
    """Gratuitous ARP (virtual-IP failover) and duplicate-address probes must reach the other
    hosts; the switch must not tell a host its own address is taken."""
    owner = fabric.vms[2]
    for sender_ip in (first_ip(owner), "0.0.0.0"):
        frame = arp_request(owner, first_ip(owner), sender_ip=sender_ip)
        trace = assert_flooded_once_everywhere(net, owner, frame)
        assert all(d.packet["arp_op"] == 1 for d in trace.deliveries), "no reply was forged"


def test_another_host_on_the_owners_port_is_still_answered(fabric, asked):
    """The bypass is keyed on the owner's port: a different VM asking for the address gets the reply."""
    owner, asker = fabric.vms[0], fabric.vms[1]
    assert owner.dpid == asker.dpid
    trace = asked.send(asker, arp_request(asker, first_ip(owner)))
    assert trace.delivered_to() == [(asker.dpid, asker.port)]
    assert trace.deliveries[0].packet["arp_op"] == 2


def test_arp_for_an_unknown_ip_is_flooded_once_everywhere(fabric, net):
    src = fabric.vms[0]
    trace = assert_flooded_once_everywhere(net, src, arp_request(src, "10.99.99.99"))
    # One copy goes to the controller, from the requester's own switch only, so that it can
    # ask again when new edge ports come up.
    assert [(p.dpid, p.in_port, p.table) for p in trace.punts] == [(src.dpid, src.port, pipeline.FORWARD)]


def test_arp_with_a_new_sender_ip_is_answered_and_copied_to_the_controller(fabric, asked):
    requester, target = fabric.vms[0], fabric.vms[5]
    trace = asked.send(requester, arp_request(requester, first_ip(target), sender_ip="10.200.0.1"))
    assert trace.delivered_to() == [(requester.dpid, requester.port)]
    assert [(p.dpid, p.in_port) for p in trace.punts] == [(requester.dpid, requester.port)]
    assert trace.punts[0].packet["arp_spa"] == "10.200.0.1"


def test_only_hypervisors_answer_arp(fabric, asked):
    for dpid, table in asked.tables.items():
        answers = [e for e in table.get(pipeline.FORWARD, []) if e.priority == pipeline.PRIO_ARP_RESPONDER]
        if dpid in fabric.hypervisors:
            assert fabric.topo.role(dpid) == ROLE_HYPERVISOR
            assert len(answers) == len(fabric.vms), "every VM, asked for by another VM of the hypervisor"
        else:
            assert fabric.topo.role(dpid) == ROLE_FABRIC
            assert answers == []


def test_arp_still_works_with_the_controller_down(fabric, on_request, asked):
    """Nothing about ARP depends on a packet-in: an address asked before is answered by the
    switch, any other reaches its owner by the flood."""
    requester, target = fabric.vms[1], fabric.vms[-1]
    first = on_request.send(requester, arp_request(requester, first_ip(target)))
    assert (target.dpid, target.port) in first.delivered_to()
    trace = asked.send(requester, arp_request(requester, first_ip(target)))
    assert trace.punts == [] and trace.deliveries[0].packet["arp_sha"] == target.mac


# ---------------------------------------------------------------------------
# The controller's share: LLDP and unknown sources
# ---------------------------------------------------------------------------
def test_lldp_goes_to_the_controller_from_any_port(fabric, net):
    for dpid, sw in fabric.topo.switches.items():
        for port in sw.live_ports():
            trace = net.trace(dpid, port, lldp_frame())
            assert [(p.dpid, p.in_port, p.table) for p in trace.punts] == [(dpid, port, pipeline.INGRESS)]
            assert not trace.deliveries and not trace.loops


def test_frame_from_an_unknown_source_goes_to_the_controller_only(fabric, net):
    stranger = Host("02:55:55:55:55:55", frozenset({"10.55.0.1"}), fabric.hypervisors[0], 0)
    spare = max(edge_ports(fabric.topo) - {(h.dpid, h.port) for h in fabric.vms})
    for frame in (ipv4_frame(stranger, BROADCAST), ipv4_frame(stranger, fabric.vms[0].mac), arp_request(stranger, "10.1.1.11")):
        trace = net.trace(*spare, frame)
        assert [(p.dpid, p.in_port) for p in trace.punts] == [spare]
        assert trace.deliveries == [] and trace.loops == []


def test_a_known_mac_on_the_wrong_port_is_not_forwarded(fabric, net):
    """A VM spoofing another VM's MAC (or a VM that moved) is held until the controller learns it."""
    victim, thief = fabric.vms[0], fabric.vms[7]
    trace = net.trace(thief.dpid, thief.port, ipv4_frame(victim, fabric.vms[3].mac))
    assert trace.deliveries == [] and len(trace.punts) == 1


def test_after_learning_a_moved_vm_everyone_reaches_it_at_its_new_port(fabric):
    topo = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
    mover = fabric.vms[0]
    new_dpid = fabric.hypervisors[-1]
    new_port = max(topo.edge_ports(new_dpid))
    assert topo.host_seen(mover.mac, new_dpid, new_port, first_ip(mover))
    net = FakeNetwork.compile(topo)
    moved = topo.hosts[mover.mac]
    for src in fabric.vms[1:]:
        assert_unicast_delivered(net, src, moved)
    assert net.trace(mover.dpid, mover.port, unicast_frame(mover, fabric.vms[1])).deliveries == []


def test_hosts_learned_on_inter_switch_ports_get_no_flows(fabric):
    topo = build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2).topo
    leaf, port = fabric.leaves[0], 1  # leaf port 1 goes to spine 1
    topo.hosts["02:77:77:77:77:77"] = Host("02:77:77:77:77:77", frozenset({"10.77.0.1"}), leaf, port)
    tables = desired_tables(topo)
    assert not any(
        "02:77:77:77:77:77" in repr(e.match) or "10.77.0.1" in repr(e.match) for t in tables.values() for e in t.values()
    )


def test_empty_and_single_switch_networks_compile():
    assert desired_tables(Topology()) == {}
    topo = Topology()
    topo.switch_connected(1)
    topo.host_seen("02:00:00:00:00:01", 1, 1)
    assert desired_tables(topo)[1]


def test_inter_switch_frames_skip_source_admission(fabric, net):
    """Frames from the fabric were admitted at their first switch; a transit switch only forwards."""
    src, dst = fabric.vms[0], fabric.vms[-1]
    leaf = fabric.leaves[0]
    uplink = PortRef(src.dpid, 1)
    leaf_port = next(e for lk in fabric.topo.links for e in lk.ends() if uplink in lk.ends() and e != uplink)
    assert leaf_port.dpid == leaf
    trace = net.trace(leaf_port.dpid, leaf_port.port, unicast_frame(src, dst))
    assert trace.delivered_to() == [(dst.dpid, dst.port)] and not trace.punts
