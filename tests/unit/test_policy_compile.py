"""What compiled policy does to traffic between VMs, asked of the fake switch network (with conntrack)."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps import pipeline
from apps.context import PolicyState
from apps.desired import desired_tables
from apps.flows import FlowEntry
from apps.identity import UNMANAGED, Identities
from apps.policy import evaluate
from tests.fakeoftable import (
    BROADCAST,
    FakeNetwork,
    LeafSpine,
    arp_reply,
    arp_request,
    build_leaf_spine,
    build_mesh,
    first_ip,
    icmp_frame,
    ipv4_frame,
    neighbour_discovery,
    policy_state,
    reply_frame,
    service_frame,
    tcp_frame,
    unicast_frame,
    vm_name,
)
from topology import graph
from topology.model import Host

PROTOS = ("tcp", "udp", "icmp")
_sports = itertools.count(20000)


@pytest.fixture(scope="module")
def fabric() -> LeafSpine:
    """Two hypervisors (on different leaves), three VMs each: every pair kind on one and across two."""
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3, tunnels=True)


@pytest.fixture(scope="module")
def tiers(fabric) -> dict[Host, dict[str, str]]:
    """web, app, db on each hypervisor."""
    names = ["web", "app", "db"]
    return {vm: {"tier": names[i % 3]} for i, vm in enumerate(fabric.vms)}


def tier(labels: Mapping[Host, Mapping[str, str]], host: Host) -> str | None:
    return labels.get(host, {}).get("tier")


def probe(net: FakeNetwork, src: Host, dst: Host, proto: str, dport: int | None = 80, ipv6: bool = False) -> tuple[bool, dict]:
    """Send a new connection's first frame (a fresh source port every time); was it delivered?"""
    frame = service_frame(src, dst, proto, dport, sport=next(_sports), ipv6=ipv6)
    return delivered(net, src, dst, frame), frame


def delivered(net: FakeNetwork, src: Host, dst: Host, frame: dict) -> bool:
    trace = net.send(src, frame)
    assert not trace.loops and not trace.punts, f"{src.mac} -> {dst.mac} {frame}: {trace}"
    if trace.reaches(dst):
        assert trace.delivered_to() == [(dst.dpid, dst.port)], f"delivered elsewhere too: {trace}"
        assert trace.deliveries[0].packet == frame, "policy must not rewrite the frame"
        return True
    assert not trace.deliveries, f"dropped for {dst.mac} but delivered elsewhere: {trace}"
    return False


def compile_net(fabric: LeafSpine, labels, rules=(), default_action="allow", identities=None) -> FakeNetwork:
    return FakeNetwork.compile(fabric.topo, policy_state(labels, rules, default_action), identities, fabric.tunnels)


def rule(src: str, dst: str, action: str, *services: str, name: str | None = None) -> dict:
    body = {"src": src, "dst": dst, "action": action, "services": list(services or ["any"])}
    return {**body, "name": name} if name else body


# ---------------------------------------------------------------------------
# Default allow
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("inventory", [False, True], ids=["no-inventory", "labelled-inventory"])
def test_default_allow_lets_every_vm_reach_every_other_and_its_replies_back(fabric, tiers, inventory):
    net = compile_net(fabric, tiers if inventory else {})
    for src, dst in itertools.permutations(fabric.vms, 2):
        for proto in PROTOS:
            ok, frame = probe(net, src, dst, proto)
            assert ok, (src, dst, proto)
            assert delivered(net, dst, src, reply_frame(frame)), "the reply comes back"


def test_ipv6_and_other_ethernet_types_follow_the_default_action(fabric, tiers):
    src, dst = fabric.vms[0], fabric.vms[5]
    other = {**unicast_frame(src, dst), "eth_type": 0x88B5}
    other.pop("ipv4_src"), other.pop("ipv4_dst")
    allow = compile_net(fabric, tiers)
    assert probe(allow, src, dst, "tcp", 443, ipv6=True)[0] and probe(allow, src, dst, "icmp", ipv6=True)[0]
    assert delivered(allow, src, dst, other)
    deny = compile_net(fabric, tiers, default_action="deny")
    assert not probe(deny, src, dst, "tcp", 443, ipv6=True)[0] and not probe(deny, src, dst, "icmp", ipv6=True)[0]
    assert not delivered(deny, src, dst, other)


