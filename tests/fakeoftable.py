"""A fake OpenFlow 1.3 network for unit tests: given desired flow tables and the wiring, where does a packet go?

The fake follows what Open vSwitch does with the same flows, so that a test passing here means
something on a real switch:
- lookup starts at table 0; the highest-priority entry whose match fields all equal the packet's
  wins (masked fields are `(value, mask)`); no match means drop (OpenFlow 1.3 has no implicit
  table-miss);
- apply-actions run in order on a working copy of the headers: `Output` emits a copy as it is at
  that moment, `SetField` and `Move` rewrite it for the actions and tables that follow;
- `Output(p)` with p equal to the ingress port is dropped (only `OFPP_IN_PORT` sends a frame back);
- a flow that OVS would refuse (a field without its prerequisite, a backward goto, a partial `Move`)
  raises `FlowRejected` when the network is built, and two entries of equal priority matching the
  same packet raise `AmbiguousLookup`, since OVS would pick one arbitrarily.

A frame that leaves a port linked to another switch enters that switch on the peer port. A frame
that leaves any other port is delivered there. The same frame (same headers) entering the same
(dpid, in_port) twice in one trace is a loop: it is reported and not followed further, so a storm
shows up as a finite list of loops instead of hanging the test.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from apps import pipeline
from apps.flows import FlowEntry, Move, Output, SetField
from topology.model import EDGE_CONFIRM_TIME, Host, Port, PortRef, Topology

BROADCAST = "ff:ff:ff:ff:ff:ff"
HOP_LIMIT = 64
MAX_COPIES = 10_000  # copies one trace may process before it is called a storm

MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha"})
IPV4_FIELDS = frozenset({"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"})
FIELD_BITS: dict[str, int] = {
    **dict.fromkeys(MAC_FIELDS, 48),
    **dict.fromkeys(IPV4_FIELDS, 32),
    "in_port": 32,
    "metadata": 64,
    "eth_type": 16,
    "arp_op": 16,
    "ip_proto": 8,
    "tcp_src": 16,
    "tcp_dst": 16,
    "udp_src": 16,
    "udp_dst": 16,
    "icmpv4_type": 8,
    "icmpv4_code": 8,
    "ct_state": 32,
    "reg0": 32,
}

# OpenFlow 1.3 match prerequisites (spec table 12): field -> (field it needs, allowed values).
_ARP = frozenset({pipeline.ETH_TYPE_ARP})
_IPV4 = frozenset({pipeline.ETH_TYPE_IPV4})
PREREQUISITES: dict[str, tuple[str, frozenset[int]]] = {
    **dict.fromkeys(("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"), ("eth_type", _ARP)),
    "ipv4_src": ("eth_type", _IPV4),
    "ipv4_dst": ("eth_type", _IPV4),
    "ip_proto": ("eth_type", frozenset({pipeline.ETH_TYPE_IPV4, pipeline.ETH_TYPE_IPV6})),
    "tcp_src": ("ip_proto", frozenset({6})),
    "tcp_dst": ("ip_proto", frozenset({6})),
    "udp_src": ("ip_proto", frozenset({17})),
    "udp_dst": ("ip_proto", frozenset({17})),
    "icmpv4_type": ("ip_proto", frozenset({1})),
    "icmpv4_code": ("ip_proto", frozenset({1})),
}


class FlowRejected(ValueError):
    """Open vSwitch would refuse this flow-mod (the controller would get an OFPT_ERROR)."""


class AmbiguousLookup(AssertionError):
    """Two entries of the same priority match one packet: the switch's choice is arbitrary."""


# ---------------------------------------------------------------------------
# Field values: compare MACs and IPv4 addresses as numbers, whatever their spelling.
# ---------------------------------------------------------------------------
def field_int(name: str, value: Any) -> int:
    if isinstance(value, int):
        return value
    if name in MAC_FIELDS:
        return int(str(value).replace(":", "").replace("-", ""), 16)
    if name in IPV4_FIELDS:
        return int(ipaddress.IPv4Address(value))
    raise TypeError(f"field {name} has non-integer value {value!r}")


def field_matches(name: str, wanted: Any, value: Any) -> bool:
    if value is None:
        return False
    if isinstance(wanted, tuple):
        want, mask = field_int(name, wanted[0]), field_int(name, wanted[1])
        return field_int(name, value) & mask == want & mask
    return field_int(name, value) == field_int(name, wanted)


