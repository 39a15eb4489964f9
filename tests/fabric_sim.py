"""A discrete-event simulation of a cabled fabric and the controller shell around the learner.

The physical side: switches with one MAC per port, cables between switch ports, VMs on hypervisor
ports. Each switch forwards with the flow table it holds now (FakeNetwork, over the TRUE cabling):
  - never connected to the controller: no flows, so it drops everything (OpenFlow fail mode secure);
  - connected but not synced yet: the base flows the shell installs at connect (LLDP and the
    table-miss to the controller);
  - synced: the tables the simulated controller last compiled from the learner's model;
  - disconnected after that: the tables it last held, forwarding with them (its punts are lost).
Frames are header dicts inside a switch and real Ethernet bytes on the control channel (the
learner parses bytes; `encode` and `decode` convert).

The shell side does what controller/app.py does with the learner's Outcomes: send packet-outs,
coalesce recompiles behind a short delay, send the changed tables to every connected and synced
switch over its control channel (they take effect when they arrive there), and once every switch
that got new flows has answered a barrier (or a second has passed), send what waits for the new
flows and run the deferred steps.

The noise: the kernel's IPv6 chatter (router solicitations, MLD reports) from every switch port
cabled to another switch, whether or not the switch is connected (Mininet's switch-side veths
live in the root namespace with IPv6 on); VMs sending ARP, gratuitous ARP, IPv4 and IPv6 and
answering ARP requests for their address; control-channel latency (ordered per switch, sometimes
longer than the edge hold time); late connects, late port-ups, cable flaps, outages; optionally a
pair of malicious VMs that relay each other's probes.

Deterministic per seed: every random choice comes from a random.Random seeded by the caller.
"""

from __future__ import annotations

import functools
import heapq
import ipaddress
import itertools
import random
import struct
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from apps import pipeline
from apps.context import PolicyState
from apps.desired import DesiredTables, desired_tables
from apps.flows import FlowEntry
from apps.forwarding import base_flows, punt_reason
from apps.identity import Identities
from tests.fakeoftable import FakeNetwork, Loop, check_entry, link_local, policy_state, vm_name
from topology.learner import Learner, Outcome, PacketOut, Punt
from topology.model import ROLE_FABRIC, ROLE_HYPERVISOR, Host, Link, Port, PortRef, Switch, Topology

KEY = b"fabric-sim-key-fabric-sim-key-!!"
PROBE_PERIOD = 1.0  # the shell's tick (settings.lldp_interval)
EDGE_CHECK_INTERVAL = 0.05  # the shell's edge loop (controller/app.py)
FLOWS_IN_PLACE_MAX_WAIT = 1.0  # controller/app.py: a switch that does not answer a barrier is not waited for
UNKNOWN_IP = "10.255.255.254"  # an address no VM has: ARP for it is flooded, never answered

# ---------------------------------------------------------------------------
# Frames: header dicts (what FakeNetwork traces) <-> Ethernet bytes (what the learner reads).
# ---------------------------------------------------------------------------
MIN_FRAME = 60  # an Ethernet frame without its FCS is padded to this
_ETH_KEYS = {"eth_dst", "eth_src", "eth_type"}
_ARP_KEYS = _ETH_KEYS | {"arp_op", "arp_sha", "arp_spa", "arp_tha", "arp_tpa"}
_IPV4_KEYS = _ETH_KEYS | {"ipv4_src", "ipv4_dst", "ip_proto", "icmpv4_type", "icmpv4_code", "icmp_id"}
_IPV6_KEYS = _ETH_KEYS | {"ipv6_src", "ipv6_dst", "ip_proto", "icmpv6_type", "icmpv6_code"}
_LLDP_KEYS = _ETH_KEYS | {"payload"}


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def encode(headers: Mapping[str, Any]) -> bytes:
    """The Ethernet frame for a header dict: ARP, IPv4 (ICMP echo), IPv6 (ICMPv6) or LLDP (whose
    dict carries its bytes as `payload`). Refuses fields it cannot encode, so that what the
    learner reads is exactly what the switch traced."""
    eth_type = headers["eth_type"]
    allowed = {
        pipeline.ETH_TYPE_ARP: _ARP_KEYS,
        pipeline.ETH_TYPE_IPV4: _IPV4_KEYS,
        pipeline.ETH_TYPE_IPV6: _IPV6_KEYS,
        pipeline.ETH_TYPE_LLDP: _LLDP_KEYS,
    }.get(eth_type)
    if allowed is None or not set(headers) <= allowed:
        raise ValueError(f"cannot encode {dict(headers)}")
    if eth_type == pipeline.ETH_TYPE_LLDP:
        return headers["payload"]
    frame = _mac_bytes(headers["eth_dst"]) + _mac_bytes(headers["eth_src"]) + struct.pack("!H", eth_type)
    if eth_type == pipeline.ETH_TYPE_ARP:
        frame += struct.pack("!HHBBH", 1, pipeline.ETH_TYPE_IPV4, 6, 4, headers["arp_op"])
        frame += _mac_bytes(headers["arp_sha"]) + ipaddress.IPv4Address(headers["arp_spa"]).packed
        frame += _mac_bytes(headers["arp_tha"]) + ipaddress.IPv4Address(headers["arp_tpa"]).packed
    elif eth_type == pipeline.ETH_TYPE_IPV4:
        proto = headers["ip_proto"]
        body = b""
        if proto == 1:
            body = struct.pack("!BBHHH", headers["icmpv4_type"], headers["icmpv4_code"], 0, headers.get("icmp_id", 0), 0)
        frame += struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(body), 0, 0, 64, proto, 0)
        frame += ipaddress.IPv4Address(headers["ipv4_src"]).packed + ipaddress.IPv4Address(headers["ipv4_dst"]).packed
        frame += body
    else:
        proto = headers["ip_proto"]
        body = struct.pack("!BBHI", headers["icmpv6_type"], headers["icmpv6_code"], 0, 0) if proto == 58 else b""
        frame += struct.pack("!IHBB", 0x60000000, len(body), proto, 255)
        frame += ipaddress.IPv6Address(headers["ipv6_src"]).packed + ipaddress.IPv6Address(headers["ipv6_dst"]).packed
        frame += body
    return frame + bytes(max(0, MIN_FRAME - len(frame)))


