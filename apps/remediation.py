"""Remediation: a quarantined VM that may still reach exactly an allow-list (DNS, a patch server),
and nothing else.

A VM in quarantine mode `remediate` is cut off like an isolated one by the quarantine group at the
top of every hypervisor's ingress table (apps/quarantine.py), the same instant. The compile then
adds, above that group, the exceptions its allow-list grants, on every hypervisor:

- Its frames are tracked in a conntrack zone of their own (QUARANTINE_ZONE) before anything else
  sees them: a connection it had open before the quarantine is unknown there, so it is cut even if
  policy or conntrack in the hypervisor's own zone would still let it pass.
- A rule `{"to": selector, "services": [...]}` lets the VM open connections to the VMs the selector
  selects on those services, and lets their replies back. `{"from": ...}` lets those VMs open
  connections to it (an operator's SSH, say). Nothing else passes: not another service, not a
  connection the other way round, not a frame with a source address that is not the VM's.
- Quarantine decides alone: allowed frames skip policy. It narrows, and never weakens: where policy
  would encrypt an allowed connection, its frames are marked for the tunnel (or dropped, fail-closed)
  exactly as policy's own would be.
- Frames from the VM are accepted only on its own port (and from the fabric or a tunnel, where its
  hypervisor already accepted them): on any other port it is a VM that moved, and the quarantine group's
  entry shows the controller where it now is, as for an isolated VM.
- Another quarantined VM is never a peer, whatever the selectors say."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from apps import pipeline
from apps.errors import FieldError
from apps.flows import ENCRYPT_MARK, Conntrack, FlowEntry
from apps.selectors import ANY, Selector, SelectorError, parse_selector
from apps.services import Service, ServiceError, parse_service

APP = pipeline.APP_QUARANTINE
DIRECTIONS = ("to", "from")
MAX_ALLOW_RULES = 64
NAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")
QUARANTINE_ZONE = pipeline.QUARANTINE_CT_ZONE

TRACKED_NEW_OR_ORIGINAL = (pipeline.CT_TRK, pipeline.CT_TRK | pipeline.CT_RPL | pipeline.CT_INV)
TRACKED_REPLY = (pipeline.CT_TRK | pipeline.CT_RPL, pipeline.CT_TRK | pipeline.CT_RPL | pipeline.CT_INV)
UNTRACKED = (0, pipeline.CT_TRK)


class RemediationError(FieldError):
    """A bad allow-list; `field` names the rule and field, such as `allow[1].services`."""


@dataclass(frozen=True)
class AllowRule:
    """One allowance: the quarantined VM may open connections `to` the selected VMs on the services,
    or the selected VMs may open connections to it (`from`); replies pass either way."""

    name: str
    direction: str  # "to" | "from"
    peers: Selector
    services: tuple[Service, ...]

    def to_json(self) -> dict:
        return {"name": self.name, self.direction: str(self.peers), "services": [str(s) for s in self.services]}

    def allows(self, outbound: bool, peer_labels: Mapping[str, str] | None, proto: str | None, dport: int | None) -> bool:
        """Does this rule allow a connection the quarantined VM opens (outbound) or receives?"""
        if (self.direction == "to") != outbound or not self.peers.matches(peer_labels):
            return False
        return any(s.matches(proto, dport) for s in self.services)


def parse_allow_list(body: object, field: str = "allow") -> tuple[AllowRule, ...]:
    """An allow-list from JSON: a list of {"name", "to" | "from", "services"}."""
    if not isinstance(body, list):
        raise RemediationError(field, 'must be a list of rules such as {"name": "dns", "to": "role=dns", "services": ["udp/53"]}')
    if len(body) > MAX_ALLOW_RULES:
        raise RemediationError(field, f"at most {MAX_ALLOW_RULES} rules")
    rules, names = [], set()
    for index, doc in enumerate(body):
        where = f"{field}[{index}]"
        rule = _parse_rule(doc, where)
        if rule.name in names:
            raise RemediationError(f"{where}.name", f"{rule.name!r} appears twice")
        names.add(rule.name)
        rules.append(rule)
    return tuple(rules)


def _parse_rule(doc: object, where: str) -> AllowRule:
    if not isinstance(doc, dict):
        raise RemediationError(where, "must be a JSON object")
    unknown = sorted(set(doc) - {"name", "to", "from", "services"})
    if unknown:
        raise RemediationError(f"{where}.{unknown[0]}", "unknown field (allowed: from, name, services, to)")
    name = doc.get("name")
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise RemediationError(f"{where}.name", "required: letters, digits, '-', '_' or '.', at most 63")
    directions = [d for d in DIRECTIONS if d in doc]
    if len(directions) != 1:
        raise RemediationError(where, 'give exactly one of "to" (the VM may open connections to them) or "from"')
    direction = directions[0]
    try:
        peers = parse_selector(doc[direction])
    except SelectorError as exc:
        raise RemediationError(f"{where}.{direction}", str(exc)) from None
    if peers.kind not in (ANY, "labels"):
        raise RemediationError(f"{where}.{direction}", "must be `any` or a label selector (peers are VMs in the inventory)")
    services = doc.get("services")
    if not isinstance(services, list) or not services:
        raise RemediationError(f"{where}.services", 'required: a non-empty list such as ["udp/53", "tcp/53"]')
    try:
        parsed = tuple(dict.fromkeys(parse_service(s) for s in services))
    except ServiceError as exc:
        raise RemediationError(f"{where}.services", str(exc)) from None
    return AllowRule(name, direction, peers, parsed)


def allow_list_json(rules: Iterable[AllowRule]) -> list[dict]:
    return [r.to_json() for r in rules]


def first_allowing(
    rules: Sequence[AllowRule], outbound: bool, peer_labels: Mapping[str, str] | None, proto: str | None, dport: int | None
) -> AllowRule | None:
    """The first rule that allows the connection (for `explain`), or None."""
    return next((r for r in rules if r.allows(outbound, peer_labels, proto, dport)), None)


@dataclass(frozen=True)
class Allowance:
    """One allow rule as the compile resolved it: the MACs of the peers it selects (None: any peer),
    and for each peer that policy encrypts to, the rule's services that must travel encrypted."""

    rule: AllowRule
    peers: tuple[str, ...] | None
    encrypted: tuple[tuple[str, tuple[Service, ...]], ...] = ()


