"""The incremental compiler: a change costs what it touches.

Modelled on OVN's incremental processing engine (lib/inc-proc-eng.h): explicit inputs, owned
intermediate results, a change handler per input that updates only what the change affects, and
no hidden global state. One Compiler lives in the controller; a fresh one compiles from scratch,
and a property test (tests/unit/test_incremental_compile.py) holds the two equal, entry for entry,
on every switch, for random sequences of changes.

Inputs, each compared with what the last compile saw to give its change records:
- the switches (ports, edge ports, roles) and the links -> `struct` (switches whose own forwarding
  entries change) and, when the graph changed, a new forwarding view;
- the hosts -> hosts whose effective location changed, and the switches they left or joined;
- the inventory (VMs and labels) and the quarantine -> hosts whose identity changed;
- the rules and the default action -> the rule positions that changed;
- the tunnel plan and the tunnel endpoints -> the switches whose tunnel entries change.

Owned intermediate results, each updated by the handlers above:
- the forwarding view (graph, per-destination trees, flooding tree);
- the effective hosts by switch and by identity, each host's identity, each hypervisor's local
  identities (identity numbers are handed out before compiling: apps.identity.assign_identities);
- shared groups, each built once and held by every switch that needs it: classify entries and ARP
  responders per identity, routes per destination switch and port, tunnel routes per peer and
  port, the quarantine group;
- per hypervisor, the policy table as one group per rule position (a new rule recompiles one
  group on the hypervisors it concerns) plus its base and default entries;
- per switch, its own entries: a local part (its ports, its VMs) and a global part (quarantine
  exceptions, mirror copies and transit, which depend on VMs anywhere).

A switch's table object is replaced only when something it holds changed (Compiled.changed); the
reconciler diffs only those, group by group."""

from __future__ import annotations

import gc
from collections import defaultdict
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from apps import arp_responder, forwarding, mirror, pipeline, policy_flows, port_security, quarantine, remediation, steering
from apps.context import PolicyState
from apps.flows import FlowEntry
from apps.identity import UNKNOWN, UNMANAGED, Identities, IdentityLabels, UnassignedIdentity
from apps.inventory import VM, Inventory
from apps.policy import Rule
from apps.selectors import ANY
from apps.switch_table import Group, SwitchTable
from topology import graph
from topology.model import ROLE_HYPERVISOR, Host, Topology, TopologySnapshot, snapshot

DesiredTables = dict[int, SwitchTable]

# While the data centre has at most this many hosts and host-facing ports, every hypervisor answers
# ARP for every host ahead of time (at most this many entries each); above it, only for the members
# of the identities its VMs' rules name and for the addresses its VMs asked for (_reachable). The
# ports count too, so that a large fabric starting cold is large from its first compile, before
# its VMs are learned: it never pushes responders to every hypervisor only to take them back.
ARP_AHEAD_MAX = 1000


class ConflictError(RuntimeError):
    """Two desired entries share table, priority and match but differ in actions."""


@dataclass(frozen=True)
class Compiled:
    """The desired table of every switch, the hypervisor pairs that encrypt rules need tunnels
    between (the controller configures the agents for exactly those), and the switches whose
    table differs from the previous compile of the same Compiler."""

    tables: DesiredTables
    encrypt_pairs: frozenset[steering.Pair]
    changed: frozenset[int] = frozenset()


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


def _group(entries) -> Group:
    return MappingProxyType({e.cookie: e for e in entries})


def _switch_signature(sw) -> tuple:
    """What the compile reads of a switch itself."""
    return (sw.name, sw.role_override, tuple(sw.ports.values()), frozenset(sw.edge_confirmed))


def _differing(new: Mapping, old: Mapping) -> set:
    """The keys whose value differs between two mappings (present in only one included)."""
    return {key for key in new.keys() | old.keys() if new.get(key) != old.get(key)}


def _last_encrypt(rules) -> int | None:
    return max((i for i, r in enumerate(rules) if r.action == "encrypt"), default=None)


@dataclass
class _Changes:
    """The change records of one compile."""

    struct: set[int] = field(default_factory=set)  # switches whose own forwarding inputs changed
    local: set[int] = field(default_factory=set)  # switches whose VMs (or their records) changed
    policy: set[int] = field(default_factory=set)  # hypervisors whose policy table must be rebuilt
    policy_all: bool = False  # every hypervisor's policy groups are rebuilt whole (default action, last encrypt rule)
    policy_everywhere: bool = False  # every hypervisor rebuilds the changed rule positions (an `any` rule)
    rules: set[int] = field(default_factory=set)  # rule positions whose rule changed
    members: set[int] = field(default_factory=set)  # identities whose members changed
    dsts: set[int] = field(default_factory=set)  # switches whose effective hosts changed
    regroup: set[int] = field(default_factory=set)  # switches whose group set must be re-read
    asked: set[int] = field(default_factory=set)  # hypervisors whose answers to asked addresses change
    view: bool = False
    global_part: bool = False


