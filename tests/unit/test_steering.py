"""Encryption steering, asked of the fake switch network: `encrypt` connections cross between
hypervisors only inside tunnels or not at all, tunnels never relay and are never flooded to or
probed, and tunnel endpoints' underlay traffic passes whatever the policy says."""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps import pipeline
from apps.desired import compile_network
from apps.flows import app_of
from apps.selectors import parse_selector
from apps.steering import MAX_INDEX, TunnelPlan, parse_tunnel_port_name, plan_from_topology, tunnel_port_name
from tests.fakeoftable import (
    BROADCAST,
    FakeNetwork,
    LeafSpine,
    TunnelMesh,
    add_tunnel_mesh,
    arp_reply,
    arp_request,
    build_leaf_spine,
    check_entry,
    ipv4_frame,
    policy_state,
    reply_frame,
    service_frame,
    tcp_frame,
)
from topology import lldp
from topology.learner import Learner, PacketOut, Punt
from topology.model import Endpoint, Host, Port, PortRef, Topology

PROTOS = ("tcp", "udp", "icmp")
KEY = b"s" * 32
_sports = itertools.count(30000)
NOBODY = Host("02:99:99:99:99:99", frozenset({"10.99.99.99"}), 0, 0)  # a MAC no switch knows


def rule(src: str, dst: str, action: str, *services: str) -> dict:
    return {"src": src, "dst": dst, "action": action, "services": list(services or ["any"])}


def compile_net(fabric: LeafSpine, labels, rules=(), default_action="allow", tunnels: TunnelMesh | None = None) -> FakeNetwork:
    """Compile `fabric` with the policy; tunnels: the mesh to use (default: the fabric's own)."""
    mesh = fabric.tunnels if tunnels is None else tunnels
    return FakeNetwork.compile(fabric.topo, policy_state(labels, rules, default_action), tunnels=mesh)


def connection(src: Host, dst: Host, proto: str, dport: int | None = 80, ipv6: bool = False) -> dict:
    """The first frame of a new connection (a fresh source port, or echo id, every time)."""
    return service_frame(src, dst, proto, dport, sport=next(_sports), ipv6=ipv6)


def only_copy(net: FakeNetwork, src: Host, dst: Host, frame: dict):
    """Send `frame` from src; it must arrive unchanged at dst and nowhere else. Returns that copy."""
    trace = net.send(src, frame)
    assert not trace.loops and not trace.punts, trace
    assert trace.delivered_to() == [(dst.dpid, dst.port)], f"{src.mac} -> {dst.mac}: {trace}"
    (copy,) = trace.deliveries
    assert copy.packet == frame, "steering must not rewrite the frame"
    return copy


def went_nowhere(net: FakeNetwork, dpid: int, in_port: int, frame: dict) -> bool:
    """Injected at (dpid, in_port): no copy was delivered, punted or looped, and every copy ended on
    that switch (a copy that crossed a link or a tunnel would have ended on another one)."""
    trace = net.trace(dpid, in_port, frame)
    return not trace.deliveries and not trace.punts and not trace.loops and all(d.dpid == dpid for d in trace.drops)


def in_tunnel_only(net: FakeNetwork, copy) -> bool:
    return net.through_tunnel(copy) and not net.crossed_in_clear(copy)


def in_clear_only(net: FakeNetwork, copy) -> bool:
    return net.crossed_in_clear(copy) and not net.through_tunnel(copy)


def touched_a_tunnel(mesh: TunnelMesh, net: FakeNetwork, trace) -> bool:
    """Did any copy of this trace go into a tunnel (delivered through one, or ended after one)?"""
    tunnel_ends = set(mesh.wiring)
    ends = [PortRef(d.dpid, d.in_port) for d in (*trace.drops, *trace.punts, *trace.loops)]
    return any(net.through_tunnel(c) for c in trace.deliveries) or any(e in tunnel_ends for e in ends)


@pytest.fixture(scope="module")
def fabric() -> LeafSpine:
    """Two hypervisors on different leaves, three VMs each, a tunnel between them."""
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3, tunnels=True)


@pytest.fixture(scope="module")
def plain() -> LeafSpine:
    """The same fabric with no tunnel at all."""
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3)


@pytest.fixture(scope="module")
def three() -> LeafSpine:
    """Three hypervisors, two VMs each, every pair tunnelled."""
    return build_leaf_spine(spines=1, leaves=3, hypervisors_per_leaf=1, vms_per_hypervisor=2, tunnels=True)


def tiers(fabric: LeafSpine) -> dict[Host, dict[str, str]]:
    """web, app, db, web, app, db... in MAC order: on two hypervisors of three VMs, one of each on each."""
    names = ["web", "app", "db"]
    return {vm: {"tier": names[i % 3]} for i, vm in enumerate(fabric.vms)}


def of_tier(fabric: LeafSpine, name: str) -> list[Host]:
    return [vm for vm, lbl in tiers(fabric).items() if lbl["tier"] == name]


