"""REST fuzzing: schemathesis generates thousands of requests from docs/openapi.yaml (as the
controller serves it) and sends them into Ryu's WSGI application with our routes, against a
controller that holds VMs on a leaf-spine, rules, tokens, a quarantine, alerts and two connected
agents.

Every answer must be one the document declares for its operation (status, content type, required
headers, body schema), and none may be a 5xx. A request that the document calls valid may be
refused only for a reason no schema can state: a name that does not exist (yet, or any more) or a
rule across fields. Any other refusal means the document accepts what the code refuses, as it did
for empty MACs and selectors (issue 10).

Deterministic: Hypothesis is derandomized and keeps no database, and every operation starts from
the same state, so CI sees the same cases on every run."""

from __future__ import annotations

import collections
import functools
import json
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi import checks

from apps import alerts, quarantine
from apps.errors import FieldError
from apps.inventory import vm_from_json
from apps.policy import rule_from_json
from apps.remediation import parse_allow_list
from controller import auth
from controller.store import Store
from tests.api_contract import Answer, load_spec
from tests.api_stub import make_api, rest
from tests.fakeoftable import build_leaf_spine
from tests.unit.test_api_agents import connect, enroll

CASES_PER_MODE = 60  # Hypothesis examples per operation and generation mode (positive, negative)
MIN_CASES = 2000

# Who sends a case: mostly the admin, so that writes get past authentication, and sometimes a
# read-only token, a wrong one or none at all.
CALLERS = ("admin",) * 6 + ("read-only", "wrong", "none")

# Why a request the document calls valid may still get a 400: (field, the error's wording).
# Everything here depends on the state or on two fields at once; a JSON Schema cannot say it.
BEYOND_THE_SCHEMA = [
    ("vm", r"no VM named|is not a VM of the inventory|is not in quarantine|is already in quarantine"),
    ("mirror_to", r"no VM named|is in quarantine itself|cannot be its own analyzer"),
    ("order", r"must name every rule exactly once"),
    ("position", r"must be an integer from 0 to \d+|must be between 0 and \d+"),  # at most the rule count
    ("name", r"the body names .* but the path names"),  # PUT /v1/policies/{name}
    ("macs|ips", r"lists the same address twice"),  # 02:00:00:00:00:01 and 02-00-00-00-00-01 are one MAC
    ("remove", r"is both set and removed"),
    (r"allow\[\d+\]\.name", r"appears twice"),
    (r"(allow\[\d+\]\.)?services", r"is backwards"),  # tcp/90-80
    ("dport", r"needs proto tcp or udp"),
]

CHECKS = [
    not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
]

VMS = {
    "web1": {"labels": {"tier": "web", "tenant": "blue"}},
    "db1": {"ips": ["10.0.0.2"], "labels": {"tier": "db", "tenant": "blue", "sensitivity": "pci"}},
    "app1": {"ips": ["10.0.0.3"], "labels": {"tier": "app", "tenant": "red"}},
    "spare": {"labels": {}},
}
RULES = [
    {"name": "web-db", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "encrypt"},
    {"name": "deny-pci", "src": "any", "dst": "sensitivity in (pci)", "action": "deny"},
    {"name": "red", "src": "tenant=red", "dst": "!sensitivity", "services": ["udp/53", "icmp"], "action": "allow"},
]


@dataclass
class Controller:
    """A populated controller and what a case may name in it."""

    app: object
    wsgi: object
    contract: object
    tokens: dict[str, str | None]
    known: dict[str, list[str]]


