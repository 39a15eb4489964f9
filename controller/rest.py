"""REST API on Ryu's WSGI server: health, topology and Prometheus metrics, with JSON errors."""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

from ryu.app.wsgi import ControllerBase, Response, route

LOG = logging.getLogger("goldilocks.rest")
APP_KEY = "goldilocks"


class ApiError(Exception):
    """An error a client caused: becomes a 4xx JSON response."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_response(body: Any, status: int = 200) -> Response:
    return Response(status=status, content_type="application/json", charset="utf-8", body=json.dumps(body, indent=1).encode())


def api(handler: Callable) -> Callable:
    """Map client errors to 4xx JSON and anything unexpected to a 500 JSON without internals."""

    @functools.wraps(handler)
    def wrapper(self, req, **kwargs):
        try:
            return handler(self, req, **kwargs)
        except ApiError as exc:
            return json_response({"error": exc.message}, exc.status)
        except Exception:
            LOG.exception("%s %s failed", req.method, req.path)
            return json_response({"error": "internal error; see the controller log"}, 500)

    return wrapper


def dpid_str(dpid: int) -> str:
    return f"{dpid:016x}"


def port_kind(port_no: int, inter: set[int], edge: set[int], fabric: set[int]) -> str:
    """inter-switch (LLDP seen), lost-link (was inter-switch, LLDP stopped, port still up: held
    until it goes down), edge (confirmed to face hosts) or pending (not known yet)."""
    if port_no in inter:
        return "inter-switch"
    if port_no in fabric:
        return "lost-link"
    return "edge" if port_no in edge else "pending"


def topology_view(app) -> dict:
    topo = app.topo
    switches = []
    for dpid in sorted(topo.switches):
        sw = topo.switches[dpid]
        inter = topo.inter_switch_ports(dpid)
        switches.append(
            {
                "dpid": dpid_str(dpid),
                "name": sw.name,
                "role": topo.role(dpid),
                "connected": sw.connected,
                "converge_seconds": app.sync[dpid].converge_seconds if dpid in app.sync else None,
                "ports": [
                    {
                        "port_no": p.port_no,
                        "name": p.name,
                        "hw_addr": p.hw_addr,
                        "up": p.up,
                        "kind": port_kind(p.port_no, inter, sw.edge_confirmed, sw.fabric_ports),
                    }
                    for p in sorted(sw.ports.values(), key=lambda p: p.port_no)
                    if p.port_no < 0xFFFFFF00
                ],
            }
        )
    links = [
        {"src": {"dpid": dpid_str(lk.a.dpid), "port": lk.a.port}, "dst": {"dpid": dpid_str(lk.b.dpid), "port": lk.b.port}}
        for lk in sorted(topo.links, key=lambda lk: (lk.a.dpid, lk.a.port, lk.b.dpid, lk.b.port))
    ]
    hosts = [
        {"mac": h.mac, "ips": sorted(h.ips), "dpid": dpid_str(h.dpid), "port": h.port}
        for h in sorted(topo.hosts.values(), key=lambda h: h.mac)
    ]
    return {"switches": switches, "links": links, "hosts": hosts}


class GoldilocksApi(ControllerBase):
    """/v1 endpoints. Route methods are registered in name order; the catch-all lives apart."""

    def __init__(self, req, link, data, **config) -> None:
        super().__init__(req, link, data, **config)
        self.app = data[APP_KEY]

    @route(APP_KEY, "/v1/health", methods=["GET"])
    @api
    def health(self, req, **_):
        app = self.app
        return json_response(
            {
                "status": "ok",
                "uptime_seconds": round(time.time() - app.started_at, 3),
                "switches_connected": len(app.datapaths),
                "switches_synced": sum(1 for s in app.sync.values() if s.synced),
                "links": len(app.topo.links),
                "hosts": len(app.topo.hosts),
            }
        )

    @route(APP_KEY, "/v1/topology", methods=["GET"])
    @api
    def topology(self, req, **_):
        return json_response(topology_view(self.app))

    @route(APP_KEY, "/v1/switches/{dpid}/flows", methods=["GET"])
    @api
    def switch_flows(self, req, dpid, **_):
        try:
            dpid_int = int(dpid, 16)
        except ValueError:
            raise ApiError(400, f"dpid {dpid!r} is not a hex datapath id") from None
        if dpid_int not in self.app.topo.switches:
            raise ApiError(404, f"no switch with dpid {dpid}")
        flows = [
            {
                "cookie": f"0x{e.cookie:016x}",
                "table": e.table,
                "priority": e.priority,
                "match": {k: (list(v) if isinstance(v, tuple) else v) for k, v in e.match},
                "actions": [repr(a) for a in e.actions],
                "goto": e.goto,
            }
            for e in self.app.flows_for(dpid_int)
        ]
        return json_response({"dpid": dpid_str(dpid_int), "flows": flows})

    @route(APP_KEY, "/metrics", methods=["GET"])
    @api
    def metrics(self, req, **_):
        app = self.app
        body = app.metrics.render(len(app.datapaths), len(app.topo.links), len(app.topo.hosts), app.desired_flow_count())
        return Response(status=200, content_type="text/plain", charset="utf-8", body=body.encode())


KNOWN_PATHS = ("/v1/health", "/v1/topology", "/metrics")


class NotFoundApi(ControllerBase):
    """Anything no route took: 405 for a known path with the wrong method, else 404, as JSON."""

    @route("goldilocks-fallback", "/{path:.*}")
    def fallback(self, req, path, **_):
        if req.path in KNOWN_PATHS:
            return json_response({"error": f"method {req.method} not allowed on {req.path}"}, 405)
        return json_response({"error": f"no such endpoint: {req.method} {req.path}"}, 404)


def register(wsgi, app) -> None:
    wsgi.register(GoldilocksApi, {APP_KEY: app})
    wsgi.register(NotFoundApi, {})
