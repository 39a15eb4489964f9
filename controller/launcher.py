"""`goldilocks-controller`: start ryu-manager with the Goldilocks apps and our flags."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys

from controller import settings

APPS = ["controller.app"]
# The exit status of a refusal to start on damaged or missing state: a service manager can tell it
# from a crash and not restart in a loop (systemd: RestartPreventExitStatus=3).
EXIT_STATE = 3
LOG_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def patch_eventlet() -> None:
    """Ryu 4.34 imports eventlet.wsgi.ALREADY_HANDLED, which eventlet >= 0.33.3 dropped. Setting it
    back (only when missing) before Ryu is imported makes the WSGI layer work; site-packages stay
    untouched. (In the project's venv the .pth hook of controller/eventlet_compat.py already does it.)"""
    import eventlet.wsgi

    from controller import eventlet_compat

    eventlet_compat.patch(eventlet.wsgi)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="goldilocks-controller", description="Goldilocks SDN security controller")
    parser.add_argument("--of-port", type=int, default=6653, help="OpenFlow listen port (default 6653)")
    parser.add_argument("--of-host", default="0.0.0.0", help="OpenFlow listen address (default all)")
    parser.add_argument("--rest-port", type=int, default=8080, help="REST listen port (default 8080)")
    parser.add_argument("--rest-host", default="127.0.0.1", help="REST listen address (default 127.0.0.1)")
    parser.add_argument("--state-dir", default="/var/lib/goldilocks", help="SQLite state and keys (default /var/lib/goldilocks)")
    parser.add_argument("--log-level", default="info", choices=sorted(LOG_LEVELS), help="log level (default info)")
    parser.add_argument(
        "--ryu-app", action="append", default=[], metavar="MODULE", dest="ryu_apps",
        help="another Ryu app to run beside Goldilocks, as ryu-manager would (repeatable), e.g. ryu.app.ofctl_rest",
    )  # fmt: skip
    parser.add_argument("--lldp-interval", type=float, default=1.0, help="seconds between LLDP probes (default 1)")
    parser.add_argument(
        "--arp-ahead-max",
        type=int,
        default=settings.ARP_AHEAD_MAX,
        metavar="HOSTS",
        help="while the data centre has at most HOSTS hosts and host-facing ports, every hypervisor answers ARP for "
        f"every host ahead of time; above, for its VMs' rule peers and the addresses its VMs asked for "
        f"(default {settings.ARP_AHEAD_MAX})",
    )
    parser.add_argument(
        "--inventory",
        metavar="FILE",
        help="JSON or YAML file of VMs upserted into the inventory at start (see docs/api.md); a bad file stops the start",
    )
    parser.add_argument(
        "--ovsdb-inventory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="read VMs that OVS publishes in Interface external_ids (vm-id, attached-mac, goldilocks-labels; "
        "see docs/api.md). Default: on when ovs-vsctl is installed",
    )
    agents = parser.add_argument_group("hypervisor agents and encryption (docs/agent-protocol.md)")
    agents.add_argument("--agent-port", type=int, default=6654, help="TLS port agents connect to (default 6654; 0: no listener)")
    agents.add_argument("--agent-host", default="0.0.0.0", help="agent listen address (default all)")
    agents.add_argument(
        "--tunnel-network",
        default="100.127.0.0/16",
        help="IPv4 network the agents' WireGuard addresses come from (default 100.127.0.0/16)",
    )
    agents.add_argument(
        "--psk-rotation",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="rotate every tunnel pair's pre-shared key this often (default 3600; 0: only POST /v1/keys/rotate)",
    )
    agents.add_argument(
        "--identity-rotation",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="rotate every agent's WireGuard key pair this often (default 86400; 0: only on demand)",
    )
    alerts = parser.add_argument_group("alerts from an external IDS (POST /v1/alerts)")
    alerts.add_argument(
        "--alert-quarantine-severity",
        choices=["low", "medium", "high", "critical", "none"],
        default="high",
        help="alerts of this severity or worse count toward quarantining their VM (default high; none: never)",
    )
    alerts.add_argument(
        "--alert-quarantine-count", type=int, default=1, metavar="N", help="how many such alerts quarantine (default 1)"
    )
    alerts.add_argument(
        "--alert-window", type=float, default=300.0, metavar="SECONDS", help="within how long (default 300)"
    )
    spoofing = parser.add_argument_group("port security: a managed VM sending as someone else")
    for kind, default in (("mac-spoofing", "quarantine"), ("ip-spoofing", "alert"), ("arp-spoofing", "quarantine")):
        spoofing.add_argument(
            f"--{kind}",
            choices=["alert", "quarantine"],
            default=default,
            help=f"what {kind.replace('-', ' ')} leads to (default {default}; the frame is dropped either way)",
        )
    api = parser.add_argument_group("REST API sign-ins and the audit log (docs/api.md)")
    api.add_argument(
        "--auth-failure-burst",
        type=int,
        default=settings.FAILURE_BURST,
        metavar="N",
        help=f"failed sign-ins a client address may make at once before its requests get 429 (default {settings.FAILURE_BURST})",
    )
    api.add_argument(
        "--auth-failure-rate",
        type=float,
        default=settings.FAILURE_RATE,
        metavar="PER_SECOND",
        help=f"failed sign-ins forgiven per second after that (default {settings.FAILURE_RATE:g})",
    )
    api.add_argument(
        "--audit-retention",
        type=float,
        default=365.0,
        metavar="DAYS",
        help="purge audit entries older than this (default 365; 0: keep them forever)",
    )
    parser.add_argument(
        "--reset-admin-token",
        action="store_true",
        help="issue a new token named 'admin' and rewrite <state-dir>/admin.token (the old admin token stops working)",
    )
    args = parser.parse_args(argv)
    for port_flag in ("of_port", "rest_port"):
        if not 0 < getattr(args, port_flag) < 65536:
            parser.error(f"--{port_flag.replace('_', '-')} must be between 1 and 65535")
    if args.lldp_interval <= 0:
        parser.error("--lldp-interval must be positive")
    if args.arp_ahead_max < 0:
        parser.error("--arp-ahead-max must be 0 or more")
    if not 0 <= args.agent_port < 65536:
        parser.error("--agent-port must be between 0 and 65535")
    for flag in ("psk_rotation", "identity_rotation"):
        if not 0 <= getattr(args, flag) < float("inf"):
            parser.error(f"--{flag.replace('_', '-')} must be a number of seconds >= 0")
    try:
        network = ipaddress.IPv4Network(args.tunnel_network)
    except ValueError as exc:
        parser.error(f"--tunnel-network: {exc}")
    if network.num_addresses < 4:
        parser.error("--tunnel-network is too small for even one pair of agents")
    if args.alert_quarantine_count < 1:
        parser.error("--alert-quarantine-count must be at least 1")
    if not 0 < args.alert_window < float("inf"):
        parser.error("--alert-window must be a positive number of seconds")
    if args.auth_failure_burst < 1:
        parser.error("--auth-failure-burst must be at least 1")
    if not 0 < args.auth_failure_rate < float("inf"):
        parser.error("--auth-failure-rate must be a positive number of failures per second")
    if not 0 <= args.audit_retention < float("inf"):
        parser.error("--audit-retention must be a number of days >= 0")
    check_state(args.state_dir)
    for app in args.ryu_apps:
        check_ryu_app(parser, app)
    if args.inventory:
        check_inventory(parser, args)
    return args


def check_state(state_dir: str) -> None:
    """Refuse to start, in one line and with exit status EXIT_STATE, on a state dir that would
    lose something (controller/state_check.py). Done before Ryu starts and before anything writes."""
    from controller import state_check
    from controller.store import StateError

    try:
        state_check.check(state_dir)
    except StateError as exc:
        print(f"goldilocks-controller: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_STATE) from None


def check_inventory(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse to start, naming the file and the field, if the inventory file would not load onto
    the stored state. Done before Ryu starts, so the message is all the user sees."""
    from controller import inventory_file
    from controller.store import StateError, Store

    try:
        store = Store(args.state_dir)
    except StateError as exc:
        parser.error(str(exc))
    try:
        inventory_file.check(args.inventory, store)
    except inventory_file.InventoryFileError as exc:
        parser.error(str(exc))
    finally:
        store.close()


def check_ryu_app(parser: argparse.ArgumentParser, app: str) -> None:
    """A clear error before Ryu starts, rather than its traceback after."""
    import importlib.util

    try:
        found = importlib.util.find_spec(app) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        parser.error(f"--ryu-app {app}: no such Python module")
    if app in APPS:
        parser.error(f"--ryu-app {app}: Goldilocks runs it already")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["GOLDILOCKS_STATE_DIR"] = os.path.abspath(args.state_dir)
    os.environ["GOLDILOCKS_LLDP_INTERVAL"] = str(args.lldp_interval)
    os.environ["GOLDILOCKS_ARP_AHEAD_MAX"] = str(args.arp_ahead_max)
    # The flags decide: nothing left in the caller's environment re-applies a file or a reset.
    os.environ["GOLDILOCKS_INVENTORY"] = os.path.abspath(args.inventory) if args.inventory else ""
    os.environ["GOLDILOCKS_RESET_ADMIN_TOKEN"] = "1" if args.reset_admin_token else "0"
    ovsdb_inventory = settings.ovsdb_inventory_default() if args.ovsdb_inventory is None else args.ovsdb_inventory
    os.environ["GOLDILOCKS_OVSDB_INVENTORY"] = "1" if ovsdb_inventory else "0"
    os.environ["GOLDILOCKS_AGENT_HOST"] = args.agent_host
    os.environ["GOLDILOCKS_AGENT_PORT"] = str(args.agent_port)
    os.environ["GOLDILOCKS_TUNNEL_NETWORK"] = args.tunnel_network
    os.environ["GOLDILOCKS_PSK_ROTATION"] = str(args.psk_rotation)
    os.environ["GOLDILOCKS_IDENTITY_ROTATION"] = str(args.identity_rotation)
    os.environ["GOLDILOCKS_ALERT_QUARANTINE_SEVERITY"] = args.alert_quarantine_severity
    os.environ["GOLDILOCKS_ALERT_QUARANTINE_COUNT"] = str(args.alert_quarantine_count)
    os.environ["GOLDILOCKS_ALERT_WINDOW"] = str(args.alert_window)
    os.environ["GOLDILOCKS_AUTH_FAILURE_BURST"] = str(args.auth_failure_burst)
    os.environ["GOLDILOCKS_AUTH_FAILURE_RATE"] = str(args.auth_failure_rate)
    os.environ["GOLDILOCKS_AUDIT_RETENTION_DAYS"] = str(args.audit_retention)
    for kind in ("mac_spoofing", "ip_spoofing", "arp_spoofing"):
        os.environ[f"GOLDILOCKS_{kind.upper()}"] = getattr(args, kind)
    patch_eventlet()
    from ryu.cmd import manager

    level = LOG_LEVELS[args.log_level]
    ryu_args = [
        "--ofp-tcp-listen-port", str(args.of_port),
        "--ofp-listen-host", args.of_host,
        "--wsapi-port", str(args.rest_port),
        "--wsapi-host", args.rest_host,
        "--default-log-level", str(level),
        *APPS,
        *dict.fromkeys(args.ryu_apps),
    ]  # fmt: skip
    logging.getLogger("goldilocks").setLevel(level)
    sys.argv = ["goldilocks-controller", *ryu_args]
    manager.main(args=ryu_args)


if __name__ == "__main__":
    main()
