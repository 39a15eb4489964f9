"""The data-centre topology as the controller believes it: switches, ports, links and hosts."""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace

from apps import pipeline

ROLE_HYPERVISOR = "hypervisor"
ROLE_FABRIC = "fabric"

# A link not confirmed by LLDP for this long is dead (LLDP is sent every second).
LINK_TIMEOUT = 3.5
ASKED_PER_SWITCH = 1024  # addresses a switch answers because its VMs asked for them (the newest)
# A VM port rarely carries more than a few MACs; a port claiming more is flooding us with
# made-up sources, and the model would grow without bound. Past this, new MACs are ignored.
MAX_HOSTS_PER_PORT = 64
# A port up this long with no LLDP from another switch faces hosts.
EDGE_CONFIRM_TIME = 0.1

# What a port is, as /v1/topology shows it and the learner counts its changes.
KIND_DOWN = "down"
KIND_PENDING = "pending"  # up, not proven yet: nothing is flooded to it or learned from it
KIND_EDGE = "edge"  # proven to face hosts
KIND_INTER_SWITCH = "inter-switch"  # a link, with probes seen both ways
KIND_LOST_LINK = "lost-link"  # carried a link whose probes stopped while it stayed up: held
KIND_TUNNEL = "tunnel"  # an encrypting tunnel port an agent added: never edge, never inter-switch


def dpid_str(dpid: int) -> str:
    """A datapath id as the API, the web view and /metrics write it: 16 hex digits."""
    return f"{dpid:016x}"


def is_tunnel_port_name(name: str) -> bool:
    """Tunnel ports are recognised by name (pipeline.TUNNEL_PORT_PREFIX) from the moment they appear:
    a tunnel port taken for a pending port for even one probe period could look like a link."""
    return name.startswith(pipeline.TUNNEL_PORT_PREFIX)


_MISSING = object()


class ObservedDict(dict):
    """A dict whose every change, however it is made (the model's methods, a store load, a test
    editing it directly), reaches two hooks: `_set(key, old, value)` after a value is set (`old`
    is _MISSING for a new key) and `_removed(key, value)` after a key goes."""

    def _set(self, key, old, value) -> None:
        pass

    def _removed(self, key, value) -> None:
        pass

    def __setitem__(self, key, value) -> None:
        old = dict.get(self, key, _MISSING)
        super().__setitem__(key, value)
        self._set(key, old, value)

    def __delitem__(self, key) -> None:
        value = dict.__getitem__(self, key)
        super().__delitem__(key)
        self._removed(key, value)

    def pop(self, key, *default):
        if key in self:
            value = dict.__getitem__(self, key)
            del self[key]
            return value
        return super().pop(key, *default)

    def popitem(self):
        if not self:
            raise KeyError("popitem(): dictionary is empty")
        key = next(reversed(self))
        return key, self.pop(key)

    def clear(self) -> None:
        for key in list(dict.keys(self)):
            del self[key]

    def setdefault(self, key, default=None):
        if key not in self:
            self[key] = default
        return dict.__getitem__(self, key)

    def update(self, *args, **kwargs) -> None:
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def __reduce__(self):
        """Copies and pickles are built empty and filled item by item, so that their indexes are
        built by the hooks (copied as attributes too, every item was counted twice)."""
        return (type(self), (), None, None, iter(dict.items(self)))


@dataclass(frozen=True)
class Port:
    """One switch port as OpenFlow reports it."""

    port_no: int
    name: str = ""
    hw_addr: str = ""
    up: bool = True


@dataclass(frozen=True)
class PortRef:
    """A (dpid, port) pair: one end of a link or a host location."""

    dpid: int
    port: int


