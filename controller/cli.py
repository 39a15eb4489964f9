"""The `goldilocks` command line (being written)."""

from __future__ import annotations


def main() -> None:
    raise SystemExit("goldilocks: the CLI is not built yet")
