"""The `goldilocks` commands: each one calls the REST API and prints its answer (click)."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import click

from controller.cli import views
from controller.cli.client import ApiError, Client, CliError, segment
from controller.cli.connection import DEFAULT_TOKEN_FILE, DEFAULT_URL, Connection, SettingsError, resolve
from controller.cli.output import FORMATS, done, emit
from controller.cli.parsing import parse_duration, parse_label_changes, parse_labels, parse_since
from crypto.keystore import KeystoreError, write_secret_file

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
AUDIT_PAGE_MAX = 1000  # the API's largest page


class SettingsProblem(click.ClickException):
    """A config file, token file or URL that cannot be used: a usage error (exit 2)."""

    exit_code = 2


class ControllerProblem(click.ClickException):
    """The controller refused the request or could not be reached (exit 1)."""

    exit_code = 1


class Group(click.Group):
    """Turns the client's errors into click's, so each is one line on stderr with the right exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CliError as exc:
            raise ControllerProblem(exc.message) from None
        except SettingsError as exc:
            raise SettingsProblem(str(exc)) from None


@dataclass
class Session:
    """What the global options said; the connection is resolved on first use, so `--help` and
    `completion` work without a config file or a controller."""

    url: str | None
    token_file: str | None
    config: str | None
    timeout: float
    quiet: bool = False  # completion: no warnings in the middle of the user's command line
    _client: Client | None = field(default=None, repr=False)
    connection: Connection | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self.connection = resolve(self.url, self.token_file, self.config, os.environ)
            for warning in () if self.quiet else self.connection.warnings:
                click.echo(warning, err=True)
            self._client = Client(self.connection.url, self.connection.token, timeout=self.timeout,
                                  token_source=self.connection.token_source)  # fmt: skip
        return self._client

    def get(self, path: str, **query: Any) -> Any:
        return self.client.get(path, **query)

    def call(self, method: str, path: str, body: Any = None, **query: Any) -> Any:
        return self.client.call(method, path, body, query)

    def get_or_none(self, path: str) -> Any:
        """A document that may not exist (404): None then."""
        try:
            return self.get(path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise


pass_session = click.make_pass_decorator(Session)


def output_options(command: Callable) -> Callable:
    """-o/--output and --no-headers, on every command."""

    @click.option("-o", "--output", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
                  help="table for people; json or yaml: the API's answer as it is.")  # fmt: skip
    @click.option("--no-headers", is_flag=True, help="Tables without their header row.")
    @functools.wraps(command)
    def wrapper(*args, fmt: str, no_headers: bool, **kwargs):
        return command(*args, out=Out(fmt, not no_headers), **kwargs)

    return wrapper


@dataclass(frozen=True)
class Out:
    fmt: str
    headers: bool = True

    def emit(self, data: Any, make_views: Callable[[], list]) -> None:
        emit(data, self.fmt, make_views, self.headers)

    def done(self, message: str) -> None:
        done(message, self.fmt)


def bad_value(param: str, exc: ValueError) -> click.BadParameter:
    return click.BadParameter(str(exc), param_hint=param)


# -- dynamic completion: names from the API, quietly nothing when it cannot answer -----------------
def _completer(path: str, key: str, name_key: str) -> Callable:
    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
        root = ctx.find_root().params
        try:
            session = Session(root.get("url"), root.get("token_file"), root.get("config"), 2.0, quiet=True)
            names = [item[name_key] for item in session.get(path)[key]]
        except Exception:  # completion must never print a traceback into the shell
            return []
        return [n for n in names if isinstance(n, str) and n.startswith(incomplete)]

    return complete


complete_vms = _completer("/v1/vms", "vms", "name")
complete_rules = _completer("/v1/policies", "policies", "name")
complete_agents = _completer("/v1/agents", "agents", "hypervisor")
complete_quarantined = _completer("/v1/quarantine", "quarantine", "vm")
complete_tokens = _completer("/v1/tokens", "tokens", "name")
complete_switches = _completer("/v1/topology", "switches", "name")


# -- the root -----------------------------------------------------------------------------------------
@click.group(cls=Group, context_settings=CONTEXT)
@click.option("--url", metavar="URL", help=f"The controller's REST API. [env GOLDILOCKS_URL; default {DEFAULT_URL}]")
@click.option(
    "--token-file",
    metavar="FILE",
    help=f"File holding the API token. [env GOLDILOCKS_TOKEN (the value) or GOLDILOCKS_TOKEN_FILE; default {DEFAULT_TOKEN_FILE}]",
)
@click.option(
    "--config", metavar="FILE", help="Config file (YAML: url, token_file). [default $XDG_CONFIG_HOME/goldilocks/cli.yaml]"
)
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=10.0, show_default=True, metavar="SECONDS",
              help="How long to wait for each answer.")  # fmt: skip