# ---------------------------------------------------------------------------
# Deny rules, services and port ranges
# ---------------------------------------------------------------------------
def test_a_deny_between_two_groups_drops_only_that_direction(fabric, tiers):
    net = compile_net(fabric, tiers, [rule("tier=web", "tier=db", "deny")])
    denied = 0
    for src, dst in itertools.permutations(fabric.vms, 2):
        expected = not (tier(tiers, src) == "web" and tier(tiers, dst) == "db")
        denied += not expected
        for proto in PROTOS:
            assert probe(net, src, dst, proto)[0] is expected, (tier(tiers, src), tier(tiers, dst), proto, src.dpid == dst.dpid)
    assert denied == 4, "two web and two db VMs: the same and the other hypervisor"


def test_a_service_rule_denies_only_its_service(fabric, tiers):
    net = compile_net(fabric, tiers, [rule("tier=web", "tier=db", "deny", "tcp/5432")])
    for src, dst in itertools.permutations(fabric.vms, 2):
        web_to_db = tier(tiers, src) == "web" and tier(tiers, dst) == "db"
        assert probe(net, src, dst, "tcp", 5432)[0] is not web_to_db
        assert probe(net, src, dst, "tcp", 5433)[0]
        assert probe(net, src, dst, "udp", 5432)[0]
        assert probe(net, src, dst, "icmp")[0]


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_a_port_range_covers_exactly_its_range(fabric, tiers, ipv6):
    web, db = fabric.vms[0], fabric.vms[5]
    deny = compile_net(fabric, tiers, [rule("tier=web", "tier=db", "deny", "tcp/8000-8100")])
    allow = compile_net(fabric, tiers, [rule("tier=web", "tier=db", "allow", "tcp/8000-8100")], default_action="deny")
    for port, inside in (
        (7999, False),
        (8000, True),
        (8001, True),
        (8063, True),
        (8064, True),
        (8099, True),
        (8100, True),
        (8101, False),
    ):
        assert probe(deny, web, db, "tcp", port, ipv6)[0] is not inside, port
        assert probe(allow, web, db, "tcp", port, ipv6)[0] is inside, port
        assert probe(deny, web, db, "udp", port, ipv6)[0], "another protocol on the same port is not covered"


def test_rules_selecting_any_apply_to_everyone(fabric, tiers):
    """`any` on either side used to compile to nothing at all."""
    to_db = compile_net(fabric, tiers, [rule("any", "tier=db", "deny", "tcp/22")])
    from_web = compile_net(fabric, tiers, [rule("tier=web", "any", "deny", "tcp/22")])
    both = compile_net(fabric, tiers, [rule("any", "any", "deny", "icmp")])
    for src, dst in itertools.permutations(fabric.vms, 2):
        assert probe(to_db, src, dst, "tcp", 22)[0] is (tier(tiers, dst) != "db")
        assert probe(from_web, src, dst, "tcp", 22)[0] is (tier(tiers, src) != "web")
        assert not probe(both, src, dst, "icmp")[0] and probe(both, src, dst, "tcp", 22)[0]


# ---------------------------------------------------------------------------
# Order
# ---------------------------------------------------------------------------
def test_first_match_wins_and_reordering_flips_the_outcome(fabric, tiers):
    web, db = fabric.vms[0], fabric.vms[5]
    allow_pg = rule("tier=web", "tier=db", "allow", "tcp/5432", name="allow-pg")
    deny_all = rule("tier=web", "tier=db", "deny", name="deny-web-db")
    state = policy_state(tiers, [allow_pg, deny_all])
    net = FakeNetwork.compile(fabric.topo, state)
    assert probe(net, web, db, "tcp", 5432)[0], "the allow above the deny wins"
    assert not probe(net, web, db, "tcp", 5433)[0] and not probe(net, web, db, "icmp")[0]
    flipped = FakeNetwork.compile(fabric.topo, state.reordered(["deny-web-db", "allow-pg"]))
    assert not probe(flipped, web, db, "tcp", 5432)[0], "the deny now comes first"