def populated(state_dir) -> Controller:
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2)
    app, client = make_api(state_dir, fabric.topo)
    for (name, doc), host in zip(VMS.items(), fabric.vms, strict=True):
        assert client.call("PUT", f"/v1/vms/{name}", {"macs": [host.mac], **doc}).status == 201
    for rule in RULES:
        assert client.call("POST", "/v1/policies", rule).status == 201
    reader = client.call("POST", "/v1/tokens", {"name": "dashboard"}).json["token"]
    allow = [{"name": "dns", "to": "tier=db", "services": ["udp/53"]}]
    assert client.call("PUT", "/v1/remediation", {"allow": allow}).status == 200
    quarantine = {"vm": "app1", "reason": "scanning", "mode": "remediate", "mirror_to": "db1"}
    assert client.call("POST", "/v1/quarantine", quarantine).status == 201
    assert client.call("POST", "/v1/alerts", {"vm": "db1", "severity": "low", "source": "ids", "signature": "x"}).status == 201
    for index, hypervisor in enumerate(("hv1", "hv2"), 1):
        connect(app, hypervisor, enroll(app, client, hypervisor), address=index)
    app.agents.set_needed([("hv1", "hv2")])
    known = {
        "vm": sorted(VMS),
        "free vm": ["spare", "web1"],  # not in quarantine, and not the analyzer below
        "analyzer": ["db1"],
        "rule": [r["name"] for r in RULES],
        "token": ["dashboard", "admin"],
        "hypervisor": ["hv1", "hv2"],
        "dpid": [f"{d:016x}" for d in fabric.hypervisors],
        "party": [*VMS, fabric.vms[0].mac, "10.0.0.2"],
    }
    tokens = {"admin": app.admin_token, "read-only": reader, "wrong": "not-a-token", "none": None}
    return Controller(app, client.wsgi, client.contract, tokens, known)


# Where a case may name something that exists: (operation, location, name) -> kind of `known`.
NAMED = {
    ("/v1/vms/{name}", "path", "name"): "vm",
    ("/v1/vms/{name}/labels", "path", "name"): "vm",
    ("/v1/policies/{name}", "path", "name"): "rule",
    ("/v1/tokens/{name}", "path", "name"): "token",
    ("/v1/quarantine/{vm}", "path", "vm"): "vm",
    ("/v1/agents/{hypervisor}", "path", "hypervisor"): "hypervisor",
    ("/v1/agents/{hypervisor}/rotate-identity", "path", "hypervisor"): "hypervisor",
    ("/v1/switches/{dpid}/flows", "path", "dpid"): "dpid",
    ("/v1/explain", "query", "src"): "party",
    ("/v1/explain", "query", "dst"): "party",
    ("/v1/alerts", "query", "vm"): "vm",
    ("/v1/quarantine", "body", "vm"): "free vm",
    ("/v1/quarantine", "body", "mirror_to"): "analyzer",
    ("/v1/alerts", "body", "vm"): "party",
}


EXISTING = st.sampled_from([True, True, True, False])  # mostly: random names mostly find nothing


def name_existing_things(case, controller: Controller, data) -> None:
    """Mostly, point the case's names at things that exist, so GETs find them, DELETEs
    delete them and references resolve; the values stay valid for the document."""
    for (path, location, key), kind in NAMED.items():
        if case.path != path or not data.draw(EXISTING, label=f"name an existing {kind}"):
            continue
        value = data.draw(st.sampled_from(controller.known[kind]))
        if location == "path":
            case.path_parameters[key] = value
        elif location == "query" and key in (case.query or {}):
            case.query[key] = value
        elif location == "body" and isinstance(case.body, dict) and key in case.body and case.method != "GET":
            case.body[key] = value
    if case.path == "/v1/policies/order" and case.method == "PUT" and data.draw(st.booleans(), label="a full order"):
        case.body = {"order": data.draw(st.permutations(controller.known["rule"]))}


def beyond_the_schema(answer: Answer) -> bool:
    body = answer.json if answer.content_type == "application/json" else {}
    where, error = body.get("field", ""), body.get("error", "")
    return any(re.fullmatch(f, where) and re.search(e, error) for f, e in BEYOND_THE_SCHEMA)


@dataclass
class Tally:
    cases: int = 0
    statuses: collections.Counter = field(default_factory=collections.Counter)
    problems: dict[tuple[str, str], list[str]] = field(default_factory=dict)

    def successes(self) -> int:
        return sum(n for status, n in self.statuses.items() if 200 <= status < 300)

    def problem(self, operation: str, what: str, example: str) -> None:
        self.problems.setdefault((operation, what), []).append(example)

    def report(self) -> str:
        lines = []
        for (operation, what), examples in sorted(self.problems.items()):
            lines.append(f"{operation}: {what} ({len(examples)} cases), e.g.\n    {examples[0][:600]}")
        return "\n".join(lines)


