"""graph.view's results equal the networkx reference it replaced, on any topology: next hops toward
every destination from every switch, and the flooding tree's ports.

The oracle below is the networkx implementation topology/graph.py had before the BFS over core
switches (stubs derived from their parent): one BFS tree per destination, rooted there, neighbours
visited in sorted order, the lowest-numbered link of a parallel bundle, one spanning tree per
connected component from its lowest dpid with two or more neighbours (else its lowest dpid), and
each switch's parent port on that tree. Whatever view() does inside, its public results must stay
exactly these."""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from topology import graph
from topology.model import Link, Port, PortRef, Topology

PORTS = 8  # links are drawn on ports 1..PORTS
DECLARED = 40  # ports 1..DECLARED are declared (up) on every switch
DPIDS = [1, 2, 3, 5, 8, 13, 21, 0x100, 0x101, 0x200, 0x1011, 0x1012, 0xFFFF]  # not in insertion order


# ---------------------------------------------------------------------------
# The oracle: today's networkx implementation, copied verbatim.
# ---------------------------------------------------------------------------
def _link_key(link: Link) -> tuple[int, int, int, int]:
    return (link.a.dpid, link.a.port, link.b.dpid, link.b.port)


def build_graph(topo: Topology) -> nx.Graph:
    graph_ = nx.Graph()
    graph_.add_nodes_from(sorted(topo.switches))
    for link in sorted(topo.links, key=_link_key):
        a, b = link.a, link.b
        if a.dpid == b.dpid or a.dpid not in topo.switches or b.dpid not in topo.switches:
            continue
        if graph_.has_edge(a.dpid, b.dpid):
            continue
        graph_.add_edge(a.dpid, b.dpid, ports={a.dpid: a.port, b.dpid: b.port})
    return graph_


def next_hops_for(graph_: nx.Graph, dst: int) -> dict[int, int]:
    if dst not in graph_:
        return {}
    tree = nx.bfs_predecessors(graph_, dst, sort_neighbors=sorted)
    return {node: graph_.edges[node, parent]["ports"][node] for node, parent in tree}


def next_hops(graph_: nx.Graph) -> dict[int, dict[int, int]]:
    return {dst: next_hops_for(graph_, dst) for dst in graph_.nodes}


def spanning_tree(graph_: nx.Graph) -> tuple[dict[int, frozenset[int]], dict[int, int]]:
    ports: dict[int, set[int]] = {n: set() for n in graph_.nodes}
    parents: dict[int, int] = {}
    for component in sorted(nx.connected_components(graph_), key=min):
        inner = [n for n in component if len(list(graph_.neighbors(n))) > 1]
        root = min(inner) if inner else min(component)
        for child, parent in nx.bfs_predecessors(graph_, root, sort_neighbors=sorted):
            edge_ports = graph_.edges[child, parent]["ports"]
            ports[child].add(edge_ports[child])
            ports[parent].add(edge_ports[parent])
            parents[child] = edge_ports[child]
    return {n: frozenset(p) for n, p in ports.items()}, parents


@dataclass
class Oracle:
    next_hop: dict[int, dict[int, int]]
    tree_ports: dict[int, frozenset[int]]
    parent: dict[int, int]


def oracle(topo: Topology) -> Oracle:
    graph_ = build_graph(topo)
    return Oracle(next_hops(graph_), *spanning_tree(graph_))


# ---------------------------------------------------------------------------
# The comparison.
# ---------------------------------------------------------------------------
def describe(topo: Topology) -> str:
    switches = ", ".join(f"{d:#x}" for d in sorted(topo.switches))
    links = "\n  ".join(f"{lk.a.dpid:#x}:{lk.a.port} - {lk.b.dpid:#x}:{lk.b.port}" for lk in sorted(topo.links, key=_link_key))
    return f"switches: {switches}\nlinks:\n  {links or '(none)'}"


