"""An emulated switch (bench/ofswitch.py) behaves like Open vSwitch when its controller connection
drops: it connects again after a backoff, keeps its flow table (fail-mode secure), answers the new
handshake from it, and keeps counting. The controller here is a minimal asyncio server."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest
from ryu.ofproto import ofproto_v1_3 as ofp
from ryu.ofproto import ofproto_v1_3_parser as parser

from apps import pipeline
from apps.flows import FlowEntry, Output
from bench import ofswitch
from bench.ofswitch import (
    BARRIER_REPLY,
    BARRIER_REQUEST,
    FEATURES_REPLY,
    FEATURES_REQUEST,
    HELLO,
    MP_FLOW,
    MP_PORT_DESC,
    MULTIPART_REPLY,
    MULTIPART_REQUEST,
    EmulatedSwitch,
    Fabric,
    message,
)
from controller import ofmsg

DPID = 0x10001
TIMEOUT = 5.0


class _Datapath:
    ofproto = ofp
    ofproto_parser = parser


def _entry(mac: str, port: int) -> FlowEntry:
    return FlowEntry.make(pipeline.FORWARD, 100, {"eth_dst": mac}, (Output(port),))


async def _receive(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
    """One message: (type, xid, the whole message)."""
    head = await reader.readexactly(8)
    _, msg_type, length, xid = struct.unpack("!BBHI", head)
    return msg_type, xid, head + await reader.readexactly(length - 8)


async def _expect(reader: asyncio.StreamReader, msg_type: int, xid: int | None = None) -> list[bytes]:
    """The messages up to the first of this type (and xid), which is last in the list."""
    seen = []
    while True:
        got_type, got_xid, raw = await asyncio.wait_for(_receive(reader), TIMEOUT)
        seen.append(raw)
        if got_type == msg_type and (xid is None or got_xid == xid):
            return seen


def _flow_stats_request(xid: int) -> bytes:
    body = struct.pack("!HH4xB3xII4xQQ", MP_FLOW, 0, ofp.OFPTT_ALL, ofp.OFPP_ANY, ofp.OFPG_ANY, 0, 0)
    return message(MULTIPART_REQUEST, xid, body + struct.pack("!HH4x", 1, 4))


def _cookies(replies: list[bytes]) -> list[int]:
    found = []
    for raw in replies:
        version, msg_type, length, xid = struct.unpack_from("!BBHI", raw)
        if msg_type != MULTIPART_REPLY or struct.unpack_from("!H", raw, 8)[0] != MP_FLOW:
            continue
        reply = parser.OFPMultipartReply.parser(_Datapath, version, msg_type, length, xid, raw)
        found += [stat.cookie for stat in reply.body]
    return found


class _FakeController:
    """Accepts connections and hands each to the test, in order."""

    def __init__(self) -> None:
        self.connections: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(lambda r, w: self.connections.put_nowait((r, w)), "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def accept(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.wait_for(self.connections.get(), TIMEOUT)

    async def handshake(self, reader, writer, xid: int) -> bytes:
        """Hello both ways and the features request; the features reply."""
        assert (await _expect(reader, HELLO))[-1][1] == HELLO
        writer.write(message(HELLO, 0) + message(FEATURES_REQUEST, xid))
        return (await _expect(reader, FEATURES_REPLY, xid))[-1]


@pytest.fixture
def backoffs(monkeypatch):
    """The backoff delays the switch asks for (each slept only briefly)."""
    asked: list[float] = []
    real_sleep = asyncio.sleep

    async def sleep(delay, result=None):
        if delay > 0:
            asked.append(delay)
            delay = 0.01
        return await real_sleep(delay, result)

    monkeypatch.setattr(ofswitch.asyncio, "sleep", sleep)
    return asked


def test_a_switch_reconnects_after_the_controller_closes_and_keeps_its_flows(backoffs):
    first, second = _entry("02:00:00:00:00:01", 1), _entry("02:00:00:00:00:02", 2)

    async def scenario() -> None:
        controller = _FakeController()
        port = await controller.start()
        fabric = Fabric(miss_cookie=0)
        switch = EmulatedSwitch(DPID, {1: ("hv-eth1", b"\x0a\x00\x00\x00\x00\x01")})
        fabric.add(switch)
        task = asyncio.create_task(fabric.run_switch(switch, "127.0.0.1", port))
        try:
            # First connection: the handshake, two flows, a barrier; then the controller goes away.
            reader, writer = await controller.accept()
            features = await controller.handshake(reader, writer, 1)
            assert struct.unpack_from("!Q", features, 8)[0] == DPID
            writer.write(ofmsg.with_xid(ofmsg.flow_add_bytes(first), 2) + ofmsg.with_xid(ofmsg.flow_add_bytes(second), 3))
            writer.write(message(BARRIER_REQUEST, 4))
            await _expect(reader, BARRIER_REPLY, 4)
            assert switch.counters.flow_mods == 2
            writer.close()

            # It comes back on its own, after Open vSwitch's first backoff.
            reader, writer = await controller.accept()
            assert backoffs == [ofswitch.BACKOFF_START]
            assert switch.counters.reconnects == fabric.counters.reconnects == 1
            assert switch.connections == 2
            features = await controller.handshake(reader, writer, 10)
            assert struct.unpack_from("!Q", features, 8)[0] == DPID
            # Port descriptions again, and the flow table it kept (fail-mode secure).
            writer.write(message(MULTIPART_REQUEST, 11, struct.pack("!HH4x", MP_PORT_DESC, 0)))
            ports = (await _expect(reader, MULTIPART_REPLY, 11))[-1]
            assert struct.unpack_from("!I", ports, 16)[0] == 1
            writer.write(_flow_stats_request(12))
            stats = await _expect(reader, MULTIPART_REPLY, 12)
            assert sorted(_cookies(stats)) == sorted([first.cookie, second.cookie])
            # And it keeps counting what it is sent.
            third = _entry("02:00:00:00:00:03", 3)
            writer.write(ofmsg.with_xid(ofmsg.flow_add_bytes(third), 13) + message(BARRIER_REQUEST, 14))
            await _expect(reader, BARRIER_REPLY, 14)
            assert switch.counters.flow_mods == fabric.counters.flow_mods == 3
            assert switch.counters.barriers == 2
            assert len(switch.flows) == 3
            writer.close()
        finally:
            task.cancel()
            controller.server.close()
        assert [drop.reason for drop in fabric.drops][:1] == ["eof"]
        assert fabric.errors == []

    asyncio.run(scenario())


def test_refused_connections_back_off_like_open_vswitch(backoffs):
    """1 s, doubled on every failed attempt up to 8 s; back to 1 s after a connection that lasted."""

    async def scenario() -> None:
        with socket.socket() as probe:  # a port nothing listens on: every attempt is refused
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        fabric = Fabric(miss_cookie=0)
        switch = EmulatedSwitch(DPID, {})
        task = asyncio.create_task(fabric.run_switch(switch, "127.0.0.1", port))
        try:
            while len(backoffs) < 6:
                await asyncio.sleep(0)
        finally:
            task.cancel()
        assert backoffs[:6] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
        assert switch.connections == 0 and switch.counters.reconnects == 0
        assert switch.counters.disconnects >= 6
        assert all(drop.reason.startswith("refused") for drop in fabric.drops)

    asyncio.run(scenario())


def test_without_reconnect_one_connection_only(backoffs):
    async def scenario() -> None:
        controller = _FakeController()
        port = await controller.start()
        fabric = Fabric(miss_cookie=0, reconnect=False)
        switch = EmulatedSwitch(DPID, {})
        task = asyncio.create_task(fabric.run_switch(switch, "127.0.0.1", port))
        reader, writer = await controller.accept()
        await controller.handshake(reader, writer, 1)
        writer.close()
        await asyncio.wait_for(task, TIMEOUT)
        controller.server.close()
        assert backoffs == [] and switch.connections == 1 and fabric.counters.reconnects == 0

    asyncio.run(scenario())