@click.version_option(package_name="goldilocks", prog_name="goldilocks", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, url: str | None, token_file: str | None, config: str | None, timeout: float) -> None:
    """Drive a Goldilocks SDN security controller through its REST API.

    \b
    Examples:
      goldilocks status
      goldilocks vms set web1 --mac 02:00:00:00:00:01 --ip 10.0.0.1 --label tier=web
      goldilocks policy add web-to-db --from tier=web --to tier=db --service tcp/5432 --action encrypt
      goldilocks explain web1 db1 --proto tcp --port 5432

    \b
    The URL and token come from the flags, then GOLDILOCKS_URL and GOLDILOCKS_TOKEN (or
    GOLDILOCKS_TOKEN_FILE), then the config file, then the defaults. Exit status: 0 success,
    1 the controller refused the request or cannot be reached, 2 a usage error.
    """
    ctx.obj = Session(url, token_file, config, timeout)


# -- status and topology --------------------------------------------------------------------------------
@cli.command()
@output_options
@pass_session
def status(session: Session, out: Out) -> None:
    """One summary: health, switches, agents, tunnels up/down, rules, quarantined VMs."""
    health = session.get("/v1/health")
    doc = {
        "health": health,
        "switches": session.get("/v1/topology")["switches"],
        "agents": session.get("/v1/agents")["agents"],
        "tunnels": session.get("/v1/tunnels"),
        "policies": session.get("/v1/policies"),
        "quarantine": session.get("/v1/quarantine")["quarantine"],
    }
    out.emit(doc, lambda: views.status_views(doc, session.client.base_url, views.now_utc()))


@cli.command()
@output_options
@pass_session
def topology(session: Session, out: Out) -> None:
    """The learned topology: switches, links and hosts."""
    doc = session.get("/v1/topology")
    out.emit(doc, lambda: views.topology_views(doc))


@cli.command()
@click.argument("switch", shell_complete=complete_switches)
@output_options
@pass_session
def flows(session: Session, out: Out, switch: str) -> None:
    """The flow table the controller wants on SWITCH (a dpid in hex, or a bridge name), and the
    entries the switch refused."""
    dpid = switch
    if not re.fullmatch(r"[0-9a-fA-F]{16}", switch):  # a full dpid is one; anything shorter may be a name ("cafe")
        names = {s["name"]: s["dpid"] for s in session.get("/v1/topology")["switches"] if s["name"]}
        if switch in names:
            dpid = names[switch]
        elif not re.fullmatch(r"[0-9a-fA-F]{1,15}", switch):
            raise CliError(f"no switch named {switch!r} (known: {', '.join(sorted(names)) or 'none'})")
    doc = session.get(f"/v1/switches/{segment(dpid)}/flows")
    out.emit(doc, lambda: views.flow_views(doc))


# -- VMs ------------------------------------------------------------------------------------------------
@cli.group(cls=Group)
def vms() -> None:
    """The VM inventory: list, show, set, label, delete."""


def _switch_names(session: Session) -> dict[str, str]:
    return views.switch_names(session.get("/v1/topology"))


@vms.command("list")
@click.option("--unmanaged", is_flag=True, help="List the hosts the network learned whose MAC belongs to no VM instead.")
@output_options
@pass_session
def vms_list(session: Session, out: Out, unmanaged: bool) -> None:
    """Every VM, sorted by name (or the unmanaged hosts)."""
    if unmanaged:
        doc = session.get("/v1/vms", unmanaged=1)
        out.emit(doc, lambda: [views.unmanaged_table(doc["unmanaged"], _switch_names(session))])
        return
    doc = session.get("/v1/vms")

    def make() -> list:
        quarantined = {q["vm"] for q in session.get("/v1/quarantine")["quarantine"]}
        return [views.vm_table(doc["vms"], _switch_names(session), quarantined)]

    out.emit(doc, make)