@dataclass
class Switch:
    """An OpenFlow switch (an OVS bridge)."""

    dpid: int
    name: str = ""
    ports: dict[int, Port] = field(default_factory=dict)
    role_override: str | None = None  # from the datapath description
    connected: bool = False
    # Ports proven to face hosts: up for a while with no LLDP from another switch. Until then a
    # port might be an inter-switch port, so nothing is flooded to it or learned from it: a
    # looped fabric cannot storm while it is being discovered.
    edge_confirmed: set[int] = field(default_factory=set)
    pending_since: dict[int, float] = field(default_factory=dict)
    # Ports that have carried a link since they last went down. If the link's LLDP stops while
    # the port stays up (an overloaded controller, a lost probe), the port is held, never
    # confirmed as an edge port: mistaking a fabric port for a host port loops the fabric.
    fabric_ports: set[int] = field(default_factory=set)
    # live_ports(), worked out once per change of the ports (asked for every port check and probe).
    _live: list[int] | None = field(default=None, init=False, repr=False, compare=False)
    _tunnels: dict[int, str] | None = field(default=None, init=False, repr=False, compare=False)  # tunnel_ports()

    def __setattr__(self, name, value) -> None:
        if name == "ports":
            object.__setattr__(self, "_live", None)
            object.__setattr__(self, "_tunnels", None)
        object.__setattr__(self, name, value)

    def ports_changed(self) -> None:
        """The ports dict was changed in place (Topology.set_port, delete_port)."""
        self._live = None
        self._tunnels = None

    def live_ports(self) -> list[int]:
        """Up ports that face hosts or other switches: not LOCAL, not tunnel ports (shared: callers
        must not change it)."""
        live = self._live
        if live is None:
            ports = self.ports.values()
            live = sorted(p.port_no for p in ports if p.up and p.port_no < pipeline.OFPP_MAX and not is_tunnel_port_name(p.name))
            self._live = live
        return live

    def tunnel_ports(self) -> dict[int, str]:
        """Up tunnel ports: port number -> name (shared: callers must not change it). Asked by every
        compile for every switch, so worked out once per change of the ports."""
        tunnels = self._tunnels
        if tunnels is None:
            tunnels = {p.port_no: p.name for p in self.ports.values() if p.up and is_tunnel_port_name(p.name)}
            self._tunnels = tunnels
        return tunnels


@dataclass(frozen=True)
class Link:
    """One physical link between two switch ports, stored with its ends in a canonical order."""

    a: PortRef
    b: PortRef

    @staticmethod
    def between(x: PortRef, y: PortRef) -> Link:
        return Link(*sorted((x, y), key=lambda r: (r.dpid, r.port)))

    def ends(self) -> tuple[PortRef, PortRef]:
        return (self.a, self.b)


@dataclass(frozen=True)
class Host:
    """A host or VM seen on an edge port: its MAC, IPv4 addresses and location."""

    mac: str
    ips: frozenset[str]
    dpid: int
    port: int


class HostTable(ObservedDict):
    """MAC -> Host, with indexes kept up to date on every change (however it is made: the model's
    methods, a store load, a test editing it): the MACs on each port, on each switch, and claiming
    each IPv4 address. A packet-in asks these, so its cost does not grow with the data centre."""

    def __init__(self) -> None:
        super().__init__()
        self.by_port: dict[tuple[int, int], set[str]] = {}
        self.by_dpid: dict[int, set[str]] = {}
        self.by_ip: dict[str, set[str]] = {}

    @staticmethod
    def _drop(index: dict, key, mac: str) -> None:
        macs = index.get(key)
        if macs is not None:
            macs.discard(mac)
            if not macs:
                del index[key]

    def _set(self, mac, old, host) -> None:
        if old is not _MISSING:
            self._removed(mac, old)
        self.by_port.setdefault((host.dpid, host.port), set()).add(mac)
        self.by_dpid.setdefault(host.dpid, set()).add(mac)
        for ip in host.ips:
            self.by_ip.setdefault(ip, set()).add(mac)

    def _removed(self, mac, host) -> None:
        self._drop(self.by_port, (host.dpid, host.port), mac)
        self._drop(self.by_dpid, host.dpid, mac)
        for ip in host.ips:
            self._drop(self.by_ip, ip, mac)


@dataclass(frozen=True)
class Endpoint:
    """A hypervisor's tunnel endpoint, as its agent reports it: infrastructure, not a VM. Its
    underlay traffic (ARP and WireGuard UDP from its own MAC and IP, on its own port) is admitted
    whatever the policy says, and its MAC is never learned anywhere else."""

    hypervisor: str
    bridge: str  # the hypervisor's OVS bridge
    port_name: str  # the bridge port its underlay traffic enters by
    mac: str
    ip: str
    listen_port: int  # its WireGuard UDP port


