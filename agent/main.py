"""`goldilocks-agent`: the command line of the hypervisor agent; checks every flag and file, then runs `Agent`."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from typing import NoReturn

from agent import ovsdb
from agent.channel import Channel, ChannelError
from agent.netns import in_namespace
from agent.runner import Agent, AgentError, AgentSettings, Dial, Enrollment, Underlay
from agent.state import AgentState, StateError
from crypto import ca

PROG = "goldilocks-agent"
DEFAULT_CONTROLLER_PORT = 6654
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
IP_TIMEOUT = 5.0


class UsageError(Exception):
    """A flag or a file named by a flag that cannot be used; the message names it."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, naming what is wrong (argparse would print the whole usage first)."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        description="Goldilocks hypervisor agent: enrolls with the controller, then keeps this hypervisor's WireGuard "
        "peers and VXLAN tunnel ports as the controller says. Stopping it leaves the data plane as it is.",
    )
    parser.add_argument(
        "--hypervisor",
        metavar="NAME",
        default=socket.gethostname().split(".")[0],
        help="this hypervisor's name, the common name of its certificate (default: the short host name)",
    )
    parser.add_argument("--bridge", metavar="BR", required=True, help="the hypervisor's OVS bridge (required)")
    parser.add_argument(
        "--underlay-ip",
        metavar="IP",
        required=True,
        help="this endpoint's underlay address; the interface holding it gives the MAC reported (required)",
    )
    parser.add_argument(
        "--underlay-port",
        metavar="NAME",
        required=True,
        help="the OVS port through which the endpoint's underlay traffic enters the bridge (required)",
    )
    parser.add_argument(
        "--controller",
        metavar="HOST:PORT",
        required=True,
        help=f"the controller's agent port (required; port default {DEFAULT_CONTROLLER_PORT})",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        default="/var/lib/goldilocks-agent",
        help="keys and certificates, mode 0700 (default /var/lib/goldilocks-agent)",
    )
    parser.add_argument("--token-file", metavar="FILE", help="the one-time enrollment token; needed only until enrolled")
    parser.add_argument(
        "--ca-file",
        metavar="FILE",
        help="the controller's CA certificate; needed for the first enrollment, then kept in the state dir",
    )
    parser.add_argument(
        "--wg-interface", metavar="NAME", default="glwg0", help="the WireGuard interface, unique on the machine (default glwg0)"
    )
    parser.add_argument("--listen-port", metavar="N", type=int, default=51820, help="WireGuard UDP port (default 51820)")
    parser.add_argument(
        "--wireguard",
        choices=("auto", "kernel", "userspace"),
        default="auto",
        help="the kernel module, wireguard-go, or (auto, the default) the kernel module where it loads",
    )
    parser.add_argument(
        "--endpoint-netns",
        metavar="PATH",
        help="network namespace holding the WireGuard interface and the underlay interface, when it is not our own "
        "(Mininet: the tunnel-endpoint host's /proc/PID/ns/net); the agent itself stays where it reaches the "
        "controller and OVSDB (default: our own)",
    )
    parser.add_argument(
        "--bridge-netns",
        metavar="PATH",
        help="network namespace holding the bridge (default: our own, the agent's process namespace)",
    )
    parser.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS), help="log level (default info)")
    return parser


# -- checking flags --------------------------------------------------------------------------------
def parse_controller(text: str) -> tuple[str, int]:
    """`host`, `host:port`, `[v6]:port` or a bare IPv6 address -> (host, port)."""
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise UsageError(f"--controller {text}: expected HOST:PORT or [IPv6]:PORT")
        port_text = rest[1:]
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""  # a name, an IPv4 address, or a bare IPv6 address
    try:
        port = int(port_text) if port_text else DEFAULT_CONTROLLER_PORT
    except ValueError:
        raise UsageError(f"--controller {text}: the port is not a number") from None
    if not host or not 0 < port < 65536:
        raise UsageError(f"--controller {text}: expected HOST:PORT with a port from 1 to 65535")
    return host, port


def underlay_interface(ip_json: str, address: str) -> tuple[str, str]:
    """(interface name, MAC) of the interface holding `address`, from `ip -json address show` output."""
    wanted = ipaddress.ip_address(address)
    try:
        links = json.loads(ip_json)
    except ValueError:
        raise UsageError("--underlay-ip: `ip -json address show` gave output that is not JSON") from None
    for link in links if isinstance(links, list) else []:
        for info in link.get("addr_info", []):
            try:
                if ipaddress.ip_address(info.get("local", "")) == wanted:
                    return link["ifname"], link.get("address", "")
            except ValueError:
                continue
    raise UsageError(f"--underlay-ip {address}: no interface in this network namespace holds this address")


