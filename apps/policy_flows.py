"""Compile ordered rules into the classify, policy and egress tables of one hypervisor.

Policy is enforced once, at the source hypervisor, as close to the VM as possible. Frames
from the fabric skip it. Conntrack lets replies of an allowed connection back: the source
hypervisor commits the connection when a rule allows it, and the destination hypervisor
commits it in its egress table, so the reply is +est on both."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set

from apps import pipeline
from apps.flows import ENCRYPT_MARK, Conntrack, FlowEntry, Output
from apps.identity import UNKNOWN, IdentityLabels
from apps.policy import Rule
from apps.selectors import ANY
from topology.model import Host

IP_FAMILIES = (pipeline.ETH_TYPE_IPV4, pipeline.ETH_TYPE_IPV6)
APP = pipeline.APP_POLICY


def ct_state(*, set_bits: int, clear_bits: int = 0) -> tuple[int, int]:
    return (set_bits, set_bits | clear_bits)


def conntrack_zone(dpid: int) -> int:
    """One zone per hypervisor: harmless on a real host (its own conntrack), and it keeps the
    hypervisors of a Mininet run (one shared userspace datapath) apart."""
    zone = dpid & 0xFFFF
    return zone if zone not in (0, pipeline.QUARANTINE_CT_ZONE) else 1


def source_identity_metadata(identity: int) -> tuple[int, int]:
    """The write-metadata instruction the ingress table uses for a known source."""
    return (identity, pipeline.META_SRC_MASK)


def destination_flows(hosts: Iterable[Host], identity_of: Mapping[str, int]) -> dict[int, list[FlowEntry]]:
    """Classify: destination MAC -> destination identity, grouped by identity (a hypervisor
    holds only the groups its rules refer to: apps/compiler.py, Compiler._referenced). Anything else
    keeps identity 0: the table's miss entry, in forwarding.base_flows, goes on to policy."""
    groups: dict[int, list[FlowEntry]] = {}
    for host in hosts:
        identity = identity_of[host.mac]
        groups.setdefault(identity, []).append(
            FlowEntry.make(
                pipeline.CLASSIFY,
                pipeline.PRIO_UNICAST,
                {"eth_dst": host.mac},
                goto=pipeline.POLICY,
                app=APP,
                metadata=(identity << pipeline.META_DST_SHIFT, pipeline.META_DST_MASK),
            )
        )
    return groups




def _verdict(action: str, zone: int) -> tuple[tuple, int | None]:
    """Actions and goto for allow (commit, forward), encrypt (commit with the encrypt mark, mark the
    frame, forward: apps/steering.py keeps it in a tunnel) and deny (drop)."""
    if action == "deny":
        return (), None
    if action == "encrypt":
        return (Conntrack(zone, commit=True, mark=pipeline.CT_MARK_ENCRYPT), ENCRYPT_MARK), pipeline.FORWARD
    return (Conntrack(zone, commit=True),), pipeline.FORWARD


def _everyone(identity_labels: Mapping[int, Mapping[str, str] | None]) -> Set[int]:
    """Every identity in use and UNKNOWN (IdentityLabels keeps it, and answers selectors on it once)."""
    if isinstance(identity_labels, IdentityLabels):
        return identity_labels.everyone()
    return set(identity_labels) | {UNKNOWN}


def _last_encrypt(rules: Sequence[Rule]) -> int | None:
    return max((i for i, r in enumerate(rules) if r.action == "encrypt"), default=None)


def policy_flows(
    zone: int,
    local_identities: set[int] | frozenset[int],
    identity_labels: Mapping[int, Mapping[str, str] | None],
    rules: Sequence[Rule],
    default_action: str,
) -> list[FlowEntry]:
    """The policy table of the hypervisor with conntrack zone `zone`. local_identities are those
    of its VMs; identity_labels covers every identity in use (None for unmanaged).

    New connections meet the rules in order. Established ones pass, except that while any rule
    encrypts, an established connection not yet marked is re-evaluated against the rules up to the
    last encrypt rule (_established_flows): a connection opened in clear before an encrypt rule
    that selects it existed is marked by its next frame, whichever end sends it, and from then on
    travels only inside the tunnel."""
    rules = rules[: pipeline.MAX_RULES]
    last_encrypt = _last_encrypt(rules)
    all_ids = _everyone(identity_labels)
    flows = policy_base_flows(zone, last_encrypt is not None, default_action)
    for index, rule in enumerate(rules):
        flows += rule_flows(zone, index, rule, local_identities, identity_labels, all_ids, last_encrypt)
    return flows