def assert_same_as_oracle(topo: Topology, history: list[str] | None = None) -> None:
    expected = oracle(topo)
    got = graph.view(topo)
    where = describe(topo) + ("\nafter:\n  " + "\n  ".join(history) if history else "")
    # Every destination the model could ask about: switches, dpids only named by links, strangers.
    named = {e.dpid for lk in topo.links for e in lk.ends()}
    candidates = sorted(set(topo.switches) | named | {0, 4, 0xDEAD})
    for dst in candidates:
        for dpid in candidates:
            want = expected.next_hop.get(dst, {}).get(dpid)
            have = got.next_hop.get(dst, {}).get(dpid)
            assert have == want, f"next hop of {dpid:#x} toward {dst:#x}: view says {have}, the reference {want}\n{where}"
    for dst, hops in expected.next_hop.items():
        assert dst in got.next_hop, f"no next_hop entry for switch {dst:#x}\n{where}"
        column = got.next_hop[dst]
        for dpid in candidates:  # indexing and membership, not only get(), as callers use all three
            want = hops.get(dpid)
            assert (dpid in column) == (want is not None), (
                f"next_hop[{dst:#x}]: `{dpid:#x} in` says {dpid in column}, the reference has {want}\n{where}"
            )
            try:
                have_port = column[dpid]
            except KeyError:
                have_port = None
            assert have_port == want, f"next_hop[{dst:#x}][{dpid:#x}] is {have_port}, the reference {want}\n{where}"
        assert len(column) == len(hops), f"len(next_hop[{dst:#x}]) is {len(column)}, the reference {len(hops)}\n{where}"
        have = dict(column)
        assert have == hops, f"next_hop[{dst:#x}] iterates to {_hex(have)}, the reference is {_hex(hops)}\n{where}"
    for dst in candidates:
        assert (dst in got.next_hop) == (dst in expected.next_hop), (
            f"`{dst:#x} in next_hop` says {dst in got.next_hop}, the reference {dst in expected.next_hop}\n{where}"
        )
    assert set(got.next_hop) == set(expected.next_hop), (
        f"next_hop destinations: view {sorted(got.next_hop)}, reference {sorted(expected.next_hop)}\n{where}"
    )
    have_tree = {d: frozenset(p) for d, p in dict(got.tree_ports).items()}
    if have_tree != expected.tree_ports:
        wrong = sorted(set(have_tree) | set(expected.tree_ports))
        lines = [
            f"  {d:#x}: view {sorted(have_tree.get(d, ())) if d in have_tree else 'absent'}, "
            f"reference {sorted(expected.tree_ports[d]) if d in expected.tree_ports else 'absent'}"
            for d in wrong
            if have_tree.get(d) != expected.tree_ports.get(d)
        ]
        raise AssertionError("tree_ports differ:\n" + "\n".join(lines) + "\n" + where)
    have_parent = dict(got.parent)
    assert have_parent == expected.parent, f"parents: view {_hex(have_parent)}, reference {_hex(expected.parent)}\n{where}"


def _hex(hops: dict[int, int]) -> dict[str, int]:
    return {f"{d:#x}": p for d, p in sorted(hops.items())}


# ---------------------------------------------------------------------------
# Random topologies, built through the Topology API.
# ---------------------------------------------------------------------------
def add_switch(topo: Topology, dpid: int) -> None:
    topo.switch_connected(dpid)
    topo.set_ports(dpid, [Port(p, f"s{dpid:x}-eth{p}") for p in range(1, DECLARED + 1)])


ports = st.integers(1, PORTS)


@dataclass
class Spec:
    """A topology to build: core switches linked at random, stubs hanging off a parent by one link
    (or a parallel bundle to that same parent), isolated switches, self links, links to switches the
    model does not know."""

    core: list[int]
    core_links: list[tuple[int, int, int, int]]  # indexes into core, ports
    stubs: list[tuple[int, int, list[tuple[int, int]]]]  # dpid, parent index (into core + earlier stubs), port pairs
    isolated: list[int]
    self_links: list[tuple[int, int, int]]  # switch index, two ports
    strangers: list[tuple[int, int, int]]  # switch index, port, unknown dpid
    switches: list[int] = field(default_factory=list)
    fresh_ports: bool = False  # every link on ports of its own (no re-cabling): denser, loopier graphs


