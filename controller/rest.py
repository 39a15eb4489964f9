"""REST API on Ryu's WSGI server: VM inventory, policy rules, explain, tokens, audit, topology, health, metrics.

Every route is declared once with `endpoint` (method, path, who may call it, its query parameters,
whether it takes a JSON body). `register` connects them in declaration order, so fixed paths such
as /v1/policies/order are matched before /v1/policies/{name}. The wrapper authenticates, checks
query and body, and maps errors a client caused to 4xx JSON naming the field; anything else is a
500 without internals. docs/openapi.yaml describes every route and docs/api.md explains them."""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ryu.app.wsgi import ControllerBase, Response, route

from apps import alerts as alerts_mod
from apps import quarantine as quarantine_mod
from apps import remediation as remediation_mod
from apps import steering
from apps.context import NotFound, PolicyState
from apps.errors import FieldError
from apps.flows import FlowEntry
from apps.inventory import VM, InventoryError, check_labels, normalize_mac, vm_from_json
from apps.policy import Rule, evaluate, rule_from_json
from apps.selectors import KEY_RE
from apps.services import IP_PROTO
from controller import agents as agents_mod
from controller import audit, auth, webui
from controller import metrics as metrics_mod
from controller.auth import Principal
from controller.security import record_alert
from controller.store import SOURCE_API, StateFullError
from topology.model import KIND_DOWN, KIND_LOST_LINK, dpid_str

LOG = logging.getLogger("goldilocks.rest")
APP_KEY = "goldilocks"
LIMITER_KEY = "sign-in-limiter"
FABRIC_KEY = "fabric-document"  # webui.FabricDocument of fabric_view, shared by every request
MAX_BODY_BYTES = 64 * 1024
OPENAPI_FILE = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"

# Who may call an endpoint: anyone, any valid token, or an admin token.
OPEN, READ, ADMIN = "open", "read", "admin"

# /v1/policies/order and /v1/policies/default are not rules: a rule may not take those names,
# and /v1/policies/{name} does not match them (so DELETE /v1/policies/order is a 405).
RESERVED_RULE_NAMES = ("order", "default")
RULE_NAME = {"name": r"(?!(?:order|default)$)[^/]+"}


