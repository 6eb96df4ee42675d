"""The checks behind each config key: one function per kind of value, returning a problem to
report ("" when fine). Messages never repeat a secret (tokens, keys, URL passwords)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import ConfigError

# Never echoed in an error message.
SECRET_KEYS = (
    "appservice.as_token",
    "appservice.hs_token",
    "appservice.database",
    "letta.api_key",
    "media.transcription_key",
)
# RFC 2606 names: the example's placeholders; no real server can have them.
EXAMPLE_DOMAINS = ("example.com", "example.net", "example.org")
PERMISSION_LEVELS = ("user", "admin")
DISPLAY_MODES = ("off", "notice")
CONVERSATION_MODES = ("room", "thread", "off")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
_LOCALPART_RE = re.compile(r"^[a-z0-9._=/-]+$")
_DOMAIN_RE = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?$")


def _got(key: str, value: Any) -> str:
    """ ", got <value>" for the message, or nothing for a secret."""
    if key in SECRET_KEYS:
        return ""
    return f", got {_redact(value) if isinstance(value, str) else repr(value)}"


def _redact(value: str) -> str:
    """``value`` quoted, with the password of a URL in it replaced."""
    try:
        parts = urlsplit(value)
        if parts.password:
            value = value.replace(f":{parts.password}@", ":***@", 1)
    except ValueError:
        pass
    return repr(value)


def _example_host(host: str) -> bool:
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in EXAMPLE_DOMAINS)


def _example_refused(v: str) -> str:
    return f"{_redact(v)} is the example's value: set your own"


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
    if not _DOMAIN_RE.match(v):
        return f"is not a valid server name: {v!r}"
    return _example_refused(v) if _example_host(v.rsplit(":", 1)[0]) else ""


def _http_url(v: str) -> str:
    try:
        parts = urlsplit(v)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return f"is not a valid URL: {_redact(v)}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"must be an http(s) URL like http://host:port, got {_redact(v)}"
    return _example_refused(v) if _example_host(parts.hostname) else ""


def _token(v: str) -> str:
    if v == "generate":
        return "is still 'generate': write the registration with -g first (it makes the tokens)"
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


def _regex_list(v: list[Any]) -> str:
    """A list of valid regular expressions (bridge.bot_users)."""
    return _str_list(v) or next(filter(None, map(_regex, v)), "")


def _str_list(v: list[Any]) -> str:
    return "" if all(isinstance(x, str) for x in v) else "must be a list of strings"


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    return lambda v: "" if v in options else f"must be one of {', '.join(options)}, got {v!r}"


def _level(v: str) -> str:
    return v.upper()


def _level_check(v: str) -> str:
    return _choice(LOG_LEVELS)(v.upper()) and f"must be one of {', '.join(LOG_LEVELS)}, got {v!r}"


def _loggers(raw: Mapping[str, Any]) -> Mapping[str, str]:
    out: dict[str, str] = {}
    for name, level in raw.items():
        if not isinstance(level, str) or _level_check(level):
            raise ConfigError(
                f'logging.loggers["{name}"]', f"must be one of {', '.join(LOG_LEVELS)}"
            )
        out[str(name)] = _level(level)
    return out


def _log_file(v: str) -> str:
    if v and not Path(v).expanduser().parent.is_dir():
        return f"the directory of {v!r} does not exist"
    return ""


def _fields(*allowed: str) -> Callable[[str], str]:
    names = ", ".join(f"{{{name}}}" for name in allowed)

    def check(v: str) -> str:
        try:
            v.format(**{name: "x" for name in allowed})
        except KeyError as e:
            return f"may only use the fields {names}; {{{e.args[0]}}} is not one of them"
        except IndexError:
            return f"may only use the fields {names}, by name ({{}} has none)"
        except ValueError as e:
            return f"is not a valid template ({e}); write {{{{ and }}}} for literal braces"
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
        is_mxid = who.startswith("@") and ":" in who
        if who != "*" and not is_mxid and not _DOMAIN_RE.match(who):
            raise ConfigError(key, "must be a full mxid (@user:server), a server name or *")
        server = who.split(":", 1)[1] if is_mxid else who
        if who != "*" and _example_host(re.sub(r":[0-9]+$", "", server)):
            raise ConfigError(key, "is the example's entry: put your own users or server")
        out[who] = level
    return out