# ---------------------------------------------------------------------------
# Default deny (zero trust) and conntrack
# ---------------------------------------------------------------------------
def test_default_deny_drops_everything_no_rule_allows(fabric, tiers):
    net = compile_net(fabric, tiers, default_action="deny")
    for src, dst in itertools.permutations(fabric.vms, 2):
        for proto in PROTOS:
            assert not probe(net, src, dst, proto)[0], (src, dst, proto)


def test_default_deny_lets_replies_of_an_allowed_connection_back_but_not_new_connections(fabric, tiers):
    net = compile_net(fabric, tiers, [rule("tier=web", "tier=db", "allow", "tcp/5432", "icmp")], default_action="deny")
    webs = [vm for vm in fabric.vms if tier(tiers, vm) == "web"]
    dbs = [vm for vm in fabric.vms if tier(tiers, vm) == "db"]
    for web, db in itertools.product(webs, dbs):  # on the same hypervisor and across the fabric
        syn = tcp_frame(web, db, next(_sports), 5432)
        reply = reply_frame(syn)
        assert not delivered(net, db, web, reply), "before the connection exists the 'reply' is a new, denied connection"
        assert delivered(net, web, db, syn)
        assert delivered(net, db, web, reply), "conntrack lets the reply back"
        assert delivered(net, web, db, syn) and delivered(net, db, web, reply), "and the rest of the conversation"
        assert not delivered(net, db, web, tcp_frame(db, web, next(_sports), 5432)), "db may not open a connection to web"
        assert not delivered(net, db, web, tcp_frame(db, web, 5432, next(_sports))), "not even from the allowed port"
        assert not probe(net, web, db, "tcp", 5433)[0] and not probe(net, web, db, "udp", 5432)[0]
        ping = icmp_frame(web, db)
        assert delivered(net, web, db, ping) and delivered(net, db, web, reply_frame(ping))
        assert not delivered(net, db, web, icmp_frame(db, web)), "db may not ping web"


def test_an_unsolicited_echo_reply_is_dropped_even_under_default_allow(fabric, tiers):
    """Conntrack calls an ICMP reply without a request invalid, and the policy table drops +inv."""
    net = compile_net(fabric, tiers)
    src, dst = fabric.vms[0], fabric.vms[4]
    assert not delivered(net, src, dst, icmp_frame(src, dst, icmp_type=0))
    assert delivered(net, src, dst, icmp_frame(src, dst))


def test_encrypt_is_delivered_only_through_the_tunnel_both_ways(fabric, tiers):
    net = compile_net(fabric, tiers, [rule("tier=web", "tier=db", "encrypt", "tcp/5432")], default_action="deny")
    web, db = fabric.vms[0], fabric.vms[5]
    assert web.dpid != db.dpid
    ok, syn = probe(net, web, db, "tcp", 5432)
    assert ok and delivered(net, db, web, reply_frame(syn))
    for a, sent in ((web, syn), (db, reply_frame(syn))):
        (copy,) = net.send(a, sent).deliveries
        assert net.through_tunnel(copy) and not net.crossed_in_clear(copy)
    assert not probe(net, web, db, "tcp", 5433)[0]


# ---------------------------------------------------------------------------
# What policy never touches: ARP, broadcast, neighbour discovery
# ---------------------------------------------------------------------------
def test_arp_broadcast_and_neighbour_discovery_work_under_default_deny(fabric, tiers):
    net = compile_net(fabric, tiers, [rule("any", "any", "deny")], default_action="deny")
    edges = {(d, p) for d in fabric.topo.switches for p in fabric.topo.edge_ports(d)}
    for src, dst in itertools.permutations(fabric.vms, 2):
        # ARP is never policed: a small data centre's hypervisor answers it (above ARP_AHEAD_MAX
        # hosts, the request is flooded to its owner: test_forwarding).
        answer = net.send(src, arp_request(src, first_ip(dst)))
        assert answer.delivered_to() == [(src.dpid, src.port)] and answer.deliveries[0].packet["arp_sha"] == dst.mac
        assert delivered(net, src, dst, arp_reply(src, dst)), "a host's own ARP reply"
        for nd_type in pipeline.ETH_TYPE_IPV6_ND_TYPES:
            assert delivered(net, src, dst, neighbour_discovery(src, nd_type, dst)), nd_type
    for src in fabric.vms:
        for frame in (
            ipv4_frame(src, BROADCAST, "255.255.255.255"),
            arp_request(src, "10.99.0.1"),
            neighbour_discovery(src, 135),
        ):
            trace = net.send(src, frame)
            assert trace.delivered_to() == sorted(edges - {(src.dpid, src.port)}), frame
    assert not probe(net, fabric.vms[0], fabric.vms[1], "icmp", ipv6=True)[0], "other ICMPv6 is policed"