def entry_matches(entry: FlowEntry, packet: Mapping[str, Any]) -> bool:
    return all(field_matches(name, wanted, packet.get(name)) for name, wanted in entry.match)


def _exact(entry: FlowEntry, name: str) -> Any:
    value = entry.match_dict.get(name)
    return None if isinstance(value, tuple) else value


def check_entry(entry: FlowEntry) -> None:
    """Raise FlowRejected when Open vSwitch would refuse this entry."""
    where = f"table {entry.table} priority {entry.priority} match {entry.match}"
    for name, _ in entry.match:
        if name not in FIELD_BITS:
            raise FlowRejected(f"{where}: unknown match field {name}")
    fields = [name for name, _ in entry.match]
    fields += [a.name for a in entry.actions if isinstance(a, SetField)]
    fields += [f for a in entry.actions if isinstance(a, Move) for f in (a.src, a.dst)]
    for name in fields:
        if name not in FIELD_BITS:
            raise FlowRejected(f"{where}: unknown field {name}")
        # Prerequisites chain (tcp_dst needs ip_proto=6, which needs eth_type=IPv4).
        while name in PREREQUISITES:
            needed, allowed = PREREQUISITES[name]
            if _exact(entry, needed) not in allowed:
                raise FlowRejected(f"{where}: {name} needs {needed} in {sorted(allowed)}")
            name = needed
    for action in entry.actions:
        if isinstance(action, Move) and (action.n_bits != FIELD_BITS[action.src] or action.n_bits != FIELD_BITS[action.dst]):
            raise FlowRejected(f"{where}: the fake only models whole-field moves, got {action}")
        if isinstance(action, Output) and not (0 < action.port < pipeline.OFPP_MAX or action.port > pipeline.OFPP_MAX):
            raise FlowRejected(f"{where}: bad output port {action.port}")
    if entry.goto is not None and entry.goto <= entry.table:
        raise FlowRejected(f"{where}: goto {entry.goto} is not a later table")


# ---------------------------------------------------------------------------
# What happened to a packet.
# ---------------------------------------------------------------------------
Hop = tuple[int, int]  # (dpid, in_port)


@dataclass(frozen=True)
class Delivery:
    """A copy of the frame left an edge port: (dpid, port), the headers as sent, and who is there."""

    dpid: int
    port: int
    packet: dict[str, Any]
    hosts: tuple[str, ...]
    path: tuple[Hop, ...]

    @property
    def host(self) -> str | None:
        return self.hosts[0] if len(self.hosts) == 1 else None

    @property
    def at(self) -> tuple[int, int]:
        return (self.dpid, self.port)


@dataclass(frozen=True)
class Punt:
    """A copy went to the controller (a packet-in) from table `table` of switch `dpid`."""

    dpid: int
    in_port: int
    table: int
    cookie: int
    packet: dict[str, Any]


@dataclass(frozen=True)
class Loop:
    """The same frame entered a (dpid, in_port) a second time in this trace, or ran past the hop limit."""

    dpid: int
    in_port: int
    packet: dict[str, Any]
    path: tuple[Hop, ...]


@dataclass(frozen=True)
class Drop:
    """A copy ended without leaving the switch: no matching entry, or an output to a missing or down port."""

    dpid: int
    in_port: int
    reason: str


@dataclass
class Trace:
    """Everything one injected frame caused across the network."""

    deliveries: list[Delivery] = field(default_factory=list)
    punts: list[Punt] = field(default_factory=list)
    loops: list[Loop] = field(default_factory=list)
    drops: list[Drop] = field(default_factory=list)

    def delivered_to(self) -> list[tuple[int, int]]:
        """(dpid, port) of every delivery, sorted, duplicates kept (so a duplicate is visible)."""
        return sorted(d.at for d in self.deliveries)

    @property
    def to_controller(self) -> bool:
        return bool(self.punts)


