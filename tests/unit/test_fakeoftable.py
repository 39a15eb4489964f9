"""The fake switch network itself: if it could not see a storm or a wrong port, the forwarding tests would prove nothing."""

from __future__ import annotations

import pytest

from apps import pipeline
from apps.flows import FlowEntry, Move, Output, SetField
from tests.fakeoftable import (
    BROADCAST,
    AmbiguousLookup,
    FakeNetwork,
    FlowRejected,
    build_mesh,
)
from topology.model import Port

FRAME = {"eth_src": "02:01:00:01:00:01", "eth_dst": BROADCAST, "eth_type": pipeline.ETH_TYPE_IPV4}


def flood_everything(ports: list[int]) -> list[FlowEntry]:
    """A switch that copies every frame to every port: what a looped fabric must never hold."""
    return [FlowEntry.make(pipeline.INGRESS, 1, {}, [Output(p) for p in ports])]


def test_a_naive_flood_on_a_triangle_is_reported_as_loops_and_terminates():
    topo, hosts = build_mesh([(1, 2), (2, 3), (3, 1)])
    tables = {dpid: flood_everything([1, 2, 3]) for dpid in (1, 2, 3)}
    trace = FakeNetwork(tables, topo).send(hosts[0], FRAME)
    assert trace.loops, "the fake must see the storm"
    assert len(trace.delivered_to()) > len(set(trace.delivered_to())), "and the duplicate deliveries it causes"


def test_a_flood_on_a_line_delivers_once_per_edge_port_with_the_host_there():
    topo, hosts = build_mesh([(1, 2), (2, 3)])
    tables = {1: flood_everything([1, 2]), 2: flood_everything([1, 2, 3]), 3: flood_everything([1, 2])}
    trace = FakeNetwork(tables, topo).send(hosts[0], FRAME)
    assert not trace.loops
    assert trace.delivered_to() == [(h.dpid, h.port) for h in hosts[1:]]
    assert [d.host for d in trace.deliveries] == [h.mac for h in hosts[1:]]
    assert trace.deliveries[-1].path == ((1, 2), (2, 1), (3, 1))


def test_output_to_the_ingress_port_is_dropped_unless_it_is_in_port():
    topo, hosts = build_mesh([(1, 2)])
    host = hosts[0]
    back = FakeNetwork({1: [FlowEntry.make(pipeline.INGRESS, 1, {}, [Output(host.port)])]}, topo).send(host, FRAME)
    assert back.deliveries == [] and "ingress port" in back.drops[0].reason
    hairpin = FakeNetwork({1: [FlowEntry.make(pipeline.INGRESS, 1, {}, [Output(pipeline.OFPP_IN_PORT)])]}, topo).send(host, FRAME)
    assert hairpin.delivered_to() == [(host.dpid, host.port)]


def test_no_matching_entry_drops_and_controller_output_is_a_punt():
    topo, hosts = build_mesh([(1, 2)])
    lldp_only = [FlowEntry.make(pipeline.INGRESS, 10, {"eth_type": pipeline.ETH_TYPE_LLDP}, [Output(pipeline.OFPP_CONTROLLER)])]
    net = FakeNetwork({1: lldp_only}, topo)
    dropped = net.send(hosts[0], FRAME)
    assert (dropped.deliveries, dropped.punts, dropped.loops) == ([], [], []) and dropped.drops
    punted = net.send(hosts[0], {**FRAME, "eth_type": pipeline.ETH_TYPE_LLDP})
    assert punted.to_controller and punted.punts[0].table == pipeline.INGRESS


def test_masked_matches_follow_the_mask():
    topo, hosts = build_mesh([(1, 2)])
    multicast = FlowEntry.make(pipeline.INGRESS, 5, {"eth_src": pipeline.MULTICAST_BIT}, [Output(pipeline.OFPP_CONTROLLER)])
    net = FakeNetwork({1: [multicast]}, topo)
    assert net.send(hosts[0], {**FRAME, "eth_src": "01:00:5E:00:00:01"}).to_controller
    assert net.send(hosts[0], {**FRAME, "eth_src": BROADCAST}).to_controller
    assert not net.send(hosts[0], {**FRAME, "eth_src": "02:00:00:00:00:01"}).to_controller


