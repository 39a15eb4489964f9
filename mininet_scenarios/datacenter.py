"""A data centre in Mininet: OVS userspace bridges in secure fail mode, driven by Goldilocks.

    python -m mininet_scenarios.datacenter --spines 2 --leaves 2 --hypervisors-per-leaf 2 --vms-per-hypervisor 2 --check
    python -m mininet_scenarios.datacenter --topology fabric.yaml --info /tmp/dc.json --cli

The fabric is a leaf-spine built from the four size flags, or, with `--topology FILE`, any fabric
described in a JSON or YAML file (YAML when the name ends .yaml or .yml):

    switches:                                     # name and role (fabric | hypervisor) required
      - {name: sp1, role: fabric, dpid: 0x101}    # dpid optional: int, "0x101" or "0000000000000101"
      - {name: sp2, role: fabric}
      - {name: lf1, role: fabric}
      - {name: hv1, role: hypervisor}
    links:                                        # inter-switch cables, any graph
      - [sp1, lf1]
      - {a: sp2, b: lf1}
      - [sp1, sp2]                                # a cross link between the spines
      - [lf1, hv1]
    vms:                                          # every field required; ip is /16 unless CIDR
      - {name: vm1, hypervisor: hv1, ip: 10.0.0.1, mac: "02:00:00:00:00:01"}
      - {name: vm2, hypervisor: hv1, ip: 10.0.0.2, mac: "02:00:00:00:00:02"}

`mininet_scenarios/topology_file.py` has the full rules. A bad file stops the run with status 2
and one line on stderr naming the file and the field, before anything is built.

Other options:
- `--info FILE`: right after the network starts, write (atomically) a JSON document with
  `rest_url`, `admin_token_file` (null for an external controller), `openflow` ("host:port"),
  `vms` [{name, ip, mac, hypervisor, pid, intf}], `switches` [{name, dpid (16 hex digits),
  role}] and `links` [[a, b]]. `pid` is the VM shell's PID, so `mnexec -a PID cmd` or
  `nsenter -t PID -n cmd` runs inside the VM. The file is removed when the network stops.
- `--connect-late NAME=SECONDS` (repeatable): switch NAME starts with its ports up but no
  controller (so, in secure fail mode, it forwards nothing) and is given the controller SECONDS
  after the network starts: a hypervisor that boots after its leaf.

Mininet runs share one Open vSwitch and one set of interface names, so a run holds an exclusive
flock on /run/lock/goldilocks-mininet.lock for the life of its network, and waits for it if
another run holds it.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from mininet_scenarios.harness import AgentProcess, ControllerProcess, rest_call, rest_get, wait_for
from mininet_scenarios.topology_file import (
    CONTROLLER_NODE,
    DEFAULT_PREFIX_LENGTH,
    Fabric,
    TopologyFileError,
    load_fabric,
    parse_fabric,
)

# Mininet is imported lazily so that `--help` works without it.

SPINE_BASE, LEAF_BASE, HV_BASE = 0x100, 0x200, 0x300
LOCK_PATH = "/run/lock/goldilocks-mininet.lock"
LEAF_SPINE_FLAGS = ("spines", "leaves", "hypervisors_per_leaf", "vms_per_hypervisor")
LEAF_SPINE_DEFAULT = 2
RECONNECT_MS = 1000  # a switch retries its controller at least once a second
# Tunnel endpoints: one Mininet host per hypervisor, named ENDPOINT_PREFIX + its index, cabled to
# the hypervisor's bridge at a jumbo MTU. The underlay network is theirs alone (VMs may not use it).
ENDPOINT_PREFIX = "tep"
UNDERLAY_NETWORK = ipaddress.IPv4Network("172.31.0.0/16")
JUMBO_MTU = 9000
WG_LISTEN_PORT = 51820
AGENTS_CONNECT_TIMEOUT = 30.0


@dataclass(frozen=True)
class TunnelEndpoint:
    """A hypervisor's tunnel-endpoint host: its WireGuard and underlay live there, its agent drives it."""

    hypervisor: str
    name: str  # the Mininet host
    index: int
    ip: str
    mac: str

    @property
    def wg_interface(self) -> str:
        return f"glwg{self.index}"  # unique machine-wide: wireguard-go's socket path is shared by all namespaces


def tunnel_endpoints(layout: Layout) -> dict[str, TunnelEndpoint]:
    """One endpoint per hypervisor of the layout, in layout order."""
    hypervisors = [name for name in layout.switches if layout.roles[name] == "hypervisor"]
    endpoints = {}
    for index, hv in enumerate(hypervisors, start=1):
        mac = f"0e:00:00:00:{index >> 8:02x}:{index & 0xFF:02x}"
        endpoints[hv] = TunnelEndpoint(hv, f"{ENDPOINT_PREFIX}{index}", index, str(UNDERLAY_NETWORK[index]), mac)
    return endpoints