@st.composite
def specs(draw) -> Spec:
    dpids = draw(st.permutations(DPIDS))
    n_core = draw(st.integers(0, 6))
    n_stubs = draw(st.integers(0, 5))
    n_isolated = draw(st.integers(0, 2))
    core = list(dpids[:n_core])
    stubs_ids = list(dpids[n_core : n_core + n_stubs])
    isolated = list(dpids[n_core + n_stubs : n_core + n_stubs + n_isolated])
    core_links = []
    if core:
        index = st.integers(0, len(core) - 1)
        core_links = draw(st.lists(st.tuples(index, ports, index, ports), max_size=14))
        if len(core) >= 3 and draw(st.booleans()):  # a ring under the random links: loops for sure
            core_links = [(i, 1, (i + 1) % len(core), 2) for i in range(len(core))] + core_links
    stubs = []
    for i, dpid in enumerate(stubs_ids):
        parents = len(core) + i
        if parents == 0:
            isolated.append(dpid)
            continue
        parent = draw(st.integers(0, parents - 1))
        bundle = draw(st.lists(st.tuples(ports, ports), min_size=1, max_size=3))
        stubs.append((dpid, parent, bundle))
    switches = core + [s[0] for s in stubs] + isolated
    self_links, strangers = [], []
    if switches:
        index = st.integers(0, len(switches) - 1)
        self_links = draw(st.lists(st.tuples(index, ports, ports), max_size=2))
        strangers = draw(st.lists(st.tuples(index, ports, st.sampled_from([4, 0xDEAD])), max_size=2))
    return Spec(core, core_links, stubs, isolated, self_links, strangers, switches, draw(st.booleans()))


def build(spec: Spec) -> Topology:
    """Learn the spec the way the controller would: switches, then LLDP-seen links (a port carries
    one link: a later link on a used port replaces the earlier one, as a re-cabling does)."""
    topo = Topology()
    for dpid in spec.switches:
        add_switch(topo, dpid)
    seen: list[tuple[PortRef, PortRef]] = []
    for a, pa, b, pb in spec.core_links:
        seen.append((PortRef(spec.core[a], pa), PortRef(spec.core[b], pb)))
    everyone = spec.core + [s[0] for s in spec.stubs]
    for dpid, parent, bundle in spec.stubs:
        for own, theirs in bundle:
            seen.append((PortRef(dpid, own), PortRef(everyone[parent], theirs)))
    for i, pa, pb in spec.self_links:
        seen.append((PortRef(spec.switches[i], pa), PortRef(spec.switches[i], pb)))
    for i, port, unknown in spec.strangers:
        seen.append((PortRef(spec.switches[i], port), PortRef(unknown, 1)))
    used: dict[int, int] = {}

    def own_port(ref: PortRef) -> PortRef:
        used[ref.dpid] = used.get(ref.dpid, 0) + 1
        return PortRef(ref.dpid, used[ref.dpid])

    for a, b in seen:
        if spec.fresh_ports and (a.dpid, a.port) != (b.dpid, b.port):
            a, b = own_port(a), own_port(b)
        topo.link_seen(a, b, 0.0)
    return topo


@settings(max_examples=300, deadline=None)
@given(specs())
def test_view_equals_the_networkx_reference_on_learned_topologies(spec):
    assert_same_as_oracle(build(spec))


@settings(max_examples=150, deadline=None)
@given(
    specs(),
    st.lists(
        st.tuples(st.sampled_from(DPIDS), ports, st.sampled_from(DPIDS), ports),
        max_size=8,
    ),
)
def test_view_equals_the_reference_with_links_written_directly(spec, extra):
    """Links written straight into topo.links (as a store load or a test does): a port may then carry
    several links, and a link may name a switch the model does not know."""
    topo = build(spec)
    for a, pa, b, pb in extra:
        if (a, pa) != (b, pb):
            topo.links[Link.between(PortRef(a, pa), PortRef(b, pb))] = 0.0
    assert_same_as_oracle(topo)


mutations = st.lists(
    st.one_of(
        st.tuples(st.just("link"), st.sampled_from(DPIDS), ports, st.sampled_from(DPIDS), ports),
        st.tuples(st.just("unlink"), st.integers(0, 50)),
        st.tuples(st.just("port-down"), st.sampled_from(DPIDS), ports),
        st.tuples(st.just("port-up"), st.sampled_from(DPIDS), ports),
        st.tuples(st.just("add-switch"), st.sampled_from(DPIDS)),
        st.tuples(st.just("remove-switch"), st.sampled_from(DPIDS)),
        st.tuples(st.just("disconnect"), st.sampled_from(DPIDS)),
    ),
    min_size=1,
    max_size=12,
)