def test_actions_apply_in_order_and_carry_into_later_tables():
    topo, hosts = build_mesh([(1, 2)])
    host = hosts[0]
    tables = {
        1: [
            FlowEntry.make(
                pipeline.INGRESS,
                5,
                {},
                [Output(pipeline.OFPP_IN_PORT), Move("eth_src", "eth_dst", 48), SetField("eth_src", "02:00:00:00:00:99")],
                goto=pipeline.FORWARD,
            ),
            FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": host.mac}, [Output(pipeline.OFPP_IN_PORT)]),
        ]
    }
    trace = FakeNetwork(tables, topo).send(host, FRAME)
    first, second = trace.deliveries
    assert first.packet == FRAME, "an output sends the frame as it is at that point"
    assert second.packet == {**FRAME, "eth_dst": host.mac, "eth_src": "02:00:00:00:00:99"}


def test_flows_open_vswitch_would_refuse_are_refused():
    topo, _ = build_mesh([(1, 2)])
    no_prerequisite = FlowEntry.make(pipeline.FORWARD, 5, {"arp_tpa": "10.0.0.1"})
    with pytest.raises(FlowRejected, match="arp_tpa needs eth_type"):
        FakeNetwork({1: [no_prerequisite]}, topo)
    set_without_prerequisite = FlowEntry.make(pipeline.FORWARD, 5, {}, [SetField("arp_op", 2)])
    with pytest.raises(FlowRejected, match="arp_op needs eth_type"):
        FakeNetwork({1: [set_without_prerequisite]}, topo)
    partial_move = FlowEntry.make(pipeline.FORWARD, 5, {}, [Move("eth_src", "eth_dst", 24)])
    with pytest.raises(FlowRejected, match="whole-field"):
        FakeNetwork({1: [partial_move]}, topo)


def test_two_entries_of_one_priority_matching_one_packet_is_an_error():
    topo, hosts = build_mesh([(1, 2)])
    a = FlowEntry.make(pipeline.INGRESS, 5, {"in_port": hosts[0].port}, [Output(1)])
    b = FlowEntry.make(pipeline.INGRESS, 5, {"eth_src": hosts[0].mac}, [Output(pipeline.OFPP_CONTROLLER)])
    with pytest.raises(AmbiguousLookup):
        FakeNetwork({1: [a, b]}, topo).send(hosts[0], FRAME)


def test_output_to_a_down_port_is_not_a_delivery():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    topo.set_port(1, Port(3, up=False))
    trace = FakeNetwork({1: flood_everything([1, 2, 3])}, topo).send(hosts[0], FRAME)
    assert trace.deliveries == [] and any("down port 3" in d.reason for d in trace.drops)


def test_a_naive_flood_on_a_dense_mesh_terminates_quickly():
    edges = [(a, b) for a in range(1, 7) for b in range(a + 1, 7)]
    topo, hosts = build_mesh(edges)
    tables = {dpid: flood_everything(topo.switches[dpid].live_ports()) for dpid in topo.switches}
    trace = FakeNetwork(tables, topo).send(hosts[0], FRAME)
    assert trace.loops


def test_different_frames_crossing_the_same_port_are_not_a_loop():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    src, first, second = hosts[0], hosts[2], hosts[3]
    tables = {
        1: [
            FlowEntry.make(
                pipeline.INGRESS,
                5,
                {"in_port": src.port},
                [SetField("eth_dst", first.mac), Output(1), SetField("eth_dst", second.mac), Output(1)],
            )
        ],
        2: [
            FlowEntry.make(pipeline.INGRESS, 5, {}, goto=pipeline.FORWARD),
            FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": first.mac}, [Output(first.port)]),
            FlowEntry.make(pipeline.FORWARD, 5, {"eth_dst": second.mac}, [Output(second.port)]),
        ],
    }
    trace = FakeNetwork(tables, topo).send(src, FRAME)
    assert not trace.loops
    assert [d.host for d in trace.deliveries] == [first.mac, second.mac]
