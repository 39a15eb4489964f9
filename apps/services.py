"""Services in rules: `tcp/5432`, `tcp/8000-8100`, `udp/53`, `tcp`, `icmp`, `any`, compiled to OpenFlow matches."""

from __future__ import annotations

from dataclasses import dataclass

IP_PROTO = {"icmp": 1, "tcp": 6, "udp": 17}
IP6_PROTO = {"icmp": 58, "tcp": 6, "udp": 17}
ETH_TYPE_IPV4 = 0x0800
PORT_FIELD = {"tcp": "tcp_dst", "udp": "udp_dst"}
REPLY_PORT_FIELD = {"tcp": "tcp_src", "udp": "udp_src"}  # a reply comes from the service's port


class ServiceError(ValueError):
    """A service string that cannot be parsed; the message names it."""


@dataclass(frozen=True)
class Service:
    """A protocol (None for any) and an inclusive destination port range (None for all ports)."""

    proto: str | None
    low: int | None = None
    high: int | None = None

    def __str__(self) -> str:
        if self.proto is None:
            return "any"
        if self.low is None:
            return self.proto
        return f"{self.proto}/{self.low}" if self.low == self.high else f"{self.proto}/{self.low}-{self.high}"

    def matches(self, proto: str | None, dport: int | None) -> bool:
        """Does a packet with this protocol and destination port fall under the service?"""
        if self.proto is None:
            return True
        if proto != self.proto:
            return False
        if self.low is None:
            return True
        return dport is not None and self.low <= dport <= self.high

    def overlaps(self, other: Service) -> bool:
        """Could one packet fall under both services?"""
        if self.proto is None or other.proto is None:
            return True
        if self.proto != other.proto:
            return False
        if self.low is None or other.low is None:
            return True
        return self.low <= other.high and other.low <= self.high

    def of_matches(self, eth_type: int = ETH_TYPE_IPV4, reply: bool = False) -> list[dict]:
        """OpenFlow match fragments (to AND with an IPv4 or IPv6 match) covering exactly this
        service; `icmp` means ICMPv6 for IPv6. With `reply`, the frames a server sends back: the
        port range is their source port."""
        if self.proto is None:
            return [{}]
        base = {"ip_proto": (IP_PROTO if eth_type == ETH_TYPE_IPV4 else IP6_PROTO)[self.proto]}
        if self.low is None:
            return [base]
        field = (REPLY_PORT_FIELD if reply else PORT_FIELD)[self.proto]
        prefixes = port_range_masks(self.low, self.high)
        return [{**base, field: (value if mask == 0xFFFF else (value, mask))} for value, mask in prefixes]


def port_range_masks(low: int, high: int) -> list[tuple[int, int]]:
    """Cover [low, high] exactly with the fewest (value, mask) prefixes of a 16-bit port."""
    result = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while size > high - low + 1:
            size >>= 1
        result.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return result


def _port(text: str, service: str) -> int:
    # ASCII digits only: str.isdigit() also takes '²' (int() then fails) and other scripts' digits
    # ('١٢' was stored as 12); and few enough of them for int() to convert.
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        raise ServiceError(f"service {service!r}: port {text!r} is not a number from 1 to 65535")
    port = int(text)
    if not 1 <= port <= 65535:
        raise ServiceError(f"service {service!r}: port {port} is outside 1-65535")
    return port


def parse_service(text: str) -> Service:
    if not isinstance(text, str):
        raise ServiceError(f"a service must be a string, not {type(text).__name__}")
    service = text.strip().lower()
    if service == "any":
        return Service(None)
    proto, slash, ports = service.partition("/")
    if proto not in IP_PROTO:
        raise ServiceError(f"service {text!r}: protocol must be tcp, udp, icmp or any")
    if not slash:
        return Service(proto)
    if proto == "icmp":
        raise ServiceError(f"service {text!r}: icmp takes no port")
    low_text, dash, high_text = ports.partition("-")
    low = _port(low_text, text)
    high = _port(high_text, text) if dash else low
    if high < low:
        raise ServiceError(f"service {text!r}: range {low}-{high} is backwards")
    return Service(proto, low, high)