def decode(frame: bytes) -> dict[str, Any]:
    """The header dict of a frame `encode` made (or an LLDP frame)."""
    eth_type = struct.unpack("!H", frame[12:14])[0]
    headers: dict[str, Any] = {"eth_dst": _mac_text(frame[0:6]), "eth_src": _mac_text(frame[6:12]), "eth_type": eth_type}
    body = frame[14:]
    if eth_type == pipeline.ETH_TYPE_LLDP:
        headers["payload"] = frame
    elif eth_type == pipeline.ETH_TYPE_ARP:
        headers["arp_op"] = struct.unpack("!H", body[6:8])[0]
        headers["arp_sha"] = _mac_text(body[8:14])
        headers["arp_spa"] = str(ipaddress.IPv4Address(body[14:18]))
        headers["arp_tha"] = _mac_text(body[18:24])
        headers["arp_tpa"] = str(ipaddress.IPv4Address(body[24:28]))
    elif eth_type == pipeline.ETH_TYPE_IPV4:
        proto = body[9]
        headers["ip_proto"] = proto
        headers["ipv4_src"] = str(ipaddress.IPv4Address(body[12:16]))
        headers["ipv4_dst"] = str(ipaddress.IPv4Address(body[16:20]))
        if proto == 1:
            icmp_type, icmp_code, _, ident, _ = struct.unpack("!BBHHH", body[20:28])
            headers.update(icmpv4_type=icmp_type, icmpv4_code=icmp_code, icmp_id=ident)
    elif eth_type == pipeline.ETH_TYPE_IPV6:
        proto = body[6]
        headers["ip_proto"] = proto
        headers["ipv6_src"] = str(ipaddress.IPv6Address(body[8:24]))
        headers["ipv6_dst"] = str(ipaddress.IPv6Address(body[24:40]))
        if proto == 58:
            headers["icmpv6_type"], headers["icmpv6_code"] = body[40], body[41]
    else:
        raise ValueError(f"cannot decode ether type {eth_type:#06x}")
    return headers


# Frames the simulation sends.
def arp_request(mac: str, ip: str, target_ip: str) -> dict[str, Any]:
    return {
        "eth_dst": "ff:ff:ff:ff:ff:ff",
        "eth_src": mac,
        "eth_type": pipeline.ETH_TYPE_ARP,
        "arp_op": 1,
        "arp_sha": mac,
        "arp_spa": ip,
        "arp_tha": "00:00:00:00:00:00",
        "arp_tpa": target_ip,
    }


def arp_reply(mac: str, ip: str, to_mac: str, to_ip: str) -> dict[str, Any]:
    return {
        "eth_dst": to_mac,
        "eth_src": mac,
        "eth_type": pipeline.ETH_TYPE_ARP,
        "arp_op": 2,
        "arp_sha": mac,
        "arp_spa": ip,
        "arp_tha": to_mac,
        "arp_tpa": to_ip,
    }


def ping(mac: str, ip: str, to_mac: str, to_ip: str, ident: int = 1) -> dict[str, Any]:
    return {
        "eth_dst": to_mac,
        "eth_src": mac,
        "eth_type": pipeline.ETH_TYPE_IPV4,
        "ipv4_src": ip,
        "ipv4_dst": to_ip,
        "ip_proto": 1,
        "icmpv4_type": 8,
        "icmpv4_code": 0,
        "icmp_id": ident,
    }


def ipv6_chatter(mac: str, solicitation: bool = True) -> dict[str, Any]:
    """What the kernel sends from an interface with IPv6 on: a router solicitation to all routers,
    or an MLDv2 report to all MLDv2 routers."""
    group, dst_mac, icmp_type = ("ff02::2", "33:33:00:00:00:02", 133) if solicitation else ("ff02::16", "33:33:00:00:00:16", 143)
    return {
        "eth_dst": dst_mac,
        "eth_src": mac,
        "eth_type": pipeline.ETH_TYPE_IPV6,
        "ipv6_src": link_local(mac),
        "ipv6_dst": group,
        "ip_proto": 58,
        "icmpv6_type": icmp_type,
        "icmpv6_code": 0,
    }


