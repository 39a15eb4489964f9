"""The faucet.yaml the bench generates: Faucet's own checker accepts it, and it describes the network Mininet builds."""

import subprocess
from pathlib import Path

import pytest
import yaml

from mininet_scenarios.datacenter import Layout
from mininet_scenarios.faucet_config import VLAN_NAME, dump, for_layout, for_switches, layout_ports

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / ".venv-faucet" / "bin" / "check_faucet_config"
LOOP_FREE, LOOPED = Layout(1, 3, 2, 2), Layout(2, 3, 2, 2)


def check(document: dict, tmp_path: Path) -> subprocess.CompletedProcess:
    """Faucet's own `check_faucet_config` on the document (from .venv-faucet: `make install` puts it there)."""
    assert CHECKER.exists(), f"{CHECKER} is missing: make install puts Faucet in .venv-faucet"
    path = tmp_path / "faucet.yaml"
    path.write_text(dump(document))
    return subprocess.run([str(CHECKER), str(path)], capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(
    ("layout", "stacked"),
    [(LOOP_FREE, False), (LOOPED, True), (Layout(2, 2, 1, 3), True)],
    ids=["loop-free flat", "looped stacked", "two spines, three VMs per hypervisor"],
)
def test_faucet_accepts_the_generated_configuration(layout, stacked, tmp_path):
    result = check(for_layout(layout, stacked), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_faucet_accepts_the_emulated_switches_configuration(tmp_path):
    switches = {f"em{k}": (0xE000 + k, list(range(1, 65))) for k in range(1, 9)}
    result = check(for_switches(switches, max_hosts=4096), tmp_path)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]


def test_faucet_refuses_a_stack_port_that_names_a_missing_switch(tmp_path):
    """The checker is a real judge: a stack link to a switch that does not exist fails it."""
    document = for_layout(LOOPED, stacked=True)
    document["dps"]["lf1"]["interfaces"][1]["stack"]["dp"] = "nowhere"
    assert check(document, tmp_path).returncode != 0


def test_ports_are_numbered_as_mininet_cables_them():
    """Inter-switch links first, in the layout's order, then each VM on its hypervisor."""
    ports = layout_ports(LOOPED)
    assert ports["sp2"] == {1: "lf1", 2: "lf2", 3: "lf3"}
    assert ports["lf2"] == {1: "sp1", 2: "sp2", 3: "hv3", 4: "hv4"}
    assert ports["hv3"] == {1: "lf2", 2: "vm5", 3: "vm6"}


def test_every_cable_is_a_stack_link_both_ways_and_every_vm_port_is_in_the_vlan():
    document = yaml.safe_load(dump(for_layout(LOOPED, stacked=True)))
    dps = document["dps"]
    cables = vms = 0
    for name, dp in dps.items():
        assert dp["dp_id"] == LOOPED.switches[name]
        for port, interface in dp["interfaces"].items():
            if "stack" in interface:
                peer = interface["stack"]
                assert dps[peer["dp"]]["interfaces"][peer["port"]]["stack"] == {"dp": name, "port": port}
                cables += 1
            else:
                assert interface["native_vlan"] == VLAN_NAME
                vms += 1
    assert cables == 2 * len(LOOPED.switch_links)
    assert vms == len(LOOPED.vms)
    assert [dp.get("stack") for dp in dps.values() if "stack" in dp] == [{"priority": 1}, {"priority": 2}]


def test_the_flat_configuration_has_no_stack():
    document = for_layout(LOOP_FREE)
    assert all("stack" not in dp for dp in document["dps"].values())
    assert all(i["native_vlan"] == VLAN_NAME for dp in document["dps"].values() for i in dp["interfaces"].values())
