"""The API contract for tests: every response a test sees is checked against docs/openapi.yaml.

Two clients share one interface, `call(method, path, body=..., token=..., headers=..., raw=...)`
returning an `Answer`: `InProcessClient` sends webob requests straight into Ryu's WSGI
application (unit tests), `HttpClient` talks to a real controller process (integration tests).
Each checks the status, content type, required headers and body schema against the document and
records which (method, path template) it exercised."""

from __future__ import annotations

import functools
import http.client
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, FormatChecker

SPEC_FILE = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "patch")


@functools.cache
def _spec_text_parsed() -> str:
    return json.dumps(yaml.load(SPEC_FILE.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))


def load_spec() -> dict:
    """A fresh copy of the document (parsed once per test run)."""
    return json.loads(_spec_text_parsed())


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lower-case names
    raw: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip()

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    @property
    def text(self) -> str:
        return self.raw.decode()


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"\{[^}]+\}", template)
    return re.compile("^" + "[^/]+".join(re.escape(p) for p in parts) + "$")


@dataclass
class Contract:
    spec: dict = field(default_factory=load_spec)
    exercised: set[tuple[str, str]] = field(default_factory=set)

    def operations(self) -> set[tuple[str, str]]:
        return {(m.upper(), path) for path, item in self.spec["paths"].items() for m in METHODS if m in item}

    def template(self, method: str, path: str) -> str:
        """The documented path a concrete path falls under; fixed segments win over {params}."""
        candidates = [t for t in self.spec["paths"] if _template_regex(t).match(path)]
        assert candidates, f"{method} {path}: no documented path matches"
        return min(candidates, key=lambda t: t.count("{"))

    def resolve(self, node: dict) -> dict:
        while "$ref" in node:
            target: Any = self.spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    def validator(self, schema: dict) -> Draft202012Validator:
        return Draft202012Validator({"allOf": [schema], "components": self.spec["components"]}, format_checker=FormatChecker())

    def check(self, method: str, path: str, answer: Answer) -> None:
        """Assert that the answer is one the document promises for this operation."""
        template = self.template(method, urllib.parse.urlsplit(path).path)
        item = self.spec["paths"][template]
        if method.lower() not in item:
            assert answer.status == 405, f"{method} {path}: undocumented method answered {answer.status}"
            assert answer.content_type == "application/json" and set(answer.json) == {"error"}
            return
        responses = item[method.lower()]["responses"]
        assert str(answer.status) in responses, f"{method} {path}: status {answer.status} is not documented: {answer.raw[:300]!r}"
        documented = self.resolve(responses[str(answer.status)])
        for name, header in documented.get("headers", {}).items():
            if header.get("required"):
                assert name.lower() in answer.headers, f"{method} {path}: {answer.status} lacks the {name} header"
        content = documented.get("content")
        if not content:
            assert answer.raw == b"", f"{method} {path}: {answer.status} should have no body"
        else:
            assert answer.content_type in content, f"{method} {path}: content type {answer.content_type} is not documented"
            schema = content[answer.content_type]["schema"]
            body = answer.json if answer.content_type == "application/json" else answer.text
            errors = sorted(self.validator(schema).iter_errors(body), key=lambda e: list(e.path))
            assert not errors, f"{method} {path} {answer.status}: body does not match the schema: " + "; ".join(
                f"{list(e.path)}: {e.message}" for e in errors[:5]
            )
        self.exercised.add((method.upper(), template))


def _encode(body: Any, raw: bytes | None, headers: dict[str, str]) -> bytes | None:
    if raw is not None:
        return raw
    if body is None:
        return None
    headers.setdefault("Content-Type", "application/json")
    return json.dumps(body).encode()


@dataclass
class InProcessClient:
    """Requests into a Ryu WSGIApplication, no sockets."""

    wsgi: Any
    contract: Contract
    token: str | None = None

    def call(self, method, path, body=None, token=None, headers=None, raw=None, check=True) -> Answer:
        from webob import Request

        headers = dict(headers or {})
        data = _encode(body, raw, headers)
        token = token if token is not None else self.token
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        request = Request.blank(path, method=method, headers=headers)
        if data is not None:
            request.body = data
        response = request.get_response(self.wsgi)
        answer = Answer(response.status_int, {k.lower(): v for k, v in response.headers.items()}, response.body)
        if check:
            self.contract.check(method, path, answer)
        return answer


@dataclass
class HttpClient:
    """Requests over HTTP to a controller process."""

    base_url: str
    contract: Contract
    token: str | None = None

    def call(self, method, path, body=None, token=None, headers=None, raw=None, check=True, chunks=None) -> Answer:
        headers = dict(headers or {})
        data = _encode(body, raw, headers)
        token = token if token is not None else self.token
        if token:
            headers.setdefault("Authorization", f"Bearer {token}")
        url = urllib.parse.urlsplit(self.base_url)
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
        try:
            if chunks is not None:  # a chunked upload, which announces no length
                conn.request(method, path, body=iter(chunks), headers=headers)
            else:
                conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            answer = Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
        finally:
            conn.close()
        if check:
            self.contract.check(method, path, answer)
        return answer


def visible_state(client) -> tuple:
    """Everything a change through the API could touch, as a client sees it: compared before
    and after a refused request, it proves nothing was half-applied."""
    return tuple(client.call("GET", path).json for path in ("/v1/vms", "/v1/policies", "/v1/tokens", "/v1/audit?limit=1000"))
