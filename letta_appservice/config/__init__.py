"""Configuration: load the YAML file over the shipped example, apply env overrides, validate.

The shipped example is the schema: a key it does not have is an error, a key it has but the
operator left out takes the example's default, except the REQUIRED ones, whose example values are
placeholders (example.org) and are refused wherever they appear."""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import attrs
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from ..errors import ConfigError
from .checks import (
    CONVERSATION_MODES,
    DISPLAY_MODES,
    LOG_FORMATS,
    _choice,
    _database,
    _domain,
    _fields,
    _got,
    _http_url,
    _ident,
    _kind_name,
    _level,
    _level_check,
    _localpart,
    _log_file,
    _loggers,
    _nonempty,
    _permissions,
    _port,
    _positive,
    _regex,
    _regex_list,
    _str_list,
    _token,
    _username_template,
)
from .media import MediaConfig, media_config
from .tools import ToolsConfig, tools_config

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
    "LETTA_APPSERVICE_LOG_LEVEL": "logging.level",
    "LETTA_APPSERVICE_LOG_FORMAT": "logging.format",
    "LETTA_APPSERVICE_SEND_TOKEN": "tools.send_token",
}
# Keys the operator must set (in the file or the environment): no default fits two deployments.
REQUIRED = (
    "homeserver.address",
    "homeserver.domain",
    "appservice.address",
    "letta.base_url",
    "bridge.permissions",
)
# Mappings whose keys are the operator's own (mxids, logger names), not part of the schema.
FREE_MAPPINGS = ("bridge.permissions", "logging.loggers")


def example_text() -> str:
    """The commented example config shipped in the package (the single source of defaults)."""
    return resources.files("letta_appservice").joinpath("example-config.yaml").read_text("utf-8")


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
    conversations: str = "room"  # a Letta conversation per room, per thread, or "off"


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
    approvers: str = "asker"  # who decides approval cards: asker (or an admin), users, admins
    thinking_placeholder: bool = False


@attrs.frozen
class LoggingConfig:
    level: str
    loggers: Mapping[str, str]
    format: str
    file: str  # "" = no file
    file_max_bytes: int
    file_backups: int


@attrs.frozen
class GuardConfig:
    """Limits against loops and abuse (letta.turn_deadline, bridge.remote_rooms/bot_users)."""

    turn_deadline: float = 900.0  # seconds a whole Letta turn may take, streamed or not
    remote_rooms: str = "admins"  # who may bring agents into other servers' rooms (or "users")
    bot_users: tuple[str, ...] = ()  # regexes of other bots' and bridges' users


@attrs.frozen
class Config:
    homeserver: HomeserverConfig
    appservice: AppserviceConfig
    letta: LettaConfig
    bridge: BridgeConfig
    logging: LoggingConfig
    guards: GuardConfig = GuardConfig()
    media: MediaConfig = attrs.field(factory=MediaConfig)
    tools: ToolsConfig = attrs.field(factory=ToolsConfig)

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
        raise ConfigError("", f"not valid YAML{_yaml_reason(e)}") from None


