"""The REST layer in-process: Ryu's WSGIApplication with our routes, driven against a stub controller.

The stub carries what the REST layer reads (topology, policy, store, sync state, metrics) and
applies policy with the real `GoldilocksController.apply_policy`, so transactions are the real ones;
only the compile it triggers is counted instead of run."""

from __future__ import annotations

import time
from pathlib import Path

from controller.launcher import patch_eventlet

patch_eventlet()  # before anything imports ryu.app.wsgi

from ryu.app.wsgi import WSGIApplication  # noqa: E402

from apps.flows import FlowEntry  # noqa: E402
from apps.forwarding import base_flows  # noqa: E402
from controller import auth, rest  # noqa: E402
from controller.agents import AgentManager  # noqa: E402
from controller.app import GoldilocksController  # noqa: E402
from controller.intake import Intake  # noqa: E402
from controller.metrics import Metrics  # noqa: E402
from controller.store import Store  # noqa: E402
from tests.api_contract import Contract, InProcessClient  # noqa: E402
from topology.learner import Learner  # noqa: E402
from topology.model import Topology  # noqa: E402


class StubController:
    """Just enough of GoldilocksController for the REST layer."""

    apply_policy = GoldilocksController.apply_policy
    _quarantine_now = GoldilocksController._quarantine_now

    def __init__(self, state_dir: Path, topo: Topology | None = None) -> None:
        self.state_dir = state_dir
        self.store = Store(state_dir)
        self.topo = topo or Topology()
        self.learner = Learner(self.topo)
        self.declared_vm_interfaces: frozenset[str] = frozenset()
        self.policy = self.store.load_policy()
        self.started_at = time.time()
        self.datapaths: dict = {}
        self.sync: dict = {}
        self.metrics = Metrics()
        self.metrics.watch(self)
        self.intake = Intake()
        self._compile_pending = False
        self.desired: dict = {}  # no switches: a quarantine has nothing to install at once
        from apps.compiler import Compiler

        self.compiler = Compiler()
        from apps.alerts import AlertBook

        self.alert_book = AlertBook()
        self.agents = AgentManager(self.store, state_dir)
        self.agent_server = None
        self.compiles = 0
        auth.ensure_admin_token(self.store, state_dir)
        self.admin_token = (state_dir / auth.ADMIN_TOKEN_FILE).read_text().strip()

    def model_changed(self, then=None) -> None:
        self.compiles += 1

    def set_declared_vm_interfaces(self, names) -> None:
        self.declared_vm_interfaces = frozenset(names)

    def desired_flow_count(self) -> int:
        return len(base_flows()) * len(self.topo.switches)

    def flows_for(self, dpid: int) -> list[FlowEntry]:
        return sorted(base_flows(), key=lambda e: (e.table, -e.priority, e.cookie))


def make_api(state_dir: Path, topo: Topology | None = None, contract: Contract | None = None):
    """(stub controller, admin client) with the routes registered as the controller registers them."""
    app = StubController(state_dir, topo)
    wsgi = WSGIApplication()
    rest.register(wsgi, app)
    return app, InProcessClient(wsgi, contract or Contract(), app.admin_token)