# ---------------------------------------------------------------------------
# 1. Fail closed
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_encrypt_with_no_tunnel_at_all_is_dropped_at_the_source_and_allow_still_flows_in_clear(plain, ipv6):
    labels = tiers(plain)
    net = FakeNetwork.compile(plain.topo, policy_state(labels, [rule("tier=web", "any", "encrypt", "tcp/5432")]))
    web = of_tier(plain, "web")[0]
    for dst in [*of_tier(plain, "db"), *of_tier(plain, "app")]:
        if dst.dpid == web.dpid:
            continue
        frame = connection(web, dst, "tcp", 5432, ipv6)
        assert went_nowhere(net, web.dpid, web.port, frame), "no tunnel: dropped, never sent in clear"
        assert in_clear_only(net, only_copy(net, web, dst, connection(web, dst, "tcp", 80, ipv6))), "allow: in clear"
    unknown = connection(web, NOBODY, "tcp", 5432, ipv6)
    assert went_nowhere(net, web.dpid, web.port, unknown), "an unknown destination is not flooded in clear either"


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_encrypt_across_a_pair_the_mesh_lacks_is_dropped_while_tunnelled_pairs_work(ipv6):
    fabric = build_leaf_spine(spines=1, leaves=3, hypervisors_per_leaf=1, vms_per_hypervisor=1)
    a, b, c = fabric.hypervisors
    mesh = add_tunnel_mesh(fabric.topo, fabric.hypervisors, pairs=[(a, b)])
    on = {vm.dpid: vm for vm in fabric.vms}
    labels = {on[a]: {"tier": "web"}, on[b]: {"tier": "db"}, on[c]: {"tier": "db"}}
    rules = [rule("tier=web", "any", "encrypt", "tcp/5432"), rule("any", "any", "allow")]
    net = FakeNetwork.compile(fabric.topo, policy_state(labels, rules, "deny"), tunnels=mesh)
    web, tunnelled, stranded = on[a], on[b], on[c]
    assert in_tunnel_only(net, only_copy(net, web, tunnelled, connection(web, tunnelled, "tcp", 5432, ipv6)))
    assert went_nowhere(net, web.dpid, web.port, connection(web, stranded, "tcp", 5432, ipv6)), "no tunnel to c"
    assert went_nowhere(net, web.dpid, web.port, connection(web, NOBODY, "tcp", 5432, ipv6)), "unknown destination"
    for dst in (tunnelled, stranded):
        assert in_clear_only(net, only_copy(net, web, dst, connection(web, dst, "tcp", 80, ipv6))), "allow stays plain"


@pytest.mark.parametrize("tunnel_after", [True, False], ids=["tunnel-still-up", "tunnel-gone"])
def test_a_connection_opened_under_encrypt_never_goes_in_clear_after_the_rule_is_removed(fabric, tunnel_after):
    labels = tiers(fabric)
    web, db = of_tier(fabric, "web")[0], of_tier(fabric, "db")[1]
    assert web.dpid != db.dpid
    before = compile_net(fabric, labels, [rule("tier=web", "tier=db", "encrypt")], "deny")
    syn = connection(web, db, "tcp", 5432)
    assert in_tunnel_only(before, only_copy(before, web, db, syn))
    assert in_tunnel_only(before, only_copy(before, db, web, reply_frame(syn)))
    # The encrypt rule is replaced by a plain allow; the datapaths keep their conntrack.
    allow = policy_state(labels, [rule("tier=web", "tier=db", "allow")], "deny")
    after = FakeNetwork.compile(fabric.topo, allow, tunnels=fabric.tunnels if tunnel_after else None)
    after.conntrack = before.conntrack
    for src, dst, frame in ((web, db, syn), (db, web, reply_frame(syn))):
        if tunnel_after:
            assert in_tunnel_only(after, only_copy(after, src, dst, frame)), "still encrypted, both ways"
        else:
            assert went_nowhere(after, src.dpid, src.port, frame), "no tunnel any more: dropped, not sent in clear"
    fresh = connection(web, db, "tcp", 5432)
    assert in_clear_only(after, only_copy(after, web, db, fresh)), "a new connection follows the new allow rule"


@pytest.mark.parametrize("first", ["client", "server"], ids=["client-speaks-first", "server-speaks-first"])
@pytest.mark.parametrize("proto", PROTOS)
def test_a_connection_opened_in_clear_is_encrypted_from_its_next_frame_once_a_rule_selects_it(fabric, proto, first):
    """An encrypt rule added while a connection is open: whichever end sends next, its frame and
    every later one travel only inside the tunnel (the connection is re-evaluated, not grandfathered)."""
    labels = tiers(fabric)
    web, db = of_tier(fabric, "web")[0], of_tier(fabric, "db")[1]
    before = compile_net(fabric, labels, [], "allow")
    opening = connection(web, db, proto, 5432 if proto != "icmp" else None)
    answer = reply_frame(opening)
    assert in_clear_only(before, only_copy(before, web, db, opening))
    assert in_clear_only(before, only_copy(before, db, web, answer))
    service = f"{proto}/5432" if proto != "icmp" else "icmp"
    rules = [rule("tier=app", "any", "allow"), rule("tier=web", "tier=db", "encrypt", service)]
    after = FakeNetwork.compile(fabric.topo, policy_state(labels, rules, "allow"), tunnels=fabric.tunnels)
    after.conntrack = before.conntrack
    turns = [(web, db, opening), (db, web, answer)]
    if first == "server":
        turns.reverse()
    for src, dst, frame in turns * 2:
        assert in_tunnel_only(after, only_copy(after, src, dst, frame)), (src.mac, "must not stay in clear")


