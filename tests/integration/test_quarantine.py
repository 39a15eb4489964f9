"""Quarantine on real Open vSwitch, Mininet and tunnels: a quarantined VM reaches no one and no one
reaches it, running flows stop within milliseconds of the API call, encrypted paths too; release
restores everything; it follows the VM to another hypervisor; a controller killed and restarted
never lets a packet through.

hv1 holds vm1 and vm2, hv2 holds vm3 and vm4; vm1 -> vm3 is encrypted."""

from __future__ import annotations

import secrets
import signal
import sys
import time

import pytest

from mininet_scenarios import encryption_check
from mininet_scenarios.capture import capturing
from mininet_scenarios.datacenter import Layout
from mininet_scenarios.harness import rest_call
from tests.integration.conftest import start_datacentre
from tests.integration.helpers import reply_times, wait_until

FLAGGED = "vm1"


@pytest.fixture(scope="module")
def dc():
    cm, dc = start_datacentre(Layout(spines=1, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2))
    try:
        for name, (_, ip, mac) in dc.layout.vms.items():
            rest_call(dc.rest_url, "PUT", f"/v1/vms/{name}", {"macs": [mac], "ips": [ip], "labels": {"tier": name}}, expect=201)
        rest_call(dc.rest_url, "POST", "/v1/policies",
                  {"name": "secret", "src": "tier=vm1", "dst": "tier=vm3", "action": "encrypt"}, expect=201)  # fmt: skip
        for name in dc.layout.vms:  # every VM answers TCP on 5432
            dc.host(name).popen([sys.executable, "-m", "mininet_scenarios.tcp_probe", "listen", "5432"])
        assert wait_until(lambda: encryption_check.explain(dc, "vm1", "vm3")["encryption"]["delivered"], 20)
        yield dc
    finally:
        cm.__exit__(None, None, None)


def pings(dc, src: str, dst: str, count: int = 2) -> bool:
    return f" {count} received" in dc.host(src).cmd(f"ping -c{count} -i0.2 -W1 {dc.layout.vms[dst][1]}")


def tcp_open(dc, src: str, dst: str) -> bool:
    out = dc.host(src).cmd(f"{sys.executable} -m mininet_scenarios.tcp_probe connect {dc.layout.vms[dst][1]} 5432 1")
    return "OPEN" in out


def quarantine(dc, vm: str = FLAGGED) -> float:
    """Quarantine `vm`; return when the API call returned."""
    rest_call(dc.rest_url, "POST", "/v1/quarantine", {"vm": vm, "reason": "integration test"}, expect=201)
    return time.time()


def release(dc, vm: str = FLAGGED) -> None:
    rest_call(dc.rest_url, "DELETE", f"/v1/quarantine/{vm}", expect=204)


def reachable(dc) -> dict:
    """Who reaches whom, for the pairs that involve the flagged VM, and one pair that does not."""
    return {
        "vm1->vm2 (same hypervisor)": pings(dc, "vm1", "vm2"),
        "vm2->vm1": pings(dc, "vm2", "vm1"),
        "vm1->vm3 (encrypted)": pings(dc, "vm1", "vm3"),
        "vm3->vm1": pings(dc, "vm3", "vm1"),
        "vm4->vm1 tcp": tcp_open(dc, "vm4", "vm1"),
        "vm1->vm4 tcp": tcp_open(dc, "vm1", "vm4"),
        "vm2->vm3 (bystanders)": pings(dc, "vm2", "vm3"),
    }


def test_a_quarantined_vm_reaches_no_one_no_one_reaches_it_and_release_restores_it(dc):
    before = reachable(dc)
    assert all(before.values()), before
    quarantine(dc)
    try:
        during = reachable(dc)
    finally:
        release(dc)
    assert during == {**{k: False for k in before}, "vm2->vm3 (bystanders)": True}, during
    assert wait_until(lambda: reachable(dc) == before, 10), "release did not restore everything"
    assert encryption_check.explain(dc, "vm1", "vm3")["encryption"]["path"] == "tunnel", "the encrypt rule is back"


def test_running_flows_stop_within_milliseconds_of_the_call(dc):
    """A ping every 10 ms to the VM, through its open connection: the last reply comes at most a
    few milliseconds after the API call returned."""
    pinger = dc.host("vm3").popen(["ping", "-D", "-n", "-i", "0.01", "-c", "300", dc.layout.vms[FLAGGED][1]])
    try:
        time.sleep(1.0)
        returned = quarantine(dc)
        out, _ = pinger.communicate(timeout=30)
    finally:
        if pinger.poll() is None:
            pinger.kill()
        release(dc)
    replies = reply_times(out.decode())
    last = max(replies)
    assert any(t < returned for t in replies)
    print(f"quarantine: last reply {1000 * (last - returned):.1f} ms after the API call returned")
    assert last - returned < 0.1, f"replies went on {last - returned:.3f} s after the quarantine"


