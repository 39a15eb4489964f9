"""The web view in a real headless Chromium (Debian's), against a running Mininet data centre.

Two spines, two leaves, two hypervisors per leaf, one VM each: vm1 (web, hv1), vm2 (app, hv2),
vm3 (db, hv3), vm4 (web, hv4); web to db is encrypted, so hv1|hv3 and hv3|hv4 have tunnels.

What a user would notice: signing in (and being refused), every switch and VM of the running
fabric drawn, a quarantine made through the API marked within a second, explain's answer, a
read-only token that cannot write, no token anywhere but the Authorization header, the
Content-Security-Policy on the page with not one violation, and server strings shown as text."""

from __future__ import annotations

import time

import pytest

from mininet_scenarios.browser import chromium, csp_violations, drawn_nodes, sign_in, tap
from mininet_scenarios.datacenter import Layout
from mininet_scenarios.harness import api_call, rest_call, rest_get
from mininet_scenarios.screenshot import stage
from tests.integration.conftest import start_datacentre
from tests.integration.helpers import wait_until

pytestmark = pytest.mark.timeout(300)

TIERS = {"vm1": "web", "vm2": "app", "vm3": "db", "vm4": "web"}
RULES = [{"name": "web-to-db", "src": "tier=web", "dst": "tier=db", "services": ["any"], "action": "encrypt"}]
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@pytest.fixture(scope="module")
def dc():
    cm, dc = start_datacentre(Layout(spines=2, leaves=2, hypervisors_per_leaf=2, vms_per_hypervisor=1))
    try:
        stage(dc, TIERS, RULES)
        assert wait_until(lambda: len(rest_get(dc.rest_url, "/v1/tunnels")["tunnels"]) == 2, 30), "the rule's two tunnels"
        yield dc
    finally:
        cm.__exit__(None, None, None)


@pytest.fixture(scope="module")
def tokens(dc):
    reader = rest_call(dc.rest_url, "POST", "/v1/tokens", {"name": "wall-screen", "role": "read-only"}, expect=201)
    return {"admin": dc.controller_proc.admin_token, "read-only": reader["token"]}


@pytest.fixture
def browser():
    with chromium() as context:
        yield context


@pytest.fixture
def page(browser):
    """A page that records every request it makes and every dialog it opens (there should be none)."""
    page = browser.new_page()
    page.requests = []
    page.dialogs = []
    page.on("request", lambda r: page.requests.append((r.url, r.headers.get("authorization"))))
    page.on("dialog", lambda d: (page.dialogs.append(d.message), d.dismiss()))
    yield page
    page.close()


@pytest.fixture(autouse=True)
def nobody_quarantined(dc):
    """Each test starts, and leaves the controller, with no VM in quarantine."""
    yield
    for record in rest_get(dc.rest_url, "/v1/quarantine")["quarantine"]:
        rest_call(dc.rest_url, "DELETE", f"/v1/quarantine/{record['vm']}", expect=204)


def quarantined(dc) -> set[str]:
    return {q["vm"] for q in rest_get(dc.rest_url, "/v1/quarantine")["quarantine"]}


def has_class(page, node: str, cls: str) -> bool:
    return page.evaluate(f"window.goldilocksView.cy.getElementById({node!r}).hasClass({cls!r})")


def test_a_wrong_token_is_refused_with_an_error_and_the_right_one_opens_the_view(dc, tokens, page):
    page.goto(dc.rest_url + "/ui")
    page.fill("#token", "glk_not-a-real-token")
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#signin-error:not([hidden])", timeout=5000)
    assert page.text_content("#signin-error") == "That token is not valid."
    assert page.is_hidden("#main")
    page.fill("#token", tokens["admin"])
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#main:not([hidden])", timeout=5000)
    assert page.text_content("#who") == "admin (admin)"
    assert page.is_hidden("#signin") and page.is_visible("#quarantine-form")
    assert page.input_value("#token") == "", "the token does not stay in the form"


