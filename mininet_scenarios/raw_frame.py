"""Send hand-made Ethernet frames out of an interface, from inside a Mininet host (no scapy on the image):
what a compromised VM would send to spoof another's MAC, IP or ARP answers.

    python -m mininet_scenarios.raw_frame IFACE HEXFRAME [COUNT]
"""

from __future__ import annotations

import socket
import struct
import sys
import time


def mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def ip_bytes(ip: str) -> bytes:
    return bytes(int(part) for part in ip.split("."))


def ethernet(dst: str, src: str, eth_type: int) -> bytes:
    return mac_bytes(dst) + mac_bytes(src) + struct.pack("!H", eth_type)


def udp_ipv4(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, payload: bytes = b"goldilocks") -> bytes:
    """A UDP datagram (port 9 to 9) in IPv4, checksums left zero (the receiver need not accept it)."""
    udp = struct.pack("!HHHH", 9, 9, 8 + len(payload), 0) + payload
    header = struct.pack("!BBHHHBBH", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0) + ip_bytes(src_ip) + ip_bytes(dst_ip)
    return ethernet(dst_mac, src_mac, 0x0800) + header + udp


def arp_reply(src_mac: str, claimed_ip: str, dst_mac: str, dst_ip: str) -> bytes:
    """An ARP reply saying `claimed_ip` is at `src_mac`."""
    body = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + mac_bytes(src_mac) + ip_bytes(claimed_ip)
    body += mac_bytes(dst_mac) + ip_bytes(dst_ip)
    return ethernet(dst_mac, src_mac, 0x0806) + body


def send(interface: str, frame: bytes, count: int = 3) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as raw:
        raw.bind((interface, 0))
        for _ in range(count):
            raw.send(frame)
            time.sleep(0.05)


if __name__ == "__main__":
    send(sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 3)
