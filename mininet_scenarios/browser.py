"""Debian's Chromium, headless and driven by Playwright, for the web view's tests and screenshot.

Never a downloaded browser: /usr/bin/chromium (the `chromium` package), a fresh profile each time,
and nothing that phones home. Every page records the Content-Security-Policy violations it sees,
so a caller can assert there were none.

The page's CSP forbids eval, so predicates for page.wait_for_function must be written as
functions ("() => ..."), which Playwright calls through the debugger protocol; a bare expression
string would be eval'd in the page and refused."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# Runs before the page's own scripts (Playwright injects it past the page's CSP).
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"} (${e.sourceFile}:${e.lineNumber})`);
});
"""


@contextlib.contextmanager
def chromium(color_scheme: str = "dark", viewport: tuple[int, int] = (1400, 860)) -> Iterator:
    """A browser context (fresh profile) whose pages record CSP violations; closed whatever happens."""
    if not os.access(CHROMIUM, os.X_OK):
        raise RuntimeError(f"{CHROMIUM} is missing: install Debian's chromium package (make install)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright, tempfile.TemporaryDirectory(prefix="goldilocks-chromium-") as profile:
        context = playwright.chromium.launch_persistent_context(
            profile,
            executable_path=CHROMIUM,
            args=CHROMIUM_ARGS,
            headless=True,
            color_scheme=color_scheme,
            viewport={"width": viewport[0], "height": viewport[1]},
            service_workers="block",
        )
        try:
            context.add_init_script(RECORD_VIOLATIONS)
            yield context
        finally:
            context.close()


def sign_in(page, base_url: str, token: str, timeout_ms: float = 10_000) -> None:
    """Open the view and sign in; returns once the fabric is drawn."""
    page.goto(base_url + "/ui")
    page.fill("#token", token)
    page.click("#signin-form button[type=submit]")
    page.wait_for_selector("#main:not([hidden])", timeout=timeout_ms)
    page.wait_for_function("() => window.goldilocksView.cy !== null", timeout=timeout_ms)


def csp_violations(page) -> list[str]:
    return page.evaluate("window.__cspViolations || []")


def drawn_nodes(page) -> set[str]:
    return set(page.evaluate("window.goldilocksView.cy.nodes().map((n) => n.id())"))


def tap(page, element_id: str) -> None:
    """Tap a node or edge of the graph, as a click on it would. (The function returns nothing on
    purpose: Playwright would otherwise serialise the whole Cytoscape collection emit() returns.)"""
    page.evaluate("(id) => { window.goldilocksView.cy.getElementById(id).emit('tap'); }", element_id)
