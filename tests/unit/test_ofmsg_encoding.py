"""Encode once: the bytes sent for an entry, stamped with a switch's xid, are exactly what Ryu would
serialize for that switch's flow-mod, for every kind of entry the compiler builds."""

from __future__ import annotations

from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from apps.desired import desired_tables
from apps.quarantine import Quarantine
from controller import ofmsg
from tests.fakeoftable import build_leaf_spine, policy_state, vm_name


class Datapath:
    ofproto = ofproto_v1_3
    ofproto_parser = ofproto_v1_3_parser
    id = 7

    def __init__(self) -> None:
        self.xid = 41


def ryu_bytes(message, xid: int) -> bytes:
    message.set_xid(xid)
    message.serialize()
    return bytes(message.buf)


def test_encoded_flow_mods_equal_ryus_own_for_every_entry_of_a_full_compile():
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3, tunnels=True)
    labels = {vm: {"tier": "web" if i % 2 else "db"} for i, vm in enumerate(fabric.vms)}
    rules = [{"src": "tier=web", "dst": "tier=db", "action": "encrypt", "services": ["tcp/5432"]}]
    state = policy_state(labels, rules, "deny")
    flagged = state.vm(vm_name(fabric.vms[0]))
    allow = None
    state = state.with_quarantine(
        Quarantine(flagged.name, "t", "remediate", "a", 0.0, flagged.macs, vm_name(fabric.vms[5]), allow)
    )
    entries = {e for t in desired_tables(fabric.topo, state, tunnels=fabric.tunnels.plan).values() for e in t.values()}
    assert len(entries) > 100
    datapath = Datapath()
    for entry in entries:
        xid = ofmsg.next_xid(datapath)
        assert ofmsg.with_xid(ofmsg.flow_add_bytes(entry), xid) == ryu_bytes(ofmsg.flow_add(datapath, entry), xid), entry
        assert ofmsg.with_xid(ofmsg.flow_delete_bytes(entry.cookie), xid) == ryu_bytes(
            ofmsg.flow_delete(datapath, entry.cookie), xid
        )
    assert ofmsg.with_xid(ofmsg.BARRIER_BYTES, 5) == ryu_bytes(ofproto_v1_3_parser.OFPBarrierRequest(datapath), 5)


def test_xids_follow_ryus_counter_and_wrap():
    datapath = Datapath()
    assert [ofmsg.next_xid(datapath) for _ in range(2)] == [42, 43]
    datapath.xid = ofproto_v1_3.MAX_XID
    assert ofmsg.next_xid(datapath) == 0
