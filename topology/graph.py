"""The switch graph: shortest-path next hops and the spanning tree used for flooding."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import networkx as nx

from topology.model import Link, Topology


@dataclass(frozen=True)
class GraphView:
    """Everything forwarding needs from the graph, computed once per topology change."""

    graph: nx.Graph
    # next_hop[dst_dpid][dpid] = the port on dpid that leads toward dst_dpid
    next_hop: Mapping[int, Mapping[int, int]]
    # tree_ports[dpid] = inter-switch ports of dpid that belong to the flooding tree
    tree_ports: dict[int, frozenset[int]]
    # parent[dpid] = dpid's tree port toward its component's root (the root has none): where a
    # switch sends unicast it holds no route for, so that its routes can leave those out
    parent: Mapping[int, int] = field(default_factory=dict)


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


def next_hops(graph: nx.Graph) -> NextHops:
    """For every destination switch, a BFS tree rooted there gives each other switch its
    port toward it. A tree per destination makes destination-based forwarding loop-free."""
    return NextHops(graph)


class NextHops(Mapping[int, Mapping[int, int]]):
    """next_hop[dst][dpid], computed on first use per destination.

    A data centre is mostly stubs: hypervisors with one neighbour (their leaf). The BFS tree rooted
    at a stub is its edge to that neighbour plus the neighbour's own tree (the stub's only
    discovery is the neighbour, whose expansion then finds exactly what it finds from itself), so
    a stub's column is a view of its neighbour's: BFS runs only from the switches that are not
    stubs, and skips expanding stubs (their one neighbour is always already seen). At 1,000
    hypervisors that is about a hundred small searches instead of a thousand large ones."""

    def __init__(self, graph: nx.Graph) -> None:
        self._graph = graph
        self._adjacent = {n: sorted(graph.neighbors(n)) for n in graph.nodes}
        # node -> [(neighbour, the neighbour's port toward node)], in neighbour order: a BFS step
        # reads the port from here rather than from the graph's edge attributes.
        self._toward: dict[int, list[tuple[int, int]]] = {
            n: [(c, graph.edges[c, n]["ports"][c]) for c in neighbours] for n, neighbours in self._adjacent.items()
        }
        self._columns: dict[int, Mapping[int, int]] = {}

    def _port(self, node: int, toward: int) -> int:
        return self._graph.edges[node, toward]["ports"][node]

    def _bfs(self, root: int) -> dict[int, int]:
        toward = self._toward
        column: dict[int, int] = {}
        seen = {root}
        queue = deque([root])
        while queue:
            node = queue.popleft()
            neighbours = toward[node]
            if node != root and len(neighbours) == 1:
                continue  # a stub: its one neighbour discovered it
            for child, port in neighbours:
                if child not in seen:
                    seen.add(child)
                    column[child] = port
                    queue.append(child)
        return column

    def __getitem__(self, dst: int) -> Mapping[int, int]:
        column = self._columns.get(dst)
        if column is None:
            neighbours = self._adjacent[dst]  # KeyError for a switch not in the graph
            if len(neighbours) == 1:
                parent = neighbours[0]
                base = self[parent] if len(self._adjacent[parent]) != 1 else self._bfs(parent)  # a pair: no recursion
                column = StubColumn(base, dst, parent, self._port(parent, dst))
            else:
                column = self._bfs(dst)
            self._columns[dst] = column
        return column

    def __iter__(self) -> Iterator[int]:
        return iter(self._adjacent)

    def __len__(self) -> int:
        return len(self._adjacent)

    def __contains__(self, dst: object) -> bool:
        return dst in self._adjacent


class StubColumn(Mapping[int, int]):
    """The column of a stub switch `dst`: its neighbour `parent`'s column, where the stub itself is
    no one's next hop and the parent's port toward it is its own."""

    __slots__ = ("_base", "_dst", "_parent", "_port")

    def __init__(self, base: Mapping[int, int], dst: int, parent: int, port: int) -> None:
        self._base, self._dst, self._parent, self._port = base, dst, parent, port

    def __getitem__(self, dpid: int) -> int:
        if dpid == self._parent:
            return self._port
        if dpid == self._dst:
            raise KeyError(dpid)
        return self._base[dpid]

    @property
    def base(self) -> Mapping[int, int]:
        return self._base

    @property
    def parent(self) -> int:
        return self._parent

    def same_stub(self, other: StubColumn) -> bool:
        """The same stub behind the same parent port (the columns then differ only where the bases do)."""
        return (self._dst, self._parent, self._port) == (other._dst, other._parent, other._port)

    def get(self, dpid, default=None):
        if dpid == self._parent:
            return self._port
        if dpid == self._dst:
            return default
        return self._base.get(dpid, default)

    def __contains__(self, dpid: object) -> bool:
        return dpid == self._parent or (dpid != self._dst and dpid in self._base)

    def __iter__(self) -> Iterator[int]:
        yield self._parent
        for dpid in self._base:
            if dpid != self._dst:
                yield dpid

    def __len__(self) -> int:
        return len(self._base) - (self._dst in self._base) + 1


def tree_root(graph: nx.Graph, component: set[int]) -> int:
    """The root of a component's flooding tree: its lowest dpid with two or more neighbours (a
    stub, such as a hypervisor with one leaf, would have to hold a route to every host), or its
    lowest dpid when every switch is a stub."""
    return min((n for n in component if graph.degree(n) >= 2), default=min(component))


def spanning_tree(graph: nx.Graph) -> tuple[dict[int, frozenset[int]], dict[int, int]]:
    """The flooding tree: a BFS tree of each connected component from its root (tree_root),
    neighbours in sorted order. Returns every switch's tree ports and its port toward the root."""
    ports: dict[int, set[int]] = {n: set() for n in graph.nodes}
    parent: dict[int, int] = {}
    for component in sorted(nx.connected_components(graph), key=min):
        root = tree_root(graph, component)
        for child, up in nx.bfs_predecessors(graph, root, sort_neighbors=sorted):
            edge_ports = graph.edges[child, up]["ports"]
            ports[child].add(edge_ports[child])
            ports[up].add(edge_ports[up])
            parent[child] = edge_ports[child]
    return {n: frozenset(p) for n, p in ports.items()}, parent


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
    tree_ports, parent = spanning_tree(graph)
    return GraphView(graph, next_hops(graph), tree_ports, parent)
