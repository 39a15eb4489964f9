"""Properties over many generated networks: every host reaches every host it is connected to, and nothing storms."""

from __future__ import annotations

import itertools
import random

import networkx as nx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps import compiler
from apps.desired import desired_tables
from tests.fakeoftable import (
    BROADCAST,
    FakeNetwork,
    arp_request,
    build_leaf_spine,
    build_mesh,
    first_ip,
    ipv4_frame,
    unicast_frame,
)
from topology.model import Host, Topology

SETTINGS = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def edge_ports(topo: Topology) -> set[tuple[int, int]]:
    return {(dpid, port) for dpid in topo.switches for port in topo.edge_ports(dpid)}


def switch_components(topo: Topology) -> dict[int, int]:
    graph = nx.Graph()
    graph.add_nodes_from(topo.switches)
    graph.add_edges_from((lk.a.dpid, lk.b.dpid) for lk in topo.links)
    return {dpid: min(comp) for comp in nx.connected_components(graph) for dpid in comp}


def assert_forwarding_sound(topo: Topology, hosts: list[Host]) -> None:
    """Unicast arrives exactly once wherever the fabric connects the two hosts; broadcast reaches every
    edge port of the sender's part of the fabric exactly once; nothing ever loops."""
    net = FakeNetwork.compile(topo)
    component = switch_components(topo)
    edges = edge_ports(topo)
    for src, dst in itertools.permutations(hosts, 2):
        trace = net.send(src, unicast_frame(src, dst))
        assert not trace.loops, (src, dst, trace.loops)
        if component[src.dpid] == component[dst.dpid]:
            assert trace.delivered_to() == [(dst.dpid, dst.port)], (src, dst, trace)
        else:
            assert (dst.dpid, dst.port) not in trace.delivered_to()
    for src in hosts:
        trace = net.send(src, ipv4_frame(src, BROADCAST))
        assert not trace.loops, (src, trace.loops)
        reachable = sorted((d, p) for d, p in edges if component[d] == component[src.dpid] and (d, p) != (src.dpid, src.port))
        assert trace.delivered_to() == reachable
        # A destination nobody knows: switches hold no route toward their parent, so it climbs the
        # tree and the root floods it. Every other switch's edge ports get it once, never the sender.
        trace = net.send(src, ipv4_frame(src, "02:99:99:99:99:99", "10.255.255.254"))
        assert not trace.loops, (src, trace.loops)
        got = trace.delivered_to()
        assert len(got) == len(set(got)), (src, got)
        assert set(got) <= set(reachable), (src, got)
        assert {(d, p) for d, p in reachable if d != src.dpid} <= set(got), (src, got)


@SETTINGS
@given(
    spines=st.integers(1, 3),
    leaves=st.integers(1, 4),
    hypervisors=st.integers(1, 2),
    vms=st.integers(1, 2),
    dual_homed=st.booleans(),
)
def test_any_leaf_spine_delivers_unicast_and_floods_without_loops(spines, leaves, hypervisors, vms, dual_homed):
    fabric = build_leaf_spine(spines, leaves, hypervisors, vms, dual_homed=dual_homed)
    assert_forwarding_sound(fabric.topo, fabric.vms)


@SETTINGS
@given(
    spines=st.integers(1, 3),
    leaves=st.integers(2, 4),
    dual_homed=st.booleans(),
    cut=st.data(),
)
def test_a_leaf_spine_with_links_cut_still_delivers_wherever_it_is_connected(spines, leaves, dual_homed, cut):
    fabric = build_leaf_spine(spines, leaves, 2, 1, dual_homed=dual_homed)
    links = sorted(fabric.topo.links, key=lambda lk: (lk.a.dpid, lk.a.port, lk.b.dpid, lk.b.port))
    for link in cut.draw(st.lists(st.sampled_from(links), max_size=3, unique=True)):
        del fabric.topo.links[link]
    assert_forwarding_sound(fabric.topo, fabric.vms)


@st.composite
def meshes(draw) -> list[tuple[int, int]]:
    """A random switch graph: a random tree plus extra edges, parallel links included."""
    n = draw(st.integers(2, 8))
    edges = [(draw(st.integers(1, i)), i + 1) for i in range(1, n)]
    pairs = [(a, b) for a in range(1, n + 1) for b in range(a + 1, n + 1)]
    edges += draw(st.lists(st.sampled_from(pairs), max_size=n))
    return draw(st.permutations(edges))


@SETTINGS
@given(meshes(), st.integers(0, 2))
def test_any_mesh_delivers_unicast_and_floods_without_loops(edges, failed):
    topo, hosts = build_mesh(edges)
    for link in sorted(topo.links, key=lambda lk: (lk.a.dpid, lk.a.port))[:failed]:
        del topo.links[link]
    assert_forwarding_sound(topo, hosts)


@SETTINGS
@given(spines=st.integers(1, 3), leaves=st.integers(1, 3), dual_homed=st.booleans())
def test_arp_for_any_known_ip_is_answered_locally(spines, leaves, dual_homed):
    """A data centre of at most ARP_AHEAD_MAX hosts: answered ahead of time."""
    fabric = build_leaf_spine(spines, leaves, 1, 2, dual_homed=dual_homed)
    net = FakeNetwork.compile(fabric.topo)
    for requester, target in itertools.permutations(fabric.vms, 2):
        trace = net.send(requester, arp_request(requester, first_ip(target)))
        assert trace.delivered_to() == [(requester.dpid, requester.port)]
        assert trace.deliveries[0].packet["arp_sha"] == target.mac


@SETTINGS
@given(spines=st.integers(1, 3), leaves=st.integers(1, 3), dual_homed=st.booleans())
def test_above_arp_ahead_max_arp_reaches_its_owner_and_is_answered_locally_from_then_on(spines, leaves, dual_homed):
    fabric = build_leaf_spine(spines, leaves, 1, 2, dual_homed=dual_homed)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compiler, "ARP_AHEAD_MAX", 0)
        net = FakeNetwork.compile(fabric.topo)
        for requester, target in itertools.permutations(fabric.vms, 2):
            trace = net.send(requester, arp_request(requester, first_ip(target)))
            assert not trace.loops and (target.dpid, target.port) in trace.delivered_to()
            for punt in trace.punts:
                fabric.topo.note_asked(punt.dpid, punt.packet["arp_tpa"])
        net = FakeNetwork.compile(fabric.topo)
    for requester, target in itertools.permutations(fabric.vms, 2):
        trace = net.send(requester, arp_request(requester, first_ip(target)))
        assert trace.delivered_to() == [(requester.dpid, requester.port)]
        assert trace.deliveries[0].packet["arp_sha"] == target.mac


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), spines=st.integers(1, 3), leaves=st.integers(1, 3), dual_homed=st.booleans())
def test_learning_order_never_changes_the_compiled_flows(seed, spines, leaves, dual_homed):
    reference = desired_tables(build_leaf_spine(spines, leaves, dual_homed=dual_homed).topo)
    shuffled = desired_tables(build_leaf_spine(spines, leaves, dual_homed=dual_homed, order=random.Random(seed)).topo)
    assert {d: set(t) for d, t in shuffled.items()} == {d: set(t) for d, t in reference.items()}
