"""The scenario's own features on real Mininet: a fabric from a topology file (with cross links)
builds, the --info file lets a script outside run commands inside each VM, a late switch gets its
controller only after its delay, and Mininet runs on one machine take turns."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from mininet_scenarios.datacenter import Layout, MininetLock, running
from mininet_scenarios.harness import REPO, wait_for

LATE = 6.0  # seconds before hv2 gets its controller

# Spines joined by a cross link, leaves joined too: two loops. vm2 is on a /24.
TOPOLOGY = """\
switches:
  - {name: sp1, role: fabric, dpid: 0x101}
  - {name: sp2, role: fabric, dpid: "0x102"}
  - {name: lf1, role: fabric}
  - {name: lf2, role: fabric}
  - {name: hv1, role: hypervisor}
  - {name: hv2, role: hypervisor}
links:
  - [sp1, lf1]
  - [sp2, lf2]
  - [sp1, sp2]
  - {a: lf1, b: lf2}
  - [lf1, hv1]
  - [lf2, hv2]
vms:
  - {name: vm1, hypervisor: hv1, ip: 10.0.0.1, mac: "02:00:00:00:00:01"}
  - {name: vm2, hypervisor: hv2, ip: 10.0.0.2/24, mac: "02:00:00:00:00:02"}
"""


def vsctl(*args: str) -> str:
    return subprocess.run(["ovs-vsctl", "--timeout=5", *args], capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture(scope="module")
def scenario(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scenario")
    (directory / "fabric.yaml").write_text(TOPOLOGY)
    info = directory / "info.json"
    layout = Layout.from_file(directory / "fabric.yaml")
    with running(layout, connect_delays={"hv2": LATE}, info_path=info) as dc:
        yield dc, info
    assert not info.exists(), "the info file goes with the network"


def test_a_late_switch_gets_its_controller_only_after_its_delay(scenario):
    dc, _ = scenario
    target = f"tcp:{dc.openflow}"
    assert time.monotonic() - dc.net_start_at < LATE - 1, "too slow to see the switch before its delay"
    assert vsctl("get-controller", "hv2") == "", "no controller before the delay"
    assert vsctl("get", "Bridge", "hv2", "fail_mode") == "secure"
    flows = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", "dump-flows", "hv2"], capture_output=True, text=True, check=True)
    assert "actions=" not in flows.stdout, "a late switch forwards nothing"
    assert vsctl("get-controller", "hv1") == target, "the others connect at once"

    wait_for(lambda: vsctl("get-controller", "hv2") == target, LATE + 5, what="hv2's controller")
    assert time.monotonic() - dc.net_start_at >= LATE - 0.1
    assert vsctl("get", "Controller", "hv2", "max_backoff") == "1000", "it backs off like the others"


def test_a_switch_disconnects_and_reconnects(scenario):
    dc, _ = scenario
    dc.disconnect_switch("hv1")
    assert vsctl("get-controller", "hv1") == ""
    dc.connect_switch("hv1")
    assert vsctl("get-controller", "hv1") == f"tcp:{dc.openflow}"


def test_the_info_file_describes_the_network_and_its_pids_enter_the_vms(scenario):
    dc, path = scenario
    info = json.loads(path.read_text())
    assert info["rest_url"] == dc.rest_url and info["openflow"] == dc.openflow
    assert os.path.exists(info["admin_token_file"])
    assert info["links"] == [["sp1", "lf1"], ["sp2", "lf2"], ["sp1", "sp2"], ["lf1", "lf2"], ["lf1", "hv1"], ["lf2", "hv2"]]
    switches = {s["name"]: s for s in info["switches"]}
    assert switches["sp2"] == {"name": "sp2", "dpid": "0000000000000102", "role": "fabric"}
    assert switches["hv1"]["role"] == "hypervisor"
    for name, dpid in (("sp1", 0x101), ("lf1", dc.layout.switches["lf1"])):
        assert vsctl("get", "Bridge", name, "other_config:datapath-id") == f'"{dpid:016x}"'

    cidrs = {"vm1": "10.0.0.1/16", "vm2": "10.0.0.2/24"}
    for vm in info["vms"]:
        assert vm["hypervisor"] == {"vm1": "hv1", "vm2": "hv2"}[vm["name"]]
        for enter in (["mnexec", "-a", str(vm["pid"])], ["nsenter", "-t", str(vm["pid"]), "-n"]):
            out = subprocess.run([*enter, "ip", "-4", "-o", "addr", "show", "dev", vm["intf"]], capture_output=True, text=True)
            assert f"inet {cidrs[vm['name']]} " in out.stdout, (enter, out)
        link = subprocess.run(["mnexec", "-a", str(vm["pid"]), "ip", "-o", "link", "show", "dev", vm["intf"]],
                              capture_output=True, text=True)  # fmt: skip
        assert f"link/ether {vm['mac']} " in link.stdout, link


def test_switch_ports_keep_ipv6_like_stock_mininet(scenario):
    dc, _ = scenario
    ports = [intf.name for intf in dc.net.get("lf1").intfList() if intf.name != "lo"]
    assert ports
    for port in ports:
        assert open(f"/proc/sys/net/ipv6/conf/{port}/disable_ipv6").read().strip() == "0", port


# -- one Mininet run at a time ------------------------------------------------------------------
ACQUIRE = (
    "import sys; from mininet_scenarios.datacenter import MininetLock; MininetLock(sys.argv[1]).acquire(); print('acquired')"
)


def acquire_elsewhere(path: str, *wrapper: str, **kwargs):
    """Another process that takes the lock at path, prints 'acquired' and exits."""
    return subprocess.Popen([*wrapper, sys.executable, "-c", ACQUIRE, path], cwd=REPO, text=True, **kwargs)


def test_a_second_run_waits_for_the_lock_and_says_so(tmp_path):
    path = str(tmp_path / "mininet.lock")
    lock = MininetLock(path)
    lock.acquire()
    try:
        with pytest.raises(RuntimeError, match="already runs a Mininet network"):
            MininetLock(path).acquire()  # would wait for itself forever
        other = acquire_elsewhere(path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            with pytest.raises(subprocess.TimeoutExpired):
                other.wait(1.5)
        finally:
            lock.release()
        out, err = other.communicate(timeout=10)
    finally:
        lock.release()
    assert out == "acquired\n"
    assert err == f"waiting for the Mininet run of process {os.getpid()} to finish ({path} is locked)\n"


def test_a_run_under_flock_of_the_same_lock_goes_ahead(tmp_path):
    """`flock LOCK python -m mininet_scenarios.datacenter ...` holds the lock for the run it wraps."""
    path = str(tmp_path / "mininet.lock")
    under_flock = acquire_elsewhere(path, "flock", path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = under_flock.communicate(timeout=20)
    assert (under_flock.returncode, out, err) == (0, "acquired\n", "")