# ---------------------------------------------------------------------------
# The network.
# ---------------------------------------------------------------------------
class FakeNetwork:
    """Switches holding `tables`, cabled as `wiring.links`, with hosts where `wiring.hosts` says.

    The wiring is usually the topology the tables were compiled from, but a test may pass another
    one (cabling the controller has not discovered yet, a link that is down in reality).
    """

    def __init__(self, tables: Mapping[int, Iterable[FlowEntry] | Mapping[int, FlowEntry]], wiring: Topology) -> None:
        self.tables: dict[int, dict[int, list[FlowEntry]]] = {}
        for dpid, entries in tables.items():
            flows = entries.values() if isinstance(entries, Mapping) else entries
            by_table: dict[int, list[FlowEntry]] = {}
            for entry in flows:
                check_entry(entry)
                by_table.setdefault(entry.table, []).append(entry)
            self.tables[dpid] = {t: sorted(es, key=lambda e: -e.priority) for t, es in by_table.items()}
        self.wiring = wiring
        self.peer: dict[PortRef, PortRef] = {}
        for link in wiring.links:
            self.peer[link.a] = link.b
            self.peer[link.b] = link.a
        self.hosts_at: dict[tuple[int, int], tuple[str, ...]] = {}
        for host in sorted(wiring.hosts.values(), key=lambda h: h.mac):
            self.hosts_at[(host.dpid, host.port)] = (*self.hosts_at.get((host.dpid, host.port), ()), host.mac)

    @classmethod
    def compile(cls, topo: Topology) -> FakeNetwork:
        """Compile the desired tables of `topo` and wire them as `topo` says."""
        from apps.desired import desired_tables

        return cls(desired_tables(topo), topo)

    # -- lookups --------------------------------------------------------------
    def lookup(self, dpid: int, table: int, packet: Mapping[str, Any]) -> FlowEntry | None:
        best: FlowEntry | None = None
        for entry in self.tables.get(dpid, {}).get(table, []):
            if best is not None and entry.priority < best.priority:
                break
            if entry_matches(entry, packet):
                if best is not None:
                    raise AmbiguousLookup(f"switch {dpid} table {table}: {best} and {entry} both match {dict(packet)}")
                best = entry
        return best

    def _port_usable(self, dpid: int, port_no: int) -> bool:
        sw = self.wiring.switches.get(dpid)
        port: Port | None = sw.ports.get(port_no) if sw else None
        return bool(port and port.up)

    # -- one switch -------------------------------------------------------------
    def _through_switch(self, dpid: int, in_port: int, packet: dict[str, Any], trace: Trace) -> list[tuple[int, dict[str, Any]]]:
        """Run the pipeline of one switch; return (out port, headers) of every copy it sends out."""
        headers = {**packet, "in_port": in_port}
        outputs: list[tuple[int, dict[str, Any]]] = []
        table: int | None = pipeline.INGRESS
        while table is not None:
            entry = self.lookup(dpid, table, headers)
            if entry is None:
                if not outputs:
                    trace.drops.append(Drop(dpid, in_port, f"no match in table {table}"))
                break
            for action in entry.actions:
                if isinstance(action, Output):
                    sent = {k: v for k, v in headers.items() if k != "in_port"}
                    if action.port == pipeline.OFPP_CONTROLLER:
                        trace.punts.append(Punt(dpid, in_port, table, entry.cookie, sent))
                    elif action.port == pipeline.OFPP_IN_PORT:
                        outputs.append((in_port, sent))
                    elif action.port == in_port:
                        trace.drops.append(Drop(dpid, in_port, f"output to the ingress port {in_port}"))
                    elif action.port >= pipeline.OFPP_MAX:
                        raise FlowRejected(f"the fake does not model output to reserved port {action.port:#x}")
                    else:
                        outputs.append((action.port, sent))
                elif isinstance(action, SetField):
                    headers[action.name] = action.value
                elif isinstance(action, Move):
                    if headers.get(action.src) is None:
                        raise AssertionError(f"switch {dpid}: move from {action.src}, which the packet lacks: {headers}")
                    headers[action.dst] = headers[action.src]
            table = entry.goto
        return outputs

    # -- the network --------------------------------------------------------------
    def trace(self, dpid: int, in_port: int, packet: Mapping[str, Any], hop_limit: int = HOP_LIMIT) -> Trace:
        """Inject `packet` into switch `dpid` on `in_port` and follow every copy until it leaves the network."""
        result = Trace()
        entered: set[tuple[int, int, tuple]] = set()  # (dpid, in_port, headers) of every copy so far
        queue: deque[tuple[int, int, dict[str, Any], tuple[Hop, ...]]] = deque([(dpid, in_port, dict(packet), ())])
        while queue:
            here_dpid, here_port, headers, path = queue.popleft()
            path = (*path, (here_dpid, here_port))
            seen = (here_dpid, here_port, tuple(sorted(headers.items())))
            if seen in entered or len(path) > hop_limit or len(entered) >= MAX_COPIES:
                result.loops.append(Loop(here_dpid, here_port, headers, path))
                continue
            entered.add(seen)
            for out_port, sent in self._through_switch(here_dpid, here_port, headers, result):
                peer = self.peer.get(PortRef(here_dpid, out_port))
                if not self._port_usable(here_dpid, out_port):
                    result.drops.append(Drop(here_dpid, here_port, f"output to missing or down port {out_port}"))
                elif peer is not None:
                    queue.append((peer.dpid, peer.port, sent, path))
                else:
                    hosts = self.hosts_at.get((here_dpid, out_port), ())
                    result.deliveries.append(Delivery(here_dpid, out_port, sent, hosts, path))
        return result

    def send(self, host: Host, packet: Mapping[str, Any]) -> Trace:
        """A frame sent by `host` into its port."""
        return self.trace(host.dpid, host.port, packet)

    def edge_ports(self) -> set[tuple[int, int]]:
        """Every (dpid, port) a frame can leave the network by: live ports with no link on them."""
        return {
            (dpid, port)
            for dpid, sw in self.wiring.switches.items()
            for port in sw.live_ports()
            if PortRef(dpid, port) not in self.peer
        }


