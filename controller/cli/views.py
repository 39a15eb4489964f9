"""API documents as tables for people: pure functions from JSON to rows of text, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from controller.cli.parsing import parse_api_time


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    title: str | None = None
    empty: str = "(none)"  # shown instead of an empty table


@dataclass
class Pairs:
    """A two-column key/value block (one object shown in detail)."""

    items: list[tuple[str, str]]
    title: str | None = None


View = Table | Pairs | str


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    whole = max(0, int(seconds))  # floored: 59.9 s is not yet a minute
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60}s" if whole < 600 else f"{whole // 60}m"
    if whole < 86400:
        hours, minutes = divmod(whole // 60, 60)
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(whole // 3600, 24)
    return f"{days}d{hours}h" if hours else f"{days}d"


def ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{human_seconds(seconds)} ago"


def ago_iso(text: str | None, now: datetime) -> str:
    """An API time as an age: `3s ago`."""
    if not text:
        return "-"
    try:
        moment = parse_api_time(text)
    except ValueError:
        return text
    return ago((now - moment).total_seconds())


def ago_unix(at: float | None, now: datetime) -> str:
    return "-" if at is None else ago(now.timestamp() - at)


def yes(value: Any) -> str:
    return {True: "yes", False: "no", None: "-"}.get(value, str(value))


def labels_text(labels: dict[str, str] | None) -> str:
    if not labels:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def dash(value: Any) -> str:
    if value is None or value == "" or value == []:
        return "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- the network ---------------------------------------------------------------------------
def switch_names(topology: dict | None) -> dict[str, str]:
    return {s["dpid"]: s["name"] or s["dpid"] for s in (topology or {}).get("switches", [])}


def location_text(location: dict | None, names: dict[str, str]) -> str:
    if not location:
        return "-"
    return f"{names.get(location['dpid'], location['dpid'])}:{location['port']}"


def topology_views(topology: dict) -> list[View]:
    names = switch_names(topology)
    switches = Table(["DPID", "NAME", "ROLE", "CONNECTED", "PORTS", "EDGE", "CONVERGED", "REFUSED"], title="Switches")
    for s in topology["switches"]:
        edge = sum(1 for p in s["ports"] if p["kind"] == "edge")
        converged = "-" if s["converge_seconds"] is None else f"{s['converge_seconds']:.2f}s"
        switches.rows.append(
            [s["dpid"], s["name"] or "-", s["role"], yes(s["connected"]), str(len(s["ports"])), str(edge), converged,
             str(s["refused_flows"])]
        )  # fmt: skip
    links = Table(["FROM", "TO"], title="Links")
    for link in topology["links"]:
        links.rows.append([location_text(link["src"], names), location_text(link["dst"], names)])
    hosts = Table(["MAC", "IPS", "SWITCH:PORT"], title="Hosts")
    for h in topology["hosts"]:
        hosts.rows.append([h["mac"], dash(h["ips"]), location_text(h, names)])
    return [switches, links, hosts]


def match_text(match: dict) -> str:
    def value(v: Any) -> str:
        return f"{v[0]}/{v[1]}" if isinstance(v, list) else str(v)

    return ",".join(f"{k}={value(v)}" for k, v in match.items()) or "*"


def flow_views(doc: dict) -> list[View]:
    table = Table(["TABLE", "PRIO", "COOKIE", "MATCH", "ACTIONS"], title=f"Desired flows of {doc['dpid']}", empty="(no flows)")
    for f in doc["flows"]:
        actions = list(f["actions"])
        if f.get("write_metadata"):
            actions.append(f"write_metadata:{'/'.join(str(v) for v in f['write_metadata'])}")
        if f.get("goto") is not None:
            actions.append(f"goto:{f['goto']}")
        table.rows.append(
            [str(f["table"]), str(f["priority"]), f["cookie"], match_text(f["match"]), "; ".join(actions) or "drop"]
        )
    refused = Table(["TABLE", "PRIO", "COOKIE", "MATCH", "ERROR", "ATTEMPTS"], title="Refused by the switch", empty="(none)")
    for r in doc["refused"]:
        refused.rows.append(
            [str(r["table"]), str(r["priority"]), r["cookie"], match_text(r["match"]), r["error"], str(r["attempts"])]
        )
    return [table, refused]


# -- VMs -------------------------------------------------------------------------------------------
def vm_table(vms: list[dict], names: dict[str, str], quarantined: set[str]) -> Table:
    table = Table(["NAME", "HYPERVISOR", "MACS", "IPS", "LABELS", "QUARANTINED", "SOURCE"], empty="(no VMs)")
    for vm in vms:
        table.rows.append(
            [vm["name"], location_text(vm.get("location"), names), dash(vm["macs"]), dash(vm.get("ips")),
             labels_text(vm.get("labels")), yes(vm["name"] in quarantined), vm.get("source") or "-"]
        )  # fmt: skip
    return table


def unmanaged_table(hosts: list[dict], names: dict[str, str]) -> Table:
    table = Table(["MAC", "IPS", "SWITCH:PORT"], empty="(no unmanaged hosts)")
    for h in hosts:
        table.rows.append([h["mac"], dash(h["ips"]), location_text(h, names)])
    return table


def vm_pairs(vm: dict, names: dict[str, str], quarantine: dict | None, now: datetime) -> Pairs:
    items = [
        ("name", vm["name"]),
        ("macs", dash(vm["macs"])),
        ("ips", dash(vm.get("ips"))),
        ("labels", labels_text(vm.get("labels"))),
        ("location", location_text(vm.get("location"), names)),
        ("source", vm.get("source") or "-"),
    ]
    if quarantine:
        items.append(("quarantined", f"{quarantine['mode']} since {ago_iso(quarantine['time'], now)}: {quarantine['reason']}"))
    else:
        items.append(("quarantined", "no"))
    return Pairs(items)


# -- policy --------------------------------------------------------------------------------------
def rule_table(rules: list[dict]) -> Table:
    table = Table(["POS", "NAME", "FROM", "TO", "SERVICES", "ACTION"], empty="(no rules)")
    for r in rules:
        table.rows.append([str(r["position"]), r["name"], r["src"], r["dst"], dash(r["services"]), r["action"]])
    return table


def policy_views(doc: dict) -> list[View]:
    return [rule_table(doc["policies"]), f"default action: {doc['default_action']}"]


def explain_views(doc: dict) -> list[View]:
    def end(party: dict) -> str:
        who = party["vm"] or f"unmanaged {party['query']}"
        where = f" on {party['host']['dpid']}:{party['host']['port']}" if party.get("host") else " (not seen yet)"
        labels = f" [{labels_text(party['labels'])}]" if party.get("labels") is not None else ""
        return f"{who}{labels}{where}"

    service = doc["proto"] or "any"
    if doc.get("dport"):
        service += f"/{doc['dport']}"
    rule = doc.get("rule")
    decided = f"rule {rule['name']} (position {rule['position']})" if rule else f"the default action ({doc['default_action']})"
    items = [
        ("from", end(doc["src"])),
        ("to", end(doc["dst"])),
        ("service", service),
        ("decided by", decided),
        ("action", doc["action"]),
        ("verdict", doc["effective_action"]),
    ]
    if doc.get("match"):
        m = doc["match"]
        items.append(("matched", f"{m['src_selector']} -> {m['dst_selector']} on {m['service']}"))
    if doc.get("quarantined"):
        items.append(("quarantined", ", ".join(doc["quarantined"])))
    remediation = doc.get("remediation")
    if remediation:
        via = remediation["rule"]["name"] if remediation.get("rule") else "no allow rule"
        items.append(("remediation", f"{remediation['vm']}: {remediation['action']} ({via})"))
    enc = doc.get("encryption")
    if enc:
        items.append(("encryption", f"{enc['path']}, {'delivered' if enc['delivered'] else 'DROPPED'}: {enc['why']}"))
    return [Pairs(items)]


# -- quarantine, agents, tunnels -------------------------------------------------------------------
def quarantine_table(records: list[dict], now: datetime) -> Table:
    table = Table(["VM", "MODE", "REASON", "BY", "SINCE", "MIRROR TO", "LOCATION"], empty="(no VM in quarantine)")
    for q in records:
        loc = q.get("location")
        table.rows.append(
            [q["vm"], q["mode"], q["reason"], q["actor"], ago_iso(q["time"], now), dash(q.get("mirror_to")),
             f"{loc['dpid']}:{loc['port']}" if loc else "-"]
        )  # fmt: skip
    return table


def agent_table(agents: list[dict]) -> Table:
    table = Table(
        ["HYPERVISOR", "INDEX", "CONNECTED", "BRIDGE", "UNDERLAY", "TUNNEL ADDRESS", "WG KEY", "LAST REPORT", "ROTATING"],
        empty="(no agents enrolled)",
    )
    for a in agents:
        underlay = a.get("underlay") or {}
        table.rows.append(
            [a["hypervisor"], str(a["index"]), yes(a["connected"]), dash(a.get("bridge")), dash(underlay.get("ip")),
             dash(a.get("tunnel_address")), dash(a.get("wg_public_key_fingerprint")), ago(a.get("last_report_age")),
             yes(a.get("identity_rotation"))]
        )  # fmt: skip
    return table


def agent_pairs(agent: dict, now: datetime) -> Pairs:
    underlay = agent.get("underlay") or {}
    return Pairs(
        [
            ("hypervisor", agent["hypervisor"]),
            ("index", str(agent["index"])),
            ("connected", yes(agent["connected"])),
            ("enrolled", f"{agent['enrolled']} ({ago_iso(agent['enrolled'], now)})"),
            ("certificate serial", agent["certificate_serial"]),
            ("bridge", dash(agent.get("bridge"))),
            ("underlay", " ".join(f"{k} {v}" for k, v in underlay.items()) or "-"),
            ("wireguard key", dash(agent.get("wg_public_key_fingerprint"))),
            ("tunnel address", dash(agent.get("tunnel_address"))),
            ("wireguard running", yes(agent.get("wg_running"))),
            ("last report", ago(agent.get("last_report_age"))),
            ("identity rotation", yes(agent.get("identity_rotation"))),
        ]
    )


def bytes_text(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return str(n)


def tunnel_views(doc: dict) -> list[View]:
    table = Table(["PAIR", "STATE", "VNI", "HANDSHAKE", "RX", "TX", "DROPS", "PSK", "PSK AGE", "NEEDED"], empty="(no tunnels)")
    for t in doc["tunnels"]:
        table.rows.append(
            [f"{t['a']}|{t['b']}", t["state"], str(t["vni"]), ago(t.get("handshake_age")), bytes_text(t.get("rx_bytes")),
             bytes_text(t.get("tx_bytes")), str(t.get("drops", 0)), t["psk_fingerprint"], human_seconds(t.get("psk_age")),
             yes(t["needed"])]
        )  # fmt: skip
    rotation = doc.get("psk_rotation_seconds")
    every = f"every {human_seconds(rotation)}" if rotation else "on demand only"
    summary = (
        f"encrypt drops: {doc['encrypt_drops']}; pre-shared keys rotate {every} ({doc['psk_rotations']} so far); "
        f"identity rotations: {doc['identity_rotations']}"
    )
    return [table, summary]


def tunnel_counts(tunnels: list[dict]) -> dict[str, int]:
    counts = {"up": 0, "pending": 0, "down": 0}
    for t in tunnels:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    return counts


# -- status -----------------------------------------------------------------------------------------
def status_views(doc: dict, url: str, now: datetime) -> list[View]:
    health = doc["health"]
    switches = doc["switches"]
    roles: dict[str, int] = {}
    for s in switches:
        roles[s["role"]] = roles.get(s["role"], 0) + 1
    disconnected = [s["name"] or s["dpid"] for s in switches if not s["connected"]]
    agents = doc["agents"]
    offline = [a["hypervisor"] for a in agents if not a["connected"]]
    counts = tunnel_counts(doc["tunnels"]["tunnels"])
    quarantine = doc["quarantine"]
    by_role = ", ".join(f"{n} {role}" for role, n in sorted(roles.items()))
    items = [
        ("controller", f"{url}: {health['status']}, up {human_seconds(health['uptime_seconds'])}"),
        (
            "switches",
            f"{health['switches_connected']} connected, {health['switches_synced']} synced"
            + (f" ({by_role})" if by_role else "")
            + (f"; not connected: {', '.join(disconnected)}" if disconnected else ""),
        ),
        ("fabric", f"{health['links']} links, {health['hosts']} hosts"),
        (
            "agents",
            f"{len(agents)} enrolled, {len(agents) - len(offline)} connected"
            + (f"; not connected: {', '.join(offline)}" if offline else ""),
        ),
        (
            "tunnels",
            f"{counts['up']} up, {counts['pending']} pending, {counts['down']} down; "
            f"encrypt drops {doc['tunnels']['encrypt_drops']}",
        ),
        ("policy", f"{plural(len(doc['policies']['policies']), 'rule')}, default {doc['policies']['default_action']}"),
        ("quarantine", plural(len(quarantine), "VM")),
    ]
    views: list[View] = [Pairs(items)]
    if quarantine:
        views.append(quarantine_table(quarantine, now))
    return views


# -- audit, tokens, alerts -------------------------------------------------------------------------
def audit_table(entries: list[dict], now: datetime) -> Table:
    table = Table(["ID", "TIME", "AGE", "ACTOR", "ACTION", "TARGET", "SUMMARY"], empty="(no audit entries)")
    for e in entries:
        table.rows.append([str(e["id"]), e["time"], ago_iso(e["time"], now), e["actor"], e["action"], e["target"], e["summary"]])
    return table


def token_table(tokens: list[dict], now: datetime) -> Table:
    table = Table(["NAME", "ROLE", "CREATED", "FINGERPRINT"], empty="(no tokens)")
    for t in tokens:
        table.rows.append([t["name"], t["role"], ago_iso(t["created"], now), t["fingerprint"]])
    return table


def alert_views(doc: dict, now: datetime) -> list[View]:
    table = Table(["ID", "AGE", "VM", "SEVERITY", "SOURCE", "SIGNATURE", "ACTION"], empty="(no alerts)")
    for a in doc["alerts"]:
        table.rows.append(
            [str(a["id"]), ago_iso(a["time"], now), a["vm"], a["severity"], a["source"], a["signature"], a["action"]]
        )
    return [table, f"quarantine threshold: {doc['threshold']}"]


def allow_table(rules: list[dict]) -> Table:
    table = Table(["NAME", "DIRECTION", "PEERS", "SERVICES"], empty="(nothing allowed)")
    for r in rules:
        direction = "to" if "to" in r else "from"
        table.rows.append([r["name"], direction, r[direction], dash(r.get("services"))])
    return table
