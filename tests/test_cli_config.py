"""The command line and config validation, as an operator meets them."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from letta_appservice.__main__ import main, parser
from letta_appservice.config import (
    ENV_OVERRIDES,
    REQUIRED,
    example_text,
    parse_config,
)
from letta_appservice.errors import ConfigError
from tests.harness.cli import OWN_VALUES, REPO, TOKENS, cli, configured, one_line


def test_first_run_writes_the_commented_example_owner_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LETTA_APPSERVICE_COMMAND", "./run.sh")
    old = os.umask(0)  # a lax umask must not make the file readable by others
    try:
        path = tmp_path / "config.yaml"
        assert main(["-c", str(path), "-r", "reg.yaml"]) == 0
    finally:
        os.umask(old)
    assert path.read_text() == example_text()
    assert path.stat().st_mode & 0o777 == 0o600
    out = capsys.readouterr().out
    assert str(path) in out and ", ".join(REQUIRED) in out
    # The next command is the one that works from here, with the -c and -r given.
    assert out.strip().endswith(f"./run.sh -c {path} -r reg.yaml -g")


# --- 1. and 2.: unknown keys, missing required keys, example values ---------------------------


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (["lettta"], {"base_url": "http://x"}, "unknown key lettta; did you mean letta?"),
        (["bridge", "permision"], {}, "unknown key bridge.permision; did you mean"),
        (["appservice", "prot"], 1, "unknown key appservice.prot; did you mean appservice.port?"),
        (["letta"], 5, "letta: must be a mapping"),
    ],
)
def test_unknown_keys_are_refused_with_a_suggestion(
    tmp_path: Path, path: list[str], value: Any, expected: str
) -> None:
    config = configured(tmp_path, {"appservice": TOKENS})
    yaml = YAML()
    data = yaml.load(config)
    (data[path[0]] if len(path) == 2 else data)[path[-1]] = value
    yaml.dump(data, config)
    proc = cli("-c", str(config))
    assert proc.returncode == 2
    assert expected in one_line(proc.stderr)


@pytest.mark.parametrize("key", REQUIRED)
def test_every_required_key_must_come_from_the_operator(tmp_path: Path, key: str) -> None:
    path = configured(tmp_path, {"appservice": TOKENS})
    yaml = YAML()
    data = yaml.load(path)
    section, name = key.split(".")
    del data[section][name]
    yaml.dump(data, path)
    proc = cli("-c", str(path))
    assert proc.returncode == 2
    assert one_line(proc.stderr).endswith(f"{key}: is required (see the example config for "
                                          "what to put there)")  # fmt: skip


def test_a_missing_section_is_not_filled_from_the_example(tmp_path: Path) -> None:
    path = configured(tmp_path, {"appservice": TOKENS})
    data = YAML().load(path)
    del data["letta"]
    YAML().dump(data, path)
    proc = cli("-c", str(path))
    assert proc.returncode == 2 and "letta.base_url: is required" in proc.stderr


def test_the_untouched_example_is_refused_key_by_key(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    assert cli("-c", str(path)).returncode == 0
    proc = cli("-c", str(path), "-g")
    assert proc.returncode == 2
    assert "homeserver.address: 'https://matrix.example.org' is the example's value" in (
        one_line(proc.stderr)
    )
    assert not (tmp_path / "registration.yaml").exists()
    assert "generate" in path.read_text()  # nothing written before everything checked out
    # With everything else set, the example's permissions are still refused.
    yaml = YAML()
    data = yaml.load(path)
    for section, keys in OWN_VALUES.items():
        data[section].update({k: v for k, v in keys.items() if k != "permissions"})
    yaml.dump(data, path)
    proc = cli("-c", str(path), "-g")
    assert proc.returncode == 2
    assert 'bridge.permissions["example.org"]: is the example\'s entry' in one_line(proc.stderr)


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("homeserver", "domain", "chat.example.com"),
        ("appservice", "address", "http://as.example.net:1"),
        ("letta", "base_url", "https://letta.example.org"),
    ],
)
def test_any_example_domain_is_refused(tmp_path: Path, section: str, key: str, value: str) -> None:
    edits: dict[str, dict[str, Any]] = {"appservice": dict(TOKENS)}
    edits.setdefault(section, {})[key] = value
    path = configured(tmp_path, edits)
    proc = cli("-c", str(path))
    assert proc.returncode == 2 and f"{section}.{key}: " in one_line(proc.stderr)


# --- 5.: errors say where and why, and never show a secret -----------------------------------


BAD_INPUTS = [
    ({"appservice": {"as_token": "generate"}}, "appservice.as_token", "with -g first"),
    ({"homeserver": {"address": "not a url"}}, "homeserver.address", "http(s) URL"),
    ({"homeserver": {"address": "http://host:99999"}}, "homeserver.address", "not a valid URL"),
    ({"homeserver": {"domain": "bad domain!"}}, "homeserver.domain", "server name"),
    ({"appservice": {"port": "eighty"}}, "appservice.port", "must be a number"),
    ({"appservice": {"port": 70000}}, "appservice.port", "port number"),
    ({"appservice": {"database": "mysql://x"}}, "appservice.database", "sqlite:<path>"),
    ({"letta": {"base_url": "ftp://x"}}, "letta.base_url", "http(s) URL"),
    ({"letta": {"sync_interval": 0}}, "letta.sync_interval", "greater than 0"),
    ({"letta": {"filter_name": "(["}}, "letta.filter_name", "regular expression"),
    ({"bridge": {"username_template": "agent_x"}}, "bridge.username_template", "{agent_id}"),
    ({"bridge": {"username_template": "Agent_{agent_id}"}}, "bridge.username_template", "lower"),
    ({"bridge": {"room_name_template": "{nam}"}}, "bridge.room_name_template", "{nam} is not"),
    ({"bridge": {"room_name_template": "{}"}}, "bridge.room_name_template", "by name"),
    ({"bridge": {"room_name_template": "{name"}}, "bridge.room_name_template", "{{ and }}"),
    ({"bridge": {"show_tools": "loud"}}, "bridge.show_tools", "one of off, notice"),
    ({"bridge": {"permissions": {"@a:b": "owner"}}}, 'bridge.permissions["@a:b"]', "user or"),
    ({"bridge": {"permissions": {"not a domain": "user"}}}, "bridge.permissions", "mxid"),
    ({"logging": {"level": "LOUD"}}, "logging.level", "one of"),
    ({"logging": {"loggers": {"mautrix": "chatty"}}}, 'logging.loggers["mautrix"]', "one of"),
    ({"logging": {"format": "xml"}}, "logging.format", "text, json"),
    ({"logging": {"file": "/nonexistent/dir/x.log"}}, "logging.file", "does not exist"),
]


@pytest.mark.parametrize(("edits", "key", "hint"), BAD_INPUTS)
def test_bad_config_names_the_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edits: dict, key: str, hint: str
) -> None:
    merged = {"appservice": {**TOKENS, **edits.get("appservice", {})}}
    path = configured(tmp_path, {**edits, **merged})
    capsys.readouterr()
    assert main(["-c", str(path)]) == 2
    err = one_line(capsys.readouterr().err)
    assert key in err and hint in err
    assert "KeyError" not in err and "IndexError" not in err  # no Python reprs


def test_an_environment_variable_is_blamed_for_its_own_value(tmp_path: Path) -> None:
    path = configured(tmp_path, {"appservice": TOKENS})
    proc = cli("-c", str(path), LETTA_APPSERVICE_PORT="abc")
    assert proc.returncode == 2
    assert one_line(proc.stderr) == (
        "letta-appservice: config error in the environment: LETTA_APPSERVICE_PORT "
        "(for appservice.port): must be a number, got 'abc'"
    )


def test_yaml_errors_say_why(tmp_path: Path) -> None:
    path = configured(tmp_path)
    text = re.sub(r"^ +verify_ssl", "\tverify_ssl", path.read_text(), flags=re.M)
    path.write_text(text)
    proc = cli("-c", str(path))
    assert proc.returncode == 2
    err = one_line(proc.stderr)
    assert "not valid YAML (line " in err and "a tab" in err


def test_log_level_is_case_insensitive() -> None:
    data = {**OWN_VALUES, "appservice": {**OWN_VALUES["appservice"], **TOKENS}}
    config = parse_config({**data, "logging": {"level": "info"}}, env={})
    assert config.logging.level == "INFO"
    assert parse_config(data, {"LETTA_APPSERVICE_LOG_LEVEL": "debug"}).logging.level == "DEBUG"


@pytest.mark.parametrize(
    ("edits", "secret"),
    [
        ({"appservice": {"as_token": 12345678901234567890}}, "12345678901234567890"),
        ({"letta": {"api_key": ["sk-let-me-in"]}}, "sk-let-me-in"),
        ({"letta": {"base_url": "ftp://user:hunter2@letta"}}, "hunter2"),
        ({"homeserver": {"address": "http://u:hunter2@host:99999"}}, "hunter2"),
        ({"appservice": {"database": "mysql://u:hunter2@db/x"}}, "hunter2"),
    ],
)
def test_errors_never_show_secret_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edits: dict, secret: str
) -> None:
    path = configured(tmp_path, {"appservice": TOKENS})
    yaml = YAML()
    data = yaml.load(path)
    for section, keys in edits.items():
        data[section].update(keys)
    yaml.dump(data, path)
    capsys.readouterr()
    assert main(["-c", str(path)]) == 2
    err = one_line(capsys.readouterr().err)
    assert secret not in err


def test_missing_files_and_directories(tmp_path: Path) -> None:
    proc = cli("-c", str(tmp_path / "nonexistent" / "config.yaml"))
    assert proc.returncode == 2 and "directory" in one_line(proc.stderr)
    assert not (tmp_path / "nonexistent").exists()
    proc = cli("-c", str(tmp_path / "config.yaml"), "--tuwunel-toml")
    assert proc.returncode == 2 and proc.stdout == ""
    assert "config.yaml does not exist" in one_line(proc.stderr)
    assert not (tmp_path / "config.yaml").exists()
    directory = tmp_path / "adir"
    directory.mkdir()
    assert cli("-c", str(directory)).returncode == 2


def test_environment_overrides_secrets() -> None:
    data = {**OWN_VALUES, "appservice": {"address": "http://as:29330", **TOKENS}}
    env = {
        "LETTA_APPSERVICE_AS_TOKEN": "env-as-token-0123456789",
        "LETTA_APPSERVICE_HS_TOKEN": "env-hs-token-0123456789",
        "LETTA_APPSERVICE_DATABASE": "postgres://u:p@db/letta",
        "LETTA_API_KEY": "secret-key",
        "LETTA_APPSERVICE_PORT": "8081",
    }
    config = parse_config(data, env)
    assert config.appservice.as_token == "env-as-token-0123456789"
    assert config.appservice.hs_token == "env-hs-token-0123456789"
    assert config.appservice.database == "postgres://u:p@db/letta"
    assert config.letta.api_key == "secret-key" and config.appservice.port == 8081
    # Secrets never show up in a repr (and so not in logs that print the config).
    for secret in env.values():
        if secret != "8081":
            assert secret not in repr(config)
    assert set(env) <= set(ENV_OVERRIDES)
    # A required key may come from the environment instead of the file.
    without = {**data, "letta": {}}
    assert parse_config(without, {"LETTA_BASE_URL": "http://l:1"}).letta.base_url == "http://l:1"


def test_permissions_replace_the_example_instead_of_merging() -> None:
    data = {**OWN_VALUES, "appservice": {"address": "http://as:1", **TOKENS}}
    data["bridge"] = {"permissions": {"mine.org": "user"}}
    assert dict(parse_config(data, {}).bridge.permissions) == {"mine.org": "user"}


def test_same_tokens_are_rejected() -> None:
    data = {**OWN_VALUES, "appservice": {"address": "http://as:1", "as_token": "x" * 20}}
    data["appservice"]["hs_token"] = "x" * 20
    with pytest.raises(ConfigError, match=r"appservice\.hs_token"):
        parse_config(data, {})


# --- 8.: help and README -----------------------------------------------------------------------


def test_help_says_that_no_command_runs_the_bridge() -> None:
    proc = cli("--help")
    assert proc.returncode == 0
    text = " ".join(proc.stdout.split())
    assert "Without a COMMAND it runs the bridge" in text and "--rotate-tokens" in text


def test_readme_lists_every_option_and_endpoint() -> None:
    readme = (REPO / "README.md").read_text()
    for action in parser()._actions:
        for option in action.option_strings:
            if option.startswith("--"):
                assert re.search(f"`[^`]*{option}[^`]*`", readme), option
    for route in ("/_matrix/app/v1/rooms/{roomAlias}", "/_matrix/app/v1/users/{userId}"):
        assert route in readme
