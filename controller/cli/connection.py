"""Where the CLI finds its controller and token: flags, then environment, then the config file,
then the local controller's defaults. Each setting is resolved on its own, first source wins."""

from __future__ import annotations

import os
import re
import stat
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import yaml

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_TOKEN_FILE = "/var/lib/goldilocks/admin.token"
CONFIG_KEYS = ("url", "token_file")
ENV_URL, ENV_TOKEN, ENV_TOKEN_FILE = "GOLDILOCKS_URL", "GOLDILOCKS_TOKEN", "GOLDILOCKS_TOKEN_FILE"
# RFC 6750 token68, as the controller accepts: anything else (a newline, a space, a pasted
# "Bearer ...") would at best be refused and at worst end up in an HTTP library's error message.
TOKEN_RE = re.compile(r"[A-Za-z0-9\-._~+/]+=*")


class SettingsError(Exception):
    """A setting the user gave cannot be used (a bad config file or URL): a usage error."""


@dataclass(frozen=True)
class Connection:
    url: str
    url_source: str
    token: str | None
    token_source: str | None  # e.g. "--token-file /root/ro.token", never the token
    warnings: tuple[str, ...] = ()

    def __repr__(self) -> str:  # never the token
        return f"Connection({self.url!r} from {self.url_source}, token from {self.token_source})"


def default_config_path(env: Mapping[str, str]) -> Path:
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".config")
    return Path(base, "goldilocks", "cli.yaml")


def read_config(path: Path, required: bool) -> dict[str, str]:
    """The config file's settings; {} when the default file does not exist. Anything else wrong
    with it is a SettingsError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if required:
            raise SettingsError(f"config file {path}: does not exist") from None
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path}: cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1} column {mark.column + 1}" if mark else ""
        raise SettingsError(f"config file {path}: not valid YAML{where}") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise SettingsError(f"config file {path}: must be a mapping of {', '.join(CONFIG_KEYS)}")
    for key, value in doc.items():
        if key not in CONFIG_KEYS:
            raise SettingsError(f"config file {path}: {key}: unknown key (allowed: {', '.join(CONFIG_KEYS)})")
        if not isinstance(value, str) or not value:
            raise SettingsError(f"config file {path}: {key}: must be a non-empty string")
    return dict(doc)


def check_url(url: str, source: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise SettingsError(f"{source}: {url!r} is not a controller URL like {DEFAULT_URL}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a port out of range
    except ValueError:
        raise SettingsError(f"{source}: {url!r} has a bad port") from None
    return url.rstrip("/")


def read_token_file(path: str, source: str, required: bool) -> tuple[str | None, tuple[str, ...]]:
    """The token in a file, and a warning if others may read it (as ssh does for keys, but we
    only warn: the controller's own admin.token is 0600 and a shared read-only token may be
    deliberately readable by a group). A required file that cannot be read is a SettingsError."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8")
        mode = file.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        if not required:
            return None, ()
        raise SettingsError(f"{source}: cannot read {file} ({getattr(exc, 'strerror', None) or exc})") from None
    token = text.strip()
    if not token:
        raise SettingsError(f"{source}: {file} is empty")
    warnings = ()
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings = (f"warning: token file {file} is accessible by others (mode {stat.S_IMODE(mode):o}); chmod 600 it",)
    return token, warnings


def resolve(url_flag: str | None, token_file_flag: str | None, config_flag: str | None, env: Mapping[str, str]) -> Connection:
    config_path = Path(config_flag).expanduser() if config_flag else default_config_path(env)
    config = read_config(config_path, required=bool(config_flag))
    in_config = f"config file {config_path}"

    if url_flag:
        url, url_source = url_flag, "--url"
    elif env.get(ENV_URL):
        url, url_source = env[ENV_URL], ENV_URL
    elif "url" in config:
        url, url_source = config["url"], f"{in_config}: url"
    else:
        url, url_source = DEFAULT_URL, "default"
    url = check_url(url, url_source)

    token, warnings = None, ()
    if token_file_flag:
        token_source = f"--token-file {token_file_flag}"
        token, warnings = read_token_file(token_file_flag, "--token-file", required=True)
    elif env.get(ENV_TOKEN):
        token, token_source = env[ENV_TOKEN].strip(), ENV_TOKEN
    elif env.get(ENV_TOKEN_FILE):
        token_source = f"{ENV_TOKEN_FILE} {env[ENV_TOKEN_FILE]}"
        token, warnings = read_token_file(env[ENV_TOKEN_FILE], ENV_TOKEN_FILE, required=True)
    elif "token_file" in config:
        path = Path(config["token_file"]).expanduser()
        if not path.is_absolute():  # next to the config file, wherever the command runs from
            path = config_path.parent / path
        token_source = f"{in_config}: token_file {path}"
        token, warnings = read_token_file(str(path), f"{in_config}: token_file", required=True)
    else:
        token_source = f"the default token file {DEFAULT_TOKEN_FILE}"
        token, warnings = read_token_file(DEFAULT_TOKEN_FILE, "default", required=False)
        if token is None:
            token_source = None
    if token is not None and not TOKEN_RE.fullmatch(token):
        raise SettingsError(f"the token from {token_source} is not a token: it holds characters no token has")
    return Connection(url, url_source, token, token_source, warnings)