class ApiError(Exception):
    """An error a client caused: becomes a 4xx JSON response naming the field, if there is one."""

    def __init__(self, status: int, message: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.field = status, message, field
        self.headers = dict(headers or {})


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    response = Response(status=status, content_type="application/json", charset="utf-8", body=json.dumps(body, indent=1).encode())
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def no_content() -> Response:
    return Response(status=204)


def not_modified(headers: Mapping[str, str]) -> Response:
    response = Response(status=304)
    response.headers.update(headers)
    response.headers.pop("Content-Type", None)  # webob's default; a 304 describes the cached body
    return response


def error_response(status: int, message: str, field: str | None = None, headers: Mapping[str, str] | None = None) -> Response:
    body = {"error": message}
    if field is not None:
        body["field"] = field
    return json_response(body, status, headers)


# -- declaring endpoints ------------------------------------------------------------------
@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    action: str
    access: str
    query: frozenset[str] = frozenset()
    body: bool = False
    requirements: Mapping[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> tuple[str, ...]:
        """The methods it answers: HEAD wherever GET, the same answer without its body (webob drops it)."""
        return (self.method, "HEAD") if self.method == "GET" else (self.method,)

    def regex(self) -> re.Pattern:
        """The path as a regular expression, for the 404/405 fallback."""
        parts = re.split(r"\{(\w+)(?::[^}]*)?\}", self.path)
        pattern = "".join(
            re.escape(part) if i % 2 == 0 else f"(?:{self.requirements.get(part, '[^/]+')})" for i, part in enumerate(parts)
        )
        return re.compile(f"^{pattern}$")


ENDPOINTS: list[Endpoint] = []


@dataclass(frozen=True)
class Call:
    """One authorised request: the caller (None on open endpoints), its query parameters and JSON body."""

    principal: Principal | None
    query: Mapping[str, str]
    body: Any

    @property
    def actor(self) -> str:
        return self.principal.name if self.principal else "anonymous"


def endpoint(
    method: str,
    path: str,
    access: str,
    query: tuple[str, ...] = (),
    body: bool = False,
    requirements: Mapping[str, str] | None = None,
) -> Callable:
    def decorate(handler: Callable) -> Callable:
        declared = Endpoint(method, path, handler.__name__, access, frozenset(query), body, dict(requirements or {}))
        ENDPOINTS.append(declared)

        @functools.wraps(handler)
        def wrapper(self, req, **urlvars):
            return self.serve(declared, handler, req, urlvars)

        return wrapper

    return decorate


# -- request checks -----------------------------------------------------------------------
def authorize(store, declared: Endpoint, req, limiter: auth.SignInLimiter | None = None) -> Principal | None:
    if declared.access == OPEN:
        return None
    client = auth.SignInLimiter.client(req.remote_addr)
    wait = limiter.retry_after(client) if limiter is not None else 0.0
    if wait > 0:
        # Refused before the token is looked at, right or wrong: a guesser learns nothing while limited.
        raise ApiError(
            429, "too many failed sign-ins from this address; try again later", headers={"Retry-After": str(math.ceil(wait))}
        )
    header = req.headers.get("Authorization")
    principal = auth.authenticate(store, header)
    if principal is None:
        if limiter is not None:
            limiter.failed(client)
        # The header's value is never echoed or logged: it may be a mistyped real token.
        challenge = 'Bearer realm="goldilocks"' + (', error="invalid_token"' if header else "")
        message = "the bearer token is not valid" if header else "a bearer token is required (Authorization: Bearer <token>)"
        raise ApiError(401, message, headers={"WWW-Authenticate": challenge})
    if declared.access == ADMIN and not principal.is_admin:
        raise ApiError(
            403, f"token {principal.name!r} is {principal.role}; {declared.method} {declared.path} needs an admin token"
        )
    return principal


def parse_query(declared: Endpoint, req) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in req.GET.items():
        if key not in declared.query:
            allowed = ", ".join(sorted(declared.query)) or "none"
            raise ApiError(400, f"{key}: unknown query parameter (allowed: {allowed})", key)
        if key in params:
            raise ApiError(400, f"{key}: given more than once", key)
        params[key] = value
    return params


class _DuplicateKey(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict:
    result = {}
    for key, value in pairs:
        if key in result:
            raise _DuplicateKey(key)
        result[key] = value
    return result


def _no_constants(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


OPTIONAL_BODY = "optional"  # endpoint(body=OPTIONAL_BODY): no body at all is None


def read_json_body(req, optional: bool = False) -> Any:
    """The request's JSON body: 415 for another content type, 413 when too large, 400 when malformed.
    An optional body may be left out entirely (no Content-Type, nothing sent): then None."""
    if optional and not req.content_type and not req.content_length and "chunked" not in req.headers.get(
        "Transfer-Encoding", ""
    ).lower():
        return None
    if not req.headers.get("Content-Type"):
        raise ApiError(415, "Content-Type: missing; it must be application/json", "Content-Type")
    if req.content_type.lower() != "application/json":  # media types are case-insensitive
        raise ApiError(415, f"Content-Type must be application/json, not {req.content_type}", "Content-Type")
    if req.content_length is not None and req.content_length > MAX_BODY_BYTES:
        raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
    try:
        if req.content_length is not None:
            raw = req.body_file.read(MAX_BODY_BYTES + 1)
        elif "chunked" in req.headers.get("Transfer-Encoding", "").lower():
            raw = req.body_file_raw.read(MAX_BODY_BYTES + 1)  # the server de-chunks; read no more than we accept
        else:
            raw = b""
    except (OSError, ValueError):  # the client went away mid-body (eventlet raises IOError or ValueError)
        raw = None
    if raw is None or (req.content_length is not None and len(raw) < req.content_length):
        raise ApiError(400, "body: the connection ended before the whole body arrived", "body")
    if len(raw) > MAX_BODY_BYTES:  # a chunked upload gives no length up front
        raise ApiError(413, f"body: larger than {MAX_BODY_BYTES} bytes", "body")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "body: is not UTF-8", "body") from None
    if not text.strip():
        raise ApiError(400, "body: required (a JSON object)", "body")
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constants)
    except _DuplicateKey as exc:
        raise ApiError(400, f"{exc.args[0]}: key given twice in the same object", str(exc.args[0])) from None
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"body: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", "body") from None
    except RecursionError:
        raise ApiError(400, "body: nested too deeply", "body") from None
    except ValueError as exc:
        raise ApiError(400, f"body: malformed JSON: {exc}", "body") from None


def json_object(body: Any, allowed: frozenset[str]) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object", "body")
    unknown = set(body) - allowed
    if unknown:
        name = sorted(unknown)[0]
        raise ApiError(400, f"{name}: unknown field (allowed: {', '.join(sorted(allowed))})", name)
    return body


def flag(query: Mapping[str, str], name: str) -> bool:
    value = query.get(name, "0").lower()
    if value not in ("0", "1", "true", "false"):
        raise ApiError(400, f"{name}: must be 1 or 0", name)
    return value in ("1", "true")


_HEX_DPID = re.compile(r"[0-9a-fA-F]{1,16}")


def integer(query: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    if name not in query:
        return None
    text = query[name]
    # ASCII digits only (str.isdigit() also takes '²' and '①', which int() refuses, and other
    # scripts' digits, which it takes), and no more of them than the bound has (int() refuses
    # thousands, and 19 digits must pass when the bound is 2**63 - 1).
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(high)) or not low <= int(text) <= high:
        raise ApiError(400, f"{name}: must be an integer from {low} to {high}", name)
    return int(text)


# -- views ------------------------------------------------------------------------------
def host_view(host) -> dict:
    return {"mac": host.mac, "ips": sorted(host.ips), "dpid": dpid_str(host.dpid), "port": host.port}


def port_view(app, dpid: int, port, now: float) -> dict:
    """A port with its kind (down, pending, edge, inter-switch or lost-link), how often the kind
    changed, since when it holds (seconds), and whether the hypervisor declares it a VM port."""
    history = app.learner.port_history(dpid, port.port_no)
    return {
        "port_no": port.port_no,
        "name": port.name,
        "hw_addr": port.hw_addr,
        "up": port.up,
        "kind": history.kind,
        "kind_changes": history.changes,
        "kind_seconds": round(max(0.0, now - history.since), 3),
        "declared_vm": port.name in app.learner.declared_vm_interfaces,
    }


def match_view(entry: FlowEntry) -> dict:
    """An entry's match as JSON: OXM field name to value, or to [value, mask]."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in entry.match}


def topology_view(app) -> dict:
    topo = app.topo
    now = time.monotonic()
    switches = []
    for dpid in sorted(topo.switches):
        sw = topo.switches[dpid]
        switches.append(
            {
                "dpid": dpid_str(dpid),
                "name": sw.name,
                "role": topo.role(dpid),
                "connected": sw.connected,
                "converge_seconds": app.sync[dpid].converge_seconds if dpid in app.sync else None,
                "refused_flows": len(app.sync[dpid].refusals) if dpid in app.sync else 0,
                "ports": [
                    port_view(app, dpid, p, now)
                    for p in sorted(sw.ports.values(), key=lambda p: p.port_no)
                    if p.port_no < 0xFFFFFF00
                ],
            }
        )
    links = [
        {"src": {"dpid": dpid_str(lk.a.dpid), "port": lk.a.port}, "dst": {"dpid": dpid_str(lk.b.dpid), "port": lk.b.port}}
        for lk in sorted(topo.links, key=lambda lk: (lk.a.dpid, lk.a.port, lk.b.dpid, lk.b.port))
    ]
    hosts = [host_view(h) for h in sorted(topo.hosts.values(), key=lambda h: h.mac)]
    return {"switches": switches, "links": links, "hosts": hosts}


def vm_location(app, vm: VM) -> dict | None:
    """Where the network saw the VM: the first of its MACs that was learned, or None."""
    for mac in vm.macs:
        host = app.topo.hosts.get(mac)
        if host is not None:
            return host_view(host)
    return None


def fabric_view(app) -> dict:
    """Switches (role, connected, the agent that runs on a hypervisor, ports that are down or held as
    lost links: the page draws a link it saw before as down or lost from those), links with their state, VMs
    with labels, location and quarantine, unmanaged hosts, and tunnels with state and the time of
    their latest handshake. Nothing here changes by itself as time passes (handshake *times*, not
    ages), so that its ETag changes only when the fabric does; the X-Server-Time header lets the page
    compute ages against the controller's clock."""
    topo, policy, agents = app.topo, app.policy, app.agents
    agent_of_bridge = agents.hypervisor_of_bridge()
    endpoint_macs = {e.mac.lower() for e in agents.endpoints() if e.mac}
    switches = []
    for dpid in sorted(topo.switches):
        sw = topo.switches[dpid]
        kinds = {p: topo.port_kind(dpid, p) for p in sw.ports if p < 0xFFFFFF00}  # not the bridge's local port
        switches.append(
            {
                "dpid": dpid_str(dpid),
                "name": sw.name,
                "role": topo.role(dpid),
                "connected": sw.connected,
                "agent": agent_of_bridge.get(sw.name),
                "lost_ports": sorted(p for p, kind in kinds.items() if kind == KIND_LOST_LINK),
                "down_ports": sorted(p for p, kind in kinds.items() if kind == KIND_DOWN),
            }
        )

    def link_state(link) -> str:
        for end in link.ends():
            sw = topo.switches.get(end.dpid)
            port = sw.ports.get(end.port) if sw else None
            if sw is None or not sw.connected or port is None or not port.up:
                return "unconfirmed"  # kept while a switch is away: no probe can confirm or expire it
        return "up"

    links = [
        {"a": dpid_str(lk.a.dpid), "a_port": lk.a.port, "b": dpid_str(lk.b.dpid), "b_port": lk.b.port, "state": link_state(lk)}
        for lk in sorted(topo.links, key=lambda lk: (lk.a.dpid, lk.a.port, lk.b.dpid, lk.b.port))
    ]
    vms = []
    for name in sorted(policy.vms):
        vm = policy.vms[name]
        where = vm_location(app, vm)
        record = policy.quarantine.get(name)
        vms.append(
            {
                "name": name,
                "labels": vm.label_map,
                "macs": list(vm.macs),
                "ips": list(vm.ips),
                "location": {"dpid": where["dpid"], "port": where["port"]} if where else None,
                "quarantine": {"reason": record.reason, "mode": record.mode, "actor": record.actor, "since": record.at}
                if record
                else None,
            }
        )
    managed = policy.vm_by_mac()
    hosts = [
        host_view(h)
        for h in sorted(topo.hosts.values(), key=lambda h: h.mac)
        if h.mac not in managed and h.mac not in endpoint_macs  # endpoints are drawn as their tunnels
    ]
    tunnels = []
    for a, b in sorted(agents.pairs):
        view = agents.tunnel_view(a, b)
        tunnels.append(
            {"a": a, "b": b, "state": view["state"], "needed": view["needed"], "latest_handshake": view["latest_handshake"]}
        )
    return {"switches": switches, "links": links, "vms": vms, "hosts": hosts, "tunnels": tunnels}


def alert_view(alert_id: int, at: float, vm: str, request, action: str) -> dict:
    return {
        "id": alert_id,
        "time": audit.iso_time(at),
        "vm": vm,
        "target": request.target,
        "severity": request.severity,
        "source": request.source,
        "signature": request.signature,
        "action": action,
    }


def quarantine_view(app, record) -> dict:
    vm = app.policy.vms.get(record.vm)
    return {
        "vm": record.vm,
        "reason": record.reason,
        "mode": record.mode,
        "mirror_to": record.mirror_to,
        "allow": remediation_mod.allow_list_json(app.policy.allow_list(record)) if record.mode == "remediate" else None,
        "allow_from": ("request" if record.allow is not None else "configured") if record.mode == "remediate" else None,
        "actor": record.actor,
        "time": audit.iso_time(record.at),
        "macs": list(record.macs),
        "location": vm_location(app, vm) if vm is not None else None,
    }


def vm_view(app, vm: VM, source: str | None = None) -> dict:
    """The VM, where the network saw it, and who last wrote it: api, file or ovsdb."""
    if source is None:
        source = app.store.vm_source(vm.name)
    return {**vm.to_json(), "location": vm_location(app, vm), "source": source}


def unmanaged_hosts(app) -> list[dict]:
    managed = app.policy.vm_by_mac()
    return [host_view(h) for h in sorted(app.topo.hosts.values(), key=lambda h: h.mac) if h.mac not in managed]


def rule_view(rule: Rule, position: int) -> dict:
    return {**rule.to_json(), "position": position}


def rules_view(policy: PolicyState) -> dict:
    return {"default_action": policy.default_action, "policies": [rule_view(r, i) for i, r in enumerate(policy.rules)]}


def token_view(token) -> dict:
    return {"name": token.name, "role": token.role, "created": audit.iso_time(token.created), "fingerprint": token.fingerprint}


# -- explain ----------------------------------------------------------------------------------
def party(app, field_name: str, text: str) -> dict:
    """Resolve one end of a flow: a VM name, or a MAC or IPv4 address (of a VM or an unmanaged host)."""
    policy, topo = app.policy, app.topo

    def managed(vm: VM) -> dict:
        return {"query": text, "vm": vm.name, "labels": vm.label_map, "host": vm_location(app, vm)}

    def unmanaged(host) -> dict:
        return {"query": text, "vm": None, "labels": None, "host": host_view(host) if host else None}

    if text in policy.vms:
        return managed(policy.vms[text])
    try:
        mac = normalize_mac(text)
    except InventoryError:
        mac = None
    if mac is not None:
        vm = policy.vm_by_mac().get(mac)
        return managed(vm) if vm else unmanaged(topo.hosts.get(mac))
    try:
        ip = str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ApiError(404, f"{field_name}: no VM named {text!r}, and it is not a MAC or IPv4 address", field_name) from None
    vm = next((vm for vm in policy.vms.values() if ip in vm.ips), None)
    if vm is not None:
        return managed(vm)
    host = next((h for h in sorted(topo.hosts.values(), key=lambda h: h.mac) if ip in h.ips), None)
    vm = policy.vm_by_mac().get(host.mac) if host else None
    return managed(vm) if vm else unmanaged(host)


def encryption_view(app, src: dict, dst: dict) -> dict:
    """How an encrypt connection between two parties travels now: between VMs on one hypervisor it
    never leaves it ("local"); otherwise through the tunnel of their hypervisors' pair, which is up,
    pending (configured, no handshake yet) or down, or there is none: then it is dropped."""
    hypervisor_of = app.agents.hypervisor_of_bridge()

    def where(party_view: dict) -> tuple[int | None, str | None]:
        host = party_view.get("host")
        if host is None:
            return None, None
        dpid = int(host["dpid"], 16)
        switch = app.topo.switches.get(dpid)
        return dpid, hypervisor_of.get(switch.name) if switch else None

    (src_dpid, src_hv), (dst_dpid, dst_hv) = where(src), where(dst)
    view = {"src_hypervisor": src_hv, "dst_hypervisor": dst_hv, "tunnel": None, "tunnel_state": None}
    if src_dpid is None or dst_dpid is None:
        return {**view, "path": "unknown", "delivered": False, "why": "an end has not been seen on the network yet"}
    if src_dpid == dst_dpid:
        return {**view, "path": "local", "delivered": True, "why": "both VMs are on one hypervisor: nothing leaves it"}
    if src_hv is None or dst_hv is None:
        missing = [name for name, hv in (("src", src_hv), ("dst", dst_hv)) if hv is None]
        why = f"no enrolled agent on the {' and '.join(missing)} hypervisor: dropped (fail closed)"
        return {**view, "path": "none", "delivered": False, "why": why}
    a, b = sorted((src_hv, dst_hv))
    state = app.agents.tunnel_state(a, b)
    if state is None:
        return {**view, "path": "none", "delivered": False, "why": f"no tunnel {a}|{b} yet: dropped (fail closed)"}
    ports = steering.plan_from_topology(app.topo, app.agents.bridge_of_index())
    in_place = ports.port(src_dpid, dst_dpid) is not None and ports.port(dst_dpid, src_dpid) is not None
    delivered = in_place and state != "down"
    why = f"tunnel {a}|{b} is {state}" + ("" if in_place else "; its tunnel ports are not on both bridges yet")
    return {**view, "tunnel": f"{a}|{b}", "tunnel_state": state, "path": "tunnel", "delivered": delivered,
            "why": why + ("" if delivered else ": dropped (fail closed)")}  # fmt: skip


def remediation_verdict(policy: PolicyState, src: dict, dst: dict, proto: str | None, dport: int | None) -> dict | None:
    """For a flow with exactly one end in remediation (and the other not in quarantine): whether its
    allow-list lets it through, and which rule. None when isolation alone decides."""
    ends = [(p, policy.quarantine.get(p["vm"])) for p in (src, dst) if p["vm"] is not None and p["vm"] in policy.quarantine]
    if len(ends) != 1 or ends[0][1].mode != "remediate":
        return None
    party, record = ends[0]
    outbound = party is src
    peer = dst if outbound else src
    rule = remediation_mod.first_allowing(policy.allow_list(record), outbound, peer["labels"], proto, dport)
    return {"vm": record.vm, "action": "allow" if rule else "deny", "rule": rule.to_json() if rule else None}


def explain(app, query: Mapping[str, str]) -> dict:
    for name in ("src", "dst"):
        if not query.get(name):
            raise ApiError(400, f"{name}: required (a VM name, MAC or IPv4 address)", name)
    proto = query.get("proto")
    if proto is not None and proto not in IP_PROTO:
        raise ApiError(400, f"proto: must be one of {', '.join(IP_PROTO)}", "proto")
    dport = integer(query, "dport", 1, 65535)
    if dport is not None and proto not in ("tcp", "udp"):
        raise ApiError(400, "dport: needs proto tcp or udp", "dport")
    src, dst = party(app, "src", query["src"]), party(app, "dst", query["dst"])
    policy = app.policy
    quarantined = [p["vm"] for p in (src, dst) if p["vm"] is not None and p["vm"] in policy.quarantine]
    decision = evaluate(policy.rules, policy.default_action, src["labels"], dst["labels"], proto, dport)
    remediation = remediation_verdict(policy, src, dst, proto, dport) if quarantined else None
    rule = decision.rule
    match = None
    if rule is not None:

        def used(labels: dict | None, keys: frozenset[str]) -> dict | None:
            return None if labels is None else {k: v for k, v in labels.items() if k in keys}

        match = {
            "src_selector": str(rule.src),
            "dst_selector": str(rule.dst),
            "service": str(decision.service),
            "src_labels": used(src["labels"], rule.src.keys()),
            "dst_labels": used(dst["labels"], rule.dst.keys()),
        }
    return {
        "src": src,
        "dst": dst,
        "proto": proto,
        "dport": dport,
        "reason": "rule" if rule else "default",
        "rule": rule_view(rule, policy.rules.index(rule)) if rule else None,
        "match": match,
        "action": decision.action,
        "effective_action": (remediation["action"] if remediation else "deny") if quarantined else decision.effective_action,
        "quarantined": quarantined,
        "remediation": remediation,
        "encryption": encryption_view(app, src, dst) if decision.action == "encrypt" else None,
        "default_action": policy.default_action,
    }


# -- request bodies ---------------------------------------------------------------------------
def label_patch(body: Any) -> tuple[dict[str, str], list[str]]:
    """{"set": {key: value}, "remove": [key]}: validated, and no key both set and removed."""
    body = json_object(body, frozenset({"set", "remove"}))
    if not body:
        raise ApiError(400, 'body: give "set" and/or "remove"', "body")
    add = dict(check_labels(body.get("set", {}), "set"))
    remove = body.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(k, str) for k in remove):
        raise ApiError(400, "remove: must be a list of label keys", "remove")
    for key in remove:
        if not KEY_RE.fullmatch(key):
            raise ApiError(400, f"remove: {key!r} is not a valid label key", "remove")
        if key in add:
            raise ApiError(400, f"remove: {key!r} is both set and removed", "remove")
    return add, remove