def mutate(topo: Topology, change: tuple) -> str:
    kind, *args = change
    if kind == "link":
        a, pa, b, pb = args
        topo.link_seen(PortRef(a, pa), PortRef(b, pb), 0.0)
        return f"link_seen {a:#x}:{pa} - {b:#x}:{pb}"
    if kind == "unlink":
        links = sorted(topo.links, key=_link_key)
        if not links:
            return "unlink (no link)"
        link = links[args[0] % len(links)]
        del topo.links[link]
        return f"del links[{link.a.dpid:#x}:{link.a.port} - {link.b.dpid:#x}:{link.b.port}]"
    if kind in ("port-down", "port-up"):
        dpid, port = args
        if dpid not in topo.switches:
            return f"{kind} {dpid:#x}:{port} (no such switch)"
        topo.set_port(dpid, Port(port, f"s{dpid:x}-eth{port}", up=kind == "port-up"))
        return f"{kind} {dpid:#x}:{port}"
    if kind == "add-switch":
        add_switch(topo, args[0])
        return f"add switch {args[0]:#x}"
    if kind == "remove-switch":
        topo.remove_switch(args[0])
        return f"remove switch {args[0]:#x}"
    topo.switch_disconnected(args[0])
    return f"disconnect {args[0]:#x}"


@settings(max_examples=150, deadline=None)
@given(specs(), mutations)
def test_view_follows_the_same_topology_object_as_it_changes(spec, changes):
    """view() may keep what it derived between calls: after every change of the same Topology
    object its results are still the reference's."""
    topo = build(spec)
    history: list[str] = []
    assert_same_as_oracle(topo, history)
    for change in changes:
        history.append(mutate(topo, change))
        assert_same_as_oracle(topo, history)


# ---------------------------------------------------------------------------
# Fixed shapes, so that a failure names the case.
# ---------------------------------------------------------------------------
def topology(switches, links) -> Topology:
    topo = Topology()
    for dpid in switches:
        add_switch(topo, dpid)
    for a, pa, b, pb in links:
        topo.link_seen(PortRef(a, pa), PortRef(b, pb), 0.0)
    return topo


def test_empty_and_single_switch():
    assert_same_as_oracle(Topology())
    assert_same_as_oracle(topology([7], []))


def test_stubs_under_a_leaf_spine():
    # spines 1, 2; leaves 3, 5 (both spines); hypervisor stubs 8, 13 under leaf 3, 21 under leaf 5.
    links = [(3, 1, 1, 1), (3, 2, 2, 1), (5, 1, 1, 2), (5, 2, 2, 2), (8, 1, 3, 3), (13, 1, 3, 4), (21, 1, 5, 3)]
    assert_same_as_oracle(topology([1, 2, 3, 5, 8, 13, 21], links))


def test_a_stub_with_a_parallel_bundle_to_its_parent_uses_the_lowest_link():
    links = [(1, 1, 2, 1), (8, 5, 1, 7), (8, 2, 1, 3), (8, 3, 1, 4)]
    assert_same_as_oracle(topology([1, 2, 8], links))


def test_a_chain_of_stubs_and_a_stub_of_a_lone_switch():
    links = [(1, 1, 2, 1), (2, 2, 3, 1), (3, 2, 5, 1), (8, 1, 13, 1)]
    assert_same_as_oracle(topology([1, 2, 3, 5, 8, 13], links))


def test_two_switches_only_and_a_switch_with_only_a_self_link():
    assert_same_as_oracle(topology([1, 2, 3], [(1, 1, 2, 1), (3, 1, 3, 2)]))


def test_several_components_and_isolated_switches():
    links = [(1, 1, 2, 1), (2, 2, 3, 1), (3, 2, 1, 2), (0x100, 1, 0x101, 1), (0x1011, 1, 0x100, 2)]
    assert_same_as_oracle(topology([1, 2, 3, 0x100, 0x101, 0x1011, 0x200, 0xFFFF], links))


def test_a_link_to_an_unknown_switch_and_a_stub_whose_parent_is_gone():
    topo = topology([1, 2, 8], [(1, 1, 2, 1), (8, 1, 2, 2), (1, 2, 99, 1)])
    assert_same_as_oracle(topo)
    topo.remove_switch(2)
    assert_same_as_oracle(topo)
    topo.links[Link.between(PortRef(8, 1), PortRef(2, 2))] = 0.0  # a link naming a removed switch
    assert_same_as_oracle(topo)


def test_a_stub_that_gains_a_second_uplink_and_loses_it_again():
    topo = topology([1, 2, 3, 8], [(1, 1, 2, 1), (2, 2, 3, 1), (3, 2, 1, 2), (8, 1, 1, 3)])
    assert_same_as_oracle(topo)
    topo.link_seen(PortRef(8, 2), PortRef(3, 3), 0.0)
    assert_same_as_oracle(topo)
    topo.set_port(8, Port(1, "s8-eth1", up=False))
    assert_same_as_oracle(topo)
    del topo.links[Link.between(PortRef(8, 2), PortRef(3, 3))]
    assert_same_as_oracle(topo)