# ---------------------------------------------------------------------------
# The physical fabric.
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SwitchSpec:
    dpid: int
    name: str
    role: str  # ROLE_FABRIC or ROLE_HYPERVISOR
    ports: tuple[int, ...]


@dataclass(frozen=True)
class Vm:
    name: str
    mac: str
    ip: str
    at: PortRef


@dataclass
class Fabric:
    """Switches, the cables between their ports, VMs on hypervisor ports, and up ports with
    nothing behind them (`spare`)."""

    switches: dict[int, SwitchSpec]
    cables: list[tuple[PortRef, PortRef]]
    vms: list[Vm]
    spare: list[PortRef] = field(default_factory=list)

    def port_name(self, ref: PortRef) -> str:
        return f"{self.switches[ref.dpid].name}-eth{ref.port}"

    @staticmethod
    def port_mac(ref: PortRef) -> str:
        return f"5a:{ref.dpid >> 8 & 0xFF:02x}:{ref.dpid & 0xFF:02x}:00:{ref.port >> 8 & 0xFF:02x}:{ref.port & 0xFF:02x}"

    @staticmethod
    def local_mac(dpid: int) -> str:
        return f"5a:{dpid >> 8 & 0xFF:02x}:{dpid & 0xFF:02x}:ff:ff:fe"

    def true_links(self) -> set[Link]:
        return {Link.between(a, b) for a, b in self.cables}

    def vm_at(self) -> dict[PortRef, Vm]:
        return {vm.at: vm for vm in self.vms}

    def hosts(self) -> list[Host]:
        return [Host(vm.mac, frozenset({vm.ip}), vm.at.dpid, vm.at.port) for vm in self.vms]

    def wiring(self, up: Callable[[PortRef], bool]) -> Topology:
        """The true cabling and hosts as a Topology (what FakeNetwork follows); `up` says which
        ports are up at the start."""
        wiring = Topology()
        for spec in self.switches.values():
            ports = {p: self.port(PortRef(spec.dpid, p), up(PortRef(spec.dpid, p))) for p in spec.ports}
            wiring.switches[spec.dpid] = Switch(spec.dpid, spec.name, ports, connected=True)
        wiring.links.update(dict.fromkeys(self.true_links(), 0.0))
        wiring.hosts.update({h.mac: h for h in self.hosts()})
        return wiring

    def port(self, ref: PortRef, up: bool = True) -> Port:
        return Port(ref.port, self.port_name(ref), self.port_mac(ref), up)

    def local_port(self, dpid: int) -> Port:
        return Port(pipeline.OFPP_LOCAL, self.switches[dpid].name, self.local_mac(dpid), True)

    def describe(self) -> str:
        names = {d: s.name for d, s in self.switches.items()}
        cables = ", ".join(f"{names[a.dpid]}:{a.port}-{names[b.dpid]}:{b.port}" for a, b in self.cables)
        vms = ", ".join(f"{vm.name}@{names[vm.at.dpid]}:{vm.at.port}" for vm in self.vms)
        spare = ", ".join(f"{names[r.dpid]}:{r.port}" for r in self.spare) or "none"
        return f"cables: {cables}\nvms: {vms}\nspare ports: {spare}"


class FabricBuilder:
    """Numbers ports in the order they are cabled."""

    def __init__(self) -> None:
        self.names: dict[int, tuple[str, str]] = {}
        self.next_port: dict[int, int] = {}
        self.cables: list[tuple[PortRef, PortRef]] = []
        self.vms: list[Vm] = []
        self.spare: list[PortRef] = []

    def switch(self, dpid: int, name: str, role: str = ROLE_FABRIC) -> int:
        self.names[dpid] = (name, role)
        self.next_port[dpid] = 1
        return dpid

    def port(self, dpid: int) -> PortRef:
        ref = PortRef(dpid, self.next_port[dpid])
        self.next_port[dpid] += 1
        return ref

    def cable(self, a: int, b: int) -> tuple[PortRef, PortRef]:
        pair = (self.port(a), self.port(b))
        self.cables.append(pair)
        return pair

    def vm(self, hypervisor: int) -> Vm:
        ref = self.port(hypervisor)
        n = sum(1 for vm in self.vms if vm.at.dpid == hypervisor) + 1
        hv = self.names[hypervisor][0]
        vm = Vm(f"{hv}-vm{n}", f"02:00:{hypervisor >> 8 & 0xFF:02x}:{hypervisor & 0xFF:02x}:00:{n:02x}",
                f"10.{hypervisor >> 8 & 0xFF}.{hypervisor & 0xFF}.{10 + n}", ref)  # fmt: skip
        self.vms.append(vm)
        return vm

    def spare_port(self, dpid: int) -> PortRef:
        ref = self.port(dpid)
        self.spare.append(ref)
        return ref

    def build(self) -> Fabric:
        switches = {
            dpid: SwitchSpec(dpid, name, role, tuple(range(1, self.next_port[dpid]))) for dpid, (name, role) in self.names.items()
        }
        return Fabric(switches, list(self.cables), list(self.vms), list(self.spare))


HYPERVISOR_BASE = 0x100


