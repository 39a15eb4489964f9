"""docs/openapi.yaml is a sound OpenAPI 3.1 document, describes exactly the routes the controller serves,
and every operation's real answers match it."""

from __future__ import annotations

import re

import pytest
from jsonschema import Draft202012Validator

from tests.api_contract import METHODS, Contract, load_spec
from tests.api_stub import make_api, rest  # api_stub readies eventlet for Ryu first
from tests.fakeoftable import build_leaf_spine


def walk(node, path=()):
    """Every (path, dict) in the document."""
    if isinstance(node, dict):
        yield path, node
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def test_every_ref_resolves_and_every_schema_is_valid_json_schema():
    spec = load_spec()
    assert spec["openapi"].startswith("3.1")
    contract = Contract(spec)
    for where, node in walk(spec):
        if "$ref" in node:
            assert node["$ref"].startswith("#/components/"), where
            contract.resolve(node)  # raises KeyError if dangling
    for name, schema in spec["components"]["schemas"].items():
        Draft202012Validator.check_schema(schema)
        assert schema.get("type") != "object" or "additionalProperties" in schema, f"{name}: say whether extra fields are allowed"
    for _where, node in walk(spec["paths"]):
        if "schema" in node:
            Draft202012Validator.check_schema(node["schema"])


def test_every_operation_is_identified_documented_and_declares_its_path_parameters():
    spec = load_spec()
    ids = []
    for path, item in spec["paths"].items():
        shared = [p["name"] for p in item.get("parameters", []) if "$ref" not in p]
        shared += [Contract(spec).resolve(p)["name"] for p in item.get("parameters", []) if "$ref" in p]
        for method in METHODS:
            if method not in item:
                continue
            operation = item[method]
            ids.append(operation["operationId"])
            assert operation.get("summary") and operation["responses"], f"{method} {path}"
            own = [Contract(spec).resolve(p) for p in operation.get("parameters", [])]
            declared = set(shared) | {p["name"] for p in own if p["in"] == "path"}
            assert set(re.findall(r"\{(\w+)\}", path)) <= declared, f"{method} {path}: undeclared path parameter"
            if method in ("put", "post", "patch"):
                assert "requestBody" in operation, f"{method} {path}: no request body documented"
    assert len(ids) == len(set(ids)), "operationIds are unique"


def test_the_document_lists_exactly_the_routes_the_controller_serves_and_who_may_call_them():
    spec = load_spec()
    served = {(e.method, e.path) for e in rest.ENDPOINTS}
    assert served == Contract(spec).operations()
    for declared in rest.ENDPOINTS:
        operation = spec["paths"][declared.path][declared.method.lower()]
        open_in_doc = operation.get("security", spec["security"]) == []
        assert open_in_doc == (declared.access == rest.OPEN), f"{declared.method} {declared.path}"
        if declared.access == rest.ADMIN:
            assert "403" in operation["responses"], f"{declared.method} {declared.path} should document 403"
        if declared.access != rest.OPEN:
            assert "401" in operation["responses"], f"{declared.method} {declared.path} should document 401"
        documented_query = {p["name"] for p in map(Contract(spec).resolve, operation.get("parameters", [])) if p["in"] == "query"}
        assert documented_query == set(declared.query), f"{declared.method} {declared.path}: query parameters"
        if declared.body:
            assert {"413", "415", "400"} <= set(operation["responses"]), f"{declared.method} {declared.path}"


def test_the_served_document_is_the_file(tmp_path):
    _, client = make_api(tmp_path)
    assert client.call("GET", "/v1/openapi.json").json == load_spec()
    assert client.call("GET", "/v1/openapi.json", token="").status == 401, "every /v1 endpoint but health needs a token"


@pytest.fixture
def tour(tmp_path):
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2)
    app, client = make_api(tmp_path, fabric.topo)
    return fabric, app, client