# ---------------------------------------------------------------------------
# Unmanaged hosts
# ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "selector, selects_unmanaged, selects_managed",
    [
        ("unmanaged", True, False),
        ("any", True, True),
        ("!tier", False, False),
        ("tier!=db", False, True),
        ("tier notin (db)", False, True),
        ("tier", False, True),
    ],
)
def test_unmanaged_hosts_are_selected_by_unmanaged_and_any_only(fabric, tiers, selector, selects_unmanaged, selects_managed):
    unmanaged = {fabric.vms[1], fabric.vms[3]}  # one on each hypervisor
    labels = {vm: lbl for vm, lbl in tiers.items() if vm not in unmanaged and tier(tiers, vm) != "db"}
    as_source = compile_net(fabric, labels, [rule(selector, "any", "deny")])
    as_destination = compile_net(fabric, labels, [rule("any", selector, "deny")])
    for src, dst in itertools.permutations(fabric.vms, 2):
        src_selected = selects_unmanaged if src not in labels else selects_managed
        dst_selected = selects_unmanaged if dst not in labels else selects_managed
        assert probe(as_source, src, dst, "tcp")[0] is not src_selected, (selector, src in labels)
        assert probe(as_destination, src, dst, "tcp")[0] is not dst_selected, (selector, dst in labels)


# ---------------------------------------------------------------------------
# Changes touch only what they change; restarts touch nothing
# ---------------------------------------------------------------------------
def _halves(entry: FlowEntry) -> set[int]:
    """The identities a policy entry's metadata match names (source and destination halves)."""
    metadata = entry.match_dict.get("metadata")
    if metadata is None:
        return set()
    value, mask = metadata if isinstance(metadata, tuple) else (metadata, (1 << 64) - 1)
    found = set()
    if mask & pipeline.META_SRC_MASK:
        found.add(value & pipeline.META_SRC_MASK)
    if mask & pipeline.META_DST_MASK:
        found.add(value >> pipeline.META_DST_SHIFT)
    return found


def _changed(before: dict, after: dict) -> dict[int, list[FlowEntry]]:
    """Entries removed or added per switch (a changed entry is a different cookie)."""
    assert before.keys() == after.keys()
    changed = {}
    for dpid in before:
        removed = [before[dpid][c] for c in before[dpid].keys() - after[dpid].keys()]
        added = [after[dpid][c] for c in after[dpid].keys() - before[dpid].keys()]
        changed[dpid] = removed + added
    return changed


