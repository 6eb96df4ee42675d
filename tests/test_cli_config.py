"""The command line and config validation, as an operator meets them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from letta_appservice.__main__ import main
from letta_appservice.config import ENV_OVERRIDES, example_text, load_config, parse_config
from letta_appservice.errors import ConfigError


def _configured(tmp_path: Path, edits: dict[str, dict[str, object]] | None = None) -> Path:
    """An example config written by the first run, then edited like an operator would."""
    path = tmp_path / "config.yaml"
    assert main(["-c", str(path)]) == 0
    yaml = YAML()
    data = yaml.load(path)
    data["homeserver"]["domain"] = "test.local"
    for section, values in (edits or {}).items():
        data.setdefault(section, {}).update(values)
    yaml.dump(data, path)
    return path


def test_first_run_writes_the_commented_example_and_exits_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "sub" / "config.yaml"
    assert main(["-c", str(path)]) == 0
    assert path.read_text() == example_text()
    out = capsys.readouterr().out
    assert str(path) in out and "-g" in out and "homeserver.address" in out


def test_generate_registration_keeps_comments_and_shares_tokens(tmp_path: Path) -> None:
    config_path = _configured(tmp_path)
    reg_path = tmp_path / "registration.yaml"
    assert main(["-c", str(config_path), "-r", str(reg_path), "-g"]) == 0
    text = config_path.read_text()
    assert "# Tokens shared with the homeserver." in text  # comments survive the rewrite
    config = load_config(config_path, env={})
    reg = YAML(typ="safe").load(reg_path)
    assert reg["as_token"] == config.appservice.as_token != "generate"
    assert reg["hs_token"] == config.appservice.hs_token
    assert reg["url"] == "http://localhost:29330"
    assert reg["sender_localpart"] == "letta" and reg["rate_limited"] is False
    assert reg["namespaces"]["users"][0] == {
        "exclusive": True,
        "regex": r"^@agent_[a-z0-9_]+:test\.local$",
    }
    assert oct(reg_path.stat().st_mode & 0o777) == "0o600"
    # Running -g again rotates the tokens in both files.
    assert main(["-c", str(config_path), "-r", str(reg_path), "-g"]) == 0
    assert YAML(typ="safe").load(reg_path)["as_token"] != reg["as_token"]
    assert load_config(config_path, env={}).appservice.as_token != reg["as_token"]


def test_tuwunel_toml_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _configured(tmp_path)
    main(["-c", str(config_path), "-r", str(tmp_path / "r.yaml"), "-g"])
    capsys.readouterr()
    assert main(["-c", str(config_path), "--tuwunel-toml"]) == 0
    toml = capsys.readouterr().out
    import tomllib

    parsed = tomllib.loads(toml)["global"]["appservice"]["letta"]
    assert parsed["users"][0]["regex"] == r"^@agent_[a-z0-9_]+:test\.local$"
    assert parsed["sender_localpart"] == "letta" and "namespaces" not in parsed


BAD_INPUTS = [
    ({"appservice": {"as_token": "generate"}}, "appservice.as_token", "letta-appservice -g"),
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
    ({"bridge": {"room_name_template": "{nme}"}}, "bridge.room_name_template", "fields"),
    ({"bridge": {"show_tools": "loud"}}, "bridge.show_tools", "one of off, notice"),
    ({"bridge": {"permissions": {"@a:b": "owner"}}}, 'bridge.permissions["@a:b"]', "user or"),
    ({"bridge": {"permissions": {"not a domain": "user"}}}, "bridge.permissions", "mxid"),
    ({"logging": {"level": "LOUD"}}, "logging.level", "one of"),
]


@pytest.mark.parametrize(("edits", "key", "hint"), BAD_INPUTS)
def test_bad_config_names_the_key_and_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edits: dict, key: str, hint: str
) -> None:
    tokens = {"as_token": "a" * 32, "hs_token": "b" * 32}
    merged = {"appservice": {**tokens, **edits.get("appservice", {})}}
    path = _configured(tmp_path, {**edits, **merged})
    assert main(["-c", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert key in err and hint in err


def test_missing_required_key_and_unreadable_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("homeserver:\n    address: http://localhost:8008\n")
    assert main(["-c", str(path)]) == 2
    assert "homeserver.domain: is required" in capsys.readouterr().err
    path.write_text("homeserver: [unclosed\n")
    assert main(["-c", str(path)]) == 2
    assert "not valid YAML (line" in capsys.readouterr().err
    directory = tmp_path / "adir"
    directory.mkdir()
    assert main(["-c", str(directory)]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_exit_code_and_message_from_a_real_process(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("homeserver: {address: 'http://x', domain: 'd.org'}\nappservice: {}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "letta_appservice", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("appservice.address: is required")


def test_environment_overrides_secrets() -> None:
    data = {
        "homeserver": {"address": "http://hs:8008", "domain": "example.org"},
        "appservice": {"address": "http://as:29330", "as_token": "x" * 20, "hs_token": "y" * 20},
    }
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


def test_permissions_replace_the_example_instead_of_merging() -> None:
    data = {
        "homeserver": {"address": "http://hs:8008", "domain": "mine.org"},
        "appservice": {"address": "http://as:1", "as_token": "x" * 20, "hs_token": "y" * 20},
        "bridge": {"permissions": {"mine.org": "user"}},
    }
    assert dict(parse_config(data, {}).bridge.permissions) == {"mine.org": "user"}


def test_same_tokens_are_rejected() -> None:
    data = {
        "homeserver": {"address": "http://hs:8008", "domain": "mine.org"},
        "appservice": {"address": "http://as:1", "as_token": "x" * 20, "hs_token": "x" * 20},
    }
    with pytest.raises(ConfigError, match=r"appservice\.hs_token"):
        parse_config(data, {})