def parse_role(dp_desc: str) -> str | None:
    """Read an explicit role from an OVS datapath description (other_config:dp-desc).

    Accepts `hypervisor`, `fabric`, or `role=hypervisor` / `role=fabric` anywhere
    in the text (separated by spaces, commas or semicolons).
    """
    for token in dp_desc.replace(",", " ").replace(";", " ").split():
        token = token.strip().lower()
        if token.startswith("role="):
            token = token[len("role=") :]
        if token in (ROLE_HYPERVISOR, ROLE_FABRIC):
            return token
    return None


class LinkTable(ObservedDict):
    """Links -> when probes last confirmed each, indexed as links come and go (however the dict is
    changed: the model's methods, a store load, a test): the link at each port, and each switch's
    inter-switch ports. A thousand links learned one by one then cost a thousand small updates, not
    a thousand scans of every link."""

    def __init__(self) -> None:
        super().__init__()
        self.at: dict[PortRef, Link] = {}  # a port -> the link on it (the latest, if a port had two)
        self._ports: dict[int, Counter[int]] = {}  # dpid -> its ports on a link -> how many links
        self._frozen: dict[int, frozenset[int]] = {}  # inter_switch_ports(), worked out once per change

    def _set(self, key, old, value) -> None:
        if old is not _MISSING:
            return
        for end in key.ends():
            self.at[end] = key
            self._ports.setdefault(end.dpid, Counter())[end.port] += 1
            self._frozen.pop(end.dpid, None)

    def _removed(self, key, value) -> None:
        for end in key.ends():
            if self.at.get(end) == key:
                del self.at[end]
                other = next((lk for lk in self._on_port(end) if lk != key), None)
                if other is not None:
                    self.at[end] = other
            ports = self._ports.get(end.dpid)
            if ports is not None:
                ports[end.port] -= 1
                if ports[end.port] <= 0:
                    del ports[end.port]
                if not ports:
                    del self._ports[end.dpid]
            self._frozen.pop(end.dpid, None)

    def _on_port(self, end: PortRef) -> list[Link]:
        """Every link on a port (a scan: only when a port that carried two links loses one)."""
        if self._ports.get(end.dpid, {}).get(end.port, 0) <= 1:
            return []
        return [lk for lk in dict.keys(self) if end in lk.ends()]

    def of_switch(self, dpid: int) -> list[Link]:
        """Every link with an end on switch `dpid`, found from its ports' index."""
        found: dict[Link, None] = {}
        for port, count in self._ports.get(dpid, {}).items():
            end = PortRef(dpid, port)
            for link in self._on_port(end) if count > 1 else (self.at[end],):
                found[link] = None
        return list(found)

    def inter_switch_ports(self, dpid: int) -> frozenset[int]:
        ports = self._frozen.get(dpid)
        if ports is None:
            ports = self._frozen[dpid] = frozenset(self._ports.get(dpid, ()))
        return ports


