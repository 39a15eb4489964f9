"""Ryu 4.34 imports `eventlet.wsgi.ALREADY_HANDLED`, which eventlet 0.33.3 dropped: without it,
`ryu-manager --version` and every app that uses Ryu's WSGI layer fail at import.

`install()` sets the name back whenever `eventlet.wsgi` is imported, by any program, without
editing site-packages: `make install` (scripts/install.sh) writes a path-configuration file,
`goldilocks-eventlet-compat.pth`, into the project's virtualenv, which calls it at interpreter
start. So a stock `ryu-manager controller.app ryu.app.ofctl_rest` works there. It costs nothing
until `eventlet.wsgi` is imported: only then is anything looked at."""

from __future__ import annotations

import importlib.abc
import sys

TARGET = "eventlet.wsgi"


def patch(module) -> None:
    """What Ryu needs of the module (only what is missing)."""
    if not hasattr(module, "ALREADY_HANDLED"):
        module.ALREADY_HANDLED = []


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, inner) -> None:
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module) -> None:
        self.inner.exec_module(module)
        patch(module)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds eventlet.wsgi with the other finders, and patches it once it has run."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader)
                return spec
        return None


def install() -> None:
    """Idempotent."""
    if TARGET in sys.modules:
        patch(sys.modules[TARGET])
        return
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


# What the .pth file holds: one line, which must never make an interpreter fail to start.
PTH_LINE = (
    'import sys; exec("try:\\n import controller.eventlet_compat as m\\n m.install()\\nexcept Exception:\\n pass")\n'
)