def test_it_stays_cut_off_across_a_controller_kill_and_restart(dc):
    """Captured on the flagged VM's own port and on every fabric port: across the kill and the
    restart, not one frame to it arrives and not one of its frames leaves its hypervisor."""
    ctl = dc.controller_proc
    quarantine(dc)
    mac = dc.layout.vms[FLAGGED][2]
    own_port = dc.host(FLAGGED).defaultIntf().link
    own_port = (own_port.intf2 if own_port.intf1.node.name == FLAGGED else own_port.intf1).name
    marker = secrets.token_bytes(8)
    try:
        with capturing([own_port, *encryption_check.fabric_interfaces(dc)]) as capture:
            target = dc.layout.vms[FLAGGED][1]
            pinger = dc.host("vm2").popen(["ping", "-D", "-n", "-i", "0.02", "-c", "150", "-p", marker.hex(), target])
            flagged = dc.host(FLAGGED).popen(["ping", "-n", "-i", "0.02", "-c", "150", dc.layout.vms["vm3"][1]])
            time.sleep(0.5)
            ctl.kill(signal.SIGKILL)
            time.sleep(0.5)
            ctl.start()
            dc.wait_for_agents(20)
            pinger.communicate(timeout=30)
            flagged.communicate(timeout=30)
        assert rest_call(dc.rest_url, "GET", f"/v1/quarantine/{FLAGGED}", expect=200)["vm"] == FLAGGED, "kept in SQLite"
    finally:
        release(dc)
    delivered = [f for f in capture.frames[own_port] if marker in f]
    assert not delivered, f"{len(delivered)} frames reached the quarantined VM across the restart"
    own_mac = bytes.fromhex(mac.replace(":", ""))
    escaped = [intf for intf, frame in capture.all_frames() if intf != own_port and frame[6:12] == own_mac]
    assert not escaped, f"frames of the quarantined VM crossed the fabric on {sorted(set(escaped))}"


def test_it_stays_cut_off_when_it_moves_to_another_hypervisor(dc):
    quarantine(dc)
    try:
        dc.move_vm(FLAGGED, "hv2")
        assert not pings(dc, FLAGGED, "vm4"), "from its first packet at the new place"
        assert not pings(dc, "vm4", FLAGGED) and not pings(dc, "vm2", FLAGGED)
        assert pings(dc, "vm2", "vm4")
    finally:
        release(dc)
    assert wait_until(lambda: pings(dc, "vm4", FLAGGED), 10), "released at its new place"
    # Home again, for the tests that follow (they need vm1 beside vm2, across from vm3 and vm4).
    dc.move_vm(FLAGGED, "hv1")
    assert wait_until(lambda: pings(dc, "vm2", FLAGGED) and pings(dc, FLAGGED, "vm3"), 15), "not back home"
    assert wait_until(lambda: encryption_check.explain(dc, "vm1", "vm3")["encryption"]["delivered"], 20)


def test_a_high_severity_ids_alert_cuts_the_vm_off(dc):
    assert pings(dc, "vm4", "vm2")
    answer = rest_call(dc.rest_url, "POST", "/v1/alerts",
                       {"vm": dc.layout.vms["vm2"][1], "severity": "high", "source": "ids", "signature": "C2 beacon"},
                       expect=201)  # fmt: skip
    try:
        assert (answer["vm"], answer["action"]) == ("vm2", "quarantine")
        assert not pings(dc, "vm4", "vm2") and not pings(dc, "vm2", "vm1")
    finally:
        release(dc, "vm2")
    assert wait_until(lambda: pings(dc, "vm4", "vm2"), 10)


# ---------------------------------------------------------------------------
# Remediation and mirroring
# ---------------------------------------------------------------------------
REMEDIATION = [
    {"name": "db", "to": "tier=vm3", "services": ["tcp/5432"]},  # it may open TCP 5432 to vm3 (across)
    {"name": "ops", "from": "tier=vm2", "services": ["icmp"]},  # vm2 (beside it) may ping it
]