def test_the_graph_shows_every_switch_vm_and_link_of_the_running_fabric_and_the_tunnels(dc, tokens, page):
    sign_in(page, dc.rest_url, tokens["admin"])
    layout = dc.layout
    expected = {f"sw:{dpid:016x}" for dpid in layout.switches.values()} | {f"vm:{name}" for name in layout.vms}
    assert wait_until(lambda: drawn_nodes(page) == expected, 5), drawn_nodes(page) ^ expected
    by_dpid = {f"{dpid:016x}": name for name, dpid in layout.switches.items()}
    links = page.evaluate(
        "window.goldilocksView.cy.edges('[kind = \"link\"]')"
        ".map((e) => [e.source().data('dpid'), e.target().data('dpid'), e.data('state')])"
    )
    drawn = sorted((tuple(sorted((by_dpid[a], by_dpid[b]))), state) for a, b, state in links)
    assert drawn == sorted((tuple(sorted(link)), "up") for link in layout.switch_links)
    roles = page.evaluate("window.goldilocksView.cy.nodes('[kind = \"switch\"]').map((n) => [n.data('name'), n.data('role')])")
    assert dict(roles) == layout.roles
    for vm, (hv, _, _) in layout.vms.items():  # each VM hangs off its own hypervisor
        attached = page.evaluate(f"window.goldilocksView.cy.getElementById('at:vm:{vm}').target().data('name')")
        assert attached == hv, vm
    labels = page.evaluate("window.goldilocksView.cy.getElementById('vm:vm3').data('label')")
    assert labels.splitlines() == ["vm3", "sensitivity=pci", "tier=db"]
    tunnels = page.evaluate(
        "window.goldilocksView.cy.edges('[kind = \"tunnel\"]').map((e) => [e.data('pair'), e.data('state'), e.data('label')])"
    )
    assert sorted(pair for pair, _, _ in tunnels) == ["hv1|hv3", "hv3|hv4"]
    for _, state, label in tunnels:
        assert state in ("up", "pending", "down") and label.startswith(f"{state} · ")
        assert "handshake" in label


def test_a_link_that_goes_down_turns_red_and_green_again_when_it_comes_back(dc, tokens, page):
    sign_in(page, dc.rest_url, tokens["admin"])
    ends = ",".join(sorted(f"{dc.layout.switches[name]:016x}" for name in ("lf1", "hv1")))
    link = (
        "() => window.goldilocksView.cy.edges('[kind = \"link\"]')"
        f".filter((e) => [e.source().data('dpid'), e.target().data('dpid')].sort().join() === {ends!r})"
        ".map((e) => `${e.data('state')} ${e.classes().join(' ')}`).join(';')"
    )
    assert page.evaluate(link) == "up link link-up"
    dc.net.configLinkStatus("lf1", "hv1", "down")
    try:
        page.wait_for_function(f"() => ({link})() === 'down link link-down'", timeout=10_000)
    finally:
        dc.net.configLinkStatus("lf1", "hv1", "up")
    page.wait_for_function(f"() => ({link})() === 'up link link-up'", timeout=20_000)
    dc.wait_for_fabric(timeout=30)


def test_a_quarantine_made_through_the_api_is_marked_within_a_second_and_release_in_the_view_undoes_it(dc, tokens, page):
    sign_in(page, dc.rest_url, tokens["admin"])
    page.wait_for_timeout(1200)  # the view is in its steady state: polls answered 304
    assert not has_class(page, "vm:vm2", "quarantined")
    started = time.monotonic()
    rest_call(dc.rest_url, "POST", "/v1/quarantine", {"vm": "vm2", "reason": "IDS: port scan"}, expect=201)
    marked = "() => window.goldilocksView.cy.getElementById('vm:vm2').hasClass('quarantined')"
    page.wait_for_function(marked, timeout=5000, polling=20)
    elapsed = time.monotonic() - started
    print(f"quarantine shown in the view {elapsed * 1000:.0f} ms after the API call started")
    assert elapsed < 1.0, f"the quarantine took {elapsed:.3f} s to appear"
    assert page.text_content("#quarantine-list li[data-vm=vm2] .reason") == "IDS: port scan"
    assert "QUARANTINED" in page.evaluate("window.goldilocksView.cy.getElementById('vm:vm2').data('label')")

    page.click("#quarantine-list li[data-vm=vm2] button.release")
    page.wait_for_function("() => !window.goldilocksView.cy.getElementById('vm:vm2').hasClass('quarantined')", timeout=5000)
    assert quarantined(dc) == set()


def test_an_admin_quarantines_a_vm_from_the_view(dc, tokens, page):
    sign_in(page, dc.rest_url, tokens["admin"])
    tap(page, "vm:vm4")  # picks it in the form
    assert page.input_value("#quarantine-vm") == "vm4"
    page.fill("#quarantine-reason", "lateral movement")
    page.click("#quarantine-form button[type=submit]")
    page.wait_for_selector("#quarantine-list li[data-vm=vm4]", timeout=5000)
    record = rest_get(dc.rest_url, "/v1/quarantine/vm4")
    assert (record["reason"], record["mode"], record["actor"]) == ("lateral movement", "isolate", "admin")
    assert page.is_hidden("#error")


def test_explain_names_the_deciding_rule_and_whether_the_flow_is_encrypted(dc, tokens, page):
    sign_in(page, dc.rest_url, tokens["read-only"])  # explain is a read: a read-only token may ask
    for src, dst, proto, port, rule, encrypted, action in [
        ("vm1", "vm3", "tcp", "5432", "rule 0: web-to-db", "yes", "encrypt (allowed, through a tunnel)"),
        ("vm2", "vm3", "icmp", "", "the default action (allow)", "no", "allow"),
    ]:
        page.select_option("#explain-src", src)
        page.select_option("#explain-dst", dst)
        page.select_option("#explain-proto", proto)
        page.fill("#explain-port", port)
        page.click("#explain-form button[type=submit]")
        page.wait_for_function(f"() => document.getElementById('explain-rule').textContent === {rule!r}", timeout=5000)
        assert page.text_content("#explain-encrypted") == encrypted, (src, dst)
        assert page.text_content("#explain-action") == action, (src, dst)