@dataclass
class Layout:
    """What we build: names, dpids, links and VM addresses. The four counts describe a
    leaf-spine; a layout read from a topology file has them all 0."""

    spines: int = 2
    leaves: int = 2
    hypervisors_per_leaf: int = 2
    vms_per_hypervisor: int = 2
    switches: dict[str, int] = field(default_factory=dict)  # name -> dpid
    roles: dict[str, str] = field(default_factory=dict)  # name -> hypervisor | fabric
    switch_links: list[tuple[str, str]] = field(default_factory=list)
    vms: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # name -> (hypervisor, ip, mac)
    prefix_lengths: dict[str, int] = field(default_factory=dict)  # VM name -> prefix length; absent: 16

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

    # -- a user's own fabric --------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Layout:
        """The fabric of a JSON or YAML topology file; TopologyFileError names the file and the field."""
        return cls._from_fabric(load_fabric(path))

    @classmethod
    def from_document(cls, doc: object, source: str = "<document>") -> Layout:
        """The fabric of an already parsed topology document; errors name `source` and the field."""
        return cls._from_fabric(parse_fabric(doc, source))

    @classmethod
    def _from_fabric(cls, fabric: Fabric) -> Layout:
        return cls(
            0,
            0,
            0,
            0,
            switches={s.name: s.dpid for s in fabric.switches},
            roles={s.name: s.role for s in fabric.switches},
            switch_links=list(fabric.links),
            vms={vm.name: (vm.hypervisor, vm.ip, vm.mac) for vm in fabric.vms},
            prefix_lengths={vm.name: vm.prefix_length for vm in fabric.vms},
        )

    def to_document(self) -> dict:
        """This layout as a topology document (what --topology reads): a starting point for a user's own file."""
        return {
            "switches": [
                {"name": name, "role": self.roles[name], "dpid": f"{dpid:016x}"} for name, dpid in self.switches.items()
            ],
            "links": [[a, b] for a, b in self.switch_links],
            "vms": [
                {"name": name, "hypervisor": hv, "ip": f"{ip}/{self.prefix_length(name)}", "mac": mac}
                for name, (hv, ip, mac) in self.vms.items()
            ],
        }

    def prefix_length(self, vm: str) -> int:
        return self.prefix_lengths.get(vm, DEFAULT_PREFIX_LENGTH)


class MininetLock:
    """The machine-wide lock that serialises Mininet runs: they share one Open vSwitch and one
    set of interface names. An exclusive flock, held from start to stop."""

    def __init__(self, path: str = LOCK_PATH) -> None:
        self.path = path
        self._fd: int | None = None
        self._held_by_wrapper = False

    @property
    def held(self) -> bool:
        return self._fd is not None or self._held_by_wrapper

    def acquire(self) -> None:
        """Take the lock, waiting (with one line on stderr) while another run holds it."""
        if self.held:
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _flock_holder(fd)
                if holder == os.getpid():
                    raise RuntimeError(
                        f"this process already runs a Mininet network (it holds {self.path}); stop that one first"
                    ) from None
                if _locked_through_inherited_fd(fd):
                    # `flock LOCK cmd` around us: the lock is held on our behalf, and would never be
                    # released while we waited for it.
                    self._held_by_wrapper = True
                    os.close(fd)
                    return
                who = f"process {holder}" if holder is not None else "another process"
                print(f"waiting for the Mininet run of {who} to finish ({self.path} is locked)", file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        fd, self._fd, self._held_by_wrapper = self._fd, None, False
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)


def _flock_holder(fd: int) -> int | None:
    """The PID that holds a flock on fd's file, from /proc/locks (None if it cannot be told)."""
    stat = os.fstat(fd)
    file_id = f"{os.major(stat.st_dev):02x}:{os.minor(stat.st_dev):02x}:{stat.st_ino}"
    try:
        with open("/proc/locks") as locks:
            for line in locks:
                fields = line.split()  # "3: FLOCK  ADVISORY  WRITE 1234 00:19:2047 0 EOF"; waiters have "->"
                if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == file_id:
                    return int(fields[4])
    except (OSError, ValueError):
        return None
    return None


def _locked_through_inherited_fd(fd: int) -> bool:
    """Whether the lock on fd's file is held through another descriptor of this process, one
    inherited from a wrapper such as flock(1): flock on the open file that holds it succeeds."""
    wanted = os.fstat(fd)
    for entry in os.listdir("/proc/self/fd"):
        other = int(entry)
        if other == fd:
            continue
        try:
            stat = os.fstat(other)
            if (stat.st_dev, stat.st_ino) != (wanted.st_dev, wanted.st_ino):
                continue
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            continue
    return False


