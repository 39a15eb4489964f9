"""The host table's indexes (by port, by switch, by address) always equal what a full scan finds, and
a frame from a host, known or new, is handled without scanning every host or link: its cost does not
grow with the data centre."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fakeoftable import build_leaf_spine, first_ip
from tests.unit.test_learner import arp_frame
from topology.learner import Learner, Punt
from topology.model import Host, HostTable, LinkTable

MACS = [f"02:00:00:00:00:{i:02x}" for i in range(6)]
IPS = [f"10.0.0.{i}" for i in range(4)]

hosts = st.builds(
    Host,
    st.sampled_from(MACS),
    st.frozensets(st.sampled_from(IPS), max_size=2),
    st.integers(1, 3),
    st.integers(1, 3),
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("set"), hosts),
        st.tuples(st.just("del"), st.sampled_from(MACS)),
        st.tuples(st.just("pop"), st.sampled_from(MACS)),
        st.tuples(st.just("update"), st.lists(hosts, max_size=3)),
        st.tuples(st.just("setdefault"), hosts),
        st.tuples(st.just("popitem"), st.none()),
        st.tuples(st.just("clear"), st.none()),
    ),
    max_size=40,
)


def scanned(table: HostTable) -> tuple[dict, dict, dict]:
    by_port, by_dpid, by_ip = {}, {}, {}
    for mac, host in table.items():
        by_port.setdefault((host.dpid, host.port), set()).add(mac)
        by_dpid.setdefault(host.dpid, set()).add(mac)
        for ip in host.ips:
            by_ip.setdefault(ip, set()).add(mac)
    return by_port, by_dpid, by_ip


@settings(max_examples=300, deadline=None)
@given(operations)
def test_the_indexes_always_equal_a_full_scan(ops):
    table = HostTable()
    for op, arg in ops:
        if op == "set":
            table[arg.mac] = arg
        elif op == "del" and arg in table:
            del table[arg]
        elif op == "pop":
            table.pop(arg, None)
        elif op == "update":
            table.update({h.mac: h for h in arg})
        elif op == "setdefault":
            table.setdefault(arg.mac, arg)
        elif op == "popitem" and table:
            table.popitem()
        elif op == "clear":
            table.clear()
        assert (table.by_port, table.by_dpid, table.by_ip) == scanned(table)


class Armed:
    """Once armed, walking the whole container fails the test (indexes built lazily after a change
    may walk it before: that is once per change, not once per frame)."""

    armed = False

    def _walk(self, walk):
        if self.armed:
            raise AssertionError(f"every entry of {type(self).__name__} was scanned")
        return walk()

    def __iter__(self):
        return self._walk(lambda: super(Armed, self).__iter__())

    def items(self):
        return self._walk(lambda: super(Armed, self).items())

    def values(self):
        return self._walk(lambda: super(Armed, self).values())

    def keys(self):
        return self._walk(lambda: super(Armed, self).keys())


class NoScanHosts(Armed, HostTable):
    pass


class NoScanLinks(Armed, LinkTable):
    pass


def test_a_frame_from_a_known_or_a_new_host_scans_no_host_and_no_link():
    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=4)
    topo = fabric.topo
    learner = Learner(topo, key=b"k" * 32, now=0.0)
    watched_hosts = NoScanHosts()
    for mac, host in dict.items(topo.hosts):
        watched_hosts[mac] = host
    watched_links = NoScanLinks()
    for link, seen in dict.items(topo.links):
        watched_links[link] = seen
    topo.hosts, topo.links = watched_hosts, watched_links
    known = fabric.vms[3]
    for dpid in topo.switches:  # the lazily built indexes, as the first compile builds them
        topo.edge_ports(dpid)
    watched_hosts.armed = watched_links.armed = True
    learner.packet_in(known.dpid, known.port, arp_frame(known.mac, first_ip(known)), Punt.MISS, 1.0)
    # A new host, and one that claims a known host's address (the newest claim wins).
    learner.packet_in(known.dpid, known.port, arp_frame("02:ee:00:00:00:01", "10.250.0.1"), Punt.MISS, 1.1)
    learner.packet_in(known.dpid, known.port, arp_frame("02:ee:00:00:00:02", first_ip(fabric.vms[5])), Punt.MISS, 1.2)
    assert dict.__contains__(topo.hosts, "02:ee:00:00:00:01") and dict.__contains__(topo.hosts, "02:ee:00:00:00:02")
    assert first_ip(fabric.vms[5]) not in dict.__getitem__(topo.hosts, fabric.vms[5].mac).ips


def test_a_new_link_is_learned_without_scanning_every_link():
    """A cold start of 1,000 hypervisors learns 1,100 links one by one: a scan of every link for
    each (the port's old link, the inter-switch ports) cost seconds of the controller's time."""
    from topology import lldp
    from topology.model import Link, PortRef

    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=4)
    topo = fabric.topo
    key = b"k" * 32
    cut = next(iter(dict.keys(topo.links)))
    watched_links = NoScanLinks()
    for link, seen in dict.items(topo.links):
        if link != cut:
            watched_links[link] = seen
    topo.links = watched_links
    learner = Learner(topo, key=key, now=0.0)
    learner.probed.update(topo.switches)
    watched_links.armed = True

    def probe(src: PortRef) -> bytes:
        return lldp.build_probe(key, src.dpid, src.port, topo.switches[src.dpid].ports[src.port].hw_addr, 1000)

    learner.probe_in(cut.b, probe(cut.a), 1.0)
    learner.probe_in(cut.a, probe(cut.b), 1.0)
    assert dict.__contains__(topo.links, Link.between(cut.a, cut.b))
    assert cut.a.port in topo.inter_switch_ports(cut.a.dpid) and cut.b.port in topo.inter_switch_ports(cut.b.dpid)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["add", "del", "clear", "deepcopy", "pickle"]), st.integers(1, 4),
                          st.integers(1, 3), st.integers(1, 4), st.integers(1, 3)), max_size=40))  # fmt: skip
def test_the_link_index_always_equals_a_full_scan(ops):
    """Copies too (a deepcopy of the topology, a pickle): a copy whose index counted every link twice
    lost a port's link when one was removed, and removing its switch then failed."""
    import copy
    import pickle
    from collections import Counter

    from topology.model import Link, PortRef

    links = LinkTable()
    for op, a, pa, b, pb in ops:
        link = Link.between(PortRef(a, pa), PortRef(b, pb))
        if op == "add":
            links[link] = 0.0
        elif op == "del":
            links.pop(link, None)
        elif op == "deepcopy":
            links = copy.deepcopy(links)
        elif op == "pickle":
            links = pickle.loads(pickle.dumps(links))
        else:
            links.clear()
        counted = {}
        for lk in dict.keys(links):
            for end in lk.ends():
                counted.setdefault(end.dpid, Counter())[end.port] += 1
        assert links._ports == counted
        for dpid in range(1, 5):
            ports = {e.port for lk in dict.keys(links) for e in lk.ends() if e.dpid == dpid}
            assert links.inter_switch_ports(dpid) == ports
            assert set(links.of_switch(dpid)) == {lk for lk in dict.keys(links) if dpid in (lk.a.dpid, lk.b.dpid)}
        for lk in dict.keys(links):
            for end in lk.ends():
                assert links.at[end] in dict.keys(links) and end in links.at[end].ends()
        assert all(lk in dict.keys(links) for lk in links.at.values())


def test_a_port_going_down_and_a_switch_reconnecting_scan_no_link():
    """Each switch that connects sets its ports, and each port status changes one: a thousand
    switches each scanning every link for one on a dead port was O(n^2) at a cold start."""
    from topology.model import Port

    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=4)
    topo = fabric.topo
    watched_links = NoScanLinks()
    for link, seen in dict.items(topo.links):
        watched_links[link] = seen
    topo.links = watched_links
    link = next(iter(dict.keys(watched_links)))
    end = link.a
    sw = topo.switches[end.dpid]
    watched_links.armed = True
    topo.set_ports(end.dpid, list(sw.ports.values()))  # reconnected, nothing changed
    assert dict.__contains__(watched_links, link)
    port = sw.ports[end.port]
    topo.set_port(end.dpid, Port(port.port_no, port.name, port.hw_addr, up=False))
    assert not dict.__contains__(watched_links, link), "the link on the dead port is gone"
    other = next(iter(dict.keys(watched_links)))
    topo.remove_switch(other.a.dpid)
    assert not any(other.a.dpid in (lk.a.dpid, lk.b.dpid) for lk in dict.keys(watched_links))
