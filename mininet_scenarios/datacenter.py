"""A leaf-spine data centre in Mininet: OVS userspace bridges in secure fail mode, driven by Goldilocks.

    python -m mininet_scenarios.datacenter --spines 2 --leaves 2 --hypervisors-per-leaf 2 --vms-per-hypervisor 2 --check
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from mininet_scenarios.harness import ControllerProcess, rest_get, wait_for

# Mininet is imported lazily so that `--help` works without it.

SPINE_BASE, LEAF_BASE, HV_BASE = 0x100, 0x200, 0x300


@dataclass
class Layout:
    """What we build: names, dpids, links and VM addresses."""

    spines: int = 2
    leaves: int = 2
    hypervisors_per_leaf: int = 2
    vms_per_hypervisor: int = 2
    switches: dict[str, int] = field(default_factory=dict)  # name -> dpid
    roles: dict[str, str] = field(default_factory=dict)  # name -> hypervisor | fabric
    switch_links: list[tuple[str, str]] = field(default_factory=list)
    vms: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (hypervisor, ip, mac)

    def __post_init__(self) -> None:
        for s in range(1, self.spines + 1):
            self._switch(f"sp{s}", SPINE_BASE + s, "fabric")
        vm = 0
        for leaf in range(1, self.leaves + 1):
            leaf_name = f"lf{leaf}"
            self._switch(leaf_name, LEAF_BASE + leaf, "fabric")
            for s in range(1, self.spines + 1):
                self.switch_links.append((f"sp{s}", leaf_name))
            for h in range(1, self.hypervisors_per_leaf + 1):
                index = (leaf - 1) * self.hypervisors_per_leaf + h
                hv = f"hv{index}"
                self._switch(hv, HV_BASE + index, "hypervisor")
                self.switch_links.append((leaf_name, hv))
                for _ in range(self.vms_per_hypervisor):
                    vm += 1
                    self.vms[f"vm{vm}"] = (hv, f"10.0.{vm // 256}.{vm % 256}", f"02:00:00:00:{vm // 256:02x}:{vm % 256:02x}")

    def _switch(self, name: str, dpid: int, role: str) -> None:
        self.switches[name] = dpid
        self.roles[name] = role


class DataCentre:
    """The running Mininet network plus the controller that drives it."""

    def __init__(
        self,
        layout: Layout,
        controller: str | None = None,
        rest_url: str | None = None,
        declare_roles: bool = False,
        role_overrides: dict[str, str] | None = None,
        fail_mode: str = "secure",
        with_controller: bool = True,
    ):
        """fail_mode="standalone" with with_controller=False builds plain OVS NORMAL learning
        bridges (loop-free layouts only: there is no STP), the baseline for benchmarks."""
        self.layout = layout
        self.controller_proc: ControllerProcess | None = None
        self.external = controller
        self.rest_url = rest_url
        self.fail_mode = fail_mode
        self.with_controller = with_controller
        # Roles written into each bridge's dp-desc before it first connects.
        self.dp_desc_roles = dict(layout.roles) if declare_roles else {}
        self.dp_desc_roles.update(role_overrides or {})
        self.net = None
        self.net_start_at: float | None = None  # time.monotonic() just before net.start()

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> DataCentre:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController

        setLogLevel("warning")
        if not self.with_controller:
            of_host, of_port = None, None
        elif self.external:
            host, _, port = self.external.rpartition(":")
            of_host, of_port = host or "127.0.0.1", int(port)
            self.rest_url = self.rest_url or f"http://{of_host}:8080"
        else:
            self.controller_proc = ControllerProcess().start()
            of_host, of_port = "127.0.0.1", self.controller_proc.of_port
            self.rest_url = self.controller_proc.rest_url
        roles = self.dp_desc_roles

        class QuietRemoteController(RemoteController):
            """Mininet probes a remote controller with telnet and decodes the reply as UTF-8; an
            OpenFlow hello whose random xid is not valid UTF-8 then crashes the start. We have
            already waited for the controller's REST API, so skip the probe."""

            def checkListening(self) -> None:
                return None

        class DataCentreSwitch(OVSSwitch):
            """A userspace bridge whose dp-desc declares its role when the scenario asks for it."""

            def bridgeOpts(self) -> str:
                opts = super().bridgeOpts()
                if self.name in roles:
                    opts = opts.replace(f"other-config:dp-desc={self.name}", f"other-config:dp-desc=role={roles[self.name]}")
                return opts

        switch_cls = partial(DataCentreSwitch, datapath="user", failMode=self.fail_mode, protocols="OpenFlow13", reconnectms=1000)
        net = Mininet(switch=switch_cls, controller=None, build=False, autoSetMacs=False, waitConnected=False)
        self.net = net
        if of_port is not None:
            net.addController("c0", controller=QuietRemoteController, ip=of_host, port=of_port)
        for name, dpid in self.layout.switches.items():
            net.addSwitch(name, dpid=f"{dpid:016x}")
        for a, b in self.layout.switch_links:
            net.addLink(a, b)
        for name, (hv, ip, mac) in self.layout.vms.items():
            net.addHost(name, ip=f"{ip}/16", mac=mac)
            net.addLink(name, hv)
        net.build()
        # Switch ports live in the root namespace, where the kernel would send IPv6 router
        # solicitations out of them; a real bridge port emits nothing of its own.
        for switch in net.switches:
            for intf in switch.intfList():
                if intf.name != "lo":
                    subprocess.run(["sysctl", "-qw", f"net.ipv6.conf.{intf.name}.disable_ipv6=1"], check=False)
        self.net_start_at = time.monotonic()
        net.start()
        for host in net.hosts:
            for intf in host.intfList():
                host.cmd(f"ethtool -K {intf.name} tx off")
        return self

    def stop(self) -> None:
        try:
            if self.net is not None:
                self._kill_host_processes()
                self.net.stop()
                self.net = None
        finally:
            if self.controller_proc is not None:
                self.controller_proc.stop()
                self.controller_proc = None

    def _kill_host_processes(self) -> None:
        """Kill whatever still runs in the VMs' namespaces (listeners, iperf3 servers, pings
        started with popen): Mininet's stop kills only each host's shell, and the rest would
        outlive the run."""
        namespaces = {}
        for host in self.net.hosts:
            try:
                namespaces[os.readlink(f"/proc/{host.pid}/ns/net")] = host.pid
            except OSError:
                continue
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                namespace = os.readlink(f"/proc/{entry}/ns/net")
            except OSError:
                continue
            if namespace in namespaces and int(entry) != namespaces[namespace]:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass

    # -- what the controller learned ----------------------------------------------------
    def topology(self) -> dict:
        return rest_get(self.rest_url, "/v1/topology")

    def learned_counts(self) -> dict[str, int]:
        topo = self.topology()
        return {
            "switches": sum(1 for s in topo["switches"] if s["connected"]),
            "links": len(topo["links"]),
            "hosts": len(topo["hosts"]),
        }

    def built_counts(self) -> dict[str, int]:
        return {"switches": len(self.layout.switches), "links": len(self.layout.switch_links), "hosts": len(self.layout.vms)}

    def wait_for_fabric(self, timeout: float = 60.0) -> float:
        """Wait until every switch is connected, every inter-switch link known and every other port
        confirmed as an edge port; return seconds."""
        started = time.monotonic()
        built = self.built_counts()

        def ready():
            topo = self.topology()
            pending = [p for s in topo["switches"] for p in s["ports"] if p["kind"] == "pending" and p["up"]]
            connected = sum(1 for s in topo["switches"] if s["connected"])
            return connected == built["switches"] and len(topo["links"]) == built["links"] and not pending

        wait_for(ready, timeout, what="the controller to learn every switch and link")
        return time.monotonic() - started

    # -- traffic ---------------------------------------------------------------------
    def host(self, name: str):
        return self.net.get(name)

    def ping_pair(self, src: str, dst: str, count: int = 1, timeout: float = 1.0) -> bool:
        out = self.host(src).cmd(f"ping -c{count} -W{timeout} {self.layout.vms[dst][1]}")
        return f"{count} received" in out or bool(re.search(rf"{count} packets transmitted, {count} received", out))

    def pingall(self, timeout: float = 1.0) -> float:
        """Ping every ordered pair once; return the loss in percent."""
        names = list(self.layout.vms)
        sent = lost = 0
        for src in names:
            for dst in names:
                if src == dst:
                    continue
                sent += 1
                lost += 0 if self.ping_pair(src, dst, 1, timeout) else 1
        return 100.0 * lost / sent if sent else 0.0

    def iperf3(self, client: str, server: str, seconds: float = 3.0) -> float:
        """TCP throughput from client to server VM in Mbit/s (0.0 when it fails)."""
        srv = self.host(server)
        proc = srv.popen(["iperf3", "-s", "-1", "-B", self.layout.vms[server][1]])
        try:
            time.sleep(0.5)
            out = self.host(client).cmd(f"iperf3 -c {self.layout.vms[server][1]} -t {seconds} -J")
            try:
                report = json.loads(out[out.index("{") :])
                return report["end"]["sum_received"]["bits_per_second"] / 1e6
            except (ValueError, KeyError):
                return 0.0
        finally:
            proc.kill()
            proc.wait()