@dataclass(frozen=True)
class Remediated:
    """A VM in remediation as the compile sees it: its MACs and addresses, where its MACs are, and
    its allowances."""

    macs: tuple[str, ...]
    ips: tuple[str, ...]
    locations: tuple[tuple[str, int, int], ...]  # (MAC, dpid, port) of each MAC the network has seen
    allowances: tuple[Allowance, ...]


Encrypts = Callable[[AllowRule, Mapping[str, str] | None, Service], bool]


def resolve(
    rules: Sequence[AllowRule],
    candidates: Mapping[str, Mapping[str, str] | None],
    quarantined: frozenset[str],
    encrypts: Encrypts | None = None,
) -> tuple[Allowance, ...]:
    """Each rule with the MACs of the peers it selects among `candidates` (MAC -> labels, None for an
    unmanaged host), never a quarantined MAC; `any` stays None (matched as any MAC; quarantined peers
    are then cut by the entries remediation_flows puts above the allowances). `encrypts(rule, peer
    labels, service)` says whether policy encrypts that traffic: quarantine narrows what passes, it
    never sends in clear what policy would encrypt."""
    resolved = []
    for rule in rules:
        selected = sorted(m for m, labels in candidates.items() if m not in quarantined and rule.peers.matches(labels))
        encrypted = []
        if encrypts is not None:
            for mac in selected:
                services = tuple(s for s in rule.services if encrypts(rule, candidates[mac], s))
                if services:
                    encrypted.append((mac, services))
        peers = None if rule.peers.kind == ANY else tuple(selected)
        resolved.append(Allowance(rule, peers, tuple(encrypted)))
    return tuple(resolved)