def random_fabric(rng: random.Random) -> Fabric:
    """2-7 fabric switches on a random connected graph with extra cables (loops, sometimes
    parallel cables), 1-2 VMs on each of the hypervisors hanging off them (some dual-homed), and
    now and then a spare port."""
    build = FabricBuilder()
    n = rng.randint(2, 7)
    fabric = [build.switch(i, f"s{i}") for i in range(1, n + 1)]
    pairs = [(fabric[i], fabric[rng.randrange(i)]) for i in range(1, n)]  # a random spanning tree
    for _ in range(rng.randint(0, n)):
        a, b = rng.sample(fabric, 2)
        pairs.append((a, b))  # a loop, or a parallel cable when the pair is already cabled
    rng.shuffle(pairs)
    hypervisors: list[tuple[int, list[int]]] = []
    for parent in fabric:
        for _ in range(rng.choice((0, 0, 1, 1, 2))):
            uplinks = [parent]
            if n > 1 and rng.random() < 0.15:
                uplinks.append(rng.choice([f for f in fabric if f != parent]))
            hypervisors.append((HYPERVISOR_BASE + len(hypervisors) + 1, uplinks))
    if not hypervisors:
        hypervisors.append((HYPERVISOR_BASE + 1, [rng.choice(fabric)]))
    for dpid, _ in hypervisors:
        build.switch(dpid, f"hv{dpid - HYPERVISOR_BASE}", ROLE_HYPERVISOR)
    cabling = pairs + [(up, hv) for hv, uplinks in hypervisors for up in uplinks]
    rng.shuffle(cabling)
    for a, b in cabling:
        build.cable(*((a, b) if rng.random() < 0.5 else (b, a)))
    for hv, _ in hypervisors:
        for _ in range(rng.randint(1, 2)):
            build.vm(hv)
        if rng.random() < 0.2:
            build.spare_port(hv)
    return build.build()


def leaf_spine_fabric(spines: int = 3, leaves: int = 3, hypervisors_per_leaf: int = 2, vms: int = 2) -> Fabric:
    """Every leaf cabled to every spine, one leaf-leaf cross cable (leaf1-leaf2), hypervisors
    under the leaves with their VMs."""
    build = FabricBuilder()
    spine_ids = [build.switch(s, f"spine{s}") for s in range(1, spines + 1)]
    leaf_ids = [build.switch(0x10 + i, f"leaf{i}") for i in range(1, leaves + 1)]
    for leaf in leaf_ids:
        for spine in spine_ids:
            build.cable(leaf, spine)
    if len(leaf_ids) > 1:
        build.cable(leaf_ids[0], leaf_ids[1])
    for i, leaf in enumerate(leaf_ids, start=1):
        for h in range(1, hypervisors_per_leaf + 1):
            hv = build.switch(HYPERVISOR_BASE + i * 0x10 + h, f"hv{i}{h}", ROLE_HYPERVISOR)
            build.cable(hv, leaf)
            for _ in range(vms):
                build.vm(hv)
    return build.build()


# ---------------------------------------------------------------------------
# What happens when: the plan of a run.
# ---------------------------------------------------------------------------
@dataclass
class Plan:
    """The timeline of one run. Times in seconds from the controller's start."""

    connect: dict[int, float]  # dpid -> when it first connects
    outages: list[tuple[int, float, float]] = field(default_factory=list)  # (dpid, disconnects, reconnects)
    cable_up: dict[int, float] = field(default_factory=dict)  # cable index -> when it comes up (else up at 0)
    cable_flaps: list[tuple[int, float, float]] = field(default_factory=list)  # (cable index, down, up again)
    vm_up: dict[str, float] = field(default_factory=dict)  # VM name -> when its port comes up (else at 0)
    declare_at: float | None = None  # when OVSDB declares the VM ports (None: never)
    inventory: bool = False  # the VMs are in the inventory (set_inventory_macs and the policy)
    roles: bool = False  # dp-desc names each switch's role
    slow: float = 0.0  # share of control messages delayed past the edge hold time
    relay: tuple[str, str] | None = None  # two VMs that re-send each other's probes
    relay_from: float = 0.0
    vm_chatter: bool = True
    # Flows take effect on every switch the moment they are compiled, as if updates were atomic
    # across the fabric (else each switch gets them over its control channel, with its latency).
    instant_flows: bool = False

    def last_change(self) -> float:
        times = [*self.connect.values(), *self.cable_up.values(), *self.vm_up.values()]
        times += [t for _, down, up in self.outages for t in (down, up)]
        times += [t for _, down, up in self.cable_flaps for t in (down, up)]
        if self.declare_at is not None:
            times.append(self.declare_at)
        if self.relay is not None:
            times.append(self.relay_from)
        return max(times, default=0.0)


