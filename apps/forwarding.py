"""Desired flows for topology-driven forwarding: ingress admission, unicast, flooding, egress."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping

from apps import pipeline, policy_flows
from apps.flows import Conntrack, FlowEntry, Output
from topology.graph import GraphView
from topology.learner import Punt
from topology.model import Host, Topology

UNICAST = ("00:00:00:00:00:00", "01:00:00:00:00:00")  # the group bit clear
TO_CONTROLLER = Output(pipeline.OFPP_CONTROLLER, pipeline.PACKET_IN_BYTES)


def base_flows() -> list[FlowEntry]:
    """Flows every switch holds whatever the topology: LLDP and unknown sources to the
    controller, and pass-through defaults for the tables later issues fill in."""
    return [
        FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_LLDP, {"eth_type": pipeline.ETH_TYPE_LLDP}, (TO_CONTROLLER,)),
        # Unknown source on an edge port: the controller learns it.
        FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_MISS, {}, (TO_CONTROLLER,)),
        FlowEntry.make(pipeline.CLASSIFY, pipeline.PRIO_MISS, {}, goto=pipeline.POLICY),
        FlowEntry.make(pipeline.POLICY, pipeline.PRIO_MISS, {}, goto=pipeline.FORWARD),
    ]


# The table-miss entry of the ingress table: a packet-in carrying its cookie is a frame from an
# unknown source, which the controller learns and then re-injects into the pipeline.
MISS_COOKIE = next(e.cookie for e in base_flows() if e.table == pipeline.INGRESS and e.priority == pipeline.PRIO_MISS)


def punt_reason(table_id: int, cookie: int) -> Punt:
    """Why a frame reached the controller, from the table and cookie of the entry that sent it."""
    if cookie == MISS_COOKIE:
        return Punt.MISS
    app = (cookie >> pipeline.COOKIE_APP_SHIFT) & 0xFF
    if app == pipeline.APP_PORT_SECURITY:
        return Punt.EVIDENCE
    if app == pipeline.APP_QUARANTINE:
        return Punt.FOLLOW
    if table_id == pipeline.FORWARD:
        return Punt.UNANSWERED_ARP
    return Punt.COPY


def ingress_flows(
    topo: Topology, dpid: int, local_hosts: list[Host], identity_of: Mapping[str, int] | None = None
) -> list[FlowEntry]:
    """Table 0: frames from inter-switch ports go straight to forwarding; frames from a known
    host on its own edge port enter the pipeline tagged with the host's identity; ARP with a
    sender IP we do not know yet is also copied to the controller so that it learns the address."""
    flows = [
        FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_FROM_FABRIC, {"in_port": port}, goto=pipeline.FORWARD)
        for port in sorted(topo.inter_switch_ports(dpid))
    ]
    for host in local_hosts:
        tag = None
        if identity_of is not None:
            tag = (identity_of[host.mac], pipeline.META_SRC_MASK)
        admit = functools.partial(FlowEntry.make, pipeline.INGRESS, goto=pipeline.CLASSIFY, metadata=tag)
        at = {"in_port": host.port, "eth_src": host.mac}
        flows.append(admit(pipeline.PRIO_KNOWN_SOURCE, at))
        arp = {**at, "eth_type": pipeline.ETH_TYPE_ARP}
        flows.append(admit(pipeline.PRIO_KNOWN_SOURCE + 10, arp, (TO_CONTROLLER,)))
        for ip in sorted(host.ips):
            flows.append(admit(pipeline.PRIO_KNOWN_SOURCE + 20, {**arp, "arp_spa": ip}))
    return flows


def flood_flows(topo: Topology, dpid: int, flood_set: set[int]) -> list[FlowEntry]:
    """Broadcast, multicast and unknown unicast go out of every edge port and every tree port
    except the one they came in on. Frames arriving on a non-tree inter-switch port are
    dropped, so a looped fabric never storms."""
    flows = [
        FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_FLOOD_UNKNOWN, {"in_port": port}, flood_actions(flood_set, port))
        for port in sorted(flood_set | topo.inter_switch_ports(dpid))
    ]
    # An ARP request for an address no responder knows is flooded and also copied to the
    # controller, which asks again for it when new edge ports come up: a request flooded
    # while the target's port was still proving itself is not lost to a one-second retry.
    for port in topo.edge_ports(dpid):
        unanswered = {"in_port": port, "eth_type": pipeline.ETH_TYPE_ARP, "arp_op": 1}
        actions = [*flood_actions(flood_set, port), Output(pipeline.OFPP_CONTROLLER, pipeline.PACKET_IN_BYTES)]
        flows.append(FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_ARP_UNANSWERED, unanswered, actions))
    return flows


def fabric_flood_commit_flows(fabric_ports: Iterable[int], flood: Callable[[int], list], zone: int) -> list[FlowEntry]:
    """IP flooded from the fabric to local VMs (a destination not learned yet, or a datapath still
    caching a flood decision just after its route was installed) is committed first, as egress
    would commit it: otherwise the VM's reply meets an unknown connection and drops as invalid."""
    flows = []
    for port in sorted(fabric_ports):
        actions = flood(port)
        if actions:  # nothing is flooded from a non-tree port
            flows += _committed_ip(pipeline.PRIO_FLOOD_IP_FROM_FABRIC, {"in_port": port}, actions, zone)
    return flows


