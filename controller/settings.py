"""Controller settings, read from GOLDILOCKS_* environment variables (the launcher sets them)."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass

from apps.compiler import ARP_AHEAD_MAX
from controller.auth import FAILURE_BURST, FAILURE_RATE

DEFAULT_STATE_DIR = "/var/lib/goldilocks"


@dataclass(frozen=True)
class Settings:
    state_dir: str = DEFAULT_STATE_DIR
    lldp_interval: float = 1.0
    arp_ahead_max: int = ARP_AHEAD_MAX  # hosts and host ports up to which every hypervisor answers every address
    audit_interval: float = 30.0
    settle_time: float = 3.0  # after a switch connects, stale flows are kept this long
    inventory: str | None = None  # a JSON or YAML file of VMs, upserted at start
    reset_admin_token: bool = False  # issue a new admin token and rewrite <state-dir>/admin.token
    # Read VMs that OVS publishes in Interface external_ids (controller/ovsdb_inventory.py).
    # GOLDILOCKS_OVSDB_INVENTORY=1 or 0; unset: on when ovs-vsctl is installed.
    ovsdb_inventory: bool = False
    ovsdb_interval: float = 5.0  # seconds between reads of the Interface table
    # The agents (docs/agent-protocol.md): their TLS listener (port 0: none), the network their
    # WireGuard addresses come from, and how often keys rotate (0: only on demand).
    agent_host: str = "0.0.0.0"
    agent_port: int = 6654
    tunnel_network: str = "100.127.0.0/16"
    psk_rotation: float = 3600.0
    identity_rotation: float = 86400.0
    # External IDS alerts (POST /v1/alerts): this many of this severity or worse within the window
    # quarantine the VM ("none": alerts never do).
    alert_quarantine_severity: str = "high"
    alert_quarantine_count: int = 1
    alert_window: float = 300.0
    # Failed sign-ins to the REST API, per client address: this many at once, this many more a
    # second after; past that the client gets 429 (controller/auth.py SignInLimiter).
    auth_failure_burst: int = FAILURE_BURST
    auth_failure_rate: float = FAILURE_RATE
    # Audit entries older than this many days are purged (0: kept forever).
    audit_retention_days: float = 365.0
    # What port security's evidence leads to, per kind: "alert" or "quarantine" (controller/security.py).
    spoofing_responses: tuple[tuple[str, str], ...] = (
        ("mac-spoofing", "quarantine"), ("ip-spoofing", "alert"), ("arp-spoofing", "quarantine"),
    )  # fmt: skip

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        ovsdb_inventory = env.get("GOLDILOCKS_OVSDB_INVENTORY", "")
        return cls(
            state_dir=env.get("GOLDILOCKS_STATE_DIR", DEFAULT_STATE_DIR),
            lldp_interval=float(env.get("GOLDILOCKS_LLDP_INTERVAL", "1.0")),
            arp_ahead_max=int(env.get("GOLDILOCKS_ARP_AHEAD_MAX", ARP_AHEAD_MAX)),
            audit_interval=float(env.get("GOLDILOCKS_AUDIT_INTERVAL", "30")),
            settle_time=float(env.get("GOLDILOCKS_SETTLE_TIME", "3.0")),
            inventory=env.get("GOLDILOCKS_INVENTORY") or None,
            reset_admin_token=env.get("GOLDILOCKS_RESET_ADMIN_TOKEN", "") == "1",
            ovsdb_inventory=ovsdb_inventory == "1" if ovsdb_inventory else ovsdb_inventory_default(),
            ovsdb_interval=float(env.get("GOLDILOCKS_OVSDB_INTERVAL", "5.0")),
            agent_host=env.get("GOLDILOCKS_AGENT_HOST", "0.0.0.0"),
            agent_port=int(env.get("GOLDILOCKS_AGENT_PORT", "6654")),
            tunnel_network=env.get("GOLDILOCKS_TUNNEL_NETWORK", "100.127.0.0/16"),
            psk_rotation=float(env.get("GOLDILOCKS_PSK_ROTATION", "3600")),
            identity_rotation=float(env.get("GOLDILOCKS_IDENTITY_ROTATION", "86400")),
            alert_quarantine_severity=env.get("GOLDILOCKS_ALERT_QUARANTINE_SEVERITY", "high"),
            alert_quarantine_count=int(env.get("GOLDILOCKS_ALERT_QUARANTINE_COUNT", "1")),
            alert_window=float(env.get("GOLDILOCKS_ALERT_WINDOW", "300")),
            auth_failure_burst=int(env.get("GOLDILOCKS_AUTH_FAILURE_BURST", FAILURE_BURST)),
            auth_failure_rate=float(env.get("GOLDILOCKS_AUTH_FAILURE_RATE", FAILURE_RATE)),
            audit_retention_days=float(env.get("GOLDILOCKS_AUDIT_RETENTION_DAYS", "365")),
            spoofing_responses=tuple(
                (kind, env.get(f"GOLDILOCKS_{kind.upper().replace('-', '_')}", default))
                for kind, default in cls.spoofing_responses
            ),
        )


def ovsdb_inventory_default() -> bool:
    """The OVSDB inventory source is on by default where there is an ovs-vsctl to read with."""
    return shutil.which("ovs-vsctl") is not None
