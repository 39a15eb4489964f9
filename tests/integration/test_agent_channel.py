"""The agent channel of a real controller process, attacked from outside: bad, reused and expired
tokens, certificates from another CA or revoked, malformed and oversized frames. Each is refused
with a clear error, and the controller keeps serving everyone else."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path

import msgpack
import pytest

from crypto import protocol
from crypto.ca import CertificateAuthority, make_key_and_csr, ssl_client_context
from crypto.keystore import MasterKey
from mininet_scenarios.harness import REPO, ControllerProcess, rest_get


@pytest.fixture(scope="module")
def controller():
    ctl = ControllerProcess(extra_args=["--no-ovsdb-inventory"]).start()
    try:
        yield ctl
    finally:
        ctl.stop()


def frame(message: dict) -> bytes:
    """A well-formed frame of any map, bypassing our own encoder's checks."""
    body = msgpack.packb(message)
    return struct.pack("!I", len(body)) + body


def token(ctl) -> dict:
    return ctl.api("POST", "/v1/agents/tokens", {"ttl_seconds": 60}, expect=201)


def connect(ctl, ca_pem: str, cert_pem: str | None = None, key_pem: str | None = None) -> ssl.SSLSocket:
    context = ssl_client_context(ca_pem, cert_pem, key_pem)
    raw = socket.create_connection(("127.0.0.1", ctl.agent_port), timeout=5)
    return context.wrap_socket(raw)


def exchange(sock: ssl.SSLSocket, payload: bytes) -> list[dict]:
    """Send raw bytes; return what the controller answered before closing (or within 5 s)."""
    sock.sendall(payload)
    reader = protocol.FrameReader(accept=frozenset(protocol.CONTROLLER_MESSAGES))
    messages = []
    try:
        while True:
            data = sock.recv(65536)
            if not data:
                break
            messages += reader.feed(data)
            if messages:
                break
    except (TimeoutError, ssl.SSLError, OSError):
        pass
    return messages


def enroll(ctl, issued: dict, hypervisor: str, token_value: str | None = None) -> tuple[dict, str]:
    key_pem, csr_pem = make_key_and_csr(hypervisor)
    with connect(ctl, issued["ca_certificate"]) as sock:
        (answer,) = exchange(sock, protocol.encode(
            {"type": "enroll", "token": token_value or issued["token"], "hypervisor": hypervisor, "csr": csr_pem}
        ))  # fmt: skip
    return answer, key_pem


def still_serving(ctl) -> None:
    assert rest_get(ctl.rest_url, "/v1/health")["status"] == "ok"
    answer, _ = enroll(ctl, token(ctl), "healthy")
    assert answer["type"] == "enrolled", answer


def test_a_token_enrolls_once_and_a_bad_or_reused_one_is_refused(controller):
    issued = token(controller)
    first, _ = enroll(controller, issued, "hv-a")
    assert first["type"] == "enrolled" and "BEGIN CERTIFICATE" in first["certificate"]
    again, _ = enroll(controller, issued, "hv-b")
    assert (again["type"], again["code"]) == ("error", "token") and "already used" in again["message"]
    made_up, _ = enroll(controller, issued, "hv-c", token_value="gle_" + "x" * 43)
    assert (made_up["type"], made_up["code"]) == ("error", "token")
    assert issued["token"] not in again["message"] and "gle_" not in made_up["message"]
    still_serving(controller)


def test_the_agent_command_exits_with_a_clear_error_on_a_bad_token(controller, tmp_path):
    issued = token(controller)
    (tmp_path / "ca.pem").write_text(issued["ca_certificate"])
    (tmp_path / "token").write_text("gle_" + "y" * 43 + "\n")
    result = subprocess.run(
        [
            sys.executable, "-m", "agent", "--hypervisor", "hv-bad", "--bridge", "none", "--underlay-ip", "127.0.0.1",
            "--underlay-port", "none", "--controller", f"127.0.0.1:{controller.agent_port}",
            "--state-dir", str(tmp_path / "state"), "--token-file", str(tmp_path / "token"),
            "--ca-file", str(tmp_path / "ca.pem"),
        ],
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-500:]
    assert "unknown token" in result.stderr and "y" * 20 not in result.stderr


def test_a_certificate_from_another_ca_is_refused(controller, tmp_path):
    issued = token(controller)
    other = CertificateAuthority.load_or_create(tmp_path, MasterKey.load_or_create(tmp_path / "master.key"))
    key_pem, csr_pem = make_key_and_csr("hv-a")
    cert_pem, _ = other.sign_csr(csr_pem, "hv-a")
    hello = {"type": "hello", "hypervisor": "hv-a", "software": "test", "wg_public_key": "A" * 43 + "=", "listen_port": 51820,
             "bridge": "br", "underlay": {"ip": "192.0.2.1", "mac": "02:00:00:00:00:01", "port": "p"}}  # fmt: skip
    try:
        with connect(controller, issued["ca_certificate"], cert_pem, key_pem) as sock:
            answers = exchange(sock, protocol.encode(hello))
    except (ssl.SSLError, OSError):
        answers = []  # refused during the handshake
    assert not any(a["type"] == "welcome" for a in answers), answers
    still_serving(controller)


def test_a_revoked_certificate_is_refused(controller):
    issued = token(controller)
    answer, key_pem = enroll(controller, issued, "hv-revoked")
    controller.api("DELETE", "/v1/agents/hv-revoked", expect=204)
    hello = {"type": "hello", "hypervisor": "hv-revoked", "software": "test", "wg_public_key": "A" * 43 + "=",
             "listen_port": 51820, "bridge": "br", "underlay": {"ip": "192.0.2.1", "mac": "02:00:00:00:00:01", "port": "p"}}
    with connect(controller, issued["ca_certificate"], answer["certificate"], key_pem) as sock:
        (refusal,) = exchange(sock, protocol.encode(hello))
    assert (refusal["type"], refusal["code"]) == ("error", "revoked")


@pytest.mark.parametrize(
    "payload, code",
    [
        (struct.pack("!I", 100 * 1024 * 1024), "frame"),  # a 100 MiB frame is refused from its header alone
        (struct.pack("!I", 0), "frame"),
        (struct.pack("!I", 5) + b"\xc1\xc1\xc1\xc1\xc1", "decode"),  # not msgpack
        (struct.pack("!I", 3) + b"\x92\x01\x02", "schema"),  # msgpack, but a list
        (frame({"v": 1, "type": "welcome", "index": 1, "address": "100.127.0.1/16", "report_interval": 2.0}), "type"),
    ],
    ids=["oversized", "empty", "garbage", "not-a-map", "wrong-direction"],
)
def test_malformed_frames_are_refused_and_the_controller_carries_on(controller, payload, code):
    issued = token(controller)
    with connect(controller, issued["ca_certificate"]) as sock:
        answers = exchange(sock, payload)
    assert answers and answers[0]["type"] == "error" and answers[0]["code"] == code, answers
    still_serving(controller)


def test_the_controller_writes_its_ca_and_keeps_its_keys_private(controller):
    state = Path(controller.state_dir)
    assert (state / "master.key").stat().st_mode & 0o077 == 0
    assert (state / "ca.key.sealed").stat().st_mode & 0o077 == 0
    assert b"PRIVATE KEY" not in (state / "ca.key.sealed").read_bytes()
    log = Path(controller.log_path).read_text()
    assert "gle_" not in log, "an enrollment token reached the log"