def _yaml_reason(e: YAMLError) -> str:
    # Only the problem and its position: str(e) quotes the line, which may hold a token.
    mark = getattr(e, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = str(getattr(e, "problem", "") or "").replace("'\\t'", "a tab")
    return f" ({', '.join(x for x in (where, problem) if x)})" if where or problem else ""


def load_config(
    path: Path, env: Mapping[str, str] | None = None, *, need_tokens: bool = True
) -> Config:
    """Read and validate ``path``; raise ConfigError naming the first bad key."""
    data = read_yaml(path)
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{path} must be a YAML mapping of sections")
    return parse_config(data, os.environ if env is None else env, need_tokens=need_tokens)


def example_data() -> dict[str, Any]:
    return YAML(typ="safe").load(example_text())


def parse_config(
    data: Mapping[str, Any], env: Mapping[str, str] | None = None, *, need_tokens: bool = True
) -> Config:
    """Validate a config mapping laid over the example's defaults. ``need_tokens=False`` (for
    ``db upgrade``) accepts the tokens still being "generate"."""
    example = example_data()
    # An empty section (`letta:` with nothing under it) is an absent one.
    data = {k: v for k, v in data.items() if not (v is None and isinstance(example.get(k), dict))}
    check_keys(data, example)
    merged = merge_sections(example, data)
    from_env: dict[str, str] = {}
    for var, key in ENV_OVERRIDES.items():
        if env and env.get(var):
            _assign(merged, key, env[var])
            from_env[key] = var
    for key in REQUIRED:
        if _lookup(data, key) is None and key not in from_env:
            raise ConfigError(key, "is required (see the example config for what to put there)")
    if not need_tokens:
        for key in ("appservice.as_token", "appservice.hs_token"):
            if _lookup(merged, key) == "generate":
                _assign(merged, key, f"not-yet-generated-{key}")
    return _Validator(merged, from_env).build()


def check_keys(data: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
    """Every key must be one the example has: a typo must not fall back to a default."""
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in schema:
            close = difflib.get_close_matches(str(key), [str(k) for k in schema], n=1)
            hint = f"did you mean {prefix}{close[0]}?" if close else f"known: {', '.join(schema)}"
            raise ConfigError("", f"unknown key {name}; {hint}")
        if isinstance(schema[key], Mapping) and name not in FREE_MAPPINGS and value is not None:
            if not isinstance(value, Mapping):
                raise ConfigError(name, "must be a mapping of keys, as in the example config")
            check_keys(value, schema[key], f"{name}.")


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
    def __init__(self, data: Mapping[str, Any], from_env: Mapping[str, str]) -> None:
        self.data = data
        self.from_env = from_env

    def fail(self, key: str, message: str) -> ConfigError:
        """The error for ``key``, blaming the environment variable when the value came from one."""
        if var := self.from_env.get(key):
            return ConfigError(f"{var} (for {key})", message, source="the environment")
        return ConfigError(key, message)

    def get(
        self, key: str, kind: type | tuple[type, ...], check: Callable[[Any], str] | None = None
    ):
        value = _lookup(self.data, key)
        if value is None:
            raise self.fail(key, "is required")
        if kind is int or kind is float:
            # Env overrides arrive as strings; YAML gives numbers.
            try:
                value = kind(value) if not isinstance(value, bool) else None
            except (TypeError, ValueError):
                value = None
            if value is None:
                raise self.fail(key, f"must be a number{_got(key, _lookup(self.data, key))}")
        elif not isinstance(value, kind) or (kind is str and isinstance(value, bool)):
            raise self.fail(key, f"must be {_kind_name(kind)}{_got(key, value)}")
        if check and (problem := check(value)):
            raise self.fail(key, problem)
        return value

    def build(self) -> Config:
        g = self.get
        as_token = g("appservice.as_token", str, _token)
        hs_token = g("appservice.hs_token", str, _token)
        if as_token == hs_token:
            raise self.fail("appservice.hs_token", "must differ from appservice.as_token")
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
                conversations=g("letta.conversations", str, _choice(CONVERSATION_MODES)),
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
                approvers=g("bridge.approvers", str, _choice(("asker", "users", "admins"))),
                thinking_placeholder=g("bridge.thinking_placeholder", bool),
            ),
            logging=LoggingConfig(
                level=_level(g("logging.level", str, _level_check)),
                loggers=_loggers(g("logging.loggers", Mapping)),
                format=g("logging.format", str, _choice(LOG_FORMATS)),
                file=g("logging.file", str, _log_file),
                file_max_bytes=g("logging.file_max_bytes", int, _positive),
                file_backups=g("logging.file_backups", int, _positive),
            ),
            guards=GuardConfig(
                g("letta.turn_deadline", float, _positive),
                g("bridge.remote_rooms", str, _choice(("admins", "users"))),
                tuple(g("bridge.bot_users", list, _regex_list)),
            ),
            media=media_config(g),
            tools=tools_config(g),
        )
