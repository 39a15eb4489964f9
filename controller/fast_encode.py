"""OFPT_FLOW_MOD bytes for flow entries, packed directly rather than through Ryu's message objects
(which cost about 60 us an entry: an OFPMatch with its old-API objects, netaddr for every MAC).

The OpenFlow basic fields, outputs and set-fields of them are packed here. Anything else (Nicira
fields such as reg0 and ct_state, conntrack and register moves) is encoded by Ryu once per distinct
field value or action and the bytes are reused: an ARP responder's three moves are the same for
every responder, and a cold start of 1,000 hypervisors spent a fifth of its time having Ryu encode
them anew. An entry whose parts neither way can encode returns None, and the caller encodes it with
Ryu; `tests/unit/test_fast_encode.py` checks the bytes equal Ryu's."""

from __future__ import annotations

import functools
import operator
import socket
import struct

from ryu.ofproto import ofproto_v1_3, ofproto_v1_3_parser

from apps.flows import FlowEntry, Output, SetField

_OFB = 0x8000
# OXM field number and value format of the OpenFlow basic fields handled here. Ryu orders a
# match's fields by field number, as this does.
_FIELDS = {
    "in_port": (0, "I"),
    "metadata": (2, "Q"),
    "eth_dst": (3, "mac"),
    "eth_src": (4, "mac"),
    "eth_type": (5, "H"),
    "ip_proto": (10, "B"),
    "ipv4_src": (11, "ipv4"),
    "ipv4_dst": (12, "ipv4"),
    "tcp_src": (13, "H"),
    "tcp_dst": (14, "H"),
    "udp_src": (15, "H"),
    "udp_dst": (16, "H"),
    "arp_op": (21, "H"),
    "arp_spa": (22, "ipv4"),
    "arp_tpa": (23, "ipv4"),
    "arp_sha": (24, "mac"),
    "arp_tha": (25, "mac"),
}
_WIDTH = {"I": 4, "Q": 8, "H": 2, "B": 1, "mac": 6, "ipv4": 4}
_FLOW_MOD = struct.Struct("!BBHIQQBBHHHIIIH2x")
_MISSING = object()
_MATCH_HEADER = struct.Struct("!HH")
_PADDING = [bytes(n) for n in range(8)]
_FIRST = operator.itemgetter(0)
OFPT_FLOW_MOD = 14
OFP_NO_BUFFER = 0xFFFFFFFF


def _value(kind: str, value) -> bytes | None:
    if kind == "mac":
        if not isinstance(value, str):
            return None
        raw = bytes.fromhex(value.replace(":", ""))
        return raw if len(raw) == 6 else None
    if kind == "ipv4":
        if not isinstance(value, str):
            return None
        try:
            return socket.inet_aton(value) if value.count(".") == 3 else None
        except OSError:
            return None
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << (8 * _WIDTH[kind]):
        return None
    return value.to_bytes(_WIDTH[kind], "big")


def _oxm(name: str, user) -> tuple[int, bytes] | None:
    """(Ryu's sort key, the field's OXM bytes), or None."""
    spec = _FIELDS.get(name)
    if spec is None:
        return _ryu_oxm(name, user)
    field, kind = spec
    if isinstance(user, tuple):
        if len(user) != 2:
            return None
        value, mask = _value(kind, user[0]), _value(kind, user[1])
        if value is None or mask is None:
            return None
        body, has_mask = value + mask, 1
    else:
        value = _value(kind, user)
        if value is None:
            return None
        body, has_mask = value, 0
    header = (_OFB << 16) | (field << 9) | (has_mask << 8) | len(body)
    return (_OFB << 7) | field, struct.pack("!I", header) + body


@functools.lru_cache(maxsize=1 << 14)
def _ryu_oxm(name: str, user) -> tuple[int, bytes] | None:
    """Any other field, as Ryu's OFPMatch encodes it (normalised, converted, converted back and
    serialized), with the key it sorts the match's fields by."""
    try:
        name, user = ofproto_v1_3.oxm_normalize_user(name, user)
        num, value, mask = ofproto_v1_3.oxm_from_user(name, user)
        num, value, mask = ofproto_v1_3.oxm_from_user(*ofproto_v1_3.oxm_to_user(num, value, mask))
        buf = bytearray()
        ofproto_v1_3.oxm_serialize(num, value, mask, buf, 0)
    except Exception:
        return None  # Ryu then fails on it in the same way (or encodes it its own way)
    return (num[0] if isinstance(num, tuple) else num), bytes(buf)


