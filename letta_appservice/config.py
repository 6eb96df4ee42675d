"""Configuration: load the YAML file over the shipped example, apply env overrides, validate."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from .errors import ConfigError

# Environment variables that override a config key (secrets and container-specific addresses).
ENV_OVERRIDES: dict[str, str] = {
    "LETTA_APPSERVICE_AS_TOKEN": "appservice.as_token",
    "LETTA_APPSERVICE_HS_TOKEN": "appservice.hs_token",
    "LETTA_APPSERVICE_DATABASE": "appservice.database",
    "LETTA_APPSERVICE_ADDRESS": "appservice.address",
    "LETTA_APPSERVICE_HOSTNAME": "appservice.hostname",
    "LETTA_APPSERVICE_PORT": "appservice.port",
    "LETTA_APPSERVICE_HOMESERVER_ADDRESS": "homeserver.address",
    "LETTA_APPSERVICE_HOMESERVER_DOMAIN": "homeserver.domain",
    "LETTA_API_KEY": "letta.api_key",
    "LETTA_BASE_URL": "letta.base_url",
}
# Keys the operator must set in their own file: the example's value would be wrong everywhere.
REQUIRED_IN_FILE = ("homeserver.address", "homeserver.domain", "appservice.address")
PERMISSION_LEVELS = ("user", "admin")
DISPLAY_MODES = ("off", "notice")
_LOCALPART_RE = re.compile(r"^[a-z0-9._=/-]+$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def example_text() -> str:
    """The commented example config shipped in the package (the single source of defaults)."""
    return resources.files(__package__).joinpath("example-config.yaml").read_text("utf-8")


@attrs.frozen
class HomeserverConfig:
    address: str
    domain: str
    verify_ssl: bool


@attrs.frozen
class AppserviceConfig:
    id: str
    address: str
    hostname: str
    port: int
    bot_localpart: str
    bot_displayname: str
    as_token: str = attrs.field(repr=False)
    hs_token: str = attrs.field(repr=False)
    database: str = attrs.field(repr=False)
    max_body_size: int


@attrs.frozen
class LettaConfig:
    base_url: str
    api_key: str = attrs.field(repr=False)
    sync_interval: float
    page_size: int
    timeout: float
    max_concurrency: int
    streaming: bool
    retry_window: float
    delay_notice: float
    filter_tags: tuple[str, ...]
    filter_name: str


@attrs.frozen
class BridgeConfig:
    username_template: str
    displayname_template: str
    room_name_template: str
    space_name: str
    archived_suffix: str
    command_prefix: str
    attribution_template: str
    show_reasoning: str
    show_tools: str
    permissions: Mapping[str, str]


@attrs.frozen
class GuardConfig:  # issue #12: letta.turn_deadline, bridge.remote_rooms, bridge.bot_users
    turn_deadline: float = 900.0  # seconds a whole Letta turn may take, streamed or not
    remote_rooms: str = "admins"  # who may bring agents into other servers' rooms (or "users")
    bot_users: tuple[str, ...] = ()  # regexes of other bots' and bridges' users


@attrs.frozen
class Config:
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    letta: LettaConfig
    bridge: BridgeConfig
    log_level: str
    guards: GuardConfig = GuardConfig()

    @property
    def bot_mxid(self) -> str:
        return f"@{self.appservice.bot_localpart}:{self.homeserver.domain}"


# --- reading ---------------------------------------------------------------------------------


def yaml_rt() -> YAML:
    """A round-trip YAML instance: keeps comments when the file is rewritten (``-g``)."""
    yaml = YAML()
    yaml.indent(mapping=4, sequence=4, offset=2)
    yaml.preserve_quotes = True
    return yaml


def read_yaml(path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return yaml_rt().load(f)
    except OSError as e:
        raise ConfigError("", f"cannot read {path}: {e.strerror or e}") from None
    except YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError("", f"{path} is not valid YAML{where}") from None


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """Read and validate ``path``; raise ConfigError naming the first bad key."""
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{path} must be a YAML mapping of sections")
    return parse_config(data, os.environ if env is None else env)


def parse_config(data: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    """Validate a config mapping laid over the example's defaults."""
    for key in REQUIRED_IN_FILE:
        if _lookup(data, key) is None:
            raise ConfigError(key, "is required")
    merged = merge_sections(YAML(typ="safe").load(example_text()), data)
    for var, key in ENV_OVERRIDES.items():
        if env and env.get(var):
            _assign(merged, key, env[var])
    return _Validator(merged).build()


