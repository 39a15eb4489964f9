"""VXLAN over WireGuard between two tunnel-endpoint namespaces, as the agent lays it out, on real wireguard-go,
real VXLAN and userspace Open vSwitch: VMs reach each other (ping and TCP), the underlay carries WireGuard
and nothing else, and when wireguard-go dies nothing leaves in clear until the agent brings it back.

    VM a (glt-vma) -- gltbra (OVS) -- gltvxa ~~VXLAN~~ glt-wga [glt-epa] glt-ula ==veth== glt-ulb [glt-epb] ...

The agent's classes run here, in the test process; their runner enters the endpoint namespace
(`nsenter --net=/run/netns/glt-epX`), which is where the agent runs on a real hypervisor.
"""

from __future__ import annotations

import json
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from agent.netns import SubprocessRunner
from agent.tunnel_ports import TunnelPorts, TunnelPortSpec
from agent.wireguard import SOCKET_DIR, PeerSpec, WireGuard, wireguard_go_pids
from crypto import wgkeys
from mininet_scenarios.datacenter import MininetLock
from tests.integration.helpers import wait_until

SIDES = ("a", "b")
OTHER = {"a": "b", "b": "a"}
NUMBER = {"a": 1, "b": 2}
OVS_PIDFILE = "/var/run/openvswitch/ovs-vswitchd.pid"
VNI = 4242  # the pair's VNI, the same at both ends
MARKER = b"goldilocks"  # in every ping payload: never to be seen on the underlay
WG_PORT, VXLAN_PORT = 51820, 4789
TOOLS = ("wireguard-go", "wg", "nsenter", "setsid", "tcpdump", "iperf3", "ethtool", "ovs-vsctl", "ovs-ofctl")


def endpoint_ns(side: str) -> str:
    return f"glt-ep{side}"


def vm_ns(side: str) -> str:
    return f"glt-vm{side}"


def wg_name(side: str) -> str:
    return f"glt-wg{side}"


def underlay(side: str) -> str:
    return f"glt-ul{side}"


def bridge(side: str) -> str:
    return f"gltbr{side}"


def tunnel_port(side: str) -> str:
    return f"gltvx{side}"


def vm_port(side: str) -> str:
    return f"gltvm{side}"  # the VM's veth end on the bridge; the VM's own end is gltvmX-vm


def vm_ip(side: str) -> str:
    return f"10.9.0.{NUMBER[side]}"


def tunnel_address(side: str) -> str:
    return f"100.127.0.{NUMBER[side]}/16"


def underlay_ip(side: str) -> str:
    return f"172.31.0.{NUMBER[side]}"