def random_plan(fabric: Fabric, rng: random.Random) -> Plan:
    """Fabric switches connect within 3 s; a hypervisor often connects seconds after its first
    uplink's switch; some cables and VM ports come up late, some cables flap, one switch may go
    away and come back; VM ports may be declared, or the VMs be in the inventory."""
    connect: dict[int, float] = {}
    for dpid, spec in sorted(fabric.switches.items()):
        if spec.role == ROLE_FABRIC:
            connect[dpid] = round(rng.uniform(0, 3), 3)
    for dpid, spec in sorted(fabric.switches.items()):
        if spec.role == ROLE_HYPERVISOR:
            parents = [b.dpid if a.dpid == dpid else a.dpid for a, b in fabric.cables if dpid in (a.dpid, b.dpid)]
            if rng.random() < 0.5:
                connect[dpid] = round(connect[parents[0]] + rng.uniform(1, 5), 3)
            else:
                connect[dpid] = round(rng.uniform(0, 6), 3)
    plan = Plan(connect)
    for index in range(len(fabric.cables)):
        if rng.random() < 0.15:
            plan.cable_up[index] = round(rng.uniform(0, 6), 3)
        elif rng.random() < 0.1:
            down = rng.uniform(0.5, 6)
            plan.cable_flaps.append((index, round(down, 3), round(down + rng.uniform(0.05, 2), 3)))
    for vm in fabric.vms:
        if rng.random() < 0.2:
            plan.vm_up[vm.name] = round(rng.uniform(0, 6), 3)
    if rng.random() < 0.3:
        dpid = rng.choice(sorted(fabric.switches))
        down = connect[dpid] + rng.uniform(0.3, 3)
        plan.outages.append((dpid, round(down, 3), round(down + rng.uniform(0.2, 4), 3)))
    mode = rng.choice(("none", "declared", "inventory"))
    if mode == "declared":
        plan.declare_at = round(rng.uniform(0, 3), 3)
    plan.inventory = mode == "inventory"
    plan.roles = rng.random() < 0.3
    plan.slow = rng.choice((0.0, 0.02, 0.05))
    return plan


# ---------------------------------------------------------------------------
# The simulation.
# ---------------------------------------------------------------------------
@dataclass
class Stats:
    events: int = 0
    packet_ins: int = 0
    packet_outs: int = 0
    compiles: int = 0
    loops: list[tuple[float, Loop]] = field(default_factory=list)  # transient loops while learning


