"""Faster parsing of the two OpenFlow 1.3 messages a large fabric sends most: packet-ins and
flow-stats replies. Every application sees exactly the objects Ryu builds; only the work nobody
asks for is skipped or deferred.

Measured at 1,000 emulated hypervisors, Ryu spent a third of the controller's time building
`OFPMatch` objects: 51 us each, most of it in `OFPMatch()` itself (an old-API `Flow` and
`FlowWildcards` with forty attributes each) and in a second, old-API parse of every field into
`OFPMatchField` objects (`match.fields`). The audit reads back millions of flow-stats entries and
looks only at their cookies, yet each entry's match and instructions were parsed in full.

`install()` changes, in Ryu's OpenFlow 1.3 parser:
- `OFPMatch.parser` parses the OXM fields (`match.items()`, `match['in_port']`, `to_jsondict()`)
  at once, and builds the old-API attributes (`_wc`, `_flow`, `fields`) the first time one is read.
- `OFPFlowStats.parser` unpacks the entry's fixed part (cookie, counters, priority, length...) at
  once and parses `match` and `instructions` the first time either is read (or the entry is
  listed, as `to_jsondict()` does).
A malformed message still fails where it failed: the OXM fields and the entry lengths are parsed
eagerly, and a truncated field raises `OFPTruncatedMessage` as before.

Two more adjustments to Ryu's connection layer, both in `install()`/`widen_listen_backlog()`: a
switch's receive loop reads up to 64 KiB at a time instead of two reads per message (`_recv_loop`),
and the listening sockets queue 4,096 connections instead of 50.
"""

from __future__ import annotations

import logging
import ssl
import struct
import time

from ryu import exception, utils
from ryu.controller import ofp_event
from ryu.controller.handler import DEAD_DISPATCHER, MAIN_DISPATCHER
from ryu.lib import hub
from ryu.ofproto import ofproto_common, ofproto_parser
from ryu.ofproto import ofproto_v1_3 as ofproto
from ryu.ofproto import ofproto_v1_3_parser as parser

from controller import listeners

_ORIGINAL = {
    "match_parser": parser.OFPMatch.__dict__["parser"],
    "flow_stats_parser": parser.OFPFlowStats.__dict__["parser"],
}
_RYU_LOG = logging.getLogger("ryu.controller.controller")
_LOG = logging.getLogger("goldilocks.controller")
_INSTALLED = False

_FLOW_STATS_0 = struct.Struct(ofproto.OFP_FLOW_STATS_0_PACK_STR)
_MATCH_HEADER = struct.Struct("!HH")


def install() -> None:
    """Put the faster parsers in place (idempotent)."""
    global _INSTALLED
    if _INSTALLED:
        return
    parser.OFPMatch.parser = classmethod(_match_parser)
    parser.OFPMatch.__getattr__ = _match_getattr
    parser.OFPFlowStats.parser = classmethod(_flow_stats_parser)
    parser.OFPFlowStats.__getattr__ = _flow_stats_getattr
    parser.OFPFlowStats.__dir__ = _flow_stats_dir
    # Ryu's connection layer imports its WSGI layer (after launcher.patch_eventlet()), and imports
    # cleanly only after the app manager, as ryu-manager imports them.
    from ryu.base import app_manager  # noqa: F401
    from ryu.controller import controller

    _ORIGINAL.setdefault("recv_loop", controller.Datapath.__dict__["_recv_loop"])
    controller.Datapath._recv_loop = _recv_loop
    _INSTALLED = True


# Bytes a switch's receive loop reads at once (Ryu's reads each message's header, then its body).
RECV_BYTES = 64 * 1024
_HEADER = struct.Struct(ofproto_common.OFP_HEADER_PACK_STR)


def _recv_loop(self) -> None:
    """Ryu's Datapath._recv_loop (_read_messages); the socket is closed when it ends, as Ryu's
    decorator closes it. A connection that has not completed the OpenFlow handshake within
    listeners.HANDSHAKE_SECONDS is closed (Ryu kept it for ever)."""
    listeners.HANDSHAKES.started(self)
    try:
        _read_messages(self)
    finally:
        listeners.HANDSHAKES.ended(self)
        try:
            self.socket.close()
        except OSError:
            pass


