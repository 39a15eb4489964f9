"""A switch that refuses flow-mods, on real Open vSwitch: the controller matches each OpenFlow error to
the entry it refers to (by xid), does not believe it installed, reports it (REST, metrics, log) and
retries it with backoff until the switch takes it.

The refusal is a full table: hv1's forward table is limited (Open vSwitch `Flow_Table` flow_limit,
overflow_policy refuse) while hv1 has no controller, so when it reconnects and the controller
reinstalls its table, the entries over the limit are refused with OFPFMFC_TABLE_FULL."""

from __future__ import annotations

import subprocess
import time

from mininet_scenarios.datacenter import Layout, running
from mininet_scenarios.harness import rest_call, rest_get
from tests.integration.helpers import wait_until

FORWARD_TABLE = 3
LIMIT = 6
TABLE_FULL = "OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL"


def vsctl(*args: str) -> None:
    subprocess.run(["ovs-vsctl", *args], check=True, capture_output=True, text=True, timeout=10)


def switch_flows(dc, name: str) -> dict:
    return rest_call(dc.rest_url, "GET", f"/v1/switches/{dc.layout.switches[name]:016x}/flows", expect=200)


def metric(dc, name: str) -> float:
    text = rest_get(dc.rest_url, "/metrics")
    line = next(line for line in text.splitlines() if line.startswith(name + " "))
    return float(line.split()[1])


def test_entries_a_full_table_refuses_are_reported_and_retried_until_they_go_in():
    layout = Layout(spines=1, leaves=1, hypervisors_per_leaf=2, vms_per_hypervisor=2)
    with running(layout) as dc:
        dc.wait_for_fabric(timeout=60)
        assert dc.pingall() == 0.0
        dc.disconnect_switch("hv1")  # Open vSwitch flushes hv1's flows
        try:
            vsctl("--", "--id=@ft", "create", "Flow_Table", f"flow_limit={LIMIT}", "overflow_policy=refuse",
                  "--", "set", "Bridge", "hv1", f"flow_tables:{FORWARD_TABLE}=@ft")  # fmt: skip
            dc.connect_switch("hv1")
            assert wait_until(lambda: switch_flows(dc, "hv1")["refused"], 20), "no refusal reported"
            refused = switch_flows(dc, "hv1")["refused"]
            assert {r["error"] for r in refused} == {TABLE_FULL}, refused
            assert {r["table"] for r in refused} == {FORWARD_TABLE}
            desired = sum(1 for f in switch_flows(dc, "hv1")["flows"] if f["table"] == FORWARD_TABLE)
            assert len(refused) == desired - LIMIT, (len(refused), desired)
            topo = rest_call(dc.rest_url, "GET", "/v1/topology", expect=200)
            hv1 = next(s for s in topo["switches"] if s["name"] == "hv1")
            assert hv1["refused_flows"] == len(refused)
            assert metric(dc, "goldilocks_flows_refused") == len(refused)
            assert metric(dc, "goldilocks_flow_mods_refused_total") >= len(refused)
            # Retried with backoff, not resent at every tick.
            attempts = {r["cookie"]: r["attempts"] for r in refused}
            time.sleep(2.5)
            later = {r["cookie"]: r["attempts"] for r in switch_flows(dc, "hv1")["refused"]}
            assert later.keys() == attempts.keys() and all(later[c] - attempts[c] <= 2 for c in later), (attempts, later)
        finally:
            vsctl("clear", "Bridge", "hv1", "flow_tables")
        # Room again: the next retry puts them in, and the fabric works.
        assert wait_until(lambda: not switch_flows(dc, "hv1")["refused"], 40), "the refused entries never went in"
        assert metric(dc, "goldilocks_flows_refused") == 0
        assert dc.pingall() == 0.0
        log = open(dc.controller_proc.log_path, errors="replace").read()
        assert "refused an entry (OFPET_FLOW_MOD_FAILED/OFPFMFC_TABLE_FULL" in log
        assert "took the entry it refused before" in log