def _lookup(data: Mapping[str, Any], key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _assign(data: dict[str, Any], key: str, value: Any) -> None:
    section, name = key.split(".")
    data.setdefault(section, {})[name] = value


def merge_sections(base: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        # Permissions replace the example's wholesale: merging would grant example.org access.
        if isinstance(value, Mapping) and isinstance(out.get(key), dict) and key != "permissions":
            out[key] = merge_sections(out[key], value)
        else:
            out[key] = value
    return out


# --- validating ------------------------------------------------------------------------------


class _Validator:
    def __init__(self, data: Mapping[str, Any]) -> None:
        self.data = data

    def get(
        self, key: str, kind: type | tuple[type, ...], check: Callable[[Any], str] | None = None
    ):
        value = _lookup(self.data, key)
        if value is None:
            raise ConfigError(key, "is required")
        if kind is int or kind is float:
            # Env overrides arrive as strings; YAML gives numbers.
            try:
                value = kind(value) if not isinstance(value, bool) else None
            except (TypeError, ValueError):
                value = None
            if value is None:
                raise ConfigError(key, f"must be a number, got {_lookup(self.data, key)!r}")
        elif not isinstance(value, kind) or (kind is str and isinstance(value, bool)):
            raise ConfigError(key, f"must be {_kind_name(kind)}, got {value!r}")
        if check and (problem := check(value)):
            raise ConfigError(key, problem)
        return value

    def build(self) -> Config:
        g = self.get
        as_token = g("appservice.as_token", str, _token)
        hs_token = g("appservice.hs_token", str, _token)
        if as_token == hs_token:
            raise ConfigError("appservice.hs_token", "must differ from appservice.as_token")
        return Config(
            homeserver=HomeserverConfig(
                address=g("homeserver.address", str, _http_url).rstrip("/"),
                domain=g("homeserver.domain", str, _domain),
                verify_ssl=g("homeserver.verify_ssl", bool),
            ),
            appservice=AppserviceConfig(
                id=g("appservice.id", str, _ident),
                address=g("appservice.address", str, _http_url).rstrip("/"),
                hostname=g("appservice.hostname", str, _nonempty),
                port=g("appservice.port", int, _port),
                bot_localpart=g("appservice.bot_localpart", str, _localpart),
                bot_displayname=g("appservice.bot_displayname", str),
                as_token=as_token,
                hs_token=hs_token,
                database=g("appservice.database", str, _database),
                max_body_size=g("appservice.max_body_size", int, _positive),
            ),
            letta=LettaConfig(
                base_url=g("letta.base_url", str, _http_url).rstrip("/"),
                api_key=g("letta.api_key", str),
                sync_interval=g("letta.sync_interval", float, _positive),
                page_size=g("letta.page_size", int, _positive),
                timeout=g("letta.timeout", float, _positive),
                max_concurrency=g("letta.max_concurrency", int, _positive),
                streaming=g("letta.streaming", bool),
                retry_window=g("letta.retry_window", float, _positive),
                delay_notice=g("letta.delay_notice", float, _positive),
                filter_tags=tuple(g("letta.filter_tags", list, _str_list)),
                filter_name=g("letta.filter_name", str, _regex),
            ),
            bridge=BridgeConfig(
                username_template=g("bridge.username_template", str, _username_template),
                displayname_template=g("bridge.displayname_template", str, _fields("name")),
                room_name_template=g("bridge.room_name_template", str, _fields("name")),
                space_name=g("bridge.space_name", str, _nonempty),
                archived_suffix=g("bridge.archived_suffix", str),
                command_prefix=g("bridge.command_prefix", str, _nonempty),
                attribution_template=g(
                    "bridge.attribution_template",
                    str,
                    _fields("displayname", "sender", "room_name"),
                ),
                show_reasoning=g("bridge.show_reasoning", str, _choice(DISPLAY_MODES)),
                show_tools=g("bridge.show_tools", str, _choice(DISPLAY_MODES)),
                permissions=_permissions(g("bridge.permissions", Mapping)),
            ),
            log_level=g("logging.level", str, _choice(("DEBUG", "INFO", "WARNING", "ERROR"))),
            guards=GuardConfig(
                g("letta.turn_deadline", float, _positive),
                g("bridge.remote_rooms", str, _choice(("admins", "users"))),
                tuple(g("bridge.bot_users", list, lambda x: _str_list(x) or _regexes(x))),
            ),
        )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "a string", bool: "true or false", list: "a list", Mapping: "a mapping"}
    return names.get(kind, str(kind))  # type: ignore[arg-type]


def _nonempty(v: str) -> str:
    return "" if v.strip() else "must not be empty"


def _positive(v: float) -> str:
    return "" if v > 0 else "must be greater than 0"


def _port(v: int) -> str:
    return "" if 0 < v < 65536 else "must be a port number (1-65535)"


def _ident(v: str) -> str:
    return "" if re.fullmatch(r"[A-Za-z0-9._-]+", v) else "may only contain A-Z a-z 0-9 . _ -"


def _localpart(v: str) -> str:
    return "" if _LOCALPART_RE.match(v) else "must be a lowercase Matrix localpart (a-z 0-9 ._=/-)"


def _domain(v: str) -> str:
    return "" if _DOMAIN_RE.match(v) else f"is not a valid server name: {v!r}"


def _http_url(v: str) -> str:
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"is not a valid URL: {v!r}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL like http://host:port, got {v!r}"
    return ""


def _token(v: str) -> str:
    if v == "generate":
        return "is still 'generate': run `letta-appservice -g` to create the registration"
    return "" if len(v) >= 16 and v.isprintable() and " " not in v else "must be 16+ characters"


def _database(v: str) -> str:
    if v.startswith("sqlite:") and len(v) > len("sqlite:"):
        return ""
    if v.startswith(("postgres://", "postgresql://")):
        parts = urlsplit(v)
        return "" if parts.hostname and parts.path.strip("/") else "needs a host and a database"
    return "must be sqlite:<path> or postgres://user:password@host/database"


def _regex(v: str) -> str:
    try:
        re.compile(v)
    except re.error as e:
        return f"is not a valid regular expression: {e}"
    return ""


_regexes = lambda v: next(filter(None, map(_regex, v)), "")  # noqa: E731 - bridge.bot_users


def _str_list(v: list[Any]) -> str:
    return "" if all(isinstance(x, str) for x in v) else "must be a list of strings"


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    return lambda v: "" if v in options else f"must be one of {', '.join(options)}, got {v!r}"


def _fields(*allowed: str) -> Callable[[str], str]:
    def check(v: str) -> str:
        try:
            v.format(**{name: "x" for name in allowed})
        except (KeyError, IndexError, ValueError) as e:
            return f"may only use the fields {{{'}, {'.join(allowed)}}} ({e!r} is unknown)"
        return ""

    return check


def _username_template(v: str) -> str:
    if v.count("{agent_id}") != 1:
        return "must contain {agent_id} exactly once"
    literal = v.replace("{agent_id}", "")
    if literal and not _LOCALPART_RE.match(literal):
        return "may only contain lowercase a-z 0-9 ._=/- around {agent_id}"
    return ""


def _permissions(raw: Mapping[str, Any]) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for who, level in raw.items():
        key = f'bridge.permissions["{who}"]'
        if level not in PERMISSION_LEVELS:
            raise ConfigError(key, f"must be user or admin, got {level!r}")
        who = str(who)
        if who != "*" and not (who.startswith("@") and ":" in who) and _domain(who):
            raise ConfigError(key, "must be a full mxid (@user:server), a server name or *")
        out[who] = level
    return out


# --- writing ---------------------------------------------------------------------------------


def write_example(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(example_text(), encoding="utf-8")


def store_tokens(path: Path) -> tuple[str, str]:
    """Put fresh as/hs tokens into the config file, keeping its comments; return them."""
    yaml = yaml_rt()
    data = read_yaml(path)
    section = data.setdefault("appservice", {})
    as_token, hs_token = secrets.token_urlsafe(48), secrets.token_urlsafe(48)
    section["as_token"], section["hs_token"] = as_token, hs_token
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        yaml.dump(data, f)
    tmp.replace(path)
    return as_token, hs_token