def checked_rule(body: Any, name: str | None = None) -> Rule:
    rule = rule_from_json(body, name)
    if rule.name in RESERVED_RULE_NAMES:
        raise ApiError(400, f"name: {rule.name!r} is reserved (/v1/policies/{rule.name} is not a rule)", "name")
    return rule


_openapi_cache: dict[str, Any] = {}


def openapi_document() -> dict:
    if "doc" not in _openapi_cache:
        try:
            loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: ten times faster
            _openapi_cache["doc"] = yaml.load(OPENAPI_FILE.read_text(encoding="utf-8"), Loader=loader)
        except OSError:
            raise ApiError(404, "the OpenAPI document is not installed with this copy of the controller") from None
    return _openapi_cache["doc"]


# -- the endpoints ------------------------------------------------------------------------------
class GoldilocksApi(ControllerBase):
    """/v1 endpoints and /metrics. Handlers take a Call and the path's variables."""

    def __init__(self, req, link, data, **config) -> None:
        super().__init__(req, link, data, **config)
        self.app = data[APP_KEY]
        self.limiter: auth.SignInLimiter | None = data.get(LIMITER_KEY)

    def serve(self, declared: Endpoint, handler: Callable, req, urlvars: dict) -> Response:
        started = time.perf_counter()
        response = self.answer(declared, handler, req, urlvars)
        # Counted by the declared route template, never the raw path: the label set stays bounded.
        self.app.metrics.rest_request(req.method, declared.path, response.status_int, time.perf_counter() - started)
        return webui.secured(response) if declared.path.startswith("/ui") else response

    def answer(self, declared: Endpoint, handler: Callable, req, urlvars: dict) -> Response:
        try:
            # The router's patterns end in `$`, which also matches before a final newline: a request
            # for /v1/tokens/ghost%0A acted on "ghost". No name holds a control character.
            if any(c < " " or c == "\x7f" for c in req.path_info):
                raise ApiError(400, "path: control characters are not allowed in a path", "path")
            principal = authorize(self.app.store, declared, req, self.limiter)
            body = read_json_body(req, declared.body == OPTIONAL_BODY) if declared.body else None
            call = Call(principal, parse_query(declared, req), body)
            return handler(self, call, **urlvars)
        except ApiError as exc:
            return error_response(exc.status, exc.message, exc.field, exc.headers)
        except NotFound as exc:
            return error_response(404, str(exc))
        except FieldError as exc:
            return error_response(400, str(exc), exc.field)
        except StateFullError as exc:  # the transaction was rolled back: nothing of the request applied
            LOG.error("%s %s: %s", req.method, req.path, exc)
            return error_response(507, "the state database's disk is full; nothing was changed; retry once there is space")
        except Exception:
            LOG.exception("%s %s failed", req.method, req.path)
            return error_response(500, "internal error; see the controller log")

    def change_policy(
        self, call: Call, new: PolicyState, action: str, target: str, summary: str, defines_vm: str | None = None
    ) -> None:
        """Persist the new policy and its audit entry in one transaction, then apply it. A request
        that changes nothing writes nothing. No green thread can run between reading app.policy
        and this call (nothing here does I/O that yields), so no concurrent change is lost.

        `defines_vm` names a VM this request writes: the API becomes its source, so the VM is
        no longer the hypervisor's (OVSDB) to update or remove. That holds even when the
        content is unchanged: PUTting exactly what OVS publishes pins the VM."""
        app = self.app
        takes_over = defines_vm is not None and app.store.vm_source(defines_vm) != SOURCE_API
        if new == app.policy and not takes_over:
            return

        def write_more() -> None:
            audit.record(app.store, call.actor, action, target, summary)
            if defines_vm is not None:
                app.store.set_vm_sources([defines_vm], SOURCE_API)

        app.apply_policy(new, write_more=write_more)

    # -- service ----------------------------------------------------------------------------
    @endpoint("GET", "/v1/health", OPEN)
    def health(self, call):
        app = self.app
        return json_response(
            {
                "status": "ok",
                "uptime_seconds": round(time.time() - app.started_at, 3),
                "switches_connected": len(app.datapaths),
                "switches_synced": sum(1 for s in app.sync.values() if s.synced),
                "links": len(app.topo.links),
                "hosts": len(app.topo.hosts),
            }
        )

    @endpoint("GET", "/v1/openapi.json", READ)
    def openapi(self, call):
        return json_response(openapi_document())

    @endpoint("GET", "/metrics", OPEN)
    def metrics(self, call):
        response = Response(status=200, body=self.app.metrics.exposition())  # controller/metrics.py
        response.headers["Content-Type"] = metrics_mod.CONTENT_TYPE
        return response

    # -- the network --------------------------------------------------------------------------
    @endpoint("GET", "/v1/topology", READ)
    def topology(self, call):
        return json_response(topology_view(self.app))

    @endpoint("GET", "/v1/switches/{dpid}/flows", READ)
    def switch_flows(self, call, dpid):
        if not _HEX_DPID.fullmatch(dpid):
            raise ApiError(400, f"dpid: {dpid!r} is not a hex datapath id", "dpid")
        dpid_int = int(dpid, 16)
        if dpid_int not in self.app.topo.switches:
            raise ApiError(404, f"no switch with dpid {dpid}")
        flows = [
            {
                "cookie": f"0x{e.cookie:016x}",
                "table": e.table,
                "priority": e.priority,
                "match": match_view(e),
                "actions": [repr(a) for a in e.actions],
                "goto": e.goto,
                "write_metadata": list(e.metadata) if e.metadata else None,
            }
            for e in self.app.flows_for(dpid_int)
        ]
        sync = self.app.sync.get(dpid_int)
        now = time.monotonic()
        refused = [
            {
                "cookie": f"0x{cookie:016x}",
                "table": r.entry.table,
                "priority": r.entry.priority,
                "match": match_view(r.entry),
                "error": r.error,
                "attempts": r.attempts,
                "since_seconds": round(now - r.first_at, 3),
                "retry_in_seconds": round(max(0.0, r.retry_at - now), 3),
            }
            for cookie, r in sorted(sync.refusals.items() if sync is not None else ())
        ]
        return json_response({"dpid": dpid_str(dpid_int), "flows": flows, "refused": refused})

    # -- VM inventory ---------------------------------------------------------------------------
    @endpoint("GET", "/v1/vms", READ, query=("unmanaged",))
    def list_vms(self, call):
        if flag(call.query, "unmanaged"):
            return json_response({"unmanaged": unmanaged_hosts(self.app)})
        policy, sources = self.app.policy, self.app.store.vm_sources()
        return json_response({"vms": [vm_view(self.app, policy.vms[n], sources.get(n, SOURCE_API)) for n in sorted(policy.vms)]})

    @endpoint("GET", "/v1/vms/{name}", READ)
    def get_vm(self, call, name):
        return json_response(vm_view(self.app, self.app.policy.vm(name)))

    @endpoint("PUT", "/v1/vms/{name}", ADMIN, body=True)
    def put_vm(self, call, name):
        vm = vm_from_json(name, call.body)
        old = self.app.policy
        try:
            new = old.with_vm(vm)
        except InventoryError as exc:  # a MAC or IP another VM holds
            raise ApiError(409, str(exc), exc.field) from None
        created = name not in old.vms
        self.change_policy(call, new, "vm.create" if created else "vm.replace", name, audit.describe_vm(vm), defines_vm=name)
        if created:
            return json_response(vm_view(self.app, vm), 201, {"Location": f"/v1/vms/{name}"})
        return json_response(vm_view(self.app, vm))

    @endpoint("DELETE", "/v1/vms/{name}", ADMIN)
    def delete_vm(self, call, name):
        old = self.app.policy
        vm = old.vm(name)
        if name in old.quarantine:
            raise ApiError(409, f"{name!r} is in quarantine: release it (DELETE /v1/quarantine/{name}) first")
        self.change_policy(call, old.without_vm(name), "vm.delete", name, audit.describe_vm(vm))
        return no_content()

    @endpoint("PATCH", "/v1/vms/{name}/labels", ADMIN, body=True)
    def patch_labels(self, call, name):
        old = self.app.policy
        before = old.vm(name).label_map
        add, remove = label_patch(call.body)
        new = old.with_labels(name, add, remove)
        summary = audit.describe_label_change(before, new.vms[name].label_map)
        self.change_policy(call, new, "vm.labels", name, summary, defines_vm=name)
        return json_response(vm_view(self.app, new.vms[name]))

    # -- policy: fixed paths first, then /v1/policies/{name} ---------------------------------------
    @endpoint("GET", "/v1/policies", READ)
    def list_rules(self, call):
        return json_response(rules_view(self.app.policy))

    @endpoint("POST", "/v1/policies", ADMIN, query=("position",), body=True)
    def add_rule(self, call):
        old = self.app.policy
        rule = checked_rule(call.body)
        if any(r.name == rule.name for r in old.rules):
            raise ApiError(409, f"name: a rule named {rule.name!r} exists (PUT /v1/policies/{rule.name} replaces it)", "name")
        new = old.with_rule(rule, integer(call.query, "position", 0, len(old.rules)))
        position = new.rules.index(rule)
        self.change_policy(call, new, "rule.create", rule.name, audit.describe_rule(rule, position))
        return json_response(rule_view(rule, position), 201, {"Location": f"/v1/policies/{rule.name}"})

    @endpoint("GET", "/v1/policies/order", READ)
    def get_order(self, call):
        return json_response({"order": [r.name for r in self.app.policy.rules]})

    @endpoint("PUT", "/v1/policies/order", ADMIN, body=True)
    def put_order(self, call):
        body = json_object(call.body, frozenset({"order"}))
        names = body.get("order")
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ApiError(400, "order: must be a list of rule names", "order")
        new = self.app.policy.reordered(names)
        self.change_policy(call, new, "rule.order", "policies", " > ".join(names) or "(no rules)")
        return json_response({"order": [r.name for r in new.rules]})

    @endpoint("GET", "/v1/policies/default", READ)
    def get_default(self, call):
        return json_response({"default_action": self.app.policy.default_action})

    @endpoint("PUT", "/v1/policies/default", ADMIN, body=True)
    def put_default(self, call):
        body = json_object(call.body, frozenset({"default_action"}))
        old = self.app.policy
        new = old.with_default(body.get("default_action"))
        self.change_policy(call, new, "policy.default", "default_action", f"{old.default_action} -> {new.default_action}")
        return json_response({"default_action": new.default_action})

    @endpoint("GET", "/v1/policies/{name}", READ, requirements=RULE_NAME)
    def get_rule(self, call, name):
        policy = self.app.policy
        rule = policy.rule(name)
        return json_response(rule_view(rule, policy.rules.index(rule)))

    @endpoint("PUT", "/v1/policies/{name}", ADMIN, query=("position",), body=True, requirements=RULE_NAME)
    def put_rule(self, call, name):
        old = self.app.policy
        rule = checked_rule(call.body, name)
        created = all(r.name != name for r in old.rules)
        limit = len(old.rules) if created else len(old.rules) - 1
        new = old.with_rule(rule, integer(call.query, "position", 0, limit))
        position = new.rules.index(rule)
        self.change_policy(call, new, "rule.create" if created else "rule.replace", name, audit.describe_rule(rule, position))
        if created:
            return json_response(rule_view(rule, position), 201, {"Location": f"/v1/policies/{name}"})
        return json_response(rule_view(rule, position))

    @endpoint("DELETE", "/v1/policies/{name}", ADMIN, requirements=RULE_NAME)
    def delete_rule(self, call, name):
        old = self.app.policy
        rule = old.rule(name)
        self.change_policy(call, old.without_rule(name), "rule.delete", name, audit.describe_rule(rule, old.rules.index(rule)))
        return no_content()

    @endpoint("GET", "/v1/explain", READ, query=("src", "dst", "proto", "dport"))
    def explain(self, call):
        return json_response(explain(self.app, call.query))

    # -- tokens and audit -------------------------------------------------------------------------
    @endpoint("GET", "/v1/tokens", ADMIN)
    def list_tokens(self, call):
        return json_response({"tokens": [token_view(t) for t in self.app.store.tokens()]})

    @endpoint("POST", "/v1/tokens", ADMIN, body=True)
    def create_token(self, call):
        name, role = auth.check_token_request(call.body)
        store = self.app.store
        if any(t.name == name for t in store.tokens()):
            raise ApiError(409, f"name: a token named {name!r} exists", "name")
        with store.transaction():
            token, value = auth.issue(store, name, role)
            audit.record(store, call.actor, "token.create", name, f"{role} token {token.fingerprint}")
        # The value is shown this once; only its digest is kept.
        return json_response({**token_view(token), "token": value}, 201, {"Location": f"/v1/tokens/{name}"})

    @endpoint("GET", "/v1/tokens/{name}", ADMIN)
    def get_token(self, call, name):
        token = next((t for t in self.app.store.tokens() if t.name == name), None)
        if token is None:
            raise ApiError(404, f"no token named {name!r}")
        return json_response(token_view(token))

    @endpoint("DELETE", "/v1/tokens/{name}", ADMIN)
    def delete_token(self, call, name):
        store = self.app.store
        tokens = store.tokens()
        token = next((t for t in tokens if t.name == name), None)
        if token is None:
            raise ApiError(404, f"no token named {name!r}")
        if token.role == auth.ADMIN and sum(t.role == auth.ADMIN for t in tokens) == 1:
            raise ApiError(409, f"{name!r} is the last admin token; create another admin token first")
        with store.transaction():
            store.delete_token(name)
            audit.record(store, call.actor, "token.delete", name, f"{token.role} token {token.fingerprint}")
        return no_content()

    # -- quarantine ------------------------------------------------------------------------------------
    @endpoint("GET", "/v1/quarantine", READ)
    def list_quarantine(self, call):
        app = self.app
        return json_response({"quarantine": [quarantine_view(app, q) for _, q in sorted(app.policy.quarantine.items())]})

    @endpoint("POST", "/v1/quarantine", ADMIN, body=True)
    def quarantine_vm(self, call):
        request = quarantine_mod.check_request(call.body)
        name, mode = request.vm, request.mode
        old = self.app.policy
        if name not in old.vms:
            raise ApiError(400, f"vm: no VM named {name!r} in the inventory", "vm")
        macs = old.vms[name].macs
        record = quarantine_mod.Quarantine(
            name, request.reason, mode, call.actor, time.time(), macs, request.mirror_to, request.allow
        )
        new = old.with_quarantine(record)
        summary = f"{mode}: {request.reason}; macs {','.join(macs)}"
        if mode == "remediate":
            summary += f"; allow {','.join(r.name for r in new.allow_list(record)) or 'nothing'}"
        if request.mirror_to:
            summary += f"; mirror to {request.mirror_to}"
        self.change_policy(call, new, "vm.quarantine", name, summary)
        return json_response(quarantine_view(self.app, record), 201, {"Location": f"/v1/quarantine/{name}"})

    @endpoint("GET", "/v1/remediation", READ)
    def get_remediation(self, call):
        return json_response({"allow": remediation_mod.allow_list_json(self.app.policy.remediation)})

    @endpoint("PUT", "/v1/remediation", ADMIN, body=True)
    def put_remediation(self, call):
        body = call.body
        if not isinstance(body, dict) or set(body) != {"allow"}:
            raise ApiError(400, 'body: must be {"allow": [rules]}', "body")
        rules = remediation_mod.parse_allow_list(body["allow"])
        new = dataclasses.replace(self.app.policy, remediation=rules)
        names = ",".join(r.name for r in rules) or "nothing"
        self.change_policy(call, new, "remediation.set", "remediation", f"VMs in remediation may reach: {names}")
        return json_response({"allow": remediation_mod.allow_list_json(rules)})

    @endpoint("GET", "/v1/quarantine/{vm}", READ)
    def get_quarantine(self, call, vm):
        record = self.app.policy.quarantine.get(vm)
        if record is None:
            raise ApiError(404, f"{vm!r} is not in quarantine")
        return json_response(quarantine_view(self.app, record))

    @endpoint("DELETE", "/v1/quarantine/{vm}", ADMIN)
    def release_vm(self, call, vm):
        old = self.app.policy
        if vm not in old.quarantine:
            raise ApiError(404, f"{vm!r} is not in quarantine")  # as GET answers it
        record = old.quarantine[vm]
        self.change_policy(call, old.without_quarantine(vm), "vm.release", vm, f"released from {record.mode} ({record.reason})")
        self.app.alert_book.forget(vm)  # a released VM starts counting alerts afresh
        return no_content()

    # -- alerts from an external IDS ----------------------------------------------------------------
    @endpoint("POST", "/v1/alerts", ADMIN, body=True)
    def raise_alert(self, call):
        request = alerts_mod.check_request(call.body)
        app = self.app
        try:
            name = party(app, "vm", request.target)["vm"]
        except ApiError:  # not a name, MAC or address at all: bad input, like an unknown one
            name = None
        if name is None:
            raise ApiError(400, f"vm: {request.target!r} is not a VM of the inventory (by name, MAC or IPv4 address)", "vm")
        now = time.time()
        tipped = app.alert_book.record(name, request.severity, now)
        policy = app.policy
        if name in policy.quarantine:
            action = "already-quarantined"
        elif tipped:
            action = "quarantine"
        else:
            action = "alert"
        evidence = f"{request.severity} from {request.source}: {request.signature} (about {request.target})"
        reason = f"IDS {request.source}: {request.signature} ({request.severity}); {app.alert_book.threshold.describe()}"
        by = f"ids:{request.source}"
        alert_id = record_alert(app, now, name, request, action, call.actor, f"{evidence}; {action}", reason, by)
        return json_response(alert_view(alert_id, now, name, request, action), 201)

    @endpoint("GET", "/v1/alerts", READ, query=("limit", "vm"))
    def list_alerts(self, call):
        limit = integer(call.query, "limit", 1, audit.MAX_PAGE) or audit.DEFAULT_PAGE
        rows = self.app.store.alerts(limit, call.query.get("vm"))
        return json_response(
            {
                "alerts": [
                    alert_view(i, at, vm, alerts_mod.AlertRequest(target, severity, source, signature), action)
                    for i, at, vm, target, severity, source, signature, action in rows
                ],
                "threshold": self.app.alert_book.threshold.describe(),
            }
        )

    # -- agents, tunnels and keys -------------------------------------------------------------------
    @endpoint("POST", "/v1/agents/tokens", ADMIN, body=OPTIONAL_BODY)
    def create_agent_token(self, call):
        body = json_object(call.body if call.body is not None else {}, frozenset({"ttl_seconds"}))
        ttl = body.get("ttl_seconds", agents_mod.TOKEN_TTL)
        if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 1 <= ttl <= agents_mod.MAX_TOKEN_TTL:
            limit = f"{agents_mod.MAX_TOKEN_TTL:.0f}"
            raise ApiError(400, f"ttl_seconds: must be a number of seconds between 1 and {limit}", "ttl_seconds")
        manager = self.app.agents
        value, fingerprint, expires = manager.issue_token(float(ttl), actor=call.actor)
        # The value is shown this once; only its digest is kept. The CA certificate is public: the
        # agent needs it (--ca-file) to know it talks to this controller.
        return json_response(
            {
                "token": value,
                "fingerprint": fingerprint,
                "expires": audit.iso_time(expires),
                "ca_certificate": manager.ca.cert_pem,
                "ca_fingerprint": manager.ca.fingerprint,
                "agent_port": self.app.agent_server.port if self.app.agent_server else None,
            },
            201,
        )

    @endpoint("GET", "/v1/agents", READ)
    def list_agents(self, call):
        manager = self.app.agents
        return json_response({"agents": [manager.agent_view(name) for name in sorted(manager.agents)]})

    @endpoint("GET", "/v1/agents/{hypervisor}", READ)
    def get_agent(self, call, hypervisor):
        manager = self.app.agents
        if hypervisor not in manager.agents:
            raise ApiError(404, f"no enrolled agent for hypervisor {hypervisor!r}")
        return json_response(manager.agent_view(hypervisor))

    @endpoint("DELETE", "/v1/agents/{hypervisor}", ADMIN)
    def revoke_agent(self, call, hypervisor):
        if hypervisor not in self.app.agents.agents:
            raise ApiError(404, f"no enrolled agent for hypervisor {hypervisor!r}")
        self.app.agents.revoke(hypervisor, actor=call.actor)
        return no_content()

    @endpoint("POST", "/v1/agents/{hypervisor}/rotate-identity", ADMIN)
    def rotate_agent_identity(self, call, hypervisor):
        manager = self.app.agents
        if hypervisor not in manager.agents:
            raise ApiError(404, f"no enrolled agent for hypervisor {hypervisor!r}")
        try:
            rotation = manager.rotate_identity(hypervisor, actor=call.actor)
        except agents_mod.AgentError as exc:
            raise ApiError(409, exc.message) from None
        return json_response({"hypervisor": hypervisor, "rotation": rotation}, 202)

    @endpoint("GET", "/v1/tunnels", READ)
    def list_tunnels(self, call):
        manager = self.app.agents
        return json_response(
            {
                "tunnels": [manager.tunnel_view(a, b) for a, b in sorted(manager.pairs)],
                "encrypt_drops": self.app.metrics.encrypt_drops,
                "psk_rotation_seconds": manager.psk_rotation,
                "psk_rotations": manager.psk_rotations,
                "identity_rotations": manager.identity_rotations,
            }
        )

    @endpoint("POST", "/v1/keys/rotate", ADMIN)
    def rotate_keys(self, call):
        rotated = self.app.agents.rotate_psks(actor=call.actor)
        return json_response({"rotated": rotated})

    @endpoint("GET", "/v1/audit", READ, query=("limit", "before"))
    def audit_log(self, call):
        limit = integer(call.query, "limit", 1, audit.MAX_PAGE) or audit.DEFAULT_PAGE
        before = integer(call.query, "before", 1, 2**63 - 1)
        entries = self.app.store.audit_entries(limit, before)
        following = entries[-1].id if len(entries) == limit and entries[-1].id > 1 else None
        return json_response({"entries": [audit.entry_json(e) for e in entries], "next_before": following})

    # -- the web view (/ui) and what only it needs ---------------------------------------------------
    @endpoint("GET", "/v1/whoami", READ)
    def whoami(self, call):
        return json_response({"name": call.principal.name, "role": call.principal.role}, headers={"Cache-Control": "no-store"})

    @endpoint("GET", "/v1/fabric", READ)
    def fabric(self, call):
        body, etag = self.data[FABRIC_KEY].current(self.app)
        headers = {"ETag": etag, "Cache-Control": "no-store", "X-Server-Time": f"{time.time():.3f}"}
        if webui.etag_matches(self.req.headers.get("If-None-Match"), etag):
            return not_modified(headers)
        response = Response(status=200, content_type="application/json", charset="utf-8", body=body)
        response.headers.update(headers)
        return response

    @endpoint("GET", "/ui", OPEN)
    def ui(self, call):
        return self.ui_file("index.html")

    @endpoint("GET", "/ui/", OPEN)
    def ui_slash(self, call):
        return self.ui_file("index.html")

    @endpoint("GET", "/ui/{asset}", OPEN)
    def ui_asset(self, call, asset):
        return self.ui_file(asset)

    def ui_file(self, name: str) -> Response:
        """One of the view's fixed files (webui.UI_FILES), by its name: never a path on disk."""
        try:
            found = webui.ui_file(name)
        except webui.UiFileMissing as exc:
            raise ApiError(404, str(exc)) from None
        if found is None:
            raise ApiError(404, f"no such file in the web view: {name!r}")
        content, entry = found
        headers = {"ETag": webui.etag_of(content), "Cache-Control": webui.STATIC_CACHE_CONTROL}
        if webui.etag_matches(self.req.headers.get("If-None-Match"), headers["ETag"]):
            return not_modified(headers)
        response = Response(status=200, content_type=entry.content_type, charset="utf-8", body=content)
        response.headers.update(headers)
        return response