def rule_flows(
    zone: int,
    index: int,
    rule: Rule,
    local_identities: set[int] | frozenset[int],
    identity_labels: Mapping[int, Mapping[str, str] | None],
    all_ids: set[int],
    last_encrypt: int | None,
) -> list[FlowEntry]:
    """The entries of the rule at position `index` on one hypervisor (policy_flows): new connections
    it decides, and while an encrypt rule at or after it exists, established ones it re-evaluates.
    all_ids: every identity in use, UNKNOWN included."""
    flows = []
    priority = pipeline.PRIO_RULE_TOP - index
    sources = matching_identities(rule.src, local_identities, identity_labels)
    destinations = matching_identities(rule.dst, all_ids, identity_labels)
    if sources != [] and destinations != []:  # None is `any`; [] is nobody this hypervisor sends for
        actions, goto = _verdict(rule.action, zone)
        new = ct_state(set_bits=pipeline.CT_TRK | pipeline.CT_NEW)
        for match in _rule_matches(rule, sources, destinations, new):
            flows.append(FlowEntry.make(pipeline.POLICY, priority, match, actions, goto, app=APP))
    if last_encrypt is not None and index <= last_encrypt:
        flows += _established_flows(zone, rule, priority, local_identities, identity_labels, all_ids)
    return flows


def policy_base_flows(zone: int, reevaluate: bool, default_action: str) -> list[FlowEntry]:
    """The entries of a policy table that no rule adds: bypasses, conntrack, the default action."""
    flows = _bypass_and_conntrack(zone, reevaluate=reevaluate)
    actions, goto = _verdict(default_action, zone)
    for family in IP_FAMILIES:
        new = {"eth_type": family, "ct_state": ct_state(set_bits=pipeline.CT_TRK | pipeline.CT_NEW)}
        flows.append(FlowEntry.make(pipeline.POLICY, pipeline.PRIO_DEFAULT_NEW_IP, new, actions, goto, app=APP))
    # Unicast that is not IP has no connection to track: the default action, without commit.
    flows.append(
        FlowEntry.make(
            pipeline.POLICY,
            pipeline.PRIO_DEFAULT_OTHER,
            {},
            goto=pipeline.FORWARD if default_action != "deny" else None,
            app=APP,
        )
    )
    return flows


def _rule_matches(rule: Rule, sources, destinations, state: tuple[int, int], reply: bool = False) -> list[dict]:
    """The matches of one rule for frames in state `state`: source and destination identities in the
    metadata, the service (its port as the source port when `reply`), IPv4 and IPv6."""
    matches = []
    for value, mask in _metadata_matches(sources, destinations, rule):
        for family in IP_FAMILIES:
            for service in rule.services:
                for fragment in service.of_matches(family, reply=reply):
                    match = {"eth_type": family, "ct_state": state}
                    if mask:
                        match["metadata"] = (value, mask)
                    match.update(fragment)
                    matches.append(match)
    return matches


def _established_flows(
    zone: int,
    rule: Rule,
    priority: int,
    local_identities,
    identity_labels: Mapping[int, Mapping[str, str] | None],
    all_ids: set[int],
) -> list[FlowEntry]:
    """Established, unmarked frames meet the rules up to the last encrypt rule, at the rules' own
    priorities: an encrypt rule marks the connection and the frame; any other rule (or none) lets
    it pass as before. Both ends re-evaluate: the original sender's frames as the rule reads, and
    the replies of a local VM that the rule's destination selects, with the roles swapped."""
    unmarked = {"ct_mark": 0}
    if rule.action == "encrypt":
        actions, goto = _verdict("encrypt", zone)
    else:
        actions, goto = (), pipeline.FORWARD
    original = ct_state(set_bits=pipeline.CT_TRK | pipeline.CT_EST, clear_bits=pipeline.CT_RPL | pipeline.CT_INV)
    reply = ct_state(set_bits=pipeline.CT_TRK | pipeline.CT_EST | pipeline.CT_RPL, clear_bits=pipeline.CT_INV)
    flows = []
    sources = matching_identities(rule.src, local_identities, identity_labels)
    destinations = matching_identities(rule.dst, all_ids, identity_labels)
    if sources != [] and destinations != []:
        for match in _rule_matches(rule, sources, destinations, original):
            flows.append(FlowEntry.make(pipeline.POLICY, priority, {**match, **unmarked}, actions, goto, app=APP))
    answering = matching_identities(rule.dst, local_identities, identity_labels)
    askers = matching_identities(rule.src, all_ids, identity_labels)
    if answering != [] and askers != []:
        for match in _rule_matches(rule, answering, askers, reply, reply=True):
            flows.append(FlowEntry.make(pipeline.POLICY, priority, {**match, **unmarked}, actions, goto, app=APP))
    return flows