@vms.command("show")
@click.argument("name", shell_complete=complete_vms)
@output_options
@pass_session
def vms_show(session: Session, out: Out, name: str) -> None:
    """One VM: its MACs, IPs, labels, where the network saw it, who wrote it, and its quarantine."""
    doc = session.get(f"/v1/vms/{segment(name)}")
    out.emit(doc, lambda: _vm_views(session, doc))


def _vm_views(session: Session, doc: dict) -> list:
    return [views.vm_pairs(doc, _switch_names(session), session.get_or_none(f"/v1/quarantine/{segment(doc['name'])}"),
                           views.now_utc())]  # fmt: skip


@vms.command("set")
@click.argument("name")
@click.option("--mac", "macs", multiple=True, required=True, metavar="MAC", help="A MAC of the VM (repeat for each NIC).")
@click.option("--ip", "ips", multiple=True, metavar="IPV4", help="An IPv4 address of the VM (repeatable).")
@click.option("--label", "-l", "labels", multiple=True, metavar="KEY=VALUE", help="A label (repeatable).")
@output_options
@pass_session
def vms_set(session: Session, out: Out, name: str, macs: tuple[str, ...], ips: tuple[str, ...], labels: tuple[str, ...]) -> None:
    """Create VM NAME, or replace it whole (PUT /v1/vms/NAME): what is not given is removed.

    The network supplies its location (hypervisor and port); use `vms label` to change only labels.
    """
    try:
        label_map = parse_labels(labels)
    except ValueError as exc:
        raise bad_value("--label", exc) from None
    body = {"macs": list(macs), "ips": list(ips), "labels": label_map}
    doc = session.call("PUT", f"/v1/vms/{segment(name)}", body)
    out.emit(doc, lambda: _vm_views(session, doc))


@vms.command("label")
@click.argument("name", shell_complete=complete_vms)
@click.argument("changes", nargs=-1, required=True, metavar="KEY=VALUE|KEY-...")
@output_options
@pass_session
def vms_label(session: Session, out: Out, name: str, changes: tuple[str, ...]) -> None:
    """Change some labels of VM NAME and keep the rest: KEY=VALUE sets one (KEY= an empty value),
    KEY- removes one.

    \b
    Example: goldilocks vms label web1 tier=frontend canary-
    """
    try:
        to_set, to_remove = parse_label_changes(changes)
    except ValueError as exc:
        raise bad_value("CHANGES", exc) from None
    body: dict[str, Any] = {}
    if to_set:
        body["set"] = to_set
    if to_remove:
        body["remove"] = to_remove
    doc = session.call("PATCH", f"/v1/vms/{segment(name)}/labels", body)
    out.emit(doc, lambda: _vm_views(session, doc))


@vms.command("delete")
@click.argument("name", shell_complete=complete_vms)
@output_options
@pass_session
def vms_delete(session: Session, out: Out, name: str) -> None:
    """Remove VM NAME from the inventory (its MACs become unmanaged hosts)."""
    session.call("DELETE", f"/v1/vms/{segment(name)}")
    out.done(f"VM {name} deleted")


# -- policy -----------------------------------------------------------------------------------------------
@cli.group(cls=Group)
def policy() -> None:
    """Ordered allow/deny/encrypt rules between label selectors, and the default action."""


@policy.command("list")
@output_options
@pass_session
def policy_list(session: Session, out: Out) -> None:
    """The rules in evaluation order (the first match wins), and the default action."""
    doc = session.get("/v1/policies")
    out.emit(doc, lambda: views.policy_views(doc))


@policy.command("show")
@click.argument("name", shell_complete=complete_rules)
@output_options
@pass_session
def policy_show(session: Session, out: Out, name: str) -> None:
    """One rule, with its position."""
    doc = session.get(f"/v1/policies/{segment(name)}")
    out.emit(doc, lambda: [views.rule_table([doc])])


@policy.command("add")
@click.argument("name")
@click.option(
    "--from",
    "src",
    required=True,
    metavar="SELECTOR",
    help="Who opens the connection: any, unmanaged, or labels (tier=web,env!=dev).",
)
@click.option("--to", "dst", required=True, metavar="SELECTOR", help="Who it goes to, as for --from.")
@click.option("--service", "services", multiple=True, metavar="SERVICE",
              help="tcp/443, tcp/8000-8100, udp/53, tcp, udp, icmp or any (repeatable). [default: any]")  # fmt: skip
