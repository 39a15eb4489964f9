"""A TCP listener and connect probe to run inside Mininet hosts (no netcat on the image).

    python -m mininet_scenarios.tcp_probe listen PORT [PORT ...]   # accept and close, forever
    python -m mininet_scenarios.tcp_probe connect IP PORT [TIMEOUT] # prints OPEN or CLOSED
    python -m mininet_scenarios.tcp_probe udp IP PORT HEX [COUNT]   # sends COUNT datagrams carrying HEX
"""

from __future__ import annotations

import selectors
import socket
import sys


def listen(ports: list[int]) -> None:
    selector = selectors.DefaultSelector()
    for port in ports:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("0.0.0.0", port))
        server.listen(64)
        selector.register(server, selectors.EVENT_READ)
    print("LISTENING", flush=True)
    while True:
        for key, _ in selector.select():
            conn, _ = key.fileobj.accept()
            conn.close()


def connect(ip: str, port: int, timeout: float) -> bool:
    try:
        with socket.create_connection((ip, port), timeout=timeout):
            return True
    except OSError:
        return False


def main(argv: list[str]) -> int:
    if argv[:1] == ["listen"]:
        listen([int(p) for p in argv[1:]])
        return 0
    if argv[:1] == ["connect"] and len(argv) in (3, 4):
        is_open = connect(argv[1], int(argv[2]), float(argv[3]) if len(argv) == 4 else 1.0)
        print("OPEN" if is_open else "CLOSED")
        return 0
    if argv[:1] == ["udp"] and len(argv) in (4, 5):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for _ in range(int(argv[4]) if len(argv) == 5 else 1):
                sock.sendto(bytes.fromhex(argv[3]), (argv[1], int(argv[2])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
