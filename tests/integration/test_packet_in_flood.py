"""A VM flooding frames with made-up source MACs cannot flood the controller or break others."""

from __future__ import annotations

import sys
import time

from mininet_scenarios.datacenter import Layout
from mininet_scenarios.harness import rest_get
from tests import prometheus_text
from tests.integration.conftest import start_datacentre
from tests.integration.helpers import wait_until

FRAMES = 20_000
SECONDS = 3.0


def _packet_ins(dc) -> float:
    return prometheus_text.total(rest_get(dc.rest_url, "/metrics"), "goldilocks_packet_ins_total")  # over the switches


def test_a_flooding_vm_is_rate_limited_on_the_switch_and_others_keep_working():
    cm, dc = start_datacentre(Layout(spines=1, leaves=1, hypervisors_per_leaf=2, vms_per_hypervisor=2))
    try:
        for name in dc.layout.vms:
            dc.host(name).cmd("ping -c1 -W0.3 10.0.255.254")
        assert wait_until(lambda: dc.learned_counts()["hosts"] == dc.built_counts()["hosts"], 10)
        before = _packet_ins(dc)
        started = time.monotonic()
        flooder = dc.host("vm1")
        flood = flooder.popen(
            [sys.executable, "-m", "mininet_scenarios.frame_flood", flooder.defaultIntf().name, str(FRAMES), str(SECONDS)]
        )
        # Meanwhile a VM on the flooder's own hypervisor and two others keep talking.
        same_hv = dc.host("vm2").cmd(f"ping -c 30 -i 0.1 -W1 {dc.layout.vms['vm4'][1]}")
        other = dc.host("vm3").cmd(f"ping -c 10 -i 0.1 -W1 {dc.layout.vms['vm4'][1]}")
        out, _ = flood.communicate(timeout=30)
        elapsed = time.monotonic() - started
        sent = int(out.decode().strip().splitlines()[-1])
        after = _packet_ins(dc)
        print(f"flood: {sent} frames sent, {after - before:.0f} packet-ins")
        assert sent > 3_000, f"the flood only sent {sent} frames; the test proves nothing"
        assert " 0% packet loss" in same_hv, same_hv
        assert " 0% packet loss" in other, other
        # The switch meters punts at 500 per second with a burst of 250; LLDP has its own meter.
        allowed = 500 * elapsed + 250 + 50
        assert after - before < allowed, f"{after - before:.0f} packet-ins for {sent} frames in {elapsed:.1f} s"
        topo = dc.topology()
        on_port = [h for h in topo["hosts"] if h["dpid"] == f"{dc.layout.switches['hv1']:016x}"]
        # At most 64 on the flooder's port, plus its neighbour VM and the hypervisor's tunnel endpoint.
        assert len(on_port) <= 64 + 2, f"{len(on_port)} hosts learned on the flooder's hypervisor"
        assert dc.learned_counts()["switches"] == len(dc.layout.switches)
    finally:
        cm.__exit__(None, None, None)