def _read_messages(self) -> None:
    """Reads up to RECV_BYTES at once. Ryu's loop makes two reads per
    message (header, then body), and before each message copies the rest of its buffer twice (to
    find the header, and to drop what it parsed): at a cold start of 1,000 hypervisors, 10,000
    packet-ins a second cost two green reads each. Messages, events and handlers are Ryu's: each
    message is parsed from its own bytes, sent to the observers and handed to the handlers of the
    connection's state, in order; other green threads get their turn every 2,048 messages."""
    buf = bytearray()
    count = 0
    header_len = ofproto_common.OFP_HEADER_SIZE
    handshake_by = time.monotonic() + listeners.HANDSHAKE_SECONDS
    while self.state != DEAD_DISPATCHER:
        if handshake_by:
            if self.state == MAIN_DISPATCHER:
                handshake_by = 0.0
                listeners.HANDSHAKES.ended(self)
            elif time.monotonic() > handshake_by:
                _LOG.warning(
                    "OpenFlow: %s did not complete the handshake within %.0f s; closing it",
                    self.address, listeners.HANDSHAKE_SECONDS,
                )  # fmt: skip
                break
        try:
            ret = self.socket.recv(RECV_BYTES)
        except TimeoutError:  # socket.timeout
            continue
        except ssl.SSLError:
            continue  # eventlet raises it on an SSL socket's read timeout
        except (EOFError, OSError):
            break
        if not ret:
            break
        buf += ret
        offset, buf_len = 0, len(buf)
        while buf_len - offset >= header_len:
            version, msg_type, msg_len, xid = _HEADER.unpack_from(buf, offset)
            if msg_len < header_len:
                _RYU_LOG.debug(
                    "Message with invalid length %s received from switch at address %s", msg_len, self.address
                )
                msg_len = header_len
            if buf_len - offset < msg_len:
                break
            msg = ofproto_parser.msg(self, version, msg_type, msg_len, xid, buf[offset : offset + msg_len])
            offset += msg_len
            if msg:
                ev = ofp_event.ofp_msg_to_ev(msg)
                self.ofp_brick.send_event_to_observers(ev, self.state)
                state = self.state
                handlers = [h for h in self.ofp_brick.get_handlers(ev) if state in h.callers[ev.__class__].dispatchers]
                for handler in handlers:
                    handler(ev)
            count += 1
            if count > 2048:
                count = 0
                hub.sleep(0)
        del buf[:offset]


# Connections the OpenFlow (and REST) listening sockets queue before they are accepted; the kernel
# caps it at net.core.somaxconn (4096 on Debian 12).
LISTEN_BACKLOG = 4096


def widen_listen_backlog() -> None:
    """Ryu's servers listen with eventlet's default backlog of 50 (ryu.lib.hub.StreamServer passes
    none). When a thousand switches connect at once, as after a controller restart, the kernel
    drops the connections beyond it and each switch retries after TCP's back-off of 1, 3, 7 and
    15 s: the last of 1,052 emulated switches connected 20 s after the first. Idempotent."""
    import socket

    import eventlet

    listen = eventlet.listen
    if getattr(listen, "goldilocks_backlog", False):
        return

    def wide_listen(addr, family=socket.AF_INET, backlog=LISTEN_BACKLOG, *args, **kwargs):
        return listen(addr, family, backlog, *args, **kwargs)

    wide_listen.goldilocks_backlog = True
    eventlet.listen = wide_listen