def sh(*argv: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and result.returncode:
        raise AssertionError(f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()}")
    return result


def in_vm(side: str, *argv: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
    return sh("ip", "netns", "exec", vm_ns(side), *argv, timeout=timeout, check=check)


# -- the test bed ------------------------------------------------------------------------------------


@dataclass
class Side:
    wireguard: WireGuard
    ports: TunnelPorts
    private_key: bytes
    address: str  # the tunnel address, CIDR
    peers: dict[str, PeerSpec] | None = None
    tunnels: dict[str, TunnelPortSpec] | None = None

    def reconcile(self) -> list[str]:
        """What the agent does every second: the same path for setup, repair and a no-op."""
        changes = ["WireGuard (re)started"] if self.wireguard.ensure_up(self.private_key, self.address) else []
        return changes + self.wireguard.apply_peers(self.peers) + self.ports.apply(self.tunnels)


def clean_up() -> None:
    """Remove everything this module makes; each step tolerates its thing being gone already."""
    for side in SIDES:
        sh("ovs-vsctl", "--timeout=10", "--if-exists", "del-br", bridge(side), check=False)
        for link in (tunnel_port(side), vm_port(side), underlay(side)):  # the underlay, if never moved
            sh("ip", "link", "del", "dev", link, check=False)
        sh("ip", "-n", endpoint_ns(side), "link", "del", "dev", wg_name(side), check=False)
    for side in SIDES:
        deadline = time.monotonic() + 3
        while wireguard_go_pids(wg_name(side)) and time.monotonic() < deadline:
            time.sleep(0.05)
        for pid in wireguard_go_pids(wg_name(side)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.unlink(f"{SOCKET_DIR}/{wg_name(side)}.sock")
        except FileNotFoundError:
            pass
        for ns in (endpoint_ns(side), vm_ns(side)):
            sh("ip", "netns", "del", ns, check=False)


def build_namespaces() -> None:
    for side in SIDES:
        sh("ip", "netns", "add", endpoint_ns(side))
        sh("ip", "netns", "add", vm_ns(side))
    sh("ip", "link", "add", underlay("a"), "type", "veth", "peer", "name", underlay("b"))
    for side in SIDES:
        ep = endpoint_ns(side)
        sh("ip", "link", "set", underlay(side), "netns", ep)
        sh("ip", "-n", ep, "link", "set", "lo", "up")
        sh("ip", "-n", ep, "link", "set", underlay(side), "mtu", "9000", "up")
        sh("ip", "-n", ep, "addr", "add", f"{underlay_ip(side)}/24", "dev", underlay(side))

        vm, inside = vm_ns(side), f"{vm_port(side)}-vm"
        sh("ovs-vsctl", "--timeout=10", "add-br", bridge(side),
           "--", "set", "Bridge", bridge(side), "datapath_type=netdev", "fail_mode=secure")  # fmt: skip
        sh("ip", "link", "add", vm_port(side), "type", "veth", "peer", "name", inside)
        sh("ip", "link", "set", inside, "netns", vm)
        sh("ip", "-n", vm, "link", "set", "lo", "up")
        sh("ip", "-n", vm, "link", "set", inside, "up")
        sh("ip", "-n", vm, "addr", "add", f"{vm_ip(side)}/24", "dev", inside)
        in_vm(side, "ethtool", "-K", inside, "tx", "off")  # TCP through a userspace bridge needs it
        sh("ip", "link", "set", vm_port(side), "up")
        sh("ovs-vsctl", "--timeout=10", "add-port", bridge(side), vm_port(side))


def add_flows() -> None:
    for side in SIDES:
        for flow in (
            f"in_port={vm_port(side)},actions=output:{tunnel_port(side)}",
            f"in_port={tunnel_port(side)},actions=output:{vm_port(side)}",
        ):
            sh("ovs-ofctl", "-O", "OpenFlow13", "add-flow", bridge(side), flow)


@pytest.fixture(scope="module")
def machine_lock():
    """Mininet runs of others share this Open vSwitch and the interface names: hold their lock throughout."""
    lock = MininetLock()
    lock.acquire()
    try:
        yield lock
    finally:
        lock.release()


@pytest.fixture(scope="module")
def testbed(machine_lock) -> Iterator[dict[str, Side]]:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)} (run `make install`)", pytrace=False)
    # The bridges' namespace, named by ovs-vswitchd's PID: /proc/1/ns/net cannot be opened here
    # (pid 1 is the sandbox's init), and nsenter has to open it.
    with open(OVS_PIDFILE) as pidfile:
        bridge_netns = f"/proc/{int(pidfile.read())}/ns/net"
    if os.stat(bridge_netns).st_ino != os.stat("/proc/self/ns/net").st_ino:
        pytest.fail(f"this test expects to run where Open vSwitch runs ({bridge_netns})", pytrace=False)
    clean_up()  # a run killed before its own clean-up
    started = time.monotonic()
    try:
        build_namespaces()
        psk = wgkeys.generate_psk()
        sides = {}
        for side in SIDES:
            run = SubprocessRunner(f"/run/netns/{endpoint_ns(side)}")
            sides[side] = Side(
                WireGuard(wg_name(side), run=run),
                TunnelPorts(bridge(side), bridge_netns=bridge_netns, run=run),
                wgkeys.generate_private_key(),
                tunnel_address(side),
            )
        for side, me in sides.items():
            other = sides[OTHER[side]]
            other_public = wgkeys.encode(wgkeys.public_key(other.private_key))
            me.peers = {
                other_public: PeerSpec(
                    other_public, psk, f"{underlay_ip(OTHER[side])}:{WG_PORT}", f"100.127.0.{NUMBER[OTHER[side]]}/32"
                )
            }
            local, remote = me.address.split("/")[0], other.address.split("/")[0]
            me.tunnels = {tunnel_port(side): TunnelPortSpec(tunnel_port(side), VNI, local, remote, f"hv-{OTHER[side]}")}
        for me in sides.values():
            changes = me.reconcile()
            assert changes[0] == "WireGuard (re)started" and len(changes) == 3, changes
        add_flows()
        print(f"\ntest bed up in {time.monotonic() - started:.2f} s")
        yield sides
    finally:
        clean_up()


# -- traffic and captures --------------------------------------------------------------------------------


def ping(count: int, interval: float = 0.2) -> int:
    """Echo replies VM a got from VM b, with the marker in every payload."""
    result = in_vm(
        "a", "ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1", "-p", MARKER.hex(), vm_ip("b"),
        timeout=count * interval + 10, check=False,
    )  # fmt: skip
    match = re.search(r"(\d+) received", result.stdout)
    assert match, f"ping printed no summary: {result.stdout} {result.stderr}"
    return int(match.group(1))


def wait_for_ping(timeout: float = 15) -> bool:
    return bool(wait_until(lambda: ping(1) == 1, timeout=timeout, interval=0.1))


@contextmanager
def capture(path: str, interface: str, netns: str | None = None) -> Iterator[None]:
    """tcpdump on `interface` into `path` for the duration of the block."""
    argv = ["tcpdump", "-i", interface, "-n", "-U", "-s", "0", "-w", path]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, said = time.monotonic() + 10, b""
        while b"listening on" not in said:
            remaining = deadline - time.monotonic()
            assert remaining > 0 and proc.poll() is None, f"tcpdump did not start: {said.decode(errors='replace')}"
            if select.select([proc.stderr], [], [], remaining)[0]:
                said += proc.stderr.readline()
        yield
        time.sleep(0.3)  # the last replies are written
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def pcap_frames(path: str) -> list[bytes]:
    """The frames of a classic pcap file (tcpdump -w), Ethernet link type."""
    with open(path, "rb") as handle:
        data = handle.read()
    order = {b"\xd4\xc3\xb2\xa1": "<", b"\xa1\xb2\xc3\xd4": ">", b"\x4d\x3c\xb2\xa1": "<", b"\xa1\xb2\x3c\x4d": ">"}[data[:4]]
    assert struct.unpack(order + "I", data[20:24])[0] == 1, "not an Ethernet capture"
    frames, offset = [], 24
    while offset + 16 <= len(data):
        length = struct.unpack(order + "I", data[offset + 8 : offset + 12])[0]
        frames.append(data[offset + 16 : offset + 16 + length])
        offset += 16 + length
    return frames


def kind(frame: bytes) -> tuple:
    """("udp", src ip, sport, dport), ("icmp", src ip, type, kind of the packet it quotes), ("ipv4", src ip,
    proto), ("ipv6", next header), ("arp",) or ("other", ethertype)."""
    ethertype = struct.unpack(">H", frame[12:14])[0]
    if ethertype == 0x0806:
        return ("arp",)
    if ethertype == 0x86DD:
        return ("ipv6", frame[20])
    if ethertype != 0x0800:
        return ("other", ethertype)
    header = (frame[14] & 0x0F) * 4
    source = ".".join(str(b) for b in frame[26:30])
    if frame[23] == 17:
        sport, dport = struct.unpack(">HH", frame[14 + header : 18 + header])
        return ("udp", source, sport, dport)
    if frame[23] == 1:  # an error quotes the IP header and 8 bytes of the packet it is about
        quoted = frame[14 + header + 8 :]
        return ("icmp", source, frame[14 + header], kind(frame[:14] + quoted) if len(quoted) >= 28 else None)
    return ("ipv4", source, frame[23])


def assert_nothing_in_clear(frames: list[bytes], raw: bytes) -> None:
    """No marker anywhere, no VXLAN, and only WireGuard UDP, ARP, IPv6 control (ICMPv6, MLD) and ICMP
    errors about WireGuard UDP (a dead endpoint's port unreachable, answering its live peer)."""
    assert MARKER not in raw, "a ping payload crossed the underlay in clear"
    for frame in frames:
        what = kind(frame)
        if what[0] == "icmp":
            assert what[2] == 3 and what[3] and what[3][0] == "udp" and WG_PORT in what[3][2:], f"unexpected ICMP: {what}"
            continue
        assert what[0] in ("udp", "arp", "ipv6"), f"unexpected frame on the underlay: {what}"
        if what[0] == "udp":
            assert VXLAN_PORT not in what[2:], f"VXLAN in clear on the underlay: {what}"
            assert WG_PORT in what[2:], f"UDP other than WireGuard on the underlay: {what}"
        if what[0] == "ipv6":
            assert what[1] in (0, 58), f"IPv6 other than ICMPv6/MLD on the underlay: {what}"


def marked(frames: list[bytes]) -> int:
    return sum(MARKER in frame for frame in frames)


# -- the tests ---------------------------------------------------------------------------------------------


def test_vm_to_vm_ping_and_tcp_cross_the_tunnel(testbed):
    started = time.monotonic()
    assert wait_for_ping(), "VM a never reached VM b through the tunnel"
    print(f"\nfirst reply after {time.monotonic() - started:.2f} s")
    assert ping(5) == 5

    server = subprocess.Popen(
        ["ip", "netns", "exec", vm_ns("b"), "timeout", "30", "iperf3", "-s", "-1", "-p", "5299"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        report = None
        for _ in range(20):  # until the server listens
            result = in_vm("a", "iperf3", "-c", vm_ip("b"), "-p", "5299", "-t", "1", "-J", timeout=20, check=False)
            # iperf3 3.12 with -J exits 0 even when refused: the JSON says so.
            if result.returncode == 0 and "error" not in (parsed := json.loads(result.stdout)):
                report = parsed
                break
            time.sleep(0.2)
        assert report is not None, f"iperf3 never connected: {result.stdout[-300:]} {result.stderr[-300:]}"
        received = report["end"]["sum_received"]["bytes"]
        print(f"TCP VM to VM: {report['end']['sum_received']['bits_per_second'] / 1e6:.0f} Mbit/s, {received} bytes")
        assert received > 1_000_000
    finally:
        server.kill()
        server.wait(timeout=5)


def test_the_underlay_carries_wireguard_only(testbed, tmp_path):
    assert wait_for_ping()
    under, vm_side = str(tmp_path / "underlay.pcap"), str(tmp_path / "vm.pcap")
    with capture(under, underlay("a"), endpoint_ns("a")), capture(vm_side, vm_port("a")):
        assert ping(10) == 10
    raw = open(under, "rb").read()
    frames = pcap_frames(under)
    assert_nothing_in_clear(frames, raw)
    wireguard = [f for f in frames if kind(f)[0] == "udp"]
    assert len(wireguard) >= 20, f"expected the 10 requests and 10 replies as WireGuard UDP, saw {len(wireguard)}"
    # The capture can see a marker when there is one: the VM side holds all 20 in clear.
    assert marked(pcap_frames(vm_side)) >= 20


def test_a_second_reconcile_changes_nothing(testbed):
    for side, me in testbed.items():
        assert me.reconcile() == []
        assert me.ports.actual() == me.tunnels
        assert set(me.wireguard.peers()) == set(me.peers)
        assert me.wireguard.public_key() == wgkeys.encode(wgkeys.public_key(me.private_key))
        stats = me.ports.port_stats()[tunnel_port(side)]
        assert stats["tx_packets"] > 0 and stats["rx_packets"] > 0


def test_when_wireguard_go_dies_nothing_leaves_in_clear_and_reconcile_restores(testbed, tmp_path):
    a = testbed["a"]
    assert wait_for_ping()
    pid = a.wireguard.pid()
    assert pid is not None
    before = a.ports.port_stats()[tunnel_port("a")]
    os.kill(pid, signal.SIGKILL)
    assert wait_until(lambda: not a.wireguard.running(), timeout=5), "wg interface still there after wireguard-go was killed"

    under, vm_side = str(tmp_path / "underlay.pcap"), str(tmp_path / "vm.pcap")
    with capture(under, underlay("a"), endpoint_ns("a")), capture(vm_side, vm_port("a")):
        assert ping(10) == 0, "VM b answered while wireguard-go was dead"
    raw, frames = open(under, "rb").read(), pcap_frames(under)
    assert_nothing_in_clear(frames, raw)
    from_a = [kind(f) for f in frames if kind(f)[0] == "udp" and kind(f)[1] == underlay_ip("a")]
    assert from_a == [], f"endpoint a sent UDP with its WireGuard dead: {from_a}"
    print(f"\nunderlay during the outage: {sorted(Counter(kind(f)[:3] for f in frames).items(), key=str)}")
    assert marked(pcap_frames(vm_side)) >= 10, "the VM did not even send"
    after = a.ports.port_stats()[tunnel_port("a")]
    print(f"tunnel port counters across the outage: before {before}, after {after}")
    # The outage shows where the agent reports drops from: the VXLAN device found no source for them.
    lost = after["tx_errors"] + after["tx_dropped"] - before["tx_errors"] - before["tx_dropped"]
    assert lost >= 10, f"the tunnel port did not count the lost pings: {before} -> {after}"

    started = time.monotonic()
    changes = a.reconcile()
    assert changes[0] == "WireGuard (re)started" and [c.split()[0] for c in changes[1:]] == ["add"], changes
    assert wait_for_ping(), "no ping after reconcile restored WireGuard"
    print(f"reconcile + first reply after restart: {time.monotonic() - started:.2f} s")
    assert ping(5) == 5
    for me in testbed.values():
        assert me.reconcile() == []
