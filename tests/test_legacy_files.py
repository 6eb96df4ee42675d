"""The older bot's files are validated whole, with errors naming the entry."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from letta_appservice.identity import Identity
from letta_appservice.legacy.files import LegacyFileError, parse_mappings, parse_space

IS_PUPPET = Identity("@letta:example.org", "example.org", "agent_{agent_id}").is_puppet
AGENT = "agent-597b5756-2915-4560-ba6b-91005f085166"
MXID = "@agent_597b5756_2915_4560_ba6b_91005f085166:example.org"


def entry(**over: object) -> dict[str, object]:
    return {
        "agent_id": AGENT,
        "agent_name": "Meridian",
        "matrix_user_id": MXID,
        "matrix_password": "password",
        "room_id": "!8I9YBvbr4KpXNedbph:example.org",
        "created": True,
        "room_created": True,
        **over,
    }


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "agent_user_mappings.json"
    path.write_text(json.dumps(data))
    return path


def test_the_documented_format_parses_and_passwords_are_dropped(tmp_path: Path) -> None:
    agents = parse_mappings(write(tmp_path, {AGENT: entry()}), "example.org", IS_PUPPET)
    assert [(a.agent_id, a.name, a.mxid, a.room_id) for a in agents] == [
        (AGENT, "Meridian", MXID, "!8I9YBvbr4KpXNedbph:example.org")
    ]
    assert "password" not in repr(agents)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"agent_name": 5}, "agent_name must be a string"),
        ({"matrix_user_id": "agent_x"}, "matrix_user_id must be"),
        ({"matrix_user_id": MXID.replace("example.org", "other.org")}, "not on this homeserver"),
        ({"matrix_user_id": "@alice:example.org"}, "outside this bridge's user namespace"),
        ({"room_id": "#alias:example.org"}, "room_id must be"),
        ({"agent_id": "agent-other"}, "differs from its key"),
    ],
)
def test_a_bad_entry_is_named(tmp_path: Path, bad: dict, message: str) -> None:
    good_id = "agent-00000000-0000-4000-8000-000000000000"
    good = entry(
        agent_id=good_id, matrix_user_id="@agent_00000000_0000_4000_8000_000000000000:example.org"
    )
    path = write(tmp_path, {good_id: good, AGENT: entry(**bad)})
    with pytest.raises(LegacyFileError) as info:
        parse_mappings(path, "example.org", IS_PUPPET)
    assert f"entry {AGENT!r}" in str(info.value) and message in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(LegacyFileError, match="cannot read"):
        parse_mappings(tmp_path / "missing.json", "example.org", IS_PUPPET)
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(LegacyFileError, match="not valid JSON"):
        parse_mappings(bad, "example.org", IS_PUPPET)
    with pytest.raises(LegacyFileError, match="JSON object"):
        parse_mappings(write(tmp_path, [1, 2]), "example.org", IS_PUPPET)


def test_space_file(tmp_path: Path) -> None:
    path = tmp_path / "letta_space_config.json"
    path.write_text(json.dumps({"space_id": "!AbC:example.org", "created_at": 1.5, "name": "L"}))
    assert parse_space(path).space_id == "!AbC:example.org"
    path.write_text(json.dumps({"name": "no id"}))
    with pytest.raises(LegacyFileError, match="space_id"):
        parse_space(path)