class Simulation:
    """One fabric, one plan, one learner, one clock."""

    def __init__(self, fabric: Fabric, plan: Plan, seed: int = 0) -> None:
        self.fabric, self.plan = fabric, plan
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[..., None], tuple]] = []
        self._seq = itertools.count()
        self.learner = Learner(key=KEY, now=0.0)
        late = {ref for i in plan.cable_up for ref in fabric.cables[i]}
        late |= {vm.at for vm in fabric.vms if vm.name in plan.vm_up}
        self.wiring = fabric.wiring(lambda ref: ref not in late)
        self.net = FakeNetwork({}, self.wiring)
        self._checked: set[FlowEntry] = set()
        self.peer = dict(self.net.peer)
        self.vm_at = fabric.vm_at()
        self.vms = {vm.name: vm for vm in fabric.vms}
        self.connected: dict[int, int] = {}  # dpid -> connection number, while connected
        self._connections = itertools.count(1)
        self.synced: set[int] = set()
        self.policy = PolicyState()
        if plan.inventory:
            self.policy = policy_state({h: {} for h in fabric.hosts()})
            self.learner.set_inventory_macs({h.mac: vm_name(h) for h in fabric.hosts()})
        self.identities = Identities()
        self.desired: DesiredTables = {}
        self._dirty = False
        self._compile_pending = False
        self._after_compile: list[Callable[[float], None]] = []
        self._sent: dict[int, frozenset[int]] = {}  # dpid -> cookies of the table last sent to it
        self._touched: set[int] = set()  # switches sent flows since the last barrier round
        self._flow_waits: list[tuple[set[tuple[int, int]], list[Callable[[float], None]], float]] = []
        self._xids = itertools.count(1)
        self._to_controller_free: dict[int, float] = {}
        self._to_switch_free: dict[int, float] = {}
        self.chatter = True
        self.spoke_after_convergence: list[Vm] = []
        self.stats = Stats()
        self._schedule_plan()

    # -- the clock ------------------------------------------------------------------------------
    def at(self, when: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._queue, (max(when, self.now), next(self._seq), action, args))

    def run_until(self, until: float) -> None:
        while self._queue and self._queue[0][0] <= until:
            when, _, action, args = heapq.heappop(self._queue)
            self.now = when
            self.stats.events += 1
            action(*args)
        self.now = max(self.now, until)

    def latency(self) -> float:
        """Control channel latency: mostly under 30 ms, sometimes past the edge hold time."""
        if self.rng.random() < self.plan.slow:
            return self.rng.uniform(0.1, 0.4)
        return self.rng.uniform(0.0, 0.03)

    def _schedule_plan(self) -> None:
        plan, fabric = self.plan, self.fabric
        for dpid, when in plan.connect.items():
            self.at(when, self._connect, dpid)
        for dpid, down, up in plan.outages:
            self.at(down, self._disconnect, dpid)
            self.at(up, self._connect, dpid)
        for index, when in plan.cable_up.items():
            self.at(when, self._set_cable, index, True)
        for index, down, up in plan.cable_flaps:
            self.at(down, self._set_cable, index, False)
            self.at(up, self._set_cable, index, True)
        for name, when in plan.vm_up.items():
            self.at(when, self._set_port, self.vms[name].at, True)
        if plan.declare_at is not None:
            names = [fabric.port_name(vm.at) for vm in fabric.vms]
            self.at(plan.declare_at, lambda: self.carry_out(self.learner.set_declared_vm_interfaces(names, self.now)))
        self.at(self.rng.uniform(0, PROBE_PERIOD), self._tick)
        self.at(self.rng.uniform(0, EDGE_CHECK_INTERVAL), self._check_edges)
        for a, b in fabric.cables:
            for end in (a, b):
                self.at(self.rng.uniform(0, 1), self._switch_port_chatter, end)
        if plan.vm_chatter:
            for vm in fabric.vms:
                self.at(plan.vm_up.get(vm.name, 0.0) + self.rng.uniform(0, 1.5), self._vm_chatter, vm)

    # -- the shell ----------------------------------------------------------------------------------
    def carry_out(self, outcome: Outcome) -> None:
        """controller/app.py carry_out: send now; recompile; then send what waits for the flows."""
        for packet in outcome.send:
            self.packet_out(packet)
        if not (outcome.send_after or outcome.after):
            if outcome.changed:
                self.model_changed()
            return

        def then(now: float) -> None:
            for packet in outcome.send_after:
                self.packet_out(packet)
            for step in outcome.after:
                self.carry_out(step(now))

        if outcome.changed:
            self.model_changed(then)
        elif self._compile_pending:
            self._after_compile.append(then)  # a compile is on its way: wait for it too
        else:
            then(self.now)

    def model_changed(self, then: Callable[[float], None] | None = None) -> None:
        """One compile per burst of changes, a few milliseconds behind them."""
        self._dirty = True
        if then is not None:
            self._after_compile.append(then)
        if not self._compile_pending:
            self._compile_pending = True
            self.at(self.now + self.rng.uniform(0.001, 0.01), self._compile_loop)

    def _compile_loop(self) -> None:
        while self._dirty or self._after_compile:
            if self._dirty:
                self._dirty = False
                self.stats.compiles += 1
                self.desired = desired_tables(self.learner.topo, self.policy, self.identities)
                for dpid in sorted(self.synced):
                    self.reconcile(dpid)
            callbacks, self._after_compile = self._after_compile, []
            if callbacks:
                self._when_flows_in_place(callbacks)
        self._compile_pending = False

    def reconcile(self, dpid: int) -> None:
        """Send the switch its desired table if it differs from the one it was last sent."""
        table = self.desired.get(dpid)
        if table is None or dpid not in self.synced:
            return
        cookies = frozenset(table)
        if self._sent.get(dpid) == cookies:
            return
        self._sent[dpid] = cookies
        self._touched.add(dpid)
        entries = list(table.values())
        if self.plan.instant_flows:
            self.install(dpid, entries)
        else:
            self._to_switch(dpid, lambda: self.install(dpid, entries))

    def _when_flows_in_place(self, callbacks: list[Callable[[float], None]]) -> None:
        """Run the callbacks once every switch sent flows since the last round answered a barrier."""
        touched, self._touched = self._touched, set()
        pending = set()
        for dpid in sorted(touched):
            if dpid not in self.connected:
                continue
            xid = next(self._xids)
            reply = functools.partial(self._flows_confirmed, lambda d, x, key=(dpid, xid): (d, x) == key)
            self._to_switch(dpid, lambda d=dpid, r=reply: self._to_controller(d, r))
            pending.add((dpid, xid))
        if pending:
            self._flow_waits.append((pending, callbacks, self.now + FLOWS_IN_PLACE_MAX_WAIT))
        else:
            for callback in callbacks:
                callback(self.now)

    def _flows_confirmed(self, answered: Callable[[int, int], bool]) -> None:
        ready = []
        for wait in self._flow_waits:
            pending, _, give_up_at = wait
            pending -= {key for key in pending if answered(*key)}
            if not pending or self.now >= give_up_at:
                ready.append(wait)
        for wait in ready:
            self._flow_waits.remove(wait)
            for callback in wait[1]:
                callback(self.now)

    def install(self, dpid: int, entries: Iterable[FlowEntry]) -> None:
        """Replace the flow table of switch `dpid` (what the reconciler converges it to)."""
        by_table: dict[int, list[FlowEntry]] = {}
        for entry in entries:
            if entry not in self._checked:
                check_entry(entry)
                self._checked.add(entry)
            by_table.setdefault(entry.table, []).append(entry)
        self.net.tables[dpid] = {t: sorted(es, key=lambda e: -e.priority) for t, es in by_table.items()}

    def _to_controller(self, dpid: int, deliver: Callable[[], None], delay: float | None = None) -> None:
        """A message from switch `dpid` over its control channel (in order, lost if the channel drops)."""
        connection = self.connected.get(dpid)
        if connection is None:
            return  # fail secure: a punt with no controller goes nowhere
        when = max(self.now + (self.latency() if delay is None else delay), self._to_controller_free.get(dpid, 0.0))
        self._to_controller_free[dpid] = when
        self.at(when, self._arrives, dpid, connection, deliver)

    def _to_switch(self, dpid: int, deliver: Callable[[], None]) -> None:
        connection = self.connected.get(dpid)
        if connection is None:
            return  # the shell has no datapath to send it to
        when = max(self.now + self.latency(), self._to_switch_free.get(dpid, 0.0))
        self._to_switch_free[dpid] = when
        self.at(when, self._arrives, dpid, connection, deliver)

    def _arrives(self, dpid: int, connection: int, deliver: Callable[[], None]) -> None:
        if self.connected.get(dpid) == connection:
            deliver()

    def packet_out(self, packet: PacketOut) -> None:
        self.stats.packet_outs += 1
        if packet.out_port == pipeline.OFPP_TABLE:
            self._to_switch(packet.dpid, lambda: self.enter(packet.dpid, packet.in_port, decode(packet.frame)))
        else:
            self._to_switch(packet.dpid, lambda: self.leave(PortRef(packet.dpid, packet.out_port), decode(packet.frame)))

    # -- switch lifecycle -------------------------------------------------------------------------
    def _connect(self, dpid: int) -> None:
        self.connected[dpid] = connection = next(self._connections)
        self._to_controller_free.pop(dpid, None)
        self._to_switch_free.pop(dpid, None)
        self._sent.pop(dpid, None)  # the reconciler reads what the switch holds before it syncs
        first_seen = dpid not in self.learner.topo.switches
        self.carry_out(self.learner.switch_connected(dpid, self.now))
        if first_seen:  # the shell adds them at once to a switch it never saw
            self._to_switch(dpid, lambda: self.install(dpid, base_flows()))
        if self.plan.roles:
            role = self.fabric.switches[dpid].role
            self._to_controller(dpid, lambda: self.carry_out(self.learner.role_described(dpid, f"role={role}")))
        ports = [*(self.wiring.switches[dpid].ports.values()), self.fabric.local_port(dpid)]
        self._to_controller(dpid, lambda: self.carry_out(self.learner.ports_described(dpid, ports, self.now)))
        self._to_controller(dpid, lambda: self._sync(dpid, connection), delay=self.rng.uniform(0.005, 0.05))

    def _sync(self, dpid: int, connection: int) -> None:
        """The flow stats reply: the switch is synced, and once the compile put its flows in place
        it probes (controller/app.py _first_sync_done)."""
        self.synced.add(dpid)

        def done(now: float) -> None:
            if self.connected.get(dpid) == connection:
                self.reconcile(dpid)
                self.carry_out(self.learner.switch_synced(dpid, now))

        self.model_changed(done)

    def _disconnect(self, dpid: int) -> None:
        if dpid not in self.connected:
            return
        del self.connected[dpid]
        self.synced.discard(dpid)
        self._touched.discard(dpid)
        if self._flow_waits:
            self._flows_confirmed(lambda d, x: d == dpid)
        self.carry_out(self.learner.switch_disconnected(dpid, self.now))

    def _set_cable(self, index: int, up: bool) -> None:
        for end in self.fabric.cables[index]:
            self._set_port(end, up)

    def _set_port(self, ref: PortRef, up: bool) -> None:
        ports = self.wiring.switches[ref.dpid].ports
        port = ports[ref.port] = replace(ports[ref.port], up=up)
        self._to_controller(ref.dpid, lambda: self.carry_out(self.learner.port_changed(ref.dpid, port, self.now)))

    def port_up(self, ref: PortRef) -> bool:
        return self.wiring.switches[ref.dpid].ports[ref.port].up

    # -- timers ------------------------------------------------------------------------------------
    def _tick(self) -> None:
        self.carry_out(self.learner.tick(self.now))
        self.at(self.now + PROBE_PERIOD, self._tick)

    def _check_edges(self) -> None:
        if self._flow_waits:
            self._flows_confirmed(lambda d, x: False)  # give up on silent switches
        self.carry_out(self.learner.check_edges(self.now, backlog=0))
        self.at(self.now + EDGE_CHECK_INTERVAL, self._check_edges)

    # -- the data plane ------------------------------------------------------------------------------
    def enter(self, dpid: int, in_port: int, headers: Mapping[str, Any]) -> None:
        """A frame enters switch `dpid` on `in_port`: follow it through the fabric as it is now."""
        trace = self.net.trace(dpid, in_port, headers)
        self.stats.loops += [(self.now, loop) for loop in trace.loops]
        for punt in trace.punts:
            frame = encode(punt.packet)[: pipeline.PACKET_IN_BYTES]
            reason = punt_reason(punt.table, punt.cookie)
            self._to_controller(punt.dpid, lambda p=punt, f=frame, r=reason: self._packet_in(p.dpid, p.in_port, f, r))
        for delivery in trace.deliveries:
            vm = self.vm_at.get(delivery.at)
            if vm is not None:
                self.at(self.now + self.rng.uniform(0.0001, 0.001), self._vm_receives, vm, delivery.packet)

    def _packet_in(self, dpid: int, in_port: int, frame: bytes, punt: Punt) -> None:
        self.stats.packet_ins += 1
        self.carry_out(self.learner.packet_in(dpid, in_port, frame, punt, self.now))

    def leave(self, ref: PortRef, headers: Mapping[str, Any]) -> None:
        """A frame leaves a switch port into its cable (the peer switch) or to the VM there."""
        if not self.port_up(ref):
            return
        peer = self.peer.get(ref)
        if peer is not None:
            self.enter(peer.dpid, peer.port, headers)
            return
        vm = self.vm_at.get(ref)
        if vm is not None:
            self.at(self.now + self.rng.uniform(0.0001, 0.001), self._vm_receives, vm, dict(headers))

    def vm_sends(self, vm: Vm, headers: Mapping[str, Any]) -> None:
        if self.port_up(vm.at):
            self.enter(vm.at.dpid, vm.at.port, headers)

    def _vm_receives(self, vm: Vm, headers: Mapping[str, Any]) -> None:
        relay = self.plan.relay
        if headers.get("eth_type") == pipeline.ETH_TYPE_LLDP:
            if relay and vm.name in relay and self.now >= self.plan.relay_from:
                other = self.vms[relay[1] if vm.name == relay[0] else relay[0]]
                self.at(self.now + self.rng.uniform(0, 0.001), self.vm_sends, other, headers)
            return
        if headers.get("eth_type") == pipeline.ETH_TYPE_ARP and headers["arp_op"] == 1 and headers["arp_tpa"] == vm.ip:
            if headers["arp_spa"] != vm.ip:  # not a gratuitous ARP
                reply = arp_reply(vm.mac, vm.ip, headers["arp_sha"], headers["arp_spa"])
                self.at(self.now + self.rng.uniform(0.0005, 0.002), self.vm_sends, vm, reply)

    # -- chatter -----------------------------------------------------------------------------------
    def _switch_port_chatter(self, end: PortRef) -> None:
        """The kernel's IPv6 chatter from a switch-side interface, into its cable, connected or not."""
        if not self.chatter:
            return
        peer = self.peer[end]
        if self.port_up(end):
            self.enter(peer.dpid, peer.port, ipv6_chatter(self.fabric.port_mac(end), self.rng.random() < 0.5))
        self.at(self.now + self.rng.uniform(0.5, 3.0), self._switch_port_chatter, end)

    def vm_frame(self, vm: Vm) -> dict[str, Any]:
        """Something a VM says: ARP for another VM (or for nobody), gratuitous ARP, a ping, or IPv6."""
        others = [v for v in self.fabric.vms if v != vm]
        kind = self.rng.choice(("arp", "garp", "ping", "ipv6") if others else ("garp", "ipv6"))
        other = self.rng.choice(others) if others else None
        if kind == "arp":
            return arp_request(vm.mac, vm.ip, other.ip if self.rng.random() < 0.8 else UNKNOWN_IP)
        if kind == "ping":
            return ping(vm.mac, vm.ip, other.mac, other.ip, self.rng.randrange(1, 1 << 16))
        if kind == "ipv6":
            return ipv6_chatter(vm.mac, self.rng.random() < 0.5)
        return arp_request(vm.mac, vm.ip, vm.ip)

    def _vm_chatter(self, vm: Vm) -> None:
        if not self.chatter:
            return
        self.vm_sends(vm, self.vm_frame(vm))
        self.at(self.now + self.rng.uniform(0.3, 2.5), self._vm_chatter, vm)

    # -- running a scenario ------------------------------------------------------------------------
    def all_synced(self) -> bool:
        return all(dpid in self.synced for dpid in self.fabric.switches)

    def converge(self, probe_periods: int = 3) -> None:
        """Run past the plan's last change until every switch is connected and synced, then
        `probe_periods` probe periods more, then let every VM say one thing, then stop the
        chatter and let the last flows land."""
        self.run_until(self.plan.last_change())
        deadline = self.now + 30
        while not self.all_synced() and self.now < deadline:
            self.run_until(self.now + EDGE_CHECK_INTERVAL)
        self.run_until(self.now + probe_periods * PROBE_PERIOD)
        self.vm_round()
        self.chatter = False
        self.run_until(self.now + 1.0)

    def vm_round(self) -> None:
        """Every VM sends one frame (a ping or a gratuitous ARP), then the network settles."""
        self.spoke_after_convergence = []
        for i, vm in enumerate(self.fabric.vms):
            if not self.port_up(vm.at):
                continue
            others = [v for v in self.fabric.vms if v != vm]
            if others and self.rng.random() < 0.5:
                other = self.rng.choice(others)
                frame = ping(vm.mac, vm.ip, other.mac, other.ip, self.rng.randrange(1, 1 << 16))
            else:
                frame = arp_request(vm.mac, vm.ip, vm.ip)
            self.at(self.now + 0.002 * i, self.vm_sends, vm, frame)
            self.spoke_after_convergence.append(vm)
        self.run_until(self.now + 0.002 * len(self.fabric.vms) + 0.5)

    def final_network(self) -> FakeNetwork:
        """The installed tables over the true wiring, with conntrack of its own, for checks."""
        net = FakeNetwork({}, self.wiring)
        net.tables = self.net.tables
        return net

    def describe(self) -> str:
        return f"{self.fabric.describe()}\nplan: {self.plan}"


def run(fabric: Fabric, plan: Plan, seed: int) -> Simulation:
    sim = Simulation(fabric, plan, seed)
    sim.converge()
    return sim


def scenario(seed: int, layout: str = "random") -> tuple[Fabric, Plan]:
    """The fabric and plan one seed gives: a random fabric, or the leaf-spine layout."""
    rng = random.Random(seed)
    fabric = leaf_spine_fabric() if layout == "leaf-spine" else random_fabric(rng)
    return fabric, random_plan(fabric, rng)
