"""The scenario's proof that encryption works: a sample policy encrypts `sensitivity=pci` to
`tier=db`; an encrypted and a plain flow carry random payload markers across the same hypervisor
pair while every fabric port is captured. The plain marker must show up (the capture could see
it), the encrypted one never, and WireGuard must carry the encrypted flow."""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

from mininet_scenarios.capture import Capture, capturing, excerpt
from mininet_scenarios.harness import api_call, rest_call, rest_get, wait_for

SAMPLE_RULE = "sample-pci-to-db"
TUNNEL_READY_TIMEOUT = 30.0
PINGS = 5


@dataclass(frozen=True)
class Roles:
    """Who plays which part: `encrypted` src -> dst is pci -> db; `plain` is the reverse direction's
    own new connection, which the rule does not select, over the same hypervisor pair."""

    pci: str
    db: str


def pick_roles(dc) -> Roles | None:
    """The first VM and the last one on another hypervisor; None when all VMs share one."""
    vms = list(dc.layout.vms)
    if not vms:
        return None
    first_hv = dc.layout.vms[vms[0]][0]
    other = next((v for v in reversed(vms) if dc.layout.vms[v][0] != first_hv), None)
    return Roles(vms[0], other) if other is not None else None


def fabric_interfaces(dc) -> list[str]:
    """All the wire between hypervisors: every port of every fabric switch (leaves, spines), and one
    end of every cable that joins two hypervisors directly (a ring, a back-to-back pair, a fabric of
    hypervisors only), which no fabric switch sees."""
    roles = dc.layout.roles
    names = []
    for name, role in roles.items():
        if role == "fabric":
            names += [i.name for i in dc.net.get(name).intfList() if i.name != "lo"]
    for a, b in dc.layout.switch_links:
        if roles.get(a) != "fabric" and roles.get(b) != "fabric":
            for link in dc.net.linksBetween(dc.net.get(a), dc.net.get(b)):
                names.append(link.intf1.name)  # the other end carries the same frames
    return sorted(set(names))


def label_vm(dc, vm: str, labels: dict[str, str]) -> None:
    """Put the VM in the inventory with these labels (keeping any it has)."""
    hv, ip, mac = dc.layout.vms[vm]
    status, _ = api_call(dc.rest_url, "GET", f"/v1/vms/{vm}", token=_token(dc))
    if status == 404:
        rest_call(dc.rest_url, "PUT", f"/v1/vms/{vm}", {"macs": [mac], "ips": [ip], "labels": labels}, expect=201)
    else:
        rest_call(dc.rest_url, "PATCH", f"/v1/vms/{vm}/labels", {"set": labels}, expect=200)


def _token(dc) -> str | None:
    from mininet_scenarios.harness import _token_for

    return _token_for(dc.rest_url)


def apply_sample_policy(dc, roles: Roles) -> float:
    """Label the two VMs and add the encrypt rule (unless it exists); return when (monotonic)."""
    label_vm(dc, roles.pci, {"sensitivity": "pci"})
    label_vm(dc, roles.db, {"tier": "db"})
    rule = {"name": SAMPLE_RULE, "src": "sensitivity=pci", "dst": "tier=db", "action": "encrypt", "services": ["any"]}
    created = time.monotonic()
    status, doc = api_call(dc.rest_url, "POST", "/v1/policies", rule, _token(dc))
    if status not in (201, 409):
        raise RuntimeError(f"POST /v1/policies gave {status}: {doc}")
    return created


def explain(dc, src: str, dst: str) -> dict:
    return rest_get(dc.rest_url, f"/v1/explain?src={src}&dst={dst}&proto=icmp")


def marker_ping(dc, src: str, dst: str, marker: bytes, count: int = PINGS) -> int:
    """Pings from src to dst whose payload repeats `marker` (8 bytes); return how many came back."""
    ip = dc.layout.vms[dst][1]
    out = dc.host(src).cmd(f"ping -c {count} -i 0.2 -W 1 -s 64 -p {marker.hex()} {ip}")
    found = re.search(r"(\d+) received", out)
    return int(found.group(1)) if found else 0


def rule_to_encrypted_traffic(dc, roles: Roles, timeout: float = TUNNEL_READY_TIMEOUT) -> dict:
    """Create the rule while pinging pci -> db every 50 ms and capturing the source hypervisor's
    endpoint port; return seconds from the rule to explain's "delivered through the tunnel", and
    to the first WireGuard transport-data datagram on the wire."""
    ip = dc.layout.vms[roles.db][1]
    source_hv = dc.layout.vms[roles.pci][0]
    with capturing([dc.endpoint_port(source_hv)]) as capture:
        pinger = dc.host(roles.pci).popen(["ping", "-i", "0.05", "-W", "1", "-w", str(int(timeout)), ip])
        try:
            created_wall, created = time.time(), apply_sample_policy(dc, roles)
            wait_for(
                lambda: explain(dc, roles.pci, roles.db)["encryption"]["delivered"],
                timeout,
                interval=0.02,
                what=f"the tunnel for {roles.pci} -> {roles.db} to be in place",
            )
            ready = time.monotonic() - created
            time.sleep(0.5)  # a few pings through the new tunnel
        finally:
            pinger.kill()
            pinger.wait()
    first = capture.first_wireguard_data()
    return {
        "rule_to_tunnel_in_place_seconds": round(ready, 3),
        "rule_to_first_encrypted_packet_seconds": None if first is None else round(first - created_wall, 3),
    }