def test_an_established_connection_no_encrypt_rule_selects_stays_in_clear(fabric):
    """Re-evaluation follows first-match order: an earlier allow rule shadows a later encrypt rule,
    for open connections as for new ones; and connections between other tiers are untouched."""
    labels = tiers(fabric)
    web, db = of_tier(fabric, "web")[0], of_tier(fabric, "db")[1]
    app = next(vm for vm in of_tier(fabric, "app") if vm.dpid != web.dpid)
    before = compile_net(fabric, labels, [], "allow")
    opened = [(web, db, connection(web, db, "tcp", 5432)), (web, app, connection(web, app, "tcp", 80))]
    for src, dst, frame in opened:
        only_copy(before, src, dst, frame)
    rules = [rule("tier=web", "tier=db", "allow", "tcp/5432"), rule("tier=web", "any", "encrypt", "tcp/5432")]
    after = FakeNetwork.compile(fabric.topo, policy_state(labels, rules, "deny"), tunnels=fabric.tunnels)
    after.conntrack = before.conntrack
    for src, dst, frame in opened:
        assert in_clear_only(after, only_copy(after, src, dst, frame))
        assert in_clear_only(after, only_copy(after, dst, src, reply_frame(frame)))


def test_a_connection_marked_while_no_tunnel_existed_stays_dropped_after_the_rule_is_removed(plain):
    labels = tiers(plain)
    web, db = of_tier(plain, "web")[0], of_tier(plain, "db")[1]
    before = FakeNetwork.compile(plain.topo, policy_state(labels, [rule("tier=web", "tier=db", "encrypt")]))
    syn = connection(web, db, "tcp", 5432)
    assert went_nowhere(before, web.dpid, web.port, syn)
    after = FakeNetwork.compile(plain.topo, policy_state(labels, [rule("tier=web", "tier=db", "allow")]))
    after.conntrack = before.conntrack
    assert went_nowhere(after, web.dpid, web.port, syn), "the source committed it with the encrypt mark"


# ---------------------------------------------------------------------------
# 2. With a tunnel
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("proto", PROTOS)
def test_encrypt_traffic_between_hypervisors_crosses_only_inside_the_tunnel_both_ways(fabric, proto, ipv6):
    net = compile_net(fabric, tiers(fabric), [rule("tier in (web,db)", "tier in (web,db)", "encrypt")], "deny")
    ends = of_tier(fabric, "web") + of_tier(fabric, "db")
    pairs = [(a, b) for a, b in itertools.permutations(ends, 2) if a.dpid != b.dpid]
    assert len(pairs) == 8
    for src, dst in pairs:
        frame = connection(src, dst, proto, 5432, ipv6)
        assert in_tunnel_only(net, only_copy(net, src, dst, frame)), (proto, src.mac, dst.mac)
        assert in_tunnel_only(net, only_copy(net, dst, src, reply_frame(frame))), "the reply goes back encrypted"
        assert in_tunnel_only(net, only_copy(net, src, dst, frame)), "and the rest of the conversation"
    app = of_tier(fabric, "app")
    assert went_nowhere(net, app[0].dpid, app[0].port, connection(app[0], app[1], proto, 5432, ipv6)), "deny is deny"


@pytest.mark.parametrize("proto", PROTOS)
def test_encrypt_between_vms_on_one_hypervisor_is_delivered_locally(fabric, proto):
    net = compile_net(fabric, tiers(fabric), [rule("tier=web", "tier=db", "encrypt")], "deny")
    web = of_tier(fabric, "web")[0]
    db = next(vm for vm in of_tier(fabric, "db") if vm.dpid == web.dpid)
    frame = connection(web, db, proto, 5432)
    for src, dst, sent in ((web, db, frame), (db, web, reply_frame(frame))):
        copy = only_copy(net, src, dst, sent)
        assert copy.path == ((src.dpid, src.port),), "never left the hypervisor"
        assert not net.through_tunnel(copy) and not net.crossed_in_clear(copy)


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_an_encrypt_service_rule_encrypts_only_its_service(fabric, ipv6):
    net = compile_net(fabric, tiers(fabric), [rule("any", "any", "encrypt", "tcp/5432")])
    for src, dst in itertools.permutations(fabric.vms, 2):
        if src.dpid == dst.dpid:
            continue
        pg, web = connection(src, dst, "tcp", 5432, ipv6), connection(src, dst, "tcp", 80, ipv6)
        assert in_tunnel_only(net, only_copy(net, src, dst, pg))
        assert in_tunnel_only(net, only_copy(net, dst, src, reply_frame(pg)))
        assert in_clear_only(net, only_copy(net, src, dst, web))
        assert in_clear_only(net, only_copy(net, dst, src, reply_frame(web)))