def remediation_flows(dpid: int, fabric_ports: Iterable[int], vm: Remediated, quarantined: frozenset[str]) -> list[FlowEntry]:
    """The exceptions one hypervisor holds for one VM in remediation (above the quarantine group).
    fabric_ports: its inter-switch ports and the tunnel ports it uses."""
    flows: list[FlowEntry] = []
    others = sorted(quarantined - set(vm.macs))
    track = (Conntrack(QUARANTINE_ZONE, table=pipeline.INGRESS),)
    for mac in vm.macs:
        from_ports = set(fabric_ports) | {port for m, d, port in vm.locations if m == mac and d == dpid}
        # Its ARP and IPv4 only on its own port (or from the fabric) and with one of its own addresses:
        # ARP straight on, IPv4 tracked in the quarantine zone first.
        for port in sorted(from_ports):
            for ip in vm.ips:
                arp = {"in_port": port, "eth_src": mac, "eth_type": pipeline.ETH_TYPE_ARP, "arp_spa": ip}
                flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_REMEDIATE_ARP, arp, goto=pipeline.FORWARD, app=APP))
                ipv4 = {
                    "in_port": port,
                    "eth_src": mac,
                    "eth_type": pipeline.ETH_TYPE_IPV4,
                    "ipv4_src": ip,
                    "ct_state": UNTRACKED,
                }
                flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_REMEDIATE_TRACK, ipv4, track, app=APP))
        # ARP addressed to it, and IPv4 to it (tracked).
        arp_to = {"eth_dst": mac, "eth_type": pipeline.ETH_TYPE_ARP}
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_REMEDIATE_ARP, arp_to, goto=pipeline.FORWARD, app=APP))
        match = {"eth_dst": mac, "eth_type": pipeline.ETH_TYPE_IPV4, "ct_state": UNTRACKED}
        flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_REMEDIATE_TRACK, match, track, app=APP))
        # Never to or from another quarantined VM, whatever an `any` allows.
        for other in others:
            for match in ({"eth_src": mac, "eth_dst": other}, {"eth_src": other, "eth_dst": mac}):
                flows.append(FlowEntry.make(pipeline.INGRESS, pipeline.PRIO_REMEDIATE_OTHERS, match, app=APP))
        for allowance in vm.allowances:
            flows += _allow_flows(mac, allowance)
    return flows


def _allow_flows(mac: str, allowance: Allowance) -> list[FlowEntry]:
    """A rule's tracked frames: the opening side's (committed) and the replies, marked for the tunnel
    where policy encrypts them (apps/steering.py then sends them only inside one, or drops them).
    With `any` peers, the encrypted peers get entries of their own above the plain ones."""
    encrypted = dict(allowance.encrypted)
    flows = []
    if allowance.peers is None:
        flows += _rule_flows(mac, allowance.rule, None, allowance.rule.services, False, pipeline.PRIO_REMEDIATE_ALLOW)
        for peer, services in allowance.encrypted:
            flows += _rule_flows(mac, allowance.rule, peer, services, True, pipeline.PRIO_REMEDIATE_ALLOW_ENCRYPT)
        return flows
    for peer in allowance.peers:
        secret = encrypted.get(peer, ())
        plain = tuple(s for s in allowance.rule.services if s not in secret)
        flows += _rule_flows(mac, allowance.rule, peer, plain, False, pipeline.PRIO_REMEDIATE_ALLOW)
        flows += _rule_flows(mac, allowance.rule, peer, secret, True, pipeline.PRIO_REMEDIATE_ALLOW)
    return flows


def _rule_flows(mac: str, rule: AllowRule, peer: str | None, services, encrypt: bool, priority: int) -> list[FlowEntry]:
    mark = (ENCRYPT_MARK,) if encrypt else ()
    commit = (Conntrack(QUARANTINE_ZONE, commit=True), *mark)
    vm_side, peer_side = {"eth_src": mac}, {"eth_dst": mac}
    if peer is not None:
        vm_side["eth_dst"] = peer
        peer_side["eth_src"] = peer
    opener, answerer = (vm_side, peer_side) if rule.direction == "to" else (peer_side, vm_side)
    flows = []
    for service in services:
        for fragment in service.of_matches(pipeline.ETH_TYPE_IPV4):
            match = {**opener, "eth_type": pipeline.ETH_TYPE_IPV4, "ct_state": TRACKED_NEW_OR_ORIGINAL, **fragment}
            flows.append(FlowEntry.make(pipeline.INGRESS, priority, match, commit, pipeline.FORWARD, app=APP))
        for fragment in service.of_matches(pipeline.ETH_TYPE_IPV4, reply=True):
            match = {**answerer, "eth_type": pipeline.ETH_TYPE_IPV4, "ct_state": TRACKED_REPLY, **fragment}
            flows.append(FlowEntry.make(pipeline.INGRESS, priority, match, mark, pipeline.FORWARD, app=APP))
    return flows
