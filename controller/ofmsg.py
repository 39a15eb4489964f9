"""Translate plain flow entries into Ryu OpenFlow 1.3 messages, and back for cookies."""

from __future__ import annotations

import functools
import struct
from typing import Any

from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from apps import pipeline
from apps.flows import Conntrack, FlowEntry, Move, Output, PopVlan, PushVlan, SetField
from controller import fast_encode

ALL_ONES_64 = 0xFFFFFFFFFFFFFFFF
NX_CT_RECIRC_NONE = 0xFF


def actions_to_ryu(parser: Any, actions: tuple) -> list:
    result = []
    for action in actions:
        if isinstance(action, Output):
            result.append(parser.OFPActionOutput(action.port, action.max_len))
        elif isinstance(action, SetField):
            result.append(parser.OFPActionSetField(**{action.name: action.value}))
        elif isinstance(action, Move):
            result.append(parser.NXActionRegMove(src_field=action.src, dst_field=action.dst, n_bits=action.n_bits))
        elif isinstance(action, Conntrack):
            result.append(
                parser.NXActionCT(
                    flags=1 if action.commit else 0,  # NX_CT_F_COMMIT
                    zone_src="",
                    zone_ofs_nbits=action.zone,
                    recirc_table=NX_CT_RECIRC_NONE if action.table is None else action.table,
                    alg=0,
                    actions=[] if action.mark is None else [parser.OFPActionSetField(ct_mark=action.mark)],
                )
            )
        elif isinstance(action, PushVlan):
            result.append(parser.OFPActionPushVlan(ethertype=action.ethertype))
        elif isinstance(action, PopVlan):
            result.append(parser.OFPActionPopVlan())
        else:  # pragma: no cover - the core only builds the kinds above
            raise TypeError(f"unknown action {action!r}")
    return result


def flow_add(datapath: Any, entry: FlowEntry) -> Any:
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    instructions = []
    if entry.meter is not None:
        instructions.append(parser.OFPInstructionMeter(entry.meter))
    if entry.actions:
        instructions.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions_to_ryu(parser, entry.actions)))
    if entry.metadata is not None:
        instructions.append(parser.OFPInstructionWriteMetadata(*entry.metadata))
    if entry.goto is not None:
        instructions.append(parser.OFPInstructionGotoTable(entry.goto))
    return parser.OFPFlowMod(
        datapath=datapath,
        cookie=entry.cookie,
        table_id=entry.table,
        command=ofp.OFPFC_ADD,
        priority=entry.priority,
        match=parser.OFPMatch(**entry.match_dict),
        instructions=instructions,
    )


def flow_delete(datapath: Any, cookie: int) -> Any:
    """Delete exactly the flows that carry this cookie, in any table."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    return parser.OFPFlowMod(
        datapath=datapath,
        cookie=cookie,
        cookie_mask=ALL_ONES_64,
        table_id=ofp.OFPTT_ALL,
        command=ofp.OFPFC_DELETE,
        out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY,
        match=parser.OFPMatch(),
    )


def our_flow_stats_request(datapath: Any) -> Any:
    """Ask for our flows only: everything carrying the Goldilocks cookie byte."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    return parser.OFPFlowStatsRequest(
        datapath,
        0,
        ofp.OFPTT_ALL,
        ofp.OFPP_ANY,
        ofp.OFPG_ANY,
        pipeline.COOKIE_MAGIC << pipeline.COOKIE_MAGIC_SHIFT,
        pipeline.COOKIE_MAGIC_MASK,
        parser.OFPMatch(),
    )