def fuzz_operation(operation, mode: GenerationMode, controller: Controller, tally: Tally) -> None:
    label = f"{operation.label} ({mode.value})"

    @given(data=st.data())
    @settings(
        max_examples=CASES_PER_MODE,
        derandomize=True,
        database=None,
        deadline=None,
        phases=(Phase.explicit, Phase.generate),  # failures are collected, not shrunk
        suppress_health_check=list(HealthCheck),
    )
    def one(data):
        case = data.draw(operation.as_strategy(generation_mode=mode))
        if mode is GenerationMode.POSITIVE:
            name_existing_things(case, controller, data)
        caller = data.draw(st.sampled_from(CALLERS), label="caller")
        token = controller.tokens[caller]
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = case.call(headers=headers, app=controller.wsgi)
        tally.cases += 1
        tally.statuses[response.status_code] += 1
        curl = f"{caller}: {case.as_curl_command(headers=headers)} -> {response.status_code} {response.content[:300]!r}"
        answer = Answer(response.status_code, {k: ", ".join(v) for k, v in response.headers.items()}, response.content)
        path = urllib.parse.urlsplit(response.request.url).path
        # An invalid path parameter can make another documented path (GET /v1/policies/order is
        # not GET /v1/policies/{name}): then the contract below judges it by the path it took.
        if controller.contract.template(case.method, path) == operation.path:
            try:
                case.validate_response(response, checks=CHECKS, headers=headers)
            except FailureGroup as group:
                for failure in group.exceptions:
                    tally.problem(label, failure.title, curl)
        try:
            controller.contract.check(case.method, path, answer)
        except AssertionError as exc:
            tally.problem(label, f"tests/api_contract.py: {str(exc)[:120]}", curl)
        if mode is GenerationMode.POSITIVE and answer.status == 400 and not beyond_the_schema(answer):
            tally.problem(label, "a request valid by the document was refused (400)", curl)

    try:
        one()
    except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
        assert mode is GenerationMode.NEGATIVE, label


def reload_policy(state_dir):
    """The policy as the next start of the controller loads it from the store."""
    store = Store(state_dir)
    try:
        return store.load_policy()
    finally:
        store.close()


def survives_a_restart(state_dir, controller: Controller, label: str, tally: Tally) -> None:
    """What the requests left in the store loads again, as the controller holds it: no accepted
    input may stop the next start."""
    try:
        reloaded = reload_policy(state_dir)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        tally.problem(label, "the state no longer loads", f"{type(exc).__name__}: {exc}")
        return
    finally:
        controller.app.store.close()
    if reloaded != controller.app.policy:
        tally.problem(label, "the state loads differently", f"{reloaded} != {controller.app.policy}")


@pytest.fixture(scope="module")
def schema(tmp_path_factory):
    """The document as GET /v1/openapi.json serves it."""
    app, client = make_api(tmp_path_factory.mktemp("served"))
    return schemathesis.openapi.from_wsgi("/v1/openapi.json", client.wsgi, headers={"Authorization": f"Bearer {app.admin_token}"})


def test_thousands_of_generated_requests_get_documented_answers_and_never_a_5xx(schema, tmp_path):
    tally = Tally()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 35
    succeeded = set()
    for number, operation in enumerate(operations):
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # Each operation and mode starts from the same state: the cases cannot depend on order.
            state_dir = tmp_path / f"{number}-{mode.value}"
            controller = populated(state_dir)
            before = tally.successes()
            fuzz_operation(operation, mode, controller, tally)
            survives_a_restart(state_dir, controller, f"{operation.label} ({mode.value})", tally)
            if tally.successes() > before:
                succeeded.add(operation.label)
    print(f"{tally.cases} cases; answers by status: {dict(sorted(tally.statuses.items()))}")
    assert not tally.problems, tally.report()
    assert tally.cases >= MIN_CASES
    assert not [status for status in tally.statuses if status >= 500]
    assert {200, 201, 204, 400, 401, 403, 404, 409} <= set(tally.statuses), (
        "writes, refusals and authentication were all exercised"
    )
    missed = sorted({o.label for o in operations} - succeeded)
    assert not missed, f"never answered 2xx, so never exercised past its checks: {missed}"