@pytest.mark.parametrize("new_tier", ["db", "cache"], ids=["to-existing-label-set", "to-new-label-set"])
def test_a_label_change_changes_only_the_flows_that_mention_the_vm_or_its_identities(fabric, tiers, new_tier):
    rules = [
        rule("tier=web", "tier in (db,cache)", "allow", "tcp/5432"),
        rule("tier=app", "tier=db", "deny", "tcp/8000-8100"),
        rule("any", "tier=web", "allow", "icmp"),
    ]
    identities = Identities()
    state = policy_state(tiers, rules, default_action="deny")
    mover = fabric.vms[0]  # the web VM on the first hypervisor
    assert tier(tiers, mover) == "web"
    before = desired_tables(fabric.topo, state, identities)
    after = desired_tables(fabric.topo, state.with_labels(vm_name(mover), {"tier": new_tier}, []), identities)
    old_id = identities.id_for((("tier", "web"),))
    new_id = identities.id_for((("tier", new_tier),))
    assert old_id != new_id
    changed = _changed(before, after)
    for dpid in fabric.spines + fabric.leaves:
        assert not changed[dpid], f"fabric switch {dpid:#x} must keep every flow"
    for dpid in fabric.hypervisors:
        for entry in changed[dpid]:
            match = entry.match_dict
            if entry.table == pipeline.CLASSIFY:
                assert match == {"eth_dst": mover.mac}, entry
            elif entry.table == pipeline.INGRESS:
                assert dpid == mover.dpid and match.get("eth_src") == mover.mac, entry
            elif entry.table == pipeline.FORWARD:
                # ARP responders follow reachability: the mover's, where a rule now reaches it or no
                # longer does, and on its own hypervisor those of the peers its new labels reach.
                assert match.get("arp_op") == 1 and (dpid == mover.dpid or match.get("arp_tpa") == first_ip(mover)), entry
            else:
                assert entry.table == pipeline.POLICY and _halves(entry) & {old_id, new_id}, entry
        classify = [e for e in changed[dpid] if e.table == pipeline.CLASSIFY]
        # A hypervisor holds a classify entry only where one of its sources' rules names the
        # identity, so the mover's old and new entries change there and nowhere else.
        assert len(classify) <= 2, "at most the mover's destination identity, old and new"
    assert any(e.table == pipeline.CLASSIFY for d in fabric.hypervisors for e in changed[d])
    mover_ingress = [e for e in changed[mover.dpid] if e.table == pipeline.INGRESS]
    # Admit, ARP and ARP-with-address entries, and port security's admission of its own address
    # and of 0.0.0.0 over IPv4 and ARP (its inventory lists its IP): old and new.
    assert len(mover_ingress) == 2 * (3 + 4), "the mover's admission entries, old and new"
    other = next(d for d in fabric.hypervisors if d != mover.dpid)
    other_policy = [e for e in changed[other] if e.table == pipeline.POLICY]
    if new_tier == "cache":
        assert other_policy and all(new_id in _halves(e) for e in other_policy), "a new destination identity appears"
    else:
        assert not other_policy, "no identity appeared or disappeared for the other hypervisor's sources"
    # And the traffic follows the new labels.
    net = FakeNetwork(after, fabric.topo)
    other_web = next(vm for vm in fabric.vms if tier(tiers, vm) == "web" and vm != mover)
    assert probe(net, other_web, mover, "tcp", 5432)[0], "mover is now a db (or cache): web may reach it"
    assert not probe(net, mover, fabric.vms[5], "tcp", 5432)[0], "and it is no longer web"


def test_a_restart_with_the_persisted_identities_compiles_the_same_tables(fabric, tiers):
    rules = [rule("tier=web", "tier=db", "allow", "tcp/5432"), rule("tier=app", "any", "deny")]
    identities = Identities()
    # A history: every VM was a db first, then the tiers were assigned, so numbers follow that order.
    desired_tables(fabric.topo, policy_state({vm: {"tier": "db"} for vm in fabric.vms}), identities)
    state = policy_state(tiers, rules, default_action="deny")
    running = desired_tables(fabric.topo, state, identities)
    persisted = identities.assigned()
    restarted = desired_tables(fabric.topo, state, Identities(persisted))
    assert restarted == running
    assert {d: set(t) for d, t in restarted.items()} == {d: set(t) for d, t in running.items()}, "same cookies"
    assert desired_tables(fabric.topo, state, Identities(persisted)) == running, "and again"
    forgetful = desired_tables(fabric.topo, state, Identities())
    assert forgetful != running, "without the persisted numbers the flows would churn (so this test has teeth)"


def test_unmanaged_hosts_share_one_identity(fabric, tiers):
    labels = {vm: lbl for vm, lbl in tiers.items() if vm != fabric.vms[2]}
    tables = desired_tables(fabric.topo, policy_state(labels, [rule("any", "unmanaged", "deny")]))
    hv = fabric.vms[2].dpid
    classify = next(
        e for e in tables[hv].values() if e.table == pipeline.CLASSIFY and e.match_dict.get("eth_dst") == fabric.vms[2].mac
    )
    assert classify.metadata == (UNMANAGED << pipeline.META_DST_SHIFT, pipeline.META_DST_MASK)


