"""Encryption on real Open vSwitch, Mininet, wireguard-go and goldilocks-agent: captures on every
fabric port prove what crosses in clear; keys rotate without loss; a dead wireguard-go, agent or
tunnel port, and a controller killed and restarted, leak nothing; revocation cuts a hypervisor off.

One data centre serves the module: hv1 holds vm1 and vm2, hv2 holds vm3 and vm4. vm1
(sensitivity=pci) -> vm3 (tier=db) is encrypted; vm2 -> vm4 is a plain flow over the same
hypervisor pair, which proves each capture could see plaintext. Tests run in file order; the
revocation, which ends hv2's tunnel for good, is last."""

from __future__ import annotations

import re
import secrets
import signal
import subprocess
import time

import pytest

from agent.wireguard import wireguard_go_pids
from mininet_scenarios import encryption_check
from mininet_scenarios.capture import capturing
from mininet_scenarios.datacenter import Layout
from mininet_scenarios.harness import rest_call, rest_get
from tests import prometheus_text
from tests.integration.conftest import start_datacentre
from tests.integration.helpers import reply_times, wait_until

PCI, DB = "vm1", "vm3"
PLAIN_SRC, PLAIN_DST = "vm2", "vm4"


@pytest.fixture(scope="module")
def dc():
    cm, dc = start_datacentre(Layout(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2))
    try:
        roles = encryption_check.Roles(PCI, DB)
        encryption_check.apply_sample_policy(dc, roles)
        assert wait_until(lambda: tunnel_in_place(dc), 20), f"no tunnel in place: {explain(dc)}"
        yield dc
    finally:
        cm.__exit__(None, None, None)


def explain(dc) -> dict:
    return encryption_check.explain(dc, PCI, DB)["encryption"]


def tunnel_in_place(dc) -> bool:
    return explain(dc)["delivered"]


def fabric(dc) -> list[str]:
    return encryption_check.fabric_interfaces(dc)


def ping(dc, src: str, dst: str, marker: bytes, count: int = 5) -> int:
    return encryption_check.marker_ping(dc, src, dst, marker, count)


def plain_flow_works(dc) -> bool:
    return ping(dc, PLAIN_SRC, PLAIN_DST, secrets.token_bytes(8), 3) == 3


def encrypted_flow_works(dc) -> bool:
    return ping(dc, PCI, DB, secrets.token_bytes(8), 2) == 2


def tunnel(dc) -> dict:
    (only,) = rest_get(dc.rest_url, "/v1/tunnels")["tunnels"]
    return only


def metric(dc, name: str) -> float:
    """A metric's value, summed over its series (encrypt drops are per switch)."""
    return prometheus_text.total(rest_get(dc.rest_url, "/metrics"), name)


def agent_down(dc, hv: str) -> None:
    """SIGKILL the hypervisor's agent: its data plane stays as it was."""
    dc.agents[hv].kill(signal.SIGKILL)
    assert wait_until(lambda: not next(a for a in rest_get(dc.rest_url, "/v1/agents")["agents"] if a["hypervisor"] == hv)[
        "connected"], 10), f"the controller still sees {hv}'s agent"  # fmt: skip


def agent_up(dc, hv: str) -> None:
    dc.restart_agent(hv)
    dc.wait_for_agents(20)


# ---------------------------------------------------------------------------
# What crosses the fabric
# ---------------------------------------------------------------------------
def test_encrypted_payload_never_crosses_the_fabric_in_clear_and_plain_payload_does(dc):
    secret, plain = secrets.token_bytes(8), secrets.token_bytes(8)
    endpoint_ports = [dc.endpoint_port(hv) for hv in dc.endpoints]
    with capturing(fabric(dc) + endpoint_ports) as capture:
        answered = ping(dc, PCI, DB, secret)  # the echo replies carry the marker back: both directions
        answered_plain = ping(dc, PLAIN_SRC, PLAIN_DST, plain)
    assert answered == 5 and answered_plain == 5
    assert not capture.interfaces_with(secret), "the encrypted flow's payload crossed in clear"
    assert capture.interfaces_with(plain), "the capture did not see the plain flow: it proves nothing"
    assert capture.count("wireguard") >= 20 and capture.count("vxlan") == 0
    # Between the endpoints, only WireGuard (and their ARP, and the ports' own IPv6 chatter).
    for port in endpoint_ports:
        kinds = {k for k in map(encryption_check_kind, capture.frames[port])}
        assert kinds <= {"wireguard", "arp", "ipv6"}, f"{port}: {kinds}"
    explained = explain(dc)
    assert explained["path"] == "tunnel" and explained["tunnel"] == "hv1|hv2" and explained["delivered"]


def encryption_check_kind(frame: bytes) -> str:
    from mininet_scenarios.capture import classify

    return classify(frame)


