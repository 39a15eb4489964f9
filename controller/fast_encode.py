"""OFPT_FLOW_MOD bytes for the common flow entries, packed directly rather than through Ryu's
message objects (which cost about 60 us an entry: an OFPMatch with its old-API objects, netaddr
for every MAC). Routes, classify entries and the other plain shapes make up most of what a large
fabric's cold start sends. An entry with a field or action not handled here returns None, and the
caller encodes it with Ryu; `tests/unit/test_fast_encode.py` checks the bytes equal Ryu's."""

from __future__ import annotations

import socket
import struct

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
    spec = _FIELDS.get(name)
    if spec is None:
        return None
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
    return field, struct.pack("!I", header) + body


def _match(match: tuple) -> bytes | None:
    fields = []
    for name, user in match:
        oxm = _oxm(name, user)
        if oxm is None:
            return None
        fields.append(oxm)
    fields.sort(key=lambda f: f[0])
    body = b"".join(f[1] for f in fields)
    length = 4 + len(body)
    return struct.pack("!HH", 1, length) + body + bytes(-length % 8)  # OFPMT_OXM, padded to 8


def _actions(actions: tuple) -> bytes | None:
    out = []
    for action in actions:
        if type(action) is Output:
            out.append(struct.pack("!HHIH6x", 0, 16, action.port, action.max_len))
        elif type(action) is SetField:
            oxm = _oxm(action.name, action.value)
            if oxm is None or isinstance(action.value, tuple):
                return None
            length = 4 + len(oxm[1])
            padded = length + (-length % 8)
            out.append(struct.pack("!HH", 25, padded) + oxm[1] + bytes(padded - length))
        else:
            return None  # Nicira actions, VLAN push and pop: Ryu encodes them
    return b"".join(out)


def flow_add_bytes(entry: FlowEntry) -> bytes | None:
    """The OFPT_FLOW_MOD adding `entry` (xid 0), or None if this shape is left to Ryu."""
    match = _match(entry.match)
    if match is None:
        return None
    instructions = []
    if entry.meter is not None:
        instructions.append(struct.pack("!HHI", 6, 8, entry.meter))  # OFPIT_METER
    if entry.actions:
        actions = _actions(entry.actions)
        if actions is None:
            return None
        instructions.append(struct.pack("!HH4x", 4, 8 + len(actions)) + actions)  # OFPIT_APPLY_ACTIONS
    if entry.metadata is not None:
        value, mask = entry.metadata
        instructions.append(struct.pack("!HH4xQQ", 2, 24, value, mask))  # OFPIT_WRITE_METADATA
    if entry.goto is not None:
        instructions.append(struct.pack("!HHB3x", 1, 8, entry.goto))  # OFPIT_GOTO_TABLE
    tail = match + b"".join(instructions)
    length = _FLOW_MOD.size + len(tail)
    head = _FLOW_MOD.pack(
        4, OFPT_FLOW_MOD, length, 0, entry.cookie, 0, entry.table, 0, 0, 0, entry.priority, OFP_NO_BUFFER, 0, 0, 0
    )
    return head + tail