@contextmanager
def running(layout: Layout, **kwargs) -> Iterator[DataCentre]:
    """A data centre that is always torn down, whatever happens inside."""
    dc = DataCentre(layout, **kwargs)
    try:
        yield dc.start()
    finally:
        dc.stop()


def check(dc: DataCentre) -> dict:
    """Learn the fabric, pingall, iperf3 across leaves; a JSON-able summary with ok true/false."""
    summary: dict = {"built": dc.built_counts()}
    try:
        summary["fabric_learned_seconds"] = round(dc.wait_for_fabric(), 3)
    except TimeoutError as exc:
        summary["error"] = str(exc)
    summary["ping_loss_percent"] = dc.pingall()
    summary["learned"] = dc.learned_counts()
    vms = list(dc.layout.vms)
    a, b = vms[0], vms[-1]
    summary["iperf3"] = {"client": a, "server": b, "mbps": round(dc.iperf3(a, b), 1)}
    topo = dc.topology()
    summary["roles"] = {
        "hypervisor": sum(1 for s in topo["switches"] if s["role"] == "hypervisor"),
        "fabric": sum(1 for s in topo["switches"] if s["role"] == "fabric"),
    }
    expected_hv = sum(1 for r in dc.layout.roles.values() if r == "hypervisor")
    summary["ok"] = (
        "error" not in summary
        and summary["learned"] == summary["built"]
        and summary["ping_loss_percent"] == 0.0
        and summary["iperf3"]["mbps"] > 0
        and summary["roles"]["hypervisor"] == expected_hv
    )
    return summary


