"""The `goldilocks` command line: a thin client of the controller's REST API (docs/cli.md)."""

from __future__ import annotations


def main() -> None:
    """The console script's entry point (setup.cfg: goldilocks = controller.cli:main)."""
    from controller.cli.commands import main as run

    run()