@click.option("--action", required=True, type=click.Choice(["allow", "deny", "encrypt"]), help="What happens to a matching flow.")
@click.option(
    "--position", type=click.IntRange(min=0), metavar="N", help="Insert at position N (0 is evaluated first). [default: last]"
)
@output_options
@pass_session
def policy_add(session: Session, out: Out, name: str, src: str, dst: str, services: tuple[str, ...], action: str,
               position: int | None) -> None:  # fmt: skip
    """Add rule NAME (refused if a rule of that name exists)."""
    body: dict[str, Any] = {"name": name, "src": src, "dst": dst, "action": action}
    if services:
        body["services"] = list(services)
    doc = session.call("POST", "/v1/policies", body, position=position)
    out.emit(doc, lambda: [views.rule_table([doc])])


@policy.command("set")
@click.argument("name", shell_complete=complete_rules)
@click.option("--from", "src", required=True, metavar="SELECTOR", help="Who opens the connection, as for `policy add`.")
@click.option("--to", "dst", required=True, metavar="SELECTOR", help="Who it goes to.")
@click.option("--service", "services", multiple=True, metavar="SERVICE", help="As for `policy add` (repeatable). [default: any]")
@click.option("--action", required=True, type=click.Choice(["allow", "deny", "encrypt"]), help="What happens to a matching flow.")
@click.option(
    "--position", type=click.IntRange(min=0), metavar="N", help="Move it to position N. [default: where it is, or last]"
)
@output_options
@pass_session
def policy_set(
    session: Session, out: Out, name: str, src: str, dst: str, services: tuple[str, ...], action: str, position: int | None
) -> None:
    """Replace rule NAME in place (PUT), or create it at the end; --position moves it."""
    body: dict[str, Any] = {"name": name, "src": src, "dst": dst, "action": action}
    if services:
        body["services"] = list(services)
    doc = session.call("PUT", f"/v1/policies/{segment(name)}", body, position=position)
    out.emit(doc, lambda: [views.rule_table([doc])])


@policy.command("delete")
@click.argument("name", shell_complete=complete_rules)
@output_options
@pass_session
def policy_delete(session: Session, out: Out, name: str) -> None:
    """Delete rule NAME."""
    session.call("DELETE", f"/v1/policies/{segment(name)}")
    out.done(f"rule {name} deleted")


@policy.command("order")
@click.argument("names", nargs=-1, shell_complete=complete_rules)
@output_options
@pass_session
def policy_order(session: Session, out: Out, names: tuple[str, ...]) -> None:
    """Show the rules' order, or set it: NAMES must name every rule exactly once, first evaluated first."""
    if names:
        doc = session.call("PUT", "/v1/policies/order", {"order": list(names)})
    else:
        doc = session.get("/v1/policies/order")
    out.emit(doc, lambda: [views.Table(["POS", "NAME"], [[str(i), n] for i, n in enumerate(doc["order"])], empty="(no rules)")])


@policy.command("default")
@click.argument("action", required=False, type=click.Choice(["allow", "deny"]))
@output_options
@pass_session
def policy_default(session: Session, out: Out, action: str | None) -> None:
    """Show the default action (for flows no rule matches), or set it to ACTION."""
    if action:
        doc = session.call("PUT", "/v1/policies/default", {"default_action": action})
    else:
        doc = session.get("/v1/policies/default")
    out.emit(doc, lambda: [f"default action: {doc['default_action']}"])


# -- explain -------------------------------------------------------------------------------------------------
@cli.command(short_help="What happens to a flow from SRC to DST, and why.")
@click.argument("src", shell_complete=complete_vms)
@click.argument("dst", shell_complete=complete_vms)
@click.option(
    "--proto", type=click.Choice(["tcp", "udp", "icmp"]), help="The flow's protocol. [default: only rules for any service match]"
)
@click.option("--port", type=click.IntRange(1, 65535), metavar="N", help="Destination port (needs --proto tcp or udp).")
@output_options
@pass_session
def explain(session: Session, out: Out, src: str, dst: str, proto: str | None, port: int | None) -> None:
    """What happens to a flow from SRC to DST, and why: the deciding rule, quarantine, encryption.

    SRC and DST are VM names, or MAC or IPv4 addresses (of VMs or unmanaged hosts).
    """
    doc = session.get("/v1/explain", src=src, dst=dst, proto=proto, dport=port)
    out.emit(doc, lambda: views.explain_views(doc))