class Topology:
    """Mutable model of the network. Every mutator returns True when something changed."""

    def __init__(self) -> None:
        self.switches: dict[int, Switch] = {}
        # Derived indexes, rebuilt on demand after the links or hosts they index change.
        self.links: LinkTable = LinkTable()  # link -> last time probes confirmed it
        self.hosts: HostTable = HostTable()  # mac -> host, indexed by port, switch and address
        # Switch port MACs -> how many ports have each: kept up to date as ports change, built from
        # every switch's ports when None (at first use after a load).
        self._switch_macs: Counter[str] | None = None
        # Tunnel endpoints by MAC, from the agents (not persisted here: the agents' registry is).
        self.endpoints: dict[str, Endpoint] = {}
        # The addresses each switch's VMs asked for and no responder answered yet (their requests
        # were flooded and copied to the controller), oldest first: the switch answers them itself
        # from then on. Kept in the switch's store row; each value is replaced, never changed in place.
        self.asked: dict[int, tuple[str, ...]] = {}

    # -- switches and ports -------------------------------------------------
    def switch_connected(self, dpid: int) -> bool:
        sw = self.switches.setdefault(dpid, Switch(dpid))
        changed = not sw.connected
        sw.connected = True
        return changed

    def switch_disconnected(self, dpid: int) -> bool:
        """The control channel is gone. The switch keeps forwarding (fail secure), so keep its links."""
        sw = self.switches.get(dpid)
        if sw is None or not sw.connected:
            return False
        sw.connected = False
        return True

    def remove_switch(self, dpid: int) -> bool:
        if dpid not in self.switches:
            return False
        self._count_macs(self.switches[dpid].ports.values(), -1)
        del self.switches[dpid]
        self.asked.pop(dpid, None)
        for link in self.links.of_switch(dpid):
            del self.links[link]
        for mac in list(self.hosts.by_dpid.get(dpid, ())):
            del self.hosts[mac]
        return True

    def note_asked(self, dpid: int, ip: str, limit: int = ASKED_PER_SWITCH) -> bool:
        """A VM on switch `dpid` asked for `ip` and no responder answered: remember it (the
        newest `limit` addresses per switch) when some host is known to hold that address."""
        asked = self.asked.get(dpid, ())
        if ip in asked or not self.hosts.by_ip.get(ip) or dpid not in self.switches:
            return False
        self.asked[dpid] = (*asked[len(asked) - limit + 1 :], ip) if len(asked) >= limit else (*asked, ip)
        return True

    def set_ports(self, dpid: int, ports: Iterable[Port]) -> bool:
        sw = self.switches.setdefault(dpid, Switch(dpid))
        new = {p.port_no: p for p in ports}
        self._count_macs(sw.ports.values(), -1)
        self._count_macs(new.values(), 1)
        local = new.get(pipeline.OFPP_LOCAL)
        name = local.name if local else sw.name
        changed = new != sw.ports or name != sw.name
        sw.ports, sw.name = new, name
        for port_no in list(sw.edge_confirmed | set(sw.pending_since)):
            if port_no not in new or not new[port_no].up:
                changed |= self._unconfirm(sw, port_no)
        sw.fabric_ports &= {p for p, port in new.items() if port.up}
        changed |= self._drop_links_on_dead_ports(dpid)
        return changed

    def set_port(self, dpid: int, port: Port) -> bool:
        sw = self.switches.setdefault(dpid, Switch(dpid))
        old = sw.ports.get(port.port_no)
        if old == port:
            return False
        self._count_macs([old] if old is not None else [], -1)
        self._count_macs([port], 1)
        sw.ports[port.port_no] = port
        sw.ports_changed()
        if not port.up:
            self._unconfirm(sw, port.port_no)
            sw.fabric_ports.discard(port.port_no)
        self._drop_links_on_dead_ports(dpid)
        return True

    def delete_port(self, dpid: int, port_no: int) -> bool:
        sw = self.switches.get(dpid)
        if sw is None or port_no not in sw.ports:
            return False
        self._count_macs([sw.ports[port_no]], -1)
        del sw.ports[port_no]
        sw.ports_changed()
        self._unconfirm(sw, port_no)
        sw.fabric_ports.discard(port_no)
        self._drop_links_on_dead_ports(dpid)
        return True

    @staticmethod
    def _unconfirm(sw: Switch, port_no: int) -> bool:
        """A port that went down may come back cabled elsewhere: it must prove itself again."""
        sw.pending_since.pop(port_no, None)
        if port_no in sw.edge_confirmed:
            sw.edge_confirmed.discard(port_no)
            return True
        return False

    def confirm_edge_ports(
        self,
        now: float,
        hold: float = EDGE_CONFIRM_TIME,
        probed: set[int] | None = None,
        hold_back: Collection[PortRef] = (),
        declared: Collection[str] = (),
    ) -> set[PortRef]:
        """Start the clock on new up ports of connected switches; confirm those whose clock ran
        out with no LLDP from another switch, and return them. `probed` limits this to switches
        that have already sent LLDP out of their ports (default: every connected switch).
        Ports in `hold_back` (one end of a one-way probe: a switch may be behind them) stay
        pending; ports whose interface name is in `declared` (declared VM ports) need no proving."""
        confirmed: set[PortRef] = set()
        for sw in self.switches.values():
            if not sw.connected:
                continue
            probing_done = probed is None or sw.dpid in probed
            inter = self.inter_switch_ports(sw.dpid)
            live = sw.live_ports()
            if not sw.pending_since:
                # Nothing is being proved here: skip the switch when every live port is judged already.
                judged = sw.edge_confirmed | inter if declared else sw.edge_confirmed | inter | sw.fabric_ports
                if judged.issuperset(live):
                    continue
            for port_no in live:
                if port_no in sw.edge_confirmed or port_no in inter:
                    sw.pending_since.pop(port_no, None)
                    continue
                ref = PortRef(sw.dpid, port_no)
                if declared and sw.ports[port_no].name in declared:
                    # The hypervisor says a VM is plugged in here, whatever carried a link before.
                    sw.pending_since.pop(port_no, None)
                    sw.fabric_ports.discard(port_no)
                    sw.edge_confirmed.add(port_no)
                    confirmed.add(ref)
                    continue
                if port_no in sw.fabric_ports:
                    sw.pending_since.pop(port_no, None)
                    continue
                if not probing_done:
                    continue
                if ref in hold_back:
                    sw.pending_since[port_no] = now  # the clock starts again once the probe is stale
                    continue
                since = sw.pending_since.setdefault(port_no, now)
                if now - since >= hold - 1e-9:  # float sums like 20.0 + 0.15 fall just short
                    del sw.pending_since[port_no]
                    sw.edge_confirmed.add(port_no)
                    confirmed.add(ref)
        return confirmed

    def restart_proving(self, now: float) -> None:
        """Pending ports start their proving time again: the controller was too busy to read
        the probes that would have shown a switch behind them, so that time proves nothing."""
        for sw in self.switches.values():
            for port_no in sw.pending_since:
                sw.pending_since[port_no] = now

    def is_pending_port(self, dpid: int, port_no: int) -> bool:
        """Up, but neither a known inter-switch port nor a confirmed edge port yet."""
        sw = self.switches.get(dpid)
        if sw is None or port_no not in sw.live_ports():
            return False
        if port_no in sw.edge_confirmed or port_no in sw.fabric_ports:
            return False
        return port_no not in self.inter_switch_ports(dpid)

    def set_role_override(self, dpid: int, dp_desc: str) -> bool:
        sw = self.switches.setdefault(dpid, Switch(dpid))
        role = parse_role(dp_desc)
        changed = role != sw.role_override
        sw.role_override = role
        return changed

    def _port_up(self, ref: PortRef) -> bool:
        sw = self.switches.get(ref.dpid)
        port = sw.ports.get(ref.port) if sw else None
        return bool(port and port.up)

    def _drop_links_on_dead_ports(self, dpid: int) -> bool:
        dead = [lk for lk in self.links.of_switch(dpid) if any(e.dpid == dpid and not self._port_up(e) for e in lk.ends())]
        for link in dead:
            del self.links[link]
        return bool(dead)

    # -- links ----------------------------------------------------------------
    def link_seen(self, src: PortRef, dst: PortRef, now: float) -> bool:
        """LLDP sent from src arrived at dst."""
        if src.dpid == dst.dpid and src.port == dst.port:
            return False
        link = Link.between(src, dst)
        is_new = link not in self.links
        # A port belongs to at most one link: a re-cabled port replaces its old link.
        if is_new:
            for end in (src, dst):
                while (old := self.links.at.get(end)) is not None:
                    del self.links[old]
        self.links[link] = now
        if is_new:
            for end in (src, dst):
                if end.dpid in self.switches:
                    self._unconfirm(self.switches[end.dpid], end.port)
                    self.switches[end.dpid].fabric_ports.add(end.port)
            # Hosts "learned" on what is really an inter-switch port were frames from the fabric.
            for end in (src, dst):
                for mac in sorted(self.hosts_on(end.dpid, end.port)):
                    self.remove_host(mac)
        return is_new

    def expire_links(self, now: float, timeout: float = LINK_TIMEOUT) -> list[Link]:
        """Forget links whose LLDP stopped, and return them. Only links whose both switches are connected can age:
        while a switch is disconnected we cannot send LLDP through it, yet it keeps forwarding."""
        dead = []
        for link, seen in self.links.items():
            ends_connected = all(self.switches.get(e.dpid) and self.switches[e.dpid].connected for e in link.ends())
            if ends_connected and now - seen > timeout:
                dead.append(link)
        for link in dead:
            del self.links[link]
        return dead

    def refresh_links(self, now: float, dpids: Collection[int] | None = None) -> None:
        """Give every link (or every link of these switches) a fresh timeout window: after a restart
        loaded them from disk, when a switch comes back (no probe could cross it while it was away),
        or while it is busy (a probe would wait behind its flow-mods)."""
        for link in self.links:
            if dpids is None or link.a.dpid in dpids or link.b.dpid in dpids:
                self.links[link] = now

    def inter_switch_ports(self, dpid: int) -> frozenset[int]:
        return self.links.inter_switch_ports(dpid)

    def port_kind(self, dpid: int, port_no: int) -> str:
        sw = self.switches.get(dpid)
        port = sw.ports.get(port_no) if sw else None
        if port is not None and is_tunnel_port_name(port.name):
            return KIND_TUNNEL
        if port is None or not port.up:
            return KIND_DOWN
        if port_no in self.inter_switch_ports(dpid):
            return KIND_INTER_SWITCH
        if port_no in sw.fabric_ports:
            return KIND_LOST_LINK
        return KIND_EDGE if port_no in sw.edge_confirmed else KIND_PENDING

    def edge_ports(self, dpid: int) -> list[int]:
        """Up ports confirmed to face hosts (never an inter-switch port)."""
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        inter = self.inter_switch_ports(dpid)
        return [p for p in sw.live_ports() if p in sw.edge_confirmed and p not in inter]

    def is_edge_port(self, dpid: int, port_no: int) -> bool:
        return port_no in self.edge_ports(dpid)

    # -- hosts ----------------------------------------------------------------
    def host_seen(self, mac: str, dpid: int, port: int, ip: str | None = None) -> bool:
        """A frame from `mac` (and, for ARP/IPv4, sender `ip`) arrived on an edge port."""
        mac = mac.lower()
        old = self.hosts.get(mac)
        if old is None or (old.dpid, old.port) != (dpid, port):
            if len(self.hosts.by_port.get((dpid, port), ())) >= MAX_HOSTS_PER_PORT:
                return False
        ips = set(old.ips) if old else set()
        if ip and ip != "0.0.0.0":
            # An IPv4 address belongs to one host: the newest claim wins.
            self._unclaim(ip, mac)
            ips.add(ip)
        new = Host(mac, frozenset(ips), dpid, port)
        if new == old:
            return False
        self.hosts[mac] = new
        return True

    def _unclaim(self, ip: str, mac: str) -> None:
        """Take `ip` from every host but `mac`."""
        for other_mac in list(self.hosts.by_ip.get(ip, ())):
            if other_mac != mac:
                other = self.hosts[other_mac]
                self.hosts[other_mac] = replace(other, ips=other.ips - {ip})

    def hosts_on(self, dpid: int, port_no: int) -> set[str]:
        """MACs learned on one port."""
        return set(self.hosts.by_port.get((dpid, port_no), ()))

    def forget_switch_mac_hosts(self, dpid: int) -> list[str]:
        """Hosts whose MAC turned out to be a port's of switch `dpid` (it connected, or its ports
        changed, after its interfaces' own frames were seen) were never hosts: forget them; return
        their MACs. Only this switch's ports are looked at: a thousand switches connecting cost a
        thousand small checks, not a thousand scans of every switch."""
        sw = self.switches.get(dpid)
        if sw is None:
            return []
        gone = sorted({mac for p in sw.ports.values() if p.hw_addr and (mac := p.hw_addr.lower()) in self.hosts})
        for mac in gone:
            self.remove_host(mac)
        return gone

    def switch_macs(self) -> Collection[str]:
        """MAC addresses of switch ports: frames from them are never hosts. Asked on every
        learning packet-in, so it is kept up to date as ports change rather than built each time
        (shared: callers must not change it)."""
        if self._switch_macs is None:
            self._switch_macs = Counter(
                p.hw_addr.lower() for sw in self.switches.values() for p in sw.ports.values() if p.hw_addr
            )
        return self._switch_macs

    def _count_macs(self, ports: Iterable[Port], delta: int) -> None:
        counts = self._switch_macs
        if counts is None:
            return  # built from scratch when first asked
        for port in ports:
            if port.hw_addr:
                mac = port.hw_addr.lower()
                left = counts[mac] + delta
                if left > 0:
                    counts[mac] = left
                else:
                    counts.pop(mac, None)

    # -- tunnel endpoints --------------------------------------------------------
    def endpoint_ref(self, endpoint: Endpoint, named: Mapping[str, list[Switch]] | None = None) -> PortRef | None:
        """Where an endpoint is plugged in: its bridge's switch and port, once both are known.
        `named` (switches by name, from switches_by_name) saves a scan of every switch."""
        candidates = named.get(endpoint.bridge, ()) if named is not None else self.switches.values()
        for sw in candidates:
            if sw.name != endpoint.bridge:
                continue
            for port in sw.ports.values():
                if port.name == endpoint.port_name and port.port_no < pipeline.OFPP_MAX:
                    return PortRef(sw.dpid, port.port_no)
        return None

    def switches_by_name(self) -> dict[str, list[Switch]]:
        named: dict[str, list[Switch]] = {}
        for sw in self.switches.values():
            if sw.name:
                named.setdefault(sw.name, []).append(sw)
        return named

    def place_endpoints(self) -> bool:
        """Every endpoint whose port is known is a host there, with its one address."""
        changed = False
        named = self.switches_by_name()
        for mac, endpoint in self.endpoints.items():
            ref = self.endpoint_ref(endpoint, named)
            if ref is None:
                changed |= self.remove_host(mac)
                continue
            host = Host(mac, frozenset({endpoint.ip}), ref.dpid, ref.port)
            if self.hosts.get(mac) != host:
                self._unclaim(endpoint.ip, mac)
                self.hosts[mac] = host
                changed = True
        return changed

    def endpoints_on(self, dpid: int) -> list[tuple[Endpoint, int]]:
        """The endpoints plugged into a switch, with their port numbers."""
        return self.placed_endpoints().get(dpid, [])

    def placed_endpoints(self) -> dict[int, list[tuple[Endpoint, int]]]:
        """endpoints_on for every switch at once: each endpoint learned on the port its agent names."""
        placed: dict[int, list[tuple[Endpoint, int]]] = {}
        if not self.endpoints:
            return placed
        named = self.switches_by_name()
        for mac, endpoint in sorted(self.endpoints.items()):
            host = self.hosts.get(mac)
            if host is not None and self.endpoint_ref(endpoint, named) == PortRef(host.dpid, host.port):
                placed.setdefault(host.dpid, []).append((endpoint, host.port))
        return placed

    def remove_host(self, mac: str) -> bool:
        return self.hosts.pop(mac.lower(), None) is not None

    # -- roles ----------------------------------------------------------------
    def role(self, dpid: int) -> str:
        sw = self.switches.get(dpid)
        if sw is not None and sw.role_override:
            return sw.role_override
        return ROLE_HYPERVISOR if dpid in self.hosts.by_dpid else ROLE_FABRIC


