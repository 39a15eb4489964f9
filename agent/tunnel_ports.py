"""This hypervisor's VXLAN tunnel ports, one per peer hypervisor: created over WireGuard, plugged into the OVS bridge.

A port is a VXLAN device made in the tunnel-endpoint namespace (where the agent and the wg
interface live), with `local` and `remote` the two tunnel addresses. A VXLAN device keeps its
UDP socket in the namespace it was made in, even when moved: so it is moved to the namespace
of the OVS bridge (Mininet's root namespace; none on a real hypervisor) and added to the bridge
as an ordinary port. Frames output to it are encapsulated and routed over wg in the endpoint
namespace, and leave the underlay only as WireGuard UDP. Ours are told apart on the bridge by
the Interface's external_ids:goldilocks-tunnel-peer, which names the peer hypervisor.

Two VXLAN devices made in one namespace cannot share a VNI on one UDP port: each peer pair
has its own VNI, the same at both ends.
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass

from agent.netns import DataplaneError, Result, Runner, SubprocessRunner, check, in_namespace, move_target

__all__ = ["DataplaneError", "TunnelPortSpec", "TunnelPorts"]

PEER_KEY = "goldilocks-tunnel-peer"  # Interface external_ids key: the peer hypervisor's name
VXLAN_DSTPORT = 4789
VNI_MAX = (1 << 24) - 1
IFNAMSIZ = 15
OVS_TIMEOUT = 5  # seconds, ovs-vsctl's own limit
PEER_NAME_RE = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")
MISSING = ("Cannot find device",)


@dataclass(frozen=True)
class TunnelPortSpec:
    name: str  # e.g. "glvx3x7" (<= 15 chars)
    vni: int
    local_ip: str  # own tunnel address, no prefix
    remote_ip: str  # peer's tunnel address
    peer: str  # peer hypervisor name (external_ids:goldilocks-tunnel-peer)

    def describe(self) -> str:
        return f"{self.name} (peer {self.peer}): vni {self.vni} local {self.local_ip} remote {self.remote_ip}"


def check_spec(spec: TunnelPortSpec) -> None:
    """A port we can create: raises ValueError naming the port and the field."""
    name = spec.name
    if not isinstance(name, str) or not 0 < len(name) <= IFNAMSIZ or "/" in name or any(c.isspace() for c in name):
        raise ValueError(f"tunnel port {name!r}: not an interface name of at most {IFNAMSIZ} characters")
    if not isinstance(spec.vni, int) or isinstance(spec.vni, bool) or not 0 < spec.vni <= VNI_MAX:
        raise ValueError(f"tunnel port {name}: vni is not between 1 and {VNI_MAX}")
    for field_name in ("local_ip", "remote_ip"):
        try:
            ipaddress.ip_address(getattr(spec, field_name))
        except ValueError:
            raise ValueError(f"tunnel port {name}: {field_name} is not an IP address") from None
    if not isinstance(spec.peer, str) or not PEER_NAME_RE.match(spec.peer):
        raise ValueError(f"tunnel port {name}: peer is not a hypervisor name")


@dataclass(frozen=True)
class _Observed:
    """One of our ports as found: its spec read back, and what apply can fix in place."""

    spec: TunnelPortSpec
    sound: bool  # a VXLAN device on our UDP port without learning (else it is replaced)
    mtu: int | None
    up: bool


def _ovs_rows(text: str) -> list[dict]:
    """`ovs-vsctl --format=json` table output as one dict per row (maps as dicts)."""
    table = json.loads(text or '{"data": [], "headings": []}')
    rows = []
    for data in table.get("data", []):
        row = {}
        for heading, value in zip(table.get("headings", []), data, strict=False):
            if isinstance(value, list) and len(value) == 2 and value[0] == "map":
                value = dict(value[1])
            row[heading] = value
        rows.append(row)
    return rows


class TunnelPorts:
    """Our tunnel ports on `bridge`. Commands run through `run` in the agent's (endpoint)
    namespace; those about the ports once moved run in `bridge_netns` (None: the bridge is in our
    own namespace, and ports stay where made). It is /proc/PID/ns/net or /run/netns/NAME, and
    nsenter must be able to open it: on these machines /proc/1/ns/net cannot be opened (pid 1 is
    the sandbox's init), so name the namespace by ovs-vswitchd's PID instead."""

    def __init__(self, bridge: str, bridge_netns: str | None = None, mtu: int = 1500, run: Runner | None = None) -> None:
        self.bridge = bridge
        self.bridge_netns = bridge_netns
        self.mtu = mtu
        self._move_to = move_target(bridge_netns) if bridge_netns is not None else None
        self._run: Runner = run or SubprocessRunner()

    # -- commands ---------------------------------------------------------------------------------
    def _here(self, purpose: str, argv: list[str], **kwargs) -> Result:
        return check(self._run, purpose, argv, **kwargs)

    def _at_bridge(self, purpose: str, argv: list[str], **kwargs) -> Result:
        return check(self._run, purpose, in_namespace(self.bridge_netns, argv), **kwargs)

    def _vsctl(self, purpose: str, *args: str) -> Result:
        return check(self._run, purpose, ["ovs-vsctl", f"--timeout={OVS_TIMEOUT}", *args])

    def _json(self, purpose: str, result: Result):
        try:
            return json.loads(result.stdout or "[]")
        except json.JSONDecodeError:
            raise DataplaneError(f"{purpose}: the output is not JSON") from None

    # -- reading ----------------------------------------------------------------------------------
    def _our_ports(self) -> dict[str, str]:
        """Port name -> peer, for the ports on our bridge that carry our external_ids key."""
        ports = set(self._vsctl(f"list ports of {self.bridge}", "list-ports", self.bridge).stdout.split())
        if not ports:
            return {}
        purpose = "read tunnel ports from OVSDB"
        result = self._vsctl(
            purpose, "--format=json", "--columns=name,external_ids", "find", "Interface", f'external_ids:{PEER_KEY}!=""'
        )
        try:
            rows = _ovs_rows(result.stdout)
        except (json.JSONDecodeError, TypeError, ValueError):
            raise DataplaneError(f"{purpose}: unexpected ovs-vsctl output") from None
        return {
            row["name"]: row["external_ids"][PEER_KEY]
            for row in rows
            if row.get("name") in ports and isinstance(row.get("external_ids"), dict)
        }

    def _bridge_links(self, stats: bool = False) -> dict[str, dict]:
        purpose = "read links in the bridge's namespace"
        argv = ["ip", "-s", "-j", "link", "show"] if stats else ["ip", "-d", "-j", "link", "show"]
        links = self._json(purpose, self._at_bridge(purpose, argv))
        return {link["ifname"]: link for link in links if isinstance(link, dict) and "ifname" in link}

    def _observe(self) -> dict[str, _Observed]:
        ports = self._our_ports()
        if not ports:
            return {}
        links = self._bridge_links()
        observed = {}
        for name, peer in ports.items():
            link = links.get(name, {})
            info = link.get("linkinfo", {})
            data = info.get("info_data", {}) if info.get("info_kind") == "vxlan" else {}
            spec = TunnelPortSpec(name, data.get("id", 0), data.get("local", ""), data.get("remote", ""), peer)
            sound = bool(data) and data.get("port") == VXLAN_DSTPORT and not data.get("learning", False)
            observed[name] = _Observed(spec, sound, link.get("mtu"), "UP" in link.get("flags", []))
        return observed

    def actual(self) -> dict[str, TunnelPortSpec]:
        """Our ports on the bridge, with the VXLAN parameters read back from their devices (a
        port whose device is missing shows vni 0 and no addresses)."""
        return {name: seen.spec for name, seen in self._observe().items()}

    def port_stats(self) -> dict[str, dict]:
        """Per port: tx_dropped, tx_errors, tx_packets, rx_packets, as the device counts them."""
        ports = self._our_ports()
        if not ports:
            return {}
        links = self._bridge_links(stats=True)
        stats = {}
        for name in ports:
            counters = links.get(name, {}).get("stats64")
            if counters is None:
                continue
            tx, rx = counters.get("tx", {}), counters.get("rx", {})
            stats[name] = {
                "tx_dropped": tx.get("dropped", 0),
                "tx_errors": tx.get("errors", 0),
                "tx_packets": tx.get("packets", 0),
                "rx_packets": rx.get("packets", 0),
            }
        return stats

    # -- changing ---------------------------------------------------------------------------------
    def _delete(self, name: str) -> None:
        self._vsctl(f"{name}: remove from {self.bridge}", "--if-exists", "del-port", self.bridge, name)
        self._at_bridge(f"{name}: delete device", ["ip", "link", "del", "dev", name], tolerate=MISSING)
        if self._move_to is not None:  # a device left behind between creation and move
            self._here(f"{name}: delete device in the endpoint namespace", ["ip", "link", "del", "dev", name], tolerate=MISSING)

    def _create(self, spec: TunnelPortSpec, clean: bool) -> None:
        name = spec.name
        if clean:  # leftovers of a crash, not on the bridge as ours, would make `ip link add` fail
            self._delete(name)
        try:
            self._here(
                f"{name}: create VXLAN device",
                ["ip", "link", "add", name, "type", "vxlan", "id", str(spec.vni), "local", spec.local_ip,
                 "remote", spec.remote_ip, "dstport", str(VXLAN_DSTPORT), "nolearning"],
            )  # fmt: skip
            self._here(f"{name}: set MTU", ["ip", "link", "set", "dev", name, "mtu", str(self.mtu)])
            if self._move_to is not None:
                self._here(f"{name}: move to the bridge's namespace", ["ip", "link", "set", "dev", name, "netns", self._move_to])
            # No IPv6 link-local (a move resets the mode): the host stack has nothing to say over a tunnel port.
            self._at_bridge(f"{name}: turn off IPv6 addresses", ["ip", "link", "set", "dev", name, "addrgenmode", "none"])
            self._at_bridge(f"{name}: bring link up", ["ip", "link", "set", "dev", name, "up"])
            self._vsctl(
                f"{name}: add to {self.bridge}",
                "--may-exist", "add-port", self.bridge, name,
                "--", "set", "Interface", name, f'external_ids:{PEER_KEY}="{spec.peer}"',
            )  # fmt: skip
        except DataplaneError:
            try:
                self._delete(name)
            except DataplaneError:
                pass  # the first error is the one worth reporting
            raise

    def apply(self, desired: dict[str, TunnelPortSpec]) -> list[str]:
        """Create missing ports, replace changed ones (delete, then create), delete unwanted
        ones, fix MTU and link state in place. Idempotent: a second call changes nothing and
        returns []. Deletions go first, so a VNI moving between ports is free when needed."""
        vnis: dict[int, str] = {}
        for key, spec in desired.items():
            try:
                check_spec(spec)
            except ValueError as exc:
                raise DataplaneError(str(exc)) from None
            if key != spec.name:
                raise DataplaneError(f"tunnel port {spec.name} is keyed as {key!r}")
            if spec.vni in vnis:
                raise DataplaneError(f"tunnel ports {vnis[spec.vni]} and {spec.name} share vni {spec.vni}")
            vnis[spec.vni] = spec.name
        observed = self._observe()
        replaced = {name for name, seen in observed.items() if name in desired and (seen.spec != desired[name] or not seen.sound)}
        changes = []
        for name in sorted(observed):
            if name not in desired:
                self._delete(name)
                changes.append(f"remove tunnel port {observed[name].spec.describe()}")
        for name in sorted(replaced):
            self._delete(name)
        for name in sorted(desired):
            spec = desired[name]
            if name not in observed or name in replaced:
                self._create(spec, clean=name not in replaced)
                changes.append(f"{'replace' if name in replaced else 'add'} tunnel port {spec.describe()}")
                continue
            seen = observed[name]
            if seen.mtu != self.mtu:
                self._at_bridge(f"{name}: set MTU", ["ip", "link", "set", "dev", name, "mtu", str(self.mtu)])
                changes.append(f"set MTU {self.mtu} on tunnel port {name}")
            if not seen.up:
                self._at_bridge(f"{name}: bring link up", ["ip", "link", "set", "dev", name, "up"])
                changes.append(f"bring up tunnel port {name}")
        return changes

    def remove_all(self) -> None:
        """Delete every one of our ports on the bridge, and their devices."""
        for name in sorted(self._our_ports()):
            self._delete(name)
