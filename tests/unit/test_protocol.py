"""The agent protocol's frames and schema, as docs/agent-protocol.md writes them down."""

from __future__ import annotations

import copy
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto import protocol, wgkeys
from crypto.protocol import MAX_FRAME, FrameReader, ProtocolError, encode, validate

PUBLIC_KEY = wgkeys.encode(wgkeys.public_key(wgkeys.generate_private_key()))
SECRET_PSK = b"RECOGNISABLE-PSK-0123456789abcd!"  # 32 bytes
assert len(SECRET_PSK) == 32

PEER = {
    "peer": "hv2",
    "public_key": PUBLIC_KEY,
    "psk": SECRET_PSK,
    "endpoint": "192.0.2.2:51820",
    "tunnel_ip": "10.99.0.2",
    "vni": 4097,
    "port": "wg-hv2",
}

EXAMPLES: dict[str, dict[str, Any]] = {
    "enroll": {"token": "t0ken", "hypervisor": "hv1", "csr": "-----BEGIN CERTIFICATE REQUEST-----\n..."},
    "hello": {
        "hypervisor": "hv1",
        "software": "goldilocks-agent 1.0",
        "wg_public_key": PUBLIC_KEY,
        "listen_port": 51820,
        "bridge": "br-int",
        "underlay": {"ip": "192.0.2.1", "mac": "02:00:00:00:00:01", "port": "eth1"},
    },
    "report": {
        "interfaces": [{"name": "vm1-eth0", "external_ids": {"vm": "vm1", "iface-id": "abc"}}, {"name": "x", "external_ids": {}}],
        "tunnels": [
            {
                "peer": "hv2",
                "port": "wg-hv2",
                "configured": True,
                "latest_handshake": 1717000000.5,
                "rx_bytes": 10,
                "tx_bytes": 2**40,
                "drops": 0,
            }
        ],
        "wg_running": True,
    },
    "applied": {"seq": 7, "ok": False, "error": "wg set failed"},
    "identity": {"rotation": "r1", "public_key": PUBLIC_KEY},
    "identity_switched": {"rotation": "r1"},
    "enrolled": {"certificate": "-----BEGIN CERTIFICATE-----\n...", "ca": "-----BEGIN CERTIFICATE-----\n..."},
    "welcome": {"index": 1, "address": "10.99.0.1/24", "report_interval": 10.0},
    "config": {"seq": 8, "peers": [PEER, {**PEER, "peer": "hv3"}]},
    "rotate_identity": {"rotation": "r1"},
    "switch_identity": {"rotation": "r1"},
    "error": {"code": "schema", "message": "hello.bridge: expected str"},
}


def message(message_type: str, **changes: Any) -> dict[str, Any]:
    return {"v": 1, "type": message_type, **copy.deepcopy(EXAMPLES[message_type]), **changes}


def frame(value: Any) -> bytes:
    body = msgpack.packb(value, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def schema_error(value: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as caught:
        validate(value)
    assert caught.value.code == "schema"
    return caught.value


def test_every_message_type_has_an_example() -> None:
    assert set(EXAMPLES) == set(protocol.SCHEMA)
    assert set(protocol.AGENT_MESSAGES).isdisjoint(protocol.CONTROLLER_MESSAGES)


@pytest.mark.parametrize("message_type", sorted(EXAMPLES))
def test_every_message_type_round_trips(message_type: str) -> None:
    sent = {"type": message_type, **EXAMPLES[message_type]}
    data = encode(sent)
    assert struct.unpack(">I", data[:4])[0] == len(data) - 4
    assert FrameReader().feed(data) == [{"v": 1, **sent}]


def test_feeding_byte_by_byte_gives_the_same_messages() -> None:
    stream = b"".join(encode({"type": t, **body}) for t, body in EXAMPLES.items())
    reader = FrameReader()
    whole = FrameReader().feed(stream)
    pieces = [m for i in range(len(stream)) for m in reader.feed(stream[i : i + 1])]
    assert pieces == whole and len(whole) == len(EXAMPLES)
    assert reader.pending == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    data = encode(message("welcome"))
    reader = FrameReader()
    assert reader.feed(data[:-1]) == []
    assert reader.pending == len(data) - 1
    assert reader.feed(data[-1:]) == [message("welcome")]


def test_an_oversize_length_is_refused_from_the_header_alone() -> None:
    reader = FrameReader()
    with pytest.raises(ProtocolError) as caught:
        reader.feed(struct.pack(">I", MAX_FRAME + 1))
    assert caught.value.code == "frame"
    with pytest.raises(ProtocolError):
        reader.feed(encode(message("welcome")))  # a reader that failed stays failed
    assert FrameReader().feed(struct.pack(">I", MAX_FRAME)) == []  # the limit itself is allowed


def test_a_zero_length_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameReader().feed(b"\x00\x00\x00\x00")
    assert caught.value.code == "frame"


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # never used in msgpack
        b"\x92\x01",  # an array of two with one item
        msgpack.packb({"v": 1}) + msgpack.packb(1),  # two values in one frame
        b"\xa3\xff\xfe\xfd",  # a str that is not UTF-8
        b"\x81\x01\x02",  # a map with an int key
        b"\xc6\x7f\xff\xff\xff",  # bin claiming 2 GiB
        b"\x91" * 2000,  # nested deeper than the decoder allows
    ],
)
def test_bodies_that_are_not_one_msgpack_value_are_refused(body: bytes) -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameReader().feed(struct.pack(">I", len(body)) + body)
    assert caught.value.code == "decode"


