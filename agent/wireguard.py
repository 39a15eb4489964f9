"""This hypervisor's WireGuard interface (wireguard-go) and its peers: desired against actual, applied with `wg set`.

The interface lives in the tunnel-endpoint namespace, where the agent runs. Fail-closed depends
on the layout (checked with a capture: tests/integration/test_tunnel_dataplane.py): the tunnel
address lives on the wg interface alone, and a blackhole route for the tunnel prefix stays
behind when wireguard-go dies and takes its interface, addresses and routes with it. So no
VXLAN packet, which carries the VM's frame in clear, can then leave by the underlay: the VXLAN
device finds no source address and counts a tx error instead.

Secrets: the private key and PSKs reach `wg` on stdin, never in argv; `wg show dump` prints
them, so parsing keeps only the own public key and a SHA-256 digest of each PSK. Change lines
and errors show fingerprints.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import json
import os
import signal
import time
from dataclasses import dataclass, field

from agent.netns import DataplaneError, Result, Runner, SubprocessRunner, check
from crypto import wgkeys

__all__ = [
    "DataplaneError",
    "PeerChange",
    "PeerSpec",
    "PeerState",
    "WireGuard",
    "parse_dump",
    "peer_changes",
]

SOCKET_DIR = "/var/run/wireguard"  # wireguard-go's control sockets: one filesystem path for all namespaces
IMPLEMENTATIONS = ("auto", "kernel", "userspace")
BLACKHOLE_METRIC = 4000  # below the connected route on wg (metric 0), which wins while wg is up
START_TIMEOUT = 5.0  # seconds for a fresh wireguard-go to answer on its socket
STOP_TIMEOUT = 3.0  # seconds for wireguard-go to exit once its interface is deleted
# wireguard-go refuses to run on a kernel it believes has WireGuard unless told otherwise. With a
# LOG_LEVEL other than silent, its daemon would keep our stdout and stderr (and the pipes we read).
WIREGUARD_GO_ENV = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "LOG_LEVEL": "silent"}


def _check_key_text(text: str, what: str) -> None:
    try:
        wgkeys.decode(text)
    except wgkeys.KeyFormatError:
        raise ValueError(f"{what} is not a WireGuard public key (base64 of 32 bytes)") from None


def normalize_endpoint(text: str) -> str:
    """An endpoint `ip:port` / `[ipv6]:port` in one spelling, so equal endpoints compare equal.
    ValueError when it is not one."""
    host, sep, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") and host.endswith("]") else host)
        number = int(port)
    except ValueError:
        raise ValueError(f"endpoint {text!r} is not ip:port") from None
    if not sep or not 0 < number < 65536:
        raise ValueError(f"endpoint {text!r} is not ip:port")
    return f"[{address}]:{number}" if address.version == 6 else f"{address}:{number}"


def _network(text: str) -> str:
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        raise ValueError(f"allowed IP {text!r} is not an address or prefix") from None


def psk_digest(psk: bytes) -> str:
    """What PeerState keeps of a PSK: its SHA-256, hex."""
    return hashlib.sha256(psk).hexdigest()


def short_key(public_key: str) -> str:
    """A public key as change lines show it: the prefix `wg show` users recognise."""
    return public_key[:10] + "..."


@dataclass(frozen=True)
class PeerSpec:
    """A peer as the controller wants it. `endpoint` "" leaves the endpoint to WireGuard's roaming;
    `allowed_ip` "" gives the peer no allowed IPs (a key kept during a rotation)."""

    public_key: str  # base64
    psk: bytes = field(repr=False)  # 32 bytes
    endpoint: str  # "ip:port"
    allowed_ip: str  # "100.127.0.3/32"

    def __post_init__(self) -> None:
        _check_key_text(self.public_key, "peer public key")
        if not isinstance(self.psk, bytes) or len(self.psk) != wgkeys.KEY_LEN:
            raise ValueError(f"peer {short_key(self.public_key)}: psk must be {wgkeys.KEY_LEN} bytes")
        if self.endpoint:
            normalize_endpoint(self.endpoint)
        if self.allowed_ip:
            _network(self.allowed_ip)


@dataclass(frozen=True)
class PeerState:
    """A peer as wireguard-go holds it, from `wg show IF dump`; the PSK only as a digest."""

    public_key: str
    psk_digest: str  # sha256 hex of the psk bytes ("" when none)
    endpoint: str  # "" when none
    allowed_ips: tuple[str, ...]
    latest_handshake: float  # unix seconds, 0 = never
    rx_bytes: int
    tx_bytes: int


@dataclass(frozen=True)
class PeerChange:
    """One step that brings a peer from actual to desired. str() shows fingerprints only."""

    action: str  # "remove", "add" or "update"
    public_key: str
    spec: PeerSpec | None = None  # None for "remove"
    reasons: tuple[str, ...] = ()  # for "update": "psk", "endpoint", "allowed-ips"

    def __str__(self) -> str:
        if self.spec is None:
            return f"{self.action} peer {short_key(self.public_key)}"
        why = f" ({', '.join(self.reasons)})" if self.reasons else ""
        return (
            f"{self.action} peer {short_key(self.public_key)}{why}: endpoint {self.spec.endpoint or '(roaming)'}"
            f" allowed-ips {self.spec.allowed_ip or '(none)'} psk {wgkeys.fingerprint(self.spec.psk)}"
        )


def _dump_fields(text: str) -> list[list[str]]:
    return [line.split("\t") for line in text.splitlines() if line.strip()]


def _none(value: str) -> str:
    return "" if value == "(none)" else value


def _interface_line(fields: list[str]) -> tuple[str, int]:
    """(public key, listen port) of a dump's first line; the private key in it is not kept."""
    if len(fields) != 4:
        raise ValueError(f"wg dump: interface line has {len(fields)} fields, expected 4")
    try:
        return _none(fields[1]), int(fields[2])
    except ValueError:
        raise ValueError("wg dump: interface line has a listen port that is not a number") from None