# ---------------------------------------------------------------------------
# Frames a host sends.
# ---------------------------------------------------------------------------
def first_ip(host: Host) -> str:
    return sorted(host.ips)[0]


def ipv4_frame(src: Host, dst_mac: str, dst_ip: str = "10.255.255.254") -> dict[str, Any]:
    ip = first_ip(src) if src.ips else "0.0.0.0"
    return {"eth_src": src.mac, "eth_dst": dst_mac, "eth_type": pipeline.ETH_TYPE_IPV4, "ipv4_src": ip, "ipv4_dst": dst_ip}


def unicast_frame(src: Host, dst: Host) -> dict[str, Any]:
    return ipv4_frame(src, dst.mac, first_ip(dst) if dst.ips else "10.255.255.254")


def arp_request(src: Host, target_ip: str, sender_ip: str | None = None) -> dict[str, Any]:
    return {
        "eth_src": src.mac,
        "eth_dst": BROADCAST,
        "eth_type": pipeline.ETH_TYPE_ARP,
        "arp_op": 1,
        "arp_sha": src.mac,
        "arp_spa": sender_ip if sender_ip is not None else first_ip(src),
        "arp_tha": "00:00:00:00:00:00",
        "arp_tpa": target_ip,
    }


def lldp_frame(src_mac: str = "02:00:00:00:00:01") -> dict[str, Any]:
    return {"eth_src": src_mac, "eth_dst": "01:80:c2:00:00:0e", "eth_type": pipeline.ETH_TYPE_LLDP}


# ---------------------------------------------------------------------------
# Networks to test against.
# ---------------------------------------------------------------------------
SPINE_BASE = 0x100
LEAF_BASE = 0x200
HYPERVISOR_BASE = 0x1000


@dataclass
class LeafSpine:
    """A leaf-spine fabric as the controller would learn it: every leaf cabled to every spine,
    hypervisor switches under the leaves (optionally dual-homed), VMs on the hypervisors."""

    topo: Topology
    spines: list[int]
    leaves: list[int]
    hypervisors: list[int]
    vms: list[Host]


def confirm_edges(topo: Topology, now: float = 0.0) -> None:
    """Let the edge-confirmation clock run out: every up port with no link now faces hosts."""
    topo.confirm_edge_ports(now)
    topo.confirm_edge_ports(now + EDGE_CONFIRM_TIME)


def vm_mac(leaf: int, hv: int, vm: int) -> str:
    return f"02:00:00:{leaf:02x}:{hv:02x}:{vm:02x}"


def vm_ip(leaf: int, hv: int, vm: int) -> str:
    return f"10.{leaf}.{hv}.{vm + 10}"


