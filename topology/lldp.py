"""LLDP probes for link discovery, signed so that a VM cannot forge a link by sending LLDP."""

from __future__ import annotations

import hashlib
import hmac
import struct

LLDP_DST = bytes.fromhex("0180c200000e")
ETH_TYPE_LLDP = 0x88CC
_OUI = bytes.fromhex("6c6c6c")  # our organisationally specific TLV (type 127) marker
_SUBTYPE_SIG = 1
_SIG_LEN = 16


def _tlv(tlv_type: int, value: bytes) -> bytes:
    return struct.pack("!H", (tlv_type << 9) | len(value)) + value


def _signature(key: bytes, dpid: int, port: int, sent_ms: int) -> bytes:
    return hmac.new(key, struct.pack("!QIQ", dpid, port, sent_ms), hashlib.sha256).digest()[:_SIG_LEN]


def build_probe(key: bytes, dpid: int, port: int, src_mac: str, sent_ms: int = 0) -> bytes:
    """An LLDP frame saying 'sent from dpid, port at sent_ms', with an HMAC only this
    controller can make. The time stamp bounds how long a captured probe can be replayed."""
    src = bytes.fromhex(src_mac.replace(":", "")) if src_mac else b"\x02\x00\x00\x00\x00\x01"
    body = (
        _tlv(1, b"\x07" + f"dpid:{dpid:016x}".encode())
        + _tlv(2, b"\x07" + str(port).encode())
        + _tlv(3, struct.pack("!H", 120))
        + _tlv(127, _OUI + bytes([_SUBTYPE_SIG]) + struct.pack("!Q", sent_ms) + _signature(key, dpid, port, sent_ms))
        + _tlv(0, b"")
    )
    return LLDP_DST + src + struct.pack("!H", ETH_TYPE_LLDP) + body


def parse_probe(key: bytes, frame: bytes, now_ms: int | None = None, max_age_ms: int = 3000) -> tuple[int, int] | None:
    """Return (dpid, port) of the sender if `frame` is one of our valid probes, else None.
    With now_ms, a probe older than max_age_ms (or from the future) is refused as a replay."""
    probe = read_probe(key, frame)
    if probe is None:
        return None
    dpid, port_no, sent_ms = probe
    if now_ms is not None and not fresh(sent_ms, now_ms, max_age_ms):
        return None
    return dpid, port_no


def fresh(sent_ms: int, now_ms: int, max_age_ms: int) -> bool:
    """Was a probe stamped `sent_ms` sent at most `max_age_ms` before `now_ms` (and not from the
    future, beyond a second of clock skew)? An older one is refused as a replay."""
    return now_ms - max_age_ms <= sent_ms <= now_ms + 1000


def read_probe(key: bytes, frame: bytes) -> tuple[int, int, int] | None:
    """(dpid, port, sent_ms) of one of our probes with a valid signature, whatever its age; else None."""
    if len(frame) < 14 or struct.unpack("!H", frame[12:14])[0] != ETH_TYPE_LLDP:
        return None
    offset, chassis, port, signature = 14, None, None, None
    while offset + 2 <= len(frame):
        header = struct.unpack("!H", frame[offset : offset + 2])[0]
        tlv_type, length = header >> 9, header & 0x1FF
        value = frame[offset + 2 : offset + 2 + length]
        offset += 2 + length
        if tlv_type == 0:
            break
        if tlv_type == 1 and value[:1] == b"\x07":
            chassis = value[1:]
        elif tlv_type == 2 and value[:1] == b"\x07":
            port = value[1:]
        elif tlv_type == 127 and value[:4] == _OUI + bytes([_SUBTYPE_SIG]):
            signature = value[4:]
    if chassis is None or port is None or signature is None or not chassis.startswith(b"dpid:"):
        return None
    try:
        dpid, port_no = int(chassis[5:], 16), int(port)
    except ValueError:
        return None
    # Anyone on an edge port can send LLDP: out-of-range numbers must be refused, not crash the signer.
    if not (0 <= dpid < 1 << 64 and 0 <= port_no < 1 << 32):
        return None
    if len(signature) != 8 + _SIG_LEN:
        return None
    sent_ms = struct.unpack("!Q", signature[:8])[0]
    if not hmac.compare_digest(signature[8:], _signature(key, dpid, port_no, sent_ms)):
        return None
    return dpid, port_no, sent_ms
