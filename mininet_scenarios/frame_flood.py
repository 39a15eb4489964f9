"""Send a bounded burst of Ethernet frames with made-up source MACs out of an interface.

    python -m mininet_scenarios.frame_flood IFACE COUNT SECONDS

For tests of the controller's packet-in protection, inside a Mininet host's namespace only.
Stops after COUNT frames or SECONDS, whichever comes first; prints how many were sent."""

from __future__ import annotations

import os
import socket
import struct
import sys
import time


def flood(interface: str, count: int, seconds: float) -> int:
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    sock.bind((interface, 0))
    deadline = time.monotonic() + seconds
    payload = b"\x00" * 46
    sent = 0
    try:
        while sent < count and time.monotonic() < deadline:
            src = b"\x02" + os.urandom(5)  # locally administered unicast
            frame = b"\xff" * 6 + src + struct.pack("!H", 0x88B5) + payload  # local experimental ethertype
            sock.send(frame)
            sent += 1
    finally:
        sock.close()
    return sent


if __name__ == "__main__":
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    print(flood(sys.argv[1], int(sys.argv[2]), float(sys.argv[3])))