# ---------------------------------------------------------------------------
# 3. A tunnel never relays
# ---------------------------------------------------------------------------
def test_a_frame_out_of_a_tunnel_reaches_only_a_vm_of_that_hypervisor(three):
    net = compile_net(three, {}, [rule("any", "any", "encrypt")])
    a, b, c = three.hypervisors
    port = three.tunnels.plan.port(b, a)  # b's end of the a-b tunnel
    local = [vm for vm in three.vms if vm.dpid == b]
    elsewhere = [vm for vm in three.vms if vm.dpid != b]
    sender = next(vm for vm in three.vms if vm.dpid == a)
    for dst in elsewhere:  # on a (back where it came from) or on c (onward through b's other tunnel)
        for frame in (tcp_frame(sender, dst, 40000, 80), arp_reply(sender, dst)):
            assert went_nowhere(net, b, port, frame), (dst.dpid, frame["eth_type"])
    for frame in (
        tcp_frame(sender, NOBODY, 40000, 80),
        arp_request(sender, "10.99.0.1"),
        arp_request(sender, next(iter(local[0].ips))),
        ipv4_frame(sender, BROADCAST, "255.255.255.255"),
        {**tcp_frame(sender, local[0], 40000, 80), "eth_dst": "01:00:5e:00:00:01"},
    ):
        assert went_nowhere(net, b, port, frame), frame
    for dst in local:
        frame = tcp_frame(sender, dst, next(_sports), 80)
        trace = net.trace(b, port, frame)
        assert trace.delivered_to() == [(dst.dpid, dst.port)] and trace.deliveries[0].path == ((b, port),)
        assert not trace.punts and not trace.loops


# ---------------------------------------------------------------------------
# 4. Tunnel ports are never flooded to, probed or learned from
# ---------------------------------------------------------------------------
def test_broadcast_and_unknown_unicast_from_a_vm_never_enter_a_tunnel(three):
    net = compile_net(three, {}, [rule("any", "any", "encrypt")])
    edges = {(d, p) for d in three.topo.switches for p in three.topo.edge_ports(d)}
    tunnel_ports = {(ref.dpid, ref.port) for ref in three.tunnels.wiring}
    assert tunnel_ports and not tunnel_ports & edges
    for src in three.vms:
        for frame in (
            arp_request(src, "10.99.0.1"),  # nobody has it: flooded
            ipv4_frame(src, BROADCAST, "255.255.255.255"),
            ipv4_frame(src, "01:00:5e:00:00:fb", "224.0.0.251"),
        ):
            trace = net.send(src, frame)
            assert trace.delivered_to() == sorted(edges - {(src.dpid, src.port)}), frame
            assert not touched_a_tunnel(three.tunnels, net, trace), frame
        trace = net.send(src, ipv4_frame(src, NOBODY.mac))
        assert not trace.deliveries or all(not net.through_tunnel(c) for c in trace.deliveries)
        assert not touched_a_tunnel(three.tunnels, net, trace)


def port_mac(dpid: int, port: int) -> str:
    return f"aa:00:00:00:{dpid:02x}:{port % 256:02x}"


TUNNEL = 100  # the tunnel port's number on both test switches


def tunnelled_learner(now: float = 0.0) -> Learner:
    """Switches 1 and 2 (hypervisors 1 and 2), connected and synced: ports 1-2 and a tunnel port to the other."""
    learner = Learner(key=KEY)
    for dpid, peer in ((1, 2), (2, 1)):
        learner.switch_connected(dpid, now)
        ports = [Port(p, f"s{dpid}-eth{p}", port_mac(dpid, p)) for p in (1, 2)]
        ports.append(Port(TUNNEL, tunnel_port_name(dpid, peer), port_mac(dpid, TUNNEL)))
        ports.append(Port(pipeline.OFPP_LOCAL, f"s{dpid}", port_mac(dpid, 0xFE)))
        learner.ports_described(dpid, ports, now)
    return learner


def probe_from(ref: PortRef, now: float) -> bytes:
    return lldp.build_probe(KEY, ref.dpid, ref.port, port_mac(ref.dpid, ref.port), int(now * 1000))


def arp_bytes(src_mac: str, sender_ip: str, target_ip: str = "10.0.0.254") -> bytes:
    mac = bytes.fromhex(src_mac.replace(":", ""))
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + bytes(map(int, sender_ip.split("."))) + bytes(6)
    arp += bytes(map(int, target_ip.split(".")))
    return b"\xff" * 6 + mac + struct.pack("!H", pipeline.ETH_TYPE_ARP) + arp


def out_ports(sent: Sequence[PacketOut]) -> set[tuple[int, int]]:
    return {(p.dpid, p.out_port) for p in sent}