def test_a_read_only_token_gets_no_write_controls_and_a_forced_write_is_refused(dc, tokens, page):
    rest_call(dc.rest_url, "POST", "/v1/quarantine", {"vm": "vm1", "reason": "already flagged"}, expect=201)
    sign_in(page, dc.rest_url, tokens["read-only"])
    page.wait_for_selector("#quarantine-list li[data-vm=vm1]", timeout=5000)
    assert page.text_content("#who") == "wall-screen (read-only)"
    assert page.is_hidden("#quarantine-form") and page.is_visible("#read-only-note")
    assert page.locator("button.release").count() == 0, "no release button for a read-only token"
    audit_before = rest_get(dc.rest_url, "/v1/audit?limit=1")["entries"]

    # Force it: show and enable the form by hand, as a user with the developer tools could.
    page.evaluate(
        """() => {
        const form = document.getElementById('quarantine-form');
        form.hidden = false;
        for (const c of form.querySelectorAll('input, select, button')) c.disabled = false;
        const select = document.getElementById('quarantine-vm');
        const option = document.createElement('option');
        option.value = option.textContent = 'vm3';
        select.append(option);
        select.value = 'vm3';
    }"""
    )
    page.fill("#quarantine-reason", "forced")
    page.click("#quarantine-form button[type=submit]")
    page.wait_for_selector("#error:not([hidden])", timeout=5000)
    error = page.text_content("#error")
    assert "403" in error and "needs an admin token" in error, error
    assert quarantined(dc) == {"vm1"}, "nothing changed"
    assert rest_get(dc.rest_url, "/v1/audit?limit=1")["entries"] == audit_before
    status, _ = api_call(dc.rest_url, "DELETE", "/v1/quarantine/vm1", token=tokens["read-only"])
    assert status == 403 and quarantined(dc) == {"vm1"}


def test_the_token_is_only_ever_in_the_authorization_header(dc, tokens, browser, page):
    sign_in(page, dc.rest_url, tokens["admin"])
    page.wait_for_timeout(2500)  # several fabric and panel polls
    token = tokens["admin"]
    assert token not in page.url
    assert page.evaluate("[localStorage.length, sessionStorage.length, document.cookie]") == [0, 0, ""]
    assert browser.cookies() == []
    api_requests = [(url, auth) for url, auth in page.requests if "/v1/" in url]
    assert len(api_requests) >= 5
    assert all(token not in url for url, _ in page.requests)
    assert all(auth == f"Bearer {token}" for _, auth in api_requests)
    assert all(auth is None for url, auth in page.requests if "/ui" in url), "the page's files are fetched without it"
    assert token not in page.content()


def test_the_page_carries_a_strict_content_security_policy_and_breaks_none_of_it(dc, tokens, page):
    responses = []
    page.on("response", lambda r: responses.append(r) if "/ui" in r.url else None)
    sign_in(page, dc.rest_url, tokens["admin"])
    tap(page, "vm:vm1")
    page.select_option("#explain-src", "vm1")
    page.select_option("#explain-dst", "vm3")
    page.click("#explain-form button[type=submit]")
    page.wait_for_selector("#explain-result:not([hidden])", timeout=5000)
    page.wait_for_timeout(1500)
    assert {r.url.removeprefix(dc.rest_url) for r in responses} >= {"/ui", "/ui/app.js", "/ui/app.css", "/ui/cytoscape.min.js"}
    for response in responses:
        headers = response.headers
        assert headers["content-security-policy"] == CSP, response.url
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer"
    assert csp_violations(page) == []
    assert page.evaluate("document.querySelectorAll('style').length") == 0, "Cytoscape.js added no <style> element"


def test_server_strings_are_shown_as_text_never_as_markup(dc, tokens, page):
    reason = '<img src=x onerror="window.__pwned=1;alert(1)"><script>window.__pwned=2</script>'
    rest_call(dc.rest_url, "POST", "/v1/quarantine", {"vm": "vm3", "reason": reason}, expect=201)
    sign_in(page, dc.rest_url, tokens["admin"])
    page.wait_for_selector("#quarantine-list li[data-vm=vm3]", timeout=5000)
    tap(page, "vm:vm3")
    page.wait_for_timeout(2500)  # the audit panel's poll, which shows the reason in its summary
    assert page.text_content("#quarantine-list li[data-vm=vm3] .reason") == reason
    assert reason in page.text_content("#selection-details")
    assert any(reason in entry for entry in page.locator("#audit .summary").all_text_contents())
    assert page.locator("main img, main script").count() == 0
    assert page.evaluate("window.__pwned") is None and page.dialogs == []
    assert csp_violations(page) == []
