"""docs/metrics.md, written from a live registry: `python -m controller.metrics_docs` writes it,
`--check` only compares (tests/unit/test_metrics.py fails when the two differ).

The registry is the controller's own (controller/metrics.py), watching an example controller that
holds one of everything (a switch, a tunnel, an agent, a quarantined VM, a REST request), so that
every labelled family shows its labels."""

from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

from controller.generated_docs import write_or_check
from controller.intake import Intake
from controller.metrics import Metrics
from topology.learner import Learner
from topology.model import Topology

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
SUFFIXES = {"counter": "_total", "histogram": "_bucket, _sum, _count"}

HEADER = """\
# Metrics

`GET /metrics` (open, like `/v1/health`; see docs/api.md) answers in the Prometheus text format,
written by `prometheus_client` (`generate_latest`, content type
`text/plain; version=1.0.0; charset=utf-8`). Each controller has its own registry.

This file is generated from that registry: `python -m controller.metrics_docs` rewrites it, and
`tests/unit/test_metrics.py` fails when it no longer matches. A Grafana dashboard for the main
panels is in [grafana-dashboard.json](grafana-dashboard.json) (import it and pick the Prometheus
data source).

## Labels and their cardinality

- `dpid`: one per connected switch (16 hex digits, as in the REST API). The series ends when the
  switch disconnects; a reconnection starts its counters from 0, which `rate()` takes as a reset.
- `tunnel`: one per hypervisor pair with a tunnel (`a|b`, the names in order). The series ends
  when the pair is torn down (unused for 5 min, or an end revoked).
- `agent`: one per enrolled hypervisor agent. The series ends when the agent is revoked.
- `method`, `route`, `status`: the declared REST route template (`/v1/vms/{name}`, never the raw
  path), its method (`HEAD` too for a `GET`) and the answer's status: a fixed set. Requests no
  route takes (404 and 405 of unknown paths) are not counted.
- `mode` (quarantine mode), `from` and `to` (port kinds), `severity` and `action` (IDS alerts):
  fixed sets.

So a fabric of N switches, A agents and P tunnel pairs exposes about 4 N + 4 A + 3 P series
besides a fixed set, and a scrape reads each of them once (never the flow tables).

Gauges that describe the fabric (switches, links, hosts, flows, tunnels, agents, key ages,
quarantined VMs, encrypt drops) are read from the controller's state when scraped.

Key ages: `goldilocks_tunnel_psk_age_seconds` (per pair; compare with
`goldilocks_psk_rotation_interval_seconds`), `goldilocks_agent_wireguard_key_age_seconds` (from
when the controller first saw the agent's current public key: kept in the state database, so it
survives restarts; an agent whose key was stored before this was kept has none until its key
changes) and `goldilocks_agent_certificate_age_seconds` (certificates last a year).

Sign-in failures are `goldilocks_rest_requests_total{status="401"}`, and requests refused after
too many of them `{status="429"}`.

Names changed from the hand-written format: `goldilocks_packet_in_to_flow_mod_seconds_recent`
and `goldilocks_switch_converge_seconds_recent` (quantile gauges) are gone; use
`histogram_quantile()` over `goldilocks_packet_in_to_flow_mod_seconds_bucket` and
`goldilocks_switch_converge_seconds_bucket`. `goldilocks_reconcile_seconds` and
`goldilocks_packet_in_to_flow_mod_seconds` are histograms now (their `_sum` and `_count` are as
before). `goldilocks_packet_ins_total`, `goldilocks_flow_mods_total` and
`goldilocks_encrypt_drops_total` have a `dpid` label: `sum()` them for the controller's total.

## Every metric

"""


def example_app() -> SimpleNamespace:
    """A controller with one of everything, for the registry to describe."""
    now = 1_000_000.0
    app = SimpleNamespace(
        datapaths={1: object()},
        topo=Topology(),
        desired={1: {}},
        sync={1: SimpleNamespace(refusals={})},
        _compile_pending=False,
        intake=Intake(),
        learner=Learner(Topology()),
        policy=SimpleNamespace(quarantine={"vm1": SimpleNamespace(mode="isolate")}),
        agents=SimpleNamespace(
            clock=lambda: now,
            agents={"hv1": SimpleNamespace(enrolled=now - 10, report_at=now - 1, key_since=now - 5)},
            sessions={"hv1": object()},
            pairs={("hv1", "hv2"): object()},
            tunnel_view=lambda a, b: {"state": "up", "handshake_age": 3.0, "psk_age": 60.0},
            refused_connections=0,
            psk_rotations=0,
            identity_rotations=0,
            psk_rotation=3600.0,
            identity_rotation=0.0,
        ),
        desired_flow_count=lambda: 0,
    )
    app.learner.kind_changes[("pending", "edge")] += 1
    metrics = app.metrics = Metrics()
    metrics.watch(app)
    metrics.switch_connected(1)
    metrics.packet_in(1)
    metrics.flow_mods(1, 1)
    metrics.encrypt_drops_by_switch[1] = 0
    metrics.observe_learning(0.01)
    metrics.observe_convergence(1.0)
    metrics.observe_reconcile(0.1)
    metrics.alert("high", "quarantine")
    metrics.quarantined("isolate")
    metrics.rest_request("GET", "/v1/health", 200, 0.001)
    return app


def families(metrics: Metrics) -> list[tuple[str, str, tuple[str, ...], str]]:
    """(exposed name, type, label names, help) of every family the registry serves, by name."""
    rows = []
    for family in metrics.registry.collect():
        labels = sorted({k for s in family.samples for k in s.labels if k != "le"})
        name = family.name + ("_total" if family.type == "counter" else "")
        rows.append((name, family.type, tuple(labels), family.documentation))
    return sorted(rows, key=lambda row: (not row[0].startswith("goldilocks_"), row[0]))


def exposed_names(metrics: Metrics) -> set[str]:
    """Every sample name a scrape can hold (a histogram's _bucket, _sum and _count)."""
    names = set()
    for name, kind, _, _ in families(metrics):
        names |= {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
    return names


def render(metrics: Metrics | None = None) -> str:
    rows = families(metrics or example_app().metrics)
    lines = ["| name | type | labels | help |", "|---|---|---|---|"]
    for name, kind, labels, help_text in rows:
        shown = f"`{name}` (`_bucket`, `_sum`, `_count`)" if kind == "histogram" else f"`{name}`"
        label_text = ", ".join(f"`{label}`" for label in labels) or "-"
        lines.append(f"| {shown} | {kind} | {label_text} | {help_text.replace('|', chr(92) + '|')} |")
    return HEADER + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare docs/metrics.md with the registry; exit 1 if it differs")
    args = parser.parse_args(argv)
    return write_or_check(DOC, render(), args.check, "python -m controller.metrics_docs")


if __name__ == "__main__":
    raise SystemExit(main())
