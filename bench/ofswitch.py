"""A small OpenFlow 1.3 switch emulator, in the spirit of cbench: many emulated switches on one event
loop, each a TCP connection to the controller that answers what a controller asks on connect (hello,
features, descriptions, port descriptions, flow stats, barriers, echo) and counts the flow-mods it is
sent. Emulated switches can be cabled together: an LLDP probe the controller sends out of a cabled
port arrives as a packet-in on the other end, so the controller learns the fabric as on real
switches. A switch can also play a VM's ARP request on a port: a table miss while the switch holds
no ingress entry for that VM's MAC on that port, and once it does, the copy the forwarding table's
unanswered-ARP entry sends up (the emulated VMs ask for an address nobody holds).

It keeps the cookies of the flows it was sent, by slot (table, priority, match), and reports them
in flow stats: the controller's audits and read-backs then see what a real switch would hold, not
an empty table to refill. It does not forward anything: it is a load generator and a stopwatch.

Like Open vSwitch, a switch whose controller connection drops (or is refused) connects again after a
backoff (1 s, doubling to 8 s while attempts keep failing; 1 s again after a connection that lasted),
keeps its flow table meanwhile (fail-mode secure) and answers the new handshake from it.

Fairness on one loop: a switch handles at most READ_SLICE bytes of what the controller sent before
the others get their turn, and it never stops reading to wait for its own writes to drain (a
controller blocked writing to it may be what keeps it from reading ours); like Open vSwitch's
packet-in queue, packet-ins are dropped while the connection's backlog toward the controller is too
long. With `debug`, the fabric measures its loop's lag and each connection's longest gap between
reads while data was waiting, and records why every connection ended."""

from __future__ import annotations

import asyncio
import struct
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

OFP_VERSION = 4
HELLO, ERROR, ECHO_REQUEST, ECHO_REPLY = 0, 1, 2, 3
FEATURES_REQUEST, FEATURES_REPLY, GET_CONFIG_REQUEST, GET_CONFIG_REPLY = 5, 6, 7, 8
PACKET_IN, PACKET_OUT, FLOW_MOD, METER_MOD = 10, 13, 14, 29
MULTIPART_REQUEST, MULTIPART_REPLY, BARRIER_REQUEST, BARRIER_REPLY = 18, 19, 20, 21
MP_DESC, MP_FLOW, MP_PORT_DESC = 0, 1, 13
OFPP_LOCAL = 0xFFFFFFFE
NO_BUFFER = 0xFFFFFFFF
OFPR_NO_MATCH, OFPR_ACTION = 0, 1
FORWARD_TABLE = 3  # apps/pipeline.py FORWARD: where an unanswered ARP request is copied up
ETH_TYPE_LLDP = 0x88CC
FULL_MASK = (1 << 64) - 1
BACKOFF_START, MAX_BACKOFF = 1.0, 8.0  # Open vSwitch's reconnect backoff (rconn): 1 s, doubling to max_backoff
READ_SLICE = 64 * 1024  # bytes one switch handles before the others get their turn
PACKET_IN_BACKLOG = 256 * 1024  # bytes not yet taken by the controller past which packet-ins are dropped


def header(msg_type: int, length: int, xid: int) -> bytes:
    return struct.pack("!BBHI", OFP_VERSION, msg_type, length, xid)