def _run(argv: list[str], purpose: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"{purpose} failed: {' '.join(result.stderr.split())}")


def _vsctl(*args: str) -> None:
    """Run ovs-vsctl directly, not through a Mininet node's shell, which belongs to the thread that made it."""
    result = subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(f"ovs-vsctl {' '.join(args)} failed: {' '.join(result.stderr.split())}")


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
        connect_delays: dict[str, float] | None = None,
        info_path: str | os.PathLike | None = None,
        tunnels: bool = True,
        controller_args: list[str] | None = None,
        controller_rest_port: int = 0,
    ):
        """fail_mode="standalone" with with_controller=False builds plain OVS NORMAL learning
        bridges (loop-free layouts only: there is no STP), the baseline for benchmarks.

        connect_delays: switch name -> seconds after start before the switch is given its
        controller (until then it has none and, in secure fail mode, forwards nothing).
        controller_args: extra command-line flags for the controller this data centre starts.
        controller_rest_port: its REST port (0: any free one).
        info_path: where start() writes the run's info document (see info()).
        tunnels: give every hypervisor a tunnel-endpoint host and a goldilocks-agent, enrolled with the
        controller, so that `encrypt` rules have tunnels to use (needs a controller)."""
        self.layout = layout
        self.controller_proc: ControllerProcess | None = None
        self.external = controller
        self.rest_url = rest_url
        self.fail_mode = fail_mode
        self.with_controller = with_controller
        # Roles written into each bridge's dp-desc before it first connects.
        self.dp_desc_roles = dict(layout.roles) if declare_roles else {}
        self.dp_desc_roles.update(role_overrides or {})
        self.connect_delays = dict(connect_delays or {})
        self.controller_args = list(controller_args or [])
        self.controller_rest_port = controller_rest_port
        for name, delay in self.connect_delays.items():
            if name not in layout.switches:
                raise ValueError(f"connect_delays: {name!r} is not a switch of the layout")
            if not (math.isfinite(delay) and delay >= 0):
                raise ValueError(f"connect_delays: {name}: the delay must be a number of seconds >= 0, not {delay!r}")
        if self.connect_delays and not with_controller:
            raise ValueError("connect_delays needs a controller to connect to (with_controller=False)")
        self.info_path = os.fspath(info_path) if info_path is not None else None
        self.endpoints = tunnel_endpoints(layout) if tunnels and with_controller else {}
        clash = sorted(set(layout.vms) & {ep.name for ep in self.endpoints.values()})
        if clash:
            raise ValueError(f"VM {clash[0]!r}: names {ENDPOINT_PREFIX}<number> are the scenario's tunnel endpoints")
        for vm, (_, ip, _) in layout.vms.items():
            if self.endpoints and ipaddress.IPv4Address(ip) in UNDERLAY_NETWORK:
                raise ValueError(f"VM {vm!r}: {ip} is in {UNDERLAY_NETWORK}, the tunnel endpoints' underlay network")
        self.agents: dict[str, AgentProcess] = {}
        self._agent_dir: tempfile.TemporaryDirectory | None = None
        self.openflow: str | None = None  # "host:port" of the controller, once started
        self.lock = MininetLock()
        self.net = None
        self.net_start_at: float | None = None  # time.monotonic() just before net.start()
        self._pending_connects: dict[str, threading.Timer] = {}
        self.controller_set_at: dict[str, float] = {}  # switch -> time.monotonic() its controller was last set
        self._connects_lock = threading.Lock()  # the timers' thread against connect/disconnect/stop
        self._info_written = False

    # -- lifecycle ------------------------------------------------------------------
    def start(self) -> DataCentre:
        """Take the machine-wide Mininet lock (waiting for it), start the controller and the
        network. On failure everything started is stopped again and the lock released."""
        self.lock.acquire()
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from mininet.log import setLogLevel
        from mininet.net import Mininet
        from mininet.node import OVSSwitch, RemoteController

        setLogLevel("warning")
        if self.info_path is not None:
            Path(self.info_path).unlink(missing_ok=True)  # a crashed run's: its PIDs are gone
        if not self.with_controller:
            of_host, of_port = None, None
        elif self.external:
            host, _, port = self.external.rpartition(":")
            of_host, of_port = host or "127.0.0.1", int(port)
            self.rest_url = self.rest_url or f"http://{of_host}:8080"
        else:
            self.controller_proc = ControllerProcess(
                extra_args=list(self.controller_args), rest_port=self.controller_rest_port
            ).start()
            of_host, of_port = "127.0.0.1", self.controller_proc.of_port
            self.rest_url = self.controller_proc.rest_url
        self.openflow = f"{of_host}:{of_port}" if of_port is not None else None
        roles = self.dp_desc_roles
        late = set(self.connect_delays)

        class QuietRemoteController(RemoteController):
            """Mininet probes a remote controller with telnet and decodes the reply as UTF-8; an
            OpenFlow hello whose random xid is not valid UTF-8 then crashes the start. We have
            already waited for the controller's REST API, so skip the probe."""

            def checkListening(self) -> None:
                return None

            def stop(self) -> None:
                # Mininet's RemoteController.stop does nothing, which leaves the node's shell (a
                # bash on a pty) running until our process exits: one per data centre.
                self.terminate()

        class DataCentreSwitch(OVSSwitch):
            """A userspace bridge whose dp-desc declares its role when the scenario asks for it,
            and which comes up without a controller when it is to connect late."""

            def bridgeOpts(self) -> str:
                opts = super().bridgeOpts()
                if self.name in roles:
                    opts = opts.replace(f"other-config:dp-desc={self.name}", f"other-config:dp-desc=role={roles[self.name]}")
                return opts

            def start(self, controllers: list) -> None:
                # Mininet writes the controllers into the same ovs-vsctl call that creates the
                # bridge; a late switch gets none there, and the scenario sets it later.
                super().start([] if self.name in late else controllers)

        switch_cls = partial(
            DataCentreSwitch, datapath="user", failMode=self.fail_mode, protocols="OpenFlow13", reconnectms=RECONNECT_MS
        )
        net = Mininet(switch=switch_cls, controller=None, build=False, autoSetMacs=False, waitConnected=False)
        self.net = net
        if of_port is not None:
            net.addController(CONTROLLER_NODE, controller=QuietRemoteController, ip=of_host, port=of_port)
        for name, dpid in self.layout.switches.items():
            net.addSwitch(name, dpid=f"{dpid:016x}")
        for a, b in self.layout.switch_links:
            net.addLink(a, b)
        for name, (hv, ip, mac) in self.layout.vms.items():
            net.addHost(name, ip=f"{ip}/{self.layout.prefix_length(name)}", mac=mac)
            net.addLink(name, hv)
        for hv, endpoint in self.endpoints.items():
            net.addHost(endpoint.name, ip=f"{endpoint.ip}/{UNDERLAY_NETWORK.prefixlen}", mac=endpoint.mac)
            net.addLink(endpoint.name, hv)
        net.build()
        self.net_start_at = time.monotonic()
        net.start()
        for host in net.hosts:
            for intf in host.intfList():
                host.cmd(f"ethtool -K {intf.name} tx off")
        if self.endpoints:
            self._jumbo_underlay()
        self._schedule_late_connects()
        if self.endpoints:
            try:
                self._start_agents()
            except (RuntimeError, OSError) as exc:
                raise RuntimeError(
                    f"could not enroll the hypervisors' agents with the controller at {self.rest_url}: {exc} "
                    "(a controller that is not Goldilocks has no agents: use --no-tunnels)"
                ) from None
        if self.info_path is not None:
            self.write_info(self.info_path)
            self._info_written = True

    def stop(self) -> None:
        """Stop everything start() started; idempotent. The lock is released whatever fails."""
        try:
            self._cancel_pending_connects()
            if self._info_written and self.info_path is not None:
                Path(self.info_path).unlink(missing_ok=True)
                self._info_written = False
            if self.net is not None:
                self._stop_agents()
                self._kill_host_processes()
                self._remove_tunnel_ports()
                self.net.stop()
                self.net = None
            self._remove_wireguard_sockets()
            if self._agent_dir is not None:
                self._agent_dir.cleanup()
                self._agent_dir = None
        finally:
            try:
                if self.controller_proc is not None:
                    self.controller_proc.stop()
                    self.controller_proc = None
            finally:
                self.lock.release()

    # -- switches that connect late, disconnect and reconnect ---------------------------------
    def _schedule_late_connects(self) -> None:
        with self._connects_lock:
            for name, delay in self.connect_delays.items():
                timer = threading.Timer(delay, self._connect_when_due, args=(name,))
                timer.daemon = True
                self._pending_connects[name] = timer
                timer.start()

    def _connect_when_due(self, name: str) -> None:
        with self._connects_lock:
            if self._pending_connects.pop(name, None) is None:
                return  # cancelled: stopped, or connected or disconnected by hand meanwhile
            try:
                self._set_controller(name)
            except (OSError, RuntimeError) as exc:
                print(f"late switch {name}: could not set its controller: {exc}", file=sys.stderr, flush=True)

    def _cancel_pending_connects(self) -> None:
        with self._connects_lock:
            for timer in self._pending_connects.values():
                timer.cancel()
            self._pending_connects.clear()

    def connect_switch(self, name: str) -> None:
        """Give the switch the scenario's controller now (cancelling a pending late connect)."""
        self._require_switch(name)
        if self.openflow is None:
            raise RuntimeError("this data centre has no controller to connect to")
        with self._connects_lock:
            pending = self._pending_connects.pop(name, None)
            if pending is not None:
                pending.cancel()
            self._set_controller(name)

    def disconnect_switch(self, name: str) -> None:
        """Remove the switch's controller (cancelling a pending late connect). Open vSwitch drops
        the bridge's flows when its controller is removed, so in secure fail mode it forwards
        nothing until it connects again: this models a switch reconfigured or restarted, not a
        control connection lost while the switch keeps its flows."""
        self._require_switch(name)
        with self._connects_lock:
            pending = self._pending_connects.pop(name, None)
            if pending is not None:
                pending.cancel()
            _vsctl("del-controller", name)

    def _require_switch(self, name: str) -> None:
        if name not in self.layout.switches:
            raise ValueError(f"{name!r} is not a switch of this data centre")
        if self.net is None:
            raise RuntimeError("the data centre is not running")

    def _set_controller(self, name: str) -> None:
        # What Mininet's OVSSwitch.start writes, so a late switch backs off like the others.
        _vsctl(
            "--", "--id=@c", "create", "Controller", f'target="tcp:{self.openflow}"', f"max_backoff={RECONNECT_MS}",
            "--", "set", "Bridge", name, "controller=[@c]",
        )  # fmt: skip
        self.controller_set_at[name] = time.monotonic()

    def move_vm(self, vm: str, to_hv: str) -> float:
        """Unplug a VM from its hypervisor and plug it into another (a migration); return when it
        was plugged in (epoch seconds)."""
        net = self.net
        host = net.get(vm)
        old_hv = net.get(self.layout.vms[vm][0])
        _, ip, mac = self.layout.vms[vm]
        for link in net.linksBetween(host, old_hv):
            switch_intf = link.intf2 if link.intf2.node is old_hv else link.intf1
            old_hv.detach(switch_intf)
            net.delLink(link)
        new_hv = net.get(to_hv)
        link = net.addLink(host, new_hv)
        vm_intf = link.intf1 if link.intf1.node is host else link.intf2
        switch_intf = link.intf2 if vm_intf is link.intf1 else link.intf1
        vm_intf.setMAC(mac)
        vm_intf.setIP(f"{ip}/{self.layout.prefix_length(vm)}")
        host.cmd(f"ethtool -K {vm_intf.name} tx off")
        new_hv.attach(switch_intf)
        plugged = time.time()
        self.layout.vms[vm] = (to_hv, ip, mac)
        return plugged

    # -- tunnel endpoints and their agents ---------------------------------------------------------
    def endpoint_port(self, hypervisor: str) -> str:
        """The hypervisor bridge's port facing its tunnel endpoint."""
        endpoint = self.net.get(self.endpoints[hypervisor].name).defaultIntf()
        peer = endpoint.link.intf2 if endpoint.link.intf1 is endpoint else endpoint.link.intf1
        return peer.name

    def _jumbo_underlay(self) -> None:
        """Every cable of the underlay (switch to switch, endpoint to its hypervisor) at a jumbo MTU, so
        that WireGuard's and VXLAN's overhead fits while VMs keep 1500, as real fabrics do."""
        endpoint_names = {ep.name for ep in self.endpoints.values()}
        switches = set(self.layout.switches)
        for link in self.net.links:
            ends = (link.intf1, link.intf2)
            if all(i.node.name in switches or i.node.name in endpoint_names for i in ends):
                for intf in ends:
                    if intf.node.name in switches:
                        _run(["ip", "link", "set", "dev", intf.name, "mtu", str(JUMBO_MTU)], f"set MTU of {intf.name}")
                    else:
                        intf.node.cmd(f"ip link set dev {intf.name} mtu {JUMBO_MTU}")

    def _start_agents(self) -> None:
        """Enroll one agent per hypervisor with a fresh one-time token and start it."""
        self._agent_dir = tempfile.TemporaryDirectory(prefix="goldilocks-agents-")
        base = Path(self._agent_dir.name)
        for hv, endpoint in self.endpoints.items():
            issued = rest_call(self.rest_url, "POST", "/v1/agents/tokens", {"ttl_seconds": 600}, expect=201)
            state = base / hv
            state.mkdir(mode=0o700)
            token_file, ca_file = base / f"{hv}.token", base / "ca.pem"
            token_file.write_text(issued["token"] + "\n")
            token_file.chmod(0o600)
            ca_file.write_text(issued["ca_certificate"])
            host = self.openflow.rpartition(":")[0]
            pid = self.net.get(endpoint.name).pid
            args = [
                "--hypervisor", hv, "--bridge", hv,
                "--underlay-ip", endpoint.ip, "--underlay-port", self.endpoint_port(hv),
                "--controller", f"{host}:{issued['agent_port']}",
                "--state-dir", str(state), "--token-file", str(token_file), "--ca-file", str(ca_file),
                "--wg-interface", endpoint.wg_interface, "--listen-port", str(WG_LISTEN_PORT),
                "--endpoint-netns", f"/proc/{pid}/ns/net",
            ]  # fmt: skip
            self.agents[hv] = AgentProcess(hv, args, str(base / f"agent-{hv}.log")).start()

    def restart_agent(self, hypervisor: str) -> None:
        """Start the hypervisor's agent again (after a test killed it): enrolled, it needs no token."""
        old = self.agents[hypervisor]
        old.kill()
        self.agents[hypervisor] = AgentProcess(hypervisor, old.args, old.log_path).start()

    def wait_for_agents(self, timeout: float = AGENTS_CONNECT_TIMEOUT) -> float:
        """Wait until every agent is enrolled and connected; return seconds."""
        started = time.monotonic()

        def connected() -> bool:
            for hv, agent in self.agents.items():
                if agent.proc is not None and agent.proc.poll() is not None:
                    raise RuntimeError(f"the agent of {hv} exited with {agent.proc.returncode}: {agent.log_tail(10)}")
            agents = rest_get(self.rest_url, "/v1/agents")["agents"]
            return sum(1 for a in agents if a["connected"] and a["hypervisor"] in self.agents) == len(self.agents)

        wait_for(connected, timeout, what="every hypervisor's agent to connect")
        return time.monotonic() - started

    def _stop_agents(self) -> None:
        for agent in self.agents.values():
            agent.kill(signal.SIGTERM)

    def _remove_tunnel_ports(self) -> None:
        """The VXLAN ports the agents moved into our namespace outlive their endpoints: delete them."""
        for hv in self.endpoints:
            result = subprocess.run(["ovs-vsctl", "--timeout=5", "list-ports", hv], capture_output=True, text=True)
            for port in result.stdout.split():
                if port.startswith("glvx"):
                    subprocess.run(["ovs-vsctl", "--timeout=5", "--if-exists", "del-port", hv, port], capture_output=True)
                    subprocess.run(["ip", "link", "del", "dev", port], capture_output=True)

    def _remove_wireguard_sockets(self) -> None:
        """wireguard-go leaves its control socket behind when it is killed."""
        for endpoint in self.endpoints.values():
            Path(f"/var/run/wireguard/{endpoint.wg_interface}.sock").unlink(missing_ok=True)

    # -- for scripts and tests outside this process -----------------------------------------
    def info(self) -> dict:
        """What a script needs to drive the running network from outside: the controller's
        addresses, and every switch, link and VM, with the PID of each VM's shell."""
        token_file = os.path.join(self.controller_proc.state_dir, "admin.token") if self.controller_proc else None
        vms = []
        for name, (hv, ip, mac) in self.layout.vms.items():
            host = self.net.get(name)
            vms.append({"name": name, "ip": ip, "mac": mac, "hypervisor": hv, "pid": host.pid, "intf": host.defaultIntf().name})
        endpoints = []
        for hv, endpoint in self.endpoints.items():
            host = self.net.get(endpoint.name)
            agent = self.agents.get(hv)
            endpoints.append(
                {
                    "hypervisor": hv,
                    "name": endpoint.name,
                    "ip": endpoint.ip,
                    "mac": endpoint.mac,
                    "pid": host.pid,
                    "intf": host.defaultIntf().name,
                    "bridge_port": self.endpoint_port(hv),
                    "wg_interface": endpoint.wg_interface,
                    "agent_pid": agent.proc.pid if agent and agent.proc else None,
                    "agent_log": agent.log_path if agent else None,
                }
            )
        return {
            "rest_url": self.rest_url,
            "admin_token_file": token_file,
            "openflow": self.openflow,
            "vms": vms,
            "endpoints": endpoints,
            "switches": [
                {"name": name, "dpid": f"{dpid:016x}", "role": self.layout.roles[name]}
                for name, dpid in self.layout.switches.items()
            ],
            "links": [[a, b] for a, b in self.layout.switch_links],
        }

    def write_info(self, path: str | os.PathLike) -> None:
        """Write info() as JSON, atomically: a reader sees the whole document or none."""
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".goldilocks-info-", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(self.info(), out, indent=1)
                out.write("\n")
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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

    def learning_diff(self, topo: dict | None = None, all_hosts: bool = True) -> list[str]:
        """How what the controller learned differs from what was built, one readable line each
        (mininet_scenarios.fabric_check.fabric_diff); empty when it is exact."""
        from mininet_scenarios.fabric_check import fabric_diff

        return fabric_diff(self, topo if topo is not None else self.topology(), all_hosts=all_hosts)

    def learned_counts(self) -> dict[str, int]:
        topo = self.topology()
        return {
            "switches": sum(1 for s in topo["switches"] if s["connected"]),
            "links": len(topo["links"]),
            "hosts": len(topo["hosts"]),
        }

    def built_counts(self) -> dict[str, int]:
        """Hosts are the VMs and the hypervisors' tunnel endpoints."""
        hosts = len(self.layout.vms) + len(self.endpoints)
        return {"switches": len(self.layout.switches), "links": len(self.layout.switch_links), "hosts": hosts}

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
        if self.agents:  # the endpoints are part of the fabric: the controller knows them from their agents
            self.wait_for_agents(max(1.0, timeout - (time.monotonic() - started)))
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
    """A data centre that is always torn down, whatever happens inside. It holds the machine-wide
    Mininet lock from start to stop, so runs in other processes wait for it."""
    with started(DataCentre(layout, **kwargs)) as dc:
        yield dc


