"""The CLI's HTTP client of the REST API: standard library only, errors as the API names them."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class Reply:
    """What the controller answered: status, headers (lower-case names) and the raw body."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class Transport(Protocol):
    """Sends one request; raises OSError when the controller cannot be reached."""

    def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: float) -> Reply: ...


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """urllib would follow a redirect with the Authorization header, to wherever it points: the
    token must only ever go to the URL the user configured, so a redirect is answered as it is."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001 - urllib's signature
        return None


class UrllibTransport:
    """The real transport: urllib, which also speaks https with the system's CA store."""

    def __init__(self) -> None:
        self._opener = urllib.request.build_opener(_NoRedirects)

    def send(self, method: str, url: str, headers: Mapping[str, str], body: bytes | None, timeout: float) -> Reply:
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers))
        try:
            with self._opener.open(request, timeout=timeout) as resp:
                return Reply(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as err:
            with err:
                return Reply(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())


class CliError(Exception):
    """Something went wrong talking to the controller: the CLI prints `message` and exits 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiError(CliError):
    """The controller refused a request: its status, message and the field it names."""

    def __init__(self, status: int, message: str, field: str | None = None, retry_after: str | None = None) -> None:
        self.status, self.api_message, self.field, self.retry_after = status, message, field, retry_after
        super().__init__(describe(status, message, field, retry_after))


def describe(status: int, message: str, field: str | None, retry_after: str | None) -> str:
    """One line an operator can act on, with the API's own message and the field it names."""
    where = f", field: {field}" if field else ""
    if status == 401:
        return f"not signed in (401): {message}"
    if status == 403:
        return f"permission denied (403): {message}"
    if status == 429:
        wait = f"retry in {retry_after} s" if retry_after else "retry later"
        return f"too many failed sign-ins from this address (429): {message}; {wait}"
    return f"{message} (HTTP {status}{where})"


def unreachable(url: str, exc: BaseException) -> CliError:
    reason = getattr(exc, "reason", exc)
    if isinstance(reason, ConnectionRefusedError):
        why = "connection refused (is the controller running there?)"
    elif isinstance(reason, TimeoutError | socket.timeout):
        why = "timed out"
    elif isinstance(reason, socket.gaierror):
        why = f"cannot resolve the host name ({reason.strerror})"
    elif isinstance(reason, ssl.SSLError):
        why = f"TLS failed ({reason.reason or reason})"
    else:
        why = getattr(reason, "strerror", None) or str(reason)
    return CliError(f"cannot reach the controller at {url}: {why}")


class Client:
    """Calls the API at `base_url` with a bearer token. Returns parsed JSON (None for 204);
    raises ApiError for a refusal and CliError when the controller cannot be reached."""

    def __init__(
        self,
        base_url: str,
        token: str | None,
        transport: Transport | None = None,
        timeout: float = 10.0,
        token_source: str | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.token_source = token_source  # where the token came from, for a 401's message
        self.transport = transport or UrllibTransport()
        self.timeout = timeout

    def __repr__(self) -> str:  # never the token
        return f"Client({self.base_url!r})"

    def url(self, path: str, query: Mapping[str, Any] | None = None) -> str:
        params = {k: str(v) for k, v in (query or {}).items() if v is not None}
        return self.base_url + path + (f"?{urllib.parse.urlencode(params)}" if params else "")

    def call(self, method: str, path: str, body: Any = None, query: Mapping[str, Any] | None = None) -> Any:
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            reply = self.transport.send(method, self.url(path, query), headers, data, self.timeout)
        except (OSError, ValueError) as exc:  # URLError is an OSError; ValueError: a URL urllib cannot use
            raise unreachable(self.base_url, exc) from None
        try:
            return self._parse(reply)
        except ApiError as exc:
            if exc.status == 401:
                raise CliError(self._signed_out(exc)) from None
            raise

    def _signed_out(self, exc: ApiError) -> str:
        if not self._token:
            return (
                f"no token (401): {exc.api_message}. Give one with --token-file FILE, GOLDILOCKS_TOKEN, "
                "GOLDILOCKS_TOKEN_FILE or token_file in the config file"
            )
        return f"the controller refused the token from {self.token_source or 'the command line'} (401): {exc.api_message}"

    @staticmethod
    def _parse(reply: Reply) -> Any:
        text = reply.body.decode("utf-8", errors="replace")
        try:
            doc = json.loads(text) if text.strip() else None
        except ValueError:
            doc = None
        if 200 <= reply.status < 300:
            if doc is None and text.strip():
                raise CliError(f"the controller answered HTTP {reply.status} with something that is not JSON")
            return doc
        if 300 <= reply.status < 400:
            where = reply.headers.get("location", "elsewhere")
            raise CliError(f"the controller's URL answered with a redirect (HTTP {reply.status}) to {where}: use that URL")
        if isinstance(doc, dict) and isinstance(doc.get("error"), str):
            raise ApiError(reply.status, doc["error"], doc.get("field"), reply.headers.get("retry-after"))
        raise ApiError(reply.status, text.strip()[:200] or "no details", None, reply.headers.get("retry-after"))

    def get(self, path: str, **query: Any) -> Any:
        return self.call("GET", path, query=query)


def segment(name: str) -> str:
    """A path segment: a VM, rule, token or hypervisor name, quoted so it cannot change the path."""
    return urllib.parse.quote(name, safe="")
