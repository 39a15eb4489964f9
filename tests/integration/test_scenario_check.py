"""The scenario's --check as a user runs it, in a process of its own.

In a module of its own, so that no module-scoped data centre of this test process holds the
machine-wide Mininet lock that the --check process must take."""

from __future__ import annotations

import json
import subprocess
import sys

from mininet_scenarios.harness import REPO


def test_the_check_passes_on_a_fabric_whose_vms_share_one_hypervisor(tmp_path):
    """A user's fabric with a single hypervisor: nothing crosses the fabric, so the encryption part of
    --check has nothing to prove and says so; the rest of the check still runs and passes."""
    fabric = tmp_path / "one.yaml"
    fabric.write_text(
        "switches: [{name: lf1, role: fabric}, {name: hv1, role: hypervisor}]\n"
        "links: [[lf1, hv1]]\n"
        "vms:\n"
        '  - {name: vm1, hypervisor: hv1, ip: 10.0.0.1, mac: "02:00:00:00:00:01"}\n'
        '  - {name: vm2, hypervisor: hv1, ip: 10.0.0.2, mac: "02:00:00:00:00:02"}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mininet_scenarios.datacenter", "--topology", str(fabric), "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-1500:]
    summary = json.loads(result.stdout)
    assert summary["ok"] and summary["encryption"]["ok"] and "one hypervisor" in summary["encryption"]["note"]
    assert summary["learned"] == summary["built"] == {"switches": 2, "links": 1, "hosts": 3}


def test_the_check_proves_encryption_on_hypervisors_cabled_to_each_other(tmp_path):
    """A user's fabric where hypervisors are cabled to each other (a ring beside one fabric switch), one
    connecting late: the encrypted and the plain flow cross hypervisor-to-hypervisor cables that no
    fabric switch sees, and the capture must watch those too, or it proves nothing."""
    fabric = tmp_path / "ring.yaml"
    fabric.write_text(
        "switches: [{name: core, role: fabric}, {name: hva, role: hypervisor}, {name: hvb, role: hypervisor},\n"
        "           {name: hvc, role: hypervisor}]\n"
        "links: [[core, hva], [hva, hvb], [hvb, hvc], [hvc, hva]]\n"
        "vms:\n"
        '  - {name: web, hypervisor: hva, ip: 10.0.0.1, mac: "02:00:00:00:00:01"}\n'
        '  - {name: db, hypervisor: hvc, ip: 10.0.0.2, mac: "02:00:00:00:00:02"}\n'
        '  - {name: cache, hypervisor: hvb, ip: 10.0.0.3, mac: "02:00:00:00:00:03"}\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "mininet_scenarios.datacenter", "--topology", str(fabric), "--connect-late", "hvb=3", "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-1500:]
    summary = json.loads(result.stdout)
    assert summary["encryption"]["verdict"] == "encrypted", summary["encryption"]
    assert summary["encryption"]["plain_marker_seen_on"] and summary["encryption"]["wireguard_datagrams"] > 0
