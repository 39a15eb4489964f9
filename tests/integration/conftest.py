"""Integration fixtures: the real controller process, real Open vSwitch and real Mininet.

Nothing here skips: a machine without OVS, Mininet or root fails loudly, because a test
suite that passes by not running proves nothing."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from mininet_scenarios.datacenter import Layout, running


def require_environment() -> None:
    problems = []
    if os.geteuid() != 0:
        problems.append("integration tests need root (Mininet creates namespaces and veths)")
    for tool in ("ovs-vsctl", "ovs-ofctl", "mnexec", "iperf3", "ethtool", "ping", "wireguard-go", "wg", "tcpdump", "nsenter"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} is not installed (run `make install`)")
    if shutil.which("ovs-vsctl") and subprocess.run(["ovs-vsctl", "--timeout=5", "show"], capture_output=True).returncode:
        problems.append("Open vSwitch is not running (run `make install`, which starts it)")
    if problems:
        pytest.fail("; ".join(problems), pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def environment() -> None:
    require_environment()


def start_datacentre(layout: Layout, **kwargs):
    """A running data centre whose fabric the controller has fully learned (kwargs: DataCentre's)."""
    cm = running(layout, **kwargs)
    dc = cm.__enter__()
    try:
        dc.wait_for_fabric(timeout=60)
    except BaseException:
        cm.__exit__(None, None, None)
        raise
    return cm, dc


@pytest.fixture(scope="module")
def looped_dc():
    """Two spines, two leaves, two hypervisors per leaf, two VMs each: a fabric with loops."""
    cm, dc = start_datacentre(Layout(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=2))
    try:
        yield dc
    finally:
        cm.__exit__(None, None, None)