def test_every_documented_operation_answers_as_documented(tour):
    """One call of each operation (the client checks each answer against the document), then the
    document's coverage: nothing documented goes unexercised."""
    fabric, app, client = tour
    host = fabric.vms[0]
    dpid = f"{fabric.hypervisors[0]:016x}"
    steps = [
        ("GET", "/v1/health", None, 200),
        ("GET", "/v1/openapi.json", None, 200),
        ("GET", "/metrics", None, 200),
        ("GET", "/v1/topology", None, 200),
        ("GET", f"/v1/switches/{dpid}/flows", None, 200),
        ("PUT", "/v1/vms/web1", {"macs": [host.mac], "labels": {"tier": "web"}}, 201),
        ("PUT", "/v1/vms/db1", {"macs": ["02:00:00:00:00:02"], "ips": ["10.9.0.2"], "labels": {"tier": "db"}}, 201),
        ("GET", "/v1/vms", None, 200),
        ("GET", "/v1/vms?unmanaged=1", None, 200),
        ("GET", "/v1/vms/web1", None, 200),
        ("PATCH", "/v1/vms/db1/labels", {"set": {"pci": "yes"}}, 200),
        (
            "POST",
            "/v1/policies",
            {"name": "web-db", "src": "tier=web", "dst": "tier=db", "services": ["tcp/5432"], "action": "encrypt"},
            201,
        ),
        ("PUT", "/v1/policies/last", {"src": "any", "dst": "any", "action": "deny"}, 201),
        ("GET", "/v1/policies", None, 200),
        ("GET", "/v1/policies/web-db", None, 200),
        ("GET", "/v1/policies/order", None, 200),
        ("PUT", "/v1/policies/order", {"order": ["last", "web-db"]}, 200),
        ("GET", "/v1/policies/default", None, 200),
        ("PUT", "/v1/policies/default", {"default_action": "deny"}, 200),
        ("GET", "/v1/explain?src=web1&dst=db1&proto=tcp&dport=5432", None, 200),
        ("GET", f"/v1/explain?src={fabric.vms[1].mac}&dst=web1", None, 200),
        ("POST", "/v1/tokens", {"name": "ci", "role": "read-only"}, 201),
        ("GET", "/v1/tokens", None, 200),
        ("GET", "/v1/tokens/ci", None, 200),
        ("DELETE", "/v1/tokens/ci", None, 204),
        ("POST", "/v1/alerts", {"vm": "db1", "severity": "low", "source": "ids1", "signature": "scan"}, 201),
        ("GET", "/v1/alerts?vm=db1", None, 200),
        ("POST", "/v1/quarantine", {"vm": "web1", "reason": "an IDS said so"}, 201),
        ("GET", "/v1/quarantine", None, 200),
        ("GET", "/v1/quarantine/web1", None, 200),
        ("DELETE", "/v1/quarantine/web1", None, 204),
        ("PUT", "/v1/remediation", {"allow": [{"name": "dns", "to": "tier=db", "services": ["udp/53", "tcp/53"]}]}, 200),
        ("GET", "/v1/remediation", None, 200),
        ("POST", "/v1/quarantine", {"vm": "web1", "reason": "patching", "mode": "remediate", "mirror_to": "db1"}, 201),
        ("GET", "/v1/explain?src=web1&dst=db1&proto=udp&dport=53", None, 200),
        ("DELETE", "/v1/quarantine/web1", None, 204),
        ("POST", "/v1/agents/tokens", {"ttl_seconds": 600}, 201),
        ("GET", "/v1/agents", None, 200),
        ("GET", "/v1/agents/hv1", None, 404),
        ("POST", "/v1/agents/hv1/rotate-identity", None, 404),
        ("DELETE", "/v1/agents/hv1", None, 404),
        ("GET", "/v1/tunnels", None, 200),
        ("POST", "/v1/keys/rotate", None, 200),
        ("GET", "/v1/audit?limit=5", None, 200),
        ("GET", "/v1/whoami", None, 200),
        ("GET", "/v1/fabric", None, 200),
        ("GET", "/ui", None, 200),
        ("GET", "/ui/", None, 200),
        ("GET", "/ui/app.js", None, 200),
        ("DELETE", "/v1/policies/last", None, 204),
        ("DELETE", "/v1/vms/db1", None, 204),
    ]
    for method, path, body, status in steps:
        answer = client.call(method, path, body)
        assert answer.status == status, f"{method} {path}: {answer.status} {answer.raw[:200]!r}"
    assert client.contract.exercised == client.contract.operations()


def test_documented_error_answers_match_the_document_too(tour):
    fabric, app, client = tour
    for method, path, body, status in [
        ("GET", "/v1/switches/zz/flows", None, 400),
        ("GET", "/v1/switches/00000000000000ff/flows", None, 404),
        ("GET", "/v1/vms/nope", None, 404),
        ("PUT", "/v1/vms/x", {"macs": ["nope"]}, 400),
        ("GET", "/v1/explain?src=nope&dst=nope", None, 404),
        ("DELETE", "/v1/tokens/admin", None, 409),
        ("POST", "/v1/health", None, 405),
        ("PATCH", "/v1/vms/x", {"set": {}}, 405),
    ]:
        assert client.call(method, path, body).status == status, f"{method} {path}"
    unknown = client.call("GET", "/v1/nothing", check=False)
    assert unknown.status == 404 and unknown.json == {"error": "no such endpoint: GET /v1/nothing"}
    listing = client.call("GET", "/v1/topology").json
    assert len(listing["hosts"]) == len(fabric.vms) and {s["role"] for s in listing["switches"]} == {"hypervisor", "fabric"}