def switch_port(dc, vm: str) -> str:
    """The switch side of the VM's link: what the VM receives leaves the switch there."""
    link = dc.host(vm).defaultIntf().link
    return (link.intf2 if link.intf1.node.name == vm else link.intf1).name


def test_remediation_allows_exactly_its_allow_list_and_cuts_what_was_running(dc):
    """vm1 in remediation: TCP 5432 to vm3 (encrypted, as policy says) and pings from vm2, each way
    only; nothing else, over ICMP, TCP or UDP; a ping it had running to vm4 stops."""
    assert [dc.layout.vms[v][0] for v in ("vm1", "vm2", "vm3", "vm4")] == ["hv1", "hv1", "hv2", "hv2"]
    before = reachable(dc)
    assert all(before.values()), before
    running = dc.host(FLAGGED).popen(["ping", "-D", "-n", "-i", "0.02", "-c", "150", dc.layout.vms["vm4"][1]])
    try:
        time.sleep(0.5)
        body = {"vm": FLAGGED, "reason": "patch it", "mode": "remediate", "allow": REMEDIATION}
        rest_call(dc.rest_url, "POST", "/v1/quarantine", body, expect=201)
        returned = time.time()
        out, _ = running.communicate(timeout=30)
        with capturing(encryption_check.fabric_interfaces(dc)) as fabric:
            allowed_across = tcp_open(dc, "vm1", "vm3")
        during = {
            "vm1->vm3 tcp/5432 (allowed)": allowed_across,
            "vm2->vm1 ping (allowed)": pings(dc, "vm2", "vm1"),
            "vm3->vm1 tcp/5432 (other way)": tcp_open(dc, "vm3", "vm1"),
            "vm1->vm2 ping (other way)": pings(dc, "vm1", "vm2"),
            "vm1->vm3 ping": pings(dc, "vm1", "vm3"),
            "vm1->vm4 tcp/5432": tcp_open(dc, "vm1", "vm4"),
            "vm4->vm1 ping": pings(dc, "vm4", "vm1"),
            "vm1->vm3 udp": udp_reaches(dc, "vm1", "vm3"),
            "vm2->vm3 (bystanders)": pings(dc, "vm2", "vm3"),
        }
    finally:
        if running.poll() is None:
            running.kill()
        release(dc)
    allowed = {k for k in during if "allowed" in k or "bystanders" in k}
    assert during == {k: k in allowed for k in during}, during
    # Policy encrypts vm1 -> vm3: remediation lets it through, and still only inside the tunnel.
    kinds = fabric.kinds()
    assert kinds.get("wireguard") and not kinds.get("tcp"), f"vm1 -> vm3 crossed the fabric in clear: {kinds}"
    replies = reply_times(out.decode())
    assert replies and min(replies) < returned and max(replies) - returned < 0.1, "the running ping was not cut"
    assert wait_until(lambda: reachable(dc) == before, 10), "release did not restore everything"


def udp_reaches(dc, src: str, dst: str) -> bool:
    """A datagram with a fresh marker from src arrives at dst's port."""
    marker = secrets.token_hex(8)
    with capturing([switch_port(dc, dst)]) as capture:
        dc.host(src).cmd(f"{sys.executable} -m mininet_scenarios.tcp_probe udp {dc.layout.vms[dst][1]} 9999 {marker} 3")
        time.sleep(0.3)
    return bool(capture.interfaces_with(bytes.fromhex(marker)))


