"""Whatever bytes a VM sends, the packet-in path turns them into evidence a host could really give,
or into nothing: never an exception, never a link, never an address no host can hold, and never more
addresses than a host may have. The frames are any bytes, and valid ARP, LLDP, IPv4, IPv6 and
802.1Q/QinQ frames cut short and bit-flipped (the generator of tests/integration/test_packet_in_fuzz.py)."""

from __future__ import annotations

import ipaddress
import logging

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps import pipeline, port_security
from bench.ofswitch import FUZZ_KINDS, fuzz_frames, fuzz_templates, ipv4_frame, vlan_tagged
from topology import lldp
from topology.learner import MAX_ADDRESSES_PER_HOST, Learner, Punt, arp_target, ether_type, sender_ip
from topology.model import MAX_HOSTS_PER_PORT, PortRef

from .test_learner import KEY, arp_frame, confirm, fabric, port_mac

FUZZER_MAC, FUZZER_IP = "02:f0:0f:f0:0f:01", "10.1.0.66"
NEIGHBOUR_MAC, NEIGHBOUR_IP = "02:00:00:00:00:0b", "192.168.7.11"
OTHER_MAC, OTHER_IP = "02:00:00:00:00:0c", "192.168.7.12"
FUZZER, NEIGHBOUR, OTHER = PortRef(1, 1), PortRef(1, 2), PortRef(2, 1)
UPLINK = (2, 3)  # (dpid, port): the port the fuzzer's LLDP claims to come from
PORTS = [FUZZER.port, 3, pipeline.OFPP_LOCAL]  # its own port, a port with no host yet, the bridge's own


def _learned_fabric() -> tuple[Learner, float]:
    """Two switches, every port an edge port; the fuzzer and two neighbours learned."""
    learner, driver = fabric(switches=(1, 2), ports=3)
    now = confirm(learner, driver, 0.0)
    for ref, mac, ip in ((FUZZER, FUZZER_MAC, FUZZER_IP), (NEIGHBOUR, NEIGHBOUR_MAC, NEIGHBOUR_IP), (OTHER, OTHER_MAC, OTHER_IP)):
        learner.packet_in(ref.dpid, ref.port, arp_frame(mac, ip), Punt.MISS, now)
    return learner, now


def _templates() -> list[bytes]:
    import random

    mac = bytes.fromhex(FUZZER_MAC.replace(":", ""))
    real_probe = lldp.build_probe(KEY, FUZZER.dpid, FUZZER.port, port_mac(FUZZER.dpid, FUZZER.port), 0)
    found = fuzz_templates(mac, bytes([10, 1, 0, 66]), bytes([192, 168, 7, 11]), UPLINK, random.Random(1), (real_probe,))
    return [frame for kind in found.values() for frame in kind]


TEMPLATES = _templates()


@st.composite
def malformed(draw) -> bytes:
    """A valid frame, then bits flipped, bytes overwritten and the end cut off; or any bytes."""
    if draw(st.integers(0, 3)) == 0:
        return draw(st.binary(max_size=1600))
    frame = bytearray(draw(st.sampled_from(TEMPLATES)))
    for position in draw(st.lists(st.integers(0, len(frame) * 8 - 1), max_size=6)):
        frame[position // 8] ^= 1 << (position % 8)
    for position, value in draw(st.lists(st.tuples(st.integers(0, len(frame) - 1), st.integers(0, 255)), max_size=3)):
        frame[position] = value
    return bytes(frame[: draw(st.integers(0, len(frame)))])


def _host_address(ip: str) -> bool:
    address = ipaddress.IPv4Address(ip)
    return not (address.is_multicast or address.is_loopback or address.is_reserved or ip.startswith("0."))


def _check_learned_only_what_a_host_could_send(learner: Learner) -> None:
    topo = learner.topo
    assert not topo.links, "no frame from a VM makes a link"
    for mac, ip, where in ((NEIGHBOUR_MAC, NEIGHBOUR_IP, NEIGHBOUR), (OTHER_MAC, OTHER_IP, OTHER)):
        host = topo.hosts[mac]
        assert (host.ips, PortRef(host.dpid, host.port)) == ({ip}, where), f"a neighbour changed: {host}"
    assert len(topo.hosts_on(FUZZER.dpid, FUZZER.port)) <= MAX_HOSTS_PER_PORT
    for host in topo.hosts.values():
        assert not int(host.mac[:2], 16) & 1, f"a multicast source {host.mac} is no host"
        assert host.mac not in topo.switch_macs(), f"a switch's MAC {host.mac} is no host"
        assert len(host.ips) <= MAX_ADDRESSES_PER_HOST, f"{host.mac} holds {len(host.ips)} addresses"
        assert all(_host_address(ip) for ip in host.ips), f"{host.mac} holds {sorted(host.ips)}"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(malformed(), st.sampled_from(list(Punt)), st.sampled_from(PORTS)), max_size=20))
