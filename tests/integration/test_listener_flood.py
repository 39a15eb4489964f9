"""A real controller process against clients that connect and say nothing, or say it slowly
(issue 10: 1,024 idle connections, or 1,030 slow-header ones, silenced the REST API with no
token; a switch port could be held open for ever, and running out of descriptors ended Ryu's
OpenFlow accept loop for good). Each test checks what an operator would notice: the health
check answers during the flood, a genuine switch still connects, the flood's sockets are closed."""

from __future__ import annotations

import contextlib
import json
import resource
import socket
import subprocess
import time
import urllib.request

import pytest

from mininet_scenarios.harness import ControllerProcess
from tests.integration.helpers import emulated_switch, wait_until

FLOOD = 1_100  # more than eventlet's pool of 1,024


@pytest.fixture(autouse=True, scope="module")
def enough_descriptors():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.fixture
def controller(monkeypatch, tmp_path):
    monkeypatch.setenv("GOLDILOCKS_REST_REQUEST_SECONDS", "3")
    monkeypatch.setenv("GOLDILOCKS_REST_BODY_SECONDS", "2")
    monkeypatch.setenv("GOLDILOCKS_OF_HANDSHAKE_SECONDS", "3")
    ctl = ControllerProcess(state_dir=str(tmp_path), extra_args=["--no-ovsdb-inventory"]).start()
    try:
        yield ctl
    finally:
        ctl.stop()


@contextlib.contextmanager
def flood(port: int, count: int, source: str = "127.0.0.1", first_bytes: bytes = b""):
    socks = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0))
            if first_bytes:
                sock.sendall(first_bytes)
            socks.append(sock)
        yield socks
    finally:
        for sock in socks:
            sock.close()


def health(ctl, timeout: float = 5.0) -> int:
    with urllib.request.urlopen(f"{ctl.rest_url}/v1/health", timeout=timeout) as answer:
        return answer.status


def closed_by_server(socks: list[socket.socket], within: float) -> int:
    """How many of `socks` the server closed (EOF or reset) within `within` seconds."""
    deadline = time.monotonic() + within
    closed = 0
    for sock in socks:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            while sock.recv(4096):
                pass
            closed += 1
        except (ConnectionResetError, BrokenPipeError):
            closed += 1
        except TimeoutError:
            pass
    return closed


def raw_request(ctl, data: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send raw bytes; return the status, headers and JSON body of the answer."""
    with socket.create_connection(("127.0.0.1", ctl.rest_port), timeout=timeout) as sock:
        sock.sendall(data)
        raw = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_idle_and_slow_header_floods_do_not_silence_the_api(controller):
    slow_header = b"GET /v1/health HTTP/1.1\r\nHost: x\r\nX-Slow: "
    with flood(controller.rest_port, FLOOD) as idle, flood(controller.rest_port, FLOOD, first_bytes=slow_header) as slow:
        for _ in range(5):
            assert health(controller) == 200, "the health check was answered during the flood"
        # Every connection the flood opened is closed by the server: displaced, or out of time.
        assert closed_by_server(idle + slow, within=10) == len(idle) + len(slow)
    assert health(controller) == 200


def test_a_crowd_of_clients_gives_way_before_a_lone_keepalive_client(controller):
    with socket.create_connection(("127.0.0.1", controller.rest_port), timeout=5, source_address=("127.0.0.3", 0)) as mine:
        request = b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n"
        mine.sendall(request)
        assert mine.recv(65536).startswith(b"HTTP/1.1 200")
        with contextlib.ExitStack() as stack:
            for k in range(20):  # 20 addresses x 64 = 1,280 > 1,000 connections in all
                stack.enter_context(flood(controller.rest_port, 64, source=f"127.0.1.{k + 1}"))
            mine.sendall(request)
            assert mine.recv(65536).startswith(b"HTTP/1.1 200"), "the crowd displaced its own, not the lone client"


def test_a_body_that_never_arrives_is_answered_400_in_time(controller):
    start = time.monotonic()
    status, _, body = raw_request(
        controller,
        b"PUT /v1/vms/x HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n"
        + f"Authorization: Bearer {controller.admin_token}\r\n\r\n{{".encode(),
        timeout=15,
    )
    assert status == 400 and json.loads(body)["field"] == "body"
    assert time.monotonic() - start < 10
    assert controller.api("GET", "/v1/vms", expect=200)["vms"] == [], "nothing was half-applied"


@pytest.mark.parametrize(
    "data, status",
    [
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
        (b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
        (b"GET /v1/health HTTP/1.1\r\n" + b"".join(b"X-%d: %s\r\n" % (i, b"a" * 7000) for i in range(12)) + b"\r\n", 431),
        (b"GARBAGE\r\n\r\n", 400),
        (b"GET /v1/health HTTP/9.9\r\n\r\n", 505),
        (b"GET /v1/health HTTP/1.1\r\nContent-Length: -3\r\n\r\n", 400),
        (b"GET /v1/health HTTP/1.1\r\nContent-Length: \xd9\xa1\r\n\r\n", 400),
        (b"POST /v1/vms HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n{}", 400),
    ],
    ids=[
        "414-request-line", "431-header-line", "431-headers", "400-request-line",
        "505-version", "400-length", "400-unicode-length", "400-both-lengths",
    ],  # fmt: skip
)
def test_errors_of_the_http_layer_are_json(controller, data, status):
    answered, headers, body = raw_request(controller, data)
    assert answered == status
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(body)["error"]
    assert health(controller) == 200


def connect_switch(of_port: int, dpid: int, within: float = 20.0) -> bool:
    """An emulated switch connects, and the controller programs it (flow-mods) within `within`."""
    with emulated_switch(of_port, dpid) as switch:
        return bool(wait_until(lambda: switch.counters.flow_mods > 0, within))


def test_openflow_connections_that_never_handshake_are_closed_and_switches_still_connect(controller):
    with flood(controller.of_port, 500) as silent:
        assert connect_switch(controller.of_port, 0x51), "a genuine switch connected during the flood"
        # Closed within the handshake deadline (3 s) and Ryu's socket timeout (5 s) at most.
        assert closed_by_server(silent, within=15) == len(silent)
    assert health(controller) == 200


def test_running_out_of_descriptors_neither_ends_the_accept_loops_nor_silences_the_api(controller):
    subprocess.run(["prlimit", "--nofile=300:300", "--pid", str(controller.proc.pid)], check=True)
    with flood(controller.of_port, 400) as silent:  # more than the process may hold
        assert health(controller) == 200, "REST made room by closing a silent OpenFlow connection"
        assert connect_switch(controller.of_port, 0x52), "OpenFlow kept accepting"
        assert closed_by_server(silent, within=15) == len(silent)
    assert health(controller) == 200
    assert connect_switch(controller.of_port, 0x53)
    assert controller.proc.poll() is None