# -- quarantine --------------------------------------------------------------------------------------------
@cli.command(short_help="Quarantine VM (--reason ...), or list the VMs in quarantine.")
@click.argument("vm", required=False, shell_complete=complete_vms)
@click.option("--reason", metavar="TEXT", help="Why (required to quarantine; kept in the record and the audit log).")
@click.option("--mode", type=click.Choice(["isolate", "remediate"]), default="isolate", show_default=True,
              help="isolate: nothing in or out. remediate: only the allow-list (see `goldilocks remediation`).")  # fmt: skip
@click.option("--mirror-to", metavar="VM", shell_complete=complete_vms, help="An analyzer VM that gets a copy of every frame.")
@output_options
@pass_session
def quarantine(session: Session, out: Out, vm: str | None, reason: str | None, mode: str, mirror_to: str | None) -> None:
    """Cut VM off at once, wherever it is: `quarantine VM --reason TEXT`. Without VM, list the VMs in
    quarantine. `release VM` lets it back."""
    if vm is None:
        if reason is not None or mirror_to is not None:
            raise click.UsageError("--reason and --mirror-to need a VM to quarantine")
        doc = session.get("/v1/quarantine")
        out.emit(doc, lambda: [views.quarantine_table(doc["quarantine"], views.now_utc())])
        return
    if not reason:
        raise click.UsageError("--reason is required to quarantine a VM")
    body: dict[str, Any] = {"vm": vm, "reason": reason, "mode": mode}
    if mirror_to:
        body["mirror_to"] = mirror_to
    doc = session.call("POST", "/v1/quarantine", body)
    out.emit(doc, lambda: [views.quarantine_table([doc], views.now_utc())])


@cli.command()
@click.argument("vm", shell_complete=complete_quarantined)
@output_options
@pass_session
def release(session: Session, out: Out, vm: str) -> None:
    """Release VM from quarantine: its own policy applies again."""
    session.call("DELETE", f"/v1/quarantine/{segment(vm)}")
    out.done(f"VM {vm} released from quarantine")


@cli.command(short_help="The allow-list of VMs in remediation.")
@output_options
@pass_session
def remediation(session: Session, out: Out) -> None:
    """The allow-list of VMs in quarantine mode remediate (set it with PUT /v1/remediation)."""
    doc = session.get("/v1/remediation")
    out.emit(doc, lambda: [views.allow_table(doc["allow"])])


@cli.command()
@click.option("--vm", metavar="VM", shell_complete=complete_vms, help="Only this VM's alerts.")
@click.option(
    "--limit", type=click.IntRange(1, AUDIT_PAGE_MAX), default=100, show_default=True, help="At most this many, newest first."
)
@output_options
@pass_session
def alerts(session: Session, out: Out, vm: str | None, limit: int) -> None:
    """IDS and port-security alerts, newest first, and the threshold that quarantines."""
    doc = session.get("/v1/alerts", vm=vm, limit=limit)
    out.emit(doc, lambda: views.alert_views(doc, views.now_utc()))


# -- agents, tunnels, keys ---------------------------------------------------------------------------------
@cli.command(short_help="Tunnel pairs: state, handshake age, traffic, key age.")
@output_options
@pass_session
def tunnels(session: Session, out: Out) -> None:
    """Every tunnel pair of hypervisors: state, handshake age, traffic, pre-shared key age."""
    doc = session.get("/v1/tunnels")
    out.emit(doc, lambda: views.tunnel_views(doc))


@cli.group(cls=Group)
def agents() -> None:
    """The hypervisors' agents: list, show, enrollment tokens, revoke, rotate identity."""


@agents.command("list")
@output_options
@pass_session
def agents_list(session: Session, out: Out) -> None:
    """Every enrolled agent."""
    doc = session.get("/v1/agents")
    out.emit(doc, lambda: [views.agent_table(doc["agents"])])