def test_any_frames_from_a_vm_teach_nothing_a_host_could_not_have_sent(frames):
    learner, now = _learned_fabric()
    for frame, punt, port in frames:
        now += 0.01
        learner.packet_in(FUZZER.dpid, port, frame, punt, now)
    _check_learned_only_what_a_host_could_send(learner)


@settings(max_examples=1000, deadline=None)
@given(frame=malformed())
def test_the_frame_parsers_take_any_bytes(frame):
    mac, ip = sender_ip(frame) if len(frame) >= 14 else (None, None)
    assert ip is None or _host_address(ip)
    target = arp_target(frame)
    assert target is None or ipaddress.IPv4Address(target)
    assert ether_type(frame) in range(1 << 16)
    assert lldp.read_probe(KEY, frame) in (None, (FUZZER.dpid, FUZZER.port, 0)), "only the real probe is one"
    found = port_security.violation(frame, [FUZZER_MAC], [FUZZER_IP])
    assert found is None or found[0] in port_security.KINDS


def test_a_hundred_thousand_seeded_frames_leave_the_fabric_as_it_was():
    """The integration test's campaign, against the learner alone: every kind, every reason."""
    learner, now = _learned_fabric()
    mac = bytes.fromhex(FUZZER_MAC.replace(":", ""))
    punts = list(Punt)
    kinds = dict.fromkeys(FUZZ_KINDS, 0)
    for n, (kind, frame) in enumerate(fuzz_frames(7, 100_000, mac, bytes([10, 1, 0, 66]), bytes([192, 168, 7, 11]), UPLINK)):
        now += 0.0005
        learner.packet_in(FUZZER.dpid, FUZZER.port, frame, punts[n % len(punts)], now)
        kinds[kind] += 1
    assert min(kinds.values()) == 100_000 // len(FUZZ_KINDS)
    _check_learned_only_what_a_host_could_send(learner)
    assert learner.lldp_rejected > 5_000, "the LLDP frames reached the probe check"
    assert len(learner.unanswered_arp) <= learner.unanswered_arp.maxlen


# -- what the fuzzing found ------------------------------------------------------------------------


def test_a_malformed_arp_or_ipv4_header_teaches_the_sender_but_no_address():
    """A bit flipped in ARP's hardware or protocol type or lengths, or in IPv4's version or header
    length, made the controller read an address from the wrong bytes and answer ARP for it."""
    good = arp_frame(FUZZER_MAC, "10.9.9.9")
    ipv4 = bytes.fromhex("02000000000b") + bytes.fromhex(FUZZER_MAC.replace(":", "")) + b"\x08\x00"
    ipv4 += bytes([0x45, 0, 0, 20, 0, 1, 0, 0, 64, 17, 0, 0, 10, 9, 9, 8, 192, 168, 7, 11])
    broken = [
        good[:14] + b"\x00\x06" + good[16:],  # hardware type IEEE 802
        good[:16] + b"\x86\xdd" + good[18:],  # protocol IPv6
        good[:18] + b"\x08" + good[19:],  # hardware address length 8
        good[:19] + b"\x10" + good[20:],  # protocol address length 16
        good[:20] + b"\x00\x09" + good[22:],  # no such operation
        ipv4[:14] + b"\x65" + ipv4[15:],  # version 6
        ipv4[:14] + b"\x44" + ipv4[15:],  # a header shorter than its fixed part
        ipv4[:14] + b"\x4f" + ipv4[15:],  # a header longer than the frame
    ]
    for frame in broken:
        learner, now = _learned_fabric()
        assert learner.packet_in(FUZZER.dpid, FUZZER.port, frame, Punt.MISS, now + 1).changed is False, frame.hex()
        assert learner.topo.hosts[FUZZER_MAC].ips == {FUZZER_IP}, frame.hex()
    learner, now = _learned_fabric()
    learner.packet_in(FUZZER.dpid, FUZZER.port, good, Punt.MISS, now + 1)
    learner.packet_in(FUZZER.dpid, FUZZER.port, ipv4, Punt.MISS, now + 1)
    assert learner.topo.hosts[FUZZER_MAC].ips == {FUZZER_IP, "10.9.9.9", "10.9.9.8"}, "well-formed, they teach"
    for tpid in (0x8100, 0x88A8):
        assert sender_ip(vlan_tagged(good, 10, tpid)) == (FUZZER_MAC, "10.9.9.9"), "behind one VLAN tag too"
    assert sender_ip(vlan_tagged(vlan_tagged(good, 10), 20, 0x88A8)) == (FUZZER_MAC, None), "not behind two"