class NotFoundApi(ControllerBase):
    """Anything no route took: 405 (with Allow) for a known path with another method, else 404, as JSON."""

    @route("goldilocks-fallback", "/{path:.*}")
    def fallback(self, req, path, **_):
        allowed = sorted({m for e in ENDPOINTS if e.regex().fullmatch(req.path_info) for m in e.methods})
        if allowed:
            message, allow = f"method {req.method} not allowed on {req.path}", {"Allow": ", ".join(allowed)}
            response = error_response(405, message, headers=allow)
        else:
            response = error_response(404, f"no such endpoint: {req.method} {req.path}")
        return webui.secured(response) if req.path_info.startswith("/ui") else response


# A request line's query string, in eventlet's access log (Ryu logs it as ryu.lib.hub).
_QUERY_IN_REQUEST_LINE = re.compile(r'("[A-Z]+ [^ ?"]*)\?[^ "]*')


class _NoQueryStrings(logging.Filter):
    """The access log keeps each request's method and path, not its query string: a token sent by
    mistake as ?access_token= must not land in a log file (issue 10)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and "?" in record.msg:
            record.msg = _QUERY_IN_REQUEST_LINE.sub(r"\1?(query not logged)", record.msg)
        return True


def hide_query_strings_in_access_log() -> None:
    """Idempotent."""
    logger = logging.getLogger("ryu.lib.hub")
    if not any(isinstance(f, _NoQueryStrings) for f in logger.filters):
        logger.addFilter(_NoQueryStrings())


def register(wsgi, app, limiter: auth.SignInLimiter | None = None) -> None:
    """Connect the endpoints in declaration order (Ryu's own register sorts them by method name,
    which would let /v1/policies/{name} shadow /v1/policies/order), then the fallback. The
    controller always passes a `limiter` for failed sign-ins; without one (in-process tests that
    are not about it) failures are not limited."""
    hide_query_strings_in_access_log()
    for declared in ENDPOINTS:
        wsgi.mapper.connect(
            declared.action,
            declared.path,
            controller=GoldilocksApi,
            action=declared.action,
            requirements=dict(declared.requirements),
            conditions={"method": list(declared.methods)},
        )
    # No @route methods: this only hands the class its data.
    wsgi.register(GoldilocksApi, {APP_KEY: app, LIMITER_KEY: limiter, FABRIC_KEY: webui.FabricDocument(fabric_view)})
    wsgi.register(NotFoundApi)
