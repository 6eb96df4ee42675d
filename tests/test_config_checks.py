"""Config validation in-process (parse_config, ConfigError): each kind of bad value is refused
with its key and an exact message, secrets never echoed, and the edge values that are fine
accepted. The CLI tests (tests/test_cli_config.py) cover the same through the command."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from letta_appservice.config import Config, parse_config
from letta_appservice.errors import ConfigError

VALID: dict[str, Any] = {
    "homeserver": {"address": "http://hs.bridge.test", "domain": "bridge.test"},
    "appservice": {
        "address": "http://as.bridge.test",
        "as_token": "a" * 32,
        "hs_token": "h" * 32,
    },
    "letta": {"base_url": "http://letta.bridge.test"},
    "bridge": {"permissions": {"bridge.test": "user", "@root:bridge.test": "admin"}},
}


def parsed(key: str, value: Any) -> Config:
    data = copy.deepcopy(VALID)
    *sections, last = key.split(".")
    where = data
    for section in sections:
        where = where.setdefault(section, {})
    where[last] = value
    return parse_config(data)


def refusal_of(value: Any, key: str) -> str:
    return refusal(key.split("[")[0], value)


def refusal(key: str, value: Any) -> str:
    with pytest.raises(ConfigError) as caught:
        parsed(key, value)
    return str(caught.value)


def case_id(value: Any) -> str | None:
    """Test ids that do not say "postgres": the mutation run leaves the PostgreSQL variants
    of the database tests out by name (`-k "not postgres"`), and would drop these too. Control
    characters are spelled out: pytest escapes them differently when it collects the module a
    second time in one process (as mutmut does after new tests), and the id is not found."""
    if not isinstance(value, str):
        return None
    shown = "".join(c if c.isprintable() else f"<{ord(c):#x}>" for c in value)
    return shown.replace("postgres", "pg")


NUMBERS = "must be a number"
POSITIVE = "must be greater than 0"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (
            "homeserver.address",
            "ftp://hs.bridge.test",
            "must be an http(s) URL like http://host:port, got 'ftp://hs.bridge.test'",
        ),
        (
            "homeserver.address",
            "http://",
            "must be an http(s) URL like http://host:port, got 'http://'",
        ),
        ("homeserver.address", "http://hs:99999", "is not a valid URL: 'http://hs:99999'"),
        (
            "homeserver.address",
            "ftp://u:pw@hs.bridge.test",
            "must be an http(s) URL like http://host:port, got 'ftp://u:***@hs.bridge.test'",
        ),
        ("homeserver.verify_ssl", "http://u:pw@x", "must be true or false, got 'http://u:***@x'"),
        (
            "homeserver.address",
            "https://matrix.example.org",
            "'https://matrix.example.org' is the example's value: set your own",
        ),
        (
            "homeserver.address",
            "http://u:pw@hs.example.com",
            "'http://u:***@hs.example.com' is the example's value: set your own",
        ),
        (
            "homeserver.address",
            "http://EXAMPLE.NET.",
            "'http://EXAMPLE.NET.' is the example's value: set your own",
        ),
        ("homeserver.domain", "bad domain", "is not a valid server name: 'bad domain'"),
        (
            "homeserver.domain",
            "example.com:8448",
            "'example.com:8448' is the example's value: set your own",
        ),
        ("homeserver.domain", 5, "must be a string, got 5"),
        ("homeserver.verify_ssl", "yes", "must be true or false, got 'yes'"),
        ("appservice.id", "le tta", "may only contain A-Z a-z 0-9 . _ -"),
        ("appservice.hostname", "  ", "must not be empty"),
        ("appservice.port", 0, "must be a port number (1-65535)"),
        ("appservice.port", 65536, "must be a port number (1-65535)"),
        ("appservice.port", "abc", "must be a number, got 'abc'"),
        ("appservice.port", True, "must be a number, got True"),
        (
            "appservice.bot_localpart",
            "Letta",
            "must be a lowercase Matrix localpart (a-z 0-9 ._=/-)",
        ),
        ("appservice.as_token", "short", "must be 16+ characters"),
        ("appservice.as_token", "with a space in it!!", "must be 16+ characters"),
        ("appservice.as_token", "tab\tinside-the-token", "must be 16+ characters"),
        (
            "appservice.as_token",
            "generate",
            "is still 'generate': write the registration with -g first (it makes the tokens)",
        ),
        ("appservice.hs_token", "a" * 32, "must differ from appservice.as_token"),
        ("appservice.hs_token", 12345678901234567, "must be a string"),
        (
            "appservice.database",
            "mysql://x/y",
            "must be sqlite:<path> or postgres://user:password@host/database",
        ),
        (
            "appservice.database",
            "sqlite:",
            "must be sqlite:<path> or postgres://user:password@host/database",
        ),
        ("appservice.database", "postgres://u:pw@host", "needs a host and a database"),
        ("appservice.database", "postgresql:///db", "needs a host and a database"),
        ("appservice.database", "postgres://u:pw@host/", "needs a host and a database"),
        ("appservice.database", "postgresql://", "needs a host and a database"),
        ("appservice.max_body_size", 0, POSITIVE),
        ("letta.base_url", None, "is required (see the example config for what to put there)"),
        ("letta.sync_interval", -1, POSITIVE),
        ("letta.page_size", "many", f"{NUMBERS}, got 'many'"),
        ("letta.max_concurrency", 0, POSITIVE),
        ("letta.retry_window", 0, POSITIVE),
        ("letta.filter_tags", ["a", 1], "must be a list of strings"),
        ("letta.filter_tags", "a", "must be a list, got 'a'"),
        (
            "letta.filter_name",
            "(",
            "is not a valid regular expression: missing ), unterminated subpattern at position 0",
        ),
        ("bridge.username_template", "agent", "must contain {agent_id} exactly once"),
        (
            "bridge.username_template",
            "{agent_id}{agent_id}",
            "must contain {agent_id} exactly once",
        ),
        (
            "bridge.username_template",
            "Agent_{agent_id}",
            "may only contain lowercase a-z 0-9 ._=/- around {agent_id}",
        ),
        (
            "bridge.displayname_template",
            "{nam}",
            "may only use the fields {name}; {nam} is not one of them",
        ),
        (
            "bridge.displayname_template",
            "{}",
            "may only use the fields {name}, by name ({} has none)",
        ),
        (
            "bridge.displayname_template",
            "{name",
            "is not a valid template (expected '}' before end of string);"
            " write {{ and }} for literal braces",
        ),
        (
            "bridge.attribution_template",
            "{room}",
            "may only use the fields {displayname}, {sender}, {room_name};"
            " {room} is not one of them",
        ),
        ("bridge.show_tools", "loud", "must be one of off, notice, got 'loud'"),
        ("tools.agents", "some", "must be all, none or tag:<letta tag>, got 'some'"),
        ("tools.agents", "tag:", "must be all, none or tag:<letta tag>, got 'tag:'"),
        ("tools.url", "sandbox", "must be an http(s) URL like http://host:port, got 'sandbox'"),
        ("tools.max_hops", 0, POSITIVE),
        ("tools.send_token", 12345, "must be a string"),
        ("bridge.remote_rooms", "all", "must be one of admins, users, got 'all'"),
        (
            "bridge.bot_users",
            ["("],
            "is not a valid regular expression: missing ), unterminated subpattern at position 0",
        ),
        ("bridge.bot_users", [1], "must be a list of strings"),
        ("bridge.command_prefix", "", "must not be empty"),
        (
            "bridge.permissions",
            {"bridge.test": "root"},
            "must be user or admin, got 'root'",
        ),
        (
            "bridge.permissions",
            {"not a server": "user"},
            "must be a full mxid (@user:server), a server name or *",
        ),
        (
            "bridge.permissions",
            {"@me:example.org": "admin"},
            "is the example's entry: put your own users or server",
        ),
        (
            "bridge.permissions",
            {"@me:example.org:8448": "admin"},
            "is the example's entry: put your own users or server",
        ),
        (
            "bridge.permissions",
            {"example.net:8448": "user"},
            "is the example's entry: put your own users or server",
        ),
        ("bridge.permissions", [], "must be a mapping, got []"),
        ("logging.level", "loud", "must be one of DEBUG, INFO, WARNING, ERROR, got 'loud'"),
        (
            "logging.loggers",
            {"mautrix": "loud"},
            "must be one of DEBUG, INFO, WARNING, ERROR",
        ),
        (
            "logging.loggers",
            {"mautrix": 3},
            "must be one of DEBUG, INFO, WARNING, ERROR",
        ),
        ("logging.format", "xml", "must be one of text, json, got 'xml'"),
        (
            "logging.file",
            "/nonexistent-dir/x.log",
            "the directory of '/nonexistent-dir/x.log' does not exist",
        ),
        ("logging.file_backups", 0, POSITIVE),
        ("letta.turn_deadline", 0, POSITIVE),
    ],
    ids=case_id,
)
def test_bad_values_are_refused_naming_the_key(key: str, value: Any, message: str) -> None:
    if key in ("bridge.permissions", "logging.loggers") and isinstance(value, dict):
        [entry] = value
        key = f'{key}["{entry}"]'  # the entry at fault is named
    assert refusal_of(value, key) == f"{key}: {message}"


@pytest.mark.parametrize(
    "key", ["appservice.as_token", "appservice.database", "letta.api_key", "tools.send_token"]
)
def test_secrets_are_never_echoed(key: str) -> None:
    secret = 123456789 if key != "appservice.database" else ["postgres://u:hunter2@db/x"]
    got = refusal(key, secret)
    assert "hunter2" not in got and "123456789" not in got and got.startswith(f"{key}: must be")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("appservice.port", 1),
        ("appservice.port", 65535),
        ("appservice.port", "8080"),  # from the environment: a string
        ("appservice.as_token", "x" * 16),
        ("appservice.database", "sqlite:x.db"),
        ("appservice.database", "postgresql://u:p@db:5432/bridge"),
        ("appservice.database", "postgres://db/bridge"),
        ("appservice.database", "sqlite:/var/lib/letta-appservice/bridge.db"),
        ("appservice.id", "Letta.AS_bridge-2"),
        ("homeserver.domain", "[::1]:8448"),
        ("homeserver.domain", "localhost:8008"),
        ("homeserver.address", "https://notexample.org"),
        ("homeserver.address", "http://matrix.example.org.test"),
        ("bridge.username_template", "agent_{agent_id}"),
        ("bridge.username_template", "{agent_id}"),
        ("bridge.displayname_template", "{name} {{bot}}"),
        ("bridge.permissions", {"*": "user", "@a:bridge.test": "admin", "hs:8448": "user"}),
        ("logging.level", "debug"),
        ("logging.loggers", {"mautrix": "warning"}),
        ("letta.timeout", 0.5),
        ("bridge.bot_users", ["^@bot_.*$"]),
        ("tools.agents", "all"),
        ("tools.agents", "none"),
        ("tools.agents", "tag:x"),  # a one-letter tag is a tag
    ],
    ids=case_id,
)
def test_edge_values_that_are_fine_are_accepted(key: str, value: Any) -> None:
    parsed(key, value)


def test_parsed_values_are_normalised() -> None:
    config = parsed("logging.loggers", {"mautrix": "warning"})
    assert config.logging.loggers == {"mautrix": "WARNING"}
    assert parsed("logging.level", "debug").logging.level == "DEBUG"
    assert parsed("homeserver.address", "http://hs.bridge.test/").homeserver.address == (
        "http://hs.bridge.test"
    )
    assert parsed("appservice.port", "8080").appservice.port == 8080
    assert parsed("logging.file", str(Path(__file__))).logging.file == str(Path(__file__))