# -- the document refuses what the code refuses ------------------------------------------------
# For each restricted field: the request that carries a value, and the code that checks it. A value
# the code refuses must be invalid by the document too, or clients (and the fuzzing above) are
# told that it works. Validated with jsonschema-rs, which reads patterns as ECMA 262 (as JSON
# Schema says and schemathesis does): Python's `$` would let a trailing newline through.
MAC = "02:00:00:00:00:01"
RULE = {"name": "r", "src": "any", "dst": "any", "action": "allow"}


@dataclass(frozen=True)
class Restricted:
    """A field the code restricts: the request that carries a value (path parameters, body), and the
    code's own check of that value. `seeds` are valid values to break."""

    method: str
    path: str
    request: Any  # value -> (path parameters, body)
    check: Any  # value -> raises FieldError or ApiError if the code refuses it
    seeds: tuple[str, ...]


def _vm(name: str = "vm", **fields) -> tuple[dict, dict]:
    return {"name": name}, {"macs": [MAC], **fields}


def _allow(**rule) -> list[dict]:
    return [{"name": "a", "to": "any", "services": ["any"], **rule}]


def _alert(**fields) -> dict:
    return {"vm": "web1", "severity": "low", "source": "ids", "signature": "s", **fields}


FIELDS = {
    "VM name": Restricted(
        "PUT", "/v1/vms/{name}", lambda v: _vm(v), lambda v: vm_from_json(v, _vm()[1]), ("web1", "a", "A-b_c.9", "x" * 63)
    ),
    "MAC": Restricted(
        "PUT", "/v1/vms/{name}", lambda v: _vm(macs=[v]), lambda v: vm_from_json("vm", {"macs": [v]}),
        (MAC, "02-AA-bb-CC-dd-EE", "fe:ff:ff:ff:ff:ff"),
    ),
    "IPv4 address": Restricted(
        "PUT", "/v1/vms/{name}", lambda v: _vm(ips=[v]), lambda v: vm_from_json("vm", _vm(ips=[v])[1]),
        ("10.0.0.1", "0.1.2.3", "223.255.255.255", "240.0.0.1"),
    ),
    "label key": Restricted(
        "PUT", "/v1/vms/{name}", lambda v: _vm(labels={v: "x"}), lambda v: vm_from_json("vm", _vm(labels={v: "x"})[1]),
        ("tier", "example.com/tier", "a_b.c-D"),
    ),
    "label value": Restricted(
        "PUT", "/v1/vms/{name}", lambda v: _vm(labels={"k": v}), lambda v: vm_from_json("vm", _vm(labels={"k": v})[1]),
        ("web", "", "A.b-c_9"),
    ),
    "label to remove": Restricted(
        "PATCH", "/v1/vms/{name}/labels", lambda v: ({"name": "vm"}, {"remove": [v]}),
        lambda v: rest.label_patch({"remove": [v]}), ("tier", "example.com/tier"),
    ),
    "rule name": Restricted(
        "POST", "/v1/policies", lambda v: ({}, {**RULE, "name": v}), lambda v: rest.checked_rule({**RULE, "name": v}),
        ("web-db", "orders", "defaults", "Order"),
    ),
    "selector": Restricted(
        "POST", "/v1/policies", lambda v: ({}, {**RULE, "src": v}), lambda v: rule_from_json({**RULE, "src": v}),
        ("any", "unmanaged", "tier=web", " tier = web , env!=dev ", "zone in (a,b)", "k notin (,a)", "!pci", "a.b/c==", "x,!y"),
    ),
    "service": Restricted(
        "POST", "/v1/policies", lambda v: ({}, {**RULE, "services": [v]}), lambda v: rule_from_json({**RULE, "services": [v]}),
        ("any", "icmp", "tcp", "udp/53", "tcp/1-65535"),
    ),
    "allow-list peers": Restricted(
        "PUT", "/v1/remediation", lambda v: ({}, {"allow": _allow(to=v)}), lambda v: parse_allow_list(_allow(to=v)),
        ("any", "role=dns"),
    ),
    "allow rule name": Restricted(
        "PUT", "/v1/remediation", lambda v: ({}, {"allow": _allow(name=v)}), lambda v: parse_allow_list(_allow(name=v)),
        ("dns", "a.b"),
    ),
    "token name": Restricted(
        "POST", "/v1/tokens", lambda v: ({}, {"name": v}), lambda v: auth.check_token_request({"name": v}), ("ci", "build-1.x")
    ),
    "quarantine reason": Restricted(
        "POST", "/v1/quarantine", lambda v: ({}, {"vm": "web1", "reason": v}),
        lambda v: quarantine.check_request({"vm": "web1", "reason": v}), ("scan", " x ", "r" * 500),
    ),
    "alert source": Restricted(
        "POST", "/v1/alerts", lambda v: ({}, _alert(source=v)), lambda v: alerts.check_request(_alert(source=v)),
        ("suricata", "s" * 200),
    ),
    "alert VM": Restricted(
        "POST", "/v1/alerts", lambda v: ({}, _alert(vm=v)), lambda v: alerts.check_request(_alert(vm=v)),
        ("web1", MAC, "10.0.0.1"),
    ),
}  # fmt: skip
# Characters that break the seeds above in the ways that matter: control characters, blanks,
# separators, letters outside ASCII and the characters of each syntax.
NOISE = "\n\r\t\x00\x1c\x85\u00a0\ufeff é²١/.,:;=!()-_ *AZaz09"
REFUSED_BY_HAND = [
    "", " ", "\n", "x\n", "\nx", " x", "x ", "é", "1" * 64, "-a", "a-", "order", "default",  # names
    "any,tier=web", "unmanaged,x", "k in ()", "k in (,)", "k in ( )", "k=v=w", "k in (a", "(k)",  # selectors
    "tcp/0", "tcp/65536", "icmp/1", "tcp/80-", "tcp/²", "tcp/١٢", "sctp",  # services (tcp/90-80: no schema can say)
    "01:00:5e:00:00:01", "00:00:00:00:00:00", "02:00:00:00:00", "02:00:00:00:00:0g", "020000000001",  # MACs
    "224.0.0.1", "0.0.0.0", "255.255.255.255", "010.0.0.1", "10.0.0", "256.1.1.1", "10.0.0.1/8",  # IPv4
    "x" * 201, "x" * 501, "Ex.com/k", "a/b/c", "/k", "k/",  # lengths, label keys
]  # fmt: skip


