"""A fake OpenFlow 1.3 network for unit tests: given desired flow tables and the wiring, where does a packet go?

The fake follows what Open vSwitch does with the same flows, so that a test passing here means
something on a real switch:
- lookup starts at table 0; the highest-priority entry whose match fields all equal the packet's
  wins (masked fields are `(value, mask)`); no match means drop (OpenFlow 1.3 has no implicit
  table-miss);
- apply-actions run in order on a working copy of the headers: `Output` emits a copy as it is at
  that moment, `SetField` and `Move` rewrite it for the actions and tables that follow; then the
  write-metadata instruction sets `metadata = (old & ~mask) | (value & mask)`, then the goto;
- `metadata` and `ct_state` are pipeline fields: both are 0 when a frame enters a switch (a frame
  crossing to another switch loses them, as it does between OVS bridges) and never leave with it;
- `Conntrack` models OVS connection tracking against one conntrack table per FakeNetwork, shared
  by every switch but separated by zone (like the single userspace datapath of a Mininet run).
  A connection is keyed by (zone, eth_type, ip_proto, source and destination address, source and
  destination port; for ICMP the type and the echo id, `icmp_id` in a frame, which no flow can
  match). The state a frame gets is +trk+est when its own direction
  was committed, +trk+est+rpl when the reverse direction was, +trk+new when neither was and the
  frame may start a connection, and +trk+inv when it may not (an ICMP echo reply or error with
  no request; the fake does not model +rel). `commit` records the frame's direction (an untracked
  frame may be committed: OVS runs the lookup first; an invalid one is not recorded). With `table`,
  processing continues in that table with ct_state set: the rest of the entry (later actions, the
  write-metadata instruction, the goto) is not run. OVS would fork there and run the rest on the
  untracked original, which the fake does not model, so check_entry refuses such entries. Without
  `table` the frame carries on untracked (OVS clears the ct fields after a ct action);
- `PushVlan` tags the frame (`vlan_vid` = OFPVID_PRESENT, then set by `SetField`), `PopVlan` untags
  it; an untagged frame has no `vlan_vid`, so no entry matching one matches it (one tag at most);
- `Output(p)` with p equal to the ingress port is dropped (only `OFPP_IN_PORT` sends a frame back);
- a flow that OVS would refuse (a field without its prerequisite, a value outside its mask, a
  backward goto, conntrack on a flow not limited to IP, a commit of +inv) raises `FlowRejected`
  when the network is built, and so does one the fake cannot model faithfully (a partial `Move`,
  anything after a re-submitting `Conntrack`, a ct_state match that can never be true);
- two entries of equal priority matching the same packet raise `AmbiguousLookup` when they would
  treat it differently, since OVS would pick one arbitrarily (with the same actions, goto and
  metadata the choice does not matter).

A frame that leaves a port linked to another switch enters that switch on the peer port. A frame
that leaves any other port is delivered there. The same frame (same headers) entering the same
(dpid, in_port) twice in one trace is a loop: it is reported and not followed further, so a storm
shows up as a finite list of loops instead of hanging the test.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from apps import pipeline
from apps.context import PolicyState
from apps.flows import Conntrack, FlowEntry, Move, Output, PopVlan, PushVlan, SetField
from apps.identity import Identities
from apps.inventory import vm_from_json
from apps.policy import Rule, rule_from_json
from apps.steering import TunnelPlan
from topology.model import EDGE_CONFIRM_TIME, Host, Port, PortRef, Topology

BROADCAST = "ff:ff:ff:ff:ff:ff"
HOP_LIMIT = 64
OFPVID_PRESENT = 0x1000
MAX_COPIES = 10_000  # copies one trace may process before it is called a storm
MAX_RECIRCULATIONS = 8  # conntrack re-submissions one frame may make in one switch

MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha"})
IPV4_FIELDS = frozenset({"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"})
IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst"})
PIPELINE_FIELDS = frozenset({"in_port", "metadata", "ct_state", "ct_mark", "reg0"})  # exist only inside a switch
FIELD_BITS: dict[str, int] = {
    **dict.fromkeys(MAC_FIELDS, 48),
    **dict.fromkeys(IPV4_FIELDS, 32),
    **dict.fromkeys(IPV6_FIELDS, 128),
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
    "icmpv6_type": 8,
    "icmpv6_code": 8,
    "ct_state": 32,
    "ct_mark": 32,
    "reg0": 32,
    "vlan_vid": 13,  # OFPVID_PRESENT (0x1000) | the VID; an untagged frame has none
}

# OpenFlow 1.3 match prerequisites (spec table 12): field -> the (field, allowed values) it needs.
# They chain: tcp_dst needs ip_proto=6, which needs eth_type IPv4 or IPv6.
_ARP = frozenset({pipeline.ETH_TYPE_ARP})
_IPV4 = frozenset({pipeline.ETH_TYPE_IPV4})
_IPV6 = frozenset({pipeline.ETH_TYPE_IPV6})
_IP = _IPV4 | _IPV6
PREREQUISITES: dict[str, tuple[tuple[str, frozenset[int]], ...]] = {
    **dict.fromkeys(("arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha"), (("eth_type", _ARP),)),
    **dict.fromkeys(("ipv4_src", "ipv4_dst"), (("eth_type", _IPV4),)),
    **dict.fromkeys(("ipv6_src", "ipv6_dst"), (("eth_type", _IPV6),)),
    "ip_proto": (("eth_type", _IP),),
    **dict.fromkeys(("tcp_src", "tcp_dst"), (("ip_proto", frozenset({6})),)),
    **dict.fromkeys(("udp_src", "udp_dst"), (("ip_proto", frozenset({17})),)),
    **dict.fromkeys(("icmpv4_type", "icmpv4_code"), (("ip_proto", frozenset({1})), ("eth_type", _IPV4))),
    **dict.fromkeys(("icmpv6_type", "icmpv6_code"), (("ip_proto", frozenset({58})), ("eth_type", _IPV6))),
}

CT_NAMES = {
    pipeline.CT_NEW: "new",
    pipeline.CT_EST: "est",
    pipeline.CT_REL: "rel",
    pipeline.CT_RPL: "rpl",
    pipeline.CT_INV: "inv",
    pipeline.CT_TRK: "trk",
}
CT_KNOWN_BITS = 0xFF  # OVS defines 8 ct_state bits (snat and dnat above the six above)

IP_PROTO_TCP, IP_PROTO_UDP, IP_PROTO_ICMP, IP_PROTO_ICMPV6 = 6, 17, 1, 58
# ICMP requests that may start a connection, and the type of their reply (as OVS's conntrack).
ICMP_REPLY = {8: 0, 13: 14, 15: 16, 17: 18}
ICMPV6_REPLY = {128: 129}


class FlowRejected(ValueError):
    """Open vSwitch would refuse this flow-mod (the controller would get an OFPT_ERROR), or the
    fake cannot model it faithfully."""


class AmbiguousLookup(AssertionError):
    """Two entries of the same priority match one packet and treat it differently: the switch's
    choice is arbitrary."""


class RecirculationLoop(AssertionError):
    """A frame kept being re-submitted by conntrack within one switch."""


# ---------------------------------------------------------------------------
# Field values: compare MACs and IP addresses as numbers, whatever their spelling.
# ---------------------------------------------------------------------------
def field_int(name: str, value: Any) -> int:
    if isinstance(value, int):
        return value
    if name in MAC_FIELDS:
        return int(str(value).replace(":", "").replace("-", ""), 16)
    if name in IPV4_FIELDS:
        return int(ipaddress.IPv4Address(value))
    if name in IPV6_FIELDS:
        return int(ipaddress.IPv6Address(value))
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


def ct_state_text(value: int, mask: int | None = None) -> str:
    """`+trk+est-inv` for a masked match, `+trk+est` for a state."""
    mask = value if mask is None else mask
    bits = [(bit, name) for bit, name in CT_NAMES.items() if mask & bit]
    return "".join(("+" if value & bit else "-") + name for bit, name in sorted(bits, key=lambda b: -b[0])) or "untracked"


def _exact(entry: FlowEntry, name: str) -> Any:
    value = entry.match_dict.get(name)
    return None if isinstance(value, tuple) else value


def _check_prerequisites(entry: FlowEntry, name: str, where: str) -> None:
    for needed, allowed in PREREQUISITES.get(name, ()):
        if _exact(entry, needed) not in allowed:
            wanted = " or ".join(f"{v:#06x}" if needed == "eth_type" else str(v) for v in sorted(allowed))
            raise FlowRejected(f"{where}: {name} needs {needed} {wanted} in the match (got {_exact(entry, needed)!r})")
        _check_prerequisites(entry, needed, where)


def _check_ct_state_match(value: int, mask: int, where: str) -> None:
    """A ct_state match no frame can satisfy (OVS's consistency rules for a tracked state)."""
    state = value & mask
    problem = None
    if state & ~CT_KNOWN_BITS:
        problem = f"{state:#x} sets bits OVS does not define"
    elif state and not state & pipeline.CT_TRK:
        problem = "with -trk no other flag can be set"
    elif state & pipeline.CT_INV and state & ~(pipeline.CT_TRK | pipeline.CT_INV):
        problem = "with +inv only +trk may be set"
    elif state & pipeline.CT_NEW and state & (pipeline.CT_EST | pipeline.CT_RPL):
        problem = "+new excludes +est and +rpl"
    if problem:
        raise FlowRejected(f"{where}: ct_state {ct_state_text(value, mask)} can never match: {problem}")


def check_entry(entry: FlowEntry) -> None:
    """Raise FlowRejected when Open vSwitch would refuse this entry (or the fake cannot model it)."""
    where = f"table {entry.table} priority {entry.priority} match {dict(entry.match)}"
    for name, wanted in entry.match:
        if name not in FIELD_BITS:
            raise FlowRejected(f"{where}: unknown match field {name}")
        limit = (1 << FIELD_BITS[name]) - 1
        value, mask = (
            (field_int(name, wanted[0]), field_int(name, wanted[1]))
            if isinstance(wanted, tuple)
            else (field_int(name, wanted), limit)
        )
        if value > limit or mask > limit:
            raise FlowRejected(f"{where}: {name} value {value:#x} / mask {mask:#x} is wider than {FIELD_BITS[name]} bits")
        if value & ~mask:
            raise FlowRejected(f"{where}: {name} value {value:#x} has bits outside its mask {mask:#x}")
        if name == "ct_state":
            _check_ct_state_match(value, mask, where)
    fields = [name for name, _ in entry.match]
    fields += [a.name for a in entry.actions if isinstance(a, SetField)]
    fields += [f for a in entry.actions if isinstance(a, Move) for f in (a.src, a.dst)]
    for name in fields:
        if name not in FIELD_BITS:
            raise FlowRejected(f"{where}: unknown field {name}")
        _check_prerequisites(entry, name, where)
    for index, action in enumerate(entry.actions):
        if isinstance(action, Move) and (action.n_bits != FIELD_BITS[action.src] or action.n_bits != FIELD_BITS[action.dst]):
            raise FlowRejected(f"{where}: the fake only models whole-field moves, got {action}")
        if isinstance(action, Output) and not (0 < action.port < pipeline.OFPP_MAX or action.port > pipeline.OFPP_MAX):
            raise FlowRejected(f"{where}: bad output port {action.port}")
        if isinstance(action, Conntrack):
            _check_conntrack(entry, index, action, where)
    if entry.metadata is not None:
        value, mask = entry.metadata
        if not (0 <= value < 1 << 64 and 0 <= mask < 1 << 64):
            raise FlowRejected(f"{where}: write-metadata {value:#x}/{mask:#x} is wider than 64 bits")
    if entry.goto is not None and entry.goto <= entry.table:
        raise FlowRejected(f"{where}: goto {entry.goto} is not a later table")


def _check_conntrack(entry: FlowEntry, index: int, action: Conntrack, where: str) -> None:
    # OVS: OFPBAC_MATCH_INCONSISTENT unless the flow is limited to IPv4 or IPv6, or when it commits +inv.
    if _exact(entry, "eth_type") not in _IP:
        raise FlowRejected(
            f"{where}: {action} needs eth_type {pipeline.ETH_TYPE_IPV4:#06x} or {pipeline.ETH_TYPE_IPV6:#06x} in the match"
        )
    ct = entry.match_dict.get("ct_state")
    if action.commit and ct is not None:
        value = ct[0] if isinstance(ct, tuple) else ct
        if value & pipeline.CT_INV:
            raise FlowRejected(f"{where}: {action} commits frames matched as +inv")
    if not 0 <= action.zone <= 0xFFFF:
        raise FlowRejected(f"{where}: conntrack zone {action.zone} is not 16 bits")
    if action.table is not None:
        if not 0 <= action.table < 0xFF:
            raise FlowRejected(f"{where}: conntrack table {action.table} is not a table")
        if index != len(entry.actions) - 1 or entry.goto is not None or entry.metadata is not None:
            raise FlowRejected(
                f"{where}: {action} re-submits the frame, and OVS would run the rest of the entry (later actions, "
                "write-metadata, goto) on an untracked copy; the fake does not model that fork: end the entry with it"
            )


# ---------------------------------------------------------------------------
# Connection tracking.
# ---------------------------------------------------------------------------
FlowTuple = tuple  # (eth_type, ip_proto, src address, dst address, src port or ICMP type, dst port or ICMP id)


def flow_tuple(headers: Mapping[str, Any]) -> FlowTuple | None:
    """The direction conntrack files a frame under, or None when it is not IP."""

    def need(*names: str) -> list[Any]:
        missing = [n for n in names if headers.get(n) is None]
        if missing:
            raise AssertionError(f"conntrack needs {', '.join(missing)} in the frame: {dict(headers)}")
        return [headers[n] for n in names]

    eth_type = headers.get("eth_type")
    if eth_type == pipeline.ETH_TYPE_IPV4:
        src, dst = (field_int(n, v) for n, v in zip(("ipv4_src", "ipv4_dst"), need("ipv4_src", "ipv4_dst"), strict=True))
    elif eth_type == pipeline.ETH_TYPE_IPV6:
        src, dst = (field_int(n, v) for n, v in zip(("ipv6_src", "ipv6_dst"), need("ipv6_src", "ipv6_dst"), strict=True))
    else:
        return None
    proto = headers.get("ip_proto")
    if proto == IP_PROTO_TCP:
        ports = need("tcp_src", "tcp_dst")
    elif proto == IP_PROTO_UDP:
        ports = need("udp_src", "udp_dst")
    elif proto == IP_PROTO_ICMP and eth_type == pipeline.ETH_TYPE_IPV4:
        ports = [*need("icmpv4_type"), headers.get("icmp_id", 0)]
    elif proto == IP_PROTO_ICMPV6 and eth_type == pipeline.ETH_TYPE_IPV6:
        ports = [*need("icmpv6_type"), headers.get("icmp_id", 0)]
    else:
        ports = [None, None]
    return (eth_type, proto, src, dst, *ports)


def _icmp_replies(eth_type: int, proto: int | None) -> dict[int, int] | None:
    if proto == IP_PROTO_ICMP and eth_type == pipeline.ETH_TYPE_IPV4:
        return ICMP_REPLY
    if proto == IP_PROTO_ICMPV6 and eth_type == pipeline.ETH_TYPE_IPV6:
        return ICMPV6_REPLY
    return None


def reply_tuple(direction: FlowTuple) -> FlowTuple | None:
    """The direction a reply travels in; None when the frame cannot have a reply (an ICMP non-request)."""
    eth_type, proto, src, dst, sport, dport = direction
    replies = _icmp_replies(eth_type, proto)
    if replies is not None:
        return (eth_type, proto, dst, src, replies[sport], dport) if sport in replies else None
    return (eth_type, proto, dst, src, dport, sport)


@dataclass
class ConntrackTable:
    """Committed connections per zone: each direction filed as original (False) or reply (True)."""

    zones: dict[int, dict[FlowTuple, bool]] = field(default_factory=dict)
    marks: dict[int, dict[FlowTuple, int]] = field(default_factory=dict)  # zone -> either direction -> ct_mark
    other_way: dict[int, dict[FlowTuple, FlowTuple]] = field(default_factory=dict)  # zone -> direction -> the other

    def state(self, zone: int, headers: Mapping[str, Any]) -> int:
        direction = flow_tuple(headers)
        if direction is None:
            raise AssertionError(f"conntrack on a frame that is not IP: {dict(headers)}")
        known = self.zones.get(zone, {})
        if direction in known:
            return pipeline.CT_TRK | pipeline.CT_EST | (pipeline.CT_RPL if known[direction] else 0)
        if reply_tuple(direction) is None:
            return pipeline.CT_TRK | pipeline.CT_INV
        return pipeline.CT_TRK | pipeline.CT_NEW

    def commit(self, zone: int, headers: Mapping[str, Any], mark: int | None = None) -> None:
        state = self.state(zone, headers)
        direction = flow_tuple(headers)
        if state == pipeline.CT_TRK | pipeline.CT_NEW:
            known = self.zones.setdefault(zone, {})
            reply = reply_tuple(direction)
            known[direction] = False
            known[reply] = True
            self.other_way.setdefault(zone, {}).update({direction: reply, reply: direction})
        elif state & pipeline.CT_INV:
            return  # invalid: nothing to record
        if mark is not None:
            marks = self.marks.setdefault(zone, {})
            marks[direction] = marks[self.other_way[zone][direction]] = mark

    def mark(self, zone: int, headers: Mapping[str, Any]) -> int:
        """The ct_mark of the frame's connection (0 when none was set or it is not tracked)."""
        return self.marks.get(zone, {}).get(flow_tuple(headers), 0)

    def connections(self, zone: int) -> list[FlowTuple]:
        """The original directions committed in a zone."""
        return [t for t, is_reply in self.zones.get(zone, {}).items() if not is_reply]

    def clear(self) -> None:
        self.zones.clear()
        self.marks.clear()
        self.other_way.clear()


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
    """A copy ended without leaving the switch: no matching entry, an entry with nowhere to send it,
    or an output to a missing or down port."""

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

    def reaches(self, host: Host) -> bool:
        """Did a copy leave the network at `host`'s port?"""
        return (host.dpid, host.port) in self.delivered_to()

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
    Conntrack state lives as long as the network (`self.conntrack`), across traces.
    """

    def __init__(
        self,
        tables: Mapping[int, Iterable[FlowEntry] | Mapping[int, FlowEntry]],
        wiring: Topology,
        tunnels: TunnelMesh | None = None,
    ) -> None:
        self.tables: dict[int, dict[int, list[FlowEntry]]] = {}
        for dpid, entries in tables.items():
            flows = entries.values() if isinstance(entries, Mapping) else entries
            by_table: dict[int, list[FlowEntry]] = {}
            for entry in flows:
                check_entry(entry)
                by_table.setdefault(entry.table, []).append(entry)
            self.tables[dpid] = {t: sorted(es, key=lambda e: -e.priority) for t, es in by_table.items()}
        self.wiring = wiring
        self.conntrack = ConntrackTable()
        self.peer: dict[PortRef, PortRef] = {}
        for link in wiring.links:
            self.peer[link.a] = link.b
            self.peer[link.b] = link.a
        # Tunnel ports: a frame output to one comes out of the tunnel port at the other end. A
        # trace can tell the two apart (crossed_in_clear, through_tunnel).
        self.tunnel_peer: dict[PortRef, PortRef] = dict(tunnels.wiring) if tunnels is not None else {}
        self.hosts_at: dict[tuple[int, int], tuple[str, ...]] = {}
        for host in sorted(wiring.hosts.values(), key=lambda h: h.mac):
            self.hosts_at[(host.dpid, host.port)] = (*self.hosts_at.get((host.dpid, host.port), ()), host.mac)

    @classmethod
    def compile(
        cls,
        topo: Topology,
        policy: PolicyState | None = None,
        identities: Identities | None = None,
        tunnels: TunnelMesh | None = None,
    ) -> FakeNetwork:
        """Compile the desired tables of `topo` (with `policy`, default allow-all) and wire them as
        `topo` says, with the tunnels of `tunnels` up."""
        from apps.desired import desired_tables

        plan = tunnels.plan if tunnels is not None else None
        return cls(desired_tables(topo, policy, identities, plan), topo, tunnels)

    def crossed_in_clear(self, delivery: Delivery) -> bool:
        """Did this copy cross an inter-switch link (where a capture on the fabric would see it)?"""
        return any(PortRef(dpid, port) in self.peer for dpid, port in delivery.path)

    def through_tunnel(self, delivery: Delivery) -> bool:
        """Did this copy come out of a tunnel on its way?"""
        return any(PortRef(dpid, port) in self.tunnel_peer for dpid, port in delivery.path)

    # -- lookups --------------------------------------------------------------
    def lookup(self, dpid: int, table: int, packet: Mapping[str, Any]) -> FlowEntry | None:
        best: FlowEntry | None = None
        for entry in self.tables.get(dpid, {}).get(table, []):
            if best is not None and entry.priority < best.priority:
                break
            if entry_matches(entry, packet):
                if best is None:
                    best = entry
                elif (entry.actions, entry.goto, entry.metadata) != (best.actions, best.goto, best.metadata):
                    raise AmbiguousLookup(f"switch {dpid} table {table}: {best} and {entry} both match {dict(packet)}")
        return best

    def _port_usable(self, dpid: int, port_no: int) -> bool:
        sw = self.wiring.switches.get(dpid)
        port: Port | None = sw.ports.get(port_no) if sw else None
        return bool(port and port.up)

    # -- one switch -------------------------------------------------------------
    def _through_switch(self, dpid: int, in_port: int, packet: dict[str, Any], trace: Trace) -> list[tuple[int, dict[str, Any]]]:
        """Run the pipeline of one switch; return (out port, headers) of every copy it sends out."""
        headers = {**packet, "in_port": in_port, "metadata": 0, "ct_state": 0, "ct_mark": 0, "reg0": 0}
        outputs: list[tuple[int, dict[str, Any]]] = []
        table: int | None = pipeline.INGRESS
        recirculations = 0
        while table is not None:
            entry = self.lookup(dpid, table, headers)
            if entry is None:
                if not outputs:
                    trace.drops.append(Drop(dpid, in_port, f"no match in table {table} for {self._describe(headers)}"))
                break
            next_table = entry.goto
            resubmitted = False
            for action in entry.actions:
                if isinstance(action, Output):
                    self._output(dpid, in_port, table, entry, action, headers, outputs, trace)
                elif isinstance(action, SetField):
                    if action.name == "vlan_vid" and "vlan_vid" not in headers:
                        raise AssertionError(f"switch {dpid}: set vlan_vid on an untagged frame: {headers}")
                    headers[action.name] = action.value
                elif isinstance(action, PushVlan):
                    if "vlan_vid" in headers:
                        raise AssertionError(f"switch {dpid}: the fake models one 802.1Q header, and {headers} has one")
                    headers["vlan_vid"] = OFPVID_PRESENT
                elif isinstance(action, PopVlan):
                    if "vlan_vid" not in headers:
                        raise AssertionError(f"switch {dpid}: pop_vlan on an untagged frame: {headers}")
                    del headers["vlan_vid"]
                elif isinstance(action, Move):
                    if headers.get(action.src) is None:
                        raise AssertionError(f"switch {dpid}: move from {action.src}, which the packet lacks: {headers}")
                    headers[action.dst] = headers[action.src]
                elif isinstance(action, Conntrack):
                    state = self.conntrack.state(action.zone, headers)
                    if action.commit:
                        self.conntrack.commit(action.zone, headers, action.mark)
                    if action.table is None:
                        headers["ct_state"] = headers["ct_mark"] = 0  # the frame carries on untracked
                        continue
                    headers["ct_mark"] = self.conntrack.mark(action.zone, headers)
                    recirculations += 1
                    if recirculations > MAX_RECIRCULATIONS:
                        raise RecirculationLoop(
                            f"switch {dpid}: conntrack re-submitted {self._describe(headers)} {recirculations} times"
                        )
                    headers["ct_state"] = state
                    next_table, resubmitted = action.table, True
                    break
            if not resubmitted and entry.metadata is not None:
                value, mask = entry.metadata
                headers["metadata"] = (headers["metadata"] & ~mask) | (value & mask)
            if next_table is None and not outputs:
                trace.drops.append(
                    Drop(
                        dpid, in_port, f"table {table} priority {entry.priority} ends the pipeline for {self._describe(headers)}"
                    )
                )
            table = next_table
        return outputs

    @staticmethod
    def _output(
        dpid: int,
        in_port: int,
        table: int,
        entry: FlowEntry,
        action: Output,
        headers: dict[str, Any],
        outputs: list[tuple[int, dict[str, Any]]],
        trace: Trace,
    ) -> None:
        sent = {k: v for k, v in headers.items() if k not in PIPELINE_FIELDS}
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

    @staticmethod
    def _describe(headers: Mapping[str, Any]) -> str:
        """Headers plus the pipeline fields in a readable form, for failure messages."""
        shown = {k: v for k, v in headers.items() if k not in ("metadata", "ct_state")}
        meta = headers.get("metadata", 0)
        return (
            f"{shown} metadata=src {meta & pipeline.META_SRC_MASK} dst {meta >> pipeline.META_DST_SHIFT}"
            f" ct_state={ct_state_text(headers.get('ct_state', 0))}"
        )

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
                peer = self.peer.get(PortRef(here_dpid, out_port)) or self.tunnel_peer.get(PortRef(here_dpid, out_port))
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


def link_local(mac: str) -> str:
    """The IPv6 link-local address a host derives from its MAC (modified EUI-64)."""
    octets = [int(b, 16) for b in mac.split(":")]
    octets[0] ^= 0x02
    eui = octets[:3] + [0xFF, 0xFE] + octets[3:]
    return str(ipaddress.IPv6Address((0xFE80 << 112) | int.from_bytes(bytes(eui), "big")))


def ipv4_frame(src: Host, dst_mac: str, dst_ip: str = "10.255.255.254") -> dict[str, Any]:
    ip = first_ip(src) if src.ips else "0.0.0.0"
    return {"eth_src": src.mac, "eth_dst": dst_mac, "eth_type": pipeline.ETH_TYPE_IPV4, "ipv4_src": ip, "ipv4_dst": dst_ip}


def unicast_frame(src: Host, dst: Host) -> dict[str, Any]:
    return ipv4_frame(src, dst.mac, first_ip(dst) if dst.ips else "10.255.255.254")


def ipv6_frame(src: Host, dst_mac: str, dst_ip: str) -> dict[str, Any]:
    return {
        "eth_src": src.mac,
        "eth_dst": dst_mac,
        "eth_type": pipeline.ETH_TYPE_IPV6,
        "ipv6_src": link_local(src.mac),
        "ipv6_dst": dst_ip,
    }


def ip_frame(src: Host, dst: Host, ipv6: bool = False) -> dict[str, Any]:
    """An IP frame from src to dst: IPv4 addresses from the hosts, or their IPv6 link-local ones."""
    return ipv6_frame(src, dst.mac, link_local(dst.mac)) if ipv6 else unicast_frame(src, dst)


def tcp_frame(src: Host, dst: Host, sport: int, dport: int, ipv6: bool = False) -> dict[str, Any]:
    return {**ip_frame(src, dst, ipv6), "ip_proto": IP_PROTO_TCP, "tcp_src": sport, "tcp_dst": dport}


def udp_frame(src: Host, dst: Host, sport: int, dport: int, ipv6: bool = False) -> dict[str, Any]:
    return {**ip_frame(src, dst, ipv6), "ip_proto": IP_PROTO_UDP, "udp_src": sport, "udp_dst": dport}


def icmp_frame(src: Host, dst: Host, icmp_type: int | None = None, ipv6: bool = False, ident: int = 0) -> dict[str, Any]:
    """An ICMP (or ICMPv6) frame; by default an echo request (a ping). `ident` is the echo id:
    conntrack tells pings apart by it (a new ping process uses a new one)."""
    if ipv6:
        kind = {"ip_proto": IP_PROTO_ICMPV6, "icmpv6_type": 128 if icmp_type is None else icmp_type, "icmpv6_code": 0}
    else:
        kind = {"ip_proto": IP_PROTO_ICMP, "icmpv4_type": 8 if icmp_type is None else icmp_type, "icmpv4_code": 0}
    return {**ip_frame(src, dst, ipv6), **kind, "icmp_id": ident}


def service_frame(
    src: Host, dst: Host, proto: str, dport: int | None = None, sport: int = 40000, ipv6: bool = False
) -> dict[str, Any]:
    """A frame for a service the way rules name it: proto 'tcp', 'udp' or 'icmp' (dport ignored, sport is
    the echo id)."""
    if proto == "tcp":
        return tcp_frame(src, dst, sport, dport, ipv6)
    if proto == "udp":
        return udp_frame(src, dst, sport, dport, ipv6)
    if proto == "icmp":
        return icmp_frame(src, dst, ipv6=ipv6, ident=sport)
    raise ValueError(f"no frame for protocol {proto!r}")


_SWAPS = (
    ("eth_src", "eth_dst"),
    ("ipv4_src", "ipv4_dst"),
    ("ipv6_src", "ipv6_dst"),
    ("tcp_src", "tcp_dst"),
    ("udp_src", "udp_dst"),
)


def reply_frame(frame: Mapping[str, Any]) -> dict[str, Any]:
    """The reply to `frame`: MACs, addresses and ports swapped; an ICMP echo request becomes its reply."""
    reply = dict(frame)
    for a, b in _SWAPS:
        if a in frame or b in frame:
            reply[a], reply[b] = frame.get(b), frame.get(a)
    if "icmpv4_type" in frame:
        reply["icmpv4_type"] = ICMP_REPLY.get(frame["icmpv4_type"], frame["icmpv4_type"])
    if "icmpv6_type" in frame:
        reply["icmpv6_type"] = ICMPV6_REPLY.get(frame["icmpv6_type"], frame["icmpv6_type"])
    return reply


def neighbour_discovery(src: Host, nd_type: int, dst: Host | None = None) -> dict[str, Any]:
    """An IPv6 neighbour-discovery message (ICMPv6 133-137): to `dst` by unicast, else to the
    all-nodes multicast group."""
    frame = ipv6_frame(src, dst.mac, link_local(dst.mac)) if dst else ipv6_frame(src, "33:33:00:00:00:01", "ff02::1")
    return {**frame, "ip_proto": IP_PROTO_ICMPV6, "icmpv6_type": nd_type, "icmpv6_code": 0}


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


def arp_reply(src: Host, dst: Host) -> dict[str, Any]:
    """`src` answering an ARP request of `dst` (unicast)."""
    return {
        "eth_src": src.mac,
        "eth_dst": dst.mac,
        "eth_type": pipeline.ETH_TYPE_ARP,
        "arp_op": 2,
        "arp_sha": src.mac,
        "arp_spa": first_ip(src),
        "arp_tha": dst.mac,
        "arp_tpa": first_ip(dst),
    }


def lldp_frame(src_mac: str = "02:00:00:00:00:01") -> dict[str, Any]:
    return {"eth_src": src_mac, "eth_dst": "01:80:c2:00:00:0e", "eth_type": pipeline.ETH_TYPE_LLDP}


# ---------------------------------------------------------------------------
# Policy to compile with.
# ---------------------------------------------------------------------------
def vm_name(host: Host) -> str:
    return "vm-" + host.mac.replace(":", "")


def policy_state(
    labels: Mapping[Host, Mapping[str, str]] | Iterable[tuple[Host, Mapping[str, str]]] = (),
    rules: Iterable[Rule | Mapping[str, Any]] = (),
    default_action: str = "allow",
) -> PolicyState:
    """A validated PolicyState: one VM per labelled host (its MAC and IPs, named by vm_name), the
    rules in order (a Rule, or a rule document whose name defaults to rule-<index>), the default.
    Hosts left out are unmanaged."""
    pairs = labels.items() if isinstance(labels, Mapping) else labels
    vms = [vm_from_json(vm_name(h), {"macs": [h.mac], "ips": sorted(h.ips), "labels": dict(lbl)}) for h, lbl in pairs]
    state = PolicyState().with_vms(vms)
    for index, rule in enumerate(rules):
        state = state.with_rule(rule if isinstance(rule, Rule) else rule_from_json({"name": f"rule-{index}", **rule}))
    return state.with_default(default_action)


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
    tunnels: TunnelMesh | None = None


@dataclass(frozen=True)
class TunnelMesh:
    """Tunnel ports between hypervisors: the plan the compiler uses, and the fake's wiring of
    each tunnel port to the one at the other end."""

    plan: TunnelPlan
    wiring: Mapping[PortRef, PortRef]


TUNNEL_PORT_BASE = 1000  # tunnel port numbers: 1000 + the peer's index


def add_tunnel_mesh(topo: Topology, hypervisors: Sequence[int], pairs: Iterable[tuple[int, int]] | None = None) -> TunnelMesh:
    """Add a tunnel port for every pair of hypervisors (or only `pairs`), named as agents name them
    (hypervisor i is index i + 1 in `hypervisors`), and return the plan and the wiring."""
    from apps.steering import tunnel_port_name

    index = {dpid: i + 1 for i, dpid in enumerate(hypervisors)}
    wanted = [tuple(p) for p in pairs] if pairs is not None else list(itertools.combinations(hypervisors, 2))
    ports: dict[int, dict[int, int]] = {}
    wiring: dict[PortRef, PortRef] = {}
    for a, b in wanted:
        a_port, b_port = TUNNEL_PORT_BASE + index[b], TUNNEL_PORT_BASE + index[a]
        topo.set_port(a, Port(a_port, tunnel_port_name(index[a], index[b]), f"fe:00:00:00:{index[a]:02x}:{index[b]:02x}"))
        topo.set_port(b, Port(b_port, tunnel_port_name(index[b], index[a]), f"fe:00:00:00:{index[b]:02x}:{index[a]:02x}"))
        ports.setdefault(a, {})[b] = a_port
        ports.setdefault(b, {})[a] = b_port
        wiring[PortRef(a, a_port)] = PortRef(b, b_port)
        wiring[PortRef(b, b_port)] = PortRef(a, a_port)
    return TunnelMesh(TunnelPlan(ports), wiring)


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
    tunnels: bool = False,
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
    mesh = add_tunnel_mesh(topo, hv_ids) if tunnels else None
    return LeafSpine(topo, spine_ids, leaf_ids, hv_ids, vms, mesh)


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
