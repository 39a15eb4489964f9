"""Fabric learning as a pure state machine: switch, port, probe and packet events in; model changes
and frames to send out. No Ryu here: the shell (controller/app.py) feeds events and sends what
comes back, and unit tests drive the same code with generated events.

What the learner decides, and the rules it follows (docs/architecture.md, "Topology learning"):
- the kind of every port: pending, edge, inter-switch, lost-link or down. No guess is final: a
  valid, fresh probe seen both ways makes a port inter-switch whatever was learned on it, and
  the hosts learned there are forgotten and learned again where they really are;
- links: a probe (signed LLDP) is fresh for at most LLDP_MAX_AGE, and a link needs probes seen
  in both directions. A probe seen one way is answered at once from the port it arrived on, so
  the other way is seen within milliseconds instead of a probe period;
- ports that the hypervisor declares as VM ports (OVS external_ids, or one inventory VM's MACs
  learned there) never become inter-switch, and are never sent probes;
- hosts: learned from frames on edge ports, never from a switch's own MACs, including switches
  that connect after the frame was seen.
"""

from __future__ import annotations

import enum
import logging
import os
import struct
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from apps import pipeline
from topology import lldp
from topology.model import (
    KIND_DOWN,
    KIND_EDGE,
    LINK_TIMEOUT,
    Endpoint,
    Link,
    Port,
    PortRef,
    Topology,
    is_tunnel_port_name,
)

LOG = logging.getLogger("goldilocks.learner")

LLDP_MAX_AGE = 1.0  # seconds a probe stays fresh: a replayed probe is useless after this
# While the controller itself runs late (its event loop oversleeps: a cold start's flow-mods, a big
# table read back), a probe waits as long in its queues: a probe's freshness then allows the lag
# seen in the last LAG_MEMORY seconds (at most LAG_ALLOWANCE_MAX), and a stall longer than
# STALL gives every link a fresh window, as nobody could hear its probes meanwhile.
LAG_ALLOWANCE_MAX = 5.0
LAG_MEMORY = 10.0
STALL = 0.5
# Probes themselves say how late news arrives: a signed probe that took longer than PROBE_DELAY_NOTICE
# from its packet-out to its packet-in (queued behind flow-mods, packet-ins and table reads: a cold
# start of a thousand switches) lets the next ones be as old and makes links wait as much longer
# before they time out (at most LAG_ALLOWANCE_MAX, forgotten after LAG_MEMORY). Only a probe that
# arrives on a port not known to face hosts counts: a VM cannot slow discovery down by replaying an
# old one. (Pending ports do not wait longer for it: Open vSwitch just started delays a few probes
# that much, and a Mininet data centre's first pingall paid for it.)
PROBE_DELAY_NOTICE = 0.2
# A switch that connected but has not probed yet may be behind any pending port: no port is taken to
# face hosts until it has (at most this long after it connected). Otherwise a hypervisor's uplink
# is an edge port 0.1 s after its own probe found the leaf not yet ready to answer.
UNHEARD_MAX = 5.0
PROBE_REPLY_GAP = 0.2  # at most one immediate answering probe per port in this time
EDGE_CONFIRM_MAX_BACKLOG = 4  # queued events above which no port is confirmed as an edge port
# A gap longer than this between two edge checks means the controller was busy (a long compile):
# probes may be waiting unread, so pending ports start their proving time again.
EDGE_CHECK_STALL = 0.2
# Frames that arrive on a port still proving it faces hosts are held, not dropped, and replayed
# once it is confirmed: a VM's first ARP is then not lost to a one-second retry.
HELD_FRAMES_PER_PORT = 16
HELD_FRAME_MAX_AGE = 2.0
# A known host's frame that missed is re-injected once its switch confirmed its flows (the shell
# waits); another miss from it within REINJECT_GAP of that is not re-injected: its flows are not in
# place, and re-injecting each miss would bounce frames between switch and controller until they are.
REINJECT_GAP = 0.5
# A host's IPv4 addresses are learned up to this many; beyond, it learns no more (as a port learns
# no more than MAX_HOSTS_PER_PORT MACs). Each address is an ARP responder on every hypervisor, and a
# VM can claim a new one in every frame it sends: without a bound, one VM grew every switch's table.
MAX_ADDRESSES_PER_HOST = 16
REFUSAL_LOG_GAP = 10.0  # seconds between two log lines about refused addresses
UNANSWERED_ARP_KEEP = 1.0  # seconds an unanswered ARP request is asked again as ports come up
UNANSWERED_ARP_MAX = 256
# Packet-outs at most that send the recent unanswered requests straight out of newly confirmed
# edge ports; beyond, each request is asked again once through its switch's flows.
REPLAY_STRAIGHT_MAX = 4096
# A port that has faced hosts for EDGE_SETTLED seconds is probed every EDGE_PROBE_EVERY-th tick,
# staggered: a switch plugged in behind it later probes its own new ports every tick, and its probe
# is answered at once (probe_in), so the link is found as fast; probing a data centre's VM ports
# every second was most of the probes a large cold start sent (11,000 a second at 500 hypervisors).
# A port wrongly taken for an edge port does not wait for its own probes: the switch behind it
# probes its pending end every tick, and that probe is answered at once. (10 s of full-rate probing
# per VM port kept a 500-hypervisor cold start saturated: 26-35 s to settle, 15 s at 3 s.)
EDGE_SETTLED = 3.0
EDGE_PROBE_EVERY = 5
# A host that moved between ports this recently is no proof that its new port is a VM port: a
# VM flooded through a port wrongly taken for an edge port moves there, and back, and there again.
MOVE_SETTLE = 3.5
# A switch confirms new flows (barrier) before its datapath has dropped the cached decisions of the
# old ones: a request re-injected at once can still meet a stale "drop" one switch further on.
# So every ask is made twice, the second time this long after the first.
ASK_AGAIN_DELAY = 0.25
# For the same reason a switch that just got its first flows can drop the answer to its own first
# probes (its datapath still holds the "drop everything" it cached while it had no flows): this long
# after it synced, it probes again from every port whose probe was heard but not answered, so a late
# hypervisor's uplink is found then and not a probe period later (its VMs unreachable meanwhile).
PROBE_AGAIN_DELAY = 0.3


