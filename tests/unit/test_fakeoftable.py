"""The fake switch network itself: if it could not see a storm or a wrong port, the forwarding tests would prove nothing."""

from __future__ import annotations

import pytest

from apps import pipeline
from apps.flows import Conntrack, FlowEntry, Move, Output, SetField
from tests.fakeoftable import (
    BROADCAST,
    AmbiguousLookup,
    FakeNetwork,
    FlowRejected,
    RecirculationLoop,
    build_mesh,
    ct_state_text,
    icmp_frame,
    link_local,
    neighbour_discovery,
    reply_frame,
    tcp_frame,
    udp_frame,
    unicast_frame,
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


# ---------------------------------------------------------------------------
# Metadata and connection tracking, as the policy tables use them.
# ---------------------------------------------------------------------------
IP = pipeline.ETH_TYPE_IPV4
TRK, NEW, EST, RPL, INV = pipeline.CT_TRK, pipeline.CT_NEW, pipeline.CT_EST, pipeline.CT_RPL, pipeline.CT_INV


def to_policy() -> list[FlowEntry]:
    """Ingress and classify pass everything on to the policy table."""
    return [
        FlowEntry.make(pipeline.INGRESS, 5, {}, goto=pipeline.CLASSIFY),
        FlowEntry.make(pipeline.CLASSIFY, 5, {}, goto=pipeline.POLICY),
    ]


def ct_recorder(zone: int = 7, commit: bool = True) -> list[FlowEntry]:
    """Track every IP frame in `zone`, then punt it from an entry per state (committing +new ones),
    so the punt's cookie says which state the frame had."""
    entries = [
        *to_policy(),
        FlowEntry.make(pipeline.POLICY, 10, {"eth_type": IP, "ct_state": (0, TRK)}, [Conntrack(zone, table=pipeline.POLICY)]),
    ]
    for state in (TRK | NEW, TRK | EST, TRK | EST | RPL, TRK | INV):
        actions = [Conntrack(zone, commit=True)] if commit and state & NEW else []
        match = {"eth_type": IP, "ct_state": (state, 0xFF)}
        entries.append(FlowEntry.make(pipeline.POLICY, 5, match, [*actions, Output(pipeline.OFPP_CONTROLLER)]))
    return entries


def state_seen(net: FakeNetwork, host, frame) -> str:
    trace = net.send(host, frame)
    assert len(trace.punts) == 1, trace
    cookie = trace.punts[0].cookie
    entry = next(e for e in net.tables[host.dpid][pipeline.POLICY] if e.cookie == cookie)
    return ct_state_text(entry.match_dict["ct_state"][0])


def test_write_metadata_keeps_the_bits_outside_its_mask():
    topo, hosts = build_mesh([(1, 2)])
    tables = {
        1: [
            FlowEntry.make(pipeline.INGRESS, 5, {}, goto=pipeline.CLASSIFY, metadata=(0x1234, 0xFFFFFFFF)),
            FlowEntry.make(pipeline.CLASSIFY, 5, {}, goto=pipeline.POLICY, metadata=(0xAB << 32 | 0xFFFF, 0xFFFFFFFF << 32)),
            FlowEntry.make(
                pipeline.POLICY, 5, {"metadata": (0xAB << 32 | 0x1234, (1 << 64) - 1)}, [Output(pipeline.OFPP_CONTROLLER)]
            ),
        ]
    }
    trace = FakeNetwork(tables, topo).send(hosts[0], FRAME)
    assert trace.to_controller, trace.drops
    assert "metadata" not in trace.punts[0].packet and "ct_state" not in trace.punts[0].packet, "they never leave the switch"


def test_metadata_and_ct_state_start_at_zero_in_every_switch():
    topo, hosts = build_mesh([(1, 2)])
    one = [
        FlowEntry.make(pipeline.INGRESS, 5, {}, goto=pipeline.CLASSIFY, metadata=(5, 0xFF)),
        FlowEntry.make(pipeline.CLASSIFY, 5, {}, goto=pipeline.POLICY),
        FlowEntry.make(pipeline.POLICY, 10, {"eth_type": IP, "ct_state": (0, TRK)}, [Conntrack(1, table=pipeline.POLICY)]),
        FlowEntry.make(pipeline.POLICY, 5, {"metadata": (5, 0xFF), "ct_state": (TRK, TRK)}, [Output(1)]),
    ]
    two = [*to_policy(), FlowEntry.make(pipeline.POLICY, 5, {"metadata": 0, "ct_state": 0}, [Output(hosts[1].port)])]
    trace = FakeNetwork({1: one, 2: two}, topo).send(hosts[0], unicast_frame(hosts[0], hosts[1]))
    assert trace.reaches(hosts[1]), trace.drops


def test_conntrack_new_then_established_then_reply():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    a, b = hosts[0], hosts[1]
    net = FakeNetwork({1: ct_recorder()}, topo)
    syn = tcp_frame(a, b, 40000, 5432)
    assert state_seen(net, a, syn) == "+trk+new", "the first frame of a connection is new (and is committed)"
    assert state_seen(net, a, syn) == "+trk+est"
    assert state_seen(net, b, reply_frame(syn)) == "+trk+rpl+est"
    assert state_seen(net, a, tcp_frame(a, b, 40001, 5432)) == "+trk+new", "another source port is another connection"
    assert state_seen(net, b, tcp_frame(b, a, 40000, 5432)) == "+trk+new", "the same ports the other way round are not a reply"


def test_without_a_commit_nothing_is_remembered():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    a, b = hosts[0], hosts[1]
    net = FakeNetwork({1: ct_recorder(commit=False)}, topo)
    frame = udp_frame(a, b, 5353, 53)
    assert state_seen(net, a, frame) == state_seen(net, a, frame) == "+trk+new"
    assert state_seen(net, b, reply_frame(frame)) == "+trk+new"


def test_icmp_echo_is_a_connection_and_an_unsolicited_reply_is_invalid():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    a, b = hosts[0], hosts[1]
    net = FakeNetwork({1: ct_recorder()}, topo)
    assert state_seen(net, b, reply_frame(icmp_frame(a, b))) == "+trk+inv", "an echo reply nobody asked for"
    assert state_seen(net, a, icmp_frame(a, b)) == "+trk+new"
    assert state_seen(net, b, reply_frame(icmp_frame(a, b))) == "+trk+rpl+est"
    assert state_seen(net, b, icmp_frame(b, a)) == "+trk+new", "a ping the other way is a connection of its own"
    assert state_seen(net, a, icmp_frame(a, b, ident=7)) == "+trk+new", "another ping process, another echo id"
    assert state_seen(net, a, icmp_frame(a, b, icmp_type=3)) == "+trk+inv", "an ICMP error relating to nothing"


def test_zones_keep_connections_apart_and_a_commit_on_an_untracked_frame_counts():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    a, b = hosts[0], hosts[1]
    commit_other_zone = FlowEntry.make(
        pipeline.POLICY, 20, {"eth_type": IP, "eth_dst": b.mac}, [Conntrack(9, commit=True), Output(b.port)]
    )
    net = FakeNetwork({1: [*ct_recorder(zone=7, commit=False), commit_other_zone]}, topo)
    frame = tcp_frame(a, b, 40000, 22)
    assert net.send(a, frame).reaches(b), "ct(commit) without table carries on with the next action"
    assert net.conntrack.connections(9) and not net.conntrack.connections(7)
    assert state_seen(net, b, reply_frame(frame)) == "+trk+new", "zone 7 knows nothing of zone 9"


def test_a_resubmitting_conntrack_ends_the_entry():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    a = hosts[0]
    untracked = FlowEntry.make(
        pipeline.POLICY,
        10,
        {"eth_type": IP, "ct_state": (0, TRK)},
        [Output(pipeline.OFPP_CONTROLLER), Conntrack(1, table=pipeline.POLICY)],
    )
    tracked = FlowEntry.make(pipeline.POLICY, 10, {"ct_state": (TRK, TRK)}, [Output(pipeline.OFPP_CONTROLLER)])
    trace = FakeNetwork({1: [*to_policy(), untracked, tracked]}, topo).send(a, unicast_frame(a, hosts[1]))
    assert [p.cookie for p in trace.punts] == [untracked.cookie, tracked.cookie], "actions before ct(table) run, then the table"


def test_a_conntrack_loop_is_reported():
    topo, hosts = build_mesh([(1, 2)])
    again = FlowEntry.make(pipeline.POLICY, 10, {"eth_type": IP}, [Conntrack(1, table=pipeline.POLICY)])
    with pytest.raises(RecirculationLoop):
        FakeNetwork({1: [*to_policy(), again]}, topo).send(hosts[0], unicast_frame(*hosts))


def test_overlapping_entries_of_one_priority_that_agree_are_not_ambiguous():
    topo, hosts = build_mesh([(1, 2)])
    arp = FlowEntry.make(pipeline.POLICY, 5, {"eth_type": pipeline.ETH_TYPE_ARP}, goto=pipeline.FORWARD)
    multicast = FlowEntry.make(pipeline.POLICY, 5, {"eth_dst": pipeline.MULTICAST_BIT}, goto=pipeline.FORWARD)
    out = FlowEntry.make(pipeline.FORWARD, 5, {}, [Output(pipeline.OFPP_CONTROLLER)])
    trace = FakeNetwork({1: [*to_policy(), arp, multicast, out]}, topo).send(
        hosts[0], {**FRAME, "eth_type": pipeline.ETH_TYPE_ARP}
    )
    assert trace.to_controller


@pytest.mark.parametrize(
    "entry, fragment",
    [
        (FlowEntry.make(pipeline.POLICY, 5, {"ip_proto": 58, "icmpv6_type": 135}), r"ip_proto needs eth_type 0x0800 or 0x86dd"),
        (
            FlowEntry.make(pipeline.POLICY, 5, {"eth_type": IP, "ip_proto": 58, "icmpv6_type": 135}),
            r"icmpv6_type needs eth_type 0x86dd",
        ),
        (
            FlowEntry.make(pipeline.POLICY, 5, {"eth_type": IP, "ip_proto": 6, "icmpv6_type": 135}),
            r"icmpv6_type needs ip_proto 58",
        ),
        (FlowEntry.make(pipeline.POLICY, 5, {"eth_type": IP, "tcp_dst": 80}), r"tcp_dst needs ip_proto 6"),
        (FlowEntry.make(pipeline.POLICY, 5, {"ct_state": (0x01, 0x01)}), r"ct_state \+new can never match"),
        (FlowEntry.make(pipeline.POLICY, 5, {"ct_state": (0x23, 0x23)}), r"\+new excludes \+est"),
        (FlowEntry.make(pipeline.POLICY, 5, {"ct_state": (0x32, 0x32)}), r"with \+inv only \+trk"),
        (FlowEntry.make(pipeline.POLICY, 5, {"metadata": (0x3, 0x1)}), r"metadata value 0x3 has bits outside its mask 0x1"),
        (FlowEntry.make(pipeline.POLICY, 5, {"metadata": 1 << 64}), r"wider than 64 bits"),
        (FlowEntry.make(pipeline.POLICY, 5, {}, [Conntrack(1, table=pipeline.POLICY)]), r"needs eth_type 0x0800 or 0x86dd"),
        (
            FlowEntry.make(pipeline.POLICY, 5, {"eth_type": IP, "ct_state": (TRK | INV, TRK | INV)}, [Conntrack(1, commit=True)]),
            r"commits frames matched as \+inv",
        ),
        (
            FlowEntry.make(pipeline.POLICY, 5, {"eth_type": IP}, [Conntrack(1, table=pipeline.POLICY), Output(1)]),
            r"does not model that fork",
        ),
        (
            FlowEntry.make(pipeline.POLICY, 5, {"eth_type": IP}, [Conntrack(1, table=pipeline.POLICY)], goto=pipeline.FORWARD),
            r"does not model that fork",
        ),
        (FlowEntry.make(pipeline.POLICY, 5, {"eth_type": IP}, [Conntrack(1 << 16, commit=True)]), r"zone 65536 is not 16 bits"),
    ],
)
def test_conntrack_and_metadata_flows_open_vswitch_would_refuse_are_refused(entry, fragment):
    topo, _ = build_mesh([(1, 2)])
    with pytest.raises(FlowRejected, match=fragment):
        FakeNetwork({1: [entry]}, topo)


def test_ipv6_tcp_and_icmpv6_matches_are_accepted_and_followed():
    topo, hosts = build_mesh([(1, 2)], hosts_per_switch=2)
    a, b = hosts[0], hosts[1]
    v6 = pipeline.ETH_TYPE_IPV6
    entries = [
        *to_policy(),
        FlowEntry.make(pipeline.POLICY, 5, {"eth_type": v6, "ip_proto": 6, "tcp_dst": (8000, 0xFFF0)}, [Output(b.port)]),
        FlowEntry.make(pipeline.POLICY, 5, {"eth_type": v6, "ip_proto": 58, "icmpv6_type": 136}, [Output(b.port)]),
    ]
    net = FakeNetwork({1: entries}, topo)
    assert net.send(a, tcp_frame(a, b, 1234, 8015, ipv6=True)).reaches(b)
    assert not net.send(a, tcp_frame(a, b, 1234, 8016, ipv6=True)).reaches(b)
    assert not net.send(a, tcp_frame(a, b, 1234, 8015)).reaches(b), "IPv4 is another eth_type"
    assert net.send(a, neighbour_discovery(a, 136, b)).reaches(b)
    assert not net.send(a, neighbour_discovery(a, 135, b)).reaches(b)


def test_reply_frames_swap_both_ends():
    topo, hosts = build_mesh([(1, 2)])
    a, b = hosts
    frame = udp_frame(a, b, 5353, 53)
    assert reply_frame(frame) == udp_frame(b, a, 53, 5353)
    assert reply_frame(reply_frame(frame)) == frame
    assert reply_frame(icmp_frame(a, b)) == icmp_frame(b, a, icmp_type=0)
    assert reply_frame(icmp_frame(a, b, ipv6=True)) == icmp_frame(b, a, icmp_type=129, ipv6=True)
    assert link_local("02:00:00:00:00:01") == "fe80::ff:fe00:1"
