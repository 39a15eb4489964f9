"""Encryption steering: which hypervisor pairs need a tunnel, and the flows that keep `encrypt`
connections inside tunnels, or drop them, but never let them leave a hypervisor in clear.

How a connection travels (docs/architecture.md, "Encryption"):
- the source hypervisor's policy table commits an `encrypt` connection with ct_mark
  CT_MARK_ENCRYPT and marks its frames with reg0 = REG0_ENCRYPT; later frames of the connection,
  replies included, are marked again from the ct_mark;
- a marked frame goes to a local VM, or out of the tunnel port toward its destination's
  hypervisor, or it is dropped: no plain unicast entry can ever see it;
- a frame out of a tunnel port is marked too and goes straight to the egress table, which only
  delivers to local VMs (a tunnel never relays) and commits the connection with the encrypt
  mark, so that the VM's replies go back through the tunnel.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from apps import pipeline
from apps.flows import ENCRYPT_MARK, Conntrack, FlowEntry, Output
from apps.policy import Rule
from apps.policy_flows import matching_identities
from topology.model import Endpoint, Host, Topology

APP = pipeline.APP_TUNNEL
IP_FAMILIES = (pipeline.ETH_TYPE_IPV4, pipeline.ETH_TYPE_IPV6)
_PORT_NAME = re.compile(rf"{pipeline.TUNNEL_PORT_PREFIX}([1-9]\d{{0,4}})x([1-9]\d{{0,4}})")
MAX_INDEX = 99999  # a tunnel port name must fit in 15 characters: glvx + 5 digits + x + 5 digits

Pair = frozenset[int]  # two hypervisor dpids


def tunnel_port_name(own_index: int, peer_index: int) -> str:
    """The name of the tunnel port on hypervisor `own_index` toward hypervisor `peer_index`."""
    if not (1 <= own_index <= MAX_INDEX and 1 <= peer_index <= MAX_INDEX):
        raise ValueError(f"tunnel indexes must be between 1 and {MAX_INDEX}")
    return f"{pipeline.TUNNEL_PORT_PREFIX}{own_index}x{peer_index}"


def parse_tunnel_port_name(name: str) -> tuple[int, int] | None:
    """(own index, peer index) of a tunnel port name, or None."""
    found = _PORT_NAME.fullmatch(name)
    return (int(found.group(1)), int(found.group(2))) if found else None


@dataclass(frozen=True)
class TunnelPlan:
    """The tunnels the compiler may use: per hypervisor, the up tunnel port toward each peer
    hypervisor (dpid -> peer dpid -> port number)."""

    ports: Mapping[int, Mapping[int, int]] = field(default_factory=dict)

    def port(self, dpid: int, peer: int) -> int | None:
        return self.ports.get(dpid, {}).get(peer)


def plan_from_topology(topo: Topology, bridge_of_index: Mapping[int, str]) -> TunnelPlan:
    """Read the tunnel ports off the switches: a port named for (own index, peer index) on the
    bridge of the hypervisor with the own index, up, leads to the bridge of the peer index."""
    dpid_of_bridge = {sw.name: dpid for dpid, sw in topo.switches.items() if sw.name}
    dpid_of_index = {i: dpid_of_bridge[b] for i, b in bridge_of_index.items() if b in dpid_of_bridge}
    ports: dict[int, dict[int, int]] = {}
    for dpid, sw in topo.switches.items():
        for port_no, name in sw.tunnel_ports().items():
            parsed = parse_tunnel_port_name(name)
            if parsed is None:
                continue
            own, peer = parsed
            if dpid_of_index.get(own) != dpid or peer not in dpid_of_index or dpid_of_index[peer] == dpid:
                continue  # not where its name says it belongs: never used
            ports.setdefault(dpid, {})[dpid_of_index[peer]] = port_no
    return TunnelPlan(ports)


def encrypt_pairs(
    by_switch: Mapping[int, Sequence[Host]],
    hypervisors: Iterable[int],
    identity_of: Mapping[str, int],
    labels: Mapping[int, Mapping[str, str] | None],
    rules: Sequence[Rule],
) -> frozenset[Pair]:
    """Hypervisor pairs that some `encrypt` rule may send traffic between: a rule whose source
    selects a VM on one and whose destination selects a VM on the other. Replies travel the same
    tunnel, so a pair has no direction."""
    encrypting = [r for r in rules[: pipeline.MAX_RULES] if r.action == "encrypt"]
    if not encrypting:
        return frozenset()
    hypervisors = sorted(set(hypervisors))
    ids_on: dict[int, set[int]] = {
        dpid: {identity_of[h.mac] for h in by_switch.get(dpid, ()) if h.mac in identity_of} for dpid in hypervisors
    }
    all_ids = set().union(*ids_on.values()) if ids_on else set()
    pairs: set[Pair] = set()
    for rule in encrypting:
        destinations = matching_identities(rule.dst, all_ids, labels)
        # A hypervisor with no VM is in no pair, whatever `any` says: there is nothing to encrypt.
        to = [d for d in hypervisors if ids_on[d] and (destinations is None or ids_on[d] & set(destinations))]
        if not to:
            continue
        for src in hypervisors:
            if not ids_on[src] or matching_identities(rule.src, ids_on[src], labels) == []:
                continue
            pairs.update(frozenset((src, dst)) for dst in to if dst != src)
    return frozenset(pairs)


def tunnel_ingress_flows(tunnel_ports: Iterable[int], planned: Iterable[int]) -> list[FlowEntry]:
    """A frame out of a tunnel of the plan is encrypted traffic for a local VM: marked, straight to
    egress, which delivers only to local VMs, so a tunnel can never relay into the fabric. A port
    named like a tunnel that the plan does not use (a stale port, one on the wrong bridge) lets
    nothing in."""
    planned = set(planned)
    flows = []
    for port in sorted(tunnel_ports):
        if port in planned:
            actions, goto = (ENCRYPT_MARK,), pipeline.EGRESS
        else:
            actions, goto = (), None
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_FROM_TUNNEL, {"in_port": port}, actions, goto, APP))
    return flows


def endpoint_flows(endpoints: Iterable[tuple[Endpoint, int]]) -> list[FlowEntry]:
    """A tunnel endpoint's underlay traffic is infrastructure: its ARP and its WireGuard UDP, from
    its own port, MAC and IP, skip classification and policy (a default deny included). Anything
    else it sends, and anything claiming its addresses from elsewhere, meets the normal pipeline."""
    flows = []
    for endpoint, port in endpoints:
        own = {"in_port": port, "eth_src": endpoint.mac}
        arp = {**own, "eth_type": pipeline.ETH_TYPE_ARP, "arp_spa": endpoint.ip}
        udp = {**own, "eth_type": pipeline.ETH_TYPE_IPV4, "ipv4_src": endpoint.ip, "ip_proto": 17}
        udp["udp_src"] = endpoint.listen_port
        for match in (arp, udp):
            flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_ENDPOINT, match, goto=pipeline.FORWARD, app=APP))
    return flows


def encrypt_drop_flow() -> FlowEntry:
    """Marked frames no other entry took: dropped, and counted by this entry's packet counter."""
    return FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_ENCRYPT_DROP, {"reg0": pipeline.REG0_ENCRYPT}, app=APP)