class Punt(enum.Enum):
    """Why a switch sent a frame to the controller (from the entry's table and cookie)."""

    MISS = "miss"  # the ingress table-miss: an unknown source, learned and then re-injected
    UNANSWERED_ARP = "unanswered-arp"  # an ARP request no responder answered, flooded and copied
    COPY = "copy"  # any other copy (ARP from a host whose IP is not known yet)
    EVIDENCE = "evidence"  # port security: a frame a managed VM's port should not have sent; never learned from
    FOLLOW = "follow"  # a quarantined VM's frame: where it is is learned (it may have moved), never an address it claims


@dataclass(frozen=True)
class PacketOut:
    """A frame for the shell to send: out of `out_port`, or through the switch's pipeline from
    table 0 as if it arrived on `in_port` when `out_port` is OFPP_TABLE."""

    dpid: int
    frame: bytes
    out_port: int
    in_port: int = pipeline.OFPP_CONTROLLER


@dataclass
class Outcome:
    """What an event asks of the shell: recompile (`changed`), send `send` now, then, once the
    recompiled flows are on the switches, send `send_after` and run each of `after` (each gives
    another Outcome to carry out the same way)."""

    changed: bool = False
    send: list[PacketOut] = field(default_factory=list)
    send_after: list[PacketOut] = field(default_factory=list)
    after: list[Callable[[float], Outcome]] = field(default_factory=list)
    learned: bool = False  # a host was learned or moved (for the learning-latency metric)

    def add(self, other: Outcome) -> Outcome:
        self.changed |= other.changed
        self.learned |= other.learned
        self.send += other.send
        self.send_after += other.send_after
        self.after += other.after
        return self