def run(dc) -> dict:
    """Apply the sample policy and prove both paths; a JSON-able summary with ok true/false."""
    summary: dict = {}
    try:
        summary["agents_connected_seconds"] = round(dc.wait_for_agents(), 3)
        roles = pick_roles(dc)
        if roles is None:
            summary["note"] = "every VM is on one hypervisor: no VM traffic crosses the fabric, so there is nothing to encrypt"
            summary["ok"] = True
            return summary
        summary["encrypted_flow"] = f"{roles.pci} (sensitivity=pci) -> {roles.db} (tier=db), icmp"
        summary["plain_flow"] = f"{roles.db} -> {roles.pci}, a new connection no rule encrypts"
        summary.update(rule_to_encrypted_traffic(dc, roles))
        secret, plain = secrets.token_bytes(8), secrets.token_bytes(8)
        interfaces = fabric_interfaces(dc)
        with capturing(interfaces) as capture:
            answered_encrypted = marker_ping(dc, roles.pci, roles.db, secret)
            answered_plain = marker_ping(dc, roles.db, roles.pci, plain)
        summary.update(judge(capture, secret, plain, answered_encrypted, answered_plain, len(interfaces)))
        summary["explain"] = explain(dc, roles.pci, roles.db)["encryption"]
        tunnels = rest_get(dc.rest_url, "/v1/tunnels")["tunnels"]
        summary["tunnels"] = [{"pair": f"{t['a']}|{t['b']}", "state": t["state"], "psk": t["psk_fingerprint"]} for t in tunnels]
    except (RuntimeError, TimeoutError, OSError) as exc:
        summary["error"] = str(exc)
    summary["ok"] = "error" not in summary and summary.get("verdict") == "encrypted"
    return summary


def judge(capture: Capture, secret: bytes, plain: bytes, answered_encrypted: int, answered_plain: int, ports: int) -> dict:
    leaked = capture.interfaces_with(secret)
    seen_plain = capture.interfaces_with(plain)
    wireguard = capture.count("wireguard")
    result = {
        "captured_ports": ports,
        "encrypted_pings_answered": f"{answered_encrypted}/{PINGS}",
        "plain_pings_answered": f"{answered_plain}/{PINGS}",
        "encrypted_marker_seen_on": leaked,
        "plain_marker_seen_on": seen_plain,
        "wireguard_datagrams": wireguard,
        "vxlan_in_clear": capture.count("vxlan"),
        "capture_excerpt": excerpt([f for _, f in capture.all_frames() if _kind_of_interest(f)], 6),
    }
    if leaked:
        result["verdict"] = "LEAKED: the encrypted flow's payload crossed the fabric in clear"
    elif answered_encrypted < PINGS or answered_plain < PINGS:
        result["verdict"] = "lost pings"
    elif not seen_plain:
        result["verdict"] = "the capture did not see the plain flow's marker: it proves nothing"
    elif wireguard == 0 or result["vxlan_in_clear"]:
        result["verdict"] = "the encrypted flow did not travel as WireGuard"
    else:
        result["verdict"] = "encrypted"
    return result


def _kind_of_interest(frame: bytes) -> bool:
    from mininet_scenarios.capture import classify

    return classify(frame) in ("wireguard", "icmp")


def human(summary: dict) -> list[str]:
    lines = ["  encryption:"]
    if "error" in summary:
        return [*lines, f"    error: {summary['error']}"]
    if "note" in summary:
        return [*lines, f"    {summary['note']}"]
    explain_view = summary.get("explain") or {}
    lines += [
        f"    encrypted flow: {summary['encrypted_flow']} via tunnel {explain_view.get('tunnel')} "
        f"({explain_view.get('tunnel_state')}); after the rule: tunnel in place {summary['rule_to_tunnel_in_place_seconds']} s,"
        f" first encrypted packet {summary['rule_to_first_encrypted_packet_seconds']} s",
        f"    plain flow:     {summary['plain_flow']}",
        f"    capture on {summary['captured_ports']} fabric ports: encrypted marker seen on "
        f"{summary['encrypted_marker_seen_on'] or 'none'}, plain marker seen on {len(summary['plain_marker_seen_on'])} ports, "
        f"{summary['wireguard_datagrams']} WireGuard datagrams",
        "    excerpt:",
        *(f"      {line}" for line in summary["capture_excerpt"]),
        f"    verdict: {summary['verdict']}",
    ]
    return lines
