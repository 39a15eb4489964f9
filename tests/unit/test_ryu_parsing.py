"""The faster packet-in and flow-stats parsing (controller/ryu_parsing.py) gives every application
the same objects Ryu's own parser gives, attribute for attribute, and fails where it failed."""

from __future__ import annotations

import copy
import struct

import pytest
from ryu import exception
from ryu.ofproto import ofproto_parser
from ryu.ofproto import ofproto_v1_3 as ofp
from ryu.ofproto import ofproto_v1_3_parser as parser

from apps import pipeline
from apps.flows import Conntrack, FlowEntry, Output, SetField
from controller import ofmsg, ryu_parsing


class _Datapath:
    ofproto = ofp
    ofproto_parser = parser
    id = 1


ENTRIES = [
    FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_MISS, {}, (Output(ofp.OFPP_CONTROLLER, 128),)),
    FlowEntry.make(
        pipeline.INGRESS,
        pipeline.PRIO_KNOWN_SOURCE,
        {"in_port": 3, "eth_src": "02:00:00:00:00:01"},
        goto=pipeline.CLASSIFY,
        metadata=(7, pipeline.META_SRC_MASK),
    ),
    FlowEntry.make(
        pipeline.FORWARD,
        pipeline.PRIO_UNICAST,
        {"eth_dst": ("00:00:00:00:00:00", "01:00:00:00:00:00")},
        (Output(2),),
    ),
    FlowEntry.make(
        pipeline.POLICY,
        pipeline.PRIO_RULE_TOP,
        {"metadata": (0x700000009, 2**64 - 1), "eth_type": 0x0800, "ip_proto": 6, "tcp_dst": 443, "ct_state": (0x21, 0x21)},
        (Conntrack(3, commit=True, mark=1), SetField("eth_dst", "02:00:00:00:00:09"), Output(4)),
        goto=pipeline.FORWARD,
    ),
    FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_ARP_RESPONDER, {"eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.0.5"}, ()),
]


def _flow_stats_entry(entry: FlowEntry, packets: int, octets: int) -> bytes:
    """The ofp_flow_stats a switch reports for `entry`: the flow-mod's match and instructions
    behind a flow-stats fixed part."""
    mod = ofmsg.flow_add_bytes(entry)
    body = mod[48:]  # after the flow-mod's fixed part: the match, padded, then the instructions
    length, duration = 48 + len(body), (12, 345)
    fixed = struct.pack(
        ofp.OFP_FLOW_STATS_0_PACK_STR, length, entry.table, *duration, entry.priority, 0, 0, 0, entry.cookie, packets, octets
    )
    return fixed + body


def _flow_stats_reply(entries, more: bool = False) -> bytes:
    body = b"".join(_flow_stats_entry(e, 10 * i, 1000 * i) for i, e in enumerate(entries))
    flags = ofp.OFPMPF_REPLY_MORE if more else 0
    header = struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), 99)
    return header + struct.pack("!HH4x", ofp.OFPMP_FLOW, flags) + body


def _packet_in(match: parser.OFPMatch, data: bytes, cookie: int = 0x1234, table_id: int = 0) -> bytes:
    buf = bytearray()
    match.serialize(buf, 0)
    fixed = struct.pack("!IHBBQ", ofp.OFP_NO_BUFFER, len(data), ofp.OFPR_ACTION, table_id, cookie)
    body = fixed + bytes(buf) + b"\x00\x00" + data
    return struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_PACKET_IN, 8 + len(body), 7) + body


def _parse(buf: bytes):
    version, msg_type, msg_len, xid = struct.unpack_from("!BBHI", buf)
    return ofproto_parser.msg(_Datapath(), version, msg_type, msg_len, xid, buf)


@pytest.fixture
def both():
    """Parse a message with Ryu's parsers, then with the faster ones (left installed as the
    controller leaves them)."""

    def run(buf: bytes):
        ryu_parsing.uninstall()
        try:
            ryu = _parse(buf)
        finally:
            ryu_parsing.install()
        return ryu, _parse(buf)

    yield run
    ryu_parsing.install()