def _peer_line(number: int, fields: list[str]) -> PeerState:
    # public, preshared, endpoint, allowed-ips, latest-handshake, rx, tx, keepalive
    if len(fields) != 8:
        raise ValueError(f"wg dump: line {number} has {len(fields)} fields, expected 8")
    psk_text = _none(fields[1])
    try:
        digest = psk_digest(base64.b64decode(psk_text, validate=True)) if psk_text else ""
    except binascii.Error:
        raise ValueError(f"wg dump: line {number} has a preshared key that is not base64") from None
    allowed = _none(fields[3])
    try:
        return PeerState(
            public_key=fields[0],
            psk_digest=digest,
            endpoint=_none(fields[2]),
            allowed_ips=tuple(a for a in allowed.split(",") if a) if allowed else (),
            latest_handshake=float(int(fields[4])),
            rx_bytes=int(fields[5]),
            tx_bytes=int(fields[6]),
        )
    except ValueError:
        raise ValueError(f"wg dump: line {number} has a counter that is not a number") from None


def parse_dump(text: str) -> tuple[str, dict[str, PeerState]]:
    """(own public key, peers by public key) from `wg show IF dump`. Pure. Errors name the line
    and field, never its text, which holds the private key and PSKs."""
    lines = _dump_fields(text)
    if not lines:
        raise ValueError("wg dump is empty")
    public_key, _ = _interface_line(lines[0])
    peers = {}
    for number, fields in enumerate(lines[1:], start=2):
        state = _peer_line(number, fields)
        peers[state.public_key] = state
    return public_key, peers


def _differences(actual: PeerState, spec: PeerSpec) -> tuple[str, ...]:
    reasons = []
    if actual.psk_digest != psk_digest(spec.psk):
        reasons.append("psk")
    if spec.endpoint and (not actual.endpoint or normalize_endpoint(actual.endpoint) != normalize_endpoint(spec.endpoint)):
        reasons.append("endpoint")
    wanted = {_network(spec.allowed_ip)} if spec.allowed_ip else set()
    if {_network(a) for a in actual.allowed_ips} != wanted:
        reasons.append("allowed-ips")
    return tuple(reasons)


def peer_changes(actual: dict[str, PeerState], desired: dict[str, PeerSpec]) -> list[PeerChange]:
    """Removals first, then adds and updates, each in public-key order. Pure.

    Two desired peers may not claim the same allowed IP: WireGuard gives an allowed IP to one
    peer only, so each apply would take it from the other and the two would never settle."""
    claimed: dict[str, str] = {}
    for key, spec in desired.items():
        if key != spec.public_key:
            raise ValueError(f"desired peer {short_key(key)} is keyed by another public key than its own")
        if spec.allowed_ip:
            network = _network(spec.allowed_ip)
            if network in claimed:
                raise ValueError(f"peers {short_key(claimed[network])} and {short_key(key)} both claim allowed IP {network}")
            claimed[network] = key
    changes = [PeerChange("remove", key) for key in sorted(actual) if key not in desired]
    for key in sorted(desired):
        spec = desired[key]
        if key not in actual:
            changes.append(PeerChange("add", key, spec))
        elif reasons := _differences(actual[key], spec):
            changes.append(PeerChange("update", key, spec, reasons))
    return changes


def _key_input(key: bytes) -> bytes:
    """A key as `wg` reads it from a file (here stdin): base64 and a newline."""
    return (wgkeys.encode(key) + "\n").encode("ascii")