@pytest.mark.parametrize("value", [[1, 2], "hello", 3, None, b"bytes"])
def test_a_value_that_is_not_a_map_is_refused(value: Any) -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameReader().feed(frame(value))
    assert caught.value.code == "schema" and "expected map" in str(caught.value)


def test_another_version_is_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        FrameReader().feed(frame(message("hello", v=2)))
    assert caught.value.code == "version"
    with pytest.raises(ProtocolError) as caught:
        encode(message("hello", v=0))
    assert caught.value.code == "version"
    assert schema_error({"type": "hello"}).message == "message.v: missing"
    assert schema_error(message("hello", v=True)).message == "message.v: expected int"


def test_encode_adds_the_version() -> None:
    assert FrameReader().feed(encode({"type": "rotate_identity", "rotation": "r"}))[0]["v"] == 1


def test_unknown_types_are_refused() -> None:
    with pytest.raises(ProtocolError) as caught:
        validate({"v": 1, "type": "reboot"})
    assert caught.value.code == "type" and "'reboot'" in str(caught.value)
    with pytest.raises(ProtocolError) as caught:
        validate({"v": 1, "type": "S3CRET value!"})
    assert caught.value.code == "type" and "S3CRET" not in str(caught.value)
    assert schema_error({"v": 1}).message == "message.type: missing"
    assert schema_error({"v": 1, "type": b"hello"}).message == "message.type: expected str"


def test_a_reader_can_accept_only_one_sides_messages() -> None:
    reader = FrameReader(accept=frozenset(protocol.AGENT_MESSAGES))
    assert reader.feed(encode(message("hello"))) == [message("hello")]
    with pytest.raises(ProtocolError) as caught:
        reader.feed(encode(message("config")))
    assert caught.value.code == "type"


def test_a_bool_is_not_an_int() -> None:
    assert schema_error(message("applied", seq=True)).message == "applied.seq: expected int"
    assert schema_error(message("welcome", report_interval=False)).message == "welcome.report_interval: expected float"


def test_an_int_is_a_float() -> None:
    received = FrameReader().feed(encode(message("welcome", report_interval=5)))[0]
    assert received["report_interval"] == 5.0 and isinstance(received["report_interval"], float)


def test_ints_and_floats_the_doc_rules_out() -> None:
    assert schema_error(message("welcome", index=0)).message.startswith("welcome.index: expected int from 1")
    assert schema_error(message("applied", seq=2**64)).message.startswith("applied.seq: expected int from")
    assert "finite" in schema_error(message("welcome", report_interval=float("nan"))).message
    assert schema_error(message("applied", ok=1)).message == "applied.ok: expected bool"