class TopologySnapshot:
    """A read-only view of a Topology for one compile, answering the per-switch questions
    (inter-switch ports, edge ports, role) once instead of scanning every link and host for
    every switch and host."""

    def __init__(self, topo: Topology) -> None:
        self.switches = topo.switches
        self.links = topo.links
        self.hosts = topo.hosts
        self.inter_switch_ports = topo.inter_switch_ports  # indexed once per change of the links
        self._edge: dict[int, list[int]] = {}
        self._edge_sets: dict[int, frozenset[int]] = {}
        self.endpoints = topo.endpoints
        self.placed_endpoints = topo.placed_endpoints
        self.asked = topo.asked

    def edge_ports(self, dpid: int) -> list[int]:
        ports = self._edge.get(dpid)
        if ports is None:
            sw = self.switches.get(dpid)
            inter = self.inter_switch_ports(dpid)
            ports = [] if sw is None else [p for p in sw.live_ports() if p in sw.edge_confirmed and p not in inter]
            self._edge[dpid] = ports
            self._edge_sets[dpid] = frozenset(ports)
        return ports

    def is_edge_port(self, dpid: int, port_no: int) -> bool:
        self.edge_ports(dpid)
        return port_no in self._edge_sets[dpid]

    def role(self, dpid: int) -> str:
        sw = self.switches.get(dpid)
        if sw is not None and sw.role_override:
            return sw.role_override
        return ROLE_HYPERVISOR if dpid in self.hosts.by_dpid else ROLE_FABRIC


def snapshot(topo: Topology | TopologySnapshot) -> TopologySnapshot:
    return topo if isinstance(topo, TopologySnapshot) else TopologySnapshot(topo)
