"""The switch graph: shortest-path next hops are loop-free, the flooding tree spans, results are deterministic."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import networkx as nx
import pytest

from apps.desired import desired_tables
from tests.fakeoftable import build_leaf_spine, build_mesh
from topology import graph
from topology.model import Link, PortRef, Topology

REPO = Path(__file__).resolve().parents[2]


def follow(view: graph.GraphView, topo: Topology, src: int, dst: int) -> list[int]:
    """Walk next hops from src toward dst through the real links; stop on a revisit."""
    peers = {e: o for lk in topo.links for e, o in ((lk.a, lk.b), (lk.b, lk.a))}
    path = [src]
    while path[-1] != dst:
        port = view.next_hop[dst].get(path[-1])
        assert port is not None, f"switch {path[-1]:#x} has no next hop toward {dst:#x}"
        nxt = peers[PortRef(path[-1], port)].dpid
        assert nxt not in path, f"loop toward {dst:#x}: {path + [nxt]}"
        path.append(nxt)
    return path


@pytest.fixture(scope="module")
def fabric():
    return build_leaf_spine(spines=2, leaves=3, hypervisors_per_leaf=2)


def test_next_hops_reach_every_switch_without_loops_along_shortest_paths(fabric):
    topo = fabric.topo
    view = graph.view(topo)
    switches = sorted(topo.switches)
    assert set(view.next_hop) == set(switches)
    for dst in switches:
        assert set(view.next_hop[dst]) == set(switches) - {dst}
        for src in switches:
            path = follow(view, topo, src, dst)
            assert len(path) - 1 == nx.shortest_path_length(view.graph, src, dst)
            assert graph.shortest_path(view.graph, src, dst) == path


def test_next_hop_ports_are_inter_switch_ports(fabric):
    topo = fabric.topo
    view = graph.view(topo)
    for hops in view.next_hop.values():
        for dpid, port in hops.items():
            assert port in topo.inter_switch_ports(dpid)


def test_looped_fabric_has_a_spanning_tree_with_n_minus_one_edges(fabric):
    topo = fabric.topo
    view = graph.view(topo)
    assert view.graph.number_of_edges() > len(topo.switches) - 1, "the fixture must contain loops"
    tree_links = [lk for lk in topo.links if lk.a.port in view.tree_ports[lk.a.dpid] and lk.b.port in view.tree_ports[lk.b.dpid]]
    assert len(tree_links) == len(topo.switches) - 1
    tree = nx.Graph((lk.a.dpid, lk.b.dpid) for lk in tree_links)
    assert set(tree.nodes) == set(topo.switches)
    assert nx.is_tree(tree)
    # Every tree port is an end of a tree link: no half-enabled link floods one way only.
    ends = {(e.dpid, e.port) for lk in tree_links for e in lk.ends()}
    assert ends == {(d, p) for d, ports in view.tree_ports.items() for p in ports}


def test_parallel_links_use_the_lowest_numbered_one():
    topo = Topology()
    for dpid in (1, 2):
        topo.switch_connected(dpid)
    topo.link_seen(PortRef(1, 7), PortRef(2, 7), 0.0)
    topo.link_seen(PortRef(1, 3), PortRef(2, 4), 0.0)
    view = graph.view(topo)
    assert view.next_hop[2][1] == 3 and view.next_hop[1][2] == 4
    assert view.tree_ports == {1: frozenset({3}), 2: frozenset({4})}


def test_disconnected_components_get_a_tree_each_and_no_route_between():
    topo, _ = build_mesh([(1, 2), (2, 3), (3, 1), (10, 11)])
    view = graph.view(topo)
    assert 10 not in view.next_hop[1] and 1 not in view.next_hop[10]
    assert graph.shortest_path(view.graph, 1, 10) == []
    assert sum(len(p) for p in view.tree_ports.values()) == 2 * (2 + 1)


def test_links_to_unknown_switches_are_ignored():
    topo, _ = build_mesh([(1, 2)])
    topo.links[Link.between(PortRef(1, 9), PortRef(99, 1))] = 0.0
    view = graph.view(topo)
    assert set(view.graph.nodes) == {1, 2}
    assert view.tree_ports[1] == frozenset({1})


def cookie_sets(topo: Topology) -> dict[int, list[int]]:
    return {dpid: sorted(table) for dpid, table in desired_tables(topo).items()}


def test_same_network_learned_in_any_order_compiles_to_the_same_flows():
    reference = build_leaf_spine(dual_homed=True)
    expected = cookie_sets(reference.topo)
    for seed in range(5):
        shuffled = build_leaf_spine(dual_homed=True, order=random.Random(seed))
        assert shuffled.topo.links.keys() == reference.topo.links.keys()
        assert cookie_sets(shuffled.topo) == expected
        view_a, view_b = graph.view(reference.topo), graph.view(shuffled.topo)
        assert view_a.next_hop == view_b.next_hop and view_a.tree_ports == view_b.tree_ports


_COOKIES_SCRIPT = """
import json
from apps.desired import desired_tables
from tests.fakeoftable import build_leaf_spine
tables = desired_tables(build_leaf_spine(dual_homed=True).topo)
print(json.dumps({str(d): sorted(t) for d, t in tables.items()}))
"""


def test_cookies_are_the_same_in_every_process():
    """Cookies must not depend on Python's per-process hash seed, or every restart would rewrite every flow."""
    expected = {str(d): c for d, c in cookie_sets(build_leaf_spine(dual_homed=True).topo).items()}
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _COOKIES_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == expected