def wireguard_go_pids(ifname: str, proc: str = "/proc") -> list[int]:
    """Live wireguard-go processes serving `ifname`, the daemon (the one that serves) first."""
    found = []
    for entry in os.listdir(proc):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc}/{entry}/cmdline", "rb") as handle:
                argv = [a for a in handle.read().split(b"\0") if a]  # empty for a zombie
            if not argv or os.path.basename(argv[0]) != b"wireguard-go" or argv[-1] != ifname.encode():
                continue
            with open(f"{proc}/{entry}/environ", "rb") as handle:
                daemon = b"WG_PROCESS_FOREGROUND=1" in handle.read().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        found.append((not daemon, int(entry)))
    return [pid for _, pid in sorted(found)]


def _wait_gone(ifname: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while wireguard_go_pids(ifname):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


class WireGuard:
    """The wg interface `ifname` in the namespace `run` runs commands in (the agent's own by default)."""

    def __init__(
        self,
        ifname: str,
        listen_port: int = 51820,
        mtu: int = 8920,
        run: Runner | None = None,
        implementation: str = "auto",
    ) -> None:
        """implementation: "auto" (the kernel module if it loads, else wireguard-go), "kernel" or "userspace"."""
        if not 0 < len(ifname) <= 15 or "/" in ifname or any(c.isspace() for c in ifname):
            raise ValueError(f"{ifname!r} is not an interface name of at most 15 characters")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {', '.join(IMPLEMENTATIONS)}")
        self.ifname = ifname
        self.listen_port = listen_port
        self.mtu = mtu
        self.implementation = implementation
        self.kernel: bool | None = None  # which one runs, once started here
        self._run: Runner = run or SubprocessRunner()

    @property
    def socket_path(self) -> str:
        return f"{SOCKET_DIR}/{self.ifname}.sock"

    def _check(self, purpose: str, argv: list[str], **kwargs) -> Result:
        return check(self._run, f"{self.ifname}: {purpose}", argv, **kwargs)

    # -- state ------------------------------------------------------------------------------------
    def running(self) -> bool:
        """The interface exists here and wireguard-go answers on its socket."""
        if self._run(["ip", "link", "show", "dev", self.ifname]).returncode != 0:
            return False
        return self._run(["wg", "show", self.ifname, "listen-port"]).returncode == 0

    def _dump(self) -> tuple[str, int, dict[str, PeerState]]:
        text = self._check("read WireGuard state", ["wg", "show", self.ifname, "dump"]).stdout
        lines = _dump_fields(text)
        if not lines:
            raise DataplaneError(f"{self.ifname}: `wg show {self.ifname} dump` printed nothing")
        try:
            public_key, listen_port = _interface_line(lines[0])
            _, peers = parse_dump(text)
        except ValueError as exc:
            raise DataplaneError(f"{self.ifname}: {exc}") from None
        return public_key, listen_port, peers

    def peers(self) -> dict[str, PeerState]:
        return self._dump()[2]

    def public_key(self) -> str:
        """The interface's public key ("" while it has no private key)."""
        return _none(self._check("read public key", ["wg", "show", self.ifname, "public-key"]).stdout.strip())

    def pid(self) -> int | None:
        """The wireguard-go process serving this interface, if one runs."""
        pids = wireguard_go_pids(self.ifname)
        return pids[0] if pids else None

    # -- changes ----------------------------------------------------------------------------------
    def _start(self) -> None:
        # A leftover interface without a live daemon (or one a kernel module made) would make
        # wireguard-go fail: it creates the TUN device itself.
        self._check("delete stale interface", ["ip", "link", "del", "dev", self.ifname], tolerate=("Cannot find device",))
        # The kernel module where there is one (it is faster); wireguard-go where there is none, as here.
        if self.implementation != "userspace":
            made = self._run(["ip", "link", "add", "dev", self.ifname, "type", "wireguard"])
            if made.returncode == 0:
                self.kernel = True
                return
            if self.implementation == "kernel":
                raise DataplaneError(f"{self.ifname}: no kernel WireGuard here: {' '.join(made.stderr.split())[:200]}")
        self.kernel = False
        # setsid: the daemon outlives the agent (and a ^C to the agent's process group), so an
        # agent restart does not drop tunnels.
        self._check("start wireguard-go", ["setsid", "wireguard-go", self.ifname], env=WIREGUARD_GO_ENV)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.running():
            if time.monotonic() > deadline:
                raise DataplaneError(f"{self.ifname}: wireguard-go started but did not answer within {START_TIMEOUT:g} s")
            time.sleep(0.05)

    def set_private_key(self, private_key: bytes) -> None:
        self._check("set private key", ["wg", "set", self.ifname, "private-key", "/dev/stdin"], input=_key_input(private_key))

    def _links(self) -> list[dict]:
        text = self._check("read addresses", ["ip", "-j", "addr", "show"]).stdout
        try:
            return json.loads(text or "[]")
        except json.JSONDecodeError:
            raise DataplaneError(f"{self.ifname}: `ip -j addr show` printed no JSON") from None

    def ensure_up(self, private_key: bytes, address: str) -> bool:
        """The interface running with this key, port, MTU and tunnel address, up, with the blackhole
        route for the tunnel prefix; True when wireguard-go had to be (re)started."""
        try:
            interface = ipaddress.ip_interface(address)
            wanted_public = wgkeys.encode(wgkeys.public_key(private_key))
        except ValueError as exc:  # KeyFormatError says "private key must be 32 bytes", nothing more
            raise DataplaneError(f"{self.ifname}: {exc}") from None
        started = False
        if not self.running():
            self._start()
            started = True
        public_key, listen_port, _ = self._dump()
        if public_key != wanted_public:
            self.set_private_key(private_key)
        if listen_port != self.listen_port:
            self._check("set listen port", ["wg", "set", self.ifname, "listen-port", str(self.listen_port)])

        links = self._links()
        for link in links:
            if link.get("ifname") == self.ifname:
                continue
            for info in link.get("addr_info", []):
                if info.get("local") == str(interface.ip):
                    # Then VXLAN packets would still find a source address when wg is gone, and
                    # the kernel would send them, with the VM's frame in clear, by the underlay.
                    raise DataplaneError(
                        f"{self.ifname}: tunnel address {interface.ip} is also on {link.get('ifname')}: "
                        "it must live on the WireGuard interface alone (fail-closed)"
                    )
        own = next((link for link in links if link.get("ifname") == self.ifname), None)
        if own is None:
            raise DataplaneError(f"{self.ifname}: interface vanished while being configured")
        if own.get("mtu") != self.mtu:
            self._check("set MTU", ["ip", "link", "set", "dev", self.ifname, "mtu", str(self.mtu)])
        present = False
        for info in own.get("addr_info", []):
            if info.get("family") != ("inet" if interface.version == 4 else "inet6") or info.get("scope") == "link":
                continue
            if info.get("local") == str(interface.ip) and info.get("prefixlen") == interface.network.prefixlen:
                present = True
            else:
                stale = f"{info.get('local')}/{info.get('prefixlen')}"
                self._check("remove old tunnel address", ["ip", "addr", "del", stale, "dev", self.ifname])
        if not present:
            self._check("set tunnel address", ["ip", "addr", "replace", str(interface), "dev", self.ifname])
        if "UP" not in own.get("flags", []):
            self._check("bring link up", ["ip", "link", "set", "dev", self.ifname, "up"])
        self._check(
            "add blackhole route for the tunnel prefix",
            ["ip", "route", "replace", "blackhole", str(interface.network), "metric", str(BLACKHOLE_METRIC)],
        )
        return started

    def apply_peers(self, desired: dict[str, PeerSpec]) -> list[str]:
        """Bring the peers to `desired`; the change lines made, with fingerprints only."""
        try:
            changes = peer_changes(self.peers(), desired)
        except ValueError as exc:
            raise DataplaneError(f"{self.ifname}: {exc}") from None
        for change in changes:
            if change.spec is None:
                self._check(
                    f"remove peer {short_key(change.public_key)}", ["wg", "set", self.ifname, "peer", change.public_key, "remove"]
                )
                continue
            argv = ["wg", "set", self.ifname, "peer", change.public_key, "preshared-key", "/dev/stdin"]
            if change.spec.endpoint:
                argv += ["endpoint", change.spec.endpoint]
            argv += ["allowed-ips", change.spec.allowed_ip]
            self._check(f"{change.action} peer {short_key(change.public_key)}", argv, input=_key_input(change.spec.psk))
        return [str(change) for change in changes]

    def kick(self, tunnel_ips: list[str]) -> None:
        """Start a handshake with these peers now: one ping to each through the tunnel (its answer
        does not matter). After a private key changes, the peers' own attempts may have been made
        before the switch and failed, and WireGuard would retry only after 5 s; ours succeeds at
        once, since the peers already hold our new public key."""
        for ip in tunnel_ips:
            self._run(["ping", "-c", "1", "-W", "0.05", "-q", ip], timeout=2.0)
    def stop(self) -> None:
        """Delete the interface; wireguard-go exits with it (and is killed if it does not)."""
        deleted = self._check("delete interface", ["ip", "link", "del", "dev", self.ifname], tolerate=("Cannot find device",))
        # Only a daemon whose interface was here is ours to kill: the name may serve another namespace.
        if deleted.returncode == 0 and not _wait_gone(self.ifname, STOP_TIMEOUT):
            for pid in wireguard_go_pids(self.ifname):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _wait_gone(self.ifname, STOP_TIMEOUT)
        if self.pid() is None and os.path.exists(self.socket_path):
            # A killed wireguard-go leaves its socket; nobody else may own this name (it is ours).
            try:
                os.unlink(self.socket_path)
            except FileNotFoundError:
                pass