@dataclass
class PortHistory:
    """The kind a port has now, how many times it changed, and when it last did."""

    kind: str
    changes: int = 0
    since: float = 0.0


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ipv4(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def ether_type(frame: bytes) -> int:
    return struct.unpack("!H", frame[12:14])[0] if len(frame) >= 14 else 0


def _payload(frame: bytes) -> tuple[int, int]:
    """(ether type, offset of the payload) of an Ethernet frame, past one VLAN tag (802.1Q or an
    802.1ad service tag: the switch matched the type behind either, as Open vSwitch parses one tag)."""
    eth_type = ether_type(frame)
    if eth_type in (0x8100, 0x88A8) and len(frame) >= 18:
        return struct.unpack("!H", frame[16:18])[0], 18
    return eth_type, 14


# An ARP message for IPv4 over Ethernet: hardware type 1, protocol 0x0800, address lengths 6 and 4.
_ARP_IPV4_ETHERNET = bytes.fromhex("000108000604")
_ARP_REQUEST = _ARP_IPV4_ETHERNET + b"\x00\x01"


def _host_address(raw: bytes) -> str | None:
    """`raw` as a dotted address if a host can hold it: not in 0.0.0.0/8 ("this network": 0.0.0.0
    is a host with no address yet), 127.0.0.0/8 (loopback), 224.0.0.0/4 (multicast) or
    240.0.0.0/4 (reserved, and the broadcast address)."""
    first = raw[0]
    if first == 0 or first == 127 or first >= 224:
        return None
    return _ipv4(raw)


def sender_ip(frame: bytes) -> tuple[str, str | None]:
    """(source MAC, sender IPv4 from ARP or IPv4 header, if any) of an Ethernet frame. Only a whole,
    well-formed header names an address, and only one a host can hold: a VM sends any bytes it
    likes, and every address believed is an ARP responder on every hypervisor."""
    src = _mac(frame[6:12])
    eth_type, offset = _payload(frame)
    if eth_type == pipeline.ETH_TYPE_ARP and len(frame) >= offset + 28:
        if frame[offset : offset + 6] != _ARP_IPV4_ETHERNET or frame[offset + 6 : offset + 8] not in (b"\x00\x01", b"\x00\x02"):
            return src, None
        return src, _host_address(frame[offset + 14 : offset + 18])
    if eth_type == pipeline.ETH_TYPE_IPV4 and len(frame) >= offset + 20:
        version, header_words = frame[offset] >> 4, frame[offset] & 0x0F
        if version != 4 or header_words < 5 or len(frame) < offset + 4 * header_words:
            return src, None
        return src, _host_address(frame[offset + 12 : offset + 16])
    return src, None


def arp_target(frame: bytes) -> str | None:
    """The address an ARP request asks for, if the frame is one."""
    eth_type, offset = _payload(frame)
    if eth_type != pipeline.ETH_TYPE_ARP or len(frame) < offset + 28 or frame[offset : offset + 8] != _ARP_REQUEST:
        return None
    return _ipv4(frame[offset + 24 : offset + 28])


def _ms(now: float) -> int:
    return int(now * 1000)


class _RecentMax:
    """The largest value noted in the last LAG_MEMORY seconds (0 once forgotten)."""

    __slots__ = ("value", "at")

    def __init__(self) -> None:
        self.value, self.at = 0.0, -1e9

    def note(self, value: float, now: float) -> None:
        if value >= self.value or now - self.at > LAG_MEMORY:
            self.value, self.at = value, now

    def get(self, now: float) -> float:
        return self.value if now - self.at <= LAG_MEMORY else 0.0


class Learner:
    """Owns the topology model and everything that decides it: probes, held frames, unanswered
    ARP requests, declared VM ports, and the history of every port's kind. Every method takes
    the time (`now`, seconds on a monotonic clock) from its caller."""

    def __init__(self, topo: Topology | None = None, key: bytes | None = None, now: float = 0.0) -> None:
        self.topo = topo if topo is not None else Topology()
        self.key = key if key is not None else os.urandom(32)
        self.probed: set[int] = set()  # connected switches that have sent probes since they connected
        # (from, to) -> when a fresh probe sent from `from` last arrived at `to`
        self.probes: dict[tuple[PortRef, PortRef], float] = {}
        self.one_way: dict[PortRef, float] = {}  # ends of a probe seen one way only -> when
        self.held: dict[PortRef, list[tuple[float, Punt, bytes]]] = {}
        self.unanswered_arp: deque[tuple[float, PortRef, bytes]] = deque(maxlen=UNANSWERED_ARP_MAX)
        self._unanswered_at: dict[tuple[PortRef, bytes], float] = {}  # each kept request -> when first kept
        self._ticks = 0
        self.declared_vm_interfaces: frozenset[str] = frozenset()
        self.inventory_macs: Mapping[str, str] = {}  # MAC -> inventory VM name
        self.ports: dict[int, dict[int, PortHistory]] = {}  # dpid -> port -> its kind's history
        self.kind_changes: Counter[tuple[str, str]] = Counter()
        self.lldp_rejected = 0  # forged, stale or replayed probes
        self._lag = _RecentMax()  # of the controller's own loop
        self._delay = _RecentMax()  # of a probe (PROBE_DELAY_NOTICE)
        self._last_tick: float | None = None
        self._unheard: dict[int, float] = {}  # connected switches that have not probed yet -> since when
        self._reinjected_at: dict[tuple[PortRef, str], float] = {}  # (port, known host) -> its last re-injection
        self.reinjections_refused = 0
        self.probes_refused = 0  # valid probes on a declared VM port
        self.hosts_forgotten = 0  # hosts dropped because their port turned out to face a switch
        self.endpoint_spoofs = 0  # frames from a tunnel endpoint's MAC on a port that is not its own
        self.addresses_refused = 0  # addresses not learned because their host claims MAX_ADDRESSES_PER_HOST already
        self._address_refusal_logged = -1e18
        self._last_answer: dict[PortRef, float] = {}
        self._last_edge_check: float | None = None
        self._ask_again_at: float | None = None
        self._probe_again: dict[int, float] = {}  # switch -> when it probes every port once more
        self._moved_at: dict[str, float] = {}  # MAC -> when the host last moved between ports
        self._refusals_logged: set[tuple[PortRef, PortRef]] = set()
        # Links loaded from disk were seen both ways before the restart.
        for link, seen in self.topo.links.items():
            self.probes[(link.a, link.b)] = self.probes[(link.b, link.a)] = seen
        self._note_kinds(now, quiet=True)

    # -- switches and ports ---------------------------------------------------------------
    def switch_connected(self, dpid: int, now: float) -> Outcome:
        self.probed.discard(dpid)  # it probes again once its flows are in place
        self._unheard[dpid] = now
        self.topo.switch_connected(dpid)
        # Its links could not age while it was away; their window starts again now, or the first tick
        # after it reconnects would drop them before its first probe gets through (a flap that loses frames).
        self.topo.refresh_links(now, {dpid})
        self._note_kinds(now, [dpid])
        return Outcome()  # nothing to compile until its ports are known

    def switch_disconnected(self, dpid: int, now: float) -> Outcome:
        self.probed.discard(dpid)
        self._unheard.pop(dpid, None)
        self._probe_again.pop(dpid, None)
        for ref in [r for r in self.held if r.dpid == dpid]:
            del self.held[ref]
        changed = self.topo.switch_disconnected(dpid)
        self._note_kinds(now, [dpid])
        return Outcome(changed=changed)

    def role_described(self, dpid: int, dp_desc: str) -> Outcome:
        return Outcome(changed=self.topo.set_role_override(dpid, dp_desc))

    def ports_described(self, dpid: int, ports: Iterable[Port], now: float) -> Outcome:
        """The switch's full port list (on connect)."""
        links = set(self.topo.links)
        changed = self.topo.set_ports(dpid, ports)
        return self._ports_changed(dpid, changed, links, now)

    def port_changed(self, dpid: int, port: Port, now: float, deleted: bool = False) -> Outcome:
        """One port was added, modified or deleted. A port that comes up is probed at once."""
        topo = self.topo
        links = set(topo.links)
        changed = topo.delete_port(dpid, port.port_no) if deleted else topo.set_port(dpid, port)
        out = self._ports_changed(dpid, changed, links, now)
        if changed:
            LOG.info("switch %016x port %d %s", dpid, port.port_no, "deleted" if deleted else ("up" if port.up else "down"))
            if port.up and not deleted and dpid in self.probed:
                out.send += self._probes_from(dpid, [port.port_no], now)
        return out

    def _ports_changed(self, dpid: int, changed: bool, links_before: set[Link], now: float) -> Outcome:
        if not changed:
            return Outcome()
        sw = self.topo.switches[dpid]
        self.topo.place_endpoints()  # an endpoint's port may have just appeared
        live = set(sw.live_ports())
        for key in [k for k in self.probes if any(e.dpid == dpid and e.port not in live for e in k)]:
            del self.probes[key]
        for ref in [r for r in self.held if r.dpid == dpid and r.port not in live]:
            del self.held[ref]
        # A switch whose port MACs we now know may have sent frames we took for hosts.
        for mac in self.topo.forget_switch_mac_hosts(dpid):
            LOG.info("forgot host %s: it is a switch port's MAC", mac)
        # Kinds change on this switch, and at the far end of any link a dead port took down.
        far = {end.dpid for link in links_before - set(self.topo.links) for end in link.ends()}
        self._note_kinds(now, {dpid} | far)
        return Outcome(changed=True)

    def switch_synced(self, dpid: int, now: float) -> Outcome:
        """The switch holds its flows (LLDP goes to the controller): it probes every port, and
        from now on its pending ports' proving time runs."""
        self.probed.add(dpid)
        self._unheard.pop(dpid, None)
        self._probe_again[dpid] = now + PROBE_AGAIN_DELAY
        sw = self.topo.switches.get(dpid)
        return Outcome(send=self._probes_from(dpid, sw.live_ports() if sw else [], now))

    # -- declarations -----------------------------------------------------------------------
    def set_declared_vm_interfaces(self, names: Collection[str], now: float) -> Outcome:
        """Interfaces the hypervisor declares as VM ports (OVS Interface external_ids vm-id,
        iface-id or attached-mac), by name."""
        names = frozenset(names)
        if names == self.declared_vm_interfaces:
            return Outcome()
        self.declared_vm_interfaces = names
        # A declared port that carries a link loses it: the hypervisor knows what it plugged in.
        dropped = [lk for lk in self.topo.links if any(self._declared(e) for e in lk.ends())]
        for link in dropped:
            LOG.warning("link %s dropped: a declared VM port is one of its ends", _link_text(link))
            del self.topo.links[link]
            for end in link.ends():
                self.probes.pop((end, link.b if end == link.a else link.a), None)
        if dropped:
            self._note_kinds(now)
        return Outcome(changed=bool(dropped))

    def set_inventory_macs(self, macs: Mapping[str, str]) -> None:
        """MAC -> VM name of every VM in the inventory."""
        self.inventory_macs = macs

    def set_endpoints(self, endpoints: Collection[Endpoint], now: float) -> Outcome:
        """The tunnel endpoints the agents report. Each is a host on its own port, and its MAC is
        never learned on another port (a VM claiming it is refused and counted)."""
        wanted = {ep.mac.lower(): replace(ep, mac=ep.mac.lower()) for ep in endpoints}
        if wanted == self.topo.endpoints:
            return Outcome()
        for mac in set(self.topo.endpoints) - set(wanted):
            self.topo.remove_host(mac)
        self.topo.endpoints = wanted
        self.topo.place_endpoints()
        self._note_kinds(now)
        return Outcome(changed=True)

    def _not_probed(self) -> frozenset[str]:
        """Interfaces that never carry a link: declared VM ports and tunnel endpoints' ports."""
        if not self.topo.endpoints:
            return self.declared_vm_interfaces
        return self.declared_vm_interfaces | {ep.port_name for ep in self.topo.endpoints.values()}

    def _is_tunnel(self, ref: PortRef) -> bool:
        sw = self.topo.switches.get(ref.dpid)
        port = sw.ports.get(ref.port) if sw else None
        return port is not None and is_tunnel_port_name(port.name)

    def _declared(self, ref: PortRef) -> bool:
        sw = self.topo.switches.get(ref.dpid)
        port = sw.ports.get(ref.port) if sw else None
        return port is not None and port.name in self._not_probed()

    def _vm_port_reason(self, ref: PortRef, now: float) -> str | None:
        """Why `ref` is a VM port that must never become inter-switch, or None."""
        if self._declared(ref):
            return "the hypervisor declares it a VM port (OVS external_ids)"
        macs = self.topo.hosts_on(ref.dpid, ref.port)
        if macs:
            vms = {self.inventory_macs.get(mac) for mac in macs}
            # Only when everything learned there is one inventory VM, settled there: a port that
            # has carried the MACs of several VMs, or of a VM that keeps moving (frames from the
            # fabric, before the switch behind it was known) is no proof of anything.
            settled = all(now - self._moved_at.get(mac, -1e9) >= MOVE_SETTLE for mac in macs)
            if len(vms) == 1 and None not in vms and settled:
                return f"VM {vms.pop()} is on it"
        return None

    # -- timers -------------------------------------------------------------------------------
    def tick(self, now: float, busy: Collection[int] = (), behind: bool = False, period: float | None = None) -> Outcome:
        """The probe period: every probing switch probes every live port; links and probes
        whose time ran out are forgotten.

        `busy`: switches whose messages wait behind a backlog of flow-mods. A probe sent to one
        would arrive stale, so none is sent, and its links cannot age meanwhile: they get a fresh
        window, as a reconnecting switch's do. `behind`: the controller has frames waiting that it
        has not read yet (probes among them, perhaps): no link ages this tick. Without these, a
        cold start of a hundred switches flapped its links under its own flow-mods."""
        out = Outcome()
        self._ticks += 1
        # A tick that comes late (`period`: when it was due) means the controller stalled: the
        # stall is noted (every link gets a fresh window) before any link may age. The edge loop
        # notes stalls too, but after a long one either loop may wake first.
        last, self._last_tick = self._last_tick, now
        if period is not None and last is not None:
            self.note_lag(max(0.0, now - last - period), now)
        for dpid in sorted(self.probed):
            sw = self.topo.switches.get(dpid)
            if sw is not None and dpid not in busy:
                out.send += self._probes_from(dpid, self._due_for_probe(dpid, sw.live_ports(), now), now)
        if busy:
            self.topo.refresh_links(now, set(busy))
        if behind:
            return out
        timeout = self.link_timeout(now)
        for key in [k for k, seen in self.probes.items() if now - seen > timeout]:
            del self.probes[key]
        for ref in [r for r, seen in self.one_way.items() if now - seen > LINK_TIMEOUT]:
            del self.one_way[ref]
        for key in [k for k, at in self._reinjected_at.items() if now - at >= REINJECT_GAP]:
            del self._reinjected_at[key]
        for mac in [m for m, moved in self._moved_at.items() if now - moved > MOVE_SETTLE]:
            del self._moved_at[mac]
        expired = self.topo.expire_links(now, timeout)
        if expired:
            for link in expired:
                LOG.info("link %s timed out: no probe both ways for %.1f s", _link_text(link), timeout)
            self._note_kinds(now)
            out.changed = True
        return out

    def check_edges(self, now: float, backlog: int = 0) -> Outcome:
        """Confirm pending ports that proved they face hosts; their held frames are replayed once
        the flows for them are in place. Also makes the second of each pair of asks."""
        out = Outcome()
        if self._ask_again_at is not None and now >= self._ask_again_at:
            self._ask_again_at = None
            out.send += self._reinject_unanswered(now)
        for dpid in [d for d, at in self._probe_again.items() if now >= at]:
            del self._probe_again[dpid]
            sw = self.topo.switches.get(dpid)
            if sw is not None and dpid in self.probed:
                # Only ports heard one way: a probe from there arrived, its answer did not.
                ports = [p for p in sw.live_ports() if PortRef(dpid, p) in self.one_way]
                out.send += self._probes_from(dpid, ports, now)
        return out.add(self._confirm_edges(now, backlog))

    def _confirm_edges(self, now: float, backlog: int) -> Outcome:
        last, self._last_edge_check = self._last_edge_check, now
        if last is not None and now - last > EDGE_CHECK_STALL:
            self.topo.restart_proving(now)
        if backlog > EDGE_CONFIRM_MAX_BACKLOG:
            return Outcome()  # probes may be waiting in the queue: do not judge ports now
        if self._unheard and self._waiting_for_probes(now):
            return Outcome()
        hold_back = {ref for ref, seen in self.one_way.items() if now - seen <= LINK_TIMEOUT}
        confirmed = self.topo.confirm_edge_ports(
            now,
            probed=self.probed,
            hold_back=hold_back,
            declared=self._not_probed(),
        )
        if not confirmed:
            return Outcome()
        self._note_kinds(now, {ref.dpid for ref in confirmed})
        out = Outcome(changed=True, after=[lambda t, c=frozenset(confirmed): self.ask_confirmed_ports(c, t)])
        # The frames held on them are handled now, so that the hosts they teach are in the compile
        # this confirmation starts. Handled once its flows were in place, they were learned a
        # compile later: at a cold start of 20,000 VMs, most of them. Re-injecting a frame still
        # waits for the flows (send_after).
        return out.add(self._handle_held(confirmed, now))

    # -- probes -------------------------------------------------------------------------------
    def _probes_from(self, dpid: int, ports: Iterable[int], now: float) -> list[PacketOut]:
        sw = self.topo.switches.get(dpid)
        if sw is None:
            return []
        frames = []
        for port_no in ports:
            port = sw.ports.get(port_no)
            if (
                port is None
                or not port.up
                or port_no >= pipeline.OFPP_MAX
                or port.name in self._not_probed()
                or is_tunnel_port_name(port.name)
            ):
                continue  # a declared VM port or an endpoint's never carries a link: nothing behind it sees a probe
            frame = lldp.build_probe(self.key, dpid, port_no, port.hw_addr, _ms(now))
            frames.append(PacketOut(dpid, frame, port_no))
        return frames

    def _due_for_probe(self, dpid: int, live: list[int], now: float) -> list[int]:
        """The ports to probe this tick: all but settled edge ports, which take turns (EDGE_SETTLED)."""
        histories = self.ports.get(dpid)
        if not histories:
            return live
        due = []
        tick = self._ticks + dpid
        for port_no in live:
            history = histories.get(port_no)
            if history is not None and history.kind == KIND_EDGE and now - history.since > EDGE_SETTLED:
                if (tick + port_no) % EDGE_PROBE_EVERY:
                    continue
            due.append(port_no)
        return due

    def note_lag(self, lag: float, now: float) -> None:
        """The controller's loop woke `lag` seconds late: probes waited as long (see STALL)."""
        self._lag.note(lag, now)
        if lag > STALL:
            self.topo.refresh_links(now)

    def probe_max_age(self, now: float) -> float:
        """How old a probe may be when it arrives: LLDP_MAX_AGE, plus the recent lag of the loop
        or delay of probes, whichever is larger."""
        return LLDP_MAX_AGE + min(max(self._lag.get(now), self._delay.get(now)), LAG_ALLOWANCE_MAX)

    def probe_delay(self, now: float) -> float:
        """The largest recent delay of a probe over PROBE_DELAY_NOTICE (0 if none), at most LAG_ALLOWANCE_MAX."""
        return min(self._delay.get(now), LAG_ALLOWANCE_MAX)

    def link_timeout(self, now: float) -> float:
        """How long a link may go unheard one way: LINK_TIMEOUT, and as much longer as probes are late."""
        return LINK_TIMEOUT + self.probe_delay(now)

    def _note_delay(self, here: PortRef, delay: float, now: float) -> None:
        if delay <= PROBE_DELAY_NOTICE or delay > LLDP_MAX_AGE + LAG_ALLOWANCE_MAX:
            return  # on time, or too old to be anything but a replay
        sw = self.topo.switches.get(here.dpid)
        if sw is None or here.port in sw.edge_confirmed:
            return
        self._delay.note(delay, now)

    def _waiting_for_probes(self, now: float) -> bool:
        """Has a switch connected, not probed yet, within UNHEARD_MAX (see there)?"""
        for dpid, since in list(self._unheard.items()):
            if now - since > UNHEARD_MAX:
                del self._unheard[dpid]  # it never synced: no longer waited for
            else:
                return True
        return False

    def probe_in(self, here: PortRef, frame: bytes, now: float, received: float | None = None) -> Outcome:
        arrived = now if received is None else min(now, received)
        probe = lldp.read_probe(self.key, frame)
        if probe is not None:
            max_age_ms = int(self.probe_max_age(arrived) * 1000)  # judged before this probe's own delay
            self._note_delay(here, (_ms(arrived) - probe[2]) / 1000, now)
            if not lldp.fresh(probe[2], _ms(arrived), max_age_ms):
                probe = None  # stale or replayed (or from the future)
        if probe is None:
            self.lldp_rejected += 1  # forged, from another controller, stale or replayed
            return Outcome()
        src = PortRef(probe[0], probe[1])
        if src == here or src.dpid not in self.topo.switches:
            return Outcome()
        if self._is_tunnel(here) or self._is_tunnel(src):
            return Outcome()  # probes are never sent into tunnels; one that comes out of one is no link
        for end in (here, src):
            reason = self._vm_port_reason(end, now)
            if reason is not None:
                self.probes_refused += 1
                if (src, here) not in self._refusals_logged:
                    self._refusals_logged.add((src, here))
                    LOG.warning(
                        "probe from switch %016x port %d on switch %016x port %d refused: port %016x:%d: %s",
                        src.dpid, src.port, here.dpid, here.port, end.dpid, end.port, reason,
                    )  # fmt: skip
                return Outcome()
        self.probes[(src, here)] = now
        back = self.probes.get((here, src))
        if back is None or now - back > self.link_timeout(now):
            # Seen one way only: a switch may be behind either end, so neither is proven to face
            # hosts yet; answer from here at once so the other way is seen in milliseconds.
            self.one_way[src] = self.one_way[here] = now
            out = Outcome()
            if now - self._last_answer.get(here, -1e9) >= PROBE_REPLY_GAP:
                self._last_answer[here] = now
                out.send += self._probes_from(here.dpid, [here.port], now)
            return out
        self.one_way.pop(src, None)
        self.one_way.pop(here, None)
        link = Link.between(src, here)
        if link in self.topo.links:
            # Seen both ways since `back`: but never older than it was (a refresh gave it a fresh
            # window while nobody could hear its probes; the other way's last probe predates that).
            self.topo.links[link] = max(self.topo.links[link], min(now, back))
            return Outcome()
        forgotten = sorted(self.topo.hosts_on(src.dpid, src.port) | self.topo.hosts_on(here.dpid, here.port))
        self.topo.link_seen(src, here, min(now, back))
        self.held.pop(src, None)
        self.held.pop(here, None)
        LOG.info("link %s", _link_text(link))
        if forgotten:
            self.hosts_forgotten += len(forgotten)
            LOG.warning("link %s: forgot %d hosts learned on its ports: %s", _link_text(link), len(forgotten),
                        ", ".join(forgotten))  # fmt: skip
        self._note_kinds(now, {src.dpid, here.dpid})
        # The flooding tree just grew: ARP requests it did not reach before are asked again.
        return Outcome(changed=True, after=[self.ask_again])

    # -- packets ------------------------------------------------------------------------------
    def packet_in(
        self, dpid: int, in_port: int, frame: bytes, punt: Punt, now: float, received: float | None = None
    ) -> Outcome:
        """A frame a switch sent up. `received`: when the controller read it off the switch's
        connection (a probe's age is judged then, not after it waited for the controller)."""
        if len(frame) < 14 or in_port >= pipeline.OFPP_MAX:
            return Outcome()  # the bridge's own stack (LOCAL) is never a host, nor a link's end
        here = PortRef(dpid, in_port)
        if ether_type(frame) == pipeline.ETH_TYPE_LLDP:
            return self.probe_in(here, frame, now, received)
        topo = self.topo
        if not topo.is_edge_port(dpid, in_port):
            if topo.is_pending_port(dpid, in_port):
                held = self.held.setdefault(here, [])
                if len(held) < HELD_FRAMES_PER_PORT:
                    held.append((now, punt, frame))
            return Outcome()
        if punt is Punt.EVIDENCE:
            return Outcome()  # the shell acts on it (controller/security.py); it teaches nothing
        if punt is Punt.UNANSWERED_ARP:
            self._note_unanswered(here, frame, now)
            # Its switch answers that address itself from now on (the flood reached the owner this time).
            target = arp_target(frame)
            return Outcome(changed=target is not None and self.topo.note_asked(dpid, target))
        return self._learn(here, frame, punt, now)

    def _note_unanswered(self, here: PortRef, frame: bytes, now: float) -> None:
        """Keep an unanswered request to ask again. The same request seen again while kept (the
        copy of one asked again, or the VM's own retry) keeps its first time: otherwise every
        asking-again would renew it, and a cold start that confirms ports for minutes would keep
        re-injecting the same requests, each copied back, for as long."""
        key = (here, frame)
        first = self._unanswered_at.get(key)
        if first is not None and now - first <= UNANSWERED_ARP_KEEP:
            return
        queue = self.unanswered_arp
        if len(queue) == queue.maxlen:
            self._forget_unanswered(queue.popleft())
        self._unanswered_at[key] = now
        queue.append((now, here, frame))

    def _forget_unanswered(self, item: tuple[float, PortRef, bytes]) -> None:
        at, ref, frame = item
        if self._unanswered_at.get((ref, frame)) == at:
            del self._unanswered_at[(ref, frame)]

    def _learn(self, here: PortRef, frame: bytes, punt: Punt, now: float) -> Outcome:
        """Learn the sender of a frame from an edge port; if it came from the table-miss entry,
        re-inject it at table 0 once the flows for its sender are in place."""
        mac, ip = sender_ip(frame)
        if punt is Punt.FOLLOW:
            ip = None  # a quarantined VM's ARP could claim any address: the model must not believe it
        if frame[6] & 1 or mac in self.topo.switch_macs():
            return Outcome()  # multicast sources and switches are never hosts
        endpoint = self.topo.endpoints.get(mac)
        if endpoint is not None and self.topo.endpoint_ref(endpoint) != here:
            self.endpoint_spoofs += 1
            LOG.warning("switch %016x port %d: refused a frame from %s, the tunnel endpoint of %s (it is plugged in "
                        "elsewhere)", here.dpid, here.port, mac, endpoint.hypervisor)  # fmt: skip
            return Outcome()
        reinject = [PacketOut(here.dpid, frame, pipeline.OFPP_TABLE, here.port)] if punt is Punt.MISS else []
        old = self.topo.hosts.get(mac)
        if ip is not None and old is not None and ip not in old.ips and len(old.ips) >= MAX_ADDRESSES_PER_HOST:
            ip = None  # its place is still learned
            self._refuse_address(mac, now)
        if self.topo.host_seen(mac, here.dpid, here.port, ip):
            if old is not None and (old.dpid, old.port) != (here.dpid, here.port):
                self._moved_at[mac] = now
            LOG.info("host %s ip %s at switch %016x port %d", mac, ip, here.dpid, here.port)
            return Outcome(changed=True, learned=True, send_after=reinject)
        if reinject and mac in self.topo.hosts:
            key = (here, mac)
            last = self._reinjected_at.get(key)
            if last is not None and now - last < REINJECT_GAP:
                self.reinjections_refused += 1
                return Outcome()
            self._reinjected_at[key] = now
            return Outcome(send_after=reinject)
        return Outcome()

    def _refuse_address(self, mac: str, now: float) -> None:
        self.addresses_refused += 1
        if now - self._address_refusal_logged >= REFUSAL_LOG_GAP:
            self._address_refusal_logged = now
            LOG.warning("host %s claims more than %d IPv4 addresses: no more are learned for it (%d refused so far)",
                        mac, MAX_ADDRESSES_PER_HOST, self.addresses_refused)  # fmt: skip

    def ask_again(self, now: float) -> Outcome:
        """ARP requests flooded before the network reached their target (its port was still
        proving itself, or the link toward it was not discovered yet) are asked again: now, and
        once more ASK_AGAIN_DELAY later. A request is kept for UNANSWERED_ARP_KEEP seconds."""
        self._ask_again_at = now + ASK_AGAIN_DELAY
        return Outcome(send=self._reinject_unanswered(now))

    def _recent_unanswered(self, now: float) -> list[tuple[PortRef, bytes]]:
        while self.unanswered_arp and now - self.unanswered_arp[0][0] > UNANSWERED_ARP_KEEP:
            self._forget_unanswered(self.unanswered_arp.popleft())
        recent = {}
        for _, ref, frame in self.unanswered_arp:
            recent[(ref, frame)] = None  # the same request asked twice is asked again once
        hosts = self.topo.hosts
        kept = []
        for ref, frame in recent:
            if not self.topo.is_edge_port(ref.dpid, ref.port):
                continue
            # A sender that moved since asking is not asked for again from where it was: the frame
            # would miss there, and teach that it moved back.
            host = hosts.get(_mac(frame[6:12]))
            if host is not None and (host.dpid, host.port) != (ref.dpid, ref.port):
                continue
            kept.append((ref, frame))
        return kept

    def _reinject_unanswered(self, now: float) -> list[PacketOut]:
        return [PacketOut(ref.dpid, frame, pipeline.OFPP_TABLE, ref.port) for ref, frame in self._recent_unanswered(now)]

    def _handle_held(self, confirmed: Collection[PortRef], now: float) -> Outcome:
        """The frames held on newly confirmed edge ports, handled as if they had just arrived."""
        out = Outcome()
        for ref in sorted(confirmed, key=lambda r: (r.dpid, r.port)):
            for held_at, punt, frame in self.held.pop(ref, []):
                if now - held_at <= HELD_FRAME_MAX_AGE and self.topo.is_edge_port(ref.dpid, ref.port):
                    out.add(self.packet_in(ref.dpid, ref.port, frame, punt, now))
        return out

    def ask_confirmed_ports(self, confirmed: Collection[PortRef], now: float) -> Outcome:
        """Ports were confirmed as edge ports (their held frames were handled then: _confirm_edges)
        and their flows are in place: the recent unanswered ARP requests go straight out of them
        (what the flood would have done had they been edge ports already; sent straight, they meet
        no switch whose datapath still caches the old flows)."""
        out = Outcome()
        requests = self._recent_unanswered(now)
        if len(requests) * len(confirmed) <= REPLAY_STRAIGHT_MAX:
            ports = sorted(confirmed, key=lambda r: (r.dpid, r.port))
            for ref, frame in requests:
                out.send += [PacketOut(c.dpid, frame, c.port) for c in ports if c != ref]
        else:
            # Every request out of every port would be a packet-out each (256 requests and 20,000
            # ports confirmed at a cold start: five million). Each is asked again once instead,
            # where it was sent: the flood of the flows now in place reaches the confirmed ports.
            out.send += [PacketOut(ref.dpid, frame, pipeline.OFPP_TABLE, ref.port) for ref, frame in requests]
        # Frames held on ports that turned out to be inter-switch are dropped.
        for ref in [r for r in self.held if not self.topo.is_pending_port(r.dpid, r.port)]:
            del self.held[ref]
        return out

    # -- kinds ------------------------------------------------------------------------------------
    def port_history(self, dpid: int, port_no: int) -> PortHistory:
        history = self.ports.get(dpid, {}).get(port_no)
        return history or PortHistory(self.topo.port_kind(dpid, port_no))

    def _note_kinds(self, now: float, dpids: Iterable[int] | None = None, quiet: bool = False) -> None:
        """Record each port's kind; log and count every change."""
        topo = self.topo
        for dpid in sorted(topo.switches if dpids is None else dpids):
            sw = topo.switches.get(dpid)
            if sw is None:
                self.ports.pop(dpid, None)
                continue
            known = self.ports.setdefault(dpid, {})
            for port_no in [p for p in known if p not in sw.ports]:
                del known[port_no]
            changed: dict[tuple[str, str], list[str]] = {}  # (from, to) -> the ports, for one line each
            for port_no, port in sw.ports.items():
                if port_no >= pipeline.OFPP_MAX:
                    continue
                kind = topo.port_kind(dpid, port_no)
                history = known.get(port_no)
                if history is None:
                    known[port_no] = PortHistory(kind, 0, now)
                elif history.kind != kind:
                    if not quiet:
                        self.kind_changes[(history.kind, kind)] += 1
                        changed.setdefault((history.kind, kind), []).append(f"{port_no} ({port.name})")
                    history.kind, history.changes, history.since = kind, history.changes + 1, now
            # A switch's ports that changed alike are one line: a hypervisor's twenty VM ports
            # confirmed at once were twenty, and a cold start of 20,000 VMs logged 20,000.
            for (before, after), ports in changed.items():
                level = logging.DEBUG if KIND_DOWN in (before, after) else logging.INFO
                what = f"port {ports[0]}" if len(ports) == 1 else f"ports {', '.join(ports)}"
                LOG.log(level, "switch %016x %s: %s -> %s", dpid, what, before, after)


def _link_text(link: Link) -> str:
    return f"{link.a.dpid:016x}:{link.a.port} <-> {link.b.dpid:016x}:{link.b.port}"
