"""The CLI's HTTP client against a fake transport: requests as the API wants them, and every
refusal turned into one line naming the API's message, its field and what to do, never a token."""

from __future__ import annotations

import json
import urllib.error

import pytest

from controller.cli.client import ApiError, Client, CliError, Reply, UrllibTransport, segment

TOKEN = "glk_" + "s" * 43


class FakeTransport:
    """Answers each request with the next canned reply (or raises it), recording what was sent."""

    def __init__(self, *replies) -> None:
        self.replies = list(replies)
        self.sent: list[tuple[str, str, dict, bytes | None]] = []

    def send(self, method, url, headers, body, timeout):
        self.sent.append((method, url, dict(headers), body))
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply


def reply(status: int, doc=None, **headers) -> Reply:
    return Reply(
        status, {k.replace("_", "-").lower(): v for k, v in headers.items()}, b"" if doc is None else json.dumps(doc).encode()
    )


def test_a_request_carries_the_token_json_and_a_quoted_query():
    fake = FakeTransport(reply(201, {"name": "r"}))
    client = Client("http://ctl:8080/", TOKEN, fake)
    assert client.call("POST", "/v1/policies", {"name": "r"}, {"position": 0, "ignored": None}) == {"name": "r"}
    method, url, headers, body = fake.sent[0]
    assert (method, url) == ("POST", "http://ctl:8080/v1/policies?position=0")
    assert headers["Authorization"] == f"Bearer {TOKEN}" and headers["Content-Type"] == "application/json"
    assert json.loads(body) == {"name": "r"}
    assert TOKEN not in repr(client)


def test_no_content_is_none_and_a_get_sends_no_body():
    fake = FakeTransport(reply(204))
    assert Client("http://ctl", TOKEN, fake).call("DELETE", "/v1/vms/a") is None
    assert fake.sent[0][3] is None and "Content-Type" not in fake.sent[0][2]


def test_path_segments_cannot_change_the_path():
    assert segment("web 1/../tokens?x=1#") == "web%201%2F..%2Ftokens%3Fx%3D1%23"


def test_a_refusal_names_the_apis_message_and_field():
    fake = FakeTransport(reply(400, {"error": "macs: 'ff:ff' is not a MAC", "field": "macs"}))
    with pytest.raises(ApiError) as caught:
        Client("http://ctl", TOKEN, fake).call("PUT", "/v1/vms/a", {"macs": ["ff:ff"]})
    assert caught.value.message == "macs: 'ff:ff' is not a MAC (HTTP 400, field: macs)"
    assert (caught.value.status, caught.value.field) == (400, "macs")


def test_403_and_429_say_what_happened_and_when_to_retry():
    fake = FakeTransport(
        reply(403, {"error": "token 'ro' is read-only; DELETE /v1/vms/{name} needs an admin token"}),
        reply(429, {"error": "too many failed sign-ins from this address; try again later"}, retry_after="7"),
    )
    client = Client("http://ctl", TOKEN, fake)
    with pytest.raises(ApiError, match=r"^permission denied \(403\): token 'ro' is read-only"):
        client.call("DELETE", "/v1/vms/a")
    with pytest.raises(ApiError, match=r"\(429\).*retry in 7 s$"):
        client.get("/v1/vms")


def test_401_says_where_the_token_came_from_or_how_to_give_one():
    refused = reply(401, {"error": "the bearer token is not valid"})
    with pytest.raises(CliError) as caught:
        Client("http://ctl", TOKEN, FakeTransport(refused), token_source="GOLDILOCKS_TOKEN").get("/v1/vms")
    assert caught.value.message == "the controller refused the token from GOLDILOCKS_TOKEN (401): the bearer token is not valid"
    assert TOKEN not in caught.value.message
    missing = reply(401, {"error": "a bearer token is required (Authorization: Bearer <token>)"})
    with pytest.raises(CliError, match="no token.*--token-file FILE, GOLDILOCKS_TOKEN"):
        Client("http://ctl", None, FakeTransport(missing)).get("/v1/vms")


def test_an_answer_that_is_not_the_apis_json_is_still_one_clear_error():
    with pytest.raises(ApiError, match=r"Bad Gateway \(HTTP 502\)"):
        Client("http://ctl", TOKEN, FakeTransport(Reply(502, {}, b"Bad Gateway"))).get("/v1/vms")
    with pytest.raises(CliError, match="not JSON"):
        Client("http://ctl", TOKEN, FakeTransport(Reply(200, {}, b"<html>"))).get("/v1/vms")


@pytest.mark.parametrize(
    "error, why",
    [
        (urllib.error.URLError(ConnectionRefusedError(111, "Connection refused")), "connection refused"),
        (urllib.error.URLError(TimeoutError("timed out")), "timed out"),
        (TimeoutError("timed out"), "timed out"),
        (urllib.error.URLError(OSError(113, "No route to host")), "No route to host"),
    ],
)
def test_an_unreachable_controller_is_named_by_its_url(error, why):
    with pytest.raises(CliError) as caught:
        Client("http://10.1.2.3:8080", TOKEN, FakeTransport(error)).get("/v1/health")
    assert caught.value.message.startswith("cannot reach the controller at http://10.1.2.3:8080: ")
    assert why in caught.value.message and TOKEN not in caught.value.message


def test_the_real_transport_reports_a_refused_connection(unused_port):
    with pytest.raises(CliError, match=f"cannot reach the controller at http://127.0.0.1:{unused_port}: connection refused"):
        Client(f"http://127.0.0.1:{unused_port}", TOKEN, UrllibTransport(), timeout=2).get("/v1/health")


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again: nothing listens there


def test_a_redirect_is_not_followed_with_the_token(tmp_path):
    """A server that redirects: the client reports it and never sends the token to the new place."""
    import http.server
    import threading

    seen: list[tuple[str, str | None]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            seen.append((self.path, self.headers.get("Authorization")))
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        with pytest.raises(CliError, match=r"redirect \(HTTP 302\) to /elsewhere: use that URL"):
            Client(url, TOKEN, UrllibTransport(), timeout=5).get("/v1/vms")
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [("/v1/vms", f"Bearer {TOKEN}")]  # one request, to the configured URL only