def test_tcp_through_the_tunnel_carries_full_size_segments(dc):
    """VMs keep MTU 1500 and full-size TCP crosses: the overhead is absorbed by the jumbo underlay.
    MACs, IPs and TTL are what they would be without the tunnel."""
    mbps = dc.iperf3(PCI, DB, seconds=2)
    assert mbps > 10, f"encrypted TCP ran at {mbps} Mbit/s"
    out = dc.host(PCI).cmd(f"ping -c 3 -W 1 -M do -s 1472 {dc.layout.vms[DB][1]}")
    assert "3 received" in out, out
    assert "ttl=64" in out, "the tunnel must be invisible to the VMs: no hop, no TTL change"
    arp = dc.host(PCI).cmd(f"ip neigh show {dc.layout.vms[DB][1]}")
    assert dc.layout.vms[DB][2] in arp, f"the VM sees its peer's own MAC: {arp}"


def test_a_default_deny_never_cuts_the_tunnels_underlay(dc):
    """The endpoints' WireGuard is infrastructure: under a default deny the encrypt rule's flow
    still crosses (its tunnel's UDP is not a VM's traffic), while the plain flow is denied."""
    rest_call(dc.rest_url, "PUT", "/v1/policies/default", {"default_action": "deny"}, expect=200)
    try:
        assert wait_until(lambda: not plain_flow_works(dc), 5), "the default deny did not apply"
        assert encrypted_flow_works(dc)
    finally:
        rest_call(dc.rest_url, "PUT", "/v1/policies/default", {"default_action": "allow"}, expect=200)
    assert wait_until(lambda: plain_flow_works(dc), 5)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------
def wg_psk(dc, hv: str) -> str:
    """The pre-shared key the endpoint's WireGuard holds (read here, never printed)."""
    endpoint = dc.endpoints[hv]
    out = subprocess.run(["wg", "show", endpoint.wg_interface, "preshared-keys"], capture_output=True, text=True, check=True)
    (line,) = out.stdout.splitlines()
    return line.split("\t")[1]


def test_psk_rotation_every_few_seconds_under_ping_flood_and_udp_iperf3_loses_nothing(dc):
    before = tunnel(dc)["psk_fingerprint"]
    db_ip = dc.layout.vms[DB][1]
    server = dc.host(DB).popen(["iperf3", "-s", "-1", "-B", db_ip])
    try:
        time.sleep(0.5)
        flood = dc.host(PCI).popen(["ping", "-n", "-i", "0.01", "-c", "700", db_ip])
        iperf = dc.host(PCI).popen(["iperf3", "-c", db_ip, "-u", "-b", "20M", "-t", "7", "-J"])
        fingerprints = {before}
        for _ in range(4):
            time.sleep(1.5)
            assert rest_call(dc.rest_url, "POST", "/v1/keys/rotate", expect=200) == {"rotated": 1}
            fingerprints.add(tunnel(dc)["psk_fingerprint"])
        flood_out, _ = flood.communicate(timeout=30)
        iperf_out, _ = iperf.communicate(timeout=30)
    finally:
        server.kill()
        server.wait()
    assert len(fingerprints) == 5, "each rotation made a new key"
    assert "700 received" in flood_out.decode(), flood_out.decode()[-300:]
    import json

    report = json.loads(iperf_out.decode())
    lost = report["end"]["sum"]["lost_packets"]
    assert report["end"]["sum"]["packets"] > 1000 and lost == 0, f"iperf3 lost {lost} datagrams"
    # Both ends hold the newest key (so the next handshake will agree on it).
    assert wait_until(lambda: wg_psk(dc, "hv1") == wg_psk(dc, "hv2"), 5)
    from crypto import wgkeys

    assert wgkeys.fingerprint(wgkeys.decode(wg_psk(dc, "hv1"))) == tunnel(dc)["psk_fingerprint"]


@pytest.mark.parametrize("hv", ["hv1", "hv2"], ids=["pinging-side", "answering-side"])
def test_identity_rotation_switches_the_wireguard_key_with_traffic_flowing(dc, hv):
    """Make before break, on either end: the side that answers (hv2) only sends when asked, so after
    it switches it must start the handshake itself, or the flow would stall until WireGuard's 5 s retry."""
    db_ip = dc.layout.vms[DB][1]

    def fingerprints() -> dict:
        return {a["hypervisor"]: a["wg_public_key_fingerprint"] for a in rest_get(dc.rest_url, "/v1/agents")["agents"]}

    def rotating() -> bool:
        return next(a for a in rest_get(dc.rest_url, "/v1/agents")["agents"] if a["hypervisor"] == hv)["identity_rotation"]

    before = fingerprints()
    pinger = dc.host(PCI).popen(["ping", "-n", "-i", "0.01", "-c", "400", db_ip])
    time.sleep(0.5)
    rest_call(dc.rest_url, "POST", f"/v1/agents/{hv}/rotate-identity", expect=202)
    out, _ = pinger.communicate(timeout=30)
    assert wait_until(lambda: not rotating(), 10), "the rotation did not finish"
    after = fingerprints()
    assert after[hv] != before[hv] and all(after[o] == before[o] for o in after if o != hv)
    received = int(re.search(r"(\d+) received", out.decode()).group(1))
    print(f"identity rotation of {hv} under 100 pps: {400 - received} of 400 pings lost")
    assert received >= 395, f"the identity rotation of {hv} lost {400 - received} of 400 pings"
    assert encrypted_flow_works(dc)