def spec_accepts(spec: dict, validators: dict, restricted: Restricted, value: str) -> bool:
    path_values, body = restricted.request(value)
    item = spec["paths"][restricted.path]
    operation = item[restricted.method.lower()]
    parameters = [_resolve(spec, p) for p in (*item.get("parameters", []), *operation.get("parameters", []))]
    parts = [(p["schema"], path_values[p["name"]]) for p in parameters if p["in"] == "path"]
    parts.append((operation["requestBody"]["content"]["application/json"]["schema"], body))
    for schema, instance in parts:
        key = json.dumps(schema, sort_keys=True)
        if key not in validators:
            validators[key] = jsonschema_rs.validator_for({"allOf": [schema], "components": spec["components"]})
        if not validators[key].is_valid(instance):
            return False
    return True


def _resolve(spec: dict, node: dict) -> dict:
    while "$ref" in node:
        node = functools.reduce(lambda at, part: at[part], node["$ref"].removeprefix("#/").split("/"), spec)
    return node


def code_accepts(restricted: Restricted, value: str) -> bool:
    try:
        restricted.check(value)
    except (FieldError, rest.ApiError):
        return False
    return True


def test_the_document_refuses_every_value_the_code_refuses():
    """Hand-picked values, and the valid seeds broken at random (Hypothesis, derandomized)."""
    spec, validators = load_spec(), {}
    disagreements: dict[str, set[str]] = collections.defaultdict(set)
    refused: collections.Counter = collections.Counter()

    def judge(name: str, value: str) -> None:
        restricted = FIELDS[name]
        if not code_accepts(restricted, value):
            refused[name] += 1
            if spec_accepts(spec, validators, restricted, value):
                disagreements[name].add(value)

    edits = st.lists(st.tuples(st.integers(0, 80), st.sampled_from(NOISE), st.booleans()), min_size=1, max_size=3)
    for name, restricted in FIELDS.items():
        for seed in restricted.seeds:
            assert code_accepts(restricted, seed) and spec_accepts(spec, validators, restricted, seed), (
                f"{name}: {seed!r} is valid"
            )
        for value in REFUSED_BY_HAND:
            judge(name, value)

        @given(name=st.just(name), seed=st.sampled_from(restricted.seeds), edits=edits)
        @settings(max_examples=300, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
        def broken(name, seed, edits):
            value = seed
            for position, char, insert in edits:
                position %= len(value) + 1
                value = value[:position] + char + value[position + (0 if insert else 1) :]
            judge(name, value)

        broken()
    assert not disagreements, "the document accepts what the code refuses:\n" + "\n".join(
        f"  {name}: {sorted(values)[:12]!r}" for name, values in disagreements.items()
    )
    assert all(refused[name] >= 3 for name in FIELDS), refused


def test_integer_parameters_have_the_bounds_the_code_enforces(tmp_path):
    """Each integer the API takes: at and just beyond its documented bounds, the code accepts
    exactly what the document does."""
    app, client = make_api(tmp_path)
    for name, doc in {"web1": {"macs": [MAC], "ips": ["10.0.0.1"]}, "db1": {"macs": ["02:00:00:00:00:02"]}}.items():
        assert client.call("PUT", f"/v1/vms/{name}", doc).status == 201
    spec = load_spec()
    parameters = {
        ("GET", "/v1/audit", "limit"): lambda n: client.call("GET", f"/v1/audit?limit={n}", check=False),
        ("GET", "/v1/audit", "before"): lambda n: client.call("GET", f"/v1/audit?before={n}", check=False),
        ("GET", "/v1/alerts", "limit"): lambda n: client.call("GET", f"/v1/alerts?limit={n}", check=False),
        ("GET", "/v1/explain", "dport"): lambda n: client.call(
            "GET", f"/v1/explain?src=web1&dst=db1&proto=tcp&dport={n}", check=False
        ),
        ("POST", "/v1/policies", "position"): lambda n: client.call(
            "POST", f"/v1/policies?position={n}", {**RULE, "name": f"r{n}"}, check=False
        ),
    }
    for (method, path, name), send in parameters.items():
        operation = spec["paths"][path][method.lower()]
        (schema,) = [_resolve(spec, p)["schema"] for p in operation["parameters"] if _resolve(spec, p)["name"] == name]
        low, high = schema["minimum"], schema.get("maximum")
        for n in [low - 1, low, *([high, high + 1] if high is not None else [])]:
            documented = low <= n and (high is None or n <= high)
            answer = send(n)
            assert (answer.status < 300) == documented, f"{method} {path}?{name}={n}: {answer.status} {answer.raw[:200]!r}"
            if not documented:
                assert answer.status == 400 and answer.json["field"] == name
    body = spec["components"]["schemas"]["AgentTokenRequest"]["properties"]["ttl_seconds"]
    for ttl in (body["minimum"] - 0.5, body["minimum"], body["maximum"], body["maximum"] + 1):
        documented = body["minimum"] <= ttl <= body["maximum"]
        assert (client.call("POST", "/v1/agents/tokens", {"ttl_seconds": ttl}, check=False).status == 201) == documented, ttl


def test_a_rule_reads_back_in_a_form_the_api_takes_again_and_after_a_restart(tmp_path):
    """`k in (,)` was stored and shown as `k in ()`, which the API refuses: the rule could not be
    written back, and the controller could not load its own state at the next start."""
    app, client = make_api(tmp_path)
    for selector in ["k in (,)", "k notin ( , )", "k in (,a)", " k  in ( b ,, a ) ", "k=", "k!=", "! k", "a.b/c==d,x"]:
        answer = client.call("POST", "/v1/policies", {**RULE, "src": selector})
        if answer.status == 201:
            shown = {key: value for key, value in answer.json.items() if key != "position"}
            again = client.call("PUT", "/v1/policies/r", shown)
            assert again.status == 200 and again.json["src"] == shown["src"], (selector, again.raw)
            assert reload_policy(tmp_path) == app.policy, selector
            assert client.call("DELETE", "/v1/policies/r").status == 204
        else:
            assert answer.status == 400 and answer.json["field"] == "src", (selector, answer.raw)
    assert not app.policy.rules
