"""Packet captures on fabric ports, to prove what crosses the wire: tcpdump per interface into pcap
files, and a small pcap reader that counts WireGuard datagrams and looks for payload markers."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

CAPTURE_START_TIMEOUT = 5.0
WIREGUARD_PORT = 51820
VXLAN_PORT = 4789


@dataclass
class Capture:
    """What the captures saw, once stopped: every frame, by interface."""

    frames: dict[str, list[bytes]] = field(default_factory=dict)
    times: dict[str, list[float]] = field(default_factory=dict)  # capture time (epoch seconds) of each frame
    files: dict[str, Path] = field(default_factory=dict)

    def first_wireguard_data(self) -> float | None:
        """When the first WireGuard transport-data message (encrypted payload, not a handshake) was seen."""
        seen = [
            t
            for intf, frames in self.frames.items()
            for t, frame in zip(self.times[intf], frames, strict=True)
            if wireguard_message_type(frame) == 4
        ]
        return min(seen) if seen else None

    def all_frames(self) -> Iterator[tuple[str, bytes]]:
        for intf, frames in self.frames.items():
            for frame in frames:
                yield intf, frame

    def interfaces_with(self, marker: bytes) -> list[str]:
        """Interfaces on which some frame carries `marker` anywhere (headers or payload)."""
        return sorted({intf for intf, frame in self.all_frames() if marker in frame})

    def count(self, kind: str) -> int:
        """Frames of one kind: "wireguard" (UDP to or from 51820), "vxlan" (UDP 4789), "icmp"."""
        return sum(1 for _, frame in self.all_frames() if classify(frame) == kind)

    def kinds(self) -> dict[str, int]:
        seen: dict[str, int] = {}
        for _, frame in self.all_frames():
            kind = classify(frame)
            seen[kind] = seen.get(kind, 0) + 1
        return seen


def classify(frame: bytes) -> str:
    """A coarse name for a frame: wireguard, vxlan, udp, tcp, icmp, arp, ipv6, lldp or other."""
    if len(frame) < 14:
        return "other"
    eth_type = struct.unpack("!H", frame[12:14])[0]
    if eth_type == 0x0806:
        return "arp"
    if eth_type == 0x86DD:
        return "ipv6"
    if eth_type == 0x88CC:
        return "lldp"
    if eth_type != 0x0800 or len(frame) < 34:
        return "other"
    header_len = (frame[14] & 0x0F) * 4
    proto = frame[23]
    if proto == 1:
        return "icmp"
    if proto == 6:
        return "tcp"
    if proto == 17 and len(frame) >= 14 + header_len + 4:
        sport, dport = struct.unpack("!HH", frame[14 + header_len : 18 + header_len])
        if WIREGUARD_PORT in (sport, dport):
            return "wireguard"
        if VXLAN_PORT in (sport, dport):
            return "vxlan"
        return "udp"
    return "other"


def wireguard_message_type(frame: bytes) -> int | None:
    """1-3 handshake and cookie messages, 4 transport data; None when the frame is not WireGuard."""
    if classify(frame) != "wireguard":
        return None
    payload = 14 + (frame[14] & 0x0F) * 4 + 8
    return frame[payload] if len(frame) > payload else None


def read_pcap(path: Path) -> list[tuple[float, bytes]]:
    """(capture time, frame) of every frame of a classic pcap file (what tcpdump -w writes), in order."""
    data = path.read_bytes()
    if len(data) < 24:
        return []
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nanoseconds = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    frames, offset = [], 24
    while offset + 16 <= len(data):
        seconds, fraction, caplen, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        offset += 16
        frames.append((seconds + fraction / (1e9 if nanoseconds else 1e6), data[offset : offset + caplen]))
        offset += caplen
    return frames


@contextmanager
def capturing(interfaces: Iterable[str], netns_pid: int | None = None) -> Iterator[Capture]:
    """Capture every frame on these interfaces (in our namespace, or that of process `netns_pid`)
    while the block runs; the Capture is filled in when it ends. tcpdump is always stopped."""
    capture = Capture()
    directory = tempfile.TemporaryDirectory(prefix="goldilocks-capture-")
    procs: dict[str, subprocess.Popen] = {}
    prefix = ["nsenter", f"--net=/proc/{netns_pid}/ns/net", "--"] if netns_pid else []
    try:
        for intf in interfaces:
            path = Path(directory.name, f"{intf}.pcap")
            capture.files[intf] = path
            procs[intf] = subprocess.Popen(
                [*prefix, "tcpdump", "-i", intf, "-w", str(path), "-U", "-s", "0", "-n", "--immediate-mode"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                start_new_session=True,
            )
        _wait_listening(procs)
        yield capture
        time.sleep(0.3)  # the last frames of the block reach the capture
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGINT)
        for proc in procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)
            if proc.stderr is not None:
                proc.stderr.close()
        for intf, path in capture.files.items():
            read = read_pcap(path) if path.exists() else []
            capture.times[intf] = [t for t, _ in read]
            capture.frames[intf] = [frame for _, frame in read]
        capture.files = {}
        directory.cleanup()


def _wait_listening(procs: dict[str, subprocess.Popen]) -> None:
    """tcpdump says "listening on" on stderr once it captures; a capture started late proves nothing."""
    deadline = time.monotonic() + CAPTURE_START_TIMEOUT
    for intf, proc in procs.items():
        line = b""
        os.set_blocking(proc.stderr.fileno(), False)
        while b"listening on" not in line:
            if proc.poll() is not None:
                raise RuntimeError(f"tcpdump on {intf} exited: {(line + (proc.stderr.read() or b'')).decode(errors='replace')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"tcpdump on {intf} did not start capturing in {CAPTURE_START_TIMEOUT} s")
            chunk = proc.stderr.read()
            if chunk:
                line += chunk
            else:
                time.sleep(0.02)


def excerpt(path_frames: list[bytes], limit: int = 6) -> list[str]:
    """A short, readable summary of some frames: protocol and size (for the demo)."""
    lines = []
    for frame in path_frames[:limit]:
        kind = classify(frame)
        detail = ""
        if len(frame) >= 34 and struct.unpack("!H", frame[12:14])[0] == 0x0800:
            src, dst = frame[26:30], frame[30:34]
            detail = f" {'.'.join(map(str, src))} > {'.'.join(map(str, dst))}"
        lines.append(f"{kind:9s}{detail} length {len(frame)}")
    return lines
