"""The incremental compiler (issue 9): for random sequences of changes, the incremental result equals
a from-scratch compile, entry for entry, on every switch.

One long-lived Compiler follows one Topology object mutated in place and a PolicyState replaced on
every change, as the controller drives it. After each change the identities are assigned, the
long-lived Compiler compiles, a fresh Compiler() compiles the same inputs, and the two must agree on
every switch's entries and on the encrypt pairs. `changed` must be honest: every switch whose
entries differ from the previous compile's is in it, every switch not in it has the very same table
object as before, and a compile with nothing changed reports nothing and hands out the same tables.
A table handed out earlier never changes under its holder (the reconciler diffs against it).

Each kind of change also has a plain test of its own below, so that a failure names the handler."""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Mapping, Sequence
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps import pipeline
from apps.compiler import Compiler
from apps.context import PolicyState
from apps.identity import Identities, assign_identities
from apps.inventory import InventoryError, vm_from_json
from apps.policy import rule_from_json
from apps.quarantine import Quarantine, QuarantineError
from apps.remediation import parse_allow_list
from apps.steering import TunnelPlan
from tests.fakeoftable import TUNNEL_PORT_BASE, add_tunnel_mesh, build_leaf_spine, first_ip, policy_state
from topology.model import KIND_EDGE, KIND_INTER_SWITCH, KIND_TUNNEL, Endpoint, Link, Port, Topology

TIERS = ("web", "app", "db")
SELECTORS = ("any", "tier=web", "tier=app", "tier=db", "tier in (web,db)", "env=prod", "quarantined=true")
SERVICES = (["any"], ["tcp/5432"], ["icmp"], ["udp/53", "tcp/80"])
ACTIONS = ("allow", "deny", "encrypt")
RULES = [
    {"name": "web-db", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "allow"},
    {"name": "app-deny", "src": "tier=app", "dst": "tier in (db,web)", "services": ["any"], "action": "deny"},
    {"name": "web-app", "src": "tier=web", "dst": "tier=app", "services": ["tcp/80"], "action": "encrypt"},
    {"name": "ping-web", "src": "any", "dst": "tier=web", "services": ["icmp"], "action": "allow"},
]
DNS = [{"name": "dns", "to": "tier=db", "services": ["udp/53", "tcp/53"]}]
SSH_IN = [{"name": "ops", "from": "tier=app", "services": ["tcp/22"]}]
ALLOW_LISTS = (None, DNS, SSH_IN)  # None: the configured allow-list
CONFIGURED = ([], DNS, SSH_IN)
EXTRA_HOSTS = [(f"02:00:00:ee:00:{i:02x}", f"10.200.0.{i}") for i in range(1, 4)]  # not learned, not in the inventory
WG_PORT = 51820


def name_of(mac: str) -> str:
    return "vm-" + mac.replace(":", "")


# ---------------------------------------------------------------------------
# The world: one topology object, the policy, the identities and the tunnel plan, and the changes.
# ---------------------------------------------------------------------------
class World:
    """A leaf-spine fabric (2 spines, 2 or 3 leaves, 2 hypervisors per leaf, 2 VMs each, 2 spare
    ports per hypervisor), every VM in the inventory with a tier, a few hosts that are neither
    learned nor declared yet, tunnel ports between every pair of hypervisors."""

    def __init__(self, leaves: int = 2, default: str = "deny", tunnels: bool = True, ahead: int | None = None) -> None:
        """ahead: None answers ARP on request only (Compiler(arp_ahead_max=0)); a number n sets
        arp_ahead_max to the fabric's starting size (hosts or host ports, the larger) plus n."""
        fabric = build_leaf_spine(spines=2, leaves=leaves, hypervisors_per_leaf=2, vms_per_hypervisor=2, spare_ports=2)
        self.topo: Topology = fabric.topo
        self.hypervisors: list[int] = fabric.hypervisors
        self.pool: list[tuple[str, str]] = [(vm.mac, first_ip(vm)) for vm in fabric.vms] + EXTRA_HOSTS
        labels = {vm: {"tier": TIERS[i % 3]} for i, vm in enumerate(fabric.vms)}
        self.policy: PolicyState = policy_state(labels, RULES, default)
        self.identities = Identities()
        mesh = add_tunnel_mesh(self.topo, self.hypervisors)
        self.tunnels: TunnelPlan | None = mesh.plan if tunnels else None
        self.cut: list[Link] = []  # links that went away, by a cut or a port going down
        self.removed: list[tuple[int, list[Port], list[Link]]] = []  # switches gone: their ports and links
        self.clock = 1.0
        self.counter = itertools.count(1)
        size = max(len(self.topo.hosts), sum(len(self.topo.edge_ports(d)) for d in self.topo.switches))
        self.ahead_max = 0 if ahead is None else max(0, size + ahead)
        self.log: list[str] = [
            f"start: {leaves} leaves, default {default}, tunnels {'on' if tunnels else 'off'}, "
            f"ARP ahead up to {self.ahead_max} hosts and ports (now {size})"
        ]

    # -- what the changes pick from ------------------------------------------------------------
    def vm_names(self, quarantined: bool | None = None) -> list[str]:
        names = sorted(self.policy.vms)
        if quarantined is not None:
            names = [n for n in names if (n in self.policy.quarantine) == quarantined]
        return names

    def learned(self) -> list[str]:
        """Pool MACs the topology has learned (tunnel endpoints are not VMs)."""
        return [mac for mac, _ in self.pool if mac in self.topo.hosts]

    def free_ports(self, exclude_dpid: int | None = None) -> list[tuple[int, int]]:
        """Edge ports of hypervisors with no host learned on them."""
        return [
            (dpid, port)
            for dpid in self.hypervisors
            if dpid != exclude_dpid
            for port in self.topo.edge_ports(dpid)
            if not self.topo.hosts_on(dpid, port)
        ]

    def ports(self, up: bool) -> list[tuple[int, Port]]:
        return [
            (dpid, port)
            for dpid in sorted(self.topo.switches)
            for _, port in sorted(self.topo.switches[dpid].ports.items())
            if port.port_no < pipeline.OFPP_MAX and port.up == up
        ]

    def fresh_ip(self) -> str:
        n = next(self.counter)
        return f"10.201.{n // 250}.{n % 250 + 1}"

    def settle(self) -> None:
        """Let the edge-confirmation clock run: up ports with no link, not held, face hosts."""
        self.topo.confirm_edge_ports(self.clock)
        self.clock += 0.2
        self.topo.confirm_edge_ports(self.clock)
        self.clock += 0.2

    def apply(self, change: Sequence) -> str:
        kind, *args = change
        try:
            what = CHANGES[kind](self, *args)
        except (InventoryError, QuarantineError) as exc:  # refused, as the API would: nothing changed
            what = f"refused: {exc}"
        self.log.append(f"{kind}{tuple(args)}: {what}")
        return what


