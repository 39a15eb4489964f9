"""The web view at /ui: its fixed set of static files, the security headers every /ui answer carries,
and the shared, encoded copy of the fabric document (`GET /v1/fabric`, built by rest.fabric_view) its graph is drawn from.

Only the files named in UI_FILES are ever served: a request names a key of that table, never a path,
so no request can reach another file. The page holds no data and no secret (it is OPEN); everything
it shows comes from /v1 endpoints called with the bearer token the user signs in with."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

UI_DIR = Path(__file__).resolve().parent / "ui"
MIN_REBUILD_SECONDS = 0.1
REBUILD_COST_FACTOR = 5

# No inline script or style, no framing, no form posts, no third-party anything. Cytoscape.js styles
# its elements through CSSOM (element.style), which style-src does not govern; the one <style> element
# it would add is pre-empted in index.html (see the id of its stylesheet link).
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
# Static files may be kept, but are checked again (ETag) before each use: an upgraded controller
# serves its new page at once.
STATIC_CACHE_CONTROL = "no-cache"


@dataclass(frozen=True)
class UiFile:
    path: str  # under UI_DIR
    content_type: str


# The URL name (/ui/<name>) -> the file. Nothing else under /ui exists.
UI_FILES = {
    "index.html": UiFile("index.html", "text/html"),
    "app.js": UiFile("app.js", "text/javascript"),
    "app.css": UiFile("app.css", "text/css"),
    "cytoscape.min.js": UiFile("vendor/cytoscape.min.js", "text/javascript"),
    "cytoscape-LICENSE.txt": UiFile("vendor/LICENSE", "text/plain"),
}


class UiFileMissing(Exception):
    """A whitelisted file is not installed with this copy of the controller."""


def ui_file(name: str) -> tuple[bytes, UiFile] | None:
    """The file's bytes and description, or None when `name` is not a file of the view."""
    entry = UI_FILES.get(name)
    if entry is None:
        return None
    try:
        return (UI_DIR / entry.path).read_bytes(), entry
    except OSError:
        raise UiFileMissing(f"the web view's {name} is not installed with this copy of the controller") from None


def etag_of(content: bytes) -> str:
    return f'"{hashlib.sha256(content).hexdigest()[:32]}"'


def etag_matches(if_none_match: str | None, etag: str) -> bool:
    """Whether a request's If-None-Match names this ETag (weak comparison, as GET allows)."""
    if not if_none_match:
        return False
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(candidate.strip().removeprefix("W/") == opaque for candidate in if_none_match.split(","))


# -- the fabric document ----------------------------------------------------------------------
class FabricDocument:
    """The encoded fabric document and its ETag, shared by every open view. A policy change (a new
    PolicyState) rebuilds it at once; anything else (topology, tunnels) is picked up when the copy is
    older than MIN_REBUILD_SECONDS or REBUILD_COST_FACTOR times what the last build took, whichever is
    longer. So however many views poll, and however large the fabric, building it takes at most
    about 1/REBUILD_COST_FACTOR of the controller's time (at 20,000 VMs a build takes 0.1 to 0.3 s)."""

    def __init__(self, build: Callable[[object], dict], clock: Callable[[], float] = time.monotonic) -> None:
        self.build = build  # app -> the document (rest.fabric_view)
        self.clock = clock
        self.builds = 0
        self._body: bytes | None = None
        self._etag = ""
        self._policy: object = None
        self._built_at = 0.0
        self._cost = 0.0

    def current(self, app) -> tuple[bytes, str]:
        now = self.clock()
        fresh = now - self._built_at < max(MIN_REBUILD_SECONDS, REBUILD_COST_FACTOR * self._cost)
        if self._body is None or self._policy is not app.policy or not fresh:
            policy = app.policy
            # Compact and with sorted keys: equal fabrics are equal bytes, so the ETag is a strong one.
            self._body = json.dumps(self.build(app), sort_keys=True, separators=(",", ":")).encode()
            self._etag = etag_of(self._body)
            self._policy, self._built_at, self._cost = policy, now, self.clock() - now
            self.builds += 1
        return self._body, self._etag


def secured(response):
    """The response with the view's security headers (every /ui answer, errors included)."""
    response.headers.update(SECURITY_HEADERS)
    return response