def test_the_learner_never_probes_a_tunnel_port():
    learner = tunnelled_learner()
    sent = learner.switch_synced(1, 0.0).send + learner.switch_synced(2, 0.0).send
    assert out_ports(sent) == {(1, 1), (1, 2), (2, 1), (2, 2)}
    assert out_ports(learner.tick(1.0).send) == {(1, 1), (1, 2), (2, 1), (2, 2)}


def test_a_tunnel_port_added_after_the_switch_synced_is_not_probed():
    learner = tunnelled_learner()
    learner.switch_synced(1, 0.0)
    added = Port(TUNNEL + 1, tunnel_port_name(1, 3), port_mac(1, TUNNEL + 1))
    out = learner.port_changed(1, added, 1.0)
    assert out.changed and learner.topo.port_kind(1, TUNNEL + 1) == "tunnel"
    assert (1, TUNNEL + 1) not in out_ports(out.send)


def test_a_valid_probe_that_comes_out_of_a_tunnel_makes_no_link():
    learner = tunnelled_learner()
    for dpid in (1, 2):
        learner.switch_synced(dpid, 0.0)
    t = 1.0
    for src, dst in (
        (PortRef(1, TUNNEL), PortRef(2, TUNNEL)),  # tunnel to tunnel, both ways
        (PortRef(2, TUNNEL), PortRef(1, TUNNEL)),
        (PortRef(1, 1), PortRef(2, TUNNEL)),  # a fabric port heard through a tunnel port, both ways
        (PortRef(2, TUNNEL), PortRef(1, 1)),
    ):
        out = learner.packet_in(dst.dpid, dst.port, probe_from(src, t), Punt.COPY, t)
        assert not out.changed and not out.send, "not a link, and not answered into the tunnel"
    assert not learner.topo.links and learner.lldp_rejected == 0, "valid probes, refused for where they came from"
    assert learner.port_history(1, TUNNEL).kind == learner.port_history(2, TUNNEL).kind == "tunnel"
    # The same probes between the fabric ports do make a link (so the above has teeth).
    learner.packet_in(2, 1, probe_from(PortRef(1, 1), t), Punt.COPY, t)
    learner.packet_in(1, 1, probe_from(PortRef(2, 1), t), Punt.COPY, t)
    assert len(learner.topo.links) == 1


def test_a_tunnel_port_is_a_tunnel_whatever_happens_on_it_and_learns_no_host():
    learner = tunnelled_learner()
    for dpid in (1, 2):
        learner.switch_synced(dpid, 0.0)
    t = 0.0
    while t < 1.0:  # well past the edge-proving time
        learner.check_edges(t)
        t += 0.05
    assert learner.topo.port_kind(1, 1) == "edge" and learner.topo.port_kind(1, TUNNEL) == "tunnel"
    assert not learner.topo.is_edge_port(1, TUNNEL)
    for punt in (Punt.MISS, Punt.COPY):
        out = learner.packet_in(1, TUNNEL, arp_bytes("02:00:00:00:00:0a", "10.0.0.1"), punt, t)
        assert not out.changed and not out.send and not out.send_after
    assert not learner.topo.hosts and not learner.held, "not learned, not held for later"
    learner.topo.host_seen("02:00:00:00:00:0b", 1, TUNNEL, "10.0.0.2")  # forced in, as a stale store could
    assert learner.topo.port_kind(1, TUNNEL) == "tunnel", "hosts on it do not make it an edge port"
    learner.port_changed(1, Port(TUNNEL, tunnel_port_name(1, 2), port_mac(1, TUNNEL), up=False), t)
    assert learner.topo.port_kind(1, TUNNEL) == "tunnel"
    assert learner.port_history(1, TUNNEL).kind == "tunnel"


# ---------------------------------------------------------------------------
# 5. Tunnel endpoints
# ---------------------------------------------------------------------------
WG_PORT = 51820


class Endpoints:
    """Two hypervisors (two VMs each, one spare port) whose spare ports are their tunnel endpoints,
    and a learner that knows it."""

    def __init__(self) -> None:
        self.fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2, tunnels=True)
        self.learner = Learner(self.fabric.topo, key=KEY)
        self.port = 1 + 2 + 1  # after the uplink and the two VM ports
        self.endpoints = [
            Endpoint(f"hv{i}", f"s{dpid:x}", f"s{dpid:x}-eth{self.port}", f"02:ee:00:00:00:0{i}", f"192.168.100.{i}", WG_PORT)
            for i, dpid in enumerate(self.fabric.hypervisors, start=1)
        ]
        assert self.learner.set_endpoints(self.endpoints, 0.0).changed
        self.hosts = [self.learner.topo.hosts[ep.mac] for ep in self.endpoints]

    def compile(self, rules=(), default_action="deny") -> FakeNetwork:
        labels = {vm: {"tier": "web"} for vm in self.fabric.vms}
        state = policy_state(labels, rules, default_action)
        return FakeNetwork.compile(self.learner.topo, state, tunnels=self.fabric.tunnels)