def message(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    return header(msg_type, 8 + len(body), xid) + body


def port_entry(port_no: int, name: str, mac: bytes) -> bytes:
    """An ofp_port: up, 10 Gb/s."""
    return struct.pack("!I4x6s2x16sIIIIIIII", port_no, mac, name.encode()[:15], 0, 0, 0x800, 0, 0, 0, 10_000_000, 10_000_000)


def packet_in(in_port: int, data: bytes, table_id: int, cookie: int, reason: int) -> bytes:
    oxm = struct.pack("!IIxxxx", 0x80000004, in_port)  # OXM in_port, padded to 8
    match = struct.pack("!HH", 1, 4 + 8) + oxm
    body = struct.pack("!IHBBQ", NO_BUFFER, len(data), reason, table_id, cookie) + match + b"\x00\x00" + data
    return message(PACKET_IN, 0, body)


def flow_stats_entry(table: int, priority: int, cookie: int) -> bytes:
    """An ofp_flow_stats with an empty match and no instructions."""
    return struct.pack("!HBxIIHHHH4xQQQ", 56, table, 0, 0, priority, 0, 0, 0, cookie, 0, 0) + struct.pack("!HH4x", 1, 4)


def arp_request(mac: bytes, ip: bytes, target: bytes) -> bytes:
    """A VM's broadcast ARP request (its first frame)."""
    return b"\xff" * 6 + mac + b"\x08\x06" + struct.pack("!HHBBH", 1, 0x0800, 6, 4, 1) + mac + ip + b"\x00" * 6 + target


@dataclass
class Counters:
    flow_mods: int = 0
    barriers: int = 0
    packet_outs: int = 0
    probes_delivered: int = 0
    packet_ins_dropped: int = 0  # while the connection's backlog was too long (Open vSwitch drops them too)
    disconnects: int = 0  # connections that ended, and connection attempts that failed
    reconnects: int = 0  # connections made after the first
    first_flow_mod: float | None = None
    last_flow_mod: float | None = None


@dataclass
class EmulatedSwitch:
    """One switch: its dpid and ports (number -> name, MAC)."""

    dpid: int
    ports: dict[int, tuple[str, bytes]]
    counters: Counters = field(default_factory=Counters)
    writer: asyncio.StreamWriter | None = None
    on_first_flows: Callable[[EmulatedSwitch], None] | None = None
    connected_at: float | None = None
    flows: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)  # slot -> (table, priority, cookie)
    slots: dict[int, set[bytes]] = field(default_factory=dict)  # cookie -> its slots
    # Table-0 entries that admit a host: slot -> (in_port, eth_src); and how many admit each pair.
    sources: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)
    known: dict[tuple[int, bytes], int] = field(default_factory=dict)
    connections: int = 0  # connections made so far

    def flow_mod(self, body: bytes) -> None:
        """Add replaces the entry in its slot; delete (strict or not) removes the flows whose
        cookie matches under the mask (the controller's: one cookie, found without a scan)."""
        cookie, mask, table, command = struct.unpack_from("!QQBB", body, 0)
        priority = struct.unpack_from("!H", body, 22)[0]
        match_len = struct.unpack_from("!H", body, 42)[0]
        if command == 0:  # OFPFC_ADD
            slot = bytes([table]) + struct.pack("!H", priority) + body[40 : 40 + match_len]
            replaced = self.flows.get(slot)
            if replaced is not None:
                self._forget(slot, replaced[2])
            self.flows[slot] = (table, priority, cookie)
            self.slots.setdefault(cookie, set()).add(slot)
            if table == 0 and slot not in self.sources:
                source = _source(body[44 : 40 + match_len])
                if source is not None:
                    self.sources[slot] = source
                    self.known[source] = self.known.get(source, 0) + 1
        elif command in (3, 4):  # OFPFC_DELETE, OFPFC_DELETE_STRICT
            if mask == FULL_MASK:
                doomed = list(self.slots.get(cookie, ()))
            else:
                doomed = [k for k, v in self.flows.items() if v[2] & mask == cookie & mask]
            for slot in doomed:
                self._forget(slot, self.flows.pop(slot)[2])

    def _forget(self, slot: bytes, cookie: int) -> None:
        held = self.slots.get(cookie)
        if held is not None:
            held.discard(slot)
            if not held:
                del self.slots[cookie]
        source = self.sources.pop(slot, None)
        if source is not None:
            left = self.known[source] - 1
            if left:
                self.known[source] = left
            else:
                del self.known[source]

    def send(self, data: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(data)

    def held_matches(self, table: int, priority: int | None = None) -> list[dict[int, bytes]]:
        """The matches of the entries held in `table` (at `priority`, if given), each as its OpenFlow
        basic fields: field number -> value (a masked field's value only). For a test to see what
        the switch would do, e.g. which addresses its ARP responders answer (field 23, arp_tpa)."""
        return [_fields(slot[3 + 4 :]) for slot, (t, p, _) in self.flows.items() if t == table and priority in (None, p)]


def _source(oxms: bytes) -> tuple[int, bytes] | None:
    """(in_port, eth_src) of a match that names both exactly (OXM TLVs after the match header)."""
    in_port = eth_src = None
    offset = 0
    while offset + 4 <= len(oxms):
        header = struct.unpack_from("!I", oxms, offset)[0]
        length = header & 0xFF
        if header >> 16 == 0x8000 and not header & 0x100:  # an OpenFlow basic field, no mask
            field_no = (header >> 9) & 0x7F
            if field_no == 0 and length == 4:
                in_port = struct.unpack_from("!I", oxms, offset + 4)[0]
            elif field_no == 4 and length == 6:
                eth_src = bytes(oxms[offset + 4 : offset + 10])
        offset += 4 + length
    return (in_port, eth_src) if in_port is not None and eth_src is not None else None


def _fields(oxms: bytes) -> dict[int, bytes]:
    """OpenFlow basic OXM fields of a match (after its header): field number -> value (mask dropped)."""
    fields = {}
    offset = 0
    while offset + 4 <= len(oxms):
        header = struct.unpack_from("!I", oxms, offset)[0]
        length = header & 0xFF
        if header >> 16 == 0x8000:
            value = oxms[offset + 4 : offset + 4 + length]
            fields[(header >> 9) & 0x7F] = bytes(value[: length // 2] if header & 0x100 else value)
        offset += 4 + length
    return fields


@dataclass
class Drop:
    """Why one connection ended (or an attempt failed), for the debug report."""

    dpid: int
    at: float  # seconds since the fabric started
    reason: str  # "eof" (the controller closed), "reset", "refused", "error: ..."
    connected_for: float  # seconds the connection lasted (0 for a failed attempt)
    flow_mods: int  # the switch's flow-mods so far
    unsent: int  # bytes written and not yet taken by the controller when it ended
    max_read_gap: float  # the longest wait between two reads while data was waiting, that connection
    last_read_gap: float  # seconds since the last read when it ended


class Fabric:
    """Emulated switches, their cables, and one connection each to the controller."""

    def __init__(
        self,
        miss_cookie: int,
        lldp_cookie: int = 0,
        reconnect: bool = True,
        read_slice: int = READ_SLICE,
        debug: bool = False,
        drain_at: int | None = None,
        packet_in_backlog: int = PACKET_IN_BACKLOG,
        unanswered_cookie: int | None = None,
    ) -> None:
        """`drain_at` (bytes; None: never) makes a switch stop reading until its backlog toward the
        controller drains, and `packet_in_backlog` sets when packet-ins are dropped: with
        read_slice=drain_at=packet_in_backlog=1 MiB, the emulator as it was before its reads were
        sliced (for comparing)."""
        self.switches: dict[int, EmulatedSwitch] = {}
        self.cables: dict[tuple[int, int], tuple[int, int]] = {}  # (dpid, port) -> (dpid, port)
        self.miss_cookie, self.lldp_cookie, self.unanswered_cookie = miss_cookie, lldp_cookie, unanswered_cookie
        self.counters = Counters()
        self.reconnect, self.read_slice, self.debug = reconnect, read_slice, debug
        self.drain_at, self.packet_in_backlog = drain_at, packet_in_backlog
        self.started = time.monotonic()
        self.drops: list[Drop] = []
        self.errors: list[str] = []  # the emulator's own exceptions (a bug, not the controller), first few
        self.loop_lag_max = 0.0  # debug: the longest the loop was late waking the lag watcher
        self.loop_lags_over = {1.0: 0, 5.0: 0}  # debug: how many times it was later than that
        # The newest LLDP probe the controller sent out of each port with no cable (where a VM would
        # receive it): a fuzzing VM can replay what it was sent.
        self.probes_to_vms: dict[tuple[int, int], bytes] = {}

    def add(self, switch: EmulatedSwitch) -> None:
        self.switches[switch.dpid] = switch

    def cable(self, a: tuple[int, int], b: tuple[int, int]) -> None:
        self.cables[a], self.cables[b] = b, a

    # -- the controller's side of the conversation -------------------------------------------------
    async def run_switch(self, switch: EmulatedSwitch, host: str, port: int) -> None:
        """Connect to the controller, and again whenever the connection drops or is refused, after
        Open vSwitch's backoff (rconn): 1 s, doubled after each attempt that failed or lasted less
        than the backoff, up to MAX_BACKOFF; back to 1 s after a connection that lasted. The flow
        table is kept meanwhile (fail-mode secure). Without `reconnect`, one connection only."""
        backoff, backoff_deadline = 0.0, 0.0
        while True:
            opened = time.monotonic()
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError as exc:
                backoff_deadline = float("inf")  # a failed attempt never resets the backoff
                self._dropped(switch, f"refused: {exc.strerror or exc}", opened, opened, opened, 0.0)
            else:
                backoff_deadline = opened + backoff
                if switch.connections:
                    switch.counters.reconnects += 1
                    self.counters.reconnects += 1
                switch.connections += 1
                await self._session(switch, reader, writer)
            if not self.reconnect:
                return
            if time.monotonic() >= backoff_deadline:
                backoff = BACKOFF_START
            else:
                backoff = min(max(BACKOFF_START, 2 * backoff), MAX_BACKOFF)
            await asyncio.sleep(backoff)

    async def _session(self, switch: EmulatedSwitch, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection: hello, then answer what the controller sends until it closes."""
        switch.writer = writer
        switch.connected_at = opened = time.monotonic()
        writer.write(message(HELLO, 0))
        buffer = b""
        reason = "eof"
        last_read, waiting, max_gap = opened, False, 0.0
        try:
            while True:
                data = await reader.read(self.read_slice)
                now = time.monotonic()
                if waiting and now - last_read > max_gap:
                    max_gap = now - last_read
                # A full slice: more is probably waiting, so the time to the next read is a delay.
                last_read, waiting = now, len(data) == self.read_slice
                if not data:
                    break
                buffer += data
                offset = 0
                # Every whole message in what arrived; the rest waits for more.
                while len(buffer) - offset >= 8:
                    msg_type, length, xid = struct.unpack_from("!xBHI", buffer, offset)
                    if length < 8:
                        raise ConnectionError(f"switch {switch.dpid:x}: bad message length {length}")
                    if len(buffer) - offset < length:
                        break
                    if msg_type == FLOW_MOD:
                        switch.flow_mod(buffer[offset + 8 : offset + length])
                        self._flow_mod(switch)
                    else:
                        self._handle(switch, msg_type, xid, buffer[offset + 8 : offset + length])
                    offset += length
                buffer = buffer[offset:]
                if self.drain_at is not None and writer.transport.get_write_buffer_size() > self.drain_at:
                    await writer.drain()  # only when asked to (see __init__)
                # The others' turn: one switch flooded with flow-mods does not starve the rest. It
                # never waits for its own writes to drain here: the controller may be blocked
                # writing to it, and would then never read what it waits on.
                await asyncio.sleep(0)
        except ConnectionResetError:
            reason = "reset"
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            reason = f"error: {exc!r}"
        except Exception as exc:  # a bug in the emulator: recorded, and the switch reconnects
            reason = f"emulator exception: {exc!r}"
            if len(self.errors) < 20:
                self.errors.append(f"switch {switch.dpid:x}: {traceback.format_exc()}")
        finally:
            unsent = writer.transport.get_write_buffer_size() if writer.transport is not None else 0
            switch.writer = None
            writer.close()
        self._dropped(switch, reason, opened, time.monotonic(), last_read, max_gap, unsent)

    def _dropped(
        self,
        switch: EmulatedSwitch,
        reason: str,
        opened: float,
        now: float,
        last_read: float,
        max_gap: float,
        unsent: int = 0,
    ) -> None:
        switch.counters.disconnects += 1
        self.counters.disconnects += 1
        drop = Drop(
            switch.dpid,
            round(now - self.started, 2),
            reason,
            round(now - opened, 2),
            switch.counters.flow_mods,
            unsent,
            round(max_gap, 2),
            round(now - last_read, 2),
        )
        if len(self.drops) < 10_000:
            self.drops.append(drop)
        if self.debug:
            print(f"ofswitch: {drop}", file=sys.stderr, flush=True)

    async def watch_loop(self, interval: float = 0.1) -> None:
        """Debug: how late the loop wakes a task sleeping `interval` (every switch waits as long)."""
        while True:
            before = time.monotonic()
            await asyncio.sleep(interval)
            lag = time.monotonic() - before - interval
            self.loop_lag_max = max(self.loop_lag_max, lag)
            for threshold in self.loop_lags_over:
                if lag > threshold:
                    self.loop_lags_over[threshold] += 1

    def drop_summary(self) -> dict:
        """The connections that ended, by reason, and what preceded them."""
        by_reason: dict[str, int] = {}
        for drop in self.drops:
            key = drop.reason.split(":")[0]
            by_reason[key] = by_reason.get(key, 0) + 1
        lasted = [d for d in self.drops if d.connected_for > 0]
        return {
            "disconnects": self.counters.disconnects,
            "reconnects": self.counters.reconnects,
            "by_reason": by_reason,
            "switches_dropped": len({d.dpid for d in self.drops}),
            "first_drop_at": min((d.at for d in self.drops), default=None),
            "max_read_gap_before_drop": max((d.max_read_gap for d in lasted), default=None),
            "max_unsent_at_drop": max((d.unsent for d in lasted), default=None),
            "packet_ins_dropped": self.counters.packet_ins_dropped,
            "emulator_errors": len(self.errors),
            "loop_lag_max": round(self.loop_lag_max, 2),
            "loop_lags_over": {str(k): v for k, v in self.loop_lags_over.items()},
        }

    def send_packet_in(self, switch: EmulatedSwitch, data: bytes) -> bool:
        """A packet-in goes out unless the controller has not taken `packet_in_backlog` bytes of
        what the switch wrote already (Open vSwitch too drops packet-ins beyond a queue limit)."""
        writer = switch.writer
        if writer is None or writer.is_closing():
            return False
        if writer.transport.get_write_buffer_size() > self.packet_in_backlog:
            switch.counters.packet_ins_dropped += 1
            self.counters.packet_ins_dropped += 1
            return False
        writer.write(data)
        return True

    def _handle(self, switch: EmulatedSwitch, msg_type: int, xid: int, body: bytes) -> None:
        c = switch.counters
        if msg_type == BARRIER_REQUEST:
            c.barriers += 1
            self.counters.barriers += 1
            switch.send(message(BARRIER_REPLY, xid))
        elif msg_type == ECHO_REQUEST:
            switch.send(message(ECHO_REPLY, xid, body))
        elif msg_type == FEATURES_REQUEST:
            switch.send(message(FEATURES_REPLY, xid, struct.pack("!QIBB2xII", switch.dpid, 0, 254, 0, 0x4F, 0)))
        elif msg_type == GET_CONFIG_REQUEST:
            switch.send(message(GET_CONFIG_REPLY, xid, struct.pack("!HH", 0, 0xFFE5)))
        elif msg_type == MULTIPART_REQUEST:
            self._multipart(switch, xid, body)
        elif msg_type == PACKET_OUT:
            c.packet_outs += 1
            self.counters.packet_outs += 1
            self._packet_out(switch, body)
        # HELLO, SET_CONFIG, METER_MOD and anything else: nothing to answer.

    def _flow_mod(self, switch: EmulatedSwitch) -> None:
        c = switch.counters
        now = time.monotonic()
        first = c.flow_mods == 0
        c.flow_mods += 1
        self.counters.flow_mods += 1
        c.last_flow_mod = self.counters.last_flow_mod = now
        if c.first_flow_mod is None:
            c.first_flow_mod = now
        if self.counters.first_flow_mod is None:
            self.counters.first_flow_mod = now
        if first and switch.on_first_flows is not None:
            switch.on_first_flows(switch)

    def _multipart(self, switch: EmulatedSwitch, xid: int, body: bytes) -> None:
        mp_type = struct.unpack("!H", body[:2])[0]
        if mp_type == MP_DESC:
            desc = b"goldilocks bench".ljust(256, b"\0") + b"ofswitch".ljust(256, b"\0") + b"1".ljust(256, b"\0")
            payload = desc + b"0".ljust(32, b"\0") + f"emulated {switch.dpid:x}".encode().ljust(256, b"\0")
        elif mp_type == MP_PORT_DESC:
            payload = b"".join(port_entry(n, name, mac) for n, (name, mac) in sorted(switch.ports.items()))
        elif mp_type == MP_FLOW:
            # The flows held that the request selects (table, cookie under its mask), by cookie (the
            # controller reads nothing else), in parts of 1,000.
            table_id = body[8]
            cookie, mask = struct.unpack_from("!QQ", body, 24)
            entries = [
                flow_stats_entry(*flow)
                for flow in switch.flows.values()
                if (table_id == 0xFF or flow[0] == table_id) and flow[2] & mask == cookie & mask
            ]
            for start in range(0, max(len(entries), 1), 1000):
                more = 1 if start + 1000 < len(entries) else 0
                part = b"".join(entries[start : start + 1000])
                switch.send(message(MULTIPART_REPLY, xid, struct.pack("!HH4x", mp_type, more) + part))
            return
        else:  # anything else: nothing to report
            payload = b""
        switch.send(message(MULTIPART_REPLY, xid, struct.pack("!HH4x", mp_type, 0) + payload))

    def _packet_out(self, switch: EmulatedSwitch, body: bytes) -> None:
        """An LLDP probe out of a cabled port reaches the other end as a packet-in."""
        _, in_port, actions_len = struct.unpack("!IIH", body[:10])
        actions, data = body[16 : 16 + actions_len], body[16 + actions_len :]
        if len(data) < 14 or struct.unpack("!H", data[12:14])[0] != ETH_TYPE_LLDP:
            return
        offset = 0
        while offset + 4 <= len(actions):
            action_type, length = struct.unpack("!HH", actions[offset : offset + 4])
            if action_type == 0 and length >= 8:  # output
                out_port = struct.unpack("!I", actions[offset + 4 : offset + 8])[0]
                peer = self.cables.get((switch.dpid, out_port))
                if peer is None:
                    self.probes_to_vms[(switch.dpid, out_port)] = data
                if peer is not None and peer[0] in self.switches:
                    if self.send_packet_in(self.switches[peer[0]], packet_in(peer[1], data, 0, self.lldp_cookie, OFPR_ACTION)):
                        self.counters.probes_delivered += 1
            offset += max(length, 8)

    def play_arp(self, dpid: int, port: int, mac: bytes, ip: bytes, target: bytes) -> None:
        """A VM's ARP request on its port: as the table-miss entry sends it while the switch holds no
        entry admitting the VM there, else as the unanswered-ARP entry copies it (when the fabric
        was made with its cookie; nothing otherwise)."""
        frame = arp_request(mac, ip, target)
        switch = self.switches[dpid]
        if (port, mac) not in switch.known:
            self.send_packet_in(switch, packet_in(port, frame, 0, self.miss_cookie, OFPR_NO_MATCH))
        elif self.unanswered_cookie is not None:
            self.send_packet_in(switch, packet_in(port, frame, FORWARD_TABLE, self.unanswered_cookie, OFPR_ACTION))


# -- Malformed frames, for fuzzing the controller's packet-in path -------------------------------------
# A VM controls every byte it sends. These are the frames it might send, valid first (so that the
# mutations below reach deep into each parser), then cut short, bit-flipped or overwritten.
FUZZ_KINDS = ("arp", "lldp", "ipv4", "ipv6", "vlan", "qinq", "random", "empty")


def lldp_frame(src: bytes, chassis: bytes, port_id: bytes, extra: bytes = b"") -> bytes:
    """An LLDP frame with the given chassis and port IDs (subtype 7, locally assigned), a TTL, any
    `extra` TLVs and the end TLV: what a switch, or a VM pretending to be one, sends."""

    def tlv(kind: int, value: bytes) -> bytes:
        return struct.pack("!H", (kind << 9) | len(value)) + value

    body = tlv(1, b"\x07" + chassis) + tlv(2, b"\x07" + port_id) + tlv(3, struct.pack("!H", 120)) + extra + tlv(0, b"")
    return bytes.fromhex("0180c200000e") + src + struct.pack("!H", ETH_TYPE_LLDP) + body


def ipv4_frame(src: bytes, dst: bytes, ip_src: bytes, ip_dst: bytes, protocol: int = 17, payload: bytes = b"") -> bytes:
    """An IPv4 packet (header checksum left 0: the controller never checks it, nor does it need to)."""
    if protocol == 17 and not payload:
        payload = struct.pack("!HHHH", 5353, 53, 8, 0)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, protocol, 0, ip_src, ip_dst)
    return dst + src + b"\x08\x00" + header + payload


def neighbour_solicitation(src: bytes, target: bytes) -> bytes:
    """An IPv6 neighbour solicitation (ICMPv6 135) for `target` (16 bytes), to its solicited-node group."""
    icmp = struct.pack("!BBHI", 135, 0, 0, 0) + target + b"\x01\x01" + src
    ip6 = struct.pack("!IHBB", 6 << 28, len(icmp), 58, 255) + b"\xfe\x80" + bytes(8) + src[:3] + b"\xff\xfe" + src[3:]
    ip6 += b"\xff\x02" + bytes(9) + b"\x01\xff" + target[-3:]
    return b"\x33\x33\xff" + target[-3:] + src + b"\x86\xdd" + ip6 + icmp


def vlan_tagged(frame: bytes, vid: int, tpid: int = 0x8100) -> bytes:
    """`frame` with one more VLAN tag outside any it has (tpid 0x88a8: a QinQ service tag)."""
    return frame[:12] + struct.pack("!HH", tpid, vid & 0xFFF) + frame[12:]


def fuzz_templates(
    mac: bytes, ip: bytes, neighbour: bytes, other_switch: tuple[int, int], rng, captured: tuple[bytes, ...] = ()
) -> dict[str, list[bytes]]:
    """Valid frames a VM with `mac` and `ip` could send, by kind: ARP requests, replies and probes;
    LLDP claiming to come from `other_switch` (dpid, port) with no, a garbage or a truncated signature,
    and the `captured` probes (real ones the VM was sent, replayed);
    IPv4 (UDP, TCP, ICMP, DHCP from 0.0.0.0); IPv6 neighbour discovery; and all of those behind one
    VLAN tag, or two (QinQ, and 802.1Q in 802.1Q)."""
    bcast = b"\xff" * 6
    arp_header = struct.pack("!HHBB", 1, 0x0800, 6, 4)

    def arp_message(dst: bytes, op: int, sender_ip: bytes, target_mac: bytes, target_ip: bytes) -> bytes:
        return dst + mac + b"\x08\x06" + arp_header + struct.pack("!H", op) + mac + sender_ip + target_mac + target_ip

    arp = [
        arp_message(bcast, 1, ip, bytes(6), neighbour),
        arp_message(neighbour_mac(neighbour), 2, ip, neighbour_mac(neighbour), neighbour),
        arp_message(bcast, 1, bytes(4), bytes(6), ip),  # an ARP probe (duplicate address detection)
    ]
    dpid, port = other_switch
    chassis, port_id = f"dpid:{dpid:016x}".encode(), str(port).encode()
    oui = bytes.fromhex("6c6c6c01")  # our signature TLV's marker (topology/lldp.py)
    sent_ms = struct.pack("!Q", int(time.monotonic() * 1000))
    lldp = [
        lldp_frame(mac, chassis, port_id),
        lldp_frame(mac, chassis, port_id, struct.pack("!H", (127 << 9) | 28) + oui + sent_ms + rng.randbytes(16)),
        lldp_frame(mac, chassis, port_id, struct.pack("!H", (127 << 9) | 20) + oui + sent_ms + rng.randbytes(8)),
        lldp_frame(mac, b"dpid:" + b"f" * 40, b"9" * 30, struct.pack("!H", (127 << 9) | 28) + oui + sent_ms + bytes(16)),
        *captured,
    ]
    to = neighbour_mac(neighbour)
    tcp_syn = struct.pack("!HHIIBBHHH", 40000, 22, 1, 0, 0x50, 2, 1024, 0, 0)
    ipv4 = [
        ipv4_frame(mac, to, ip, neighbour, 17),
        ipv4_frame(mac, to, ip, neighbour, 6, tcp_syn),
        ipv4_frame(mac, to, ip, neighbour, 1, struct.pack("!BBHHH", 8, 0, 0, 1, 1) + b"ping"),
        ipv4_frame(mac, bcast, bytes(4), b"\xff" * 4, 17, struct.pack("!HHHH", 68, 67, 8, 0) + bytes(240)),  # DHCP
    ]
    target = b"\xfe\x80" + bytes(8) + rng.randbytes(8)
    solicit_router = struct.pack("!IHBB", 6 << 28, 8, 58, 255) + bytes(32) + struct.pack("!BBHI", 133, 0, 0, 0)
    ipv6 = [neighbour_solicitation(mac, target), b"\x33\x33\x00\x00\x00\x02" + mac + b"\x86\xdd" + solicit_router]
    plain = arp + ipv4 + ipv6
    return {
        "arp": arp,
        "lldp": lldp,
        "ipv4": ipv4,
        "ipv6": ipv6,
        "vlan": [vlan_tagged(f, 10) for f in plain + lldp],
        "qinq": [vlan_tagged(vlan_tagged(f, 10), 20, tpid) for f in plain + lldp for tpid in (0x88A8, 0x8100)],
    }


def neighbour_mac(ip: bytes) -> bytes:
    """A made-up unicast MAC for an IPv4 address (the fuzzer's frames need some destination)."""
    return b"\x02\xee" + ip


def mutate(frame: bytes, rng) -> bytes:
    """`frame` cut short, bit-flipped (1 to 4 bits), with a byte overwritten (0x00, 0xff or random),
    or several of those; the Ethernet header is hit as often as any other byte."""
    data = bytearray(frame)
    for _ in range(rng.randint(1, 3)):
        choice = rng.random()
        if choice < 0.35 and data:
            del data[rng.randrange(len(data)) :]
        elif choice < 0.75 and data:
            for _ in range(rng.randint(1, 4)):
                bit = rng.randrange(len(data) * 8)
                data[bit // 8] ^= 1 << (bit % 8)
        elif data:
            data[rng.randrange(len(data))] = rng.choice((0x00, 0xFF, rng.randrange(256)))
    return bytes(data)


def fuzz_frames(
    seed: int,
    count: int,
    mac: bytes,
    ip: bytes,
    neighbour: bytes,
    other_switch: tuple[int, int],
    captured: tuple[bytes, ...] = (),
) -> Iterator[tuple[str, bytes]]:
    """`count` malformed or truncated frames, seeded: (kind, frame). Each kind of FUZZ_KINDS in turn;
    a template frame is sent as it is one time in 16, otherwise mutated; "random" is random bytes of
    any length up to 1,514, "empty" zero to 13 bytes (no whole Ethernet header)."""
    import random

    rng = random.Random(seed)
    templates = fuzz_templates(mac, ip, neighbour, other_switch, rng, captured)
    for n in range(count):
        kind = FUZZ_KINDS[n % len(FUZZ_KINDS)]
        if kind == "random":
            yield kind, rng.randbytes(rng.randrange(1515))
        elif kind == "empty":
            yield kind, rng.randbytes(rng.randrange(14))
        else:
            frame = rng.choice(templates[kind])
            yield kind, frame if rng.randrange(16) == 0 else mutate(frame, rng)
