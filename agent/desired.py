"""The data plane a `config` message asks for, as plain specs: WireGuard peers and VXLAN tunnel ports.

Pure: a checked `Config` from the message, then the desired peers (keyed by public key) and tunnel
ports (keyed by port name) for our tunnel address. The same config always gives equal specs, so
applying it twice changes nothing. Errors name the peer and the field, never a key or a PSK.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass

from agent.tunnel_ports import TunnelPortSpec, check_spec
from agent.wireguard import PeerSpec, normalize_endpoint
from crypto.peers import PeerConfig

PSK_BYTES = 32
VNI_MAX = (1 << 24) - 1
IFNAMSIZ = 15  # the longest Linux interface name


class ConfigError(ValueError):
    """A config the agent cannot apply; the message names the peer and the field."""


@dataclass(frozen=True)
class Config:
    seq: int
    peers: tuple[PeerConfig, ...]


def _endpoint(peer: str, text: str) -> str:
    """`ip:port` or `[ipv6]:port`, normalised."""
    try:
        return normalize_endpoint(text)
    except ValueError:
        raise ConfigError(f"peer {peer}: endpoint is not ip:port") from None


def _peer(entry: Mapping) -> PeerConfig:
    name = entry["peer"]
    if len(entry["psk"]) != PSK_BYTES:
        raise ConfigError(f"peer {name}: psk is not {PSK_BYTES} bytes")
    try:
        tunnel_ip = str(ipaddress.ip_address(entry["tunnel_ip"]))
    except ValueError:
        raise ConfigError(f"peer {name}: tunnel_ip is not an IP address") from None
    if not 0 < entry["vni"] <= VNI_MAX:
        raise ConfigError(f"peer {name}: vni is not between 1 and {VNI_MAX}")
    port = entry["port"]
    if not 0 < len(port) <= IFNAMSIZ or "/" in port or any(c.isspace() for c in port):
        raise ConfigError(f"peer {name}: port is not an interface name of at most {IFNAMSIZ} characters")
    return PeerConfig(
        name, entry["public_key"], bytes(entry["psk"]), _endpoint(name, entry["endpoint"]), tunnel_ip, entry["vni"], port
    )


def parse_config(message: Mapping, address: str) -> Config:
    """A `config` message (already checked against the protocol schema) as a Config, for our tunnel
    address. Refuses peers that share a name, public key, tunnel IP, VNI or port (two of them could not
    both hold), and anything the peer and port specs would refuse: a refused config is refused here,
    once, and never reaches the data plane."""
    peers = tuple(_peer(entry) for entry in message["peers"])
    for attribute in ("peer", "public_key", "tunnel_ip", "vni", "port"):
        seen: set = set()
        for peer in peers:
            value = getattr(peer, attribute)
            if value in seen:
                shown = "a public key" if attribute == "public_key" else f"{attribute} {value}"
                raise ConfigError(f"peer {peer.peer}: {shown} is given to another peer too")
            seen.add(value)
    config = Config(message["seq"], tuple(sorted(peers, key=lambda p: p.peer)))
    try:
        desired_peers(config)
        for spec in desired_ports(config, address).values():
            check_spec(spec)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return config


def local_ip(address: str) -> str:
    """Our tunnel address without its prefix: `10.99.0.3/24` -> `10.99.0.3`."""
    return str(ipaddress.ip_interface(address).ip)


def desired_peers(config: Config) -> dict[str, PeerSpec]:
    """The WireGuard peers, by public key: each may send from its tunnel IP alone."""
    specs = {}
    for peer in config.peers:
        host = ipaddress.ip_address(peer.tunnel_ip)
        specs[peer.public_key] = PeerSpec(peer.public_key, peer.psk, peer.endpoint, f"{host}/{host.max_prefixlen}")
    return specs


def desired_ports(config: Config, address: str) -> dict[str, TunnelPortSpec]:
    """The VXLAN tunnel ports, by port name: from our tunnel address to each peer's."""
    ours = local_ip(address)
    return {peer.port: TunnelPortSpec(peer.port, peer.vni, ours, peer.tunnel_ip, peer.peer) for peer in config.peers}
