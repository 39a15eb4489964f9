"""The switch graph: shortest-path next hops and the spanning tree used for flooding."""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from topology.model import Link, Topology


@dataclass(frozen=True)
class GraphView:
    """Everything forwarding needs from the graph, computed once per topology change."""

    graph: nx.Graph
    # next_hop[dst_dpid][dpid] = the port on dpid that leads toward dst_dpid
    next_hop: dict[int, dict[int, int]]
    # tree_ports[dpid] = inter-switch ports of dpid that belong to the flooding tree
    tree_ports: dict[int, frozenset[int]]


def build_graph(topo: Topology) -> nx.Graph:
    """One node per switch, one edge per pair of adjacent switches (the lowest-numbered link of
    a parallel bundle), inserted in sorted order so that every result below is deterministic."""
    graph = nx.Graph()
    graph.add_nodes_from(sorted(topo.switches))
    for link in sorted(topo.links, key=_link_key):
        a, b = link.a, link.b
        if a.dpid == b.dpid or a.dpid not in topo.switches or b.dpid not in topo.switches:
            continue
        if graph.has_edge(a.dpid, b.dpid):
            continue
        graph.add_edge(a.dpid, b.dpid, ports={a.dpid: a.port, b.dpid: b.port})
    return graph


def _link_key(link: Link) -> tuple[int, int, int, int]:
    return (link.a.dpid, link.a.port, link.b.dpid, link.b.port)


def next_hops(graph: nx.Graph) -> dict[int, dict[int, int]]:
    """For every destination switch, a BFS tree rooted there gives each other switch its
    port toward it. A tree per destination makes destination-based forwarding loop-free."""
    return {dst: next_hops_for(graph, dst) for dst in graph.nodes}


def spanning_tree_ports(graph: nx.Graph) -> dict[int, frozenset[int]]:
    """Ports on the flooding tree: a BFS tree of each connected component from its lowest dpid."""
    ports: dict[int, set[int]] = {n: set() for n in graph.nodes}
    for component in sorted(nx.connected_components(graph), key=min):
        root = min(component)
        for child, parent in nx.bfs_predecessors(graph, root, sort_neighbors=sorted):
            edge_ports = graph.edges[child, parent]["ports"]
            ports[child].add(edge_ports[child])
            ports[parent].add(edge_ports[parent])
    return {n: frozenset(p) for n, p in ports.items()}


def shortest_path(graph: nx.Graph, src: int, dst: int) -> list[int]:
    """The switch path from src to dst that unicast forwarding follows, or [] if none."""
    path = [src]
    hops = next_hops_for(graph, dst)
    node = src
    while node != dst:
        if node not in hops:
            return []
        port = hops[node]
        node = next(n for n in graph.neighbors(node) if graph.edges[node, n]["ports"][node] == port)
        path.append(node)
    return path


def next_hops_for(graph: nx.Graph, dst: int) -> dict[int, int]:
    if dst not in graph:
        return {}
    tree = nx.bfs_predecessors(graph, dst, sort_neighbors=sorted)
    return {node: graph.edges[node, parent]["ports"][node] for node, parent in tree}


def view(topo: Topology) -> GraphView:
    graph = build_graph(topo)
    return GraphView(graph, next_hops(graph), spanning_tree_ports(graph))