def test_field_errors_name_the_path() -> None:
    report = message("report")
    report["tunnels"][0]["rx_bytes"] = "ten"
    assert schema_error(report).message == "report.tunnels[0].rx_bytes: expected int"
    hello = message("hello")
    del hello["underlay"]["mac"]
    assert schema_error(hello).message == "hello.underlay.mac: missing"
    report = message("report")
    report["interfaces"][1]["external_ids"] = {"vm": 3}
    assert schema_error(report).message == "report.interfaces[1].external_ids: expected a map of str to str"
    assert schema_error(message("hello", underlay=["a"])).message == "hello.underlay: expected map"
    assert schema_error(message("config", peers={})).message == "config.peers: expected list"


def test_wireguard_public_keys_must_be_keys() -> None:
    error = schema_error(message("hello", wg_public_key="not-a-key"))
    assert error.message == "hello.wg_public_key: expected a base64 WireGuard key of 32 bytes"
    assert "not-a-key" not in str(error)


@pytest.mark.parametrize("psk", [SECRET_PSK + b"!", SECRET_PSK[:31], SECRET_PSK.decode()])
def test_a_psk_must_be_32_bytes_and_is_never_echoed(psk: bytes | str) -> None:
    config = message("config")
    config["peers"][1]["psk"] = psk
    with pytest.raises(ProtocolError) as caught:
        FrameReader().feed(frame(config))
    assert caught.value.code == "schema"
    assert caught.value.message.startswith("config.peers[1].psk: expected")
    for shown in (str(caught.value), repr(caught.value), caught.value.message):
        assert "RECOGNISABLE" not in shown and SECRET_PSK.hex()[:12] not in shown


def test_lists_hold_at_most_4096_items() -> None:
    interface = {"name": "i", "external_ids": {}}
    assert len(validate(message("report", interfaces=[interface] * 4096))["interfaces"]) == 4096
    error = schema_error(message("report", interfaces=[interface] * 4097))
    assert error.message == "report.interfaces: expected at most 4096 items"


def test_the_optional_error_field() -> None:
    without = message("applied", ok=True)
    del without["error"]
    assert validate(without) == without
    assert schema_error(message("applied", error=None)).message == "applied.error: expected str"


def test_unknown_keys_are_ignored() -> None:
    newer = message("hello", colour="blue")
    newer["underlay"]["vlan"] = 7
    received = FrameReader().feed(frame(newer))[0]
    assert received == message("hello")


def test_a_message_too_large_for_a_frame_is_not_sent() -> None:
    with pytest.raises(ProtocolError) as caught:
        encode(message("error", message="x" * MAX_FRAME))
    assert caught.value.code == "frame"


def test_encode_checks_before_sending() -> None:
    with pytest.raises(ProtocolError) as caught:
        encode(message("config", seq="8"))
    assert caught.value.message == "config.seq: expected int"


def test_several_frames_in_one_feed() -> None:
    messages = [message("hello"), message("report"), message("applied")]
    assert FrameReader().feed(b"".join(encode(m) for m in messages)) == messages


# --- property: no input makes the reader fail in any way but ProtocolError ---------------------

field_names = st.sampled_from(["v", "type", "seq", "peers", "psk", "hypervisor", "underlay", "ip", "interfaces", "index"])
type_names = st.sampled_from(sorted(protocol.SCHEMA))
leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(),
    st.text(max_size=20),
    st.binary(max_size=40),
    type_names,
)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(field_names, st.text(max_size=5)), children, max_size=6),
    ),
    max_leaves=30,
)
maps = st.dictionaries(st.one_of(field_names, st.text(max_size=5)), values, max_size=8)
messages = st.builds(lambda v, t, rest: {**rest, "v": v, "type": t}, st.sampled_from([1, 1, 1, 2]), type_names, maps)


def framed(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


streams = st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=200).map(framed),
    values.map(frame),
    messages.map(frame),
    st.lists(st.sampled_from([encode({"type": t, **b}) for t, b in EXAMPLES.items()]), max_size=3).map(b"".join),
)


@settings(max_examples=400, deadline=None)
@given(data=streams, cut=st.integers(min_value=0, max_value=300))
def test_any_bytes_yield_messages_or_a_protocol_error(data: bytes, cut: int) -> None:
    reader = FrameReader()
    try:
        received = reader.feed(data[:cut]) + reader.feed(data[cut:])
    except ProtocolError as exc:
        assert exc.code in {"frame", "decode", "version", "type", "schema"}
        return
    for item in received:
        assert validate(item) == item
