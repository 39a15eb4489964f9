"""The desired flow table of every switch, computed from the model by pure functions."""

from __future__ import annotations

import functools
from collections import defaultdict

from apps import arp_responder, forwarding, policy_flows
from apps.context import PolicyState
from apps.flows import FlowEntry
from apps.identity import Identities, host_identities, identity_labels
from topology import graph
from topology.model import ROLE_HYPERVISOR, Host, Topology

DesiredTables = dict[int, dict[int, FlowEntry]]  # dpid -> cookie -> entry


class ConflictError(RuntimeError):
    """Two desired entries share table, priority and match but differ in actions."""


def desired_tables(topo: Topology, policy: PolicyState | None = None, identities: Identities | None = None) -> DesiredTables:
    """Compile the whole model. Switches are independent, so this is a loop over switches.
    `identities` hands out identity numbers to new label sets (the caller persists them)."""
    policy = policy if policy is not None else PolicyState()
    identities = identities if identities is not None else Identities()
    view = graph.view(topo)
    hosts = sorted(
        (h for h in topo.hosts.values() if h.dpid in topo.switches and topo.is_edge_port(h.dpid, h.port)),
        key=lambda h: h.mac,
    )
    by_switch: dict[int, list[Host]] = defaultdict(list)
    for host in hosts:
        by_switch[host.dpid].append(host)
    responders = arp_responder.responder_flows(hosts)
    identity_of = host_identities({h.mac: h for h in hosts}, policy, identities)
    labels = identity_labels(set(identity_of.values()), identities)
    destinations = policy_flows.destination_flows(hosts, identity_of)
    tables: DesiredTables = {}
    for dpid in sorted(topo.switches):
        local = by_switch.get(dpid, [])
        entries = forwarding.base_flows()
        entries += forwarding.ingress_flows(topo, dpid, local, identity_of)
        flood_set = forwarding.flood_ports(topo, dpid, view)
        entries += forwarding.flood_flows(topo, dpid, flood_set)
        entries += forwarding.unicast_flows(topo, dpid, view, hosts, local)
        if topo.role(dpid) == ROLE_HYPERVISOR:
            entries += responders
            flood = functools.partial(forwarding.flood_actions, flood_set)
            entries += arp_responder.owner_bypass_flows(by_switch.get(dpid, []), flood)
            entries += arp_responder.fabric_bypass_flows(topo.inter_switch_ports(dpid), flood)
            local_ids = {identity_of[h.mac] for h in local}
            for identity in sorted(policy_flows.referenced_destinations(local_ids, labels, policy.rules)):
                entries += destinations.get(identity, [])
            entries += policy_flows.policy_flows(dpid, local_ids, labels, policy.rules, policy.default_action)
            entries += policy_flows.egress_flows(local, policy_flows.conntrack_zone(dpid))
        tables[dpid] = index_entries(entries)
    return tables


def index_entries(entries: list[FlowEntry]) -> dict[int, FlowEntry]:
    """Key entries by cookie, refusing two entries that would overwrite each other on a switch."""
    by_cookie: dict[int, FlowEntry] = {}
    by_slot: dict[tuple, FlowEntry] = {}
    for entry in entries:
        slot = (entry.table, entry.priority, entry.match)
        other = by_slot.get(slot)
        if other is not None and other != entry:
            raise ConflictError(f"conflicting flows in table {entry.table} at priority {entry.priority} for {entry.match}")
        by_slot[slot] = entry
        by_cookie[entry.cookie] = entry
    return by_cookie