def _bypass_and_conntrack(zone: int, reevaluate: bool = False) -> list[FlowEntry]:
    bypass = pipeline.PRIO_POLICY_BYPASS
    flows = [
        # Broadcast and multicast (ARP requests, DHCP, IPv6 ND) are not policed here.
        FlowEntry.make(pipeline.POLICY, bypass, {"eth_dst": pipeline.MULTICAST_BIT}, goto=pipeline.FORWARD, app=APP),
        FlowEntry.make(pipeline.POLICY, bypass, {"eth_type": pipeline.ETH_TYPE_ARP}, goto=pipeline.FORWARD, app=APP),
    ]
    for nd_type in pipeline.ETH_TYPE_IPV6_ND_TYPES:
        nd = {"eth_type": pipeline.ETH_TYPE_IPV6, "ip_proto": 58, "icmpv6_type": nd_type}
        flows.append(FlowEntry.make(pipeline.POLICY, bypass, nd, goto=pipeline.FORWARD, app=APP))
    for family in IP_FAMILIES:
        untracked = {"eth_type": family, "ct_state": ct_state(set_bits=0, clear_bits=pipeline.CT_TRK)}
        flows.append(
            FlowEntry.make(pipeline.POLICY, pipeline.PRIO_CT_TRACK, untracked, (Conntrack(zone, table=pipeline.POLICY),), app=APP)
        )
    trk = pipeline.CT_TRK
    for state in (pipeline.CT_EST, pipeline.CT_REL):
        match = {"ct_state": ct_state(set_bits=trk | state, clear_bits=pipeline.CT_INV)}
        # While a rule encrypts, unmarked established connections are re-evaluated (see
        # _established_flows) and only those no encrypt rule selects pass, below every rule.
        passing = pipeline.PRIO_DEFAULT_ESTABLISHED if reevaluate and state == pipeline.CT_EST else pipeline.PRIO_CT_ESTABLISHED
        flows.append(FlowEntry.make(pipeline.POLICY, passing, match, goto=pipeline.FORWARD, app=APP))
        # Every frame of an encrypt connection, replies included, stays encrypted.
        encrypted = {**match, "ct_mark": pipeline.CT_MARK_ENCRYPT}
        mark, prio = (ENCRYPT_MARK,), pipeline.PRIO_CT_ESTABLISHED_ENCRYPT
        flows.append(FlowEntry.make(pipeline.POLICY, prio, encrypted, mark, pipeline.FORWARD, app=APP))
    invalid = {"ct_state": ct_state(set_bits=trk | pipeline.CT_INV)}
    flows.append(FlowEntry.make(pipeline.POLICY, pipeline.PRIO_CT_INVALID, invalid, app=APP))
    return flows


def matching_identities(selector, candidates: set[int], labels: Mapping[int, Mapping[str, str] | None]):
    """The identities among candidates that the selector selects, or None meaning 'all' (any)."""
    if selector.kind == ANY:
        return None
    if isinstance(labels, IdentityLabels):
        if candidates is labels.everyone():
            return labels.selected_sorted(selector)  # every identity: the same answer for every hypervisor
        return sorted(labels.selected(selector).intersection(candidates)) or []
    return sorted(i for i in candidates if i != UNKNOWN and selector.matches(labels.get(i))) or []


def _metadata_matches(sources, destinations, rule: Rule) -> list[tuple[int, int]]:
    """(value, mask) pairs for the source x destination identities. None means any: that half of
    the metadata is left out of the match (the source half is local by construction)."""
    src_list = [None] if sources is None else sources
    dst_list = [None] if destinations is None else destinations
    result = []
    for src in src_list:
        for dst in dst_list:
            value = mask = 0
            if src is not None:
                value |= src
                mask |= pipeline.META_SRC_MASK
            if dst is not None:
                value |= dst << pipeline.META_DST_SHIFT
                mask |= pipeline.META_DST_MASK
            result.append((value, mask))
    return result


def egress_flows(hosts: Iterable[Host], zone: int) -> list[FlowEntry]:
    """Deliver to local VMs; IP is committed to conntrack first, so the VM's replies are +est."""
    flows = []
    for host in hosts:
        for family in IP_FAMILIES:
            flows.append(
                FlowEntry.make(
                    pipeline.EGRESS,
                    pipeline.PRIO_EGRESS_COMMIT,
                    {"eth_dst": host.mac, "eth_type": family},
                    (Conntrack(zone, commit=True), Output(host.port)),
                    app=APP,
                )
            )
    return flows