@contextmanager
def started(dc: DataCentre) -> Iterator[DataCentre]:
    """Start a data centre built already, and always stop it."""
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
    # Exact, not just the right counts: every cable a link, every VM on the port it is plugged
    # into, no phantom host, the built roles.
    summary["mismatch"] = dc.learning_diff()
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
        and not summary["mismatch"]
        and summary["ping_loss_percent"] == 0.0
        and summary["iperf3"]["mbps"] > 0
        and summary["roles"]["hypervisor"] == expected_hv
    )
    if dc.endpoints:
        from mininet_scenarios import encryption_check

        summary["encryption"] = encryption_check.run(dc)
        summary["ok"] = summary["ok"] and summary["encryption"]["ok"]
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
        *(f"  wrong: {line}" for line in summary.get("mismatch", [])),
    ]
    if "encryption" in summary:
        from mininet_scenarios import encryption_check

        lines += encryption_check.human(summary["encryption"])
    lines.append(f"  result: {'OK' if summary['ok'] else 'FAILED'}")
    return "\n".join(lines)


DEMO_REST_PORT = 8080


def port_is_free(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        # As the controller binds: a port whose last connections linger in TIME_WAIT is free to it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def explore_guide(dc: DataCentre, summary: dict) -> str:
    """How to look around the running data centre: the web view, the token, three CLI commands."""
    token_file = os.path.join(dc.controller_proc.state_dir, "admin.token") if dc.controller_proc else None
    vms = list(dc.layout.vms)
    roles = None
    if dc.endpoints:
        from mininet_scenarios import encryption_check

        roles = encryption_check.pick_roles(dc)
    src, dst = (roles.pci, roles.db) if roles else (vms[0], vms[-1])
    cli = os.path.join(os.path.dirname(sys.executable), "goldilocks")
    env = f"export GOLDILOCKS_URL={dc.rest_url}"
    if token_file:
        env += f" GOLDILOCKS_TOKEN_FILE={token_file}"
    lines = [
        "",
        "The data centre keeps running until Ctrl-C.",
        f"  Web view: {dc.rest_url}/ui/",
        f"    sign in with the admin token in {token_file}" if token_file else "    sign in with your controller's admin token",
        "    (on another machine: ssh -L 8080:127.0.0.1:PORT this-host, then http://127.0.0.1:8080/ui/)".replace(
            "PORT", dc.rest_url.rsplit(":", 1)[-1]
        ),
        "  Try the CLI in another terminal:",
        f"    {env}",
        f"    {cli} status",
        f"    {cli} explain {src} {dst} --proto icmp" + ("    # encrypted by the sample rule" if roles else ""),
        f"    {cli} quarantine {dst} --reason 'looks odd'    # then: {cli} release {dst}",
    ]
    if dc.controller_proc:
        lines.append(f"  Controller log: {dc.controller_proc.log_path}")
    if not summary["ok"]:
        lines.insert(1, "The check FAILED (above); the data centre stays up so you can look into it.")
    return "\n".join(lines)


def keep_running(dc: DataCentre, ok: bool) -> int:
    """Wait for Ctrl-C or SIGTERM (the caller's context then stops everything); 1 if the controller
    this run started dies meanwhile, else the check's verdict."""
    stop = threading.Event()
    # Our own handlers for both: a shell that started us in the background set SIGINT to ignored,
    # and Python then never raises KeyboardInterrupt; `kill -INT` must still end the demo.
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(1.0):
            proc = dc.controller_proc.proc if dc.controller_proc else None
            if proc is not None and proc.poll() is not None:
                print(
                    f"error: the controller exited (status {proc.returncode}); its log: {dc.controller_proc.log_path}",
                    file=sys.stderr,
                )
                return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("\nstopping the data centre", flush=True)
    return 0 if ok else 1


def _late_connect(text: str) -> tuple[str, float]:
    name, sep, seconds = text.partition("=")
    try:
        delay = float(seconds)
    except ValueError:
        delay = math.nan
    if not sep or not name or not (math.isfinite(delay) and delay >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} is not NAME=SECONDS (seconds >= 0)")
    return name, delay


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m mininet_scenarios.datacenter", description=__doc__.splitlines()[0])
    shape = parser.add_argument_group("a leaf-spine fabric (default), each 2 unless given")
    shape.add_argument("--spines", type=int)
    shape.add_argument("--leaves", type=int)
    shape.add_argument("--hypervisors-per-leaf", type=int)
    shape.add_argument("--vms-per-hypervisor", type=int)
    parser.add_argument(
        "--topology",
        metavar="FILE",
        help="build the fabric described in FILE (JSON, or YAML for .yaml/.yml) instead of a leaf-spine",
    )
    parser.add_argument("--controller", metavar="HOST:PORT", help="use a running controller (default: start our own)")
    parser.add_argument("--rest", metavar="URL", help="REST URL of that controller (default http://HOST:8080)")
    parser.add_argument("--declare-roles", action="store_true", help="set dp-desc role=... on every bridge")
    parser.add_argument(
        "--no-tunnels",
        action="store_true",
        help="no tunnel endpoints or agents (encrypt rules then drop what they select: fail closed)",
    )
    parser.add_argument(
        "--info",
        metavar="FILE",
        help="once the network runs, write its controller, switches, links and VMs (with PIDs) to FILE as JSON",
    )
    parser.add_argument(
        "--connect-late",
        metavar="NAME=SECONDS",
        type=_late_connect,
        action="append",
        default=[],
        help="give switch NAME its controller only SECONDS after the network starts (repeatable)",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--cli", action="store_true", help="open the Mininet CLI")
    mode.add_argument("--check", action="store_true", help="verify learning, pingall and iperf3; print JSON and exit")
    mode.add_argument(
        "--keep-running",
        action="store_true",
        help="after the check, keep the data centre running until Ctrl-C or SIGTERM even when stdin is not a terminal "
        "(without --check or --cli, it keeps running only when stdin is a terminal)",
    )
    args = parser.parse_args(argv)
    given = [name for name in LEAF_SPINE_FLAGS if getattr(args, name) is not None]
    if args.topology and given:
        parser.error(f"--topology describes the whole fabric: drop --{given[0].replace('_', '-')}")
    for name in LEAF_SPINE_FLAGS:
        if getattr(args, name) is None:
            setattr(args, name, LEAF_SPINE_DEFAULT)
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.controller and ":" not in args.controller:
        parser.error("--controller must be HOST:PORT")
    late = [name for name, _ in args.connect_late]
    if len(set(late)) != len(late):
        parser.error("--connect-late names a switch more than once")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.topology:
            layout = Layout.from_file(args.topology)
        else:
            layout = Layout(args.spines, args.leaves, args.hypervisors_per_leaf, args.vms_per_hypervisor)
    except TopologyFileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, _ in args.connect_late:
        if name not in layout.switches:
            print(f"error: --connect-late: {name!r} is not a switch of this fabric", file=sys.stderr)
            return 2
    if not args.cli and not layout.vms:
        print(f"error: {args.topology}: vms: the check needs at least one VM (or use --cli)", file=sys.stderr)
        return 2
    explore = not (args.check or args.cli) and (args.keep_running or sys.stdin.isatty())
    try:
        dc = DataCentre(
            layout,
            controller=args.controller,
            rest_url=args.rest,
            declare_roles=args.declare_roles,
            connect_delays=dict(args.connect_late),
            info_path=args.info,
            tunnels=not args.no_tunnels,
            # A memorable address for the web view when someone is going to open it.
            controller_rest_port=DEMO_REST_PORT if explore and not args.controller and port_is_free(DEMO_REST_PORT) else 0,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with started(dc):
        if args.cli:
            from mininet.cli import CLI

            CLI(dc.net)
            return 0
        summary = check(dc)
        if not explore:  # --check, or a script: the JSON on stdout, for people on stderr
            print(json.dumps(summary, indent=1))
            print(human_summary(summary), file=sys.stderr)
            if not args.check:
                print("(stdin is not a terminal, so the data centre stops now; --keep-running keeps it)", file=sys.stderr)
            return 0 if summary["ok"] else 1
        print(human_summary(summary), flush=True)
        print(explore_guide(dc, summary), flush=True)
        return keep_running(dc, ok=summary["ok"])


if __name__ == "__main__":
    sys.exit(main())