def encrypt_forward_flows(
    local: Iterable[Host], remote: Mapping[int, Sequence[Host]], plan_ports: Mapping[int, int]
) -> list[FlowEntry]:
    """Marked frames: to a local VM through egress; to a VM on a hypervisor we have a tunnel to, out
    of that tunnel; anything else dropped (fail closed: no tunnel up, or an unknown destination)."""
    flows = [encrypt_drop_flow()]
    for host in local:
        match = {"reg0": pipeline.REG0_ENCRYPT, "eth_dst": host.mac}
        flows.append(FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_ENCRYPT_LOCAL, match, goto=pipeline.EGRESS, app=APP))
    for peer in sorted(plan_ports):
        flows += tunnel_route_flows(remote.get(peer, ()), plan_ports[peer])
    return flows


def tunnel_route_flows(hosts: Iterable[Host], port: int) -> list[FlowEntry]:
    """Marked frames for the VMs of one peer hypervisor go out of the tunnel port toward it (the
    compiler shares these between the hypervisors that reach the peer through a port of that number)."""
    flows = []
    for host in hosts:
        match = {"reg0": pipeline.REG0_ENCRYPT, "eth_dst": host.mac}
        flows.append(FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_ENCRYPT_TUNNEL, match, (Output(port),), app=APP))
    return flows


def encrypt_egress_flows(local: Iterable[Host], zone: int) -> list[FlowEntry]:
    """A connection that reached a local VM through a tunnel is committed with the encrypt mark:
    the VM's replies are then marked by the policy table and go back through the tunnel."""
    flows = []
    for host in local:
        for family in IP_FAMILIES:
            match = {"reg0": pipeline.REG0_ENCRYPT, "eth_dst": host.mac, "eth_type": family}
            actions = (Conntrack(zone, commit=True, mark=pipeline.CT_MARK_ENCRYPT), Output(host.port))
            flows.append(FlowEntry.make(pipeline.EGRESS, pipeline.PRIO_EGRESS_COMMIT_ENCRYPT, match, actions, app=APP))
    return flows



ENCRYPT_DROP_COOKIE = encrypt_drop_flow().cookie
