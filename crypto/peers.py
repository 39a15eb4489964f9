"""The desired WireGuard peers and tunnel ports of every agent, computed like desired flows: a pure
function of the enrolled agents, the hypervisor pairs that need a tunnel, and each pair's key."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from apps.steering import tunnel_port_name

DEFAULT_TUNNEL_NETWORK = "100.127.0.0/16"  # the agents' WireGuard addresses; never routed anywhere else


class TunnelAddressError(ValueError):
    """An agent index does not fit in the tunnel network."""


@dataclass(frozen=True)
class AgentInfo:
    """What an agent told us in its hello, and the index we gave it."""

    hypervisor: str
    index: int
    public_key: str  # base64 WireGuard public key
    listen_port: int
    bridge: str
    underlay_ip: str
    underlay_mac: str
    underlay_port: str

    def to_json(self) -> dict:
        return {
            "hypervisor": self.hypervisor,
            "index": self.index,
            "public_key": self.public_key,
            "listen_port": self.listen_port,
            "bridge": self.bridge,
            "underlay_ip": self.underlay_ip,
            "underlay_mac": self.underlay_mac,
            "underlay_port": self.underlay_port,
        }

    @classmethod
    def from_json(cls, doc: Mapping) -> AgentInfo:
        return cls(**{k: doc[k] for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class PairKey:
    """One hypervisor pair's tunnel: its VNI and its current pre-shared key (never shown)."""

    a: str
    b: str
    vni: int
    psk: bytes = field(repr=False)

    @property
    def ends(self) -> frozenset[str]:
        return frozenset((self.a, self.b))


@dataclass(frozen=True)
class PeerConfig:
    """One peer of one agent, as the `config` message carries it (the controller builds it, the
    agent checks it: agent/desired.py). `psk` stays out of repr so no log or traceback shows it."""

    peer: str
    public_key: str
    psk: bytes = field(repr=False)
    endpoint: str
    tunnel_ip: str
    vni: int
    port: str

    def to_message(self) -> dict:
        return {
            "peer": self.peer,
            "public_key": self.public_key,
            "psk": self.psk,
            "endpoint": self.endpoint,
            "tunnel_ip": self.tunnel_ip,
            "vni": self.vni,
            "port": self.port,
        }


def tunnel_address(network: ipaddress.IPv4Network, index: int) -> ipaddress.IPv4Address:
    """Agent `index`'s WireGuard address: the index-th address of the tunnel network."""
    if not 1 <= index < network.num_addresses - 1:
        raise TunnelAddressError(f"agent index {index} does not fit in the tunnel network {network}")
    return network[index]


def tunnel_interface_address(network: ipaddress.IPv4Network, index: int) -> str:
    """The address the agent puts on its WireGuard interface, with the network's prefix length."""
    return f"{tunnel_address(network, index)}/{network.prefixlen}"


def desired_configs(
    agents: Mapping[str, AgentInfo], pairs: Iterable[PairKey], network: ipaddress.IPv4Network
) -> dict[str, tuple[PeerConfig, ...]]:
    """Every agent's peers: one per pair it belongs to whose other end is an agent we know. An agent
    with no pairs gets an empty set (its tunnels are torn down)."""
    configs: dict[str, list[PeerConfig]] = {name: [] for name in agents}
    for pair in pairs:
        if pair.a not in agents or pair.b not in agents:
            continue
        for own, other in ((agents[pair.a], agents[pair.b]), (agents[pair.b], agents[pair.a])):
            configs[own.hypervisor].append(
                PeerConfig(
                    peer=other.hypervisor,
                    public_key=other.public_key,
                    psk=pair.psk,
                    endpoint=f"{other.underlay_ip}:{other.listen_port}",
                    tunnel_ip=str(tunnel_address(network, other.index)),
                    vni=pair.vni,
                    port=tunnel_port_name(own.index, other.index),
                )
            )
    return {name: tuple(sorted(peers, key=lambda p: p.peer)) for name, peers in configs.items()}