def flow_stats_by_cookie(datapath: Any, cookie: int) -> Any:
    """Ask for the flows that carry exactly this cookie (their packet counts)."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    return parser.OFPFlowStatsRequest(
        datapath, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, ALL_ONES_64, parser.OFPMatch()
    )


def meter_mods(datapath: Any) -> list:
    """Create the packet-in meters, or update them if they exist: an ADD (refused with
    METER_EXISTS when the switch already has the meter, which the caller ignores) and a
    MODIFY that then always applies the current rate."""
    ofp, parser = datapath.ofproto, datapath.ofproto_parser
    messages = []
    for meter_id, (rate, burst) in sorted(pipeline.METERS.items()):
        bands = [parser.OFPMeterBandDrop(rate=rate, burst_size=burst)]
        flags = ofp.OFPMF_PKTPS | ofp.OFPMF_BURST
        for command in (ofp.OFPMC_ADD, ofp.OFPMC_MODIFY):
            messages.append(parser.OFPMeterMod(datapath, command=command, flags=flags, meter_id=meter_id, bands=bands))
    return messages


# OpenFlow 1.3 error types and the prefix of their codes' names.
_ERROR_CODE_PREFIX = {
    "OFPET_BAD_REQUEST": "OFPBRC_",
    "OFPET_BAD_ACTION": "OFPBAC_",
    "OFPET_BAD_INSTRUCTION": "OFPBIC_",
    "OFPET_BAD_MATCH": "OFPBMC_",
    "OFPET_FLOW_MOD_FAILED": "OFPFMFC_",
    "OFPET_METER_MOD_FAILED": "OFPMMFC_",
    "OFPET_TABLE_FEATURES_FAILED": "OFPTFFC_",
}


def error_name(ofp: Any, error_type: int, code: int) -> str:
    """`OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL` for an error's type and code (numbers if unknown)."""
    type_name = next((n for n in dir(ofp) if n.startswith("OFPET_") and getattr(ofp, n) == error_type), None)
    if type_name is None:
        return f"type {error_type} code {code}"
    prefix = _ERROR_CODE_PREFIX.get(type_name)
    code_name = next((n for n in dir(ofp) if prefix and n.startswith(prefix) and getattr(ofp, n) == code), None)
    return f"{type_name}/{code_name or code}"


# -- encode once ---------------------------------------------------------------------------------
# A flow-mod's bytes depend only on its entry (the xid aside): an entry many switches hold (an ARP
# responder, a route, a classify entry) is serialized once and the bytes are sent to each switch
# with its own xid. Serializing costs about 50 us a message; patching an xid, well under one.
ENCODED_CACHE_SIZE = 1 << 18


class _Encoder:
    """Just enough of a datapath for Ryu's parser to build and serialize OpenFlow 1.3 messages."""

    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser
    id = 0


_ENCODER = _Encoder()


def _encoded(message: Any) -> bytes:
    message.set_xid(0)
    message.serialize()
    return bytes(message.buf)


@functools.lru_cache(maxsize=ENCODED_CACHE_SIZE)
def flow_add_bytes(entry: FlowEntry) -> bytes:
    """The OFPT_FLOW_MOD adding `entry`, with xid 0: packed by controller/fast_encode.py (about
    5 us), through Ryu's objects only for an entry it cannot encode."""
    fast = fast_encode.flow_add_bytes(entry)
    return fast if fast is not None else ryu_flow_add_bytes(entry)


def ryu_flow_add_bytes(entry: FlowEntry) -> bytes:
    """The same bytes, always through Ryu's message objects."""
    return _encoded(flow_add(_ENCODER, entry))


@functools.lru_cache(maxsize=ENCODED_CACHE_SIZE)
def flow_delete_bytes(cookie: int) -> bytes:
    """The OFPT_FLOW_MOD deleting the flows with this cookie, with xid 0."""
    return _encoded(flow_delete(_ENCODER, cookie))


BARRIER_BYTES = struct.pack("!BBHI", 4, 20, 8, 0)  # OFPT_BARRIER_REQUEST, OpenFlow 1.3
_PACKET_OUT = struct.Struct("!BBHIIIH6xHHIH6x")  # header, buffer, in_port, actions length; one output action


def packet_out_bytes(in_port: int, out_port: int, frame: bytes) -> bytes:
    """The OFPT_PACKET_OUT (xid 0) sending `frame` as if it came in on `in_port`, out of `out_port`:
    the bytes Ryu's OFPPacketOut would serialize (unbuffered, one output action of OFPCML_MAX), packed
    directly, as probes and re-injected frames are most of what a large cold start sends."""
    length = _PACKET_OUT.size + len(frame)
    head = _PACKET_OUT.pack(
        4, 13, length, 0, ofproto_v1_3.OFP_NO_BUFFER, in_port, 16, 0, 16, out_port, ofproto_v1_3.OFPCML_MAX
    )
    return head + frame


def with_xid(buf: bytes, xid: int) -> bytes:
    """The message with its header's xid set."""
    return buf[:4] + struct.pack("!I", xid) + buf[8:]


def next_xid(datapath: Any) -> int:
    """The datapath's next xid, as Ryu's own set_xid hands them out."""
    datapath.xid = (datapath.xid + 1) & datapath.ofproto.MAX_XID
    return datapath.xid
