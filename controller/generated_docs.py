"""Pages under docs/ that are generated from the code (docs/cli.md, docs/metrics.md): write one,
or, with check, only say whether it is out of date."""

from __future__ import annotations

import sys
from pathlib import Path


def write_or_check(page: Path, text: str, check: bool, command: str) -> int:
    """0 when written or up to date; 1 (and a line on stderr naming `command`) when check finds it stale."""
    if check:
        if not page.exists() or page.read_text(encoding="utf-8") != text:
            print(f"{page} is out of date: run `{command}`", file=sys.stderr)
            return 1
        return 0
    page.write_text(text, encoding="utf-8")
    print(f"wrote {page}")
    return 0