def wireguard(src: Host, dst: Host, sport: int = WG_PORT) -> dict:
    return service_frame(src, dst, "udp", WG_PORT, sport=sport)


def test_an_endpoint_is_a_host_on_its_own_port():
    setup = Endpoints()
    for endpoint, dpid, host in zip(setup.endpoints, setup.fabric.hypervisors, setup.hosts, strict=True):
        assert host == Host(endpoint.mac, frozenset({endpoint.ip}), dpid, setup.port)
        assert setup.learner.topo.port_kind(dpid, setup.port) == "edge"
        assert setup.learner.topo.endpoints_on(dpid) == [(endpoint, setup.port)]


def test_endpoints_reach_each_other_under_a_policy_that_denies_everything():
    setup = Endpoints()
    net = setup.compile([rule("any", "any", "deny")], "deny")
    a, b = setup.hosts
    vm = setup.fabric.vms[0]
    assert went_nowhere(net, vm.dpid, vm.port, connection(vm, setup.fabric.vms[-1], "udp", WG_PORT)), "VMs are denied"
    for src, dst in ((a, b), (b, a)):
        answer = net.send(src, arp_request(src, next(iter(dst.ips))))
        assert answer.delivered_to() == [(src.dpid, src.port)] and answer.deliveries[0].packet["arp_sha"] == dst.mac
        only_copy(net, src, dst, arp_reply(src, dst))
        handshake = wireguard(src, dst)
        only_copy(net, src, dst, handshake)
        only_copy(net, dst, src, reply_frame(handshake))


def test_only_the_endpoint_itself_gets_through_a_deny():
    setup = Endpoints()
    deny = setup.compile([rule("any", "any", "deny")], "deny")
    allow = setup.compile([], "allow")
    a, b = setup.hosts
    vm = next(v for v in setup.fabric.vms if v.dpid == a.dpid)
    impostor = Host(a.mac, a.ips, vm.dpid, vm.port)  # a VM sending as the endpoint, from its own port
    spoofed = deny.send(impostor, wireguard(impostor, b))
    assert not spoofed.deliveries, "the endpoint's MAC and IP from a VM port"
    assert all((p.dpid, p.table) == (vm.dpid, pipeline.INGRESS) for p in spoofed.punts), "only asked about, as a stranger"
    other_ip = Host(vm.mac, a.ips, vm.dpid, vm.port)  # the VM's own MAC, the endpoint's IP
    forged = deny.send(other_ip, wireguard(other_ip, b))
    assert not forged.deliveries, "the VM's own MAC with the endpoint's IP"
    assert all(app_of(p.cookie) == "port-security" for p in forged.punts), "shown to the controller only as evidence"
    for sport in (WG_PORT + 1, 53, 40000):  # the endpoint, but not its WireGuard port: policy applies
        assert went_nowhere(deny, a.dpid, a.port, wireguard(a, b, sport)), sport
        only_copy(allow, a, b, wireguard(a, b, sport))
    assert went_nowhere(deny, a.dpid, a.port, connection(a, b, "tcp", 22)), "nor any other protocol"


def test_a_frame_from_an_endpoint_mac_on_another_port_is_refused_and_counted():
    setup = Endpoints()
    a = setup.hosts[0]
    t = 1.0
    for vm in setup.fabric.vms:  # on its own hypervisor and on the other one
        out = setup.learner.packet_in(vm.dpid, vm.port, arp_bytes(a.mac, next(iter(a.ips))), Punt.MISS, t)
        assert not out.changed and not out.send and not out.send_after
    assert setup.learner.endpoint_spoofs == len(setup.fabric.vms)
    assert setup.learner.topo.hosts[a.mac] == a, "the endpoint did not move"
    vm = setup.fabric.vms[0]
    assert setup.learner.topo.hosts[vm.mac] == vm, "the VM keeps its own place"


def test_the_learner_never_probes_an_endpoint_port():
    setup = Endpoints()
    learner, hvs = setup.learner, setup.fabric.hypervisors
    sent = [p for dpid in hvs for p in learner.switch_synced(dpid, 0.0).send]
    sent += learner.tick(1.0).send
    for dpid in hvs:
        name = f"s{dpid:x}-eth{setup.port}"
        sent += learner.port_changed(dpid, Port(setup.port, name, port_mac(dpid, setup.port), up=False), 1.5).send
        sent += learner.port_changed(dpid, Port(setup.port, name, port_mac(dpid, setup.port), up=True), 1.6).send
    sent += learner.tick(2.0).send
    ports = out_ports(sent)
    assert {(vm.dpid, vm.port) for vm in setup.fabric.vms} <= ports, "other edge ports are probed (teeth)"
    assert not {(dpid, setup.port) for dpid in hvs} & ports
    assert learner.topo.hosts[setup.endpoints[0].mac].port == setup.port, "back on its port once it is up again"