def build_leaf_spine(
    spines: int = 2,
    leaves: int = 3,
    hypervisors_per_leaf: int = 2,
    vms_per_hypervisor: int = 2,
    dual_homed: bool = False,
    spare_ports: int = 1,
    order: Any = None,
) -> LeafSpine:
    """Build the model through the Topology API, the way the controller learns it.

    Leaf ports 1..spines go to the spines, the next ones to hypervisors; a hypervisor's ports 1
    (and 2 when dual-homed, to the next leaf) go up, then one port per VM, then `spare_ports` empty
    edge ports. `order`, a random.Random, shuffles the order in which facts are learned.
    """
    spine_ids = [SPINE_BASE + s for s in range(1, spines + 1)]
    leaf_ids = [LEAF_BASE + leaf for leaf in range(1, leaves + 1)]
    ports: dict[int, list[int]] = {d: [] for d in spine_ids + leaf_ids}
    links: list[tuple[PortRef, PortRef]] = []
    for li, leaf in enumerate(leaf_ids, start=1):
        for si, spine in enumerate(spine_ids, start=1):
            links.append((PortRef(leaf, si), PortRef(spine, li)))
            ports[leaf].append(si)
            ports[spine].append(li)
    hv_ids: list[int] = []
    vm_facts: list[tuple[str, int, int, str]] = []
    uplinks = 2 if dual_homed and leaves > 1 else 1
    for li in range(1, leaves + 1):
        for h in range(1, hypervisors_per_leaf + 1):
            hv = HYPERVISOR_BASE + li * 0x10 + h
            hv_ids.append(hv)
            ports[hv] = []
            for up in range(uplinks):
                parent = leaf_ids[(li - 1 + up) % leaves]
                parent_port = spines + (up * hypervisors_per_leaf) + h
                links.append((PortRef(hv, up + 1), PortRef(parent, parent_port)))
                ports[hv].append(up + 1)
                ports[parent].append(parent_port)
            for v in range(1, vms_per_hypervisor + 1):
                port = uplinks + v
                ports[hv].append(port)
                vm_facts.append((vm_mac(li, h, v), hv, port, vm_ip(li, h, v)))
            ports[hv].extend(range(uplinks + vms_per_hypervisor + 1, uplinks + vms_per_hypervisor + spare_ports + 1))

    def port_list(dpid: int) -> list[Port]:
        mac = f"aa:00:{dpid >> 8 & 0xFF:02x}:{dpid & 0xFF:02x}:00"
        listed = [Port(p, f"s{dpid:x}-eth{p}", f"{mac}:{p:02x}") for p in ports[dpid]]
        return [*listed, Port(pipeline.OFPP_LOCAL, f"s{dpid:x}")]

    topo = Topology()
    switch_ids = spine_ids + leaf_ids + hv_ids
    switch_order, link_order, vm_order = list(switch_ids), list(links), list(vm_facts)
    if order is not None:
        order.shuffle(switch_order)
        order.shuffle(link_order)
        order.shuffle(vm_order)
        link_order = [(b, a) if order.random() < 0.5 else (a, b) for a, b in link_order]
    for dpid in switch_order:
        topo.switch_connected(dpid)
        topo.set_ports(dpid, port_list(dpid))
    for a, b in link_order:
        topo.link_seen(a, b, 0.0)
    confirm_edges(topo)
    for mac, dpid, port, ip in vm_order:
        topo.host_seen(mac, dpid, port, ip)
    vms = sorted(topo.hosts.values(), key=lambda h: h.mac)
    return LeafSpine(topo, spine_ids, leaf_ids, hv_ids, vms)


def build_mesh(edges: Iterable[tuple[int, int]], hosts_per_switch: int = 1) -> tuple[Topology, list[Host]]:
    """Any switch graph (dpids 1..n, one link per edge, ports numbered in edge order), with
    `hosts_per_switch` hosts on each switch after its link ports."""
    topo = Topology()
    next_port: dict[int, int] = {}
    cabling: list[tuple[PortRef, PortRef]] = []
    for a, b in edges:
        pa, pb = next_port.get(a, 1), next_port.get(b, 1)
        next_port[a], next_port[b] = pa + 1, pb + 1
        cabling.append((PortRef(a, pa), PortRef(b, pb)))
    host_facts = []
    for dpid in sorted(next_port):
        first = next_port[dpid]
        for i in range(hosts_per_switch):
            host_facts.append((f"02:01:{dpid >> 8 & 0xFF:02x}:{dpid & 0xFF:02x}:00:{i + 1:02x}", dpid, first + i))
        next_port[dpid] = first + hosts_per_switch
    for dpid, last in sorted(next_port.items()):
        topo.switch_connected(dpid)
        topo.set_ports(dpid, [Port(p) for p in range(1, last)])
    for a, b in cabling:
        topo.link_seen(a, b, 0.0)
    confirm_edges(topo)
    for n, (mac, dpid, port) in enumerate(host_facts):
        topo.host_seen(mac, dpid, port, f"10.1.{n // 200}.{n % 200 + 1}")
    return topo, sorted(topo.hosts.values(), key=lambda h: h.mac)