# ---------------------------------------------------------------------------
# The property: the network does what `explain` says
# ---------------------------------------------------------------------------
# Interesting values first: hypothesis leans towards the start of each list.
LABEL_SETS = [
    {"tier": "web"},
    {"tier": "db"},
    None,  # unmanaged
    {},
    {"tier": "web", "env": "prod"},
    {"tier": "app"},
    {"tier": "app", "env": "dev"},
    {"tier": "db", "env": "prod"},
    {"env": "prod"},
]
SELECTORS = [
    "tier=web",
    "tier=db",
    "any",
    "tier!=db",
    "unmanaged",
    "tier in (web,app)",
    "env=prod",
    "tier",
    "!tier",
    "env notin (prod)",
    "tier=db,env=prod",
    "tier=web,!env",
]
SERVICES = [["tcp/5432"], ["any"], ["tcp"], ["tcp/5000-5500"], ["udp/53"], ["icmp"], ["tcp/5432", "icmp"], ["udp", "tcp/22"]]
PROBES = [("tcp", 5432), ("tcp", 22), ("tcp", 5001), ("udp", 53), ("icmp", None)]
PROPERTY = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

rule_strategy = st.fixed_dictionaries(
    {
        "src": st.sampled_from(SELECTORS),
        "dst": st.sampled_from(SELECTORS),
        "services": st.sampled_from(SERVICES),
        "action": st.sampled_from(["deny", "allow", "encrypt"]),
    }
)


@pytest.fixture(scope="module")
def small_fabric() -> LeafSpine:
    """Two hypervisors with three VMs each, and a tunnel between them."""
    return build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=3, tunnels=True)


def assert_network_follows_evaluate(
    net: FakeNetwork, state: PolicyState, inventory: Mapping[Host, Mapping[str, str]], probes, ipv6=False
):
    """For every VM pair and probe: delivered exactly when evaluate() allows, and then the reply comes back."""
    for src, dst in itertools.permutations(sorted(net.wiring.hosts.values(), key=lambda h: h.mac), 2):
        for proto, dport in probes:
            decision = evaluate(state.rules, state.default_action, inventory.get(src), inventory.get(dst), proto, dport)
            ok, frame = probe(net, src, dst, proto, dport, ipv6)
            assert ok is (decision.effective_action == "allow"), (
                f"{proto}/{dport} {inventory.get(src)} -> {inventory.get(dst)} (same hypervisor: {src.dpid == dst.dpid}):"
                f" delivered={ok}, evaluate says {decision.action} by {decision.rule.name if decision.rule else 'default'}"
            )
            if ok:
                assert delivered(net, dst, src, reply_frame(frame)), "an allowed connection's reply comes back"
                if src.dpid != dst.dpid:
                    # Both directions: encrypt connections only ever inside the tunnel, the rest never.
                    encrypt = decision.action == "encrypt"
                    for a, b, sent in ((src, dst, frame), (dst, src, reply_frame(frame))):
                        (copy,) = net.send(a, sent).deliveries
                        assert net.through_tunnel(copy) is encrypt and net.crossed_in_clear(copy) is not encrypt, (
                            f"{a.mac} -> {b.mac} {decision.action}: tunnel={net.through_tunnel(copy)} path={copy.path}"
                        )


@PROPERTY
@given(
    labels=st.lists(st.sampled_from(LABEL_SETS), min_size=6, max_size=6),
    rules=st.lists(rule_strategy, min_size=1, max_size=5),
    default_action=st.sampled_from(["deny", "allow"]),
    ipv6=st.booleans(),
)
def test_the_network_delivers_exactly_what_evaluate_allows(small_fabric, labels, rules, default_action, ipv6):
    """Random labels (some VMs unmanaged) and a random ordered rule list, in that order and reversed."""
    inventory = {vm: lbl for vm, lbl in zip(small_fabric.vms, labels, strict=True) if lbl is not None}
    for ordered in (rules, rules[::-1]):
        state = policy_state(inventory, ordered, default_action)
        net = FakeNetwork.compile(small_fabric.topo, state, tunnels=small_fabric.tunnels)
        assert_network_follows_evaluate(net, state, inventory, PROBES, ipv6)