def uninstall() -> None:
    """Ryu's own parsers again (for tests that compare both)."""
    global _INSTALLED
    parser.OFPMatch.parser = _ORIGINAL["match_parser"]
    parser.OFPFlowStats.parser = _ORIGINAL["flow_stats_parser"]
    if "recv_loop" in _ORIGINAL:
        from ryu.controller import controller

        controller.Datapath._recv_loop = _ORIGINAL["recv_loop"]
    for cls, names in ((parser.OFPMatch, ("__getattr__",)), (parser.OFPFlowStats, ("__getattr__", "__dir__"))):
        for name in names:
            if name in cls.__dict__:
                delattr(cls, name)
    _INSTALLED = False


# -- OFPMatch ------------------------------------------------------------------------------------
def _match_parser(cls, buf, offset):
    """Ryu's OFPMatch.parser, without the old-API objects nobody has asked for yet."""
    match = cls.__new__(cls)
    type_, length = _MATCH_HEADER.unpack_from(buf, offset)
    match.type = type_
    match.length = length
    offset += 4
    length -= 4
    # Where the old-API parse (match.fields) will read, if anyone asks.
    match.__dict__["_old_api_source"] = (buf, offset, length)
    fields = []
    try:
        while length > 0:
            n, value, mask, field_len = ofproto.oxm_parse(buf, offset)
            fields.append(ofproto.oxm_to_user(n, value, mask))
            offset += field_len
            length -= field_len
    except struct.error as e:
        match._fields2 = fields
        raise exception.OFPTruncatedMessage(match, buf[offset:], e) from None
    match._fields2 = fields
    return match


def _match_getattr(self, name):
    """The old-API attributes of a parsed match, built when first read (as OFPMatch() built them)."""
    if name == "_wc":
        value = parser.FlowWildcards()
    elif name == "_flow":
        value = parser.Flow()
    elif name == "fields":
        value = self.__dict__["fields"] = []
        source = self.__dict__.pop("_old_api_source", None)
        if source is not None:
            try:
                parser.OFPMatch.parser_old(self, *source)  # appends to self.fields
            except struct.error:
                pass  # as Ryu's parser: the fields before the error are kept
    else:
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
    self.__dict__[name] = value
    return value


# -- OFPFlowStats --------------------------------------------------------------------------------
_LAZY_FLOW_STATS = ("match", "instructions")


def _flow_stats_parser(cls, buf, offset):
    """The entry's fixed part now; its match and instructions when first read."""
    stats = cls.__new__(cls)
    (
        stats.length,
        stats.table_id,
        stats.duration_sec,
        stats.duration_nsec,
        stats.priority,
        stats.idle_timeout,
        stats.hard_timeout,
        stats.flags,
        stats.cookie,
        stats.packet_count,
        stats.byte_count,
    ) = _FLOW_STATS_0.unpack_from(buf, offset)
    stats.__dict__["_body_source"] = (buf, offset)
    if stats.length < ofproto.OFP_FLOW_STATS_SIZE or len(buf) < offset + stats.length:
        _parse_flow_stats_body(stats)  # fails here, where Ryu's parser failed, not on first read
    return stats


def _parse_flow_stats_body(stats) -> None:
    buf, offset = stats.__dict__.pop("_body_source")
    offset += ofproto.OFP_FLOW_STATS_0_SIZE
    match = parser.OFPMatch.parser(buf, offset)
    match_length = utils.round_up(match.length, 8)
    inst_length = stats.length - (ofproto.OFP_FLOW_STATS_SIZE - ofproto.OFP_MATCH_SIZE + match_length)
    offset += match_length
    instructions = []
    while inst_length > 0:
        inst = parser.OFPInstruction.parser(buf, offset)
        instructions.append(inst)
        offset += inst.len
        inst_length -= inst.len
    stats.__dict__["match"] = match
    stats.__dict__["instructions"] = instructions


def _flow_stats_getattr(self, name):
    if name in _LAZY_FLOW_STATS and "_body_source" in self.__dict__:
        _parse_flow_stats_body(self)
        return self.__dict__[name]
    raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")


def _flow_stats_dir(self):
    """Listing an entry's attributes (str(), to_jsondict()) lists its match and instructions."""
    if "_body_source" in self.__dict__:
        _parse_flow_stats_body(self)
    return object.__dir__(self)