def test_every_entry_compiled_with_tunnels_and_endpoints_is_one_ovs_accepts():
    setup = Endpoints()
    tables = compile_network(
        setup.learner.topo,
        policy_state({vm: {"tier": "web"} for vm in setup.fabric.vms}, [rule("tier=web", "any", "encrypt")]),
        tunnels=setup.fabric.tunnels.plan,
    ).tables
    apps = set()
    for table in tables.values():
        for entry in table.values():
            check_entry(entry)
            apps.add(entry.cookie >> pipeline.COOKIE_APP_SHIFT & 0xFF)
    assert pipeline.APP_TUNNEL in apps and pipeline.APP_POLICY in apps


# ---------------------------------------------------------------------------
# 6. Which hypervisor pairs need a tunnel
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def four() -> LeafSpine:
    """Four hypervisors (h0, h1 on one leaf, h2, h3 on the other), two VMs each."""
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2)


# vms[2h] and vms[2h + 1] are on hypervisor h; None: unmanaged.
FOUR_LABELS = ["web", "app", "db", None, "web", "cache", "app", "app"]


@pytest.mark.parametrize(
    "rules, expected",
    [
        ([rule("tier=web", "tier=db", "encrypt")], {(0, 1), (1, 2)}),
        ([rule("tier=web", "any", "encrypt")], {(0, 1), (0, 2), (0, 3), (1, 2), (2, 3)}),
        ([rule("any", "tier=db", "encrypt")], {(0, 1), (1, 2), (1, 3)}),
        ([rule("any", "any", "encrypt")], {(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)}),
        ([rule("unmanaged", "tier=web", "encrypt")], {(0, 1), (1, 2)}),
        ([rule("tier=app", "tier=app", "encrypt")], {(0, 3)}),
        ([rule("tier=cache", "tier=cache", "encrypt")], set()),  # one VM: never a pair with itself
        ([rule("tier=web", "tier=nothing", "encrypt")], set()),
        ([rule("tier=nothing", "any", "encrypt")], set()),
        ([rule("tier=web", "tier=db", "allow"), rule("any", "any", "deny")], set()),
        (
            [
                rule("tier=web", "tier=db", "deny"),
                rule("tier=cache", "tier=app", "encrypt", "tcp/5432"),
                rule("any", "any", "allow"),
            ],
            {(0, 2), (2, 3)},
        ),
    ],
    ids=lambda v: None if isinstance(v, set) else ";".join(f"{r['src']}>{r['dst']}:{r['action']}" for r in v),
)
def test_encrypt_pairs_are_the_hypervisors_an_encrypt_rule_connects(four, rules, expected):
    labels = {vm: {"tier": t} for vm, t in zip(four.vms, FOUR_LABELS, strict=True) if t is not None}
    assert [vm.dpid for vm in four.vms] == [h for h in four.hypervisors for _ in range(2)]
    pairs = compile_network(four.topo, policy_state(labels, rules)).encrypt_pairs
    hv = four.hypervisors
    assert pairs == {frozenset((hv[i], hv[j])) for i, j in expected}
    assert all(len(pair) == 2 for pair in pairs)


@pytest.mark.parametrize("side", ["src", "dst"])
def test_a_hypervisor_with_no_vm_is_in_no_pair(side):
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=1)
    empty = fabric.hypervisors[-1]
    for vm in [v for v in fabric.vms if v.dpid == empty]:
        fabric.topo.remove_host(vm.mac)
    fabric.topo.set_role_override(empty, "hypervisor")
    labels = {vm: {"tier": "web"} for vm in fabric.vms if vm.dpid != empty}
    encrypt = rule("any", "tier=web", "encrypt") if side == "src" else rule("tier=web", "any", "encrypt")
    pairs = compile_network(fabric.topo, policy_state(labels, [encrypt])).encrypt_pairs
    assert len(pairs) == 3, "the three hypervisors with a web VM pair up"
    assert not any(empty in pair for pair in pairs)


LABEL_SETS = [{"tier": "web"}, {"tier": "db"}, None, {}, {"tier": "web", "env": "prod"}, {"tier": "app"}, {"env": "prod"}]
SELECTORS = ["tier=web", "tier=db", "any", "unmanaged", "tier!=db", "tier in (web,app)", "env=prod", "!tier", "tier"]
rule_strategy = st.builds(
    rule,
    st.sampled_from(SELECTORS),
    st.sampled_from(SELECTORS),
    st.sampled_from(["encrypt", "encrypt", "allow", "deny"]),
)