def test_addresses_no_host_can_hold_are_never_learned():
    """A bit flip of 0.0.0.0 (DHCP, ARP probes) or of the first octet made the controller believe
    0.0.0.128, 127.x, 224.x or 255.x belonged to the sender, and every hypervisor answered for them."""
    learner, now = _learned_fabric()
    for ip in ("0.0.0.0", "0.0.0.128", "0.1.0.66", "127.1.0.66", "224.0.0.5", "239.1.2.3", "240.1.0.66", "255.255.255.255"):
        learner.packet_in(FUZZER.dpid, FUZZER.port, arp_frame(FUZZER_MAC, ip), Punt.MISS, now + 1)
    assert learner.topo.hosts[FUZZER_MAC].ips == {FUZZER_IP}


def test_a_host_claiming_address_after_address_learns_only_so_many(caplog):
    """One VM claiming a new address in every frame grew its host without bound, and every
    hypervisor's ARP responders with it: 188 addresses from 100,000 fuzzed frames."""
    learner, now = _learned_fabric()
    caplog.set_level(logging.WARNING, "goldilocks.learner")
    compiles = 0
    for n in range(1000):
        now += 0.001
        outcome = learner.packet_in(FUZZER.dpid, FUZZER.port, arp_frame(FUZZER_MAC, f"10.2.{n >> 8}.{n & 255}"), Punt.MISS, now)
        compiles += outcome.changed
    host = learner.topo.hosts[FUZZER_MAC]
    assert len(host.ips) == MAX_ADDRESSES_PER_HOST and FUZZER_IP in host.ips
    assert compiles == MAX_ADDRESSES_PER_HOST - 1, "a refused address costs no compile"
    assert learner.addresses_refused == 1000 - (MAX_ADDRESSES_PER_HOST - 1)
    assert len([r for r in caplog.records if "addresses" in r.getMessage()]) == 1, "one line, not a storm"
    # Its place is still learned, and an address it holds already still moves to a new claimant.
    learner.packet_in(1, 3, arp_frame(FUZZER_MAC, FUZZER_IP), Punt.MISS, now + 1)
    assert (learner.topo.hosts[FUZZER_MAC].dpid, learner.topo.hosts[FUZZER_MAC].port) == (1, 3)
    learner.packet_in(NEIGHBOUR.dpid, NEIGHBOUR.port, arp_frame(NEIGHBOUR_MAC, "10.2.0.1"), Punt.MISS, now + 1)
    assert "10.2.0.1" in learner.topo.hosts[NEIGHBOUR_MAC].ips and "10.2.0.1" not in learner.topo.hosts[FUZZER_MAC].ips


def test_spoofing_behind_a_vlan_tag_is_still_evidence_of_spoofing():
    """The switch matches the type behind one VLAN tag, so it dropped a managed VM's tagged IPv4
    from another address as evidence; the controller read the tag as the type and raised nothing."""
    mac = bytes.fromhex(FUZZER_MAC.replace(":", ""))
    spoofed_ip = ipv4_frame(mac, bytes(6), bytes([10, 9, 9, 9]), bytes([192, 168, 7, 11]))
    spoofed_arp = arp_frame(FUZZER_MAC, "192.168.7.11")
    for tpid in (0x8100, 0x88A8):
        assert port_security.violation(vlan_tagged(spoofed_ip, 10, tpid), [FUZZER_MAC], [FUZZER_IP])[0] == "ip-spoofing"
        assert port_security.violation(vlan_tagged(spoofed_arp, 10, tpid), [FUZZER_MAC], [FUZZER_IP])[0] == "arp-spoofing"
    own = ipv4_frame(mac, bytes(6), bytes([10, 1, 0, 66]), bytes([192, 168, 7, 11]))
    assert port_security.violation(vlan_tagged(own, 10), [FUZZER_MAC], [FUZZER_IP]) is None
