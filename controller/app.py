"""The Ryu shell: turns OpenFlow events into model changes and sends what the reconciler plans."""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass

from ryu.app.wsgi import WSGIApplication
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib import hub
from ryu.ofproto import ofproto_v1_3

from apps import desired as desired_mod
from apps import pipeline, steering
from apps.alerts import AlertBook, Threshold
from apps.context import PolicyState
from apps.flows import FlowEntry
from apps.forwarding import base_flows, punt_reason
from apps.identity import Identities, assign_identities
from apps.quarantine import quarantined_macs
from apps.switch_table import SwitchTable
from controller import listeners, ofmsg, ryu_parsing, state_check
from controller.heap import Heap
from controller.intake import Intake
from controller.launcher import EXIT_STATE
from controller.metrics import Metrics
from controller.reconciler import SwitchSync
from controller.settings import Settings
from controller.store import StateError, Store
from topology.learner import Learner, Outcome, PacketOut, Punt, ether_type
from topology.model import ROLE_HYPERVISOR, Port

LOG = logging.getLogger("goldilocks.controller")

# Packet-ins and flow-stats replies are parsed without the work nobody reads (controller/ryu_parsing.py).
ryu_parsing.install()
# Ryu's OpenFlow server listens with eventlet's default backlog of 50 connections (below).
ryu_parsing.widen_listen_backlog()
# The REST and OpenFlow listeners survive clients that connect and say nothing (controller/listeners.py).
listeners.install()


EDGE_CHECK_INTERVAL = 0.05
SEND_CHUNK_BYTES = 64 * 1024  # flow-mods are written to a switch's socket in chunks of about this size
# A switch with this many messages queued toward it is busy: a probe would wait behind them and
# arrive stale (topology/learner.py, tick). A controller with this many events not yet handled is
# behind: the probes it has not read yet may be among them, so no link ages.
BUSY_SEND_CHUNKS = 4
# A switch that confirms nothing for longer than this (or than its unconfirmed flow-mods take at
# BUSY_MIN_RATE a second, if that is longer) is not busy but broken: its links age.
BUSY_MAX_SECONDS = 10.0
BUSY_MIN_RATE = 1000.0
BEHIND_EVENTS = 32
RECONCILE_YIELD_EVERY = 16  # switches reconciled between yields to the other green threads
SLOW_COMPILE = 0.5  # seconds: a compile and reconcile this long is logged (a cold start, a big change)
COMPILE_BATCH_WAIT = 0.005  # seconds a compile waits, at least, for the packet-ins waiting to be handled first
INTAKE_YIELD_EVERY = 16  # packet-ins handled between yields (controller/intake.py)
# Flow entries read back per tick, at most (a table bigger than this is read alone): a fabric of 500
# hypervisors held 5 M entries, and Ryu parsed about 50,000 a second (ryu_parsing now reads only
# their fixed part, about 1 us each). Read all at once, every audit round, that kept the controller
# busy for good and starved discovery.
AUDIT_ENTRIES_PER_TICK = 25_000

# What waits for new flows (a re-injected frame, held frames) waits for a barrier reply from every
# switch that got flow-mods: a frame re-injected at one switch crosses others, and OpenFlow orders
# nothing across connections. A switch that does not answer within this long is not waited for.
FLOWS_IN_PLACE_MAX_WAIT = 1.0
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(eq=False)
class _FlowWait:
    """Callbacks waiting for the barrier replies in `pending` ((dpid, xid) pairs)."""

    pending: set[tuple[int, int]]
    callbacks: list[Callable[[], None]]
    give_up_at: float


def quarantine_macs(policy: PolicyState) -> frozenset[str]:
    vms = policy.vms
    return quarantined_macs(policy.quarantine, {name: vms[name].macs for name in policy.quarantine if name in vms})


