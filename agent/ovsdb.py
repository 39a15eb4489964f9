"""The Interface rows (name, external_ids) of the ports on the agent's bridge, as the `report` message carries them.

Read with two `ovs-vsctl` calls: the bridge's ports, then the Interface table as JSON. Parsing is a
pure function (`bridge_interfaces`), so it is tested without Open vSwitch. OVSDB is reached through
its unix socket, which every network namespace shares: no namespace switch is needed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Iterable

OVS_VSCTL = ("ovs-vsctl", "--timeout=2")
LIST_INTERFACES = ("--format=json", "--columns=name,external_ids", "list", "Interface")
READ_TIMEOUT = 3.0  # seconds; ovs-vsctl gives up after 2 on its own

Run = Callable[..., subprocess.CompletedProcess]


class OvsdbError(RuntimeError):
    """ovs-vsctl could not give us the bridge's ports or the Interface table (no database, no bridge, bad output)."""


def _external_ids(value: object) -> dict[str, str]:
    """An OVSDB map datum ["map", [[k, v], ...]] as a dict of strings; anything else is no ids."""
    if isinstance(value, list) and len(value) == 2 and value[0] == "map" and isinstance(value[1], list):
        return {str(pair[0]): str(pair[1]) for pair in value[1] if isinstance(pair, list) and len(pair) == 2}
    return {}


def bridge_interfaces(interfaces_json: str, ports: Iterable[str]) -> list[dict]:
    """The rows of `ovs-vsctl --format=json --columns=name,external_ids list Interface` whose name is one of
    `ports`, as [{"name", "external_ids"}] sorted by name. Raises OvsdbError for output that is not that table:
    an unusable read must never look like "no ports"."""
    wanted = set(ports)
    try:
        table = json.loads(interfaces_json)
        headings, data = table["headings"], table["data"]
        rows = [dict(zip(headings, row, strict=True)) for row in data]
    except (ValueError, TypeError, KeyError) as exc:
        raise OvsdbError(f"ovs-vsctl gave output that is not its JSON table format: {exc}") from None
    found = [
        {"name": row["name"], "external_ids": _external_ids(row.get("external_ids"))}
        for row in rows
        if isinstance(row.get("name"), str) and row["name"] in wanted
    ]
    return sorted(found, key=lambda row: row["name"])


def _vsctl(run: Run, *args: str) -> str:
    command = [*OVS_VSCTL, *args]
    try:
        result = run(command, capture_output=True, text=True, timeout=READ_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise OvsdbError(f"{' '.join(command[:3])} ...: {exc}") from None
    if result.returncode:
        raise OvsdbError(f"ovs-vsctl {' '.join(args[:1])} failed: {' '.join(result.stderr.split())}")
    return result.stdout


def read_interfaces(bridge: str, run: Run = subprocess.run) -> list[dict]:
    """The Interface rows of the ports on `bridge`; raises OvsdbError when OVSDB cannot tell us."""
    ports = _vsctl(run, "list-ports", bridge).split()
    return bridge_interfaces(_vsctl(run, *LIST_INTERFACES), ports)