# ---------------------------------------------------------------------------
# Failures fail closed
# ---------------------------------------------------------------------------
def test_an_agent_outage_leaves_the_tunnel_up(dc):
    agent_down(dc, "hv1")
    try:
        assert encrypted_flow_works(dc), "the data plane must outlive its agent"
    finally:
        agent_up(dc, "hv1")
    assert encrypted_flow_works(dc)


@pytest.mark.parametrize("failure", ["wireguard-go", "tunnel-port"])
def test_a_dead_tunnel_drops_encrypted_flows_leaks_nothing_and_recovers(dc, failure):
    """With the agent down (nothing repairs), kill wireguard-go or delete the tunnel port: the
    encrypted flow stops and nothing of it crosses in clear; the plain flow is untouched; the agent's
    restart repairs the tunnel."""
    drops_before = metric(dc, "goldilocks_encrypt_drops_total")
    agent_down(dc, "hv1")
    try:
        if failure == "wireguard-go":
            for pid in wireguard_go_pids(dc.endpoints["hv1"].wg_interface):
                subprocess.run(["kill", "-9", str(pid)], check=False)
        else:
            port = tunnel(dc)["ends"]["hv1"]["port"]
            subprocess.run(["ovs-vsctl", "--timeout=5", "del-port", "hv1", port], check=True)
            subprocess.run(["ip", "link", "del", "dev", port], check=False)
        secret, plain = secrets.token_bytes(8), secrets.token_bytes(8)
        with capturing(fabric(dc)) as capture:
            answered = ping(dc, PCI, DB, secret, 5)
            answered_plain = ping(dc, PLAIN_SRC, PLAIN_DST, plain, 5)
        assert answered == 0, f"{failure}: the encrypted flow still got through"
        assert answered_plain == 5, f"{failure}: the plain flow suffered"
        assert not capture.interfaces_with(secret), f"{failure}: the encrypted flow leaked in clear"
        assert capture.interfaces_with(plain)
        assert capture.count("vxlan") == 0
        if failure == "tunnel-port":
            assert wait_until(lambda: metric(dc, "goldilocks_encrypt_drops_total") > drops_before, 5), "drops not counted"
            assert not explain(dc)["delivered"]
    finally:
        agent_up(dc, "hv1")
    assert wait_until(lambda: encrypted_flow_works(dc), 15), f"{failure}: the tunnel did not recover"
    assert plain_flow_works(dc)


def test_a_controller_killed_and_restarted_leaks_nothing_and_keeps_the_tunnel(dc):
    ctl = dc.controller_proc
    secret = secrets.token_bytes(8)
    db_ip = dc.layout.vms[DB][1]
    with capturing(fabric(dc)) as capture:
        pinger = dc.host(PCI).popen(["ping", "-D", "-n", "-i", "0.05", "-c", "120", "-s", "64", "-p", secret.hex(), db_ip])
        try:
            time.sleep(1.0)
            ctl.kill(signal.SIGKILL)
            time.sleep(0.5)
            ctl.start()
            dc.wait_for_agents(20)
            out, _ = pinger.communicate(timeout=30)
        finally:
            if pinger.poll() is None:
                pinger.kill()
    replies = reply_times(out.decode())
    assert len(replies) >= 115, f"only {len(replies)} of 120 encrypted pings answered across the restart"
    assert not capture.interfaces_with(secret), "plaintext crossed the fabric across the restart"
    assert tunnel(dc)["state"] in ("up", "pending") and explain(dc)["delivered"]


# ---------------------------------------------------------------------------
# Revocation (last: hv2 stays cut off)
# ---------------------------------------------------------------------------
def test_revocation_cuts_the_hypervisor_off_within_a_second_and_refuses_its_certificate(dc):
    db_ip = dc.layout.vms[DB][1]
    refused_before = metric(dc, "goldilocks_agent_connections_refused_total")
    pinger = dc.host(PCI).popen(["ping", "-D", "-n", "-i", "0.02", "-c", "150", db_ip])
    time.sleep(1.0)
    revoked_at = time.time()
    rest_call(dc.rest_url, "DELETE", "/v1/agents/hv2", expect=204)
    out, _ = pinger.communicate(timeout=30)
    replies = reply_times(out.decode())
    late = [t for t in replies if t > revoked_at + 1.0]
    assert not late, f"{len(late)} encrypted pings still answered more than 1 s after the revocation"
    assert any(t < revoked_at for t in replies), "the flow was not running before"
    assert not explain(dc)["delivered"]
    assert rest_get(dc.rest_url, "/v1/tunnels")["tunnels"] == []
    # The revoked agent keeps trying, and is refused every time.
    assert wait_until(lambda: metric(dc, "goldilocks_agent_connections_refused_total") > refused_before, 15)
    assert plain_flow_works(dc)