class GoldilocksController(app_manager.RyuApp):
    """Topology learning, forwarding and reconciliation for every connected switch."""

    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]
    _CONTEXTS = {"wsgi": WSGIApplication}

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        for handler in logging.getLogger().handlers:  # Ryu's handlers print bare messages
            handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.settings = Settings.from_env()
        self.started_at = time.time()
        try:
            # Before anything writes: refuse to start rather than start empty (the launcher checked
            # too; this covers a controller started by ryu-manager itself).
            state_check.check(self.settings.state_dir)
        except StateError as exc:
            LOG.critical("%s", exc)
            raise SystemExit(EXIT_STATE) from None
        self.store = Store(self.settings.state_dir)
        self.learner = Learner(self.store.load_topology(time.monotonic()), now=time.monotonic())
        self.topo = self.learner.topo
        self.policy: PolicyState = self.store.load_policy()
        from controller import audit, auth, inventory_file

        if self.settings.inventory:
            self.policy = inventory_file.apply_at_start(self.store, self.policy, self.settings.inventory)
        auth.ensure_admin_token(self.store, self.settings.state_dir, reset=self.settings.reset_admin_token)
        self.identities = Identities(self.store.load_identities())
        # One incremental compiler for the controller's life: a change costs what it touches.
        self.compiler = desired_mod.Compiler(arp_ahead_max=self.settings.arp_ahead_max)
        self._group_diffs: dict = {}  # group diffs of the current compile, shared by the switches
        self._quarantine_group = self.compiler.quarantine_group(quarantine_macs(self.policy))
        from controller.security import SpoofGuard

        self.spoof_guard = SpoofGuard(self, self.settings.spoofing_responses)
        severity = self.settings.alert_quarantine_severity
        self.alert_book = AlertBook(
            Threshold(None if severity == "none" else severity, self.settings.alert_quarantine_count, self.settings.alert_window)
        )
        from controller.agent_server import AgentServer
        from controller.agents import AgentManager

        self.agents = AgentManager(
            self.store,
            self.settings.state_dir,
            network=self.settings.tunnel_network,
            psk_rotation=self.settings.psk_rotation,
            identity_rotation=self.settings.identity_rotation,
            on_change=self._agents_changed,
            on_interfaces=lambda: self.ovsdb_inventory.agents_reported(),
        )
        self.learner.set_endpoints(self.agents.endpoints(), time.monotonic())
        self.agent_server = None
        if self.settings.agent_port:
            self.agent_server = AgentServer(self.agents, self.settings.agent_host, self.settings.agent_port).start()
        LOG.info(
            "state dir %s: loaded %d switches, %d links, %d hosts",
            self.settings.state_dir,
            len(self.topo.switches),
            len(self.topo.links),
            len(self.topo.hosts),
        )
        self.learner.set_inventory_macs(self.policy.vms.mac_owners)
        self.datapaths: dict[int, object] = {}
        self.sync: dict[int, SwitchSync] = {}
        self._stats_parts: dict[int, set[int]] = {}
        self.metrics = Metrics()  # this instance's own registry, served at /metrics
        self.metrics.watch(self)
        self.desired: desired_mod.DesiredTables = {}
        self._dirty = False
        self._compile_pending = False
        self._last_compile_seconds = 0.0
        self._save_failed_at: dict[str, float] = {}  # what could not be saved -> when that was last logged
        self._after_compile: list[Callable[[], None]] = []
        self._when_sent: list[Callable[[], None]] = []
        self._touched: set[int] = set()  # switches sent flow-mods since the last barrier round
        # Each unanswered barrier, keyed (dpid, xid), and what waits for it (_when_flows_in_place).
        self._barrier_wait: dict[tuple[int, int], list[_FlowWait]] = {}  # (dpid, barrier xid) -> waits
        self._next_audit: dict[int, float] = {}  # dpid -> when its table is due to be read again
        self._drop_count_xids: set[tuple[int, int]] = set()
        # Packet-ins wait apart from other events, probes first, retries coalesced (controller/intake.py).
        self.intake: Intake = Intake()
        self.heap = Heap()
        self._intake_ready = hub.Event()
        from controller.rest import register as register_rest

        limiter = auth.SignInLimiter(self.settings.auth_failure_burst, self.settings.auth_failure_rate)
        register_rest(kwargs["wsgi"], self, limiter)
        self.audit_retention = audit.Retention(self.store, self.settings.audit_retention_days)
        self.audit_retention.run(time.time())
        from controller import ovsdb_inventory

        self.ovsdb_inventory = ovsdb_inventory.start(self)  # VMs the hypervisor publishes in OVSDB

        self.threads.append(hub.spawn(self._tick_loop))
        self.threads.append(hub.spawn(self._edge_loop))
        self.threads.append(hub.spawn(self._intake_loop))

    # -- policy changes -------------------------------------------------------------
    def apply_policy(self, new: PolicyState, write_more: Callable[[], None] | None = None) -> None:
        """Persist a validated new policy state (and whatever else the request writes, such as
        its audit entry) in one transaction, then make it current and recompile. If the write
        fails, nothing changes. Nothing here visits the whole inventory: a write costs what it changes."""
        with self.store.transaction():
            self.store.write_policy(self.policy, new)
            if write_more is not None:
                write_more()
        old, self.policy = self.policy, new
        for name in new.quarantine.keys() - old.quarantine.keys():
            self.metrics.quarantined(new.quarantine[name].mode)
        self.learner.set_inventory_macs(new.vms.mac_owners)
        if new.quarantine != old.quarantine:
            self._quarantine_now()
        self.model_changed()

    def _quarantine_now(self) -> None:
        """A quarantine (or a release) goes to every hypervisor at once, ahead of the compile: the
        same shared group the compile will hand out, so the switches get just these entries now and
        nothing again later. The compile then takes the VM's port out of the floods and relabels it.
        From now on every table sent carries this group, whatever policy the compile that built the
        rest of it saw (one may be under way with the policy of a moment ago)."""
        self._quarantine_group = self.compiler.quarantine_group(quarantine_macs(self.policy))
        for dpid in list(self.desired):
            if dpid in self.datapaths and self.topo.role(dpid) == ROLE_HYPERVISOR:
                self.reconcile(dpid)

    def _with_current_quarantine(self, dpid: int, table):
        """The table with exactly the current quarantine group (a hypervisor's), or as it is."""
        want = self._quarantine_group
        if table.groups.get("quarantine") is want or self.topo.role(dpid) != ROLE_HYPERVISOR:
            return table
        groups = {k: g for k, g in table.groups.items() if k != "quarantine"}
        if want is not None:
            groups["quarantine"] = want
        table = SwitchTable(table.own, groups)
        self.desired[dpid] = table
        return table

    def _agents_changed(self) -> None:
        """An agent connected with new facts, or was revoked: endpoints and tunnel ports follow."""
        self.carry_out(self.learner.set_endpoints(self.agents.endpoints(), time.monotonic()))
        self.model_changed()

    def set_declared_vm_interfaces(self, names) -> None:
        """Interfaces the hypervisor declares as VM ports (from OVSDB external_ids)."""
        self.carry_out(self.learner.set_declared_vm_interfaces(names, time.monotonic()))

    # -- carrying out what the learner decided ------------------------------------------------
    def carry_out(self, outcome: Outcome, received: float | None = None) -> None:
        """Send what the learner asks for now; recompile if the model changed, and then send and
        run what waits for the new flows."""
        for packet in outcome.send:
            self._packet_out(packet)
        when_sent = None
        if outcome.learned and received is not None:

            def when_sent() -> None:
                self.metrics.observe_learning(time.monotonic() - received)

        if not (outcome.send_after or outcome.after):
            if outcome.changed:
                self.model_changed(when_sent=when_sent)
            return

        def then() -> None:
            for packet in outcome.send_after:
                self._packet_out(packet)
            now = time.monotonic()
            for step in outcome.after:
                self.carry_out(step(now))

        if outcome.changed:
            self.model_changed(then=then, when_sent=when_sent)
        elif self._compile_pending:
            # A compile is on its way (a host learned a moment ago, say): what waits for flows
            # waits for it too, or a re-injected frame would miss again and bounce.
            self._after_compile.append(then)
        else:
            # Flows sent before may not be in place yet (a cold start's backlog): a frame
            # re-injected now would miss again, come back, and bounce for as long.
            self._when_confirmed({p.dpid for p in outcome.send_after}, then)

    def _when_confirmed(self, dpids: set[int], callback: Callable[[], None]) -> None:
        """Run the callback once these switches have confirmed (barrier) every batch sent to them
        so far, or FLOWS_IN_PLACE_MAX_WAIT has passed; at once when none is outstanding."""
        self._after_barriers(dpids, [callback], ask=False)

    def _packet_out(self, packet: PacketOut) -> None:
        datapath = self.datapaths.get(packet.dpid)
        if datapath is None:
            return
        # A re-injection through the pipeline (OFPP_TABLE) needs the flow-mods sent before it in
        # place: every batch of them ends with a barrier (reconcile), and the switch handles what
        # follows a barrier only after everything before it, so no barrier of its own is needed.
        encoded = ofmsg.packet_out_bytes(packet.in_port, packet.out_port, packet.frame)
        datapath.send(ofmsg.with_xid(encoded, ofmsg.next_xid(datapath)))

    # -- compile and reconcile ---------------------------------------------------
    def model_changed(self, then: Callable[[], None] | None = None, when_sent: Callable[[], None] | None = None) -> None:
        """The model changed. One compile runs per burst of changes: it is scheduled behind the
        events already queued, so a switch connecting with fifty ports and links costs one
        compile, not fifty. `when_sent` runs as soon as the new flows have been sent; `then`
        once every switch that got some has confirmed them."""
        self._dirty = True
        if then is not None:
            self._after_compile.append(then)
        if when_sent is not None:
            self._when_sent.append(when_sent)
        if not self._compile_pending:
            self._compile_pending = True
            hub.spawn(self._compile_loop)

    def _compile_loop(self) -> None:
        try:
            while self._dirty or self._after_compile:
                if self._dirty:
                    self._let_intake_drain()
                    self._dirty = False
                    large = Heap.large(len(self.topo.switches), len(self.topo.hosts))
                    with self.heap.building(large):  # controller/heap.py: the collector stays off the tables
                        self._compile_and_reconcile()
                sent, self._when_sent = self._when_sent, []
                self._run_callbacks(sent)
                callbacks, self._after_compile = self._after_compile, []
                if callbacks:
                    self._when_flows_in_place(callbacks)
        except Exception:
            LOG.exception("compile failed; the switches keep their current flows")
        finally:
            self._compile_pending = False

    def _let_intake_drain(self) -> None:
        """Packet-ins waiting are handled before the compile, for as long as the last compile took
        (at least COMPILE_BATCH_WAIT): each compile costs a scan of the model's inputs, and under a
        storm of packet-ins the controller then spends about as long handling frames as compiling
        what they taught it. A cold start of 20,000 VMs that compiled every few packet-ins did little
        else. Copies of unanswered ARP requests (the intake's background lane) do not hold a compile
        back: they teach no host. An idle controller compiles at once."""
        deadline = time.monotonic() + max(COMPILE_BATCH_WAIT, self._last_compile_seconds)
        while self.intake.urgent and time.monotonic() < deadline:
            hub.sleep(0)

    def _when_flows_in_place(self, callbacks: list[Callable[[], None]]) -> None:
        """Run the callbacks once every switch sent flow-mods since the last round has answered a
        barrier (or FLOWS_IN_PLACE_MAX_WAIT has passed)."""
        touched, self._touched = self._touched, set()
        self._after_barriers(touched, callbacks, ask=True)

    def _after_barriers(self, dpids: set[int], callbacks: list[Callable[[], None]], ask: bool) -> None:
        """Run the callbacks once each of these switches has answered the barrier that closed its
        last batch (that answers for every flow-mod before it), or FLOWS_IN_PLACE_MAX_WAIT has passed.
        A switch with no batch outstanding is sent a barrier of its own if `ask`, else not waited for."""
        wait = _FlowWait(set(), callbacks, time.monotonic() + FLOWS_IN_PLACE_MAX_WAIT)
        for dpid in sorted(dpids):
            datapath = self.datapaths.get(dpid)
            if datapath is None:
                continue
            sync = self.sync.get(dpid)
            if sync is not None and sync.barriers:
                xid = next(reversed(sync.barriers))
            elif ask:
                barrier = datapath.ofproto_parser.OFPBarrierRequest(datapath)
                datapath.set_xid(barrier)
                datapath.send_msg(barrier)
                xid = barrier.xid
            else:
                continue
            wait.pending.add((dpid, xid))
            self._barrier_wait.setdefault((dpid, xid), []).append(wait)
        if not wait.pending:
            self._run_callbacks(callbacks)

    def _barrier_answered(self, keys) -> None:
        """Barriers (dpid, xid) were answered, or their switch is gone: run the waits left with none."""
        for key in keys:
            for wait in self._barrier_wait.pop(key, ()):
                wait.pending.discard(key)
                if not wait.pending:
                    self._run_callbacks(wait.callbacks)

    def _give_up_on_silent_switches(self, now: float) -> None:
        for wait in {w for waits in self._barrier_wait.values() for w in waits if now >= w.give_up_at}:
            for key in wait.pending:
                waits = self._barrier_wait.get(key, [])
                if wait in waits:
                    waits.remove(wait)
                if not waits:
                    self._barrier_wait.pop(key, None)
            wait.pending.clear()
            self._run_callbacks(wait.callbacks)

    @staticmethod
    def _run_callbacks(callbacks: list[Callable[[], None]]) -> None:
        for callback in callbacks:
            try:
                callback()
            except Exception:
                LOG.exception("a step waiting for new flows failed")

    def _compile_and_reconcile(self) -> None:
        """Recompute the desired tables, push the difference to every synced switch, persist."""
        started = time.perf_counter()
        plan = steering.plan_from_topology(self.topo, self.agents.bridge_of_index())
        assign_identities(self.topo, self.policy, self.identities)
        compiled = self.compiler.compile(self.topo, self.policy, self.identities, plan)
        self.desired = compiled.tables
        self._group_diffs = {}
        hypervisor_of = self.agents.hypervisor_of_bridge()
        names = {dpid: hypervisor_of.get(sw.name) for dpid, sw in self.topo.switches.items()}
        self.agents.set_needed(
            (names[a], names[b]) for a, b in (sorted(pair) for pair in compiled.encrypt_pairs) if names[a] and names[b]
        )
        if self.identities.added and self._save("identities", lambda: self.store.add_identities(self.identities.added)):
            self.identities.added.clear()
        # Only switches whose table changed, or that are not at their table yet, have anything to do.
        todo = [
            d
            for d, sync in self.sync.items()
            if d in self.datapaths and (d in compiled.changed or sync.last is not self.desired.get(d) or sync.refusals)
        ]
        for n, dpid in enumerate(todo):
            self.reconcile(dpid)
            if n % RECONCILE_YIELD_EVERY == RECONCILE_YIELD_EVERY - 1:
                hub.sleep(0)  # let the switches' send and receive loops run: probes keep flowing
        self._last_compile_seconds = time.perf_counter() - started
        self.metrics.observe_reconcile(self._last_compile_seconds)
        if self._last_compile_seconds >= SLOW_COMPILE:
            LOG.info("compile and reconcile took %.2f s: %d switches changed, %d reconciled, %d hosts, %d links",
                     self._last_compile_seconds, len(compiled.changed), len(todo), len(self.topo.hosts),
                     len(self.topo.links))  # fmt: skip
        self._save("topology", lambda: self.store.save_topology(self.topo))

    def _save(self, what: str, write: Callable[[], None]) -> bool:
        """Write `what` to the state database; False if it failed. A failed write (a full disk)
        never stops a compile from reaching the switches: what was not written stays to be written
        by a later compile (identities stay in `added`; the topology is diffed against what was
        last saved), and the failure is logged at most once a minute."""
        try:
            write()
        except (StateError, sqlite3.Error) as exc:
            now = time.monotonic()
            if now - self._save_failed_at.get(what, -60.0) >= 60.0:
                self._save_failed_at[what] = now
                LOG.error("could not save the %s to the state database: %s; the switches are programmed "
                          "all the same, and the next compile tries again", what, exc)  # fmt: skip
            return False
        if self._save_failed_at.pop(what, None) is not None:
            LOG.warning("saved the %s to the state database again", what)
        return True

    def reconcile(self, dpid: int) -> int:
        datapath, sync = self.datapaths.get(dpid), self.sync.get(dpid)
        if datapath is None or sync is None or not sync.synced or dpid not in self.desired:
            return 0
        plan = sync.next_plan(self._with_current_quarantine(dpid, self.desired[dpid]), time.monotonic(), self._group_diffs)
        sync.applied(plan)  # even when empty: it records that the switch is at this table
        if not plan:
            return 0
        # Each entry's bytes are encoded once for every switch that holds it (ofmsg.flow_add_bytes)
        # and stamped with this switch's xid; a batch goes out in a few large writes.
        xids, chunk, size = [], [], 0
        for kind, items in (("add", plan.adds), ("delete", plan.deletes)):
            if kind == "delete" and plan.adds and plan.deletes:
                # Nothing replaced goes before what replaces it: OpenFlow lets a switch reorder
                # messages between barriers.
                chunk.append(ofmsg.with_xid(ofmsg.BARRIER_BYTES, ofmsg.next_xid(datapath)))
            for item in items:
                xid = ofmsg.next_xid(datapath)
                encoded = ofmsg.flow_add_bytes(item) if kind == "add" else ofmsg.flow_delete_bytes(item)
                chunk.append(ofmsg.with_xid(encoded, xid))
                size += len(encoded)
                sync.sent(xid, kind, item)
                xids.append(xid)
                if size >= SEND_CHUNK_BYTES:
                    datapath.send(b"".join(chunk))
                    chunk, size = [], 0
        # The barrier's reply confirms every flow-mod above that drew no error.
        barrier_xid = ofmsg.next_xid(datapath)
        chunk.append(ofmsg.with_xid(ofmsg.BARRIER_BYTES, barrier_xid))
        datapath.send(b"".join(chunk))
        sync.barrier_sent(barrier_xid, xids, time.monotonic())
        sent = len(plan.adds) + len(plan.deletes)
        self._touched.add(dpid)
        self.metrics.flow_mods(dpid, sent)
        LOG.debug("switch %016x: %d adds, %d deletes", dpid, len(plan.adds), len(plan.deletes))
        return sent

    def _busy_switches(self) -> set[int]:
        """Switches still working through flow-mods: some wait in our send queue, or the switch has
        not confirmed (barrier) a batch sent less than BUSY_MAX_SECONDS ago (longer for a big batch:
        SwitchSync.working). A probe sent to one waits behind them and arrives stale."""
        busy = set()
        now = time.monotonic()
        for dpid, datapath in self.datapaths.items():
            queue = getattr(datapath, "send_q", None)
            sync = self.sync.get(dpid)
            if (queue is not None and queue.qsize() >= BUSY_SEND_CHUNKS) or (
                sync is not None and sync.working(now, BUSY_MAX_SECONDS, BUSY_MIN_RATE)
            ):
                busy.add(dpid)
        return busy

    def _unhandled(self) -> int:
        """Events read from the switches and not handled yet that may be probes: Ryu's queue, and the
        intake's probe lane (host frames wait apart and hold no probe)."""
        return self.events.qsize() + self.intake.probes_waiting

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
            slept = time.monotonic()
            hub.sleep(EDGE_CHECK_INTERVAL)
            try:
                now = time.monotonic()
                # Oversleeping means the loop was busy: probes waited as long (Learner.note_lag).
                self.learner.note_lag(max(0.0, now - slept - EDGE_CHECK_INTERVAL), now)
                if self._barrier_wait:
                    self._give_up_on_silent_switches(now)
                self.carry_out(self.learner.check_edges(now, backlog=self._unhandled()))
            except Exception:
                LOG.exception("edge port confirmation failed")

    def _tick(self) -> None:
        now = time.monotonic()
        self.ovsdb_inventory.tick(now)
        self.agents.tick()
        self._request_encrypt_drops()
        outcome = self.learner.tick(
            now, busy=self._busy_switches(), behind=self._unhandled() >= BEHIND_EVENTS, period=self.settings.lldp_interval
        )
        self.carry_out(outcome)
        if not self._compile_pending:
            self.heap.maybe_sweep(now)
        if not outcome.changed:
            for dpid in list(self.datapaths):
                self.reconcile(dpid)  # picks up deletes deferred while a switch settled
        for dpid, sync in list(self.sync.items()):
            if sync.synced and not sync.audited_after_settle and now >= sync.settle_until:
                # While deletes were deferred, an add may have replaced a flow we could not
                # place (read back from the switch, unknown slot): read the table once more.
                sync.audited_after_settle = True
                self._next_audit[dpid] = now
        self._audit(now)
        self.audit_retention.run(time.time())  # last: a failure here skips nothing else

    def _audit(self, now: float) -> None:
        """Read back the tables that are due (every audit_interval per switch), at most about
        AUDIT_ENTRIES_PER_TICK entries a tick, longest overdue first: a large fabric's audit is
        spread over several ticks instead of stalling the controller."""
        due = sorted((at, dpid) for dpid, at in self._next_audit.items() if at <= now and dpid in self.datapaths)
        budget = AUDIT_ENTRIES_PER_TICK
        for _, dpid in due:
            sync = self.sync.get(dpid)
            size = max(1, sync.held() if sync is not None else 1)
            if budget < AUDIT_ENTRIES_PER_TICK and size > budget:
                break
            budget -= size
            datapath = self.datapaths[dpid]
            self._next_audit[dpid] = now + self.settings.audit_interval
            self._request_flows(datapath)
            # A changed dp-desc (role override) is picked up here too.
            datapath.send_msg(datapath.ofproto_parser.OFPDescStatsRequest(datapath, 0))

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
        self.metrics.switch_connected(dpid)
        now = time.monotonic()
        self.sync[dpid] = SwitchSync(settle_until=now + self.settings.settle_time, connected_at=now)
        self._next_audit[dpid] = now + self.settings.audit_interval
        first_seen = dpid not in self.topo.switches
        self.carry_out(self.learner.switch_connected(dpid, now))
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
        self.metrics.switch_gone(dpid)
        self.sync.pop(dpid, None)
        self._next_audit.pop(dpid, None)
        self._touched.discard(dpid)
        if self._barrier_wait:
            self._barrier_answered([key for key in self._barrier_wait if key[0] == dpid])
        self.carry_out(self.learner.switch_disconnected(dpid, time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPDescStatsReply, MAIN_DISPATCHER)
    def desc_reply(self, ev) -> None:
        dp_desc = ev.msg.body.dp_desc
        dp_desc = dp_desc.decode(errors="replace") if isinstance(dp_desc, bytes) else str(dp_desc)
        self.carry_out(self.learner.role_described(ev.msg.datapath.id, dp_desc.strip("\x00 ")))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc_reply(self, ev) -> None:
        datapath = ev.msg.datapath
        ports = [self._port(p) for p in ev.msg.body]
        self.carry_out(self.learner.ports_described(datapath.id, ports, time.monotonic()))
        self._request_flows(datapath)

    def _request_encrypt_drops(self) -> None:
        """Read the packet count of every hypervisor's encrypt-drop entry (fail-closed drops)."""
        for dpid, datapath in list(self.datapaths.items()):
            if steering.ENCRYPT_DROP_COOKIE not in self.desired.get(dpid, {}):
                continue
            request = ofmsg.flow_stats_by_cookie(datapath, steering.ENCRYPT_DROP_COOKIE)
            datapath.set_xid(request)
            self._drop_count_xids.add((dpid, request.xid))
            datapath.send_msg(request)

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def flow_stats_reply(self, ev) -> None:
        datapath = ev.msg.datapath
        if (datapath.id, ev.msg.xid) in self._drop_count_xids:
            self._drop_count_xids.discard((datapath.id, ev.msg.xid))
            self.metrics.encrypt_drops_by_switch[datapath.id] = sum(s.packet_count for s in ev.msg.body)
            return
        parts = self._stats_parts.setdefault(datapath.id, set())
        parts.update(stat.cookie for stat in ev.msg.body)
        if ev.msg.flags & datapath.ofproto.OFPMPF_REPLY_MORE:
            return
        sync = self.sync.get(datapath.id)
        if sync is None:
            return
        sync.reading_back = False
        first = not sync.synced
        sync.set_actual(self._stats_parts.pop(datapath.id), self.desired.get(datapath.id, {}))
        if first:
            LOG.info("switch %016x holds %d of our flows; reconciling", datapath.id, sync.held())
            self.model_changed(when_sent=lambda: self._first_sync_done(datapath, sync))
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
        self.carry_out(self.learner.switch_synced(datapath.id, time.monotonic()))

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def barrier_reply(self, ev) -> None:
        dpid, xid = ev.msg.datapath.id, ev.msg.xid
        if self._barrier_wait:
            self._barrier_answered([(dpid, xid)])
        sync = self.sync.get(ev.msg.datapath.id)
        if sync is not None and sync.barriers:
            healed = sync.barrier_answered(xid)
            for entry in healed:
                LOG.info("switch %016x took the entry it refused before: table %d priority %d %s",
                         dpid, entry.table, entry.priority, entry.match_dict)  # fmt: skip
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
        self.metrics.switch_errors.inc()
        error = ofmsg.error_name(ofp, msg.type, msg.code)
        sync = self.sync.get(msg.datapath.id)
        refusal = sync.refused(msg.xid, error, time.monotonic()) if sync is not None else None
        if refusal is None:
            LOG.error("switch %016x refused a message (xid %d): %s", msg.datapath.id, msg.xid, error)
            return
        self.metrics.flow_mods_refused.inc()
        entry = refusal.entry
        LOG.warning(
            "switch %016x refused an entry (%s, attempt %d; retried in %.0f s): table %d priority %d %s",
            msg.datapath.id, error, refusal.attempts, refusal.retry_at - time.monotonic(),
            entry.table, entry.priority, entry.match_dict,
        )  # fmt: skip
        # What the switch holds is no longer what was planned (an entry it replaced may still be
        # there): read it back, as after a reconnect.
        if not sync.reading_back:
            sync.reading_back = True
            self._request_flows(msg.datapath)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status(self, ev) -> None:
        msg = ev.msg
        ofp = msg.datapath.ofproto
        port = self._port(msg.desc)
        if msg.reason in (ofp.OFPPR_ADD, ofp.OFPPR_DELETE):
            self.ovsdb_inventory.ports_changed()
        deleted = msg.reason == ofp.OFPPR_DELETE
        self.carry_out(self.learner.port_changed(msg.datapath.id, port, time.monotonic(), deleted=deleted))

    @staticmethod
    def _port(desc) -> Port:
        name = desc.name.decode(errors="replace") if isinstance(desc.name, bytes) else desc.name
        up = not (desc.state & 1) and not (desc.config & 1)  # OFPPS_LINK_DOWN, OFPPC_PORT_DOWN
        return Port(desc.port_no, name, desc.hw_addr, up)

    # -- packets ------------------------------------------------------------------
    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in(self, ev) -> None:
        """Handled by _intake_loop: _send_event puts packet-ins in the intake, not Ryu's queue."""
        # When the switch's receive loop handed it over (_send_event): a probe's age and the
        # learning latency both count from there.
        received = getattr(ev, "received_at", None) or time.monotonic()
        msg = ev.msg
        self.metrics.packet_in(msg.datapath.id)
        in_port = msg.match.get("in_port")
        if in_port is None:
            return
        punt = punt_reason(msg.table_id, msg.cookie)
        if punt is Punt.EVIDENCE:
            try:
                self.spoof_guard.evidence(msg.datapath.id, in_port, bytes(msg.data))
            except Exception:
                LOG.exception("acting on port security's evidence failed")
            return
        outcome = self.learner.packet_in(msg.datapath.id, in_port, bytes(msg.data), punt, time.monotonic(), received)
        self.carry_out(outcome, received)

    def _offer_packet_in(self, ev) -> None:
        """Into the intake: probes in their own lane; a frame identical to one waiting is dropped
        (evidence of spoofing never is: each copy counts)."""
        msg = ev.msg
        data = bytes(msg.data)
        probe = ether_type(data) == pipeline.ETH_TYPE_LLDP
        key = None
        punt = None if probe else punt_reason(msg.table_id, msg.cookie)
        if not probe and punt is not Punt.EVIDENCE:
            key = (msg.datapath.id, msg.match.get("in_port"), msg.table_id, msg.cookie, data)
        background = punt is Punt.UNANSWERED_ARP
        if self.intake.offer(msg.datapath.id, key, ev, probe=probe, background=background) and not self._intake_ready.is_set():
            self._intake_ready.set()

    def _intake_loop(self) -> None:
        handled = 0
        while True:
            ev = self.intake.take()
            if ev is None:
                self._intake_ready.clear()
                self._intake_ready.wait()
                continue
            datapath = ev.msg.datapath
            if self.datapaths.get(datapath.id) is not datapath:
                continue  # from a connection that has ended since
            try:
                self.packet_in(ev)
            except Exception:
                LOG.exception("handling a packet-in failed")
            handled += 1
            if handled % INTAKE_YIELD_EVERY == 0:
                hub.sleep(0)  # the switches' receive loops, the compile and the edge loop run too

    def _send_event(self, ev, state) -> None:
        """Every event, as a switch's receive loop hands it over: stamped before it queues behind
        the ones this app has not handled yet (a probe's age counts from here). Packet-ins go to the
        intake instead of the queue, so that the receive loop never waits for them to be handled."""
        ev.received_at = time.monotonic()
        if type(ev) is ofp_event.EventOFPPacketIn and state == MAIN_DISPATCHER:
            self._offer_packet_in(ev)
            return
        super()._send_event(ev, state)

    # -- views for REST ---------------------------------------------------------------
    def desired_flow_count(self) -> int:
        return sum(len(t) for t in self.desired.values())

    def flows_for(self, dpid: int) -> list[FlowEntry]:
        return sorted(self.desired.get(dpid, {}).values(), key=lambda e: (e.table, -e.priority, e.cookie))