def human_summary(summary: dict) -> str:
    built, learned = summary["built"], summary.get("learned", {})
    lines = [
        "Goldilocks data-centre check",
        f"  switches learned: {learned.get('switches')}/{built['switches']}   links: {learned.get('links')}/{built['links']}"
        f"   hosts: {learned.get('hosts')}/{built['hosts']}",
        f"  roles: {summary.get('roles')}",
        f"  fabric learned in {summary.get('fabric_learned_seconds')} s",
        f"  pingall loss: {summary.get('ping_loss_percent')} %",
        f"  iperf3 {summary['iperf3']['client']} -> {summary['iperf3']['server']}: {summary['iperf3']['mbps']} Mbit/s",
        f"  result: {'OK' if summary['ok'] else 'FAILED'}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mininet_scenarios.datacenter", description=__doc__.splitlines()[0])
    parser.add_argument("--spines", type=int, default=2)
    parser.add_argument("--leaves", type=int, default=2)
    parser.add_argument("--hypervisors-per-leaf", type=int, default=2)
    parser.add_argument("--vms-per-hypervisor", type=int, default=2)
    parser.add_argument("--controller", metavar="HOST:PORT", help="use a running controller (default: start our own)")
    parser.add_argument("--rest", metavar="URL", help="REST URL of that controller (default http://HOST:8080)")
    parser.add_argument("--declare-roles", action="store_true", help="set dp-desc role=... on every bridge")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cli", action="store_true", help="open the Mininet CLI")
    mode.add_argument("--check", action="store_true", help="verify learning, pingall and iperf3; print JSON")
    args = parser.parse_args(argv)
    for name in ("spines", "leaves", "hypervisors_per_leaf", "vms_per_hypervisor"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.controller and ":" not in args.controller:
        parser.error("--controller must be HOST:PORT")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = Layout(args.spines, args.leaves, args.hypervisors_per_leaf, args.vms_per_hypervisor)
    with running(layout, controller=args.controller, rest_url=args.rest, declare_roles=args.declare_roles) as dc:
        if args.cli:
            from mininet.cli import CLI

            CLI(dc.net)
            return 0
        summary = check(dc)
        print(json.dumps(summary, indent=1))
        print(human_summary(summary), file=sys.stderr)
        return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