def test_mirror_to_copies_every_frame_from_and_to_it_to_the_analyzer_untagged(dc):
    """vm1 isolated and mirrored to vm4 on the other hypervisor: pings from vm1 and to it reach no one
    but the analyzer, once each, as sent (untagged, original addresses); bystanders are not copied."""
    out_marker, in_marker, bystander = (secrets.token_bytes(8) for _ in range(3))
    _, ip1, mac1 = dc.layout.vms[FLAGGED]
    _, ip3, mac3 = dc.layout.vms["vm3"]
    assert dc.layout.vms[FLAGGED][0] != dc.layout.vms["vm4"][0], "the analyzer must be across the fabric"
    body = {"vm": FLAGGED, "reason": "forensics", "mirror_to": "vm4"}
    assert rest_call(dc.rest_url, "POST", "/v1/quarantine", body, expect=201)["mirror_to"] == "vm4"
    analyzer = switch_port(dc, "vm4")
    try:
        with capturing([analyzer, switch_port(dc, "vm3"), *encryption_check.fabric_interfaces(dc)]) as capture:
            dc.host(FLAGGED).cmd(f"ping -c5 -i0.05 -W1 -p {out_marker.hex()} {ip3}")
            dc.host("vm3").cmd(f"ping -c5 -i0.05 -W1 -p {in_marker.hex()} {ip1}")
            dc.host("vm2").cmd(f"ping -c5 -i0.05 -W1 -p {bystander.hex()} {ip3}")
            time.sleep(0.3)
    finally:
        release(dc)
    copies = capture.frames[analyzer]
    out = [f for f in copies if out_marker in f]
    inbound = [f for f in copies if in_marker in f]
    assert len(out) == 5 and len(inbound) == 5, (len(out), len(inbound))
    mac = lambda text: bytes.fromhex(text.replace(":", ""))  # noqa: E731
    assert all(f[0:6] == mac(mac3) and f[6:12] == mac(mac1) and f[12:14] == b"\x08\x00" for f in out), "not as sent"
    assert all(f[0:6] == mac(mac1) and f[6:12] == mac(mac3) and f[12:14] == b"\x08\x00" for f in inbound)
    assert not [f for f in copies if bystander in f], "a bystander's frames were copied"
    assert not [f for f in capture.frames[switch_port(dc, "vm3")] if out_marker in f], "isolated all the same"
    tagged = [i for i, f in capture.all_frames() if out_marker in f and f[12:14] == b"\x81\x00"]
    assert tagged and set(tagged) <= set(encryption_check.fabric_interfaces(dc)), "across the fabric on its VLAN"


# ---------------------------------------------------------------------------
# Spoofing from a managed VM (frames made by hand, as a compromised guest would)
# ---------------------------------------------------------------------------
def send_raw(dc, vm: str, frame: bytes) -> None:
    intf = dc.host(vm).defaultIntf().name
    dc.host(vm).cmd(f"{sys.executable} -m mininet_scenarios.raw_frame {intf} {frame.hex()} 3")


def alerts_about(dc, vm: str) -> list[dict]:
    return rest_call(dc.rest_url, "GET", f"/v1/alerts?vm={vm}", expect=200)["alerts"]


@pytest.mark.parametrize("kind", ["arp-spoofing", "mac-spoofing"])
def test_arp_and_mac_spoofing_quarantine_the_vm_by_default(dc, kind):
    from mininet_scenarios import raw_frame

    _, ip2, mac2 = dc.layout.vms["vm2"]
    _, ip3, mac3 = dc.layout.vms["vm3"]
    _, ip4, mac4 = dc.layout.vms["vm4"]
    if kind == "arp-spoofing":  # vm2 tells vm4 that vm3's address is at vm2's MAC
        frame = raw_frame.arp_reply(mac2, ip3, mac4, ip4)
    else:  # vm2 sends as vm3
        frame = raw_frame.udp_ipv4(mac3, mac4, ip3, ip4)
    assert pings(dc, "vm4", "vm2")
    send_raw(dc, "vm2", frame)
    try:
        assert wait_until(lambda: "vm2" in {q["vm"] for q in rest_call(dc.rest_url, "GET", "/v1/quarantine", expect=200)[
            "quarantine"]}, 5), f"{kind} did not quarantine vm2"  # fmt: skip
        assert not pings(dc, "vm4", "vm2")
        assert any(kind in a["signature"] and a["action"] == "quarantine" for a in alerts_about(dc, "vm2"))
        # Its neighbours still reach the VM it impersonated: nothing taught the network its lie (a
        # quarantined VM's frames show where it is, never which address it has).
        assert pings(dc, "vm4", "vm3"), "the VM it impersonated is untouched"
        assert dc.layout.vms["vm3"][2] in dc.host("vm4").cmd(f"ip neigh show {ip3}"), "vm4 was not poisoned"
    finally:
        release(dc, "vm2")
    assert wait_until(lambda: pings(dc, "vm4", "vm2"), 10)


def test_ip_spoofing_is_dropped_and_alerted_by_default(dc):
    from mininet_scenarios import raw_frame

    _, _, mac2 = dc.layout.vms["vm2"]
    _, ip4, mac4 = dc.layout.vms["vm4"]
    send_raw(dc, "vm2", raw_frame.udp_ipv4(mac2, mac4, "10.0.77.77", ip4))
    assert wait_until(lambda: any("ip-spoofing" in a["signature"] for a in alerts_about(dc, "vm2")), 5)
    assert not rest_call(dc.rest_url, "GET", "/v1/quarantine", expect=200)["quarantine"]
    assert pings(dc, "vm4", "vm2"), "an alert only: the VM keeps its own traffic"
