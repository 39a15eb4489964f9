"""Where the CLI finds its controller and token: flags, then environment, then the config file,
then the local defaults; a config it cannot use is an error naming the file."""

from __future__ import annotations

import pytest

from controller.cli import connection
from controller.cli.connection import SettingsError, resolve


@pytest.fixture
def files(tmp_path, monkeypatch):
    """Token files for each source, and a default token file that exists."""
    paths = {}
    for name in ("flag", "env", "config", "default"):
        path = tmp_path / f"{name}.token"
        path.write_text(f"glk_{name}\n")
        path.chmod(0o600)
        paths[name] = path
    monkeypatch.setattr(connection, "DEFAULT_TOKEN_FILE", str(paths["default"]))
    config = tmp_path / "xdg" / "goldilocks" / "cli.yaml"
    config.parent.mkdir(parents=True)
    config.write_text(f"url: http://config:1\ntoken_file: {paths['config']}\n")
    paths["xdg"] = tmp_path / "xdg"
    return paths


def test_each_setting_comes_from_the_first_source_that_gives_it(files):
    env = {"XDG_CONFIG_HOME": str(files["xdg"])}
    got = resolve(None, None, None, env)
    assert (got.url, got.token, got.url_source) == (
        "http://config:1",
        "glk_config",
        f"config file {files['xdg']}/goldilocks/cli.yaml: url",
    )
    env_token = {**env, "GOLDILOCKS_URL": "http://env:2", "GOLDILOCKS_TOKEN_FILE": str(files["env"])}
    got = resolve(None, None, None, env_token)
    assert (got.url, got.token) == ("http://env:2", "glk_env")
    assert resolve(None, None, None, {**env_token, "GOLDILOCKS_TOKEN": "glk_value"}).token == "glk_value"  # the value first
    got = resolve("http://flag:3/", str(files["flag"]), None, {**env_token, "GOLDILOCKS_TOKEN": "glk_value"})
    assert (got.url, got.token, got.token_source) == ("http://flag:3", "glk_flag", f"--token-file {files['flag']}")
    # Settings are independent: a flag for the URL, the token from the config file.
    assert resolve("http://flag:3", None, None, env).token == "glk_config"


def test_without_any_source_the_local_defaults(files, tmp_path):
    got = resolve(None, None, None, {"HOME": str(tmp_path / "nohome")})
    assert (got.url, got.url_source, got.token) == ("http://127.0.0.1:8080", "default", "glk_default")
    files["default"].unlink()  # no default token file: no token, and no error (health needs none)
    got = resolve(None, None, None, {"HOME": str(tmp_path / "nohome")})
    assert (got.token, got.token_source) == (None, None)


def test_the_config_file_defaults_to_home_dot_config(files, tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "goldilocks").mkdir(parents=True)
    (home / ".config" / "goldilocks" / "cli.yaml").write_text("url: https://home:4\n")
    assert resolve(None, None, None, {"HOME": str(home)}).url == "https://home:4"


@pytest.mark.parametrize(
    "text, message",
    [
        ("url: [oops\n", "not valid YAML at line 2"),
        ("- url\n", "must be a mapping"),
        ("url: http://x\ntoken: glk_secret\n", "token: unknown key"),
        ("url: 8080\n", "url: must be a non-empty string"),
        ("url: ftp://x\n", "is not a controller URL"),
    ],
)
def test_a_config_file_that_cannot_be_used_names_itself(tmp_path, text, message):
    config = tmp_path / "cli.yaml"
    config.write_text(text)
    with pytest.raises(SettingsError, match=message) as caught:
        resolve(None, None, str(config), {})
    assert str(config) in str(caught.value) and "glk_secret" not in str(caught.value)


def test_an_empty_config_file_is_no_settings(tmp_path):
    (tmp_path / "cli.yaml").write_text("")
    assert resolve(None, None, str(tmp_path / "cli.yaml"), {"GOLDILOCKS_TOKEN": "glk_x"}).url == "http://127.0.0.1:8080"


def test_a_named_file_that_is_missing_is_an_error_the_default_one_is_not(tmp_path):
    with pytest.raises(SettingsError, match="does not exist"):
        resolve(None, None, str(tmp_path / "none.yaml"), {})
    with pytest.raises(SettingsError, match="--token-file: cannot read"):
        resolve(None, str(tmp_path / "none.token"), None, {"HOME": str(tmp_path)})
    with pytest.raises(SettingsError, match="is empty"):
        (tmp_path / "empty.token").write_text("\n")
        resolve(None, str(tmp_path / "empty.token"), None, {"HOME": str(tmp_path)})


def test_a_token_file_others_may_read_is_warned_about_but_used(tmp_path):
    shared = tmp_path / "shared.token"
    shared.write_text("glk_shared")
    shared.chmod(0o640)
    got = resolve(None, str(shared), None, {"HOME": str(tmp_path)})
    assert got.token == "glk_shared"
    assert got.warnings == (f"warning: token file {shared} is accessible by others (mode 640); chmod 600 it",)
    assert "glk_shared" not in repr(got)


@pytest.mark.parametrize("url", ["localhost:8080", "http://", "http://h:99999", "http://h/?x=1", "file:///etc/passwd"])
def test_a_url_that_is_no_controller_url_is_refused(url):
    with pytest.raises(SettingsError, match="--url"):
        resolve(url, None, None, {"GOLDILOCKS_TOKEN": "glk_x"})


@pytest.mark.parametrize("value", ["glk_a b", "glk_a\nX-Evil: 1", "Bearer glk_abc", "glk_é"])
def test_a_malformed_token_is_refused_without_showing_it(tmp_path, value):
    with pytest.raises(SettingsError, match="from GOLDILOCKS_TOKEN is not a token") as caught:
        resolve(None, None, None, {"HOME": str(tmp_path), "GOLDILOCKS_TOKEN": value})
    assert value.strip() not in str(caught.value)


def test_a_relative_token_file_in_the_config_is_next_to_it(tmp_path, monkeypatch):
    config = tmp_path / "etc" / "cli.yaml"
    config.parent.mkdir()
    config.write_text("token_file: ops.token\n")
    (config.parent / "ops.token").write_text("glk_ops")
    (config.parent / "ops.token").chmod(0o600)
    monkeypatch.chdir(tmp_path)
    got = resolve(None, None, str(config), {})
    assert got.token == "glk_ops" and got.token_source == f"config file {config}: token_file {config.parent / 'ops.token'}"
