"""The desired flow table of every switch, computed from the model by pure functions."""

from __future__ import annotations

import functools
from collections import defaultdict
from dataclasses import dataclass

from apps import arp_responder, forwarding, mirror, pipeline, policy_flows, port_security, quarantine, remediation, steering
from apps.context import PolicyState
from apps.flows import FlowEntry
from apps.identity import Identities, host_identities, identity_labels
from apps.switch_table import GroupCache, SwitchTable
from topology import graph
from topology.model import ROLE_HYPERVISOR, Host, Topology, snapshot

DesiredTables = dict[int, SwitchTable]  # dpid -> table (a Mapping cookie -> entry)

# Groups are rebuilt only when their inputs change; the same inputs give the same object,
# which the reconciler skips without looking inside.
_GROUPS = GroupCache()


class ConflictError(RuntimeError):
    """Two desired entries share table, priority and match but differ in actions."""


@dataclass(frozen=True)
class Compiled:
    """The desired table of every switch, and the hypervisor pairs that encrypt rules need tunnels
    between (the controller configures the agents for exactly those)."""

    tables: DesiredTables
    encrypt_pairs: frozenset[steering.Pair]


def desired_tables(
    topo: Topology,
    policy: PolicyState | None = None,
    identities: Identities | None = None,
    tunnels: steering.TunnelPlan | None = None,
) -> DesiredTables:
    """The desired tables alone (see compile_network)."""
    return compile_network(topo, policy, identities, tunnels).tables


