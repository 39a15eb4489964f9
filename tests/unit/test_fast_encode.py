"""The flow-mods packed directly (controller/fast_encode.py) are byte for byte the ones Ryu
serializes, for every entry a compiled data centre holds; shapes it does not handle go to Ryu."""

from __future__ import annotations

import pytest

from apps import pipeline
from apps.compiler import Compiler
from apps.flows import Conntrack, FlowEntry, Move, Output, PopVlan, PushVlan, SetField
from apps.identity import Identities, assign_identities
from bench.policy_scale import build
from controller import fast_encode, ofmsg


def _compiled_entries() -> list[FlowEntry]:
    fabric, state = build(80, 8, 30)
    identities = Identities()
    assign_identities(fabric.topo, state, identities)
    tables = Compiler(arp_ahead_max=0).compile(fabric.topo, state, identities).tables
    ahead = Compiler().compile(fabric.topo, state, identities).tables  # every responder ahead too
    entries = {e for table in (*tables.values(), *ahead.values()) for e in table.values()}
    return sorted(entries, key=lambda e: e.cookie)


def test_every_compiled_entry_encodes_as_ryu_encodes_it():
    entries = _compiled_entries()
    fast = 0
    for entry in entries:
        packed = fast_encode.flow_add_bytes(entry)
        if packed is not None:
            fast += 1
            assert packed == ofmsg.ryu_flow_add_bytes(entry), entry
        assert ofmsg.flow_add_bytes(entry) == ofmsg.ryu_flow_add_bytes(entry), entry
    # Every entry a data centre holds, Nicira fields and actions included (encoded by Ryu once each).
    assert fast == len(entries), (fast, len(entries))


@pytest.mark.parametrize(
    "entry",
    [
        FlowEntry.make(pipeline.FORWARD, pipeline.PRIO_UNICAST, {"eth_dst": "02:00:00:00:00:01"}, (Output(7),)),
        FlowEntry.make(
            pipeline.FORWARD,
            pipeline.PRIO_UNICAST_UPLINK,
            {"in_port": 3, "eth_dst": ("00:00:00:00:00:00", "01:00:00:00:00:00")},
            (Output(1),),
        ),
        FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_MISS, {}, (Output(pipeline.OFPP_CONTROLLER, 128),)),
        FlowEntry.make(
            pipeline.INGRESS,
            pipeline.PRIO_KNOWN_SOURCE + 20,
            {"in_port": 2, "eth_src": "02:00:00:00:00:02", "eth_type": 0x0806, "arp_spa": "10.0.0.2"},
            goto=pipeline.CLASSIFY,
            metadata=(5, pipeline.META_SRC_MASK),
        ),
        FlowEntry.make(
            pipeline.CLASSIFY,
            pipeline.PRIO_UNICAST,
            {"eth_dst": "02:00:00:00:00:03"},
            goto=pipeline.POLICY,
            metadata=(9 << 32, 0xFFFFFFFF << 32),
        ),
        FlowEntry.make(
            pipeline.FORWARD,
            pipeline.PRIO_ARP_RESPONDER,
            {"eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.0.9"},
            (SetField("eth_src", "02:00:00:00:00:09"), SetField("arp_op", 2), Output(pipeline.OFPP_IN_PORT)),
        ),
    ],
)
def test_each_handled_shape_is_byte_exact(entry):
    assert fast_encode.flow_add_bytes(entry) == ofmsg.ryu_flow_add_bytes(entry)


@pytest.mark.parametrize(
    "entry",
    [
        FlowEntry.make(
            pipeline.POLICY, pipeline.PRIO_CT_TRACK, {"eth_type": 0x0800, "ct_state": (0, 0x20)}, (Conntrack(1, table=2),)
        ),
        FlowEntry.make(
            pipeline.POLICY,
            pipeline.PRIO_CT_ESTABLISHED_ENCRYPT,
            {"ct_state": (0x22, 0x22), "ct_mark": (1, 1)},
            (SetField("reg0", pipeline.REG0_ENCRYPT),),
            goto=pipeline.FORWARD,
        ),
        FlowEntry.make(
            pipeline.EGRESS,
            520,
            {"eth_dst": "02:00:00:00:00:04", "eth_type": 0x0800, "reg0": (pipeline.REG0_ENCRYPT, pipeline.REG0_ENCRYPT)},
            (Conntrack(2, commit=True, mark=1), Output(4)),
        ),
        FlowEntry.make(
            pipeline.FORWARD,
            pipeline.PRIO_ARP_RESPONDER,
            {"eth_type": 0x0806, "arp_op": 1, "arp_tpa": "10.0.0.9"},
            (
                Move("eth_src", "eth_dst", 48),
                SetField("eth_src", "02:00:00:00:00:09"),
                Move("arp_sha", "arp_tha", 48),
                Output(pipeline.OFPP_IN_PORT),
            ),
        ),
        FlowEntry.make(pipeline.INGRESS, 990, {"in_port": 1, "vlan_vid": (0x1FC0, 0x1FC0)}, (PopVlan(), Output(2))),
        FlowEntry.make(pipeline.FORWARD, 10, {"in_port": 1}, (PushVlan(), SetField("vlan_vid", 0x1FC1), Output(3))),
        FlowEntry.make(pipeline.POLICY, pipeline.PRIO_POLICY_BYPASS, {"eth_type": 0x86DD, "ip_proto": 58, "icmpv6_type": 135}),
    ],
)
def test_nicira_fields_and_actions_are_byte_exact(entry):
    assert fast_encode.flow_add_bytes(entry) == ofmsg.ryu_flow_add_bytes(entry)


def test_what_it_cannot_encode_is_left_to_ryu():
    unknown = FlowEntry(pipeline.FORWARD, 5, (("no_such_field", 1),), (Output(1),))
    assert fast_encode.flow_add_bytes(unknown) is None
    with pytest.raises(KeyError):
        ofmsg.flow_add_bytes(unknown)  # Ryu refuses it as it always did


@pytest.mark.parametrize(
    ("in_port", "out_port", "frame"),
    [
        (3, pipeline.OFPP_TABLE, bytes(range(60))),  # a re-injected frame
        (pipeline.OFPP_CONTROLLER, 7, b"\x01\x80\xc2\x00\x00\x0e" + bytes(80)),  # a probe
        (1, 2, b""),
    ],
)
def test_a_packet_out_is_the_one_ryu_serializes(in_port, out_port, frame):
    from ryu.ofproto import ofproto_v1_3 as ofp
    from ryu.ofproto import ofproto_v1_3_parser as parser

    message = parser.OFPPacketOut(
        ofmsg._ENCODER, buffer_id=ofp.OFP_NO_BUFFER, in_port=in_port, actions=[parser.OFPActionOutput(out_port)], data=frame
    )
    assert ofmsg.packet_out_bytes(in_port, out_port, frame) == ofmsg._encoded(message)
