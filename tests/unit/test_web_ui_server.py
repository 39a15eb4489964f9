"""The web view's server side, in-process: only the fixed files are served, with the security headers;
/v1/whoami and /v1/fabric answer what the page needs, and a fabric poll costs a 304 until something
changes. (tests/integration/test_web_ui.py drives the page itself in Chromium.)"""

from __future__ import annotations

import dataclasses
import html.parser
import re
import time

import pytest

from controller import rest, webui
from tests.api_stub import make_api
from tests.fakeoftable import build_leaf_spine
from tests.unit.test_api_agents import connect, enroll

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def view(tmp_path):
    fabric = build_leaf_spine(spines=2, leaves=2, hypervisors_per_leaf=1, vms_per_hypervisor=2)
    app, client = make_api(tmp_path, fabric.topo)
    return fabric, app, client


def shared_document(client) -> webui.FabricDocument:
    """The FabricDocument every request of this API shares, on a clock the test moves."""
    document = client.wsgi.registory[rest.GoldilocksApi.__name__][rest.FABRIC_KEY]
    document.clock = Clock()
    return document


def assert_secured(answer) -> None:
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert answer.headers["x-frame-options"] == "DENY"


@pytest.mark.parametrize(
    ("path", "content_type", "marker"),
    [
        ("/ui", "text/html", b"<title>Goldilocks</title>"),
        ("/ui/", "text/html", b"<title>Goldilocks</title>"),
        ("/ui/index.html", "text/html", b"<title>Goldilocks</title>"),
        ("/ui/app.js", "text/javascript", b"/v1/fabric"),
        ("/ui/app.css", "text/css", b"--quarantined"),
        ("/ui/cytoscape.min.js", "text/javascript", b"The Cytoscape Consortium"),
        ("/ui/cytoscape-LICENSE.txt", "text/plain", b"Permission is hereby granted"),
    ],
)
def test_the_page_and_its_files_are_served_without_a_token_and_with_a_strict_policy(view, path, content_type, marker):
    _, _, client = view
    answer = client.call("GET", path, token="")
    assert answer.status == 200 and answer.content_type == content_type and marker in answer.raw
    assert_secured(answer)
    assert answer.headers["cache-control"] == "no-cache" and answer.headers["etag"]
    again = client.call("GET", path, token="", headers={"If-None-Match": answer.headers["etag"]})
    assert again.status == 304 and again.raw == b"" and again.headers["etag"] == answer.headers["etag"]
    assert_secured(again)


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../controller/rest.py",
        "/ui/%2e%2e%2fcontroller%2frest.py",
        "/ui/..%2f..%2fetc%2fpasswd",
        "/ui/vendor/cytoscape.min.js",  # on disk, but not by that name
        "/ui/vendor",
        "/ui/README",
        "/ui/webui.py",
        "/ui/%2fetc%2fpasswd",
        "/ui/app.js/",
        "/ui/APP.JS",
    ],
)
def test_nothing_but_the_fixed_files_is_reachable(view, path):
    _, _, client = view
    answer = client.call("GET", path, token="", check=False)
    assert answer.status in (400, 404), f"{path}: {answer.status}"
    assert b"root:" not in answer.raw and b"import" not in answer.raw
    assert answer.content_type == "application/json"
    assert_secured(answer)


def test_every_file_of_the_page_is_packaged_and_named_in_the_whitelist():
    on_disk = {p.relative_to(webui.UI_DIR).as_posix() for p in webui.UI_DIR.rglob("*") if p.is_file()}
    served = {f.path for f in webui.UI_FILES.values()}
    assert served <= on_disk
    assert on_disk - served == {"vendor/README"}, "the vendored code's provenance note is packaged, not served"


class _Page(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.in_script = False
        self.scripts: list[str] = []

    def handle_starttag(self, tag, attrs):
        names = {name for name, _ in attrs}
        if "style" in names:
            self.problems.append(f"<{tag} style=...>")
        self.problems += [f"<{tag} {name}=...>" for name in names if name.startswith("on")]
        if tag == "style":
            self.problems.append("<style>")
        if tag == "script":
            self.in_script = True
            self.scripts.append(dict(attrs).get("src") or "")

    def handle_endtag(self, tag):
        if tag == "script":
            self.in_script = False

    def handle_data(self, data):
        if self.in_script and data.strip():
            self.problems.append("an inline script")


def test_the_page_has_no_inline_script_or_style_and_loads_only_its_own_files(view):
    _, _, client = view
    page = _Page()
    page.feed(client.call("GET", "/ui", token="").text)
    assert not page.problems
    assert page.scripts == ["/ui/cytoscape.min.js", "/ui/app.js"]


def test_the_script_keeps_the_token_out_of_storage_and_server_strings_out_of_html():
    script = (webui.UI_DIR / "app.js").read_text()
    code = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("//"))
    for forbidden in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function",
                      "localStorage", "sessionStorage", "document.cookie", "EventSource"):  # fmt: skip
        assert forbidden not in code, forbidden
    assert re.search(r'Authorization: "Bearer " \+ token', code)


def test_whoami_names_the_token_and_its_role(view):
    _, _, client = view
    assert client.call("GET", "/v1/whoami").json == {"name": "admin", "role": "admin"}
    reader = client.call("POST", "/v1/tokens", {"name": "wall-screen"}).json["token"]
    assert client.call("GET", "/v1/whoami", token=reader).json == {"name": "wall-screen", "role": "read-only"}
    assert client.call("GET", "/v1/whoami", token="glk_wrong").status == 401


