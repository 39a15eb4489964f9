"""Printing: the API's own data as JSON or YAML for machines, or tables (rich) for people.
Only the result goes to stdout; warnings and errors go to stderr."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

import yaml

from controller.cli.views import Pairs, Table, View

FORMATS = ("table", "json", "yaml")


def dump(data: Any, fmt: str) -> str:
    """The data, machine-readable, exactly as the API gave it."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    raise ValueError(f"not a machine format: {fmt}")


def _console(stream=None):
    from rich.console import Console

    stream = stream or sys.stdout
    # Colours and the terminal's width only on a terminal (rich checks); a pipe gets plain text
    # whose rows are never folded, so grep and awk see one row per line.
    tty = stream.isatty()
    return Console(file=stream, width=None if tty else 1000, soft_wrap=not tty, highlight=False)


# Cells that are exactly one of these words get a colour (on a terminal only): states at a glance.
STYLES = {"up": "green", "pending": "yellow", "down": "bold red", "allow": "green", "deny": "red", "encrypt": "cyan",
          "isolate": "bold red", "remediate": "yellow", "DROPPED": "bold red"}  # fmt: skip


def _rich(view: View, headers: bool):
    from rich.table import Table as RichTable
    from rich.text import Text

    if isinstance(view, str):
        return Text(view)
    if isinstance(view, Pairs):
        table = RichTable(box=None, show_header=False, pad_edge=False, title=view.title, title_justify="left")
        table.add_column(style="bold", no_wrap=True)
        table.add_column()
        for key, value in view.items:
            table.add_row(f"{key}:", Text(value))
        return table
    if not view.rows:
        return Text(f"{view.title}: {view.empty}" if view.title else view.empty)
    table = RichTable(
        box=None,
        show_header=headers,
        header_style="bold",
        pad_edge=False,
        show_edge=False,
        title=view.title,
        title_justify="left",
        title_style="bold",
    )
    for column in view.columns:
        table.add_column(column, overflow="fold")
    for row in view.rows:
        table.add_row(*(Text(cell, style=STYLES.get(cell, "")) for cell in row))
    return table


def print_views(views: Iterable[View], headers: bool = True, stream=None) -> None:
    stream = stream or sys.stdout
    console = _console(stream)
    with console.capture() as captured:
        for i, view in enumerate(views):
            if i and isinstance(view, Table | Pairs) and view.title:
                console.print()
            console.print(_rich(view, headers))
    text = captured.get()
    if not console.is_terminal:  # rich pads every cell to its column's width: no trailing blanks in a pipe
        text = "".join(line.rstrip() + "\n" for line in text.splitlines())
    stream.write(text)


def emit(data: Any, fmt: str, views: Callable[[], Iterable[View]], headers: bool = True) -> None:
    """Print `data` as JSON or YAML, or the tables `views()` makes of it."""
    if fmt == "table":
        print_views(views(), headers)
    else:
        sys.stdout.write(dump(data, fmt))


def done(message: str, fmt: str) -> None:
    """An action the API answers with nothing (204): a line for people, nothing for machines."""
    if fmt == "table":
        print_views([message])