def find_underlay(address: str, netns: str | None = None) -> tuple[str, str]:
    try:
        ipaddress.ip_address(address)
    except ValueError:
        raise UsageError(f"--underlay-ip {address}: not an IP address") from None
    argv = in_namespace(netns, ["ip", "-json", "address", "show"])
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=IP_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UsageError(f"--underlay-ip: cannot list interfaces with `ip`: {exc}") from None
    if result.returncode:
        raise UsageError(f"--underlay-ip: `ip address show` failed: {' '.join(result.stderr.split())}")
    return underlay_interface(result.stdout, address)


def read_flag_file(flag: str, path: str) -> str:
    try:
        with open(path, encoding="ascii") as file:
            text = file.read().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{flag} {path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    if not text:
        raise UsageError(f"{flag} {path}: the file is empty")
    return text


def check_args(args: argparse.Namespace) -> tuple[AgentSettings, AgentState, Enrollment | None, tuple[str, int]]:
    """Everything the flags name, checked and loaded; raises UsageError naming the first flag or file at fault."""
    controller = parse_controller(args.controller)
    if not 0 < args.listen_port < 65536:
        raise UsageError(f"--listen-port {args.listen_port}: must be between 1 and 65535")
    if not 1 <= len(args.hypervisor) <= ca.MAX_CN_LEN or not args.hypervisor.isprintable():
        raise UsageError(f"--hypervisor: must be 1 to {ca.MAX_CN_LEN} printable characters")
    for flag, path in (("--bridge-netns", args.bridge_netns), ("--endpoint-netns", args.endpoint_netns)):
        if path and not os.path.exists(path):
            raise UsageError(f"{flag} {path}: no such file")
    token = read_flag_file("--token-file", args.token_file) if args.token_file else None
    ca_pem = read_flag_file("--ca-file", args.ca_file) + "\n" if args.ca_file else None
    if ca_pem is not None:
        try:
            ca.ssl_client_context(ca_pem)
        except ca.CAError:
            raise UsageError(f"--ca-file {args.ca_file}: not a PEM CA certificate") from None
    try:
        state = AgentState(args.state_dir)
        if state.enrolled():
            identity = state.tls_identity()
            ca.ssl_client_context(identity.ca_pem, identity.cert_pem, identity.key_pem)
    except StateError as exc:
        raise UsageError(f"--state-dir: {exc}") from None
    except ca.CAError as exc:
        raise UsageError(f"--state-dir {args.state_dir}: the saved certificate, key or CA cannot be used: {exc}") from None
    enrollment = None
    if not state.enrolled():
        if token is None or ca_pem is None:
            raise UsageError(f"--state-dir {args.state_dir}: not enrolled yet; the first start needs --token-file and --ca-file")
        enrollment = Enrollment(token, ca_pem)
    _, mac = find_underlay(args.underlay_ip, args.endpoint_netns)
    settings = AgentSettings(
        hypervisor=args.hypervisor,
        bridge=args.bridge,
        underlay=Underlay(str(ipaddress.ip_address(args.underlay_ip)), mac, args.underlay_port),
        listen_port=args.listen_port,
    )
    return settings, state, enrollment, controller


def dialer(host: str, port: int) -> Dial:
    """Connections to the controller at host:port, with our certificate or (to enroll) without."""

    def dial(ca_pem: str, cert_pem: str | None, key_pem: str | None) -> Channel:
        try:
            context = ca.ssl_client_context(ca_pem, cert_pem, key_pem)
        except ca.CAError as exc:
            raise ChannelError(f"cannot set up TLS: {exc}") from None
        return Channel(host, port, context).connect()

    return dial


# -- running ---------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a flag argparse refused (its one line is printed)
        return exc.code if isinstance(exc.code, int) else 2
    logging.basicConfig(format=LOG_FORMAT, stream=sys.stderr)
    logging.getLogger("goldilocks.agent").setLevel(LOG_LEVELS[args.log_level])
    try:
        settings, state, enrollment, (host, port) = check_args(args)
    except UsageError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2

    from agent.netns import SubprocessRunner
    from agent.tunnel_ports import TunnelPorts
    from agent.wireguard import WireGuard

    endpoint = SubprocessRunner(args.endpoint_netns)
    bridge_netns = args.bridge_netns
    if args.endpoint_netns and not bridge_netns:
        # Tunnel ports are made in the endpoint's namespace, then moved to the bridge's: ours. An
        # absolute /proc path, since the commands that use it run inside the endpoint namespace.
        bridge_netns = f"/proc/{os.getpid()}/ns/net"
    agent = Agent(
        settings,
        state,
        WireGuard(args.wg_interface, listen_port=args.listen_port, run=endpoint, implementation=args.wireguard),
        TunnelPorts(args.bridge, bridge_netns=bridge_netns, run=endpoint),
        functools.partial(ovsdb.read_interfaces, args.bridge),
        dialer(host, port),
        enrollment=enrollment,
    )
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: agent.stop())
    try:
        return agent.run()
    except (AgentError, StateError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
