"""The Ryu shell: turns OpenFlow events into model changes and sends what the reconciler plans."""

from __future__ import annotations

import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable

from ryu.app.wsgi import WSGIApplication
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from apps import desired as desired_mod
from apps import pipeline
from apps.context import PolicyState
from apps.flows import FlowEntry
from apps.forwarding import base_flows
from apps.identity import Identities
from controller import ofmsg
from controller.metrics import Metrics
from controller.reconciler import SwitchSync
from controller.settings import Settings
from controller.store import Store
from topology import lldp
from topology.model import Link, Port, PortRef

LOG = logging.getLogger("goldilocks.controller")

# The table-miss entry of the ingress table: a packet-in carrying its cookie is a frame from an
# unknown source, which we learn and then re-inject into the pipeline.
MISS_COOKIE = next(e.cookie for e in base_flows() if e.table == pipeline.INGRESS and e.priority == pipeline.PRIO_MISS)


EDGE_CHECK_INTERVAL = 0.05
EDGE_CONFIRM_MAX_BACKLOG = 4  # queued events above which no port is confirmed as an edge port
# Frames that arrive on a port still proving it faces hosts are held, not dropped, and replayed
# once it is confirmed: a VM's first ARP is then not lost to a one-second retry.
HELD_FRAMES_PER_PORT = 16
HELD_FRAME_MAX_AGE = 2.0
UNANSWERED_ARP_KEEP = 1.0  # seconds an unanswered ARP request is asked again as ports come up
UNANSWERED_ARP_MAX = 256


LLDP_MAX_AGE_MS = 3000


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


