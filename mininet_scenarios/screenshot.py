"""A screenshot of the web view on the demo fabric, for the README (docs/web-ui.png).

    python -m mininet_scenarios.screenshot [--out docs/web-ui.png] [--theme dark|light]

Builds the `make demo` data centre (2 spines, 2 leaves, 2 hypervisors per leaf, 2 VMs each) in
Mininet, labels the VMs web/app/db, adds an encrypt rule (web to db) and an allow rule (app to db,
tcp/5432), brings its tunnels up with a few pings, quarantines one VM, then signs in to /ui in
headless Chromium and saves the page. Needs root, like every Mininet run."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from mininet_scenarios.datacenter import Layout, running
from mininet_scenarios.harness import rest_call, rest_get, wait_for

DEMO_TIERS = {"vm1": "web", "vm2": "web", "vm3": "app", "vm4": "app", "vm5": "db", "vm6": "db", "vm7": "web", "vm8": "app"}
DEMO_RULES = [
    {"name": "web-to-db", "src": "tier=web", "dst": "tier=db", "services": ["any"], "action": "encrypt"},
    {"name": "app-to-db", "src": "tier=app", "dst": "tier=db", "services": ["tcp/5432"], "action": "allow"},
]
DEMO_QUARANTINE = {"vm": "vm8", "reason": "IDS suricata: ET SCAN nmap -sS (high)"}
ENCRYPTED_TIERS = ("web", "db")


def stage(dc, tiers: dict[str, str], rules: list[dict]) -> None:
    """Put every VM of `tiers` into the inventory with its tier label, and add the rules."""
    for name, tier in tiers.items():
        _, ip, mac = dc.layout.vms[name]
        labels = {"tier": tier, **({"sensitivity": "pci"} if tier == "db" else {})}
        rest_call(dc.rest_url, "PUT", f"/v1/vms/{name}", {"macs": [mac], "ips": [ip], "labels": labels}, expect=201)
    for rule in rules:
        rest_call(dc.rest_url, "POST", "/v1/policies", rule, expect=201)


def bring_tunnels_up(dc, tiers: dict[str, str], timeout: float = 60.0) -> None:
    """Ping from every web VM to every db VM on another hypervisor (encrypted, so each ping makes its
    tunnel's WireGuard handshake) until every tunnel is up."""
    src = [n for n, t in tiers.items() if t == ENCRYPTED_TIERS[0]]
    dst = [n for n, t in tiers.items() if t == ENCRYPTED_TIERS[1]]

    def all_up() -> bool:
        for a in src:
            for b in dst:
                if dc.layout.vms[a][0] != dc.layout.vms[b][0]:
                    dc.host(a).cmd(f"ping -c1 -W1 {dc.layout.vms[b][1]}")
        tunnels = rest_get(dc.rest_url, "/v1/tunnels")["tunnels"]
        return bool(tunnels) and all(t["state"] == "up" for t in tunnels)

    wait_for(all_up, timeout, interval=1.0, what="every tunnel to be up")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mininet_scenarios.screenshot", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/web-ui.png", help="where to save the PNG (default docs/web-ui.png)")
    parser.add_argument("--theme", choices=("dark", "light"), default="dark")
    args = parser.parse_args(argv)
    from mininet_scenarios.browser import chromium, csp_violations, sign_in, tap

    with running(Layout(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2)) as dc:
        dc.wait_for_fabric(timeout=60)
        stage(dc, DEMO_TIERS, DEMO_RULES)
        bring_tunnels_up(dc, DEMO_TIERS)
        rest_call(dc.rest_url, "POST", "/v1/quarantine", DEMO_QUARANTINE, expect=201)
        with chromium(color_scheme=args.theme, viewport=(1600, 1000)) as browser:
            page = browser.new_page()
            sign_in(page, dc.rest_url, dc.controller_proc.admin_token)
            page.wait_for_function(
                "() => window.goldilocksView.cy.$('edge.tunnel-up').length >= 2"
                " && window.goldilocksView.cy.$('node.quarantined').length",
                timeout=10_000,
            )
            tap(page, "vm:vm8")
            page.select_option("#explain-src", "vm1")
            page.select_option("#explain-dst", "vm5")
            page.click("#explain-form button[type=submit]")
            page.wait_for_selector("#explain-result:not([hidden])")
            time.sleep(1.5)  # two polls and a tunnel-age tick: the page as a user sees it
            violations = csp_violations(page)
            if violations:
                print(f"Content-Security-Policy violations: {violations}", file=sys.stderr)
                return 1
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=args.out)
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
