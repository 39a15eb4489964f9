"""Signed LLDP probes: ours round-trip, anything forged, tampered or malformed is refused without raising."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from topology import lldp

KEY = bytes(range(32))
OTHER_KEY = bytes(32)


def tlv(tlv_type: int, value: bytes) -> bytes:
    return struct.pack("!H", (tlv_type << 9) | len(value)) + value


def chassis_tlv(dpid_text: bytes) -> bytes:
    return tlv(1, b"\x07dpid:" + dpid_text)


def port_tlv(port_text: bytes) -> bytes:
    return tlv(2, b"\x07" + port_text)


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**32 - 1))
def test_a_probe_round_trips(dpid, port):
    frame = lldp.build_probe(KEY, dpid, port, "aa:bb:cc:dd:ee:ff")
    assert lldp.parse_probe(KEY, frame) == (dpid, port)


def test_a_probe_is_an_lldp_frame_to_the_nearest_bridge_group():
    frame = lldp.build_probe(KEY, 0x1011, 3, "aa:bb:cc:dd:ee:ff")
    assert frame[:6] == lldp.LLDP_DST
    assert frame[6:12] == bytes.fromhex("aabbccddeeff")
    assert struct.unpack("!H", frame[12:14])[0] == lldp.ETH_TYPE_LLDP
    assert lldp.parse_probe(KEY, lldp.build_probe(KEY, 1, 1, "")) == (1, 1)


def test_a_probe_signed_with_another_key_is_rejected():
    """An attacker (or a previous controller run) without our key cannot make a link appear."""
    assert lldp.parse_probe(KEY, lldp.build_probe(OTHER_KEY, 1, 2, "")) is None


def test_a_probe_with_a_tampered_port_is_rejected():
    frame = lldp.build_probe(KEY, 0x1011, 3, "")
    tampered = frame.replace(port_tlv(b"3"), port_tlv(b"4"))
    assert tampered != frame
    assert lldp.parse_probe(KEY, tampered) is None


def test_a_probe_with_a_tampered_dpid_is_rejected():
    frame = lldp.build_probe(KEY, 0x1011, 3, "")
    tampered = frame.replace(chassis_tlv(b"%016x" % 0x1011), chassis_tlv(b"%016x" % 0x1012))
    assert tampered != frame
    assert lldp.parse_probe(KEY, tampered) is None


def test_a_probe_with_a_flipped_signature_bit_is_rejected():
    frame = bytearray(lldp.build_probe(KEY, 7, 7, ""))
    signature_at = frame.index(bytes.fromhex("6c6c6c01")) + 4
    frame[signature_at] ^= 0x01
    assert lldp.parse_probe(KEY, bytes(frame)) is None


def test_a_probe_without_a_signature_is_rejected():
    body = chassis_tlv(b"%016x" % 7) + port_tlv(b"7") + tlv(3, b"\x00\x78") + tlv(0, b"")
    frame = lldp.LLDP_DST + bytes(6) + struct.pack("!H", lldp.ETH_TYPE_LLDP) + body
    assert lldp.parse_probe(KEY, frame) is None


def test_frames_that_are_not_lldp_are_rejected():
    probe = lldp.build_probe(KEY, 7, 7, "")
    assert lldp.parse_probe(KEY, b"") is None
    assert lldp.parse_probe(KEY, probe[:13]) is None
    assert lldp.parse_probe(KEY, probe[:12] + b"\x08\x00" + probe[14:]) is None


def test_out_of_range_numbers_are_rejected_not_raised():
    """A VM can send LLDP with any text in it; a number the signature cannot cover must be refused."""
    probe = lldp.build_probe(KEY, 7, 7, "")
    for bad_port in (b"-1", b"4294967296"):
        assert lldp.parse_probe(KEY, probe.replace(port_tlv(b"7"), port_tlv(bad_port))) is None
    too_big = chassis_tlv(b"1" + b"0" * 16)
    assert lldp.parse_probe(KEY, probe.replace(chassis_tlv(b"%016x" % 7), too_big)) is None
    for junk in (b"zz", b""):
        assert lldp.parse_probe(KEY, probe.replace(chassis_tlv(b"%016x" % 7), chassis_tlv(junk))) is None
        assert lldp.parse_probe(KEY, probe.replace(port_tlv(b"7"), port_tlv(junk))) is None


def test_a_truncated_probe_is_rejected():
    probe = lldp.build_probe(KEY, 7, 7, "")
    for cut in range(14, len(probe) - 2):
        assert lldp.parse_probe(KEY, probe[:cut]) is None


@given(st.binary(max_size=200))
def test_random_bytes_after_an_lldp_header_never_raise(body):
    frame = lldp.LLDP_DST + bytes(6) + struct.pack("!H", lldp.ETH_TYPE_LLDP) + body
    assert lldp.parse_probe(KEY, frame) is None


@given(
    st.lists(
        st.tuples(st.sampled_from([0, 1, 2, 3, 127]), st.binary(max_size=40)).map(lambda t: tlv(*t)),
        max_size=6,
    ),
    st.sampled_from([b"-1", b"99999999999", b"\xff", b"1_0", b" 7 ", b"+7", b"7"]),
    st.sampled_from([b"%016x" % 7, b"1" + b"0" * 17, b"-7", b"0x7", b"\x00"]),
)
def test_crafted_tlvs_never_raise(extra, port_text, dpid_text):
    probe = lldp.build_probe(KEY, 7, 7, "")
    forged = probe.replace(port_tlv(b"7"), port_tlv(port_text)).replace(chassis_tlv(b"%016x" % 7), chassis_tlv(dpid_text))
    frame = forged[:14] + b"".join(extra) + forged[14:]
    result = lldp.parse_probe(KEY, frame)
    assert result is None or result == (7, 7)


def test_a_stale_or_future_probe_is_refused_as_a_replay():
    frame = lldp.build_probe(KEY, 9, 4, "", sent_ms=10_000)
    assert lldp.parse_probe(KEY, frame, now_ms=10_500, max_age_ms=3000) == (9, 4)
    assert lldp.parse_probe(KEY, frame, now_ms=13_001, max_age_ms=3000) is None, "replayed after its age"
    assert lldp.parse_probe(KEY, frame, now_ms=8_000, max_age_ms=3000) is None, "stamped in the future"


def test_the_time_stamp_is_signed():
    frame = lldp.build_probe(KEY, 9, 4, "", sent_ms=10_000)
    stamp = (10_000).to_bytes(8, "big")
    forged = frame.replace(stamp, (20_000).to_bytes(8, "big"))
    assert forged != frame
    assert lldp.parse_probe(KEY, forged, now_ms=20_000) is None