def pick(items: Sequence, index: int):
    return items[index % len(items)] if items else None


# -- policy: the inventory ---------------------------------------------------------------------
def relabel(w: World, i: int = 0, j: int = 0, *_) -> str:
    name = pick(w.vm_names(), i)
    if name is None:
        return "no VM"
    choice = j % 6
    if choice < 3:
        w.policy = w.policy.with_labels(name, {"tier": TIERS[choice]}, [])
        return f"{name} tier={TIERS[choice]}"
    if choice == 3:
        tier = f"t{next(w.counter)}"  # a label set no one had: a brand new identity
        w.policy = w.policy.with_labels(name, {"tier": tier}, [])
        return f"{name} tier={tier} (new identity)"
    if choice == 4:
        w.policy = w.policy.with_labels(name, {}, ["tier"])
        return f"{name} loses tier"
    if ("env", "prod") in w.policy.vms[name].labels:
        w.policy = w.policy.with_labels(name, {}, ["env"])
        return f"{name} loses env=prod"
    w.policy = w.policy.with_labels(name, {"env": "prod"}, [])
    return f"{name} env=prod"


def vm_add(w: World, i: int = 0, j: int = 0, k: int = 1, *_) -> str:
    declared = {m for vm in w.policy.vms.values() for m in vm.macs}
    free = [(mac, ip) for mac, ip in w.pool if mac not in declared]
    chosen = pick(free, i)
    if chosen is None:
        return "every host is declared"
    mac, ip = chosen
    owners = w.vm_names()
    if k % 3 == 0 and owners:
        vm = w.policy.vms[pick(owners, j)]
        doc = vm.to_json()
        doc["macs"] = [*doc["macs"], mac]
        del doc["name"]
        w.policy = w.policy.with_vm(vm_from_json(vm.name, doc))
        return f"{vm.name} gains MAC {mac}"
    tier = TIERS[j % 3]
    w.policy = w.policy.with_vm(vm_from_json(name_of(mac), {"macs": [mac], "ips": [ip], "labels": {"tier": tier}}))
    return f"{name_of(mac)} declared, tier={tier}"


def vm_remove(w: World, i: int = 0, *_) -> str:
    name = pick(w.vm_names(quarantined=False), i)
    if name is None:
        return "no VM out of quarantine"
    w.policy = w.policy.without_vm(name)
    return f"{name} leaves the inventory"


# -- topology: hosts ------------------------------------------------------------------------------
def learn(w: World, i: int = 0, j: int = 0, *_) -> str:
    unknown = [(mac, ip) for mac, ip in w.pool if mac not in w.topo.hosts]
    chosen, where = pick(unknown, i), pick(w.free_ports(), j)
    if chosen is None or where is None:
        return "no unlearned host or no free port"
    mac, ip = chosen
    w.topo.host_seen(mac, where[0], where[1], ip)
    return f"{mac} learned on {where[0]:#x}:{where[1]}"


def move(w: World, i: int = 0, j: int = 0, *_) -> str:
    mac = pick(w.learned(), i)
    if mac is None:
        return "no learned host"
    host = w.topo.hosts[mac]
    where = pick(w.free_ports(exclude_dpid=host.dpid), j)
    if where is None:
        return "no free port elsewhere"
    w.topo.host_seen(mac, where[0], where[1])
    return f"{mac} moves {host.dpid:#x}:{host.port} -> {where[0]:#x}:{where[1]}"


def forget(w: World, i: int = 0, *_) -> str:
    mac = pick(w.learned(), i)
    if mac is None:
        return "no learned host"
    w.topo.remove_host(mac)
    return f"{mac} forgotten"


def reip(w: World, i: int = 0, j: int = 0, k: int = 0, *_) -> str:
    mac = pick(w.learned(), i)
    if mac is None:
        return "no learned host"
    host = w.topo.hosts[mac]
    if k % 3 == 0:
        ip = w.fresh_ip()
        w.topo.hosts[mac] = replace(host, ips=frozenset({ip}))  # its address changed: the old one is gone
        return f"{mac} now has only {ip}"
    if k % 3 == 1:
        ip = w.fresh_ip()
        w.topo.host_seen(mac, host.dpid, host.port, ip)
        return f"{mac} also claims {ip}"
    ip = pick([ip for m, ip in w.pool if m != mac], j)
    w.topo.host_seen(mac, host.dpid, host.port, ip)  # the newest claim wins: taken from its owner
    return f"{mac} claims {ip}, another host's"