# Each (field, value) a match holds, encoded: a data centre's matches are made of far fewer
# distinct pairs than entries (the same MAC in a VM's ingress, egress and responder entries).
_OXMS: dict[tuple, tuple[int, bytes] | None] = {}
_OXMS_MAX = 1 << 18


def _match(match: tuple) -> bytes | None:
    fields = []
    cache = _OXMS
    for item in match:
        oxm = cache.get(item, _MISSING)
        if oxm is _MISSING:
            if len(cache) >= _OXMS_MAX:
                cache.clear()
            oxm = cache[item] = _oxm(*item)
        if oxm is None:
            return None
        fields.append(oxm)
    if len(fields) > 1:
        fields.sort(key=_FIRST)  # stable, as Ryu's: equal keys keep the entry's order
    body = b"".join([f[1] for f in fields])
    length = 4 + len(body)
    return _MATCH_HEADER.pack(1, length) + body + _PADDING[-length % 8]  # OFPMT_OXM, padded to 8


@functools.lru_cache(maxsize=1 << 14)
def _actions(actions: tuple) -> bytes | None:
    out = []
    for action in actions:
        if type(action) is Output:
            out.append(struct.pack("!HHIH6x", 0, 16, action.port, action.max_len))
        elif type(action) is SetField and action.name in _FIELDS:
            oxm = _oxm(action.name, action.value)
            if oxm is None or isinstance(action.value, tuple):
                return None
            length = 4 + len(oxm[1])
            padded = length + (-length % 8)
            out.append(struct.pack("!HH", 25, padded) + oxm[1] + bytes(padded - length))
        else:
            encoded = _ryu_action(action)  # Nicira actions, VLAN push and pop, other set-fields
            if encoded is None:
                return None
            out.append(encoded)
    return b"".join(out)


@functools.lru_cache(maxsize=1 << 12)
def _ryu_action(action) -> bytes | None:
    """An action as Ryu serializes it inside an apply-actions instruction."""
    from controller.ofmsg import actions_to_ryu  # ofmsg imports this module

    try:
        (ryu_action,) = actions_to_ryu(ofproto_v1_3_parser, (action,))
        buf = bytearray()
        ryu_action.serialize(buf, 0)
    except Exception:
        return None
    return bytes(buf)


@functools.lru_cache(maxsize=1 << 16)
def _instructions(meter: int | None, actions: tuple, metadata: tuple[int, int] | None, goto: int | None) -> bytes | None:
    """An entry's instructions, encoded once per distinct combination."""
    instructions = []
    if meter is not None:
        instructions.append(struct.pack("!HHI", 6, 8, meter))  # OFPIT_METER
    if actions:
        encoded = _actions(actions)
        if encoded is None:
            return None
        instructions.append(struct.pack("!HH4x", 4, 8 + len(encoded)) + encoded)  # OFPIT_APPLY_ACTIONS
    if metadata is not None:
        value, mask = metadata
        instructions.append(struct.pack("!HH4xQQ", 2, 24, value, mask))  # OFPIT_WRITE_METADATA
    if goto is not None:
        instructions.append(struct.pack("!HHB3x", 1, 8, goto))  # OFPIT_GOTO_TABLE
    return b"".join(instructions)


def flow_add_bytes(entry: FlowEntry) -> bytes | None:
    """The OFPT_FLOW_MOD adding `entry` (xid 0), or None if this shape is left to Ryu."""
    match = _match(entry.match)
    if match is None:
        return None
    instructions = _instructions(entry.meter, entry.actions, entry.metadata, entry.goto)
    if instructions is None:
        return None
    tail = match + instructions
    length = _FLOW_MOD.size + len(tail)
    head = _FLOW_MOD.pack(
        4, OFPT_FLOW_MOD, length, 0, entry.cookie, 0, entry.table, 0, 0, 0, entry.priority, OFP_NO_BUFFER, 0, 0, 0
    )
    return head + tail