def test_the_fabric_document_holds_what_the_graph_draws(view):
    fabric, app, client = view
    host = fabric.vms[0]
    assert client.call("PUT", "/v1/vms/web1", {"macs": [host.mac], "labels": {"tier": "web"}}).status == 201
    assert client.call("POST", "/v1/quarantine", {"vm": "web1", "reason": "<img src=x onerror=alert(1)>"}).status == 201
    for index, hypervisor in enumerate(("hv1", "hv2"), 1):
        connect(app, hypervisor, enroll(app, client, hypervisor), address=index)
    app.agents.set_needed([("hv1", "hv2")])
    doc = client.call("GET", "/v1/fabric").json
    assert {s["dpid"] for s in doc["switches"]} == {f"{d:016x}" for d in app.topo.switches}
    assert {s["role"] for s in doc["switches"]} == {"fabric", "hypervisor"}
    assert len(doc["links"]) == len(app.topo.links) and {lk["state"] for lk in doc["links"]} <= {"up", "unconfirmed"}
    (vm,) = doc["vms"]
    assert vm["name"] == "web1" and vm["labels"] == {"tier": "web"}
    assert vm["location"] == {"dpid": f"{host.dpid:016x}", "port": host.port}
    assert vm["quarantine"]["reason"] == "<img src=x onerror=alert(1)>" and vm["quarantine"]["mode"] == "isolate"
    assert len(doc["hosts"]) == len(fabric.vms) - 1, "the other VMs, not in the inventory, are unmanaged hosts"
    assert [(t["a"], t["b"]) for t in doc["tunnels"]] == [("hv1", "hv2")]
    assert all(s["down_ports"] == [] and s["lost_ports"] == [] for s in doc["switches"])


def test_a_port_that_goes_down_takes_its_link_away_and_is_named(view):
    fabric, app, client = view
    document = shared_document(client)
    link = min(app.topo.links, key=lambda lk: (lk.a.dpid, lk.a.port))
    port = app.topo.switches[link.a.dpid].ports[link.a.port]
    before = client.call("GET", "/v1/fabric").json
    app.topo.set_port(link.a.dpid, dataclasses.replace(port, up=False))
    document.clock.now += webui.MIN_REBUILD_SECONDS
    after = client.call("GET", "/v1/fabric").json
    assert len(after["links"]) == len(before["links"]) - 1
    (switch,) = [s for s in after["switches"] if s["dpid"] == f"{link.a.dpid:016x}"]
    assert switch["down_ports"] == [link.a.port]


def test_a_fabric_poll_is_a_304_until_something_changes(view):
    fabric, app, client = view
    first = client.call("GET", "/v1/fabric")
    etag = first.headers["etag"]
    assert first.headers["cache-control"] == "no-store"
    assert abs(float(first.headers["x-server-time"]) - time.time()) < 60
    same = client.call("GET", "/v1/fabric", headers={"If-None-Match": etag})
    assert same.status == 304 and same.raw == b"" and same.headers["x-server-time"]
    assert client.call("PUT", "/v1/vms/web1", {"macs": [fabric.vms[0].mac]}).status == 201
    changed = client.call("GET", "/v1/fabric", headers={"If-None-Match": etag})
    assert changed.status == 200 and changed.headers["etag"] != etag
    assert [vm["name"] for vm in changed.json["vms"]] == ["web1"]
    assert client.call("GET", "/v1/fabric", token="").status == 401


def test_another_origin_gets_no_cors_permission_to_read_or_write(view):
    """The view's writes are CSRF-proof because the token travels only in a header a browser never
    adds by itself; and no answer lets another origin's script read it."""
    _, _, client = view
    origin = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    preflight = client.call("OPTIONS", "/v1/quarantine", token="", headers=origin, check=False)
    assert preflight.status == 405
    for answer in (preflight, client.call("GET", "/v1/fabric", headers={"Origin": "https://evil.example"})):
        assert not [h for h in answer.headers if h.startswith("access-control-")]


def test_every_view_shares_one_copy_rebuilt_at_once_on_a_policy_change_and_otherwise_at_a_bounded_rate(view, monkeypatch):
    fabric, app, client = view
    document = shared_document(client)
    build_time = 0.05  # as if each build took this long on the controller's clock
    real_view = document.build

    def slow_view(app_):
        document.clock.now += build_time
        return real_view(app_)

    monkeypatch.setattr(document, "build", slow_view)
    client.call("GET", "/v1/fabric")
    builds = document.builds
    for _ in range(20):  # many views polling at once: one copy
        client.call("GET", "/v1/fabric")
    assert document.builds == builds
    document.clock.now += webui.MIN_REBUILD_SECONDS  # older than 0.1 s, but not 5 x 0.05 s
    client.call("GET", "/v1/fabric")
    assert document.builds == builds
    document.clock.now += webui.REBUILD_COST_FACTOR * build_time
    client.call("GET", "/v1/fabric")
    assert document.builds == builds + 1
    assert client.call("PUT", "/v1/vms/web1", {"macs": [fabric.vms[0].mac]}).status == 201
    assert [vm["name"] for vm in client.call("GET", "/v1/fabric").json["vms"]] == ["web1"], "a policy change shows at once"
    assert document.builds == builds + 2