def _rules_named(rules: Sequence[dict]) -> list[dict]:
    return [{**r, "name": f"r{i}"} for i, r in enumerate(rules)]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    labels=st.lists(st.sampled_from(LABEL_SETS), min_size=6, max_size=6),
    rules=st.lists(rule_strategy, min_size=1, max_size=4),
    data=st.data(),
)
def test_any_relabel_recompiles_cleanly_and_the_network_follows(small_fabric, labels, rules, data):
    """Compile, relabel one managed VM, recompile with the same identities: no conflicting flows, and the
    new tables deliver exactly what evaluate allows."""
    inventory = {vm: lbl for vm, lbl in zip(small_fabric.vms, labels, strict=True) if lbl is not None}
    if not inventory:
        return
    identities = Identities()
    state = policy_state(inventory, _rules_named(rules), "deny")
    desired_tables(small_fabric.topo, state, identities)
    mover = data.draw(st.sampled_from(sorted(inventory, key=lambda h: h.mac)))
    new_labels = data.draw(st.sampled_from([lbl for lbl in LABEL_SETS if lbl is not None]))
    moved = state.with_labels(vm_name(mover), new_labels, [k for k in inventory[mover] if k not in new_labels])
    inventory = {**inventory, mover: new_labels}
    assert moved.vm(vm_name(mover)).label_map == new_labels
    tunnels = small_fabric.tunnels
    net = FakeNetwork(desired_tables(small_fabric.topo, moved, identities, tunnels.plan), small_fabric.topo, tunnels)
    assert_network_follows_evaluate(net, moved, inventory, PROBES[::2])


@pytest.mark.parametrize("ipv6", [False, True], ids=["ipv4", "ipv6"])
def test_ip_flooded_from_the_fabric_to_a_vm_is_committed_so_its_reply_comes_back(fabric, tiers, ipv6):
    """A switch may flood a frame for a VM it has a route to: its datapath can still hold the
    cached flood decision for a moment after the route is installed (seen on OVS right after a
    hypervisor connected). The VM's reply must not meet an unknown connection and drop."""
    src, dst = fabric.vms[0], fabric.vms[4]
    assert src.dpid != dst.dpid
    tables = {dpid: list(table.values()) for dpid, table in desired_tables(fabric.topo, policy_state(tiers)).items()}
    tables[dst.dpid] = [
        e for e in tables[dst.dpid] if not (e.table == pipeline.FORWARD and e.match_dict.get("eth_dst") == dst.mac)
    ]
    net = FakeNetwork(tables, fabric.topo)
    request = icmp_frame(src, dst, ipv6=ipv6)
    trace = net.send(src, request)
    assert trace.reaches(dst) and len(trace.delivered_to()) > 1, "flooded to the hypervisor's VMs"
    assert delivered(net, dst, src, reply_frame(request)), "the reply is +est, not invalid"


def test_ip_flooded_to_a_hypervisor_before_its_first_vm_is_learned_is_committed():
    """Until a hypervisor's first VM is learned it looks like a fabric switch (no policy, no
    egress), but its edge ports already get floods. A request flooded to the VM then must be
    committed there, or the VM's reply, once the VM is learned, meets no connection and drops."""
    fabric = build_leaf_spine(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=1)
    src, dst = fabric.vms
    fabric.topo.remove_host(dst.mac)  # its port is a confirmed edge port; the VM has not spoken
    before = FakeNetwork.compile(fabric.topo)
    request = icmp_frame(src, dst)
    assert before.send(src, request).reaches(dst)
    fabric.topo.host_seen(dst.mac, dst.dpid, dst.port, first_ip(dst))  # the VM answers: learned
    after = FakeNetwork.compile(fabric.topo)
    after.conntrack = before.conntrack  # one datapath: the same conntrack before and after the compile
    assert delivered(after, dst, src, reply_frame(request)), "the reply is +est, not invalid"


def test_ip_the_root_floods_to_its_own_vms_is_committed():
    """A switch with VMs can be the flooding tree's root (here the middle of a line of three): IP
    for a host nobody knows climbs to it and it floods it, its own VMs included. Committed there
    too, or the VM's reply, once the VM is learned, meets no connection and drops."""
    topo, hosts = build_mesh([(1, 2), (2, 3)])
    src, dst = next(h for h in hosts if h.dpid == 1), next(h for h in hosts if h.dpid == 2)
    assert 2 not in graph.view(topo).parent, "the middle switch is the root"
    topo.remove_host(dst.mac)
    before = FakeNetwork.compile(topo)
    request = icmp_frame(src, dst)
    assert before.send(src, request).reaches(dst)
    topo.host_seen(dst.mac, dst.dpid, dst.port, first_ip(dst))
    after = FakeNetwork.compile(topo)
    after.conntrack = before.conntrack
    assert delivered(after, dst, src, reply_frame(request)), "the reply is +est, not invalid"
