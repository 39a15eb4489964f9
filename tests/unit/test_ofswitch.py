"""The switch emulator of the converge benchmark keeps the flows it is sent, as a switch would: an
audit or read-back then finds them, instead of an empty table the controller would refill."""

from __future__ import annotations

import struct

from ryu.ofproto import ofproto_v1_3 as ofp
from ryu.ofproto import ofproto_v1_3_parser as parser

from apps import pipeline
from apps.flows import FlowEntry, Output
from bench.ofswitch import MP_FLOW, MULTIPART_REPLY, EmulatedSwitch, Fabric
from controller import ofmsg


class _Datapath:
    ofproto = ofp
    ofproto_parser = parser


def _entry(priority: int, mac: str, port: int) -> FlowEntry:
    return FlowEntry.make(pipeline.FORWARD, priority, {"eth_dst": mac}, (Output(port),))


def _stats(switch: EmulatedSwitch, cookie: int = 0, mask: int = 0, table: int = ofp.OFPTT_ALL) -> list:
    """Ask for flow stats as the controller does and parse every reply part with Ryu."""
    sent: list[bytes] = []
    switch.send = sent.append  # type: ignore[method-assign]
    body = struct.pack("!HH4xB3xII4xQQ", MP_FLOW, 0, table, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie, mask)
    Fabric(miss_cookie=0)._multipart(switch, 7, body + struct.pack("!HH4x", 1, 4))
    found = []
    for message in sent:
        version, msg_type, length, xid = struct.unpack_from("!BBHI", message)
        assert msg_type == MULTIPART_REPLY and length == len(message)
        reply = parser.OFPMultipartReply.parser(_Datapath, version, msg_type, length, xid, message)
        found += [(s.table_id, s.priority, s.cookie) for s in reply.body]
    return found


def _flow_mod_body(message: bytes) -> bytes:
    return message[8:]


def test_it_keeps_what_it_is_sent_and_reports_it_in_flow_stats():
    switch = EmulatedSwitch(1, {})
    first, second = _entry(100, "02:00:00:00:00:01", 1), _entry(100, "02:00:00:00:00:02", 2)
    for entry in (first, second):
        switch.flow_mod(_flow_mod_body(ofmsg.flow_add_bytes(entry)))
    assert sorted(c for _, _, c in _stats(switch)) == sorted([first.cookie, second.cookie])
    # An add to an occupied slot replaces what was there.
    replacement = _entry(100, "02:00:00:00:00:01", 3)
    switch.flow_mod(_flow_mod_body(ofmsg.flow_add_bytes(replacement)))
    assert sorted(c for _, _, c in _stats(switch)) == sorted([replacement.cookie, second.cookie])
    # A delete by cookie removes exactly that entry.
    switch.flow_mod(_flow_mod_body(ofmsg.flow_delete_bytes(second.cookie)))
    assert [c for _, _, c in _stats(switch)] == [replacement.cookie]


def test_flow_stats_answer_only_what_the_request_selects_in_parts():
    switch = EmulatedSwitch(1, {})
    entries = [_entry(100, f"02:00:00:00:{i >> 8:02x}:{i & 255:02x}", 1) for i in range(2500)]
    for entry in entries:
        switch.flow_mod(_flow_mod_body(ofmsg.flow_add_bytes(entry)))
    assert len(_stats(switch)) == 2500, "every part of a large reply arrives"
    one = entries[7].cookie
    assert [c for _, _, c in _stats(switch, cookie=one, mask=(1 << 64) - 1)] == [one]
    assert _stats(switch, table=pipeline.INGRESS) == []


def _played(fabric: Fabric, switch: EmulatedSwitch, port: int, mac: bytes) -> list[tuple[int, int, int]]:
    """(table, cookie, reason) of the packet-ins a VM's ARP request makes the switch send."""
    sent: list[bytes] = []

    class _Writer:
        transport = type("T", (), {"get_write_buffer_size": staticmethod(lambda: 0)})()

        @staticmethod
        def is_closing() -> bool:
            return False

        write = staticmethod(sent.append)

    switch.writer = _Writer()  # type: ignore[assignment]
    fabric.play_arp(switch.dpid, port, mac, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 254]))
    found = []
    for message in sent:
        reply = parser.OFPPacketIn.parser(_Datapath, *struct.unpack_from("!BBHI", message), message)
        found.append((reply.table_id, reply.cookie, reply.reason))
    return found


def test_a_vm_s_arp_is_a_miss_until_the_switch_admits_it_and_then_the_unanswered_copy():
    """A real switch sends a known VM's frames through its pipeline: only its first frames miss. The
    cold-converge benchmark counted every retry of every VM as a miss, a load no fabric makes."""
    fabric = Fabric(miss_cookie=11, unanswered_cookie=22)
    switch = EmulatedSwitch(1, {})
    fabric.add(switch)
    mac = bytes.fromhex("020000000001")
    assert _played(fabric, switch, 3, mac) == [(0, 11, ofp.OFPR_NO_MATCH)]
    admit = FlowEntry.make(
        pipeline.INGRESS, pipeline.PRIO_KNOWN_SOURCE, {"in_port": 3, "eth_src": "02:00:00:00:00:01"}, goto=pipeline.CLASSIFY
    )
    switch.flow_mod(_flow_mod_body(ofmsg.flow_add_bytes(admit)))
    assert _played(fabric, switch, 3, mac) == [(pipeline.FORWARD, 22, ofp.OFPR_ACTION)]
    assert _played(fabric, switch, 4, mac) == [(0, 11, ofp.OFPR_NO_MATCH)], "admitted on its own port only"
    switch.flow_mod(_flow_mod_body(ofmsg.flow_delete_bytes(admit.cookie)))
    assert _played(fabric, switch, 3, mac) == [(0, 11, ofp.OFPR_NO_MATCH)], "a miss again once the entry is gone"