def _committed_ip(priority: int, match: dict, actions, zone: int) -> list[FlowEntry]:
    """The IPv4 and IPv6 frames of `match`: committed to conntrack in `zone`, then `actions`."""
    commit_then = (Conntrack(zone, commit=True), *actions)
    return [
        FlowEntry.make(pipeline.FORWARD, priority, {**match, "eth_type": family}, commit_then)
        for family in (pipeline.ETH_TYPE_IPV4, pipeline.ETH_TYPE_IPV6)
    ]


def flood_ports(topo: Topology, dpid: int, view: GraphView) -> set[int]:
    """Edge ports plus the switch's ports on the spanning tree."""
    return set(topo.edge_ports(dpid)) | set(view.tree_ports.get(dpid, frozenset()))


def flood_actions(flood_set: set[int] | frozenset[int], in_port: int) -> tuple[Output, ...]:
    """Out of every flood port but the one the frame came in on; nothing from a non-tree port."""
    if in_port not in flood_set:
        return ()
    return _flood_actions(frozenset(flood_set), in_port)


@functools.lru_cache(maxsize=1 << 16)
def _flood_actions(flood_set: frozenset[int], in_port: int) -> tuple[Output, ...]:
    """Asked for every port and every VM of a switch: computed once per flood set and port."""
    return tuple(Output(p) for p in sorted(flood_set - {in_port}))


def needs_routes(topo: Topology, dpid: int) -> bool:
    """Does this switch need an entry per remote host (see unicast_flows)?"""
    return len(topo.inter_switch_ports(dpid)) != 1


def route_flows(hosts: list[Host], port: int) -> list[FlowEntry]:
    """Unicast to these hosts (all behind one switch) out of `port`: the same entries on every
    switch that reaches that switch through a port of that number."""
    return [FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_UNICAST, {"eth_dst": h.mac}, (Output(port),)) for h in hosts]


def unicast_flows(
    topo: Topology, dpid: int, local: list[Host], parent: int | None = None, flood_set: frozenset[int] = frozenset()
) -> list[FlowEntry]:
    """Known local destination MACs go to the egress table; other unicast follows the flooding tree.

    A switch holds a route per remote host only where the host is not reached through its parent
    (its tree port toward the root): every other unicast goes to the parent, and the root, which
    holds every route, floods what it has none for (root_flood_flows). A switch with a single
    uplink (a typical hypervisor) therefore holds no entry per remote host, and a leaf holds only
    its own hypervisors' hosts: tables grow with the data centre on the spines and the root only.
    The compiler shares the routes a switch does hold (route_flows) between switches as groups."""
    flows = []
    for host in local:
        match = {"eth_dst": host.mac}
        flows.append(FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_UNICAST, match, goto=pipeline.EGRESS))
        flows.append(FlowEntry.make(pipeline.EGRESS, pipeline.PRIO_UNICAST, match, (Output(host.port),)))
    uplinks = topo.inter_switch_ports(dpid)
    if parent is not None or len(uplinks) == 1:
        # A stub that is its component's root (two switches) sends such unicast to its one uplink
        # too: the other end floods what comes down to it.
        up = parent if parent is not None else next(iter(uplinks))
        for port in sorted((set(topo.edge_ports(dpid)) | uplinks) - {up}):
            to_any_unicast = {"in_port": port, "eth_dst": UNICAST}
            flows.append(FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_UNICAST_UPLINK, to_any_unicast, (Output(up),)))
    elif uplinks:
        flows += root_flood_flows(topo, dpid, flood_set)
    if parent is not None:
        flows += reflected_flows(local, parent, sorted((flood_set & uplinks) - {parent}))
    return flows


def root_flood_flows(topo: Topology, dpid: int, flood_set: frozenset[int]) -> list[FlowEntry]:
    """Unicast that the root of the flooding tree holds no route for (a host nobody knows).

    Below the root such a frame goes to the parent, whichever port it came in on, so that routes
    toward the parent can be left out (unicast_flows); the parents form a tree, so it climbs to the
    root and cannot loop. The root floods it on the tree, back out of the port it came in on too
    (the sender's own branch has not had it), and, like any flood toward local VMs, commits IP
    first (fabric_flood_commit_flows). A frame that comes down from a parent is flooded down as
    before (flood_flows)."""
    flows = []
    zone = policy_flows.conntrack_zone(dpid)
    for port in sorted(topo.inter_switch_ports(dpid)):
        # From a non-tree port, flood_actions would send nothing: the root floods it all the same.
        actions = _flood_actions(flood_set, port)
        if port in flood_set:
            actions = (*actions, Output(pipeline.OFPP_IN_PORT))
        match = {"in_port": port, "eth_dst": UNICAST}
        flows.append(FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_UNICAST_UPLINK, match, actions))
        if topo.edge_ports(dpid):
            flows += _committed_ip(pipeline.PRIO_UNKNOWN_IP_AT_ROOT, match, actions, zone)
    return flows


def reflected_flows(local: list[Host], parent: int, children: list[int]) -> list[FlowEntry]:
    """A local host's own unicast that comes back down from the parent is one the root flooded back
    (root_flood_flows): it goes on down the tree, but not to this switch's edge ports, which
    never get what their own switch sent up (a hypervisor's VMs never hear their own frames)."""
    down = tuple(Output(p) for p in children)
    return [
        FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_REFLECTED, {"in_port": parent, "eth_src": h.mac, "eth_dst": UNICAST}, down)
        for h in local
    ]