@agents.command("show")
@click.argument("hypervisor", shell_complete=complete_agents)
@output_options
@pass_session
def agents_show(session: Session, out: Out, hypervisor: str) -> None:
    """One agent in detail."""
    doc = session.get(f"/v1/agents/{segment(hypervisor)}")
    out.emit(doc, lambda: [views.agent_pairs(doc, views.now_utc())])


def _write_secret(path: str, text: str) -> None:
    """Write a file only its owner may read, atomically, as the controller writes its own secrets."""
    try:
        write_secret_file(path, text.encode())
    except KeystoreError as exc:  # names the file and why, never the secret
        raise CliError(str(exc)) from None


def _duration_seconds(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@agents.command("token")
@click.option(
    "--ttl",
    callback=_duration_seconds,
    metavar="DURATION",
    help="How long the token stays valid (30m, 1d; at most 7d). [default: 1h]",
)
@click.option("--token-out", metavar="FILE", help="Write the token to FILE (mode 0600) instead of printing it.")
@click.option("--ca-out", metavar="FILE", help="Write the controller's CA certificate (public) to FILE.")
@output_options
@pass_session
def agents_token(session: Session, out: Out, ttl: float | None, token_out: str | None, ca_out: str | None) -> None:
    """Issue a one-time enrollment token for a hypervisor's agent. It is shown this once."""
    body = {} if ttl is None else {"ttl_seconds": ttl}
    doc = session.call("POST", "/v1/agents/tokens", body)
    if token_out:
        _write_secret(token_out, doc["token"] + "\n")
        doc = {k: v for k, v in doc.items() if k != "token"}
    if ca_out:
        Path(ca_out).write_text(doc["ca_certificate"])

    def make() -> list:
        token = f"written to {token_out}" if token_out else doc["token"]
        items = [("token", token), ("fingerprint", doc["fingerprint"]), ("expires", doc["expires"]),
                 ("ca fingerprint", doc["ca_fingerprint"]), ("agent port", views.dash(doc["agent_port"]))]  # fmt: skip
        if ca_out:
            items.append(("ca certificate", f"written to {ca_out}"))
        return [views.Pairs(items), "The token works once, until it expires; it is not shown again."]

    out.emit(doc, make)


@agents.command("revoke", short_help="Revoke HYPERVISOR's agent.")
@click.argument("hypervisor", shell_complete=complete_agents)
@output_options
@pass_session
def agents_revoke(session: Session, out: Out, hypervisor: str) -> None:
    """Revoke the agent of HYPERVISOR: its session closes, its certificate is refused, its tunnels go."""
    session.call("DELETE", f"/v1/agents/{segment(hypervisor)}")
    out.done(f"agent {hypervisor} revoked")


@agents.command("rotate", short_help="Rotate HYPERVISOR's WireGuard key pair.")
@click.argument("hypervisor", shell_complete=complete_agents)
@output_options
@pass_session
def agents_rotate(session: Session, out: Out, hypervisor: str) -> None:
    """Rotate the WireGuard key pair of HYPERVISOR's agent, make before break (it must be connected)."""
    doc = session.call("POST", f"/v1/agents/{segment(hypervisor)}/rotate-identity")
    out.emit(doc, lambda: [f"identity rotation {doc['rotation']} started for {doc['hypervisor']}"])


@cli.group(cls=Group)
def keys() -> None:
    """The tunnels' keys."""


@keys.command("rotate")
@output_options
@pass_session
def keys_rotate(session: Session, out: Out) -> None:
    """New pre-shared keys for every tunnel pair now (hitless)."""
    doc = session.call("POST", "/v1/keys/rotate")
    out.emit(doc, lambda: [f"rotated the pre-shared keys of {doc['rotated']} tunnel pair(s)"])


# -- audit ---------------------------------------------------------------------------------------------------------
def fetch_audit(session: Session, since: datetime | None, limit: int | None, before: int | None) -> dict:
    """Newest first, page by page (`before`), until an entry older than `since`, `limit` entries, or
    the start of the log. `next_before` continues from where this stopped (null: nothing older left
    to fetch, or `since` reached)."""
    entries: list[dict] = []
    cursor = before
    while True:
        wanted = AUDIT_PAGE_MAX if limit is None else min(AUDIT_PAGE_MAX, limit - len(entries))
        page = session.get("/v1/audit", limit=wanted, before=cursor)
        for entry in page["entries"]:
            if since is not None and views.parse_api_time(entry["time"]) < since:
                return {"entries": entries, "next_before": None}
            entries.append(entry)
        cursor = page["next_before"]
        if cursor is None:
            return {"entries": entries, "next_before": None}
        if limit is not None and len(entries) >= limit:
            return {"entries": entries, "next_before": cursor}


@cli.command()
@click.option("--since", metavar="WHEN", help="Entries since a duration ago (10m, 2h, 1d) or an ISO time (2026-11-30T10:00Z).")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N entries. [default: 50, or all with --since]")
@click.option(
    "--before", type=click.IntRange(min=1), metavar="ID", help="Only entries older than entry ID (the last page's next_before)."
)
@output_options
@pass_session
def audit(session: Session, out: Out, since: str | None, limit: int | None, before: int | None) -> None:
    """The audit log, newest first: who changed what, when."""
    moment = None
    if since is not None:
        try:
            moment = parse_since(since, views.now_utc())
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from None
    if limit is None and moment is None:
        limit = 50
    doc = fetch_audit(session, moment, limit, before)

    def make() -> list:
        result: list = [views.audit_table(doc["entries"], views.now_utc())]
        if doc["next_before"] is not None:
            result.append(f"more: goldilocks audit --before {doc['next_before']}")
        return result

    out.emit(doc, make)


# -- tokens --------------------------------------------------------------------------------------------------------
@cli.group(cls=Group)
def tokens() -> None:
    """API tokens (admin): list, create, show, revoke. Values are shown once, when created."""


@tokens.command("list")
@output_options
@pass_session
def tokens_list(session: Session, out: Out) -> None:
    """Every token: name, role, age and fingerprint, never its value."""
    doc = session.get("/v1/tokens")
    out.emit(doc, lambda: [views.token_table(doc["tokens"], views.now_utc())])


@tokens.command("show")
@click.argument("name", shell_complete=complete_tokens)
@output_options
@pass_session
def tokens_show(session: Session, out: Out, name: str) -> None:
    """One token, as `tokens list` shows it."""
    doc = session.get(f"/v1/tokens/{segment(name)}")
    out.emit(doc, lambda: [views.token_table([doc], views.now_utc())])


@tokens.command("create")
@click.argument("name")
@click.option("--role", type=click.Choice(["read-only", "admin"]), default="read-only", show_default=True, help="What it may do.")
@click.option("--token-out", metavar="FILE", help="Write the value to FILE (mode 0600) instead of printing it.")
@output_options
@pass_session
def tokens_create(session: Session, out: Out, name: str, role: str, token_out: str | None) -> None:
    """Issue token NAME. Its value is printed this once (or written to --token-out): store it now."""
    doc = session.call("POST", "/v1/tokens", {"name": name, "role": role})
    if token_out:
        _write_secret(token_out, doc["token"] + "\n")
        doc = {k: v for k, v in doc.items() if k != "token"}

    def make() -> list:
        value = f"written to {token_out}" if token_out else doc["token"]
        pairs = views.Pairs([("name", doc["name"]), ("role", doc["role"]), ("fingerprint", doc["fingerprint"]), ("token", value)])
        return [pairs, "The value is not shown again; the controller keeps only its digest."]

    out.emit(doc, make)


@tokens.command("revoke")
@click.argument("name", shell_complete=complete_tokens)
@output_options
@pass_session
def tokens_revoke(session: Session, out: Out, name: str) -> None:
    """Revoke token NAME at once (not the last admin token)."""
    session.call("DELETE", f"/v1/tokens/{segment(name)}")
    out.done(f"token {name} revoked")


# -- shell completion ----------------------------------------------------------------------------------------------
SHELLS = ("bash", "zsh", "fish")


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL. VM, rule, agent, token and switch names complete from the API.

    \b
    bash:  eval "$(goldilocks completion bash)"     (or save it in /etc/bash_completion.d/goldilocks)
    zsh:   eval "$(goldilocks completion zsh)"      (after compinit)
    fish:  goldilocks completion fish > ~/.config/fish/completions/goldilocks.fish
    """
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    click.echo(cls(cli, {}, "goldilocks", "_GOLDILOCKS_COMPLETE").source())


def main(argv: list[str] | None = None) -> None:
    cli.main(args=argv, prog_name="goldilocks")


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1:])