def ask(w: World, i: int = 0, j: int = 0, k: int = 0, *_) -> str:
    """A hypervisor's VM asked for an address no responder answered (the learner's note_asked):
    a learned host's, a tunnel endpoint's, or one nobody holds; k % 3 == 2 keeps only the newest
    two of the hypervisor's list."""
    dpid = pick([d for d in w.hypervisors if d in w.topo.switches], i)
    if dpid is None:
        return "no hypervisor"
    managed = {mac for vm in w.policy.vms.values() for mac in vm.macs}
    held = sorted((h.mac in managed, ip) for h in w.topo.hosts.values() for ip in h.ips)  # unmanaged first
    addresses = [ip for _, ip in held] + ["10.199.0.1"]
    ip = pick(addresses, j)
    limit = 2 if k % 3 == 2 else 1024
    noted = w.topo.note_asked(dpid, ip, limit)
    return f"{dpid:#x} asked for {ip} (kept: {noted}, limit {limit})"


# -- policy: rules and default -------------------------------------------------------------------
def _new_rule(w: World, i: int, j: int, k: int):
    body = {
        "name": f"r{next(w.counter)}",
        "src": SELECTORS[i % len(SELECTORS)],
        "dst": SELECTORS[j % len(SELECTORS)],
        "services": SERVICES[k % len(SERVICES)],
        "action": ACTIONS[(k // len(SERVICES)) % len(ACTIONS)],
    }
    return rule_from_json(body), body


def rule_append(w: World, i: int = 0, j: int = 0, k: int = 0, *_) -> str:
    rule, body = _new_rule(w, i, j, k)
    w.policy = w.policy.with_rule(rule)
    return f"appended {body}"


def rule_prepend(w: World, i: int = 0, j: int = 0, k: int = 0, *_) -> str:
    rule, body = _new_rule(w, i, j, k)
    w.policy = w.policy.with_rule(rule, 0)
    return f"inserted first {body}"


def rule_remove(w: World, i: int = 0, *_) -> str:
    rule = pick(w.policy.rules, i)
    if rule is None:
        return "no rule"
    w.policy = w.policy.without_rule(rule.name)
    return f"removed {rule.name}"


def rule_reorder(w: World, i: int = 0, *_) -> str:
    names = [r.name for r in w.policy.rules]
    if i % 2 == 0:
        names.reverse()
    else:
        random.Random(i).shuffle(names)
    w.policy = w.policy.reordered(names)
    return f"order {names}"


def rule_action(w: World, i: int = 0, j: int = 0, *_) -> str:
    rule = pick(w.policy.rules, i)
    if rule is None:
        return "no rule"
    others = [a for a in ACTIONS if a != rule.action]
    action = others[j % 2]
    w.policy = w.policy.with_rule(replace(rule, action=action))
    return f"{rule.name}: {rule.action} -> {action}"


def default_flip(w: World, *_) -> str:
    action = "allow" if w.policy.default_action == "deny" else "deny"
    w.policy = w.policy.with_default(action)
    return f"default {action}"


# -- topology: links and ports --------------------------------------------------------------------
def link_cut(w: World, i: int = 0, j: int = 0, *_) -> str:
    """j even: a leaf-spine link; odd: a hypervisor's uplink."""
    links = sorted(w.topo.links, key=lambda lk: (lk.a.dpid, lk.a.port, lk.b.dpid, lk.b.port))
    uplinks = [lk for lk in links if lk.a.dpid in w.hypervisors or lk.b.dpid in w.hypervisors]
    link = pick((uplinks if j % 2 else [lk for lk in links if lk not in uplinks]) or links, i)
    if link is None:
        return "no link"
    del w.topo.links[link]
    w.cut.append(link)
    return f"cut {link.a.dpid:#x}:{link.a.port} - {link.b.dpid:#x}:{link.b.port}"


def _restorable(w: World) -> list[Link]:
    def up(ref) -> bool:
        sw = w.topo.switches.get(ref.dpid)
        port = sw.ports.get(ref.port) if sw is not None else None
        return port is not None and port.up and ref.port not in w.topo.inter_switch_ports(ref.dpid)

    return [lk for lk in w.cut if up(lk.a) and up(lk.b)]


def link_restore(w: World, i: int = 0, j: int = 0, *_) -> str:
    link = pick(_restorable(w), i)
    if link is None:
        return "no link to restore"
    w.cut.remove(link)
    if j % 2:
        w.topo.link_seen(link.a, link.b, w.clock)  # probes seen again
        how = "by LLDP"
    else:
        w.topo.links[link] = w.clock  # written back directly, as a store load does
        how = "directly"
    return f"restored {how} {link.a.dpid:#x}:{link.a.port} - {link.b.dpid:#x}:{link.b.port}"


PORT_KINDS = (KIND_EDGE, KIND_INTER_SWITCH, KIND_TUNNEL)


def port_down(w: World, i: int = 0, j: int = 0, *_) -> str:
    """j picks the kind of port: an edge port, an inter-switch port, a tunnel port."""
    up = w.ports(up=True)
    kind = PORT_KINDS[j % len(PORT_KINDS)]
    chosen = pick([(d, p) for d, p in up if w.topo.port_kind(d, p.port_no) == kind] or up, i)
    if chosen is None:
        return "no port up"
    dpid, port = chosen
    w.cut += [lk for lk in w.topo.links if any(e.dpid == dpid and e.port == port.port_no for e in lk.ends())]
    what = f"{dpid:#x}:{port.port_no} ({port.name}, {w.topo.port_kind(dpid, port.port_no)}) down"
    w.topo.set_port(dpid, replace(port, up=False))
    return what


def port_up(w: World, i: int = 0, *_) -> str:
    chosen = pick(w.ports(up=False), i)
    if chosen is None:
        return "no port down"
    dpid, port = chosen
    w.topo.set_port(dpid, replace(port, up=True))
    relinked = []
    for link in _restorable(w):
        if any(e.dpid == dpid and e.port == port.port_no for e in link.ends()):
            w.cut.remove(link)
            w.topo.link_seen(link.a, link.b, w.clock)
            relinked.append(f"{link.a.dpid:#x}:{link.a.port} - {link.b.dpid:#x}:{link.b.port}")
    w.settle()
    return f"{dpid:#x}:{port.port_no} ({port.name}) up" + (f", link {relinked[0]} seen again" if relinked else "")


def port_add(w: World, i: int = 0, j: int = 0, *_) -> str:
    """A new port on a switch (j even: a hypervisor, a VM plugged in; odd: any switch), proven an edge port."""
    dpid = pick(w.hypervisors if j % 2 == 0 else sorted(w.topo.switches), i)
    if dpid not in w.topo.switches:
        return f"{dpid:#x} is gone"
    sw = w.topo.switches[dpid]
    number = max((p for p in sw.ports if p < TUNNEL_PORT_BASE), default=0) + 1
    w.topo.set_port(
        dpid, Port(number, f"s{dpid:x}-eth{number}", f"aa:01:{dpid >> 8 & 0xFF:02x}:{dpid & 0xFF:02x}:00:{number:02x}")
    )
    w.settle()
    return f"{dpid:#x}:{number} added ({w.topo.port_kind(dpid, number)})"


def port_delete(w: World, i: int = 0, *_) -> str:
    ports = [(d, p) for d, p in w.ports(up=True) + w.ports(up=False)]
    chosen = pick(sorted(ports, key=lambda dp: (dp[0], dp[1].port_no)), i)
    if chosen is None:
        return "no port"
    dpid, port = chosen
    w.cut += [lk for lk in w.topo.links if any(e.dpid == dpid and e.port == port.port_no for e in lk.ends())]
    what = f"{dpid:#x}:{port.port_no} ({port.name}, {w.topo.port_kind(dpid, port.port_no)}) deleted"
    w.topo.delete_port(dpid, port.port_no)
    return what


def role_override(w: World, i: int = 0, j: int = 0, *_) -> str:
    dpid = pick(sorted(w.topo.switches), i)
    if dpid is None:
        return "no switch"
    desc = ("role=hypervisor", "role=fabric", "")[j % 3]
    w.topo.set_role_override(dpid, desc)
    return f"{dpid:#x} dp-desc {desc!r}: role {w.topo.role(dpid)}"


def switch_remove(w: World, i: int = 0, *_) -> str:
    dpid = pick(sorted(w.topo.switches), i)
    if dpid is None:
        return "no switch"
    sw = w.topo.switches[dpid]
    links = [lk for lk in w.topo.links if dpid in (lk.a.dpid, lk.b.dpid)]
    w.removed.append((dpid, list(sw.ports.values()), links))
    w.topo.remove_switch(dpid)
    return f"{dpid:#x} removed (its hosts forgotten, {len(links)} links gone)"


def switch_return(w: World, i: int = 0, *_) -> str:
    """The switch connects again: its ports, then its links seen again where the peer is there."""
    if not w.removed:
        return "no switch removed"
    dpid, ports, links = w.removed.pop(i % len(w.removed))
    w.topo.switch_connected(dpid)
    w.topo.set_ports(dpid, ports)
    w.cut += links
    seen = 0
    for link in _restorable(w):
        if dpid in (link.a.dpid, link.b.dpid):
            w.cut.remove(link)
            w.topo.link_seen(link.a, link.b, w.clock)
            seen += 1
    w.settle()
    return f"{dpid:#x} back, {seen} links seen again"


# -- quarantine, remediation, mirroring ------------------------------------------------------------
def _quarantine(w: World, name: str, mode: str, allow, mirror_to: str | None) -> str:
    vm = w.policy.vm(name)
    rules = None if allow is None else parse_allow_list(allow)
    w.policy = w.policy.with_quarantine(Quarantine(vm.name, "test", mode, "admin", 0.0, vm.macs, mirror_to, rules))
    return f"{name} quarantined ({mode}, allow {allow}, mirror_to {mirror_to})"


def quarantine(w: World, i: int = 0, j: int = 0, k: int = 0, *_) -> str:
    name = pick(w.vm_names(quarantined=False), i)
    if name is None:
        return "no VM out of quarantine"
    mode = ("isolate", "remediate")[j % 2]
    return _quarantine(w, name, mode, ALLOW_LISTS[k % 3] if mode == "remediate" else None, None)


def mirror(w: World, i: int = 0, j: int = 0, k: int = 0, *_) -> str:
    name = pick(w.vm_names(quarantined=False), i)
    analyzer = pick([n for n in w.vm_names() if n != name], k)
    if name is None or analyzer is None:
        return "no VM to mirror"
    mode = ("isolate", "remediate")[j % 2]
    return _quarantine(w, name, mode, ALLOW_LISTS[j % 3] if mode == "remediate" else None, analyzer)


def release(w: World, i: int = 0, *_) -> str:
    name = pick(sorted(w.policy.quarantine), i)
    if name is None:
        return "no VM in quarantine"
    w.policy = w.policy.without_quarantine(name)
    return f"{name} released"


def remediation_list(w: World, i: int = 0, *_) -> str:
    allow = CONFIGURED[i % 3]
    w.policy = replace(w.policy, remediation=parse_allow_list(allow))
    return f"configured allow-list {allow}"


# -- tunnels and endpoints ------------------------------------------------------------------------
def tunnels(w: World, i: int = 0, j: int = 1, *_) -> str:
    pairs = list(itertools.combinations(w.hypervisors, 2))
    chosen = [(a, b) for bit, (a, b) in enumerate(pairs) if i >> bit & 1 and a in w.topo.switches and b in w.topo.switches]
    if not chosen or j % 4 == 0:
        w.tunnels = None if j % 2 else TunnelPlan()
        return f"no tunnel plan ({w.tunnels!r})"
    w.tunnels = add_tunnel_mesh(w.topo, w.hypervisors, chosen).plan  # ports added where missing
    return "tunnels between " + ", ".join(f"{a:#x}-{b:#x}" for a, b in chosen)


def endpoint(w: World, i: int = 0, j: int = 0, *_) -> str:
    """As the learner's set_endpoints: the whole endpoint dict replaced, each endpoint placed as a
    host. j picks: a new endpoint on a free port, one gone, one whose WireGuard port changes."""
    endpoints = dict(w.topo.endpoints)
    if j % 3 == 1 and endpoints:
        mac = pick(sorted(endpoints), i)
        del endpoints[mac]
        w.topo.remove_host(mac)
        what = f"endpoint {mac} gone"
    elif j % 3 == 2 and endpoints:
        mac = pick(sorted(endpoints), i)
        old = endpoints[mac]
        endpoints[mac] = replace(old, listen_port=old.listen_port + 1)  # its host stays as it is
        what = f"endpoint {mac} listens on {old.listen_port + 1}"
    else:
        dpid = pick(w.hypervisors, i)
        where = pick(w.free_ports(), i)
        where = next(((d, p) for d, p in w.free_ports() if d == dpid), where)
        if where is None:
            return "no free port"
        n = next(w.counter)
        sw = w.topo.switches[where[0]]
        mac = f"02:ee:00:00:{n >> 8 & 0xFF:02x}:{n & 0xFF:02x}"
        endpoints[mac] = Endpoint(f"hv{n}", sw.name, sw.ports[where[1]].name, mac, f"192.168.{n // 250}.{n % 250 + 1}", WG_PORT)
        what = f"endpoint {mac} on {where[0]:#x}:{where[1]}"
    w.topo.endpoints = endpoints
    w.topo.place_endpoints()
    return what


def swap_topology(w: World, *_) -> str:
    """The same facts in another Topology object (a restart's load): the compiler must not assume
    it is always handed the same one."""
    w.topo = copy.deepcopy(w.topo)
    return "topology replaced by an equal copy"


CHANGES = {
    "relabel": relabel,
    "vm_add": vm_add,
    "vm_remove": vm_remove,
    "learn": learn,
    "move": move,
    "forget": forget,
    "reip": reip,
    "ask": ask,
    "rule_append": rule_append,
    "rule_prepend": rule_prepend,
    "rule_remove": rule_remove,
    "rule_reorder": rule_reorder,
    "rule_action": rule_action,
    "default_flip": default_flip,
    "link_cut": link_cut,
    "link_restore": link_restore,
    "port_down": port_down,
    "port_up": port_up,
    "port_add": port_add,
    "port_delete": port_delete,
    "role_override": role_override,
    "switch_remove": switch_remove,
    "switch_return": switch_return,
    "quarantine": quarantine,
    "mirror": mirror,
    "release": release,
    "remediation_list": remediation_list,
    "tunnels": tunnels,
    "endpoint": endpoint,
    "swap_topology": swap_topology,
}


# ---------------------------------------------------------------------------
# The checks.
# ---------------------------------------------------------------------------
def _entry(entry) -> str:
    text = f"table {entry.table} prio {entry.priority} match {dict(entry.match)}"
    if entry.actions:
        text += f" actions {list(entry.actions)}"
    if entry.goto is not None:
        text += f" goto {entry.goto}"
    if entry.metadata is not None:
        text += f" metadata {entry.metadata[0]:#x}/{entry.metadata[1]:#x}"
    return text + f" app {entry.app}"


def _entries(title: str, entries: Mapping, limit: int = 8) -> list[str]:
    if not entries:
        return []
    lines = [f"    {title} ({len(entries)}):"]
    lines += [f"      {cookie:#x}: {_entry(e)}" for cookie, e in sorted(entries.items())[:limit]]
    if len(entries) > limit:
        lines.append(f"      ... and {len(entries) - limit} more")
    return lines


def _history(log: Sequence[str]) -> str:
    return "changes so far:\n" + "\n".join(f"  {n}. {line}" for n, line in enumerate(log))


def contents(compiled) -> dict[int, dict]:
    return {dpid: dict(table) for dpid, table in compiled.tables.items()}


def assert_same_as_fresh(inc, fresh, log: Sequence[str]) -> None:
    """Every switch, every entry, and the encrypt pairs, as a fresh compile has them."""
    problems = []
    if set(inc.tables) != set(fresh.tables):
        extra, missing = sorted(set(inc.tables) - set(fresh.tables)), sorted(set(fresh.tables) - set(inc.tables))
        problems.append(f"  switches: incremental has extra {[hex(d) for d in extra]}, lacks {[hex(d) for d in missing]}")
    for dpid in sorted(set(inc.tables) & set(fresh.tables)):
        have, want = dict(inc.tables[dpid]), dict(fresh.tables[dpid])
        if have == want:
            continue
        lines = [f"  switch {dpid:#x}: incremental differs from a fresh compile"]
        lines += _entries("missing (the fresh compile has them)", {c: e for c, e in want.items() if c not in have})
        lines += _entries("extra (only the incremental compile has them)", {c: e for c, e in have.items() if c not in want})
        lines += _entries(
            "differing under the same cookie (fresh)", {c: e for c, e in want.items() if c in have and have[c] != e}
        )
        problems.append("\n".join(lines))
    if frozenset(inc.encrypt_pairs) != frozenset(fresh.encrypt_pairs):
        fmt = lambda pairs: sorted(tuple(sorted(hex(d) for d in p)) for p in pairs)  # noqa: E731
        problems.append(f"  encrypt_pairs: incremental {fmt(inc.encrypt_pairs)}, fresh {fmt(fresh.encrypt_pairs)}")
    if problems:
        raise AssertionError("incremental compile != fresh compile\n" + "\n".join(problems[:6]) + "\n" + _history(log))


def assert_changed_honest(prev, prev_contents: dict[int, dict] | None, inc, log: Sequence[str]) -> None:
    """`changed` names exactly the switches whose table object is not the one handed out before, and
    at least every switch whose entries differ; earlier tables are never changed under their holder."""
    before = prev.tables if prev is not None else {}
    before_contents = prev_contents or {}
    changed = frozenset(inc.changed)
    for dpid, table in inc.tables.items():
        differs = dpid not in before_contents or dict(table) != before_contents[dpid]
        assert not differs or dpid in changed, (
            f"switch {dpid:#x}: its entries changed but it is not in `changed` {sorted(hex(d) for d in changed)}\n"
            + _history(log)
        )
        same_object = dpid in before and before[dpid] is table
        assert dpid in changed or same_object, f"switch {dpid:#x} is not in `changed` but its table is a new object\n" + _history(
            log
        )
        assert dpid not in changed or not same_object, (
            f"switch {dpid:#x} is in `changed` but its table is the very object handed out before\n" + _history(log)
        )
    stray = changed - set(inc.tables) - set(before)
    assert not stray, f"`changed` names switches that exist in neither compile: {sorted(hex(d) for d in stray)}"
    for dpid, table in before.items():
        assert dict(table) == before_contents[dpid], (
            f"switch {dpid:#x}: the table handed out by the previous compile changed under its holder\n" + _history(log)
        )


def assert_idle_recompile(compiler: Compiler, w: World, inc) -> None:
    """Nothing changed: nothing reported, the very same table objects."""
    assign_identities(w.topo, w.policy, w.identities)
    again = compiler.compile(w.topo, w.policy, w.identities, w.tunnels)
    assert not again.changed, (
        f"a compile with nothing changed reports {sorted(hex(d) for d in again.changed)} changed\n" + _history(w.log)
    )
    assert set(again.tables) == set(inc.tables), "a compile with nothing changed has other switches\n" + _history(w.log)
    for dpid, table in again.tables.items():
        assert table is inc.tables[dpid], (
            f"switch {dpid:#x}: a compile with nothing changed hands out a new table object\n" + _history(w.log)
        )
    assert again.encrypt_pairs == inc.encrypt_pairs, "a compile with nothing changed has other encrypt pairs"


class Run:
    """The long-lived compiler, and what it handed out last."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.compiler = Compiler(world.ahead_max)
        self.prev = None
        self.prev_contents: dict[int, dict] | None = None
        self.fresh = None

    def check(self):
        """Compile incrementally and from scratch; check; return the fresh result."""
        w = self.world
        assign_identities(w.topo, w.policy, w.identities)
        inc = self.compiler.compile(w.topo, w.policy, w.identities, w.tunnels)
        fresh = Compiler(w.ahead_max).compile(w.topo, w.policy, w.identities, w.tunnels)
        assert_same_as_fresh(inc, fresh, w.log)
        assert_changed_honest(self.prev, self.prev_contents, inc, w.log)
        inc_contents = contents(inc)
        assert_idle_recompile(self.compiler, w, inc)
        self.prev, self.prev_contents, self.fresh = inc, inc_contents, fresh
        return fresh

    def change(self, change: Sequence):
        self.world.apply(change)
        return self.check()


# ---------------------------------------------------------------------------
# The property: random sequences of changes.
# ---------------------------------------------------------------------------
index = st.integers(0, 1 << 16)

# Changes that only do something in some states (an undo needs what it undoes): drawn only then.
APPLICABLE = {
    "release": lambda w: bool(w.policy.quarantine),
    "port_up": lambda w: bool(w.ports(up=False)),
    "link_restore": lambda w: bool(_restorable(w)),
    "move": lambda w: bool(w.learned()),
    "forget": lambda w: bool(w.learned()),
    "reip": lambda w: bool(w.learned()),
    "learn": lambda w: any(mac not in w.topo.hosts for mac, _ in w.pool) and bool(w.free_ports()),
    "rule_remove": lambda w: bool(w.policy.rules),
    "rule_action": lambda w: bool(w.policy.rules),
    "rule_reorder": lambda w: len(w.policy.rules) > 1,
    "switch_return": lambda w: bool(w.removed),
}


def applicable(w: World) -> list[str]:
    return [kind for kind in sorted(CHANGES) if APPLICABLE.get(kind, lambda _: True)(w)]


@settings(max_examples=60, deadline=None)
@given(
    leaves=st.sampled_from([2, 3]),
    default=st.sampled_from(["allow", "deny"]),
    tunnels_on=st.booleans(),
    ahead=st.sampled_from([None, -1, 0, 1, 1000]),  # on request only; around the fabric's size; always ahead
    steps=st.integers(1, 14),
    data=st.data(),
)
def test_incremental_equals_a_fresh_compile_after_every_change(leaves, default, tunnels_on, ahead, steps, data):
    """Each change is drawn among those that do something in the current state."""
    run = Run(World(leaves, default, tunnels_on, ahead))
    run.check()
    for step in range(steps):
        kind = data.draw(st.sampled_from(applicable(run.world)), label=f"change {step + 1}")
        run.change((kind, *data.draw(st.tuples(index, index, index), label=f"arguments {step + 1}")))


# ---------------------------------------------------------------------------
# One test per kind of change: a failure names the handler that is wrong.
# ---------------------------------------------------------------------------
# Each scenario: the changes that set it up, then the change under test (the last one), which must
# change the desired tables (or the encrypt pairs) or the scenario proves nothing.
SCENARIOS: dict[str, list[tuple]] = {
    "relabel": [("relabel", 0, 2, 0)],
    "relabel_new_identity": [("relabel", 1, 3, 0)],
    "relabel_drop_label": [("relabel", 0, 4, 0)],
    "relabel_second_label": [("rule_append", 5, 0, 0), ("relabel", 3, 5, 0)],
    "vm_add": [("learn", 0, 0, 0), ("vm_add", 0, 1, 1)],
    "vm_add_second_mac": [("learn", 0, 0, 0), ("vm_add", 0, 2, 0)],
    "vm_remove": [("vm_remove", 2, 0, 0)],
    "learn": [("learn", 0, 3, 0)],
    "learn_declared": [("vm_add", 1, 0, 1), ("learn", 1, 5, 0)],
    "move": [("move", 0, 5, 0)],
    "move_back": [("move", 0, 5, 0), ("move", 0, 0, 0)],
    "forget": [("forget", 3, 0, 0)],
    "ask_unmanaged": [("learn", 0, 3, 0), ("ask", 0, 0, 0)],
    "ask_then_move": [("learn", 0, 3, 0), ("ask", 0, 0, 0), ("move", 8, 0, 0)],
    "ask_then_forget": [("learn", 0, 3, 0), ("ask", 0, 0, 0), ("forget", 8, 0, 0)],
    "ask_then_reip": [("learn", 0, 3, 0), ("ask", 0, 0, 0), ("reip", 8, 0, 0)],
    "ask_then_relabel": [("ask", 2, 1, 0), ("relabel", 1, 0, 0)],
    "ask_evicts": [*[("learn", 0, 3, 0)] * 3, ("ask", 0, 0, 0), ("ask", 0, 1, 0), ("ask", 0, 2, 2)],
    "ask_then_default_allow": [("learn", 0, 3, 0), ("ask", 0, 0, 0), ("default_flip", 0, 0, 0)],
    "ask_then_remediate": [("learn", 0, 3, 0), ("ask", 0, 0, 0), ("quarantine", 0, 1, 1)],
    "reip_replace": [("reip", 1, 0, 0)],
    "reip_add": [("reip", 1, 0, 1)],
    "reip_steal": [("reip", 1, 5, 2)],
    # A VM's port security knows which of its declared addresses any of its MACs was learned with:
    # its first MAC loses its address, then its second MAC (on another switch) claims it.
    "reip_second_mac": [("learn", 0, 5, 0), ("vm_add", 0, 0, 0), ("reip", 0, 0, 0), ("reip", 8, 0, 2)],
    "rule_append": [("rule_append", 0, 1, 2)],
    "rule_prepend": [("rule_prepend", 1, 0, 0)],
    "rule_prepend_encrypt": [("rule_prepend", 1, 3, 9)],
    "rule_remove": [("rule_remove", 0, 0, 0)],
    "rule_remove_encrypt": [("rule_remove", 2, 0, 0)],
    "rule_reorder": [("rule_reorder", 0, 0, 0)],
    "rule_reorder_shuffle": [("rule_reorder", 3, 0, 0)],
    "rule_action_deny": [("rule_action", 0, 0, 0)],
    "rule_action_encrypt": [("rule_action", 0, 1, 0)],
    "default_flip": [("default_flip", 0, 0, 0)],
    "default_flip_back": [("default_flip", 0, 0, 0), ("default_flip", 0, 0, 0)],
    "link_cut_spine": [("link_cut", 0, 0, 0)],
    "link_cut_uplink": [("link_cut", 1, 1, 0)],
    "link_restore_direct": [("link_cut", 0, 0, 0), ("link_restore", 0, 0, 0)],
    "link_restore_lldp": [("link_cut", 1, 1, 0), ("link_restore", 0, 1, 0)],
    "port_down_edge": [("port_down", 0, 0, 0)],
    "port_down_fabric": [("port_down", 0, 1, 0)],
    "port_down_tunnel": [("port_down", 0, 2, 0)],
    "port_up_edge": [("port_down", 0, 0, 0), ("port_up", 0, 0, 0)],
    "port_up_fabric": [("port_down", 0, 1, 0), ("port_up", 0, 0, 0)],
    "port_up_tunnel": [("port_down", 0, 2, 0), ("port_up", 0, 0, 0)],
    "quarantine_isolate": [("quarantine", 0, 0, 0)],
    "quarantine_remediate_configured": [("remediation_list", 1, 0, 0), ("quarantine", 0, 1, 0)],
    "quarantine_remediate_own_list": [("quarantine", 0, 1, 1)],
    "quarantine_remediate_inbound": [("quarantine", 4, 1, 2)],
    "release": [("quarantine", 0, 1, 1), ("release", 0, 0, 0)],
    "release_isolated": [("quarantine", 2, 0, 0), ("release", 0, 0, 0)],
    "remediation_list": [("quarantine", 0, 1, 0), ("remediation_list", 1, 0, 0)],
    "mirror": [("mirror", 0, 0, 5)],
    "mirror_remediate": [("mirror", 1, 1, 3)],
    "mirror_analyzer_moves": [("mirror", 0, 0, 5), ("move", 6, 0, 0)],
    "mirror_analyzer_quarantined": [("mirror", 0, 0, 5), ("quarantine", 5, 0, 0)],
    "tunnels_some_pairs": [("tunnels", 0b101, 1, 0)],
    "tunnels_off": [("tunnels", 0, 1, 0)],
    "tunnels_empty_plan": [("tunnels", 0, 0, 0)],
    "tunnels_on_again": [("tunnels", 0, 1, 0), ("tunnels", 0b111111, 1, 0)],
    "endpoint_add": [("endpoint", 0, 0, 0)],
    "endpoint_remove": [("endpoint", 0, 0, 0), ("endpoint", 0, 1, 0)],
    "endpoint_listen_port": [("endpoint", 0, 0, 0), ("endpoint", 0, 2, 0)],
    "swap_topology_then_change": [("swap_topology", 0, 0, 0), ("forget", 0, 0, 0)],
    "hypervisor_emptied": [("forget", 0, 0, 0), ("forget", 0, 0, 0)],
    "port_add_hypervisor": [("port_add", 0, 0, 0)],
    "port_add_fabric": [("port_add", 0, 1, 0)],
    "port_delete": [("port_delete", 0, 0, 0)],
    "role_override_hypervisor": [("role_override", 0, 0, 0)],
    "role_override_fabric": [("role_override", 4, 1, 0)],
    "switch_remove_hypervisor": [("switch_remove", 4, 0, 0)],
    "switch_remove_spine": [("switch_remove", 0, 0, 0)],
    "switch_return": [("switch_remove", 4, 0, 0), ("switch_return", 0, 0, 0)],
    "switch_return_spine": [("switch_remove", 0, 0, 0), ("switch_return", 0, 0, 0)],
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_each_kind_of_change(scenario):
    run = Run(World())
    before = run.check()
    for change in SCENARIOS[scenario]:
        before = run.fresh
        run.change(change)
    after = run.fresh
    assert contents(before) != contents(after) or before.encrypt_pairs != after.encrypt_pairs, (
        f"scenario {scenario} does not change the desired tables: the test itself is wrong\n" + _history(run.world.log)
    )


def test_a_compile_with_nothing_changed_reports_nothing_and_hands_out_the_same_tables():
    w = World()
    compiler = Compiler(0)
    assign_identities(w.topo, w.policy, w.identities)
    first = compiler.compile(w.topo, w.policy, w.identities, w.tunnels)
    assert set(first.changed) == set(first.tables), "the first compile changes every switch"
    for _ in range(2):
        second = compiler.compile(w.topo, w.policy, w.identities, w.tunnels)
        assert not second.changed
        assert all(second.tables[d] is first.tables[d] for d in first.tables)
    # An equal policy and plan in new objects are no change either.
    plan = None if w.tunnels is None else TunnelPlan({d: dict(p) for d, p in w.tunnels.ports.items()})
    policy = replace(w.policy, rules=tuple(w.policy.rules))
    third = compiler.compile(w.topo, policy, w.identities, plan)
    assert contents(third) == contents(first)
    assert all(third.tables[d] is first.tables[d] for d in first.tables if d not in third.changed)


def test_local_changes_on_a_larger_fabric():
    """Changes whose effect is local (a new identity, a move, a rule gone) on three leaves: switches
    whose entries are the same keep their table object, the others are in `changed`."""
    run = Run(World(leaves=3))
    run.check()
    run.change(("relabel", 0, 3, 0))
    run.change(("move", 0, 5, 0))
    run.change(("rule_remove", 0, 0, 0))


def test_the_same_compiler_on_another_topology_object():
    """The compiler is handed a different Topology object (another fabric, then the first again,
    changed meanwhile): each time it equals a fresh compile."""
    a, b = World(leaves=2), World(leaves=3, default="allow", tunnels=False)
    compiler = Compiler(0)
    previous = None
    for w, change in ((a, None), (b, None), (a, ("forget", 0)), (b, ("relabel", 0, 3)), (a, None), (a, ("move", 1, 3))):
        if change is not None:
            w.apply(change)
        assign_identities(w.topo, w.policy, w.identities)
        inc = compiler.compile(w.topo, w.policy, w.identities, w.tunnels)
        fresh = Compiler(w.ahead_max).compile(w.topo, w.policy, w.identities, w.tunnels)
        assert_same_as_fresh(inc, fresh, w.log)
        if previous is not None:
            for dpid, table in inc.tables.items():
                if dpid not in previous.tables or dict(previous.tables[dpid]) != dict(table):
                    assert dpid in inc.changed, f"switch {dpid:#x} changed between topologies but is not in `changed`"
        previous = inc


def test_a_change_reverted_compiles_to_the_original_tables():
    run = Run(World())
    original = contents(run.check())
    for change in (("relabel", 0, 3, 0), ("link_cut", 0, 0, 0), ("quarantine", 1, 1, 1)):
        run.change(change)
    # Undo: the label back, the link back, the quarantine released.
    run.change(("relabel", 0, TIERS.index("web"), 0))
    run.change(("link_restore", 0, 0, 0))
    run.change(("release", 0, 0, 0))
    assert contents(run.fresh) == original, "undoing every change must give the original tables back\n" + _history(run.world.log)


def test_crossing_the_arp_ahead_threshold_both_ways():
    """At most arp_ahead_max hosts and host ports: every hypervisor answers every address ahead of
    time; one host port more, only rule peers and asked addresses; that port gone, everything again.
    Each step equals a fresh compile and changes the responders."""
    run = Run(World(ahead=0))

    def responders(compiled) -> int:
        return sum(1 for t in compiled.tables.values() for e in t.values() if e.priority == pipeline.PRIO_ARP_RESPONDER)

    ahead = run.check()
    above = run.change(("port_add", 0, 0, 0))  # one host port more than the threshold
    assert responders(above) < responders(ahead), "above the threshold: answered on request"
    added = max(p for p in run.world.topo.switches[run.world.hypervisors[0]].ports if p < TUNNEL_PORT_BASE)
    run.world.topo.delete_port(run.world.hypervisors[0], added)
    below = run.check()
    assert responders(below) == responders(ahead), "back to every address ahead of time"
