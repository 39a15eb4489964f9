"""The audit, on real Open vSwitch: a flow removed from a switch behind the controller's back (an
operator's ovs-ofctl, a switch that lost part of its table) is put back at the switch's next audit,
and traffic through it works again. Audits are spread over ticks by a budget of entries
(controller/app.py, AUDIT_ENTRIES_PER_TICK); each switch is still read once per audit interval."""

from __future__ import annotations

import re
import subprocess

from mininet_scenarios.datacenter import Layout, running
from tests.integration.helpers import wait_until

EGRESS = 4


def cookies(bridge: str, table: int) -> set[int]:
    out = subprocess.run(
        ["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", bridge, f"table={table}"],
        check=True, capture_output=True, text=True, timeout=10,
    ).stdout  # fmt: skip
    return {int(m, 16) for m in re.findall(r"cookie=(0x[0-9a-f]+)", out)}


def test_a_flow_removed_behind_the_controllers_back_is_put_back_by_the_audit(monkeypatch):
    monkeypatch.setenv("GOLDILOCKS_AUDIT_INTERVAL", "2")
    layout = Layout(spines=1, leaves=1, hypervisors_per_leaf=2, vms_per_hypervisor=2)
    with running(layout) as dc:
        dc.wait_for_fabric(timeout=60)
        assert dc.pingall() == 0.0
        ours = {c for c in cookies("hv1", EGRESS) if c >> 56 == 0x6C}
        assert ours, "hv1 delivers to its VMs through our egress entries"
        subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "del-flows", "hv1", f"table={EGRESS}"], check=True, timeout=10)
        assert not cookies("hv1", EGRESS) & ours, "removed behind the controller's back"
        assert wait_until(lambda: ours <= cookies("hv1", EGRESS), 15), "the audit did not put them back"
        assert dc.pingall() == 0.0