def brute_force_pairs(vms: Sequence[Host], labels: Mapping[Host, Mapping[str, str]], rules: Sequence[dict]) -> set:
    """For every encrypt rule and every two VMs on different hypervisors it selects as source and
    destination: that pair of hypervisors. Unmanaged VMs (no labels) are None to the selectors."""
    pairs = set()
    for body in rules:
        if body["action"] != "encrypt":
            continue
        src, dst = parse_selector(body["src"]), parse_selector(body["dst"])
        for a, b in itertools.permutations(vms, 2):
            if a.dpid != b.dpid and src.matches(labels.get(a)) and dst.matches(labels.get(b)):
                pairs.add(frozenset((a.dpid, b.dpid)))
    return pairs


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(st.sampled_from(LABEL_SETS), min_size=8, max_size=8),
    present=st.lists(st.booleans(), min_size=8, max_size=8),
    rules=st.lists(rule_strategy, max_size=5),
)
def test_encrypt_pairs_equal_a_brute_force_over_vm_pairs(labels, present, rules):
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2)
    vms = [vm for vm, here in zip(fabric.vms, present, strict=True) if here]
    for vm in fabric.vms:
        if vm not in vms:
            fabric.topo.remove_host(vm.mac)  # a hypervisor may lose all its VMs (and stop being one)
    inventory = {vm: lbl for vm, lbl in zip(fabric.vms, labels, strict=True) if lbl is not None and vm in vms}
    pairs = compile_network(fabric.topo, policy_state(inventory, rules)).encrypt_pairs
    assert pairs == brute_force_pairs(vms, inventory, rules)


# ---------------------------------------------------------------------------
# 7. Reading the tunnels off the switches
# ---------------------------------------------------------------------------
A, B, C, D = 0xA, 0xB, 0xC, 0xD


def test_the_plan_holds_exactly_the_up_tunnel_ports_on_the_bridge_their_name_says():
    topo = Topology()
    ports = {
        A: [
            Port(10, "glvx1x2"),  # -> B
            Port(11, "glvx1x3"),  # -> C
            Port(12, "glvx1x9"),  # index 9: unknown
            Port(13, "glvx2x3"),  # belongs on B
            Port(14, "glvx1x2x"),  # misnamed
            Port(15, "glvx1-2"),  # misnamed
            Port(16, "glvx1x1"),  # to itself
            Port(17, "glvx1x5"),  # index 5: a bridge no switch has
            Port(1, "eth1"),
        ],
        B: [Port(20, "glvx2x1"), Port(21, "glvx2x3", up=False)],  # -> A; down
        C: [Port(30, "glvx3x1"), Port(31, "glvx3x4")],  # -> A; index 4 is D, which is not a switch here
        D: [Port(40, "glvx9x1")],  # a bridge with no index
    }
    for dpid, bridge in ((A, "br-a"), (B, "br-b"), (C, "br-c"), (D, "br-x")):
        topo.switch_connected(dpid)
        topo.set_ports(dpid, [*ports[dpid], Port(pipeline.OFPP_LOCAL, bridge)])
    plan = plan_from_topology(topo, {1: "br-a", 2: "br-b", 3: "br-c", 4: "br-d", 5: "br-nowhere"})
    assert {d: dict(p) for d, p in plan.ports.items()} == {A: {B: 10, C: 11}, B: {A: 20}, C: {A: 30}}
    assert plan.port(A, B) == 10 and plan.port(B, C) is None and plan.port(D, A) is None
    assert plan_from_topology(topo, {}) == TunnelPlan()


@pytest.mark.parametrize("name", ["glvx1x1", "glvx2x1"], ids=["to-itself", "wrong-bridge"])
def test_a_port_the_plan_ignores_lets_nothing_past_policy(name):
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=1, tunnels=True)
    first, second = fabric.hypervisors
    fabric.topo.set_port(first, Port(77, name, "fe:00:00:00:77:77"))
    bridges = {i: fabric.topo.switches[dpid].name for i, dpid in enumerate(fabric.hypervisors, start=1)}
    plan = plan_from_topology(fabric.topo, bridges)
    assert plan == fabric.tunnels.plan, "the plan ignores the port"
    net = FakeNetwork(compile_network(fabric.topo, policy_state({}, [], "deny"), tunnels=plan).tables, fabric.topo)
    vm, remote = (next(v for v in fabric.vms if v.dpid == d) for d in (first, second))
    assert went_nowhere(net, vm.dpid, vm.port, connection(vm, remote, "tcp", 22)), "default deny (teeth)"
    assert went_nowhere(net, first, 77, connection(remote, vm, "tcp", 22))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, MAX_INDEX), st.integers(1, MAX_INDEX))
def test_tunnel_port_names_round_trip_and_fit_an_interface_name(own, peer):
    name = tunnel_port_name(own, peer)
    assert parse_tunnel_port_name(name) == (own, peer)
    assert len(name) <= 15, "Linux interface names are at most 15 characters"
    assert name.startswith(pipeline.TUNNEL_PORT_PREFIX)


@pytest.mark.parametrize("own, peer", [(0, 1), (1, 0), (-1, 2), (MAX_INDEX + 1, 1), (1, MAX_INDEX + 1)])
def test_tunnel_port_names_refuse_indexes_out_of_range(own, peer):
    with pytest.raises(ValueError, match="between 1 and"):
        tunnel_port_name(own, peer)


@pytest.mark.parametrize(
    "name", ["glvx1x", "glvxx2", "glvx1x2x", "glvx1-2", "eth0", "xglvx1x2", "glvx1x2 ", "GLVX1x2", "glvx+1x2"]
)
def test_names_that_are_not_tunnel_port_names_parse_to_none(name):
    assert parse_tunnel_port_name(name) is None
