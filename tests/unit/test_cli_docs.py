"""docs/cli.md is the commands' own --help: regenerating it changes nothing, so it cannot drift."""

from __future__ import annotations

from controller.cli import commands, docs


def test_docs_cli_md_is_the_commands_own_help():
    assert docs.PAGE.read_text(encoding="utf-8") == docs.render(), "docs/cli.md is stale: run `python -m controller.cli.docs`"


def test_every_command_is_documented_and_has_the_output_option():
    page = docs.PAGE.read_text(encoding="utf-8")
    for path, command in docs.commands(commands.cli):
        assert f"### `{' '.join(('goldilocks', *path))}`" in page
        if path and path != ("completion",) and not hasattr(command, "commands"):
            assert "fmt" in {p.name for p in command.params}, f"goldilocks {' '.join(path)} has no -o"