def _mac(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


def _ipv4(raw: bytes) -> str:
    return ".".join(str(b) for b in raw)


def sender_ip(frame: bytes) -> tuple[str, str | None]:
    """(source MAC, sender IPv4 from ARP or IPv4 header, if any) of an Ethernet frame."""
    src = _mac(frame[6:12])
    eth_type = struct.unpack("!H", frame[12:14])[0] if len(frame) >= 14 else 0
    offset = 14
    if eth_type == 0x8100 and len(frame) >= 18:
        eth_type, offset = struct.unpack("!H", frame[16:18])[0], 18
    if eth_type == pipeline.ETH_TYPE_ARP and len(frame) >= offset + 28:
        return src, _ipv4(frame[offset + 14 : offset + 18])
    if eth_type == pipeline.ETH_TYPE_IPV4 and len(frame) >= offset + 20:
        return src, _ipv4(frame[offset + 12 : offset + 16])
    return src, None


class GoldilocksController(app_manager.RyuApp):
    """Topology learning, forwarding and reconciliation for every connected switch."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.settings = Settings.from_env()
        self.started_at = time.time()
        self.store = Store(self.settings.state_dir)
        self.topo = self.store.load_topology(time.monotonic())
        self.policy: PolicyState = self.store.load_policy()
        from controller import auth, inventory_file

        if self.settings.inventory:
            self.policy = inventory_file.apply_at_start(self.store, self.policy, self.settings.inventory)
        auth.ensure_admin_token(self.store, self.settings.state_dir, reset=self.settings.reset_admin_token)
        self.identities = Identities(self.store.load_identities())
        LOG.info(
            "state dir %s: loaded %d switches, %d links, %d hosts",
            self.settings.state_dir,
            len(self.topo.switches),
            len(self.topo.links),
            len(self.topo.hosts),
        )
        self.datapaths: dict[int, object] = {}
        self.sync: dict[int, SwitchSync] = {}
        self._stats_parts: dict[int, set[int]] = {}
        self._held: dict[PortRef, list[tuple[float, int, bytes]]] = {}  # pending port -> (time, cookie, frame)
        self._unanswered_arp: deque[tuple[float, int, int, bytes]] = deque(maxlen=UNANSWERED_ARP_MAX)
        self.metrics = Metrics()
        self.lldp_key = os.urandom(32)
        self.desired: desired_mod.DesiredTables = {}
        self._dirty = False
        self._compile_pending = False
        self._after_compile: list[Callable[[], None]] = []
        self._last_audit = time.monotonic()
        from controller.rest import register as register_rest

        register_rest(kwargs["wsgi"], self)
        from controller import ovsdb_inventory

        self.ovsdb_inventory = ovsdb_inventory.start(self)  # VMs the hypervisor publishes in OVSDB
        self.threads.append(hub.spawn(self._tick_loop))
        self.threads.append(hub.spawn(self._edge_loop))

    # -- policy changes -------------------------------------------------------------
    def apply_policy(self, new: PolicyState, write_more: Callable[[], None] | None = None) -> None:
        """Persist a validated new policy state (and whatever else the request writes, such as
        its audit entry) in one transaction, then make it current and recompile. If the write
        fails, nothing changes."""
        with self.store.transaction():
            self.store.write_policy(self.policy, new)
            if write_more is not None:
                write_more()
        self.policy = new
        self.model_changed()

    # -- compile and reconcile ---------------------------------------------------
    def model_changed(self, then: Callable[[], None] | None = None) -> None:
        """The model changed. One compile runs per burst of changes: it is scheduled behind the
        events already queued, so a switch connecting with fifty ports and links costs one
        compile, not fifty. `then` runs once the new flows have been sent."""
        self._dirty = True
        if then is not None:
            self._after_compile.append(then)
        if not self._compile_pending:
            self._compile_pending = True
            hub.spawn(self._compile_loop)

    def _compile_loop(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                self._compile_and_reconcile()
                callbacks, self._after_compile = self._after_compile, []
                for callback in callbacks:
                    callback()
        except Exception:
            LOG.exception("compile failed; the switches keep their current flows")
        finally:
            self._compile_pending = False

    def _compile_and_reconcile(self) -> None:
        """Recompute the desired tables, push the difference to every synced switch, persist."""
        started = time.perf_counter()
        self.desired = desired_mod.desired_tables(self.topo, self.policy, self.identities)
        if self.identities.added:
            self.store.add_identities(self.identities.added)
            self.identities.added.clear()
        for dpid in list(self.datapaths):
            self.reconcile(dpid)
        self.metrics.observe_reconcile(time.perf_counter() - started)
        self.store.save_topology(self.topo)

    def reconcile(self, dpid: int) -> int:
        datapath, sync = self.datapaths.get(dpid), self.sync.get(dpid)
        if datapath is None or sync is None or not sync.synced or dpid not in self.desired:
            return 0
        plan = sync.next_plan(self.desired[dpid], time.monotonic())
        sync.applied(plan)  # even when empty: it records that the switch is at this table
        if not plan:
            return 0
        for entry in plan.adds:
            datapath.send_msg(ofmsg.flow_add(datapath, entry))
        for cookie in plan.deletes:
            datapath.send_msg(ofmsg.flow_delete(datapath, cookie))
        sent = len(plan.adds) + len(plan.deletes)
        self.metrics.flow_mods += sent
        LOG.debug("switch %016x: %d adds, %d deletes", dpid, len(plan.adds), len(plan.deletes))
        return sent

    def _tick_loop(self) -> None:
        while True:
            hub.sleep(self.settings.lldp_interval)
            try:
                self._tick()
            except Exception:  # a bug in one tick must not stop discovery for good
                LOG.exception("periodic tick failed")

    def _edge_loop(self) -> None:
        """Confirm edge ports soon after their hold time, independently of the LLDP period."""
        while True:
            hub.sleep(EDGE_CHECK_INTERVAL)
            try:
                if self.events.qsize() > EDGE_CONFIRM_MAX_BACKLOG:
                    continue  # LLDP replies may be waiting in the queue: do not judge ports now
                probed = {dpid for dpid, sync in self.sync.items() if sync.probed}
                confirmed = self.topo.confirm_edge_ports(time.monotonic(), probed=probed)
                if confirmed:
                    self.model_changed(then=lambda c=confirmed: self._replay_held(c))
            except Exception:
                LOG.exception("edge port confirmation failed")

    def _ask_again(self) -> None:
        """ARP requests flooded before the network reached their target (its port was still
        proving itself, or the link toward it was not discovered yet) are asked again."""
        now = time.monotonic()
        recent, self._unanswered_arp = self._unanswered_arp, deque(maxlen=UNANSWERED_ARP_MAX)
        for asked_at, dpid, in_port, frame in recent:
            datapath = self.datapaths.get(dpid)
            if datapath is not None and now - asked_at <= UNANSWERED_ARP_KEEP:
                self._reinject(datapath, in_port, frame)

    def _replay_held(self, confirmed: set[PortRef]) -> None:
        now = time.monotonic()
        self._ask_again()
        for ref in confirmed:
            datapath = self.datapaths.get(ref.dpid)
            for held_at, cookie, frame in self._held.pop(ref, []):
                if datapath is not None and now - held_at <= HELD_FRAME_MAX_AGE:
                    self._learn_and_forward(datapath, ref.port, frame, cookie, time.perf_counter())
        # Frames held on ports that turned out to be inter-switch are dropped.
        for ref in [r for r in self._held if not self.topo.is_pending_port(r.dpid, r.port)]:
            del self._held[ref]

    def _tick(self) -> None:
        now = time.monotonic()
        self.ovsdb_inventory.tick(now)
        for dpid, datapath in list(self.datapaths.items()):
            if self.sync.get(dpid) and self.sync[dpid].synced:
                self._send_lldp(dpid, datapath)
        expired = self.topo.expire_links(now)
        if expired:
            LOG.info("links timed out; %d left", len(self.topo.links))
            self.model_changed()
        else:
            for dpid in list(self.datapaths):
                self.reconcile(dpid)  # picks up deletes deferred while a switch settled
        for dpid, sync in list(self.sync.items()):
            if sync.synced and not sync.audited_after_settle and now >= sync.settle_until:
                # While deletes were deferred, an add may have replaced a flow we could not
                # place (read back from the switch, unknown slot): read the table once more.
                sync.audited_after_settle = True
                self._request_flows(self.datapaths[dpid])
        if now - self._last_audit >= self.settings.audit_interval:
            self._last_audit = now
            for datapath in list(self.datapaths.values()):
                self._request_flows(datapath)
                # A changed dp-desc (role override) is picked up here too.
                datapath.send_msg(datapath.ofproto_parser.OFPDescStatsRequest(datapath, 0))

    def _send_lldp(self, dpid: int, datapath) -> None:
        sw = self.topo.switches.get(dpid)
        if sw is None:
            return
        ofp, parser = datapath.ofproto, datapath.ofproto_parser
        for port_no in sw.live_ports():
            frame = lldp.build_probe(self.lldp_key, dpid, port_no, sw.ports[port_no].hw_addr, _now_ms())
            datapath.send_msg(
                parser.OFPPacketOut(
                    datapath=datapath,
                    buffer_id=ofp.OFP_NO_BUFFER,
                    in_port=ofp.OFPP_CONTROLLER,
                    actions=[parser.OFPActionOutput(port_no)],
                    data=frame,
                )
            )

    def _request_flows(self, datapath) -> None:
        self._stats_parts[datapath.id] = set()
        datapath.send_msg(ofmsg.our_flow_stats_request(datapath))

    # -- switch lifecycle -----------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features(self, ev) -> None:
        datapath = ev.msg.datapath
        parser = datapath.ofproto_parser
        dpid = datapath.id
        LOG.info("switch %016x connected", dpid)
        self.datapaths[dpid] = datapath
        now = time.monotonic()
        self.sync[dpid] = SwitchSync(settle_until=now + self.settings.settle_time, connected_at=now)
        first_seen = dpid not in self.topo.switches
        self.topo.switch_connected(dpid)
        for message in ofmsg.meter_mods(datapath):  # before any flow that uses them
            datapath.send_msg(message)
        # The flows every switch holds whatever the model (LLDP and unknown sources to the
        # controller) go in at once, before the table is read: frames sent in the first few
        # milliseconds then reach the controller instead of being dropped in secure mode.
        # They are part of the desired table, so the reconciler later finds them in place.
        # Only for a switch the model has never seen: one we knew (a controller restart)
        # already holds them, and re-adding would reset their counters and age.
        if first_seen:
            for entry in base_flows():
                datapath.send_msg(ofmsg.flow_add(datapath, entry))
        datapath.send_msg(parser.OFPDescStatsRequest(datapath, 0))
        datapath.send_msg(parser.OFPPortDescStatsRequest(datapath, 0))

    @set_ev_cls(ofp_event.EventOFPStateChange, [DEAD_DISPATCHER])
    def switch_gone(self, ev) -> None:
        dpid = ev.datapath.id
        if dpid is None or self.datapaths.get(dpid) is not ev.datapath:
            return
        LOG.info("switch %016x disconnected", dpid)
        del self.datapaths[dpid]
        self.sync.pop(dpid, None)
        self.topo.switch_disconnected(dpid)

    @set_ev_cls(ofp_event.EventOFPDescStatsReply, MAIN_DISPATCHER)
    def desc_reply(self, ev) -> None:
        dp_desc = ev.msg.body.dp_desc
        dp_desc = dp_desc.decode(errors="replace") if isinstance(dp_desc, bytes) else str(dp_desc)
        if self.topo.set_role_override(ev.msg.datapath.id, dp_desc.strip("\x00 ")):
            self.model_changed()

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc_reply(self, ev) -> None:
        datapath = ev.msg.datapath
        ports = [self._port(p) for p in ev.msg.body]
        if self.topo.set_ports(datapath.id, ports):
            self.model_changed()
        self._request_flows(datapath)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def flow_stats_reply(self, ev) -> None:
        datapath = ev.msg.datapath
        parts = self._stats_parts.setdefault(datapath.id, set())
        parts.update(stat.cookie for stat in ev.msg.body)
        if ev.msg.flags & datapath.ofproto.OFPMPF_REPLY_MORE:
            return
        sync = self.sync.get(datapath.id)
        if sync is None:
            return
        first = not sync.synced
        sync.set_actual(self._stats_parts.pop(datapath.id), self.desired.get(datapath.id, {}))
        if first:
            LOG.info("switch %016x holds %d of our flows; reconciling", datapath.id, len(sync.installed))
            self.model_changed(then=lambda: self._first_sync_done(datapath, sync))
        else:
            self.reconcile(datapath.id)

    def _first_sync_done(self, datapath, sync: SwitchSync) -> None:
        """The first reconcile was sent: a barrier marks convergence, and LLDP goes out at once."""
        if self.datapaths.get(datapath.id) is not datapath:
            return
        self.reconcile(datapath.id)
        barrier = datapath.ofproto_parser.OFPBarrierRequest(datapath)
        datapath.set_xid(barrier)
        sync.converge_xid = barrier.xid
        datapath.send_msg(barrier)
        self._send_lldp(datapath.id, datapath)
        sync.probed = True

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def barrier_reply(self, ev) -> None:
        sync = self.sync.get(ev.msg.datapath.id)
        if sync is not None and sync.converge_xid == ev.msg.xid and sync.converge_seconds is None:
            sync.converge_seconds = time.monotonic() - sync.connected_at
            self.metrics.observe_convergence(sync.converge_seconds)
            LOG.info("switch %016x converged %.3fs after connecting", ev.msg.datapath.id, sync.converge_seconds)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, [CONFIG_DISPATCHER, MAIN_DISPATCHER])
    def error_msg(self, ev) -> None:
        msg = ev.msg
        ofp = msg.datapath.ofproto
        if msg.type == ofp.OFPET_METER_MOD_FAILED and msg.code == ofp.OFPMMFC_METER_EXISTS:
            return  # expected on reconnect: the MODIFY that follows applies the current rate
        self.metrics.switch_errors += 1
        LOG.error("switch %016x refused a message: type %d code %d", msg.datapath.id, msg.type, msg.code)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status(self, ev) -> None:
        msg = ev.msg
        ofp = msg.datapath.ofproto
        port = self._port(msg.desc)
        if msg.reason in (ofp.OFPPR_ADD, ofp.OFPPR_DELETE):
            self.ovsdb_inventory.ports_changed()
        if msg.reason == ofp.OFPPR_DELETE:
            changed = self.topo.delete_port(msg.datapath.id, port.port_no)
        else:
            changed = self.topo.set_port(msg.datapath.id, port)
        if changed:
            LOG.info("switch %016x port %d %s", msg.datapath.id, port.port_no, "up" if port.up else "down")
            self.model_changed()
            if port.up and msg.datapath.id in self.datapaths:
                self._send_lldp(msg.datapath.id, msg.datapath)

    @staticmethod
    def _port(desc) -> Port:
        name = desc.name.decode(errors="replace") if isinstance(desc.name, bytes) else desc.name
        up = not (desc.state & 1) and not (desc.config & 1)  # OFPPS_LINK_DOWN, OFPPC_PORT_DOWN
        return Port(desc.port_no, name, desc.hw_addr, up)

    # -- packets ------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in(self, ev) -> None:
        received = time.perf_counter()
        msg = ev.msg
        datapath = msg.datapath
        self.metrics.packet_ins += 1
        in_port = msg.match.get("in_port")
        frame = bytes(msg.data)
        if len(frame) < 14 or in_port is None:
            return
        if struct.unpack("!H", frame[12:14])[0] == pipeline.ETH_TYPE_LLDP:
            self._lldp_in(datapath.id, in_port, frame)
            return
        if in_port >= pipeline.OFPP_MAX:
            return
        if not self.topo.is_edge_port(datapath.id, in_port):
            if self.topo.is_pending_port(datapath.id, in_port):
                held = self._held.setdefault(PortRef(datapath.id, in_port), [])
                if len(held) < HELD_FRAMES_PER_PORT:
                    held.append((time.monotonic(), msg.cookie, frame))
            return
        if msg.table_id == pipeline.FORWARD:
            self._unanswered_arp.append((time.monotonic(), datapath.id, in_port, frame))
            return
        self._learn_and_forward(datapath, in_port, frame, msg.cookie, received)

    def _learn_and_forward(self, datapath, in_port: int, frame: bytes, cookie: int, received: float) -> None:
        """Learn the sender of a frame from an edge port; if it came from the table-miss entry,
        re-inject it at table 0, where the flows just installed carry it."""
        mac, ip = sender_ip(frame)
        if frame[6] & 1 or mac in self.topo.switch_macs():  # never a host
            return
        reinject = cookie == MISS_COOKIE
        if self.topo.host_seen(mac, datapath.id, in_port, ip):
            LOG.info("host %s ip %s at switch %016x port %d", mac, ip, datapath.id, in_port)

            def learned() -> None:
                self.metrics.observe_learning(time.perf_counter() - received)
                if reinject:
                    self._reinject(datapath, in_port, frame)

            self.model_changed(then=learned)
        elif reinject and mac in self.topo.hosts:
            self._reinject(datapath, in_port, frame)

    def _reinject(self, datapath, in_port: int, frame: bytes) -> None:
        """Send a frame through the switch's pipeline from table 0, as if it had just arrived:
        the flows installed for its sender now carry it."""
        if self.datapaths.get(datapath.id) is not datapath:
            return
        ofp, parser = datapath.ofproto, datapath.ofproto_parser
        datapath.send_msg(parser.OFPBarrierRequest(datapath))
        datapath.send_msg(
            parser.OFPPacketOut(
                datapath=datapath,
                buffer_id=ofp.OFP_NO_BUFFER,
                in_port=in_port,
                actions=[parser.OFPActionOutput(ofp.OFPP_TABLE)],
                data=frame,
            )
        )

    def _lldp_in(self, dpid: int, in_port: int, frame: bytes) -> None:
        origin = lldp.parse_probe(self.lldp_key, frame, _now_ms(), LLDP_MAX_AGE_MS)
        here = PortRef(dpid, in_port)
        known = origin is not None and Link.between(PortRef(*origin), here) in self.topo.links
        if origin is None or (not known and self.topo.has_hosts_on(dpid, in_port)):
            # Forged, replayed, or a new link on a port with hosts learned on it: a VM relaying
            # a probe must not turn its port into a fabric port that skips admission. (A known
            # link's ports never have hosts: nothing is learned on an inter-switch port, so the
            # scan of every host is skipped for the probes that merely refresh a link.)
            self.metrics.lldp_rejected += 1
            return
        src = PortRef(*origin)
        if src.dpid not in self.topo.switches:
            return
        if self.topo.link_seen(src, PortRef(dpid, in_port), time.monotonic()):
            LOG.info("link %016x:%d <-> %016x:%d", src.dpid, src.port, dpid, in_port)
            self.model_changed(then=self._ask_again)  # the flooding tree just grew

    # -- views for REST ---------------------------------------------------------------
    def desired_flow_count(self) -> int:
        return sum(len(t) for t in self.desired.values())

    def flows_for(self, dpid: int) -> list[FlowEntry]:
        return sorted(self.desired.get(dpid, {}).values(), key=lambda e: (e.table, -e.priority, e.cookie))
