"""A switch's receive loop (controller/ryu_parsing.py `_recv_loop`) reads many messages at once and
hands on exactly what Ryu's own loop hands on: the same messages, in the same order, to the same
observers and handlers, however the bytes arrive."""

from __future__ import annotations

import random
import struct
from types import SimpleNamespace

import pytest

from controller.launcher import patch_eventlet

patch_eventlet()  # before anything imports ryu.app.wsgi (ryu_parsing.install imports Ryu's connection layer)

from ryu.controller import ofp_event  # noqa: E402
from ryu.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER  # noqa: E402

from bench.ofswitch import BARRIER_REPLY, ECHO_REPLY, message, packet_in  # noqa: E402
from controller import ryu_parsing  # noqa: E402

ryu_parsing.install()


class _Socket:
    """Hands out the stream in the given chunks (each read takes at most what was asked and at most
    the rest of the current chunk), then end of file."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.reads = 0
        self.closed = False

    def recv(self, size: int) -> bytes:
        self.reads += 1
        if not self.chunks:
            return b""
        chunk = self.chunks[0]
        taken, rest = chunk[:size], chunk[size:]
        if rest:
            self.chunks[0] = rest
        else:
            self.chunks.pop(0)
        return taken

    def close(self) -> None:
        self.closed = True


def _stream(n: int) -> bytes:
    parts = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            frame = bytes([2, 0, 0, 0, i >> 8 & 255, i & 255]) * 2 + b"\x08\x06" + bytes(28 + i % 40)
            parts.append(packet_in(1 + i % 20, frame, 0, 0x1234 + i, 0))
        elif kind == 1:
            parts.append(message(BARRIER_REPLY, i))
        else:
            parts.append(message(ECHO_REPLY, i, b"x" * (i % 17)))
    stream = b"".join(parts)
    # Each message says its xid in its header: make it unique for the comparison.
    return stream


def _run(loop, chunks: list[bytes]) -> tuple[list, _Socket]:
    seen: list = []

    def handler(ev) -> None:
        seen.append(("handler", type(ev).__name__, ev.msg.xid))

    handler.callers = {}
    brick = SimpleNamespace(
        send_event_to_observers=lambda ev, state: seen.append(
            (type(ev).__name__, ev.msg.xid, state, bytes(ev.msg.buf))
        ),
        get_handlers=lambda ev: [handler] if handler.callers.setdefault(
            ev.__class__, SimpleNamespace(dispatchers=[MAIN_DISPATCHER])
        ) else [],
    )
    sock = _Socket(chunks)
    datapath = SimpleNamespace(state=MAIN_DISPATCHER, socket=sock, address=("127.0.0.1", 1), ofp_brick=brick, id=1)
    loop(datapath)
    return seen, sock


def _chunks(stream: bytes, rng: random.Random) -> list[bytes]:
    chunks, at = [], 0
    while at < len(stream):
        size = rng.choice([1, 3, 8, 9, 50, 200, 4096, 70_000])
        chunks.append(stream[at : at + size])
        at += size
    return chunks


@pytest.mark.parametrize("seed", range(6))
def test_every_message_reaches_observers_and_handlers_as_with_ryu_s_loop(seed):
    stream = _stream(600)
    chunks = _chunks(stream, random.Random(seed))
    ours, sock = _run(ryu_parsing._recv_loop, chunks)
    ryus, _ = _run(ryu_parsing._ORIGINAL["recv_loop"], chunks)
    assert ours == ryus
    assert [e[0] for e in ours if e[0] != "handler"].count("EventOFPPacketIn") == 200
    assert sock.closed, "the connection is closed when the loop ends, as Ryu's is"


def test_it_reads_many_messages_at_once():
    stream = _stream(600)
    _, ours = _run(ryu_parsing._recv_loop, [stream])
    _, ryus = _run(ryu_parsing._ORIGINAL["recv_loop"], [stream])
    assert ours.reads <= 3 and ryus.reads > 900  # a read per header, and one per body that has one


def test_a_handler_that_changes_the_state_does_not_change_who_handles_that_message():
    """As in Ryu's loop, the handlers of a message are chosen before any of them runs."""
    calls = []

    def first(ev) -> None:
        calls.append("first")
        datapath.state = CONFIG_DISPATCHER

    def second(ev) -> None:
        calls.append("second")

    for h in (first, second):
        h.callers = {ofp_event.EventOFPBarrierReply: SimpleNamespace(dispatchers=[MAIN_DISPATCHER])}
    brick = SimpleNamespace(send_event_to_observers=lambda ev, state: None, get_handlers=lambda ev: [first, second])
    datapath = SimpleNamespace(
        state=MAIN_DISPATCHER, socket=_Socket([message(BARRIER_REPLY, 1)]), address=None, ofp_brick=brick, id=1
    )
    ryu_parsing._recv_loop(datapath)
    assert calls == ["first", "second"]


def test_a_message_shorter_than_its_header_is_skipped_as_ryu_skips_it():
    bad = struct.pack("!BBHI", 4, BARRIER_REPLY, 4, 9)  # says 4 bytes: shorter than a header
    stream = bad + message(BARRIER_REPLY, 10)
    ours, _ = _run(ryu_parsing._recv_loop, [stream])
    ryus, _ = _run(ryu_parsing._ORIGINAL["recv_loop"], [stream])
    assert ours == ryus
