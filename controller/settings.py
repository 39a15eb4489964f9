"""Controller settings, read from GOLDILOCKS_* environment variables (the launcher sets them)."""

from __future__ import annotations

import os
from dataclasses import dataclass

DEFAULT_STATE_DIR = "/var/lib/goldilocks"


@dataclass(frozen=True)
class Settings:
    state_dir: str = DEFAULT_STATE_DIR
    lldp_interval: float = 1.0
    audit_interval: float = 30.0
    settle_time: float = 3.0  # after a switch connects, stale flows are kept this long
    inventory: str | None = None  # a JSON or YAML file of VMs, upserted at start
    reset_admin_token: bool = False  # issue a new admin token and rewrite <state-dir>/admin.token

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        return cls(
            state_dir=env.get("GOLDILOCKS_STATE_DIR", DEFAULT_STATE_DIR),
            lldp_interval=float(env.get("GOLDILOCKS_LLDP_INTERVAL", "1.0")),
            audit_interval=float(env.get("GOLDILOCKS_AUDIT_INTERVAL", "30")),
            settle_time=float(env.get("GOLDILOCKS_SETTLE_TIME", "3.0")),
            inventory=env.get("GOLDILOCKS_INVENTORY") or None,
            reset_admin_token=env.get("GOLDILOCKS_RESET_ADMIN_TOKEN", "") == "1",
        )
