"""With the controller dead, the switches still resolve addresses and forward between known VMs:
an address a VM asked for before is answered by its own hypervisor switch, any other by its owner."""

from __future__ import annotations

import signal

from mininet_scenarios.datacenter import Layout
from tests.integration.conftest import start_datacentre
from tests.integration.helpers import switch_flows, wait_until


def test_vms_that_never_talked_resolve_and_ping_with_the_controller_down():
    """A data centre of at most --arp-ahead-max hosts: every hypervisor answers every address."""
    cm, dc = start_datacentre(Layout(spines=2, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2))
    try:
        # Each VM announces itself once (an ARP for an unused address) and nothing else:
        # no VM has talked to another.
        for name in dc.layout.vms:
            dc.host(name).cmd("ping -c1 -W0.3 10.0.255.254")
        assert wait_until(lambda: dc.learned_counts()["hosts"] == dc.built_counts()["hosts"], 10), dc.learned_counts()
        for name in dc.layout.vms:
            dc.host(name).cmd("ip neigh flush all")
        dc.controller_proc.kill(signal.SIGKILL)
        vms = list(dc.layout.vms)
        src, dst = vms[0], vms[-1]
        out = dc.host(src).cmd(f"ping -c3 -i0.2 -W1 {dc.layout.vms[dst][1]}")
        assert " 0% packet loss" in out, out
        neigh = dc.host(src).cmd(f"ip neigh show {dc.layout.vms[dst][1]}")
        assert dc.layout.vms[dst][2] in neigh, f"{src} did not resolve {dst}: {neigh}"
        # The answer came from the hypervisor switch itself, not from a flooded request.
        hypervisor = dc.layout.vms[src][0]
        responder = [f for f in switch_flows(hypervisor) if f"arp_tpa={dc.layout.vms[dst][1]}" in f["line"]]
        assert responder and responder[0]["packets"] >= 1, f"the ARP responder on {hypervisor} did not answer"
    finally:
        cm.__exit__(None, None, None)


def test_above_arp_ahead_max_an_address_asked_before_is_answered_by_the_switch_with_the_controller_down():
    """A data centre above --arp-ahead-max hosts (0 here): a hypervisor answers the addresses its VMs
    asked for; a VM nobody asked for is resolved by its owner, as the request floods to it."""
    cm, dc = start_datacentre(
        Layout(spines=2, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2), controller_args=["--arp-ahead-max", "0"]
    )
    try:
        # Each VM announces itself once (an ARP for an unused address) and nothing else:
        # no VM has talked to another.
        for name in dc.layout.vms:
            dc.host(name).cmd("ping -c1 -W0.3 10.0.255.254")
        assert wait_until(lambda: dc.learned_counts()["hosts"] == dc.built_counts()["hosts"], 10), dc.learned_counts()
        vms = list(dc.layout.vms)
        src, talked, stranger = vms[0], vms[-1], vms[-2]
        hypervisor = dc.layout.vms[src][0]

        def responder(dst: str) -> list[dict]:
            return [f for f in switch_flows(hypervisor) if f"arp_tpa={dc.layout.vms[dst][1]}" in f["line"]]

        assert not responder(talked) and not responder(stranger), "no responder for a peer nobody asked for"
        # src resolves `talked` once: its request floods to the owner, and its switch answers it from then on.
        out = dc.host(src).cmd(f"ping -c1 -W1 {dc.layout.vms[talked][1]}")
        assert " 0% packet loss" in out, out
        assert wait_until(lambda: responder(talked), 5), f"{hypervisor} does not answer for {talked} after it was asked"
        for name in dc.layout.vms:
            dc.host(name).cmd("ip neigh flush all")
        dc.controller_proc.kill(signal.SIGKILL)
        for dst in (talked, stranger):
            out = dc.host(src).cmd(f"ping -c3 -i0.2 -W1 {dc.layout.vms[dst][1]}")
            assert " 0% packet loss" in out, (dst, out)
            neigh = dc.host(src).cmd(f"ip neigh show {dc.layout.vms[dst][1]}")
            assert dc.layout.vms[dst][2] in neigh, f"{src} did not resolve {dst}: {neigh}"
        # The address asked for before was answered by the hypervisor switch itself, not by a flood.
        found = responder(talked)
        assert found and found[0]["packets"] >= 1, f"the ARP responder on {hypervisor} did not answer"
        assert not responder(stranger), "the stranger was resolved by its owner, as the flood reached it"
    finally:
        cm.__exit__(None, None, None)