def compile_network(
    topo: Topology,
    policy: PolicyState | None = None,
    identities: Identities | None = None,
    tunnels: steering.TunnelPlan | None = None,
) -> Compiled:
    """Compile the whole model. Switches are independent, so this is a loop over switches.
    `identities` hands out identity numbers to new label sets (the caller persists them);
    `tunnels` says which tunnel ports encrypted traffic may use (none: it is dropped)."""
    tunnels = tunnels if tunnels is not None else steering.TunnelPlan()
    policy = policy if policy is not None else PolicyState()
    identities = identities if identities is not None else Identities()
    topo = snapshot(topo)
    view = graph.view(topo)
    hosts = sorted(
        (h for h in topo.hosts.values() if h.dpid in topo.switches and topo.is_edge_port(h.dpid, h.port)),
        key=lambda h: h.mac,
    )
    by_switch: dict[int, list[Host]] = defaultdict(list)
    for host in hosts:
        by_switch[host.dpid].append(host)
    identity_of = host_identities({h.mac: h for h in hosts}, policy, identities)
    labels = identity_labels(set(identity_of.values()), identities)
    labels_key = tuple(sorted((i, tuple(sorted(v.items())) if v is not None else None) for i, v in labels.items()))

    isolated = quarantine.quarantined_macs(policy.quarantine, {n: vm.macs for n, vm in policy.vms.items()})
    isolated_group = quarantine_group(isolated)
    # A quarantined VM's port is in no flood: not even a broadcast reaches it.
    isolated_ports: dict[int, set[int]] = defaultdict(set)
    for mac in isolated:
        host = topo.hosts.get(mac)
        if host is not None:
            isolated_ports[host.dpid].add(host.port)
    vm_of_mac = {mac: vm.name for mac, vm in policy.vm_by_mac().items()}
    remediated = remediated_vms(topo, policy, isolated)
    mirrors = mirrored_vms(topo, policy)
    analyzers = sorted({analyzer for _, analyzer in mirrors}, key=lambda a: a.vid)
    guarded = port_security.guarded_ports(hosts, vm_of_mac)
    responders_key = ("responders", tuple((h.mac, tuple(sorted(h.ips))) for h in hosts))
    responders = _GROUPS.get(responders_key, lambda: arp_responder.responder_flows(hosts))
    by_identity: dict[int, list[Host]] = defaultdict(list)
    for host in hosts:
        by_identity[identity_of[host.mac]].append(host)

    @functools.cache
    def classify_group(identity: int):
        members = by_identity.get(identity, [])
        key = ("classify", identity, tuple(h.mac for h in members))
        return _GROUPS.get(key, lambda: policy_flows.destination_flows(members, identity_of).get(identity, []))

    @functools.cache
    def route_group(dst: int, port: int):
        members = by_switch.get(dst, [])
        key = ("route", dst, port, tuple(h.mac for h in members))
        return _GROUPS.get(key, lambda: forwarding.route_flows(members, port))

    tables: DesiredTables = {}
    for dpid in sorted(topo.switches):
        local = by_switch.get(dpid, [])
        groups = {}
        entries = forwarding.base_flows()
        entries += forwarding.ingress_flows(topo, dpid, local, identity_of)
        for host in local:
            name = guarded.get((dpid, host.port))
            if name is not None and host.mac == min(policy.vms[name].macs):  # once per port
                vm = policy.vms[name]
                tag = (identity_of[host.mac], pipeline.META_SRC_MASK)
                learned = set().union(*(topo.hosts[m].ips for m in vm.macs if m in topo.hosts))
                entries += port_security.port_security_flows(host.port, vm.macs, vm.ips, tag, learned)
        flood_set = forwarding.flood_ports(topo, dpid, view) - isolated_ports.get(dpid, set())
        entries += forwarding.flood_flows(topo, dpid, flood_set)
        if topo.edge_ports(dpid):
            # Before its first VM is learned a hypervisor looks like a fabric switch, yet IP flooded
            # to its edge ports must be committed all the same (forwarding.fabric_flood_commit_flows).
            flood_to = functools.partial(forwarding.flood_actions, flood_set)
            zone = policy_flows.conntrack_zone(dpid)
            entries += forwarding.fabric_flood_commit_flows(topo.inter_switch_ports(dpid), flood_to, zone)
        entries += forwarding.unicast_flows(topo, dpid, local)
        if forwarding.needs_routes(topo, dpid):
            for dst in sorted(by_switch):
                port = view.next_hop.get(dst, {}).get(dpid)
                if dst != dpid and port is not None:
                    groups[("route", dst)] = route_group(dst, port)
        if topo.role(dpid) == ROLE_HYPERVISOR:
            if isolated_group:
                groups["quarantine"] = isolated_group
            exceptions = []
            fabric_ports = {*topo.inter_switch_ports(dpid), *tunnels.ports.get(dpid, {}).values()}
            for vm in remediated:
                exceptions += remediation.remediation_flows(dpid, fabric_ports, vm, isolated)
            entries += exceptions
            if mirrors:
                entries += _copy_flows(topo, dpid, view, mirrors, [*(isolated_group or {}).values(), *exceptions])
            groups["responders"] = responders
            flood = functools.partial(forwarding.flood_actions, flood_set)
            entries += arp_responder.owner_bypass_flows(local, flood)
            entries += arp_responder.fabric_bypass_flows(topo.inter_switch_ports(dpid), flood)
            local_ids = frozenset(identity_of[h.mac] for h in local)
            for identity in sorted(policy_flows.referenced_destinations(local_ids, labels, policy.rules)):
                groups[("classify", identity)] = classify_group(identity)
            entries += _policy_table(dpid, local_ids, labels, labels_key, policy)
            entries += policy_flows.egress_flows(local, policy_flows.conntrack_zone(dpid))
            entries += steering.encrypt_forward_flows(local, by_switch, tunnels.ports.get(dpid, {}))
            entries += steering.encrypt_egress_flows(local, policy_flows.conntrack_zone(dpid))
        if analyzers:
            entries += mirror.transit_flows(dpid, topo.inter_switch_ports(dpid), analyzers, view.next_hop)
        sw = topo.switches[dpid]
        entries += steering.tunnel_ingress_flows(sw.tunnel_ports(), tunnels.ports.get(dpid, {}).values())
        entries += steering.endpoint_flows(topo.endpoints_on(dpid))
        tables[dpid] = SwitchTable(index_entries(entries), groups)
    hypervisors = [d for d in topo.switches if topo.role(d) == ROLE_HYPERVISOR]
    vms_by_switch = {d: [h for h in hs if h.mac not in topo.endpoints] for d, hs in by_switch.items()}
    pairs = steering.encrypt_pairs(vms_by_switch, hypervisors, identity_of, labels, policy.rules)
    return Compiled(tables, pairs)


def _encrypts(policy: PolicyState, own: dict[str, str]) -> remediation.Encrypts | None:
    """Whether some encrypt rule selects an allowed connection of a VM in remediation (whose labels
    are `own`) on a service that overlaps the allowance's: then it travels encrypted. Erring toward
    encryption costs nothing: any such rule puts the two hypervisors in a tunnel pair."""
    encrypting = [r for r in policy.rules[: pipeline.MAX_RULES] if r.action == "encrypt"]
    if not encrypting:
        return None

    def encrypts(rule: remediation.AllowRule, peer: dict | None, service) -> bool:
        opener, answerer = (own, peer) if rule.direction == "to" else (peer, own)
        return any(
            r.src.matches(opener) and r.dst.matches(answerer) and any(s.overlaps(service) for s in r.services)
            for r in encrypting
        )

    return encrypts


