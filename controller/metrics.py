"""Counters and gauges served at /metrics in the Prometheus text format."""

from __future__ import annotations

import statistics
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from topology.learner import Learner


@dataclass
class Metrics:
    packet_ins: int = 0
    flow_mods: int = 0
    reconciles: int = 0
    reconcile_seconds_sum: float = 0.0
    reconcile_seconds_last: float = 0.0
    packet_in_to_flow_mod_seconds_sum: float = 0.0
    packet_in_to_flow_mod_count: int = 0
    switch_errors: int = 0
    flow_mods_refused: int = 0  # flow-mods a switch answered with an error
    flows_refused_now: int = 0  # entries refused and not installed yet, over all switches
    # Encrypted frames dropped by a switch because no tunnel toward their destination was up
    # (fail closed), per switch: the packet count of its encrypt-drop entry, read every tick.
    encrypt_drops_by_switch: dict = field(default_factory=dict)
    alerts: Counter = field(default_factory=Counter)  # (severity, action) -> count
    learning_samples: deque = field(default_factory=lambda: deque(maxlen=1000))
    convergence_samples: deque = field(default_factory=lambda: deque(maxlen=1000))

    @property
    def encrypt_drops(self) -> int:
        return sum(self.encrypt_drops_by_switch.values())

    def observe_learning(self, seconds: float) -> None:
        self.packet_in_to_flow_mod_seconds_sum += seconds
        self.packet_in_to_flow_mod_count += 1
        self.learning_samples.append(seconds)

    def observe_convergence(self, seconds: float) -> None:
        self.convergence_samples.append(seconds)

    def observe_reconcile(self, seconds: float) -> None:
        self.reconciles += 1
        self.reconcile_seconds_sum += seconds
        self.reconcile_seconds_last = seconds

    def render(
        self,
        switches_connected: int,
        links: int,
        hosts: int,
        flows: int,
        learner: Learner,
        agents=None,
        intake=None,
        compile_pending: bool = False,
    ) -> str:
        rows = [
            ("goldilocks_switches_connected", "gauge", "Switches with a live OpenFlow connection", switches_connected),
            ("goldilocks_links", "gauge", "Inter-switch links known from LLDP", links),
            ("goldilocks_hosts", "gauge", "Hosts and VMs learned on edge ports", hosts),
            ("goldilocks_flows_desired", "gauge", "Flow entries the controller wants on all switches", flows),
            ("goldilocks_packet_ins_total", "counter", "Packet-in messages received", self.packet_ins),
            ("goldilocks_flow_mods_total", "counter", "Flow-mod messages sent", self.flow_mods),
            ("goldilocks_lldp_rejected_total", "counter", "LLDP frames with a bad or missing signature, stale or replayed",
             learner.lldp_rejected),
            ("goldilocks_probes_refused_total", "counter", "Valid probes refused because an end is a declared VM port",
             learner.probes_refused),
            ("goldilocks_hosts_forgotten_total", "counter", "Hosts forgotten because their port turned out to face a switch",
             learner.hosts_forgotten),
            ("goldilocks_switch_errors_total", "counter", "OpenFlow errors from switches", self.switch_errors),
            ("goldilocks_flow_mods_refused_total", "counter", "Flow-mods a switch refused (retried with backoff)",
             self.flow_mods_refused),
            ("goldilocks_flows_refused", "gauge", "Desired entries a switch refused and does not hold yet",
             self.flows_refused_now),
            ("goldilocks_reconcile_seconds_last", "gauge", "Last compile and reconcile", self.reconcile_seconds_last),
            ("goldilocks_compile_pending", "gauge", "1 while a compile is due or running (the flows desired are about to change)",
             int(compile_pending)),
            ("goldilocks_encrypt_drops_total", "counter", "Encrypted frames dropped by switches: no tunnel up toward their "
             "destination (fail closed)", self.encrypt_drops),
            ("goldilocks_endpoint_spoofs_total", "counter", "Frames from a tunnel endpoint's MAC on a port that is not its own",
             learner.endpoint_spoofs),
        ]
        if intake is not None:
            rows += [
                ("goldilocks_packet_ins_waiting", "gauge", "Packet-ins read from switches, not handled yet", len(intake)),
                ("goldilocks_packet_ins_coalesced_total", "counter", "Packet-ins dropped as identical to one still "
                 "waiting (a host's retry)", intake.duplicates),
                ("goldilocks_packet_ins_shed_total", "counter", "Packet-ins dropped because their switch had too many "
                 "waiting, or the controller did", intake.shed),
            ]
        if agents is not None:
            states = [agents.tunnel_view(a, b)["state"] for a, b in sorted(agents.pairs)]
            rows += [
                ("goldilocks_agents_enrolled", "gauge", "Enrolled hypervisor agents", len(agents.agents)),
                ("goldilocks_agents_connected", "gauge", "Agents with a live session", len(agents.sessions)),
                ("goldilocks_agent_connections_refused_total", "counter", "Agent connections refused (certificate, "
                 "revoked, bad frames, too slow to authenticate, over the per-client or total cap)", agents.refused_connections),
                ("goldilocks_tunnels_up", "gauge", "Tunnel pairs up", states.count("up")),
                ("goldilocks_tunnels_pending", "gauge", "Tunnel pairs configured, no handshake yet", states.count("pending")),
                ("goldilocks_tunnels_down", "gauge", "Tunnel pairs down", states.count("down")),
                ("goldilocks_psk_rotations_total", "counter", "Pre-shared keys rotated", agents.psk_rotations),
                ("goldilocks_identity_rotations_total", "counter", "Agent WireGuard key pairs rotated",
                 agents.identity_rotations),
            ]
        lines = []
        for name, kind, help_text, value in rows:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", f"{name} {value}"]
        lines += [
            "# HELP goldilocks_port_kind_changes_total Port kind changes (down, pending, edge, inter-switch, lost-link)",
            "# TYPE goldilocks_port_kind_changes_total counter",
        ]
        for (old, new), count in sorted(learner.kind_changes.items()):
            lines.append(f'goldilocks_port_kind_changes_total{{from="{old}",to="{new}"}} {count}')
        lines += [
            "# HELP goldilocks_alerts_total Alerts from an external IDS, by severity and what they led to",
            "# TYPE goldilocks_alerts_total counter",
        ]
        for (severity, action), count in sorted(self.alerts.items()):
            lines.append(f'goldilocks_alerts_total{{severity="{severity}",action="{action}"}} {count}')
        lines += [
            "# HELP goldilocks_reconcile_seconds Compile and reconcile durations",
            "# TYPE goldilocks_reconcile_seconds summary",
            f"goldilocks_reconcile_seconds_sum {self.reconcile_seconds_sum}",
            f"goldilocks_reconcile_seconds_count {self.reconciles}",
            "# HELP goldilocks_packet_in_to_flow_mod_seconds From a learning packet-in to its flow-mods sent",
            "# TYPE goldilocks_packet_in_to_flow_mod_seconds summary",
            f"goldilocks_packet_in_to_flow_mod_seconds_sum {self.packet_in_to_flow_mod_seconds_sum}",
            f"goldilocks_packet_in_to_flow_mod_seconds_count {self.packet_in_to_flow_mod_count}",
        ]
        for name, samples in (
            ("goldilocks_packet_in_to_flow_mod_seconds_recent", self.learning_samples),
            ("goldilocks_switch_converge_seconds_recent", self.convergence_samples),
        ):
            lines += [f"# HELP {name} Quantiles over the last {samples.maxlen} samples", f"# TYPE {name} gauge"]
            for q, value in quantiles(samples).items():
                lines.append(f'{name}{{quantile="{q}"}} {value}')
        return "\n".join(lines) + "\n"


def quantiles(samples) -> dict[str, float]:
    """Median, 90th and 99th percentile (NaN when there are no samples)."""
    data = sorted(samples)
    if not data:
        return {"0.5": float("nan"), "0.9": float("nan"), "0.99": float("nan")}
    def pick(q: float) -> float:
        return data[min(len(data) - 1, int(q * len(data)))]

    return {"0.5": statistics.median(data), "0.9": pick(0.9), "0.99": pick(0.99)}