def _match_view(match: parser.OFPMatch) -> tuple:
    return (
        match.to_jsondict(),
        list(match.items()),
        [(f.header, getattr(f, "value", None), getattr(f, "mask", None)) for f in match.fields],
        match._flow.__dict__,
        match._wc.__dict__,
        str(match),
    )


def test_flow_stats_entries_are_the_same_objects_ryu_builds(both):
    ryu, fast = both(_flow_stats_reply(ENTRIES))
    assert len(fast.body) == len(ryu.body) == len(ENTRIES)
    for a, b in zip(ryu.body, fast.body, strict=True):
        assert b.to_jsondict() == a.to_jsondict()
        assert str(b) == str(a)
        assert _match_view(b.match) == _match_view(a.match)
        assert [i.to_jsondict() for i in b.instructions] == [i.to_jsondict() for i in a.instructions]
    assert fast.to_jsondict() == ryu.to_jsondict()


def test_reading_a_cookie_does_not_parse_the_match():
    reply = _parse(_flow_stats_reply(ENTRIES))
    assert [s.cookie for s in reply.body] == [e.cookie for e in ENTRIES]
    assert [s.packet_count for s in reply.body] == [10 * i for i in range(len(ENTRIES))]
    assert all("match" not in vars(s) and "instructions" not in vars(s) for s in reply.body)
    assert reply.body[1].match["in_port"] == 3  # and on first read, it is there
    assert "instructions" in vars(reply.body[1])


def test_packet_in_match_is_the_same(both):
    match = parser.OFPMatch(in_port=5, metadata=(0x12, 0xFF), tunnel_id=9)
    ryu, fast = both(_packet_in(match, b"\xff" * 6 + b"\x02" * 6 + b"\x08\x06" + b"\x00" * 28))
    assert fast.match.get("in_port") == 5
    assert _match_view(fast.match) == _match_view(ryu.match)
    assert (fast.cookie, fast.table_id, fast.reason, fast.data) == (ryu.cookie, ryu.table_id, ryu.reason, ryu.data)
    assert fast.to_jsondict() == ryu.to_jsondict()


def test_a_parsed_match_serializes_and_copies_as_before(both):
    match = parser.OFPMatch(in_port=1, eth_dst="02:00:00:00:00:02", eth_type=0x0800, ipv4_dst="10.0.0.2")
    _, fast = both(_packet_in(match, b"\x00" * 14))
    out = bytearray()
    fast.match.serialize(out, 0)
    expected = bytearray()
    match.serialize(expected, 0)
    assert bytes(out) == bytes(expected)
    assert copy.deepcopy(fast.match).to_jsondict() == match.to_jsondict()
    assert not hasattr(fast.match, "_fields")  # Ryu's stringify asks; it must stay absent


def test_a_truncated_match_fails_as_it_did(both):
    good = _packet_in(parser.OFPMatch(in_port=1, eth_dst="02:00:00:00:00:02"), b"")
    # Shorten the buffer inside the second OXM field (the match claims more than there is).
    cut = good[: 8 + 16 + 4 + 8 + 3]
    cut = cut[:2] + struct.pack("!H", len(cut)) + cut[4:]
    for installed in (False, True):
        if not installed:
            ryu_parsing.uninstall()
        try:
            with pytest.raises(exception.OFPTruncatedMessage):
                _parse(cut)
        finally:
            ryu_parsing.install()


def test_install_is_idempotent_and_uninstall_restores_ryu():
    ryu_parsing.install()
    ryu_parsing.install()
    ryu_parsing.uninstall()
    try:
        reply = _parse(_flow_stats_reply(ENTRIES[:1]))
        assert "match" in vars(reply.body[0])  # Ryu's eager parse
        assert "__getattr__" not in vars(parser.OFPMatch)
    finally:
        ryu_parsing.install()