def mirrored_vms(topo: Topology, policy: PolicyState) -> list[tuple[frozenset[str], mirror.Analyzer]]:
    """(MACs, analyzer) of every quarantined VM mirrored to an analyzer the network has seen, that is
    in the inventory and not itself in quarantine (a quarantined analyzer gets no copies)."""
    wanted = {r.mirror_to for r in policy.quarantine.values() if r.mirror_to and r.mirror_to not in policy.quarantine}
    vids = mirror.allocate_vlans(n for n in wanted if n in policy.vms)
    analyzers = {}
    for name, vid in vids.items():
        host = next((topo.hosts[m] for m in policy.vms[name].macs if m in topo.hosts), None)
        if host is not None and host.dpid in topo.switches:
            analyzers[name] = mirror.Analyzer(name, host.dpid, host.port, vid)
    found = []
    for name, record in sorted(policy.quarantine.items()):
        analyzer = analyzers.get(record.mirror_to or "")
        if analyzer is not None:
            vm = policy.vms.get(name)
            found.append((quarantine.record_macs(record, vm.macs if vm else ()), analyzer))
    return found


def _copy_flows(topo: Topology, dpid: int, view, mirrors, entries) -> list[FlowEntry]:
    """One hypervisor's copies of mirrored VMs' frames (apps/mirror.py)."""
    here = []
    for macs, analyzer in mirrors:
        copy = mirror.copy_actions(dpid, analyzer, view.next_hop)
        if copy is not None:
            own = frozenset(topo.hosts[m].port for m in macs if m in topo.hosts and topo.hosts[m].dpid == dpid)
            here.append(mirror.Mirrored(macs, own, copy))
    return mirror.copy_flows(entries, here, topo.edge_ports(dpid))


def remediated_vms(topo: Topology, policy: PolicyState, quarantined: frozenset[str]) -> list[remediation.Remediated]:
    """Every VM in remediation as its exceptions need it: MACs, addresses (declared and learned),
    where its MACs are, and its allow rules with the peers they select among known hosts."""
    found = []
    candidates = None
    for name, record in sorted(policy.quarantine.items()):
        vm = policy.vms.get(name)
        if record.mode != "remediate" or vm is None:
            continue
        if candidates is None:
            by_mac = policy.vm_by_mac()
            candidates = {
                mac: (dict(policy.effective_labels(by_mac[mac])) if mac in by_mac else None)
                for mac in topo.hosts
                if mac not in topo.endpoints
            }
        macs = tuple(sorted(quarantine.record_macs(record, vm.macs)))
        ips = set(vm.ips)
        locations = []
        for mac in macs:
            host = topo.hosts.get(mac)
            if host is not None:
                ips.update(host.ips)
                locations.append((mac, host.dpid, host.port))
        allowances = remediation.resolve(
            policy.allow_list(record), candidates, quarantined, _encrypts(policy, dict(policy.effective_labels(vm)))
        )
        ipv4 = tuple(sorted(ip for ip in ips if ":" not in ip))  # its IPv6 is cut, as everything not allowed
        found.append(remediation.Remediated(macs, ipv4, tuple(locations), allowances))
    return found


def quarantine_group(macs: frozenset[str]):
    """The quarantine entries every hypervisor holds, one shared group: the controller installs it
    at once on a quarantine (controller/app.py), and the compile that follows hands out the very
    same object, so nothing is sent twice."""
    if not macs:
        return None
    return _GROUPS.get(("quarantine", tuple(sorted(macs))), lambda: quarantine.quarantine_flows(macs))


def _policy_table(dpid: int, local_ids: frozenset[int], labels, labels_key, policy: PolicyState) -> list[FlowEntry]:
    """The policy table depends on the hypervisor only through its zone and its VMs' identities."""
    return _policy_table_cached(
        policy_flows.conntrack_zone(dpid), local_ids, labels_key, policy.rules, policy.default_action, _Frozen(labels)
    )


class _Frozen:
    """Carries the labels mapping through the cache without being part of its key (labels_key is)."""

    __slots__ = ("value",)

    def __init__(self, value) -> None:
        self.value = value

    def __hash__(self) -> int:
        return 0

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Frozen)


@functools.lru_cache(maxsize=4096)
def _policy_table_cached(zone, local_ids, labels_key, rules, default_action, labels) -> list[FlowEntry]:
    return policy_flows.policy_flows(zone, local_ids, labels.value, rules, default_action)


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