class Compiler:
    """Compiles the model into every switch's desired table, incrementally (module docstring)."""

    def __init__(self, arp_ahead_max: int | None = None) -> None:
        self._ahead_max = ARP_AHEAD_MAX if arp_ahead_max is None else arp_ahead_max
        self._ahead = False  # every hypervisor answers every address (at most _ahead_max hosts and ports)
        self._edge_counts: dict[int, int] = {}  # switch -> its host-facing ports
        # Inputs as the last compile saw them.
        self._in_hosts: dict[str, Host] = {}
        self._in_switches: dict[int, tuple] = {}
        self._in_links: frozenset = frozenset()
        self._in_vms: Inventory = Inventory()
        self._in_quarantine: Mapping = {}
        self._in_rules: tuple[Rule, ...] = ()
        self._in_default: str | None = None
        self._in_tunnels: dict[int, dict[int, int]] = {}
        self._in_endpoints: dict[int, list] = {}
        self._in_asked: dict[int, tuple[str, ...]] = {}
        self._first = True
        # Owned intermediate results.
        self._roles: dict[int, str] = {}
        self._view: graph.GraphView | None = None
        self._tree: dict[int, frozenset[int]] = {}
        self._parent: dict[int, int] = {}  # switch -> its tree port toward the root
        self._vm_by_mac: dict[str, VM] = {}
        self._hosts: dict[str, Host] = {}  # effective hosts: on an edge port of a known switch
        self._by_switch: dict[int, dict[str, Host]] = {}
        self._identity: dict[str, int] = {}
        self._members: dict[int, dict[str, Host]] = {}
        self._local_ids: dict[int, frozenset[int]] = {}
        self._hvs_by_id: dict[int, set[int]] = defaultdict(set)
        self._labels = IdentityLabels()
        self._old_labels = IdentityLabels()  # before the last change of the identities in use
        self._groups: dict[Hashable, Group] = {}
        self._chunks: dict[int, dict[Hashable, Group]] = {}  # hypervisor -> policy groups
        self._held: dict[int, tuple[frozenset[int], frozenset[int] | None]] = {}  # hypervisor -> (classify, responder ids)
        self._local_part: dict[int, list[FlowEntry]] = {}
        self._global_part: dict[int, list[FlowEntry]] = {}
        self._global_key: tuple = ()
        self._isolated: frozenset[str] = frozenset()
        self._isolated_ports: dict[int, frozenset[int]] = {}
        self._tables: dict[int, SwitchTable] = {}
        self._pairs: frozenset = frozenset()
        self._chunk_ids: dict[int, frozenset[int]] = {}  # hypervisor -> local identities its policy groups are for
        self._remediation_hvs: frozenset[int] = frozenset()  # switches where a VM in remediation is
        self._rule_index: tuple | None = None  # (rules, labels, identity -> rule positions, `any` positions)
        self._askers: dict[str, set[int]] = {}  # address -> the hypervisors whose VMs asked for it
        self._old_next_hop: Mapping | None = None  # the forwarding view's next hops before this compile's
        self._route_patch: dict[int, set[int]] = {}  # switch -> destinations whose route it swaps (view change)
        self._rule_sets_for: tuple | None = None  # (rules, labels, per position (action, src ids, dst ids), last encrypt)
        # This compile's change records that later handlers read.
        self._raw_changed: list[str] = []
        self._moved: set[str] = set()
        self._changed_ips: set[str] = set()  # addresses whose holder, or its identity, changed
        self._new_ids: set[int] = set()
        self._remediated: tuple = ()
        self._mirrors: tuple = ()
        self._analyzers: list = []

    # -- the quarantine group, which the controller also sends ahead of the compile ---------------
    def quarantine_group(self, macs: frozenset[str]) -> Group | None:
        """The quarantine entries every hypervisor holds, one shared group: the controller installs
        it at once on a quarantine (controller/app.py), and the compile that follows hands out the
        very same object, so nothing is sent twice."""
        if not macs:
            return None
        key = ("quarantine", macs)
        found = self._groups.get(key)
        if found is None:
            for old in [k for k in self._groups if isinstance(k, tuple) and k[0] == "quarantine"]:
                del self._groups[old]
            found = self._groups[key] = _group(quarantine.quarantine_flows(macs))
        return found

    # -- the compile --------------------------------------------------------------------------------
    def compile(
        self,
        topo: Topology | TopologySnapshot,
        policy: PolicyState | None = None,
        identities: Identities | None = None,
        tunnels: steering.TunnelPlan | None = None,
    ) -> Compiled:
        """Bring every switch's desired table up to date with the inputs. Identity numbers must
        already be assigned (apps.identity.assign_identities): compiling never hands them out."""
        policy = policy if policy is not None else PolicyState()
        identities = identities if identities is not None else Identities()
        tunnels = tunnels if tunnels is not None else steering.TunnelPlan()
        # A compile allocates many objects and frees almost none, which makes the cyclic garbage
        # collector walk the whole heap again and again (half of a cold compile's time at 10,000
        # VMs). It makes no reference cycles worth collecting mid-way: the collector waits.
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._compile(topo, policy, identities, tunnels)
        finally:
            if enabled:
                gc.enable()

    def _compile(self, topo, policy: PolicyState, identities: Identities, tunnels: steering.TunnelPlan) -> Compiled:
        snap = snapshot(topo)
        ch = _Changes()
        self._switches_and_links(snap, ch)
        self._raw_hosts(snap, ch)
        if ch.view or self._view is None:
            self._new_view(snap, ch)
        vm_macs = self._inventory(policy, ch)
        self._effective_hosts(snap, ch, vm_macs)
        self._identities(policy, identities, ch, vm_macs)
        self._arp_ahead(snap, ch)
        self._rules(policy, ch)
        self._quarantine(snap, policy, ch)
        self._tunnels(snap, tunnels, ch)
        self._global(snap, policy, tunnels, ch)
        self._asked(snap, ch)
        changed = self._build(snap, policy, tunnels, ch)
        self._encrypt_pairs(snap, policy, ch)
        self._first = False
        return Compiled(dict(self._tables), self._pairs, frozenset(changed))

    # -- input handlers ---------------------------------------------------------------------------
    def _switches_and_links(self, snap: TopologySnapshot, ch: _Changes) -> None:
        signatures = {d: _switch_signature(sw) for d, sw in snap.switches.items()}
        old = self._in_switches
        if signatures.keys() != old.keys():
            ch.view = True
        ch.struct |= _differing(signatures, old)
        self._in_switches = signatures
        links = frozenset(snap.links)
        if links != self._in_links:
            ch.view = True
            for link in links ^ self._in_links:
                ch.struct.update((link.a.dpid, link.b.dpid))
            self._in_links = links
        for dpid in [d for d in self._tables if d not in snap.switches]:
            self._forget_switch(dpid)

    def _forget_switch(self, dpid: int) -> None:
        for store in (self._tables, self._chunks, self._held, self._local_part, self._global_part, self._roles, self._chunk_ids):
            store.pop(dpid, None)
        for ip in self._in_asked.pop(dpid, ()):
            self._unask(ip, dpid)
        ids = self._local_ids.pop(dpid, frozenset())
        for identity in ids:
            self._hvs_by_id[identity].discard(dpid)

    def _raw_hosts(self, snap: TopologySnapshot, ch: _Changes) -> None:
        """Hosts as learned (wherever they are): which changed, and the roles they decide."""
        hosts, old = snap.hosts, self._in_hosts
        changed = [m for m, h in hosts.items() if old.get(m) is not h and old.get(m) != h]
        changed += [m for m in old if m not in hosts]
        touched = set()
        for mac in changed:
            for host in (old.get(mac), hosts.get(mac)):
                if host is not None:
                    touched.add(host.dpid)
        self._in_hosts = dict(hosts) if changed or len(old) != len(hosts) else old
        self._raw_changed = changed
        for dpid in touched | ch.struct:
            role = snap.role(dpid) if dpid in snap.switches else None
            if self._roles.get(dpid) != role:
                ch.struct.add(dpid)
                if role is None:
                    self._roles.pop(dpid, None)
                else:
                    self._roles[dpid] = role

    def _new_view(self, snap: TopologySnapshot, ch: _Changes) -> None:
        self._old_next_hop = self._view.next_hop if self._view is not None else None
        self._view = graph.view(snap)
        ch.view = True
        tree = self._view.tree_ports
        ch.struct |= _differing(tree, self._tree)
        self._tree = dict(tree)
        # A switch whose parent changed sends other unicast elsewhere: its routes are rebuilt whole.
        ch.struct |= _differing(self._view.parent, self._parent)
        self._parent = dict(self._view.parent)

    def _inventory(self, policy: PolicyState, ch: _Changes) -> set[str]:
        """VMs added, removed or changed, and VMs entering or leaving quarantine (their effective
        labels change): the MACs whose identity or port security may change."""
        vms, old = policy.vms, self._in_vms
        names = set()
        if vms is not old:
            names = vms.changed_since(old)  # in time proportional to the change
        quarantined, before = policy.quarantine, self._in_quarantine
        if quarantined is not before:
            names.update(n for n in quarantined.keys() ^ before.keys())
        macs: set[str] = set()
        for name in names:
            for vm in (old.get(name), vms.get(name)):
                if vm is not None:
                    macs.update(vm.macs)
            gone = old.get(name)
            if gone is not None:
                for mac in gone.macs:
                    if self._vm_by_mac.get(mac) is gone:
                        del self._vm_by_mac[mac]
        for name in names:
            vm = vms.get(name)
            if vm is not None:
                for mac in vm.macs:
                    self._vm_by_mac[mac] = vm
        self._in_vms = vms
        self._in_quarantine = quarantined
        return macs

    def _effective_hosts(self, snap: TopologySnapshot, ch: _Changes, vm_macs: set[str]) -> None:
        """A host counts where it is on an edge port of a known switch. The switches it left or
        joined get new local entries; a VM's port security reads the addresses of all its MACs."""
        candidates = set(self._raw_changed)
        for dpid in ch.struct:
            candidates.update(snap.hosts.by_dpid.get(dpid, ()))
            candidates.update(self._by_switch.get(dpid, ()))
        self._moved: set[str] = set()
        changed_ips = self._changed_ips = set()
        for mac in candidates:
            host = snap.hosts.get(mac)
            if host is not None and not (host.dpid in snap.switches and snap.is_edge_port(host.dpid, host.port)):
                host = None
            before = self._hosts.get(mac)
            if host is before or host == before:
                continue
            self._moved.add(mac)
            for holder in (before, host):
                if holder is not None:
                    changed_ips.update(holder.ips)
            if before is not None:
                del self._hosts[mac]
                on = self._by_switch[before.dpid]
                del on[mac]
                if not on:
                    del self._by_switch[before.dpid]
                ch.local.add(before.dpid)
                ch.dsts.add(before.dpid)
            if host is not None:
                self._hosts[mac] = host
                self._by_switch.setdefault(host.dpid, {})[mac] = host
                ch.local.add(host.dpid)
                ch.dsts.add(host.dpid)
        # A VM's port security holds the addresses learned for any of its MACs, wherever they are.
        for mac in set(self._raw_changed) | vm_macs:
            vm = self._vm_by_mac.get(mac)
            if vm is not None:
                for other in vm.macs:
                    host = self._hosts.get(other)
                    if host is not None:
                        ch.local.add(host.dpid)
        for mac in vm_macs:
            host = self._hosts.get(mac)
            if host is not None:
                ch.local.add(host.dpid)
                changed_ips.update(host.ips)  # its identity may change

    def _identities(self, policy: PolicyState, identities: Identities, ch: _Changes, vm_macs: set[str]) -> None:
        for mac in self._moved | vm_macs:
            host = self._hosts.get(mac)
            before = self._identity.get(mac)
            if host is None:
                if before is not None:
                    del self._identity[mac]
                    self._leave(before, mac, ch)
                continue
            vm = self._vm_by_mac.get(mac)
            if vm is None:
                identity = UNMANAGED
            else:
                labels = policy.effective_labels(vm)
                identity = identities.lookup(labels)
                if identity is None:
                    raise UnassignedIdentity(f"no identity for the labels of VM {vm.name!r}: assign identities first")
            if before is not None and before != identity:
                self._leave(before, mac, ch)
            members = self._members.setdefault(identity, {})
            if before != identity or members.get(mac) is not host:
                ch.members.add(identity)
            self._identity[mac] = identity
            members[mac] = host
        before_ids = set(self._labels)
        for dpid in ch.local:
            ids = frozenset(self._identity[m] for m in self._by_switch.get(dpid, ()))
            old = self._local_ids.get(dpid, frozenset())
            if ids != old:
                for identity in old - ids:
                    self._hvs_by_id[identity].discard(dpid)
                for identity in ids - old:
                    self._hvs_by_id[identity].add(dpid)
                if ids:
                    self._local_ids[dpid] = ids
                else:
                    self._local_ids.pop(dpid, None)
                ch.policy.add(dpid)
        in_use = set(self._members)
        if in_use != before_ids:
            self._old_labels = self._labels
            self._labels = IdentityLabels(
                {n: (None if n in (UNKNOWN, UNMANAGED) else dict(identities.labels_of(n) or ())) for n in in_use}
            )
            self._new_ids = in_use ^ before_ids
        else:
            self._new_ids = set()

    def _arp_ahead(self, snap: TopologySnapshot, ch: _Changes) -> None:
        """Whether every hypervisor answers every address ahead of time: while the data centre has
        at most _ahead_max hosts and host-facing ports (ports counted again only where they changed)."""
        for dpid in snap.switches if self._first else ch.struct:
            if dpid in snap.switches:
                self._edge_counts[dpid] = len(snap.edge_ports(dpid))
            else:
                self._edge_counts.pop(dpid, None)
        ahead = max(len(self._hosts), sum(self._edge_counts.values())) <= self._ahead_max
        if ahead != self._ahead:
            ch.policy_everywhere = True  # which ARP every hypervisor answers (_reachable)
            self._ahead = ahead

    def _hypervisors(self) -> list[int]:
        return [d for d, r in self._roles.items() if r == ROLE_HYPERVISOR]

    def _asked(self, snap: TopologySnapshot, ch: _Changes) -> None:
        """The addresses each hypervisor answers ARP for on request: those its VMs asked for
        (Topology.asked), and the tunnel endpoints of its tunnel peers, so that an endpoint's
        first request is answered too. Gives the hypervisors whose list changed, and those that
        answer an address whose holder changed. Every hypervisor also answers the addresses of the
        VMs in remediation, which no flood reaches."""
        asked, old = snap.asked, self._in_asked
        if self._in_tunnels or self._remediated:
            asked = dict(asked)

            def extend(dpid: int, ips: dict[str, None]) -> None:
                mine = asked.get(dpid, ())
                extra = tuple(ip for ip in ips if ip not in mine)
                if extra:
                    asked[dpid] = mine + extra

            for dpid, peers in self._in_tunnels.items():
                extend(dpid, {ep.ip: None for peer in sorted(peers) for ep, _ in self._in_endpoints.get(peer, ())})
            # A VM in remediation is cut from every flood: its allowed peers could not resolve it.
            ips = {ip: None for vm in self._remediated for ip in sorted(vm.ips)}
            if ips:
                for dpid in self._hypervisors():
                    extend(dpid, ips)
        moved = [d for d in asked.keys() | old.keys() if asked.get(d) is not old.get(d) and asked.get(d, ()) != old.get(d, ())]
        if moved:
            for dpid in moved:
                before, now = set(old.get(dpid, ())), set(asked.get(dpid, ()))
                for ip in before - now:
                    self._unask(ip, dpid)
                for ip in now - before:
                    self._askers.setdefault(ip, set()).add(dpid)
            self._in_asked = {d: a for d, a in asked.items() if a}
            ch.asked.update(moved)
        for ip in self._changed_ips:
            ch.asked.update(self._askers.get(ip, ()))

    def _unask(self, ip: str, dpid: int) -> None:
        askers = self._askers.get(ip)
        if askers is not None:
            askers.discard(dpid)
            if not askers:
                del self._askers[ip]

    def _leave(self, identity: int, mac: str, ch: _Changes) -> None:
        members = self._members.get(identity)
        if members is not None:
            members.pop(mac, None)
            if not members:
                del self._members[identity]
        ch.members.add(identity)

    def _rules(self, policy: PolicyState, ch: _Changes) -> None:
        """The rule positions that changed, and the hypervisors whose policy they concern: those
        with a local identity that the rule's source or destination selects (`any`: all)."""
        rules = tuple(policy.rules[: pipeline.MAX_RULES])
        old = self._in_rules
        if policy.default_action != self._in_default or _last_encrypt(rules) != _last_encrypt(old):
            ch.policy_all = True
        if rules != old:
            ch.rules = {i for i in range(max(len(rules), len(old))) if i >= len(rules) or i >= len(old) or rules[i] != old[i]}
        concerned: list[Rule] = [old[i] for i in ch.rules if i < len(old)] + [rules[i] for i in ch.rules if i < len(rules)]
        if self._new_ids:
            for index, rule in enumerate(rules):
                if index not in ch.rules and self._selects_any(rule, self._new_ids):
                    ch.rules.add(index)
                    concerned.append(rule)
        for rule in concerned:
            if rule.src.kind == ANY or rule.dst.kind == ANY:
                ch.policy_everywhere = True
                break
            for selector in (rule.src, rule.dst):
                for identity in self._labels.selected(selector):
                    ch.policy.update(self._hvs_by_id.get(identity, ()))
        self._in_rules = rules
        self._in_default = policy.default_action

    def _selects_any(self, rule: Rule, ids: set[int]) -> bool:
        """Does the rule select one of these identities, new ones or ones gone (by their labels)?"""
        for selector in (rule.src, rule.dst):
            if selector.kind == ANY:
                return True
            for identity in ids:
                labels = self._labels if identity in self._labels else self._old_labels
                if identity != UNKNOWN and selector.matches(labels.get(identity)):
                    return True
        return False

    def _quarantine(self, snap: TopologySnapshot, policy: PolicyState, ch: _Changes) -> None:
        vms = policy.vms
        vm_macs = {n: vms[n].macs for n in policy.quarantine if n in vms}
        isolated = quarantine.quarantined_macs(policy.quarantine, vm_macs)
        if isolated != self._isolated:
            ch.regroup.update(self._hypervisors())
            self._isolated = isolated
        ports: dict[int, set[int]] = defaultdict(set)
        for mac in isolated:
            host = snap.hosts.get(mac)
            if host is not None:
                ports[host.dpid].add(host.port)
        frozen = {d: frozenset(p) for d, p in ports.items()}
        ch.struct |= _differing(frozen, self._isolated_ports)
        self._isolated_ports = frozen

    def _tunnels(self, snap: TopologySnapshot, tunnels: steering.TunnelPlan, ch: _Changes) -> None:
        plan = {d: dict(p) for d, p in tunnels.ports.items() if p}
        placed = snap.placed_endpoints()
        ch.struct |= _differing(plan, self._in_tunnels) | _differing(placed, self._in_endpoints)
        self._in_tunnels, self._in_endpoints = plan, placed

    def _global(self, snap: TopologySnapshot, policy: PolicyState, tunnels: steering.TunnelPlan, ch: _Changes) -> None:
        """Quarantine exceptions, mirror copies and transit depend on VMs anywhere: recomputed on
        every switch when what they are built from changed (only while something is quarantined)."""
        from apps import desired

        if policy.quarantine:
            remediated = tuple(desired.remediated_vms(snap, policy, self._isolated))
            mirrors = tuple(desired.mirrored_vms(snap, policy))
        else:
            remediated = mirrors = ()
        isolated_group = self.quarantine_group(self._isolated)
        key = (remediated, mirrors, self._isolated, isolated_group)
        if mirrors:
            key += (self._view, tuple(sorted(self._in_tunnels.items())))
        if key != self._global_key:
            ch.global_part = True
            self._global_key = key
        self._remediated, self._mirrors = remediated, mirrors
        # The hypervisor of a VM in remediation answers every address (_reachable).
        hvs = frozenset(dpid for vm in remediated for _, dpid, _ in vm.locations)
        if hvs != self._remediation_hvs:
            ch.policy.update((hvs ^ self._remediation_hvs).intersection(self._hypervisors()))
            self._remediation_hvs = hvs
        self._analyzers = sorted({analyzer for _, analyzer in mirrors}, key=lambda a: a.vid)

    # -- building the tables ----------------------------------------------------------------------
    def _build(self, snap: TopologySnapshot, policy: PolicyState, tunnels: steering.TunnelPlan, ch: _Changes) -> set[int]:
        switches = snap.switches
        own_dirty = (ch.struct | ch.local) & switches.keys()
        if self._first:
            own_dirty = set(switches)
        global_dirty = set(switches) if ch.global_part else set(own_dirty)
        # Groups rebuilt from their members: each is built once, for every switch that holds it.
        for identity in ch.members:
            self._groups.pop(("classify", identity), None)
            self._groups.pop(("responders", identity), None)
        if ch.dsts:
            stale = [k for k in self._groups if k[0] in ("route", "tunnel") and k[1] in ch.dsts]
            for key in stale:
                del self._groups[key]
        # Switches whose groups are rebuilt whole, and switches that only swap the groups that changed.
        hypervisors = [d for d in switches if self._roles.get(d) == ROLE_HYPERVISOR]
        everywhere = ch.policy_all or ch.policy_everywhere or self._first
        policy_dirty = set(ch.policy) | (set(hypervisors) if everywhere else set())
        full = own_dirty | policy_dirty
        patch = set(ch.regroup) | ch.asked
        self._route_patch = {}
        if ch.view:
            moves = None if self._first or self._old_next_hop is None else self._route_moves(self._old_next_hop)
            if moves is None:
                full.update(d for d in switches if forwarding.needs_routes(snap, d))
            else:
                # Only the switches whose port toward some destination changed swap those routes
                # (a switch whose own links changed is in `full` already).
                self._route_patch = {d: dsts for d, dsts in moves.items() if d in switches}
                patch.update(self._route_patch)
        if ch.dsts:
            patch.update(d for d in switches if forwarding.needs_routes(snap, d))
            patch.update(d for d, p in self._in_tunnels.items() if p.keys() & ch.dsts)
        if ch.members:
            for dpid, (referenced, reachable) in self._held.items():
                if reachable is None or (referenced | reachable) & ch.members:
                    patch.add(dpid)
        if ch.global_part:
            patch.update(switches)
        changed = set()
        for dpid in sorted((full | patch) & switches.keys()):
            if dpid in own_dirty:
                self._local_part[dpid] = self._local_entries(snap, dpid, policy, tunnels)
            if dpid in global_dirty:
                self._global_part[dpid] = self._global_entries(snap, dpid, tunnels)
            old = self._tables.get(dpid)
            if dpid in own_dirty or dpid in global_dirty or old is None:
                own = index_entries(self._local_part[dpid] + self._global_part[dpid])
            else:
                own = old.own
            if dpid in full or old is None:
                groups = self._switch_groups(snap, dpid, policy, tunnels, dpid in policy_dirty, ch)
            else:
                groups = self._patched_groups(snap, dpid, old.groups, tunnels, ch)
            if old is not None and old.own == own and _same_groups(old.groups, groups):
                continue
            self._tables[dpid] = SwitchTable(own, groups)
            changed.add(dpid)
        return changed

    def _local_entries(self, snap: TopologySnapshot, dpid: int, policy: PolicyState, tunnels) -> list[FlowEntry]:
        """A switch's entries for its own ports and VMs."""
        local = sorted(self._by_switch.get(dpid, {}).values(), key=lambda h: h.mac)
        entries = forwarding.base_flows()
        entries += forwarding.ingress_flows(snap, dpid, local, self._identity)
        names = {h.mac: self._vm_by_mac[h.mac].name for h in local if h.mac in self._vm_by_mac}
        guarded = port_security.guarded_ports(local, names)
        for host in local:
            if (dpid, host.port) not in guarded:
                continue
            vm = self._vm_by_mac[host.mac]
            if host.mac == min(vm.macs):  # once per port
                tag = (self._identity[host.mac], pipeline.META_SRC_MASK)
                learned = set().union(*(snap.hosts[m].ips for m in vm.macs if m in snap.hosts))
                entries += port_security.port_security_flows(host.port, vm.macs, vm.ips, tag, learned)
        view = self._view
        flood_set = frozenset(forwarding.flood_ports(snap, dpid, view) - self._isolated_ports.get(dpid, frozenset()))
        entries += forwarding.flood_flows(snap, dpid, flood_set)

        def flood(port: int) -> list:
            return forwarding.flood_actions(flood_set, port)

        if snap.edge_ports(dpid):
            # Before its first VM is learned a hypervisor looks like a fabric switch, yet IP flooded
            # to its edge ports must be committed all the same (forwarding.fabric_flood_commit_flows).
            zone = policy_flows.conntrack_zone(dpid)
            entries += forwarding.fabric_flood_commit_flows(snap.inter_switch_ports(dpid), flood, zone)
        entries += forwarding.unicast_flows(snap, dpid, local, view.parent.get(dpid), flood_set)
        if self._roles.get(dpid) == ROLE_HYPERVISOR:
            zone = policy_flows.conntrack_zone(dpid)
            entries += arp_responder.owner_bypass_flows(local, flood)
            entries += arp_responder.fabric_bypass_flows(snap.inter_switch_ports(dpid), flood)
            entries += policy_flows.egress_flows(local, zone)
            entries += steering.encrypt_forward_flows(local, {}, {})
            entries += steering.encrypt_egress_flows(local, zone)
        sw = snap.switches[dpid]
        entries += steering.tunnel_ingress_flows(sw.tunnel_ports(), tunnels.ports.get(dpid, {}).values())
        entries += steering.endpoint_flows(self._in_endpoints.get(dpid, ()))
        return entries

    def _global_entries(self, snap: TopologySnapshot, dpid: int, tunnels) -> list[FlowEntry]:
        """A switch's entries that depend on quarantined and mirrored VMs anywhere."""
        from apps import desired

        entries: list[FlowEntry] = []
        if self._roles.get(dpid) == ROLE_HYPERVISOR and (self._remediated or self._mirrors):
            exceptions = []
            fabric_ports = {*snap.inter_switch_ports(dpid), *tunnels.ports.get(dpid, {}).values()}
            for vm in self._remediated:
                exceptions += remediation.remediation_flows(dpid, fabric_ports, vm, self._isolated)
            entries += exceptions
            if self._mirrors:
                isolated = self.quarantine_group(self._isolated) or {}
                entries += desired.copy_flows(snap, dpid, self._view, self._mirrors, [*isolated.values(), *exceptions])
        if self._analyzers:
            entries += mirror.transit_flows(dpid, snap.inter_switch_ports(dpid), self._analyzers, self._view.next_hop)
        return entries

    def _switch_groups(self, snap, dpid: int, policy: PolicyState, tunnels, policy_dirty: bool, ch: _Changes) -> dict:
        groups: dict[Hashable, Group] = {}
        if forwarding.needs_routes(snap, dpid):
            for dst in self._by_switch:
                group = self._route_for(dpid, dst)
                if group is not None:
                    groups[("route", dst)] = group
        if self._roles.get(dpid) != ROLE_HYPERVISOR:
            self._chunks.pop(dpid, None)
            self._held.pop(dpid, None)
            self._chunk_ids.pop(dpid, None)
            return groups
        isolated = self.quarantine_group(self._isolated)
        if isolated is not None:
            groups["quarantine"] = isolated
        local_ids = self._local_ids.get(dpid, frozenset())
        chunks = self._chunks.get(dpid)
        if policy_dirty or chunks is None:
            concerning = self._concerning(local_ids)
            chunks = self._policy_chunks(dpid, local_ids, concerning, ch, None if ch.policy_all or self._first else chunks)
            self._chunks[dpid] = chunks
            referenced = self._referenced(local_ids, concerning)
            reachable = self._reachable(dpid, local_ids, concerning)
            self._held[dpid] = (referenced, reachable)
        referenced, reachable = self._held[dpid]
        for identity in sorted(referenced):
            groups[("classify", identity)] = self._classify_group(identity)
        for identity in sorted(self._members if reachable is None else reachable):
            if identity in self._members:
                groups[("responders", identity)] = self._responder_group(identity)
        asked = self._asked_group(snap, dpid, reachable)
        if asked is not None:
            groups["asked"] = asked
        groups.update(chunks)
        for peer, port in sorted(tunnels.ports.get(dpid, {}).items()):
            if peer in self._by_switch:
                groups[("tunnel", peer)] = self._tunnel_group(peer, port)
        return groups

    def _patched_groups(self, snap, dpid: int, old: Mapping, tunnels, ch: _Changes) -> dict:
        """A switch's groups with only those swapped whose inputs changed: routes to switches whose
        hosts changed, the groups of identities whose members changed, the quarantine group."""
        groups = dict(old)

        def put(key, group) -> None:
            if group is None:
                groups.pop(key, None)
            else:
                groups[key] = group

        route_dsts = ch.dsts | self._route_patch.get(dpid, set())
        if route_dsts and forwarding.needs_routes(snap, dpid):
            for dst in route_dsts:
                put(("route", dst), self._route_for(dpid, dst) if dst in self._by_switch else None)
        if self._roles.get(dpid) != ROLE_HYPERVISOR:
            return groups
        put("quarantine", self.quarantine_group(self._isolated))
        referenced, reachable = self._held[dpid]
        for identity in ch.members:
            present = identity in self._members
            put(("classify", identity), self._classify_group(identity) if identity in referenced else None)
            answered = present and (reachable is None or identity in reachable)
            put(("responders", identity), self._responder_group(identity) if answered else None)
        if dpid in ch.asked:
            put("asked", self._asked_group(snap, dpid, reachable))
        plan = tunnels.ports.get(dpid, {})
        for peer in ch.dsts & plan.keys():
            put(("tunnel", peer), self._tunnel_group(peer, plan[peer]) if peer in self._by_switch else None)
        return groups

    def _route_moves(self, old_next_hop) -> dict[int, set[int]] | None:
        """switch -> the destinations (switches with hosts) whose next hop from it differs between the
        old forwarding view and the new one; None when a destination left or joined the graph.
        A stub's column is its parent's plus one port, so parents' columns are compared once."""
        new_next_hop = self._view.next_hop
        moves: dict[int, set[int]] = defaultdict(set)
        compared: dict[tuple[int, int], set[int]] = {}
        for dst in self._by_switch:
            if dst not in old_next_hop or dst not in new_next_hop:
                return None
            before, after = old_next_hop[dst], new_next_hop[dst]
            if isinstance(before, graph.StubColumn) and isinstance(after, graph.StubColumn) and before.same_stub(after):
                key = (id(before.base), id(after.base))
                differing = compared.get(key)
                if differing is None:
                    differing = compared[key] = {d for d, _ in before.base.items() ^ after.base.items()}
                differing = differing - {dst, after.parent}
            else:
                differing = {d for d, _ in dict(before).items() ^ dict(after).items()}
            for dpid in differing:
                moves[dpid].add(dst)
        return moves

    def _concerning(self, local_ids: frozenset[int]) -> list[int]:
        """The positions of the rules whose source or destination selects one of these identities
        (or is `any`): no other rule puts an entry on their hypervisor."""
        index = self._rule_index
        if index is None or index[0] is not self._in_rules or index[1] is not self._labels:
            by_id: dict[int, set[int]] = defaultdict(set)
            always = set()
            for position, rule in enumerate(self._in_rules):
                if rule.src.kind == ANY or rule.dst.kind == ANY:
                    always.add(position)
                    continue
                for identity in self._labels.selected(rule.src) | self._labels.selected(rule.dst):
                    by_id[identity].add(position)
            index = self._rule_index = (self._in_rules, self._labels, by_id, always)
        positions = set(index[3])
        for identity in local_ids:
            positions.update(index[2].get(identity, ()))
        return sorted(positions)

    def _rule_sets(self) -> tuple:
        """Per rule position, what every hypervisor asks of it: (action, source identities, destination
        identities), None for `any`. Built once per rules and labels, not once per hypervisor."""
        index = self._rule_sets_for
        if index is None or index[0] is not self._in_rules or index[1] is not self._labels:
            labels = self._labels
            sets = [
                (
                    rule.action,
                    None if rule.src.kind == ANY else labels.selected(rule.src),
                    None if rule.dst.kind == ANY else labels.selected(rule.dst),
                )
                for rule in self._in_rules
            ]
            index = self._rule_sets_for = (self._in_rules, labels, sets, _last_encrypt(self._in_rules))
        return index

    def _referenced(self, local_ids: frozenset[int], concerning: list[int]) -> frozenset[int]:
        """The identities this hypervisor classifies: the destinations its VMs' rules name (for any
        other destination every applicable label selector fails, as for an unknown one) and, up to the
        last encrypt rule, the sources of rules whose destination is local (replies of connections
        to local VMs are re-evaluated: policy_flows._established_flows)."""
        _, _, sets, last_encrypt = self._rule_sets()
        needed: set[int] = set()
        for index in concerning:
            _, src, dst = sets[index]
            if dst is not None and (src is None or not src.isdisjoint(local_ids)):
                needed |= dst
            if last_encrypt is not None and index <= last_encrypt and src is not None:
                if dst is None or not dst.isdisjoint(local_ids):
                    needed |= src
        return frozenset(needed)

    def _reachable(self, dpid: int, local_ids: frozenset[int], concerning: list[int]) -> frozenset[int] | None:
        """The identities whose ARP this hypervisor answers for all their members (None: every
        identity, while the data centre has at most ARP_AHEAD_MAX hosts and host-facing ports, or
        on the hypervisor of a VM in remediation): those that an allow or encrypt rule of its VMs
        names. Any other address is
        resolved by its owner, as the request is flooded, and is answered by the hypervisor itself
        from then on (Topology.asked, _asked_group): so a default allow, an `any` rule or hosts
        without an inventory entry cost entries for the peers its VMs talk to, not for every VM of
        the data centre on every hypervisor."""
        if self._ahead or dpid in self._remediation_hvs:
            # A small data centre is answered whole; a VM in remediation cannot flood its ARP.
            return None
        reach: set[int] = set()
        sets = self._rule_sets()[2]
        for position in concerning:
            action, src, dst = sets[position]
            if action == "deny" or (src is not None and src.isdisjoint(local_ids)) or dst is None:
                continue
            reach |= dst
        return frozenset(reach)

    def _asked_group(self, snap: TopologySnapshot, dpid: int, reachable: frozenset[int] | None) -> Group | None:
        """Responders for the addresses this hypervisor's VMs asked for that no identity group of
        it answers: each held by exactly one known host (an address two hosts claim is left to its
        owners, as the request is flooded)."""
        if reachable is None:
            return None
        entries = []
        by_ip, hosts, identity = snap.hosts.by_ip, self._hosts, self._identity
        for ip in self._in_asked.get(dpid, ()):
            owners = [hosts[m] for m in by_ip.get(ip, ()) if m in hosts]
            if len(owners) == 1 and identity[owners[0].mac] not in reachable:
                entries.append(arp_responder.responder_flow(owners[0], ip))
        return _group(entries) if entries else None

    def _policy_chunks(self, dpid: int, local_ids, concerning: list[int], ch: _Changes, before: dict | None) -> dict:
        """The policy table as groups: base and default entries, and one group per rule position
        (recomputed only for the positions that changed, unless the local identities did)."""
        zone = policy_flows.conntrack_zone(dpid)
        rules = self._in_rules
        last = _last_encrypt(rules)
        if before is not None and self._chunk_ids.get(dpid) == local_ids:
            chunks = {k: g for k, g in before.items() if k[1] not in ch.rules and (k[1] == "base" or k[1] < len(rules))}
            positions = [i for i in sorted(ch.rules) if i < len(rules)]
        else:
            chunks = {}
            positions = concerning
        if ("policy", "base") not in chunks:
            chunks[("policy", "base")] = _group(policy_flows.policy_base_flows(zone, last is not None, self._in_default))
        all_ids = self._labels.everyone()
        for index in positions:
            entries = policy_flows.rule_flows(zone, index, rules[index], local_ids, self._labels, all_ids, last)
            if entries:
                chunks[("policy", index)] = _group(entries)
            else:
                chunks.pop(("policy", index), None)
        self._chunk_ids[dpid] = local_ids
        return chunks

    # -- shared groups ------------------------------------------------------------------------------
    def _shared(self, key: tuple, members: Mapping[str, Host] | None, build) -> Group:
        """The group `key`, built from its members (sorted by MAC) only when it is not held yet."""
        found = self._groups.get(key)
        if found is None:
            hosts = sorted((members or {}).values(), key=lambda h: h.mac)
            found = self._groups[key] = _group(build(hosts))
        return found

    def _classify_group(self, identity: int) -> Group:
        def build(hosts):
            return policy_flows.destination_flows(hosts, self._identity).get(identity, [])

        return self._shared(("classify", identity), self._members.get(identity), build)

    def _responder_group(self, identity: int) -> Group:
        return self._shared(("responders", identity), self._members.get(identity), arp_responder.responder_flows)

    def _route_for(self, dpid: int, dst: int) -> Group | None:
        """dpid's routes to dst's hosts: none toward its parent, where its other unicast goes anyway
        (forwarding.unicast_flows)."""
        if dst == dpid:
            return None
        port = self._view.next_hop.get(dst, {}).get(dpid)
        if port is None or port == self._parent.get(dpid):
            return None
        return self._route_group(dst, port)

    def _route_group(self, dst: int, port: int) -> Group:
        return self._shared(("route", dst, port), self._by_switch.get(dst), lambda hosts: forwarding.route_flows(hosts, port))

    def _tunnel_group(self, peer: int, port: int) -> Group:
        build = lambda hosts: steering.tunnel_route_flows(hosts, port)  # noqa: E731
        return self._shared(("tunnel", peer, port), self._by_switch.get(peer), build)

    def _encrypt_pairs(self, snap: TopologySnapshot, policy: PolicyState, ch: _Changes) -> None:
        rules = self._in_rules
        if not any(r.action == "encrypt" for r in rules):
            self._pairs = frozenset()
            return
        if not (ch.rules or ch.policy or ch.policy_all or ch.struct or ch.local or self._first or self._new_ids):
            return
        hypervisors = [d for d in snap.switches if self._roles.get(d) == ROLE_HYPERVISOR]
        vms_by_switch = {
            d: [h for h in hs.values() if h.mac not in snap.endpoints] for d, hs in self._by_switch.items()
        }
        self._pairs = steering.encrypt_pairs(vms_by_switch, hypervisors, self._identity, self._labels, rules)


def _same_groups(a: Mapping, b: Mapping) -> bool:
    if a.keys() != b.keys():
        return False
    return all(a[k] is b[k] for k in a)
