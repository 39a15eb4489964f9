"""The hypervisor as an inventory source on real Open vSwitch: external_ids set on a VM's port make
it a VM with labels, policy applies to it, and taking them away (or the port) removes it.

One hypervisor with two VMs: vm1 is described only by OVSDB (as web1), vm2 through the API."""

from __future__ import annotations

import subprocess

import pytest

from mininet_scenarios.datacenter import Layout
from tests.integration.conftest import start_datacentre
from tests.integration.helpers import wait_until

PUBLISH_WITHIN = 8.0  # the controller reads OVSDB every 5 s, and at once on port add/delete


@pytest.fixture(scope="module")
def dc():
    cm, dc = start_datacentre(Layout(spines=1, leaves=1, hypervisors_per_leaf=1, vms_per_hypervisor=2))
    try:
        _, ip, mac = dc.layout.vms["vm2"]
        dc.controller_proc.api("PUT", "/v1/vms/vm2", {"macs": [mac], "ips": [ip], "labels": {"tier": "db"}}, expect=201)
        yield dc
    finally:
        cm.__exit__(None, None, None)


def switch_port(dc, vm: str) -> str:
    """The hypervisor-side interface of a VM's link (hv1-eth2 for vm1)."""
    host = dc.host(vm)
    link = host.intf().link
    return (link.intf2 if link.intf1.node is host else link.intf1).name


def vsctl(*args: str) -> None:
    subprocess.run(["ovs-vsctl", "--timeout=5", *args], check=True, capture_output=True)


def publish(dc, vm: str, name: str, labels: str) -> str:
    port = switch_port(dc, vm)
    _, _, mac = dc.layout.vms[vm]
    vsctl(
        "set", "Interface", port,
        f"external_ids:vm-id={name}", f"external_ids:attached-mac={mac}", f"external_ids:goldilocks-labels={labels}",
    )  # fmt: skip
    return port


def vm_status(dc, name: str) -> tuple[int, dict]:
    from mininet_scenarios.harness import api_call

    return api_call(dc.rest_url, "GET", f"/v1/vms/{name}", token=dc.controller_proc.admin_token)


def pings(dc, src: str, dst: str, count: int = 2) -> bool:
    out = dc.host(src).cmd(f"ping -c{count} -i0.2 -W1 {dc.layout.vms[dst][1]}")
    return f" {count} received" in out


def test_external_ids_make_a_vm_that_policy_applies_to_and_removing_them_removes_it(dc):
    assert switch_port(dc, "vm1") == "hv1-eth2"
    assert pings(dc, "vm1", "vm2"), "vm1 is unmanaged so far, and the default is allow"
    _, _, mac = dc.layout.vms["vm1"]
    port = publish(dc, "vm1", "web1", "tier=web")

    def published():
        status, doc = vm_status(dc, "web1")
        return status == 200 and doc

    vm = wait_until(published, PUBLISH_WITHIN, interval=0.2)
    assert vm, "GET /v1/vms/web1 never showed the VM the hypervisor published"
    assert (vm["macs"], vm["labels"], vm["source"]) == ([mac], {"tier": "web"}, "ovsdb")
    assert any(
        e["actor"] == "ovsdb" and e["action"] == "vm.create" for e in dc.controller_proc.api("GET", "/v1/audit")["entries"]
    )

    ctl = dc.controller_proc
    ctl.api("POST", "/v1/policies", {"name": "no-web-to-db", "src": "tier=web", "dst": "tier=db", "action": "deny"}, expect=201)
    assert wait_until(lambda: not pings(dc, "vm1", "vm2", 1), 3), "tier=web (from OVSDB) -> tier=db must be denied"

    vsctl("remove", "Interface", port, "external_ids", "vm-id", "attached-mac", "goldilocks-labels")
    assert wait_until(lambda: vm_status(dc, "web1")[0] == 404, PUBLISH_WITHIN, interval=0.2), "web1 outlived its external_ids"
    assert wait_until(lambda: pings(dc, "vm1", "vm2", 1), 3), "vm1 is unmanaged again: the tier=web rule no longer selects it"
    ctl.api("DELETE", "/v1/policies/no-web-to-db", expect=204)


def test_a_vm_whose_port_is_deleted_is_removed_at_once(dc):
    port = publish(dc, "vm1", "web1", "tier=web")
    assert wait_until(lambda: vm_status(dc, "web1")[0] == 200, PUBLISH_WITHIN, interval=0.2)
    vsctl("del-port", "hv1", port)  # the port-delete event triggers a read: no wait for the 5 s period
    assert wait_until(lambda: vm_status(dc, "web1")[0] == 404, 3, interval=0.1), "the port is gone but web1 is not"
